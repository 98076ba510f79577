//! The `simclr` binary: parses the command line and runs it; all logic lives in the library.

use std::process::ExitCode;

/// Training allocates and frees large tensors every step; mimalloc reuses their memory
/// instead of returning it to the kernel and faulting it back in (measured: see README).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match simclr_cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
