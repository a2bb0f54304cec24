//! Issue 9's benchmark: `keyfan estimate` on a generated 1,000,000-item
//! JSONL job (mixed English and Chinese prompts, three models, some with
//! an output cap), timing the whole command and sampling its peak RSS.
//! Goal: under 5 s, in bounded memory.
//!
//! `cargo bench --bench estimate` (`KEYFAN_BENCH_ITEMS` for another size).
//! Without `--bench` (`cargo test --benches`) it runs a 20,000-item smoke
//! version that checks the estimate's item count only.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

const GOAL_S: f64 = 5.0;

fn main() {
    let items = common::items(1_000_000, 20_000);
    let dir = tempfile::tempdir().expect("tempdir");
    write_job(&dir.path().join("job.jsonl"), items);
    std::fs::write(
        dir.path().join("config.yaml"),
        "accounts:\n  - name: a\n    keys: [k1]\n    limits: { gemini-2.5-flash: { rpm: 1000, tpm: 1000000, rpd: 10000 } }\n  - name: b\n    keys: [k2]\n    limits: { gemini-2.5-flash: { rpm: 1000, tpm: 1000000, rpd: 10000 } }\n",
    )
    .expect("config");

    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_keyfan"))
        .args(["estimate", "job.jsonl", "--config", "config.yaml", "--json"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start keyfan");
    let stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || serde_json::from_reader(stdout));
    let peak_kb = common::watch_peak_rss(&mut child);
    let seconds = started.elapsed().as_secs_f64();
    let estimate: serde_json::Value = reader
        .join()
        .expect("reader thread")
        .expect("estimate JSON");
    assert_eq!(estimate["total"]["items"], items, "{estimate}");

    println!(
        "estimate of {items} items: {seconds:.2} s (goal < {GOAL_S} s, ratio {:.2}), \
         peak RSS {:.1} MB, {} cores",
        GOAL_S / seconds,
        peak_kb as f64 / 1024.0,
        common::cores()
    );
    if common::bench_mode() && items >= 1_000_000 && seconds >= GOAL_S {
        common::fail(&format!("{seconds:.2} s is over the goal of {GOAL_S} s"));
    }
}

/// Item `i`: every third prompt Chinese, every fifth on gemini-2.5-pro,
/// every seventh on gemini-2.5-flash-lite, every other one capped.
fn write_job(path: &Path, items: u64) {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("job file"));
    for i in 0..items {
        let prompt = if i % 3 == 0 {
            format!("第{i}个问题：用一句话解释机器学习。")
        } else {
            format!("Question {i}: explain in one sentence why the sky is blue.")
        };
        let model = match (i % 5, i % 7) {
            (0, _) => ",\"model\":\"gemini-2.5-pro\"",
            (_, 0) => ",\"model\":\"gemini-2.5-flash-lite\"",
            _ => "",
        };
        let cap = if i % 2 == 0 {
            ",\"max_output_tokens\":512"
        } else {
            ""
        };
        writeln!(
            out,
            "{{\"id\":\"item-{i}\",\"prompt\":\"{prompt}\"{model}{cap}}}"
        )
        .expect("write job");
    }
    out.flush().expect("flush job");
}
