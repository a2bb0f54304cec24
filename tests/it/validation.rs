use crate::support::*;

const SIM: &str = "
projects:
  - name: proj-a
    keys: [test-key-a1]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_job_line_is_named_and_nothing_is_sent() {
    let sim = simulator(SIM).await;
    let work = Workdir::new();
    work.write(
        "job.jsonl",
        "{\"id\": \"a\", \"prompt\": \"fine\"}\n{\"id\": \"b\", \"promt\": \"typo\"}\n{\"id\": \"c\", \"prompt\": \"fine too\"}\n",
    );
    work.write("config.yaml", &one_account(&sim.base_url()));
    let args = run_args("s.db", &[]);
    let out = work.keyfan(&args, &[]).await;
    assert_eq!(out.status.code(), Some(2), "{}", explain(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("job.jsonl:2"),
        "names file and line: {stderr}"
    );
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
    let rows = results(&work.path("job.results.jsonl"));
    let status = |id: &str| {
        rows.iter()
            .find(|r| r["id"] == id)
            .map(|r| r["status"].as_str().unwrap().to_owned())
    };
    assert_eq!(status("a").as_deref(), Some("ok"));
    assert_eq!(status("c").as_deref(), Some("ok"));
    assert_eq!(status("line:2").as_deref(), Some("skipped"));
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
    assert_eq!(out.status.code(), Some(2), "{}", explain(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("KEYFAN_TEST_UNSET_KEY"), "{stderr}");
    assert!(stderr.contains("config.yaml"), "{stderr}");
    assert!(!work.path("job.results.jsonl").exists(), "nothing ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_config_file_is_a_usage_error() {
    let work = Workdir::new();
    work.write("job.jsonl", &jsonl_job(1));
    let out = work
        .keyfan(&["run", "job.jsonl", "--config", "nope.yaml"], &[])
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", explain(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.yaml"));
}
