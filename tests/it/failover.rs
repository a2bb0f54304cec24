use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_of_an_invalid_key_succeed_on_the_others() {
    let (sim, work) = scenario(
        "
projects:
  - name: proj-a
    keys: [test-key-a1, test-key-a2]
",
        30,
        |url| {
            config(
                url,
                &[(
                    "proj-a",
                    &["test-key-a1", "test-key-revoked", "test-key-a2"],
                )],
                "",
            )
        },
    )
    .await;
    let out = work.keyfan(&run_args("s.db", &[]), &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let rows = results(&work.path("job.results.jsonl"));
    assert_eq!(rows.len(), 30);
    assert!(rows.iter().all(|r| r["status"] == "ok"), "{rows:?}");
    let revoked = keyfan::types::ApiKey::new("test-key-revoked");
    let stats = stats(&sim).await;
    assert_eq!(
        stats.keys[revoked.fingerprint()].requests,
        1,
        "the invalid key is tried once, then disabled"
    );
    let report: serde_json::Value = serde_json::from_str(&work.read("job.report.json")).unwrap();
    let row = report["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == revoked.fingerprint())
        .expect("the invalid key has a report row");
    assert_eq!(row["key_invalid"], 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "key {} (proj-a) was disabled for this run: API_KEY_INVALID",
            revoked.fingerprint()
        )),
        "the summary names the disabled key and why: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_503s_is_retried_until_every_item_is_ok() {
    let (sim, work) = scenario(
        "
projects:
  - name: proj-a
    keys: [test-key-a1, test-key-a2]
faults:
  bursts: [{ after: 3, count: 8, status: 503 }]
",
        20,
        |url| config(url, &[("proj-a", &["test-key-a1", "test-key-a2"])], ""),
    )
    .await;
    let out = work.keyfan(&run_args("s.db", &["-v"]), &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let rows = results(&work.path("job.results.jsonl"));
    assert!(rows.iter().all(|r| r["status"] == "ok"), "{rows:?}");
    let retried: u64 = rows
        .iter()
        .map(|r| r["attempts"].as_u64().unwrap() - 1)
        .sum();
    assert_eq!(retried, 8, "each 503 of the burst cost exactly one retry");
    assert_eq!(stats(&sim).await.requests, 28);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("503"),
        "-v logs the failed attempts: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_model_fails_its_item_with_the_apis_message() {
    let sim = simulator("projects:\n  - name: proj-a\n    keys: [test-key-a1]\n").await;
    let work = Workdir::new();
    work.write(
        "job.jsonl",
        "{\"id\":\"x\",\"prompt\":\"hi\",\"model\":\"gemini-9-imaginary\"}\n{\"id\":\"y\",\"prompt\":\"hi\"}\n",
    );
    work.write("config.yaml", &one_account(&sim.base_url()));
    // --offline: past the model list check, as with a model the list named.
    let out = work.keyfan(&run_args("s.db", &["--offline"]), &[]).await;
    assert_eq!(out.status.code(), Some(3), "{}", explain(&out));
    let rows = results(&work.path("job.results.jsonl"));
    let x = rows.iter().find(|r| r["id"] == "x").unwrap();
    assert_eq!(x["status"], "failed");
    assert_eq!(x["attempts"], 1, "a 404 is not retried");
    assert!(
        x["error"].as_str().unwrap().contains("gemini-9-imaginary"),
        "{x}"
    );
    assert_eq!(
        rows.iter().find(|r| r["id"] == "y").unwrap()["status"],
        "ok"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_empty_and_capped_answers_are_told_apart() {
    let sim = simulator("projects:\n  - name: proj-a\n    keys: [test-key-a1]\n").await;
    let work = Workdir::new();
    let job: String = [
        ("blocked", "[[sim:block]] something forbidden"),
        ("unsafe", "[[sim:safety]] something unsafe"),
        ("capped", "[[sim:max_tokens]] think hard"),
        ("empty", "[[sim:other]] nothing comes back"),
        ("fine", "a normal question"),
    ]
    .iter()
    .map(|(id, prompt)| serde_json::json!({"id": id, "prompt": prompt}).to_string() + "\n")
    .collect();
    work.write("job.jsonl", &job);
    work.write(
        "config.yaml",
        &one_account(&sim.base_url()).replace("max_retries: 5", "max_retries: 2"),
    );
    let out = work.keyfan(&run_args("s.db", &[]), &[]).await;
    assert_eq!(out.status.code(), Some(3), "{}", explain(&out));
    let rows = results(&work.path("job.results.jsonl"));
    let row = |id: &str| rows.iter().find(|r| r["id"] == id).unwrap().clone();
    // A safety block is an answer, not an error of keyfan: recorded, not retried.
    for id in ["blocked", "unsafe"] {
        assert_eq!(row(id)["status"], "blocked", "{}", row(id));
        assert_eq!(row(id)["attempts"], 1);
    }
    assert!(row("blocked")["error"]
        .as_str()
        .unwrap()
        .contains("PROHIBITED_CONTENT"));
    assert!(row("unsafe")["error"].as_str().unwrap().contains("SAFETY"));
    // Thinking spent the output cap: failing again would not help.
    assert_eq!(row("capped")["status"], "failed");
    assert_eq!(row("capped")["attempts"], 1);
    assert!(
        row("capped")["error"]
            .as_str()
            .unwrap()
            .contains("MAX_TOKENS")
            || row("capped")["error"]
                .as_str()
                .unwrap()
                .to_lowercase()
                .contains("cap"),
        "{}",
        row("capped")
    );
    // A 200 without output is transient: retried, then failed.
    assert_eq!(row("empty")["status"], "failed");
    assert_eq!(row("empty")["attempts"], 3, "first try and max_retries: 2");
    assert_eq!(row("fine")["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_with_a_proxy_sends_through_it() {
    // A plain HTTP proxy receives the request in absolute form; the
    // simulator answers such requests itself, so a second simulator stands
    // in for the proxy and its counters show what went through it.
    let direct = simulator("projects:\n  - name: proj-a\n    keys: [test-key-a1]\n  - name: proj-b\n    keys: [test-key-b1]\n").await;
    let proxy = simulator("projects:\n  - name: proj-b\n    keys: [test-key-b1]\n").await;
    let work = Workdir::new();
    work.write("job.jsonl", &jsonl_job(20));
    let yaml = config(
        &direct.base_url(),
        &[("proj-a", &["test-key-a1"]), ("proj-b", &["test-key-b1"])],
        "",
    )
    .replace(
        "  - name: proj-b\n",
        &format!("  - name: proj-b\n    proxy: {}\n", proxy.base_url()),
    );
    work.write("config.yaml", &yaml);
    let out = work.keyfan(&run_args("s.db", &[]), &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let b = keyfan::types::ApiKey::new("test-key-b1");
    let a = keyfan::types::ApiKey::new("test-key-a1");
    let via_proxy = stats(&proxy).await;
    let straight = stats(&direct).await;
    let (through, around) = (
        via_proxy.keys[b.fingerprint()].requests,
        straight.keys[a.fingerprint()].requests,
    );
    assert!(
        through > 0 && around > 0,
        "both accounts served: {through} + {around}"
    );
    assert_eq!(through + around, 20);
    let requests = |s: &keyfan::sim::Stats, k: &keyfan::types::ApiKey| {
        s.keys.get(k.fingerprint()).map_or(0, |k| k.requests)
    };
    assert_eq!(requests(&via_proxy, &a), 0, "proj-a never went through it");
    assert_eq!(requests(&straight, &b), 0, "proj-b never went direct");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_and_strategy_flags_steer_the_keys() {
    let sim = simulator(
        "projects:\n  - name: proj-a\n    keys: [test-key-a1]\n  - name: proj-b\n    keys: [test-key-b1]\n",
    )
    .await;
    let work = Workdir::new();
    work.write("job.jsonl", &jsonl_job(12));
    work.write(
        "config.yaml",
        &config(
            &sim.base_url(),
            &[("proj-a", &["test-key-a1"]), ("proj-b", &["test-key-b1"])],
            "groups: [main]\n",
        )
        .replace(
            "      - \"test-key-a1\"",
            "      - { key: \"test-key-a1\", group: main }",
        )
        .replace(
            "      - \"test-key-b1\"",
            "      - { key: \"test-key-b1\", group: backup }",
        ),
    );
    // By the config's order, main has room for everything: backup idles.
    let out = work.keyfan(&run_args("s1.db", &[]), &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let requests = |project: &str, stats: &keyfan::sim::Stats| {
        stats.projects.get(project).map_or(0, |p| p.requests)
    };
    let after_first = stats(&sim).await;
    assert_eq!(
        (
            requests("proj-a", &after_first),
            requests("proj-b", &after_first)
        ),
        (12, 0)
    );
    // --group backup puts backup first; --strategy is accepted by name.
    let out = work
        .keyfan(
            &run_args(
                "s2.db",
                &["--group", "backup", "--strategy", "least_in_flight"],
            ),
            &[],
        )
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let after_second = stats(&sim).await;
    assert_eq!(requests("proj-b", &after_second), 12);
    // An unknown group is a usage error that names the groups there are.
    let out = work
        .keyfan(&run_args("s3.db", &["--group", "gold"]), &[])
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", explain(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("main, backup"),
        "{}",
        explain(&out)
    );
}
