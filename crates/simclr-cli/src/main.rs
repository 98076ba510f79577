//! The `simclr` binary: parses the command line and runs it; all logic lives in the library.

use std::process::ExitCode;

fn main() -> ExitCode {
    match simclr_cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
