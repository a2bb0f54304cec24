//! The `keyfan` binary: parse, run, exit. Everything else is in the library.

use clap::Parser;
use std::process::ExitCode;

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
