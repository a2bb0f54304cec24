//! The `keyfan` binary: parse, run, exit. Everything else is in the library.

use clap::Parser;
use std::process::ExitCode;

/// mimalloc instead of the system allocator: a run allocates and frees
/// small buffers for every request on several threads at once.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = keyfan::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("keyfan: error: failed to start the async runtime: {error}");
            return ExitCode::from(keyfan::run::exit::ERROR);
        }
    };
    runtime.block_on(keyfan::cli::main(cli))
}
