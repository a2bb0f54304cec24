//! Issue 4's benchmark: a 1,000,000-item job against the simulator (latency
//! 0, no limits), measuring keyfan's peak RSS, items persisted per second,
//! and the time a resume of a half-done run takes before its first new
//! request goes out.
//!
//! `cargo bench --bench durable` (set `KEYFAN_BENCH_ITEMS` for another size).
//! The simulator runs in this process and shares the machine's cores with
//! keyfan, so the rates are lower bounds. Without `--bench` (`cargo test
//! --benches`) it runs a 5,000-item smoke version that checks correctness.

mod common;

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

const GOAL_RSS_MB: f64 = 150.0;
const GOAL_ITEMS_PER_S: f64 = 20_000.0;
const GOAL_RESUME_S: f64 = 3.0;

fn main() {
    let items = common::items(1_000_000, 5_000);
    let runtime = common::runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    common::write_job(&dir.path().join("job.jsonl"), items);
    let sim = common::simulator(
        &runtime,
        "projects:\n  - name: p\n    keys: [bench-k1, bench-k2, bench-k3, bench-k4]\n",
    );
    std::fs::write(
        dir.path().join("config.yaml"),
        format!(
            "providers:\n  gemini: {{ base_url: \"{}\" }}\naccounts:\n  - name: p\n    keys: [bench-k1, bench-k2, bench-k3, bench-k4]\nconcurrency: 64\n",
            sim.base_url()
        ),
    )
    .expect("config");

    // 1. The whole job from scratch.
    let started = Instant::now();
    let mut child = common::spawn_run(dir.path(), "state.db", &["--new-run"]);
    let peak_kb = common::watch_peak_rss(&mut child);
    let wall = started.elapsed().as_secs_f64();
    let rate = items as f64 / wall;
    let rss_mb = peak_kb as f64 / 1024.0;

    // 2. Half of it again, killed, then resumed. (The first run's results
    // go first, so the count below is the second run's.)
    std::fs::remove_file(dir.path().join("job.results.jsonl")).expect("results of run 1");
    let mut child = common::spawn_run(dir.path(), "state.db", &["--new-run"]);
    wait_for_results(dir.path(), items / 2, &mut child);
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    let before = sim.stats().requests;
    let started = Instant::now();
    let mut child = common::spawn_run(dir.path(), "state.db", &[]);
    while sim.stats().requests == before {
        assert!(
            child.try_wait().expect("wait").is_none(),
            "keyfan exited before sending"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let resume = started.elapsed().as_secs_f64();
    let status = child.wait().expect("resumed run ends");
    assert!(status.success(), "the resumed run failed: {status}");
    let lines = std::fs::read_to_string(dir.path().join("job.results.jsonl"))
        .expect("results")
        .lines()
        .count() as u64;
    assert_eq!(
        lines, items,
        "the resumed run holds every item exactly once"
    );

    println!("durable benchmark: {items} items, simulator latency 0, no limits, concurrency 64");
    println!("| measure | value | goal | ratio |\n|---|---:|---:|---:|");
    println!(
        "| peak RSS | {rss_mb:.0} MB | < {GOAL_RSS_MB:.0} MB | {:.2} |",
        GOAL_RSS_MB / rss_mb
    );
    println!(
        "| items persisted per second | {rate:.0} | ≥ {GOAL_ITEMS_PER_S:.0} | {:.2} |",
        rate / GOAL_ITEMS_PER_S
    );
    println!(
        "| resume of a half-done run to its first new request | {resume:.2} s | < {GOAL_RESUME_S:.0} s | {:.2} |",
        GOAL_RESUME_S / resume
    );
    if common::bench_mode() {
        println!("(ratio ≥ 1 meets the goal)");
    } else {
        println!("(smoke mode: correctness only; `cargo bench --bench durable` measures)");
    }
    runtime.block_on(sim.shutdown());
}

/// Waits until `child` has written `lines` results; fails if it exits first
/// or takes more than 10 minutes.
fn wait_for_results(dir: &Path, lines: u64, child: &mut Child) {
    let path = dir.join("job.results.jsonl");
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let count = std::fs::read(&path)
            .map(|b| b.iter().filter(|&&c| c == b'\n').count() as u64)
            .unwrap_or(0);
        if count >= lines {
            return;
        }
        assert!(
            child.try_wait().expect("wait").is_none(),
            "keyfan exited after {count} of {lines} results"
        );
        assert!(
            Instant::now() < deadline,
            "{count} of {lines} results after 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
