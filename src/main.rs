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

#[derive(Subcommand)]
enum Command {
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
