use crate::support::*;
use std::process::Output;

const SIM: &str = "
projects:
  - name: proj-a
    keys: [test-key-a1]
";

/// Asserts that the results hold these `(id, status)` pairs, sorted by id,
/// and nothing else.
fn assert_rows(work: &Workdir, expected: &[(&str, &str)], context: &str) {
    let rows = results(&work.path("job.results.jsonl"));
    let mut rows: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r["id"].as_str().unwrap(), r["status"].as_str().unwrap()))
        .collect();
    rows.sort();
    assert_eq!(rows, expected, "{context}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_job_line_is_named_and_nothing_is_sent() {
    let (sim, work) = scenario(SIM, 0, one_account).await;
    work.write(
        "job.jsonl",
        "{\"id\": \"a\", \"prompt\": \"fine\"}\n{\"id\": \"b\", \"promt\": \"typo\"}\n{\"id\": \"c\", \"prompt\": \"fine too\"}\n",
    );
    let args = run_args("s.db", &[]);
    let out = work.keyfan(&args, &[]).await;
    // Names the file and the line.
    let stderr = assert_exit_saying(&out, 2, "job.jsonl:2");
    assert!(stderr.contains("promt"), "names the field: {stderr}");
    assert!(
        stderr.contains("--skip-invalid"),
        "says how to go on: {stderr}"
    );
    assert_eq!(stats(&sim).await.requests, 0, "nothing was sent");

    // With --skip-invalid the valid items run and the bad line is recorded.
    let mut skip = args.to_vec();
    skip.push("--skip-invalid");
    let out = work.keyfan(&skip, &[]).await;
    assert_eq!(out.status.code(), Some(3), "{}", explain(&out));
    assert_rows(
        &work,
        &[("#line:2", "skipped"), ("a", "ok"), ("c", "ok")],
        "the bad line is recorded",
    );
    assert_eq!(stats(&sim).await.requests, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_environment_variable_is_named() {
    let work = Workdir::new();
    work.write("job.jsonl", &jsonl_job(1));
    work.write(
        "config.yaml",
        "accounts:\n  - name: proj-a\n    keys: [\"${KEYFAN_TEST_UNSET_KEY}\"]\n",
    );
    let out = work.keyfan(&run_args("s.db", &[]), &[]).await;
    let stderr = assert_exit_saying(&out, 2, "KEYFAN_TEST_UNSET_KEY");
    assert!(stderr.contains("config.yaml"), "{stderr}");
    assert!(!work.path("job.results.jsonl").exists(), "nothing ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_config_file_is_a_usage_error() {
    let work = Workdir::new();
    work.write("job.jsonl", &jsonl_job(1));
    let out = work
        .keyfan(&run_job("job.jsonl", "nope.yaml", &[]), &[])
        .await;
    assert_exit_saying(&out, 2, "nope.yaml");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_that_is_an_input_is_refused_before_anything_is_written() {
    let (sim, work) = scenario(SIM, 3, one_account).await;
    let job = work.read("job.jsonl");
    let refused = |out: &Output, names: &str| {
        assert_exit_saying(out, 2, names);
    };
    for (flag, path, names) in [
        ("--out", "job.jsonl", "the job"),
        ("--out", "./job.jsonl", "the job"),
        ("--out", "config.yaml", "the config"),
        ("--out", "s.db", "the state file"),
        ("--out", "s.db-wal", "journal"),
        ("--out", "s.db.lock", "lock"),
        ("--report", "s", "--out"),
    ] {
        let mut args = run_args("s.db", &[flag, path]);
        if flag == "--report" {
            args.extend(["--out", "s.md"]);
        }
        refused(&work.keyfan(&args, &[]).await, names);
    }
    refused(
        &work
            .keyfan(&run_args("r.json", &["--report", "r"]), &[])
            .await,
        "the JSON report r.json is the same file as the state file",
    );
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink("job.jsonl", work.path("link.jsonl")).unwrap();
        std::fs::hard_link(work.path("job.jsonl"), work.path("hard.jsonl")).unwrap();
        for alias in ["link.jsonl", "hard.jsonl"] {
            refused(
                &work.keyfan(&run_args("s.db", &["--out", alias]), &[]).await,
                "the job",
            );
        }
    }
    assert_eq!(work.read("job.jsonl"), job, "the job is intact");
    for name in ["s.db", "r.json", "s.md"] {
        assert!(!work.path(name).exists(), "{name} was not created");
    }
    assert!(!work.path("job.results.jsonl").exists());
    assert_eq!(stats(&sim).await.requests, 0, "nothing was sent");

    // A state file with a run in it is left untouched, byte for byte.
    let first = work.keyfan(&run_args("s.db", &[]), &[]).await;
    assert_eq!(first.status.code(), Some(0), "{}", explain(&first));
    let state = std::fs::read(work.path("s.db")).unwrap();
    refused(
        &work
            .keyfan(&run_args("s.db", &["--out", "s.db"]), &[])
            .await,
        "the state file",
    );
    assert_eq!(std::fs::read(work.path("s.db")).unwrap(), state);
    let runs = work.keyfan(&["runs", "--state", "s.db"], &[]).await;
    assert_eq!(runs.status.code(), Some(0), "{}", explain(&runs));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_above_the_maximum_is_refused_and_workers_follow_the_items() {
    let (sim, work) = scenario(SIM, 2, one_account).await;
    let out = work
        .keyfan(&run_args("s.db", &["-j", "4611686018427387904"]), &[])
        .await;
    let stderr = assert_exit_saying(&out, 2, "--concurrency");
    assert!(stderr.contains("1 to 10000"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    work.write(
        "huge.yaml",
        &one_account(&sim.base_url()).replace("concurrency: 8", "concurrency: 1000000000"),
    );
    let out = work
        .keyfan(
            &run_job("job.jsonl", "huge.yaml", &["--state", "s.db"]),
            &[],
        )
        .await;
    assert_exit_saying(
        &out,
        2,
        "huge.yaml: concurrency: 1000000000 is more than the maximum, 10000",
    );
    assert_eq!(stats(&sim).await.requests, 0, "nothing was sent");

    // The maximum on a 2-item job spawns 2 workers, not 10,000.
    let out = work.keyfan(&run_args("s.db", &["-j", "10000"]), &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert_each_item_once_with_its_reply(&work.path("job.results.jsonl"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_invalid_never_sends_a_duplicate_id() {
    let (sim, work) = scenario(SIM, 0, one_account).await;
    work.write(
        "job.jsonl",
        "{\"id\": \"a\", \"prompt\": \"first\"}\n{\"id\": \"a\", \"prompt\": \"second\"}\n{\"id\": \"b\", \"prompt\": \"third\"}\n",
    );
    let out = work
        .keyfan(&run_args("s.db", &["--skip-invalid"]), &[])
        .await;
    assert_eq!(out.status.code(), Some(3), "{}", explain(&out));
    assert_eq!(stats(&sim).await.requests, 2, "the duplicate was not sent");
    assert_rows(
        &work,
        &[("#line:2", "skipped"), ("a", "ok"), ("b", "ok")],
        "the duplicate is skipped",
    );
    let mut rows = results(&work.path("job.results.jsonl"));
    rows.sort_by_key(|r| r["id"].as_str().unwrap().to_owned());
    assert!(
        rows[1]["output"]
            .as_str()
            .unwrap()
            .contains(&digest("first")),
        "the first `a` is the one sent: {}",
        rows[1]
    );
    assert!(
        rows[0]["error"]
            .as_str()
            .unwrap()
            .contains("duplicate id `a`, first used on line 1"),
        "{}",
        rows[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_run_still_skips_the_duplicate_of_an_item_it_finished() {
    let (sim, work) = scenario(SIM, 0, one_account).await;
    work.write(
        "job.jsonl",
        "{\"id\": \"x\", \"prompt\": \"p1\"}\n{\"id\": \"a\", \"prompt\": \"p2\"}\n\
         {\"id\": \"a\", \"prompt\": \"p3\"}\n{\"id\": \"b\", \"prompt\": \"p4\"}\n",
    );
    // The sample takes the three valid items and leaves the duplicate.
    let out = work
        .keyfan(&run_args("s.db", &["--skip-invalid", "--sample", "3"]), &[])
        .await;
    assert!(
        out.status.code().is_some_and(|c| c != 1),
        "{}",
        explain(&out)
    );
    assert_eq!(stats(&sim).await.requests, 3);
    // The resumed run passes over the finished lines without parsing them,
    // yet knows line 3 repeats line 2's id.
    let out = work
        .keyfan(&run_args("s.db", &["--skip-invalid"]), &[])
        .await;
    assert_eq!(out.status.code(), Some(3), "{}", explain(&out));
    assert_eq!(stats(&sim).await.requests, 3, "the duplicate was not sent");
    assert_rows(
        &work,
        &[
            ("#line:3", "skipped"),
            ("a", "ok"),
            ("b", "ok"),
            ("x", "ok"),
        ],
        "the duplicate is skipped",
    );
    let rows = results(&work.path("job.results.jsonl"));
    assert_eq!(rows.len(), 4, "each line once: {rows:?}");
    assert!(
        rows.iter().any(|r| r["error"]
            .as_str()
            .is_some_and(|e| e.contains("duplicate id `a`, first used on line 2"))),
        "{rows:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skipped_row_never_shares_an_id_with_an_item() {
    let (sim, work) = scenario(SIM, 0, one_account).await;
    // Line 2 is invalid; line 3 is a real item whose id is `line:2`.
    work.write(
        "job.jsonl",
        "{\"id\": \"a\", \"prompt\": \"x\"}\n{\"id\": \"b\"}\n{\"id\": \"line:2\", \"prompt\": \"y\"}\n",
    );
    let args = run_args("s.db", &["--skip-invalid"]);
    for attempt in ["first run", "rerun"] {
        let out = work.keyfan(&args, &[]).await;
        assert_eq!(out.status.code(), Some(3), "{attempt}: {}", explain(&out));
        assert_rows(
            &work,
            &[("#line:2", "skipped"), ("a", "ok"), ("line:2", "ok")],
            attempt,
        );
        assert_eq!(
            stats(&sim).await.requests,
            2,
            "{attempt}: nothing sent twice"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unterminated_csv_quote_sends_nothing() {
    let (sim, work) = scenario(SIM, 0, one_account).await;
    work.write("job.csv", "id,prompt\na,\"oops\nb,x\nc,y");
    let out = work
        .keyfan(
            &run_job("job.csv", "config.yaml", &["--state", "s.db"]),
            &[],
        )
        .await;
    assert_exit_saying(
        &out,
        2,
        "job.csv:2: a quote opened on this line is never closed",
    );
    assert_eq!(stats(&sim).await.requests, 0, "nothing was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_not_a_state_file_is_named_in_one_line_and_left_alone() {
    let work = Workdir::new();
    let foreign = work.path("foreign.db");
    {
        let db = rusqlite::Connection::open(&foreign).unwrap();
        db.execute_batch("CREATE TABLE runs (x); CREATE TABLE notes (y);")
            .unwrap();
    }
    let before = std::fs::read(&foreign).unwrap();
    work.write("garbage.db", &"not a database ".repeat(400));
    for (name, what) in [
        ("foreign.db", "an SQLite database of another program"),
        ("garbage.db", "not an SQLite database"),
    ] {
        let out = work.keyfan(&["runs", "--state", name], &[]).await;
        assert_eq!(out.status.code(), Some(1), "{}", explain(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stderr,
            format!("keyfan: error: {name} is not a keyfan state file ({what}): check --state\n")
        );
    }
    assert_eq!(std::fs::read(&foreign).unwrap(), before, "not migrated");
    assert!(!work.path("foreign.db-wal").exists(), "not switched to WAL");
}
