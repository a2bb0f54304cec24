//! Issue 10's memory figure: the real `keyfan` binary runs a one-item job
//! whose video is a 1 GB sparse MP4 (an `ftyp` and `moov/mvhd` header, then
//! a hole: `set_len`), so the file goes through the Files API's resumable
//! upload to the simulator in this process. keyfan's peak RSS (VmHWM,
//! sampled from `/proc`) is measured against a goal of 100 MB, and the
//! simulator's own peak (this process, which keeps only each upload's size
//! and SHA-256) is shown beside it.
//!
//! `cargo bench --bench upload` (`KEYFAN_BENCH_UPLOAD_MB` for another size).
//! Without `--bench` (`cargo test --benches`) it uploads a 9 MB file (two chunks) as a
//! smoke test of the same path and does not judge the memory.

mod common;

use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

const GOAL_RSS_MB: f64 = 100.0;

fn main() {
    let megabytes = common::env_u64(
        "KEYFAN_BENCH_UPLOAD_MB",
        if common::bench_mode() { 1024 } else { 9 },
    );
    let size = megabytes * 1024 * 1024;
    let runtime = common::runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let video = dir.path().join("big.mp4");
    sparse_mp4(&video, size);
    let sim = common::simulator(
        &runtime,
        "files: { processing_ms: 0 }\nprojects:\n  - name: p\n    keys: [bench-upload-key]\n",
    );
    std::fs::write(
        dir.path().join("config.yaml"),
        format!(
            "providers:\n  gemini: {{ base_url: \"{}\" }}\naccounts:\n  - name: p\n    keys: [bench-upload-key]\n\
             media: {{ inline_max_bytes: 0, poll: 10ms }}\n",
            sim.base_url()
        ),
    )
    .expect("config");
    std::fs::write(
        dir.path().join("job.jsonl"),
        "{\"id\": \"big\", \"prompt\": \"What happens?\", \"video\": \"big.mp4\"}\n",
    )
    .expect("job");

    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_keyfan"))
        .args(["run", "job.jsonl", "--config", "config.yaml", "--quiet"])
        .current_dir(dir.path())
        .env_remove("KEYFAN_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("keyfan starts");
    let peak_kb = common::watch_peak_rss(&mut child);
    let wall = started.elapsed().as_secs_f64();

    // The simulator got every byte, once, and answered with their digest.
    let sha256 = sha256_of(&video);
    let stats = sim.stats();
    assert_eq!(stats.uploads.len(), 1, "{:?}", stats.uploads);
    assert_eq!(
        (stats.uploads[0].bytes, stats.uploads[0].sha256.as_str()),
        (size, sha256.as_str())
    );
    let results = std::fs::read_to_string(dir.path().join("job.results.jsonl")).expect("results");
    assert!(
        results.contains("\"status\":\"ok\"")
            && results.contains(&format!("media:{}", &sha256[..16])),
        "{results}"
    );

    let rss_mb = peak_kb as f64 / 1024.0;
    let sim_mb = common::peak_rss_kb("self").unwrap_or(0) as f64 / 1024.0;
    println!(
        "upload benchmark: a {megabytes} MB sparse MP4 through the Files API to the simulator (8 MiB chunks), {} cores",
        common::cores()
    );
    println!("| measure | value | goal | ratio |\n|---|---:|---:|---:|");
    println!(
        "| keyfan peak RSS | {rss_mb:.0} MB | < {GOAL_RSS_MB:.0} MB | {:.2} |",
        GOAL_RSS_MB / rss_mb
    );
    println!("| simulator (this process) peak RSS | {sim_mb:.0} MB | | |");
    println!(
        "| run, hash and upload | {wall:.1} s ({:.0} MB/s) | | |",
        megabytes as f64 / wall
    );
    if common::bench_mode() {
        println!("(ratio ≥ 1 meets the goal)");
        if rss_mb >= GOAL_RSS_MB {
            std::process::exit(1);
        }
    } else {
        println!("(smoke mode: correctness only; `cargo bench --bench upload` measures)");
    }
}

/// Writes an MP4 header (`ftyp`, `moov` with a 60 s `mvhd`, an `mdat` box
/// running to the end) and extends the file to `size` bytes with a hole.
fn sparse_mp4(path: &Path, size: u64) {
    fn boxed(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut out = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(body);
        out
    }
    let mut mvhd = vec![0u8; 12];
    mvhd.extend_from_slice(&1000u32.to_be_bytes());
    mvhd.extend_from_slice(&60_000u32.to_be_bytes());
    mvhd.resize(100, 0);
    let mut head = [
        boxed(b"ftyp", b"isom\0\0\x02\0isomiso2mp41"),
        boxed(b"moov", &boxed(b"mvhd", &mvhd)),
    ]
    .concat();
    // `mdat` of size 0: the box runs to the end of the file.
    head.extend_from_slice(&[0, 0, 0, 0]);
    head.extend_from_slice(b"mdat");
    let mut file = std::fs::File::create(path).expect("video");
    file.write_all(&head).expect("header");
    file.set_len(size).expect("sparse extent");
}

/// The SHA-256 of a file (lowercase hex), read in 1 MiB chunks.
fn sha256_of(path: &Path) -> String {
    let mut file = std::fs::File::open(path).expect("video");
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf).expect("read") {
            0 => return hex::encode(hasher.finalize()),
            n => hasher.update(&buf[..n]),
        }
    }
}
