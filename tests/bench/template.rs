//! Issue 11's benchmark: a YAML job spec whose template runs over a
//! 1,000,000-row CSV data file (and an included file) is validated in one
//! streaming pass: every row's prompt and id filled and checked, ids
//! checked unique, the content hash taken over the spec, the included file
//! and the data. Goals: under 5 s and a peak RSS under 150 MB.
//!
//! `cargo bench --bench template` (set `KEYFAN_BENCH_ITEMS` for another
//! size). Validation runs in this process, so the peak RSS is this
//! process's (`VmHWM`), the data file having been written row by row.
//! Without `--bench` (`cargo test --benches`) it runs a 10,000-row smoke
//! version that checks the count.

mod common;

use std::io::Write;
use std::time::Instant;

const GOAL_S: f64 = 5.0;
const GOAL_RSS_MB: f64 = 150.0;

fn main() {
    let rows = common::env_u64(
        "KEYFAN_BENCH_ITEMS",
        if common::bench_mode() {
            1_000_000
        } else {
            10_000
        },
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let mut data = std::io::BufWriter::new(
        std::fs::File::create(dir.path().join("rows.csv")).expect("create rows.csv"),
    );
    writeln!(data, "key,text,lang,temperature").unwrap();
    for i in 0..rows {
        let lang = ["French", "German", "Hindi"][(i % 3) as usize];
        let temperature = if i % 10 == 0 { "0.5" } else { "" };
        writeln!(
            data,
            "k{i},\"Sentence number {i}, which says something worth translating.\",{lang},{temperature}"
        )
        .unwrap();
    }
    data.into_inner()
        .expect("flush rows.csv")
        .sync_all()
        .unwrap();
    std::fs::write(
        dir.path().join("instructions.txt"),
        "Translate faithfully, keeping names as they are.",
    )
    .unwrap();
    let spec = dir.path().join("job.yaml");
    std::fs::write(
        &spec,
        "defaults:\n  model: gemini-2.5-flash\n  max_output_tokens: 256\n  top_p: 0.9\n\
         template: \"{{file:instructions.txt}} Into {{lang}}: {{text}}\"\nid: \"{{key}}-{{lang}}\"\ndata: rows.csv\n",
    )
    .unwrap();

    let rss_before = peak_rss_mb();
    let started = Instant::now();
    let validation = keyfan::job::validate(&spec).expect("the spec validates");
    let elapsed = started.elapsed().as_secs_f64();
    let rss = peak_rss_mb();
    assert_eq!(validation.items, rows, "{:?}", validation.errors.first());
    assert_eq!(validation.error_count, 0);

    println!("template spec over a {rows}-row CSV, validated in one streaming pass");
    println!(
        "  time      {elapsed:>8.2} s    goal < {GOAL_S} s     ratio {:.2}",
        elapsed / GOAL_S
    );
    println!(
        "  peak RSS  {rss:>8.1} MB   goal < {GOAL_RSS_MB} MB   ratio {:.2}  (before: {rss_before:.1} MB)",
        rss / GOAL_RSS_MB
    );
    println!("  rate      {:>8.0} rows/s", rows as f64 / elapsed);
    if common::bench_mode() && rows >= 1_000_000 && (elapsed > GOAL_S || rss > GOAL_RSS_MB) {
        common::fail("a goal was missed");
    }
}

/// This process's peak resident set (`VmHWM`), in MB.
fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kb / 1024.0
}
