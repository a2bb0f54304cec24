//! `keyfan results`: the whole results of a run several hosts worked, from
//! the shared state (PostgreSQL), whichever host finished each item.

use super::{Failure, ResultsArgs};
use crate::run::exit;
use crate::store::postgres::{this_host, PgState, PgUrl};
use anyhow::{anyhow, Context};
use std::io::Write;

pub(super) async fn run(args: ResultsArgs) -> Result<u8, Failure> {
    // The synchronous client must not block a thread of the async runtime.
    tokio::task::spawn_blocking(move || write(args))
        .await
        .map_err(|e| anyhow!("the results thread failed: {e}"))?
}

fn write(args: ResultsArgs) -> Result<u8, Failure> {
    let url = PgUrl::parse(&args.state).ok_or_else(|| {
        Failure::usage(anyhow!(
            "--state {} is not a postgres:// URL: a single host's results are its own results \
             file (keyfan run rewrites it on resume)",
            args.state
        ))
    })?;
    let mut state = PgState::connect(&url, &this_host())?;
    let run = match args.run {
        Some(run) => run,
        None => state
            .latest_run()?
            .ok_or_else(|| anyhow!("state {url} has no run yet"))?,
    };
    let file = std::fs::File::create(&args.out)
        .with_context(|| format!("failed to create {}", args.out.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let written = state.results(run, &mut out)?;
    out.flush()
        .with_context(|| format!("failed to write {}", args.out.display()))?;
    if let Some(path) = &args.report {
        let hosts = state
            .run_hosts(run)?
            .ok_or_else(|| anyhow!("state {url} has no run {run}"))?;
        let text = if path.extension().is_some_and(|e| e == "json") {
            crate::report::hosts_json(&hosts)
        } else {
            crate::report::hosts_markdown(&hosts)
        };
        std::fs::write(path, text)
            .with_context(|| format!("failed to write {}", path.display()))?;
    }
    let open = state.open_items(run)?;
    eprintln!(
        "run {run}: {written} finished item(s) written to {}{}",
        args.out.display(),
        if open > 0 {
            format!(" ({open} not finished yet)")
        } else {
            String::new()
        }
    );
    Ok(exit::OK)
}
