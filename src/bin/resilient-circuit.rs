//! `resilient-circuit`: set up, check, watch and override the breakers a fleet shares through
//! PostgreSQL. Thin: parsing is in `resilient_circuit/mod.rs`, each command in a file of its own.

#[path = "resilient_circuit/mod.rs"]
mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("resilient-circuit: error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(code) => code,
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("resilient-circuit: error: {e}");
            e.exit_code().into()
        }
    }
}
