use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// Print the access of every user to every conversation of each world file, one JSON line per file.
    PolicyCheck {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Explain the access of one user to one conversation of a world file.
    Explain {
        file: PathBuf,
        conversation: String,
        user: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::PolicyCheck { files } => switchboard::cli::policy_check(&files).map(|lines| {
            for l in lines {
                println!("{l}");
            }
        }),
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
