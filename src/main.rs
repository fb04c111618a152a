use std::path::PathBuf;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use switchboard::config::{Explained, Origin};

// See Cargo.toml: allocation is on every hot path (frames, events, requests).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Real-time WebSocket gateway for conversation inboxes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start-up: the size of the serve flags does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve(switchboard::config::ServeArgs),
    /// Print the effective configuration of `serve` (same flags, variables and file), secrets
    /// masked, with where each value came from; exit status 2 if `serve` would refuse it.
    CheckConfig {
        #[command(flatten)]
        serve: switchboard::config::ServeArgs,
        /// Print JSON (`{"settings": [{key, value, source}], "problems": [...]}`).
        #[arg(long)]
        json: bool,
    },
    /// Print the access of every user to every conversation of each world file, one JSON line per file.
    PolicyCheck {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Mint an HS256 agent token (development and scripts): prints the JWT.
    Token {
        /// Workspace id (`ws` claim).
        #[arg(long)]
        workspace: String,
        /// User id (`sub` claim).
        #[arg(long)]
        user: String,
        /// Lifetime: seconds, or with a unit (90s, 30m, 1h, 1d).
        #[arg(long, default_value = "1h", value_parser = switchboard::cli::parse_ttl)]
        ttl: u64,
        /// HS256 secret [default: the development secret, accepted on loopback only].
        #[arg(long, env = "SWITCHBOARD_JWT_SECRET", hide_env_values = true)]
        secret: Option<String>,
    },
    /// Explain the access of one user to one conversation of a world file.
    Explain {
        file: PathBuf,
        conversation: String,
        user: String,
    },
}

fn main() -> ExitCode {
    // Parsed through the matches, which also tell where each value came from.
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::CheckConfig { serve, json } => {
            let sub = matches.subcommand_matches("check-config");
            let given = |id: &str| match sub.and_then(|m| m.value_source(id)) {
                Some(ValueSource::CommandLine) => Some(Origin::Flag),
                Some(ValueSource::EnvVariable) => Some(Origin::Env),
                _ => None,
            };
            return check_config(serve, json, given);
        }
        Command::PolicyCheck { files } => switchboard::cli::policy_check(&files).map(|lines| {
            for l in lines {
                println!("{l}");
            }
        }),
        Command::Token {
            workspace,
            user,
            ttl,
            secret,
        } => {
            let secret = secret.filter(|s| !s.is_empty()).unwrap_or_else(|| {
                eprintln!("note: no SWITCHBOARD_JWT_SECRET: signed with the development secret");
                switchboard::config::DEV_SECRET.to_owned()
            });
            switchboard::auth::mint_token(&secret, &workspace, &user, ttl).map(|t| println!("{t}"))
        }
        Command::Explain {
            file,
            conversation,
            user,
        } => switchboard::cli::explain(&file, &conversation, &user).map(|s| println!("{s}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn serve(args: switchboard::config::ServeArgs) -> anyhow::Result<()> {
    let config = switchboard::config::Config::load(args)?;
    switchboard::server::init_logging(&config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(switchboard::server::serve(config))
}

fn check_config(
    args: switchboard::config::ServeArgs,
    json: bool,
    given: impl Fn(&str) -> Option<Origin>,
) -> ExitCode {
    let explained = match Explained::load(args, given) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&explained).unwrap_or_default()
        );
    } else {
        print!("{}", explained.to_text());
    }
    if explained.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}
