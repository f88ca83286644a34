//! `hybrid-agent`: parses flags, reads the config, runs a role (see the library's docs).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "hybrid-agent", about = "hybridfs node agent: the home controller and the burst node role")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Checks a config file: prints nothing and exits 0 when it is usable; else one line naming
    /// the file, line and key, exit 2.
    CheckConfig { file: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::CheckConfig { file } => match hybrid_agent::config::Config::load(&file) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("hybrid-agent: error: {e}");
                ExitCode::from(2)
            }
        },
    }
}
