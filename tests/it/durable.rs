use crate::support::*;
use rand::{rngs::SmallRng, Rng, SeedableRng};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_ten_random_instants_loses_and_duplicates_nothing() {
    const ITEMS: usize = 2000;
    let (sim, work) = scenario(&two_projects(2, 10), ITEMS, |url| two_accounts(url, "")).await;
    let args = run_args("state.db", &["-q"]);
    let mut rng = SmallRng::seed_from_u64(20261121);
    let mut kills = 0;
    for _ in 0..10 {
        let mut child = work.spawn(&args);
        let instant = Duration::from_millis(rng.gen_range(30..400));
        tokio::time::sleep(instant).await;
        if child.try_wait().expect("wait").is_none() {
            child.kill().expect("SIGKILL");
            kills += 1;
        }
        child.wait().expect("reaped");
    }
    assert!(
        kills >= 5,
        "most kills must land mid-run to test anything ({kills})"
    );
    let out = work.keyfan(&args, &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert_each_item_once_with_its_reply(&work.path("job.results.jsonl"), ITEMS);

    // Every request the simulator counted is in the ledger; the ledger may
    // count more only for requests reserved and then killed before they
    // were sent: at most two per worker (the config's 8) per kill, one in
    // each worker's hands and as many reserved ahead.
    let seen: u64 = stats(&sim)
        .await
        .projects
        .values()
        .map(|p| p.requests)
        .sum();
    let counted = ledger_requests(&work.path("state.db"));
    assert!(seen >= ITEMS as u64);
    assert!(
        counted >= seen && counted <= seen + 2 * 8 * kills,
        "ledger {counted} vs simulator {seen} after {kills} kills"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_run_counts_exactly_what_it_sent_though_it_reserves_ahead() {
    // 8 workers reserve up to 8 requests ahead of what they send; what is
    // left over when the run ends is given back.
    const ITEMS: usize = 203;
    let (sim, work) = scenario(&two_projects(0, 2), ITEMS, |url| two_accounts(url, "")).await;
    let out = work.keyfan(&run_args("state.db", &["-q"]), &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let sent = stats(&sim).await.requests;
    assert_eq!(sent, ITEMS as u64);
    assert_eq!(ledger_requests(&work.path("state.db")), sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_what_is_in_flight_and_a_rerun_completes() {
    let (sim, work) = scenario("latency: { min_ms: 20, max_ms: 40 }\nprojects:\n  - name: proj-a\n    keys: [test-key-a1]\n", 300, one_account).await;
    let args = run_args("state.db", &["-q"]);
    let mut child = work.spawn(&args);
    // Interrupt once some items are finished (the run is surely under way).
    wait_until(
        "20 results are written",
        Duration::from_secs(10),
        async || {
            let written =
                std::fs::read_to_string(work.path("job.results.jsonl")).unwrap_or_default();
            written.lines().count() >= 20
        },
    )
    .await;
    sigterm(&child);
    let status = exit_within(&mut child, Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(130));
    let partial = results(&work.path("job.results.jsonl"));
    assert!(
        !partial.is_empty() && partial.len() < 300,
        "{}",
        partial.len()
    );
    assert!(
        work.path("job.report.md").exists(),
        "the report is written on interrupt"
    );

    let out = work.keyfan(&args, &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert_each_item_once_with_its_reply(&work.path("job.results.jsonl"), 300);
    // Nothing finished before the interrupt was sent again.
    assert_eq!(stats(&sim).await.requests, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_on_the_same_state_file_is_refused_naming_the_first() {
    let sim = simulator(
        "latency: { min_ms: 100, max_ms: 100 }\nprojects:\n  - name: proj-a\n    keys: [test-key-a1]\n",
    )
    .await;
    let work = Workdir::new();
    work.write("job.jsonl", &jsonl_job(40));
    work.write(
        "config.yaml",
        &config(
            &sim.base_url(),
            &[("proj-a", &["test-key-a1"])],
            "concurrency: 2\n",
        )
        .replace("concurrency: 8\n", ""),
    );
    let args = run_args("state.db", &["-q"]);
    let mut first = work.spawn(&args);
    wait_until(
        "the first run holds the lock",
        Duration::from_secs(10),
        async || {
            std::fs::read_to_string(work.path("state.db.lock")).is_ok_and(|s| s.contains("pid"))
        },
    )
    .await;
    let second = work.keyfan(&args, &[]).await;
    assert_exit_saying(&second, 75, &format!("pid {}", first.id()));
    let status = exit_within(&mut first, Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0));
    // Once the first is gone, the lock is free.
    let third = work.keyfan(&args, &[]).await;
    assert_eq!(third.status.code(), Some(0), "{}", explain(&third));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_daily_limit_defers_the_rest_and_the_next_run_knows_it() {
    let sim = simulator(&two_projects(2, 10)).await;
    let work = Workdir::new();
    work.write("job.jsonl", &jsonl_job(50));
    work.write(
        "config.yaml",
        &one_account(&sim.base_url()).replace(
            "    keys:\n",
            "    limits: { gemini-2.5-flash: { rpd: 30 } }\n    keys:\n",
        ),
    );
    let args = run_args("state.db", &["--json"]);
    let out = work.keyfan(&args, &[]).await;
    assert_eq!(out.status.code(), Some(4), "{}", explain(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["items"]["ok"], 30);
    assert_eq!(summary["items"]["deferred"], 20);
    let report: serde_json::Value = serde_json::from_str(&work.read("job.report.json")).unwrap();
    assert!(
        report["quota_resets_at"].as_str().is_some(),
        "the report says when quotas reset"
    );
    assert!(work.read("job.report.md").contains("Quotas reset at"));
    assert_eq!(
        stats(&sim).await.requests,
        30,
        "nothing sent past the limit"
    );

    // The next run the same day starts from the ledger, not from zero.
    let out = work.keyfan(&args, &[]).await;
    assert_eq!(out.status.code(), Some(4), "{}", explain(&out));
    assert_eq!(
        stats(&sim).await.requests,
        30,
        "the ledger says the day is spent"
    );
    assert_eq!(
        results(&work.path("job.results.jsonl")).len(),
        50,
        "each item once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daily_limit_learned_from_a_429_defers_and_a_later_run_continues() {
    let (sim, work) = scenario("projects:\n  - name: proj-a\n    keys: [test-key-a1]\n    limits: { gemini-2.5-flash: { rpd: 30 } }\n", 50, one_account).await;
    let args = run_args("state.db", &[]);
    let out = work.keyfan(&args, &[]).await;
    assert_eq!(out.status.code(), Some(4), "{}", explain(&out));
    let rows = results(&work.path("job.results.jsonl"));
    assert_eq!(rows.iter().filter(|r| r["status"] == "ok").count(), 30);
    assert_eq!(
        rows.iter().filter(|r| r["status"] == "deferred").count(),
        20
    );

    // The simulator's Pacific day turns; the next run sends the rest.
    sim.advance_clock(Duration::from_secs(25 * 3600));
    let out = work.keyfan(&args, &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert_each_item_once_with_its_reply(&work.path("job.results.jsonl"), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_cost_stops_before_the_cap_and_a_rerun_resumes() {
    let sim = simulator(&two_projects(2, 10)).await;
    let work = Workdir::new();
    let job = jsonl_job_with(20, |_| serde_json::json!({ "max_output_tokens": 100 }));
    work.write("job.jsonl", &job);
    work.write("config.yaml", &two_accounts(&sim.base_url(), ""));
    // Each item's worst case is about $0.00026 (100 output tokens at $2.50/M).
    let out = work
        .keyfan(
            &run_args("state.db", &["--max-cost", "0.002", "--json"]),
            &[],
        )
        .await;
    assert_eq!(out.status.code(), Some(5), "{}", explain(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let said = "--max-cost 0.002 USD reached: no new requests";
    assert_eq!(
        stderr.matches(said).count(),
        1,
        "said once, as it happens: {stderr}"
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ok = summary["items"]["ok"].as_u64().unwrap();
    assert!(
        (1..20).contains(&ok),
        "some but not all items were sent: {ok}"
    );
    assert_eq!(stats(&sim).await.requests, ok, "nothing sent past the cap");
    let report: serde_json::Value = serde_json::from_str(&work.read("job.report.json")).unwrap();
    assert!(report["totals"]["cost_usd"].as_f64().unwrap() <= 0.002);

    let out = work
        .keyfan(&run_args("state.db", &["--max-cost", "1"]), &[])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert_each_item_once_with_its_reply(&work.path("job.results.jsonl"), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_resumed_by_its_canonical_path_and_an_edit_is_refused() {
    let (sim, work) = scenario(&two_projects(0, 2), 6, one_account).await;
    let run = async |job: &str, extra: &[&str]| {
        let args = run_job(job, "config.yaml", &[&["--state", "s.db"], extra].concat());
        work.keyfan(&args, &[]).await
    };
    let out = run("job.jsonl", &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert_eq!(stats(&sim).await.requests, 6);
    let absolute = work.path("job.jsonl").display().to_string();
    for job in ["./job.jsonl".to_owned(), absolute] {
        let out = run(&job, &[]).await;
        assert_exit_saying(&out, 0, "resuming run 1");
        assert_eq!(stats(&sim).await.requests, 6, "{job}: nothing sent again");
    }
    assert_each_item_once_with_its_reply(&work.path("job.results.jsonl"), 6);

    // An edited job is neither resumed nor silently started afresh.
    let results = work.read("job.results.jsonl");
    work.write("job.jsonl", &jsonl_job(7));
    let out = run("job.jsonl", &[]).await;
    let stderr = assert_exit_saying(&out, 2, "job.jsonl has changed since run 1");
    assert!(stderr.contains("--new-run"), "{stderr}");
    assert_eq!(stats(&sim).await.requests, 6, "nothing was sent");
    assert_eq!(work.read("job.results.jsonl"), results, "results untouched");
    let out = run("job.jsonl", &["--new-run"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert_eq!(stats(&sim).await.requests, 13);
}
