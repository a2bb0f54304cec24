use crate::hostile::*;
use crate::support::*;
use keyfan::sim::SimServer;
use std::io::{BufRead, BufReader};
use std::process::Child;
use std::time::{Duration, Instant};

/// Reads `child`'s stderr on a thread: every line goes to the receiver.
fn stderr_lines(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The first line from `lines` that contains `needle`, within `within`.
fn wait_for_line(
    lines: &std::sync::mpsc::Receiver<String>,
    needle: &str,
    within: Duration,
) -> String {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(line) => seen.push(line),
            Err(_) => panic!("no line with {needle:?} within {within:?}; saw:\n{seen:#?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_retry_delay_defers_every_item_and_loses_none() {
    let server = huge_gemini_delay_then_ok().await;
    let work = hostile_work(
        &server,
        6,
        &[("proj-a", "gemini", &["test-key-a1"])],
        "concurrency: 4\n",
    );
    // Offline: the model list request would take the scripted first answer.
    let out = run_offline(&work, &[], &[]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{}", explain(&out));
    assert_eq!(out.status.code(), Some(4), "{}", explain(&out));
    let rows = results(&work.path("job.results.jsonl"));
    assert_eq!(rows.len(), 6, "every item has its row: {rows:?}");
    for row in &rows {
        assert_eq!(row["status"], "deferred", "{row}");
        let error = row["error"].as_str().unwrap();
        assert!(
            error.starts_with("the server asked to wait until "),
            "{error}"
        );
    }
    assert_eq!(server.requests().len(), 1, "nothing sent after the 429");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_results_pipe_ends_the_run_quietly_and_loses_nothing() {
    const ITEMS: usize = 2000;
    let (sim, work) = scenario(&two_projects(0, 2), ITEMS, one_account).await;
    let mut child = work.spawn_piped(&run_args("s.db", &["--out", "-"]));
    let stderr = stderr_lines(&mut child);
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .expect("one results line");
    assert!(first.contains("\"status\":\"ok\""), "{first}");
    // The reader goes away (the BufReader and the pipe are dropped).
    let status = exit_within(&mut child, Duration::from_secs(20)).await;
    let said: Vec<String> = stderr.try_iter().collect();
    assert_eq!(status.code(), Some(130), "{said:#?}");
    let said = said.join("\n");
    assert_eq!(
        said.matches("results output was closed").count(),
        1,
        "{said}"
    );
    assert!(!said.contains("Broken pipe"), "{said}");

    let store = keyfan::store::Store::open(&work.path("s.db")).unwrap();
    let run = &store.runs().unwrap()[0];
    assert_eq!(run.status, keyfan::store::RunStatus::OutputClosed);
    drop(store);
    // A rerun writes every item once, and sends only what was not answered.
    let out = work.keyfan(&run_args("s.db", &["-q"]), &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert_each_item_once_with_its_reply(&work.path("job.results.jsonl"), ITEMS);
    assert_eq!(
        stats(&sim).await.requests,
        ITEMS as u64,
        "nothing sent twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_stops_the_run_naming_it_and_leaves_the_items_pending() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let work = Workdir::new();
    work.write("job.jsonl", &jsonl_job(20));
    work.write(
        "config.yaml",
        &one_account(&url).replace("timeout: 5s", "timeout: 60s"),
    );
    let started = Instant::now();
    let out = work.keyfan(&run_args("s.db", &[]), &[]).await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(out.status.code(), Some(1), "{}", explain(&out));
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(stderr.contains(&url), "{}", explain(&out));
    assert!(stderr.contains("connection refused"), "{}", explain(&out));
    assert_eq!(
        stderr
            .matches("no provider endpoint can be reached")
            .count(),
        1,
        "said once: {}",
        explain(&out)
    );
    let store = keyfan::store::Store::open(&work.path("s.db")).unwrap();
    let run = &store.runs().unwrap()[0];
    assert_eq!(run.status, keyfan::store::RunStatus::Failed);
    assert!(
        store.status_counts(run.id).unwrap().is_empty(),
        "no item has an outcome: a rerun sends them all"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigterm_no_retry_goes_out() {
    let sim_yaml = "latency: { min_ms: 0, max_ms: 2 }\nprojects:\n  - name: proj-a\n    keys: [test-key-a1, test-key-a2]\nfaults: { error_503: 1.0 }\n";
    let (sim, work) = scenario(sim_yaml, 50, |url| {
        config(url, &[("proj-a", &["test-key-a1", "test-key-a2"])], "")
            .replace("timeout: 5s", "timeout: 60s")
            .replace("max_retries: 5", "max_retries: 50")
            .replace("concurrency: 8", "concurrency: 4")
    })
    .await;
    let mut child = work.spawn(&run_args("s.db", &[]));
    wait_until(
        "4 requests reach the server",
        Duration::from_secs(10),
        async || stats(&sim).await.requests >= 4,
    )
    .await;
    let before = stats(&sim).await.requests;
    sigterm(&child);
    let status = exit_within(&mut child, Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(130));
    let after = stats(&sim).await.requests;
    // At most the requests already on their way when the signal came.
    assert!(
        after <= before + 4,
        "{before} before SIGTERM, {after} after"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_wait_is_shown_on_a_timer_with_the_account() {
    let (_sim, work) = scenario(&two_projects(0, 2), 4, |url| {
        config(url, &[("proj-a", &["test-key-a1"])], "").replace(
            "      - \"test-key-a1\"\n",
            "      - \"test-key-a1\"\n    limits: { gemini-2.5-flash: { rpm: 2 } }\n",
        )
    })
    .await;
    let mut child = work.spawn_piped(&run_args("s.db", &[]));
    let lines = stderr_lines(&mut child);
    // Nothing happens while the pool waits for the next minute: the line
    // comes from the 5 s timer.
    let line = wait_for_line(&lines, "waiting for quota", Duration::from_secs(15));
    assert!(
        line.contains("proj-a gemini-2.5-flash RPM, next room at "),
        "{line}"
    );
    assert!(line.contains("2/4 done"), "{line}");
    sigterm(&child);
    // The signal is told through the display, like every other line.
    let line = wait_for_line(&lines, "keyfan: stopping:", Duration::from_secs(10));
    assert!(line.contains("no new requests"), "{line}");
    let status = exit_within(&mut child, Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(130));
}

/// A simulator that answers every request with a 503, and a work directory
/// with a job of `items` for its one key, retried `max_retries` times.
async fn always_503(items: usize, max_retries: u32) -> (SimServer, Workdir) {
    let sim_yaml =
        "projects:\n  - name: proj-a\n    keys: [test-key-a1]\nfaults: { error_503: 1.0 }\n";
    scenario(sim_yaml, items, |url| {
        one_account(url).replace("max_retries: 5", &format!("max_retries: {max_retries}"))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_count_only_attempts_that_were_retried() {
    let (_sim, work) = always_503(2, 0).await;
    let out = work.keyfan(&run_args("s.db", &[]), &[]).await;
    assert_eq!(out.status.code(), Some(3), "{}", explain(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("2/2 done (ok 0, failed 2)"), "{stderr}");
    assert!(stderr.contains(", 0 retries ("), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_refused_stops_the_run_and_leaves_the_items_pending() {
    let (sim, work) = scenario(&two_projects(0, 2), 5, |url| {
        config(url, &[("proj-a", &["not-a-key-of-the-simulator"])], "")
    })
    .await;
    let out = work.keyfan(&run_args("s.db", &["--offline"]), &[]).await;
    assert_eq!(out.status.code(), Some(6), "{}", explain(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("was disabled for this run: API_KEY_INVALID: API key not valid"),
        "each key is named with the API's reason: {stderr}"
    );
    assert!(
        stderr.contains("was refused and is not used again in this run: API_KEY_INVALID: API key"),
        "and said as it happens: {stderr}"
    );
    assert!(
        stderr.contains("every key that can serve gemini-2.5-flash was refused"),
        "{stderr}"
    );
    assert!(
        results(&work.path("job.results.jsonl")).is_empty(),
        "no item ended"
    );
    assert_eq!(stats(&sim).await.requests, 1, "one request for the one key");
    // With a key that works, the next run sends every item.
    work.write("config.yaml", &one_account(&sim.base_url()));
    let out = work.keyfan(&run_args("s.db", &["--offline"]), &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert_each_item_once_with_its_reply(&work.path("job.results.jsonl"), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_count_across_resumes() {
    let (_sim, work) = always_503(1, 1).await;
    let out = work.keyfan(&run_args("s.db", &["-q"]), &[]).await;
    assert_eq!(out.status.code(), Some(3), "{}", explain(&out));
    assert_eq!(results(&work.path("job.results.jsonl"))[0]["attempts"], 2);
    let out = work
        .keyfan(&run_args("s.db", &["-q", "--retry-failed"]), &[])
        .await;
    assert_eq!(out.status.code(), Some(3), "{}", explain(&out));
    let row = &results(&work.path("job.results.jsonl"))[0];
    assert_eq!(row["attempts"], 4, "two requests in each run: {row}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_runs_elapsed_time_is_its_active_time_in_console_and_report() {
    let (_sim, work) = scenario(&two_projects(0, 2), 3, one_account).await;
    let out = work.keyfan(&run_args("s.db", &["-q"]), &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    // As if the first invocation had started a day before the second.
    let db = rusqlite::Connection::open(work.path("s.db")).unwrap();
    db.execute(
        "UPDATE runs SET started_at = '2000-01-01T00:00:00.000Z'",
        [],
    )
    .unwrap();
    drop(db);
    let out = work.keyfan(&run_args("s.db", &["--json"]), &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let report: serde_json::Value = serde_json::from_str(&work.read("job.report.json")).unwrap();
    let elapsed = report["elapsed_s"].as_f64().unwrap();
    assert!(elapsed < 60.0, "active time, not the gap: {elapsed}");
    assert_eq!(summary["elapsed_s"].as_f64().unwrap(), elapsed);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(" in {elapsed:.1}s: 3 ok")),
        "{stderr}"
    );
}
