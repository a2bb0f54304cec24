use crate::support::*;
use std::io::Write;
use std::process::Stdio;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_goes_beside_out_or_where_report_says() {
    let (sim, work) = scenario(&two_projects(0, 2), 2, one_account).await;
    std::fs::create_dir(work.path("out")).unwrap();
    let out = work
        .keyfan(&run_args("s.db", &["--out", "out/r.jsonl"]), &[])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    for name in ["out/r.report.md", "out/r.report.json"] {
        assert!(work.path(name).exists(), "{name}: {}", explain(&out));
    }
    assert!(!work.path("job.report.md").exists(), "not beside the job");

    let out = work
        .keyfan(&run_args("s.db", &["--report", "out/nightly"]), &[])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let report: serde_json::Value =
        serde_json::from_str(&work.read("out/nightly.json")).expect("a JSON report");
    assert_eq!(report["totals"]["items"], 2);
    assert!(report["totals"].get("name").is_none(), "{report}");
    assert!(work.read("out/nightly.md").starts_with("# keyfan report"));
    assert_eq!(stats(&sim).await.requests, 2, "the second run resumed");
}

/// Runs keyfan in `work` with `stdin` as standard input.
fn with_stdin(work: &Workdir, args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = work
        .command(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start keyfan");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().expect("keyfan ends")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_on_standard_input_runs_and_resumes_by_content() {
    let (sim, work) = scenario(&two_projects(0, 2), 0, one_account).await;
    let job = jsonl_job(3);
    let args = run_job("-", "config.yaml", &["--state", "s.db"]);
    let work = std::sync::Arc::new(work);
    let run = |text: String| {
        let work = std::sync::Arc::clone(&work);
        let args = args.clone();
        tokio::task::spawn_blocking(move || with_stdin(&work, &args, &text))
    };
    let out = run(job.clone()).await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert_each_item_once_with_its_reply(&work.path("stdin.results.jsonl"), 3);
    assert!(work.path("stdin.report.json").exists());
    assert_eq!(stats(&sim).await.requests, 3);

    // The same input again: resumed, nothing sent.
    let out = run(job).await.unwrap();
    assert_exit_saying(&out, 0, "resuming run 1 of standard input");
    assert_eq!(stats(&sim).await.requests, 3);
    // Other input is another job, not an edit to refuse.
    let out = run(jsonl_job(4)).await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert_eq!(stats(&sim).await.requests, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_version_dry_run_and_a_missing_config() {
    let work = Workdir::new();
    let out = work.keyfan(&["completions", "bash"], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(script.contains("_keyfan()") && script.contains("--skip-invalid"));

    let out = work.keyfan(&["--version"], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let version = String::from_utf8_lossy(&out.stdout);
    let (commit, date) = version
        .trim()
        .strip_prefix(concat!("keyfan ", env!("CARGO_PKG_VERSION"), " (commit "))
        .and_then(|rest| rest.strip_suffix(')'))
        .and_then(|rest| rest.split_once(", built "))
        .unwrap_or_else(|| panic!("{version}"));
    assert!(
        commit == "unknown" || commit.chars().all(|c| c.is_ascii_hexdigit()),
        "{version}"
    );
    chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").expect("a build date");

    work.write("job.jsonl", &jsonl_job(1));
    let out = work.keyfan(&["run", "job.jsonl", "--dry-run"], &[]).await;
    let stderr = assert_exit_saying(&out, 2, "keyfan has no --dry-run: use --simulate");
    assert!(!stderr.contains("similar"), "{stderr}");

    let out = work.keyfan(&["run", "job.jsonl"], &[]).await;
    let stderr = assert_exit_saying(&out, 2, "config config.yaml does not exist");
    assert!(
        stderr.contains("cp config.example.yaml config.yaml"),
        "{stderr}"
    );
}

#[test]
fn the_readme_lists_the_exit_codes_of_the_one_table() {
    let readme = include_str!("../../README.md");
    let section = readme
        .split_once("\n## Exit codes\n")
        .expect("an exit code section")
        .1;
    let section = section.split("\n## ").next().unwrap();
    let rows: Vec<(u8, &str)> = section
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.trim().strip_prefix('|')?.split(" | ").collect();
            let code = cells.first()?.trim().parse().ok()?;
            Some((code, cells.get(1)?.trim_end_matches(" |").trim()))
        })
        .collect();
    assert_eq!(rows, keyfan::run::exit::TABLE);
}
