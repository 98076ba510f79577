//! The `simclr` binary: parses the command line and runs it; all logic lives in the library.

use std::process::ExitCode;

/// Training allocates and frees large tensors every step; mimalloc, tuned by
/// [`simclr_train::memory::tune_allocator_for_training`], reuses that memory on large pages
/// instead of returning it to the kernel and faulting it back in.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    use clap::Parser;
    let cli = simclr_cli::Cli::parse();
    if cli.threads() == Some(0) {
        eprintln!("error: --threads must be at least 1");
        return ExitCode::FAILURE;
    }
    // SAFETY: first thing in `main`, before any other thread exists: the environment is
    // written once, here, and never again.
    unsafe { simclr_train::memory::prepare_process_for_training(cli.threads()) };
    match simclr_cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The checkpoint is saved and the summary printed: only the status is left to give.
        Err(err) if err.is::<simclr_cli::Interrupted>() => ExitCode::from(130),
        Err(err) => {
            eprintln!("error: {}", simclr_cli::error_chain(&err));
            ExitCode::FAILURE
        }
    }
}
