//! Shared by the `cargo bench` targets under `tests/bench/` (each is its
//! own crate with `harness = false`; not every crate uses every helper).
#![allow(dead_code)]

pub mod pacing;

use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Whether the binary was started by `cargo bench` (which passes `--bench`).
/// Without it (`cargo test --benches`, `cargo test --all-targets`) a bench
/// runs a short smoke version that checks correctness, not speed.
pub fn bench_mode() -> bool {
    std::env::args().skip(1).any(|a| a == "--bench")
}

/// A positive integer from the environment, or `default`. A value that does
/// not parse is an error, so a typo does not silently run the default.
pub fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| fail(&format!("{name}={v:?} is not a positive integer"))),
        _ => default,
    }
}

/// The items a bench runs: `KEYFAN_BENCH_ITEMS`, else `bench` under
/// `cargo bench` and `smoke` otherwise.
pub fn items(bench: u64, smoke: u64) -> u64 {
    env_u64(
        "KEYFAN_BENCH_ITEMS",
        if bench_mode() { bench } else { smoke },
    )
}

/// A comma-separated list from the environment, if set and not empty.
pub fn env_list(name: &str) -> Option<Vec<String>> {
    let v = std::env::var(name).ok()?;
    let items: Vec<String> = v
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    (!items.is_empty()).then_some(items)
}

/// Exits with a usage error.
pub fn fail(message: &str) -> ! {
    eprintln!("bench: {message}");
    std::process::exit(2)
}

/// The multi-threaded runtime the CLI uses (one worker per core), shared by
/// the simulator and the client under test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The digest the simulator puts in its reply to `text`: `digest:` and the
/// first 16 hex digits of its SHA-256.
pub fn digest(text: &str) -> String {
    format!(
        "digest:{}",
        &hex::encode(Sha256::digest(text.as_bytes()))[..16]
    )
}

/// Logical cores, for the report.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Waits for `child` to exit, sampling its peak resident set (VmHWM) on the
/// way; returns it in KiB.
pub fn watch_peak_rss(child: &mut Child) -> u64 {
    let pid = child.id().to_string();
    let mut peak = 0;
    loop {
        if let Some(kb) = peak_rss_kb(&pid) {
            peak = peak.max(kb);
        }
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "keyfan failed: {status}");
            return peak;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The peak resident set (VmHWM) in KiB of the process `pid` (`self`: this
/// one), while it runs.
pub fn peak_rss_kb(pid: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Starts a simulator from `yaml` on 127.0.0.1 (an ephemeral port) in
/// `runtime`.
pub fn simulator(runtime: &tokio::runtime::Runtime, yaml: &str) -> keyfan::sim::SimServer {
    let config: keyfan::sim::SimConfig = serde_yaml::from_str(yaml).expect("sim config");
    runtime.block_on(async {
        keyfan::sim::SimServer::start(config, ([127, 0, 0, 1], 0).into())
            .await
            .expect("simulator")
    })
}

/// Writes a JSONL job of `items` short prompts (`item-0`, `item-1`, …) to
/// `path`.
pub fn write_job(path: &Path, items: u64) {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("job file"));
    for i in 0..items {
        writeln!(
            out,
            "{{\"id\":\"item-{i}\",\"prompt\":\"Question {i}: explain in one sentence why the sky is blue.\"}}"
        )
        .expect("write job");
    }
    out.flush().expect("flush job");
}

/// Starts `keyfan run job.jsonl --config config.yaml --state STATE -q`
/// and `extra` in `dir`, its stdout discarded.
pub fn spawn_run(dir: &Path, state: &str, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_keyfan"))
        .args([
            "run",
            "job.jsonl",
            "--config",
            "config.yaml",
            "--state",
            state,
            "-q",
        ])
        .args(extra)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start keyfan")
}
