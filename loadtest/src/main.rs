//! `loadtest`: fan-out latency, throughput, memory and correctness of the
//! Switchboard gateway (and of a Socket.IO peer and a bare "floor" server
//! for comparison). See loadtest/README.md.

mod check;
mod client;
mod floor;
mod oracle;
mod outbound;
mod poster;
mod procfs;
mod procs;
mod report;
mod scenario;
mod world;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "loadtest",
    version,
    about = "Load and correctness harness for the Switchboard gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Many idle connections: gateway RSS per connection.
    Idle(scenario::IdleArgs),
    /// Rate sweep: fan-out latency percentiles per offered rate; the highest rate with p99 within the objective (`--peer` compares with Socket.IO, `--floor` with a bare floor server).
    Fanout(scenario::FanoutArgs),
    /// 10,000 connects at once (JWT + hello), then reconnect churn.
    Storm(scenario::StormArgs),
    /// Gateway nodes + a private Redis (or Redis Cluster): cross-node fan-out latency, Redis CPU; `--baseline` alternates with a single node, `--peer` with the Socket.IO peer.
    Cluster(scenario::ClusterArgs),
    /// Delivery to a channel adapter (a local receiver): deliveries/s and commit → adapter p50/p99.
    Outbound(outbound::OutboundArgs),
    /// The floor server that `fanout --floor` starts (not meant to be run by hand).
    #[command(hide = true)]
    FloorServer(floor::FloorArgs),
    /// Write the generated world (import format) and its audience statistics; no gateway needed.
    World {
        #[command(flatten)]
        world: world::WorldSpec,
        /// Where to write the world JSON.
        #[arg(long, default_value = "target/loadtest/world.json")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cli = match cli.command {
        Command::FloorServer(a) => {
            return match floor::main(a) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(2)
                }
            };
        }
        command => Cli { command },
    };
    if let Command::World { world, out } = &cli.command {
        let w = world::generate(world);
        let o = oracle::Oracle::new(&w);
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = std::fs::write(out, serde_json::to_vec_pretty(&w).expect("world JSON")) {
            eprintln!("error: {}: {e}", out.display());
            return ExitCode::from(2);
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&o.audience_stats()).expect("stats")
        );
        eprintln!("world written to {}", out.display());
        return ExitCode::SUCCESS;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(async move {
        match cli.command {
            Command::Idle(a) => scenario::idle(a).await,
            Command::Fanout(a) => scenario::fanout(a).await,
            Command::Storm(a) => scenario::storm(a).await,
            Command::Cluster(a) => scenario::cluster(a).await,
            Command::Outbound(a) => outbound::outbound(a).await,
            Command::World { .. } | Command::FloorServer(_) => unreachable!(),
        }
    });
    // Connection tasks may still be closing: do not wait for them.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(o) => {
            println!("{}", o.summary);
            if o.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
