//! Money: every token the API billed is counted, item by item (answers
//! that are not `ok` included), `--max-cost` holds against what was billed,
//! and `--sample` tries a spread of items before the rest.

use crate::hostile::{fixture, hostile_config, hostile_work, run_offline, Answer, Hostile};
use crate::support::*;

/// A JSONL job of one item per `(id, prompt)`, each with `extra` fields.
fn job_of(items: &[(String, String)], extra: serde_json::Value) -> String {
    items
        .iter()
        .map(|(id, prompt)| {
            let mut line = serde_json::json!({"id": id, "prompt": prompt});
            for (k, v) in extra.as_object().expect("extra is an object") {
                line[k] = v.clone();
            }
            line.to_string() + "\n"
        })
        .collect()
}

/// The sum of the results' `cost`, failing on an unknown one.
fn results_cost(rows: &[serde_json::Value]) -> f64 {
    rows.iter()
        .map(|row| row["cost"].as_f64().unwrap_or_else(|| panic!("{row}")))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cap_spent_on_thinking_reports_its_billed_input_thinking_and_cost() {
    // A real gemini-2.5-pro exchange: under maxOutputTokens 5, thinking
    // spent 2 tokens and the cap, and no text came (promptTokenCount 15).
    let case: serde_json::Value =
        serde_json::from_str(&fixture("replay/pa-2.5-pro-maxtok-no-output.json")).unwrap();
    let response = case["response"].to_string();
    let server = Hostile::start(move |_| Answer::json(200, response.clone())).await;
    let work = Workdir::new();
    let items = [(
        "capital".to_owned(),
        "What is the capital of France?".to_owned(),
    )];
    work.write(
        "job.jsonl",
        &job_of(
            &items,
            serde_json::json!({"model": "gemini-2.5-pro", "max_output_tokens": 5}),
        ),
    );
    work.write(
        "config.yaml",
        &hostile_config(
            &server.base_url(),
            &[("proj-a", "gemini", &["hostile-key-a1"])],
            "",
        ),
    );
    let out = work
        .keyfan(
            &run_args("state.db", &["--offline", "--max-cost", "1"]),
            &[],
        )
        .await;
    assert_eq!(out.status.code(), Some(3), "{}", explain(&out));
    assert_eq!(
        server.requests().len(),
        1,
        "not retried: the cap would be hit again"
    );
    let rows = results(&work.path("job.results.jsonl"));
    let row = &rows[0];
    assert_eq!(row["status"], "failed", "{row}");
    assert_eq!(row["input_tokens"], 15, "{row}");
    assert_eq!(row["thinking_tokens"], 2, "{row}");
    assert_eq!(
        row["output_tokens"], 2,
        "thinking is billed as output: {row}"
    );
    assert_eq!(row["finish_reason"], "MAX_TOKENS", "{row}");
    // gemini-2.5-pro: $1.25 per 1M input, $10 per 1M output (thinking included).
    let cost = (15.0 * 1.25 + 2.0 * 10.0) / 1e6;
    assert_eq!(row["cost"].as_f64(), Some(cost), "{row}");
    // The report and the day's ledger count it too.
    let report: serde_json::Value = serde_json::from_str(&work.read("job.report.json")).unwrap();
    assert_eq!(report["totals"]["input_tokens"], 15, "{report}");
    assert_eq!(report["totals"]["output_tokens"], 2, "{report}");
    assert_eq!(report["totals"]["cost_usd"], 0.000039, "{report}");
    assert_eq!(report["totals"]["wasted_on_retries_usd"], 0.0, "{report}");
    let ledger = &report["ledger"][0];
    assert_eq!(ledger["input_tokens"], 15, "{report}");
    let csv_out = work
        .keyfan(
            &run_args("state.db", &["--offline", "--out", "results.csv"]),
            &[],
        )
        .await;
    assert_eq!(csv_out.status.code(), Some(3), "{}", explain(&csv_out));
    let mut reader = csv::Reader::from_path(work.path("results.csv")).unwrap();
    let headers = reader.headers().unwrap().clone();
    let record = reader.records().next().unwrap().unwrap();
    let field = |name: &str| &record[headers.iter().position(|h| h == name).unwrap()];
    assert_eq!(field("thinking_tokens"), "2");
    assert_eq!(field("finish_reason"), "MAX_TOKENS");
    assert_eq!(field("cost").parse::<f64>().unwrap(), cost);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_concurrency_64_the_settled_spend_never_passes_the_cap() {
    let sim = simulator(&two_projects(1, 5)).await;
    let work = Workdir::new();
    // Every fifth item gets a billed answer that is not `ok`: a safety
    // block, a cap spent on thinking, an empty candidate (tried again).
    let directives = [
        "",
        "[[sim:safety]] ",
        "",
        "[[sim:max_tokens]] ",
        "[[sim:other]] ",
    ];
    let items: Vec<(String, String)> = (0..400)
        .map(|i| {
            let directive = if i % 5 == 0 {
                directives[i / 5 % 5]
            } else {
                ""
            };
            (format!("item-{i}"), format!("{directive}{}", prompt(i)))
        })
        .collect();
    work.write(
        "job.jsonl",
        &job_of(&items, serde_json::json!({"max_output_tokens": 20})),
    );
    work.write("config.yaml", &two_accounts(&sim.base_url(), ""));
    // Each item's worst case is about $0.00006 (20 output tokens at
    // $2.50/1M and its input at $0.30/1M): the cap lets about a hundred
    // items through, many more than are in flight at once.
    let cap = 0.006;
    let out = work
        .keyfan(
            &run_args("state.db", &["-j", "64", "--max-cost", "0.006", "--json"]),
            &[],
        )
        .await;
    assert_eq!(out.status.code(), Some(5), "{}", explain(&out));
    let rows = results(&work.path("job.results.jsonl"));
    assert!(
        (65..items.len()).contains(&rows.len()),
        "the cap stopped the run after more items than are in flight at once: {}",
        rows.len()
    );
    let spent = results_cost(&rows);
    assert!(spent <= cap, "settled {spent} > cap {cap}");
    let billed_not_ok = rows
        .iter()
        .filter(|r| r["status"] != "ok" && r["cost"].as_f64().unwrap() > 0.0)
        .count();
    assert!(billed_not_ok > 0, "answers that are not ok are billed too");
    // The first hundred items are sent whatever the scheduling: among them
    // a safety block and a cap spent on thinking, each with its usage.
    let row = |id: &str| rows.iter().find(|r| r["id"] == id).expect(id);
    let blocked = row("item-5");
    assert_eq!(blocked["status"], "blocked", "{blocked}");
    assert_eq!(blocked["finish_reason"], "SAFETY", "{blocked}");
    assert!(blocked["input_tokens"].as_u64().unwrap() > 0, "{blocked}");
    let capped = row("item-15");
    assert_eq!(capped["finish_reason"], "MAX_TOKENS", "{capped}");
    assert_eq!(capped["thinking_tokens"], 20, "{capped}");
    assert!(capped["cost"].as_f64().unwrap() > 0.0, "{capped}");
    // Every request billed, the ones of unfinished items included.
    let report: serde_json::Value = serde_json::from_str(&work.read("job.report.json")).unwrap();
    let billed = report["totals"]["cost_usd"].as_f64().unwrap();
    assert!(billed <= cap, "billed {billed} > cap {cap}");
    // The report rounds to a millionth of a dollar.
    assert!(billed >= spent - 1e-6, "results {spent} > ledger {billed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sample_of_50_then_a_plain_run_sends_every_item_exactly_once() {
    let (sim, work) = scenario(&two_projects(1, 5), 200, |url| two_accounts(url, "")).await;
    let out = work
        .keyfan(&run_args("state.db", &["--sample", "50", "--json"]), &[])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["status"], "sampled", "{summary}");
    let sample = &summary["sample"];
    assert_eq!(sample["items"], 50, "{sample}");
    assert_eq!(sample["job_items"], 200, "{sample}");
    assert_eq!(sample["remaining"], 150, "{sample}");
    assert_eq!(sample["not_ok_share"], 0.0, "{sample}");
    let per_item = sample["cost_per_item_usd"].as_f64().unwrap();
    let job_cost = sample["job_cost_usd"].as_f64().unwrap();
    assert!((job_cost - per_item * 200.0).abs() < 1e-12, "{sample}");
    let rows = results(&work.path("job.results.jsonl"));
    assert_eq!(rows.len(), 50);
    let sampled: Vec<usize> = rows
        .iter()
        .map(|r| r["id"].as_str().unwrap()["item-".len()..].parse().unwrap())
        .collect();
    assert_ne!(sampled, (0..50).collect::<Vec<_>>(), "not the first 50");
    assert!(
        sampled.iter().any(|&i| i >= 150),
        "spread over the job: {sampled:?}"
    );
    let sampled_cost = results_cost(&rows);
    assert!((sampled_cost - per_item * 50.0).abs() < 1e-12);
    assert_eq!(stats(&sim).await.requests, 50);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("sample: 50 items (seed 0)"), "{stderr}");
    assert!(stderr.contains("the whole job (200 items)"), "{stderr}");

    let out = work.keyfan(&run_args("state.db", &[]), &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert_each_item_once_with_its_reply(&work.path("job.results.jsonl"), 200);
    assert_eq!(
        stats(&sim).await.requests,
        200,
        "no sampled item was sent again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_billed_empty_answer_is_not_tried_again_past_the_cap() {
    // An empty candidate (finishReason OTHER) is retried, and billed.
    let empty = serde_json::json!({
        "candidates": [{"finishReason": "OTHER"}],
        "usageMetadata": {"promptTokenCount": 5, "thoughtsTokenCount": 100, "totalTokenCount": 105}
    })
    .to_string();
    let server = Hostile::start(move |_| Answer::json(200, empty.clone())).await;
    let work = hostile_work(&server, 1, &[("proj-a", "gemini", &["hostile-key-a1"])], "");
    // The item's worst case is about $0.02 (8,192 output tokens at
    // $2.50/1M): one fits under $0.03, a second reservation for the retry
    // does not.
    let out = run_offline(&work, &["--max-cost", "0.03"], &[]).await;
    assert_exit_saying(&out, 5, "--max-cost 0.03 USD reached");
    assert_eq!(server.requests().len(), 1, "{}", explain(&out));
    assert!(
        results(&work.path("job.results.jsonl")).is_empty(),
        "the item stays pending"
    );
    let report: serde_json::Value = serde_json::from_str(&work.read("job.report.json")).unwrap();
    // 5 input tokens at $0.30/1M and 100 thinking tokens at $2.50/1M.
    assert_eq!(report["totals"]["cost_usd"], 0.000252, "{report}");
}
