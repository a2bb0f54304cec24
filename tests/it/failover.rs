use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_of_an_invalid_key_succeed_on_the_others() {
    let sim = simulator(
        "
projects:
  - name: proj-a
    keys: [test-key-a1, test-key-a2]
",
    )
    .await;
    let work = Workdir::new();
    work.write("job.jsonl", &jsonl_job(30));
    work.write(
        "config.yaml",
        &config(
            &sim.base_url(),
            &[(
                "proj-a",
                &["test-key-a1", "test-key-revoked", "test-key-a2"],
            )],
            "",
        ),
    );
    let out = work
        .keyfan(
            &[
                "run",
                "job.jsonl",
                "--config",
                "config.yaml",
                "--state",
                "s.db",
            ],
            &[],
        )
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let rows = results(&work.path("job.results.jsonl"));
    assert_eq!(rows.len(), 30);
    assert!(rows.iter().all(|r| r["status"] == "ok"), "{rows:?}");
    let revoked = keyfan::pool::ApiKey::new("test-key-revoked");
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_503s_is_retried_until_every_item_is_ok() {
    let sim = simulator(
        "
projects:
  - name: proj-a
    keys: [test-key-a1, test-key-a2]
faults:
  bursts: [{ after: 3, count: 8, status: 503 }]
",
    )
    .await;
    let work = Workdir::new();
    work.write("job.jsonl", &jsonl_job(20));
    work.write(
        "config.yaml",
        &config(
            &sim.base_url(),
            &[("proj-a", &["test-key-a1", "test-key-a2"])],
            "",
        ),
    );
    let out = work
        .keyfan(
            &[
                "run",
                "job.jsonl",
                "--config",
                "config.yaml",
                "--state",
                "s.db",
                "-v",
            ],
            &[],
        )
        .await;
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
    work.write(
        "config.yaml",
        &config(&sim.base_url(), &[("proj-a", &["test-key-a1"])], ""),
    );
    let out = work
        .keyfan(
            &[
                "run",
                "job.jsonl",
                "--config",
                "config.yaml",
                "--state",
                "s.db",
            ],
            &[],
        )
        .await;
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
