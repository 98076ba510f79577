//! The `simclr` binary: parses the command line and runs it; all logic lives in the library.

use std::process::ExitCode;

/// Training allocates and frees large tensors every step; mimalloc, tuned by
/// [`simclr_train::memory::tune_allocator_for_training`], reuses that memory on large pages
/// instead of returning it to the kernel and faulting it back in.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    simclr_train::memory::tune_allocator_for_training();
    simclr_train::memory::tune_threads_for_training();
    match simclr_cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        // The checkpoint is saved and the summary printed: only the status is left to give.
        Err(err) if err.is::<simclr_cli::Interrupted>() => ExitCode::from(130),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
