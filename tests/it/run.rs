use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_item_gets_its_own_reply_and_the_report_counts_them() {
    let (sim, work) = scenario(&two_projects(0, 5), 40, |url| {
        config(
            url,
            &[
                ("proj-a", &["test-key-a1", "test-key-a2"]),
                ("proj-b", &["test-key-b1"]),
            ],
            "",
        )
    })
    .await;
    let out = work.keyfan(&run_args("state.db", &["--json"]), &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));

    let rows = results(&work.path("job.results.jsonl"));
    assert_eq!(rows.len(), 40);
    assert_each_item_once_with_its_reply(&work.path("job.results.jsonl"), 40);
    for row in &rows {
        assert_eq!(row["attempts"], 1);
        assert!(row["input_tokens"].as_u64().unwrap() > 0);
        assert!(row["key"].as_str().unwrap().starts_with('#'));
    }

    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json summary");
    assert_eq!(summary["items"]["ok"], 40);
    assert_eq!(summary["exit_code"], 0);

    let report: serde_json::Value =
        serde_json::from_str(&work.read("job.report.json")).expect("report JSON");
    assert_eq!(report["totals"]["status"]["ok"], 40);
    assert_eq!(report["totals"]["requests"], 40);
    let per_key: u64 = report["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(per_key, 40);
    assert_eq!(report["accounts"].as_array().unwrap().len(), 2);
    let md = work.read("job.report.md");
    assert!(md.contains("## Per key") && md.contains("proj-b"), "{md}");

    let stats = stats(&sim).await;
    assert_eq!(stats.requests, 40, "one request per item");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_jobs_and_csv_results_work_too() {
    let sim = simulator(&two_projects(0, 5)).await;
    let work = Workdir::new();
    work.write(
        "job.csv",
        "id,prompt,max_output_tokens\nc1,\"Hello, world\",64\nc2,\"multi\nline\",\n",
    );
    work.write("config.yaml", &one_account(&sim.base_url()));
    let args = run_job(
        "job.csv",
        "config.yaml",
        &["--state", "s.db", "--out", "r.csv", "-q"],
    );
    let out = work.keyfan(&args, &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert!(
        out.stderr.is_empty(),
        "-q prints nothing: {}",
        explain(&out)
    );
    let mut reader = csv::Reader::from_path(work.path("r.csv")).unwrap();
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 2);
    let c2 = rows.iter().find(|r| &r[0] == "c2").unwrap();
    assert!(c2[2].contains(&digest("multi\nline")), "{:?}", c2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_can_stream_to_stdout() {
    let (_sim, work) = scenario(&two_projects(0, 5), 5, one_account).await;
    let out = work.keyfan(&run_args("s.db", &["--out", "-"]), &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 5);
    assert!(stdout.lines().all(|l| l.contains("\"status\":\"ok\"")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyfan_sim_serves_on_the_port_it_prints() {
    use std::io::BufRead;
    let work = Workdir::new();
    let sim_yaml = work.write(
        "sim.yaml",
        "projects:\n  - name: proj-a\n    keys: [test-key-a1]\n",
    );
    let mut sim = std::process::Command::new(env!("CARGO_BIN_EXE_keyfan"))
        .args(["sim", "--port", "0", "-q", "--config"])
        .arg(&sim_yaml)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start keyfan sim");
    let mut url = String::new();
    std::io::BufReader::new(sim.stdout.take().unwrap())
        .read_line(&mut url)
        .expect("the simulator prints its URL");
    let url = url.trim().to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

    work.write("job.jsonl", &jsonl_job(3));
    work.write("config.yaml", &one_account(&url));
    let out = work.keyfan(&run_args("s.db", &[]), &[]).await;
    let stats: keyfan::sim::Stats = reqwest::get(format!("{url}/__stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    sim.kill().unwrap();
    sim.wait().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert_eq!(stats.projects["proj-a"].models["gemini-2.5-flash"].ok, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_compatible_accounts_serve_their_models() {
    let sim = simulator(TWO_PROVIDER_PROJECTS).await;
    let work = two_providers(&sim.base_url(), 10, "gpt-4o-mini");
    let out = work.keyfan(&run_args("s.db", &[]), &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert_each_item_once_with_its_reply(&work.path("job.results.jsonl"), 10);
    let stats = stats(&sim).await;
    // Each model went to the accounts of its provider.
    assert_eq!(stats.projects["o"].models["gpt-4o-mini"].ok, 5);
    assert_eq!(stats.projects["g"].models["gemini-2.5-flash"].ok, 5);
    assert!(!stats.projects["o"].models.contains_key("gemini-2.5-flash"));
}
