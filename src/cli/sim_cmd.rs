//! `keyfan sim`: the simulator on its own, until Ctrl-C.

use super::{Failure, SimArgs, Verbosity};
use crate::sim::{SimConfig, SimServer};
use anyhow::Context;

pub(super) async fn run(args: SimArgs, verbosity: Verbosity) -> Result<u8, Failure> {
    let config = match &args.config {
        Some(path) => SimConfig::load(path).map_err(Failure::usage)?,
        None => SimConfig::default(),
    };
    let server = SimServer::start(config, ([127, 0, 0, 1], args.port).into())
        .await
        .with_context(|| format!("failed to listen on 127.0.0.1:{}", args.port))?;
    // The bare URL on standard output lets scripts and tests that asked for
    // port 0 learn the port.
    println!("{}", server.base_url());
    if verbosity != Verbosity::Quiet {
        eprintln!(
            "keyfan: simulator listening on {} (Ctrl-C to stop; GET /__stats for counts)",
            server.base_url()
        );
    }
    tokio::signal::ctrl_c()
        .await
        .context("failed to wait for Ctrl-C")?;
    server.shutdown().await;
    Ok(super::exit::OK)
}
