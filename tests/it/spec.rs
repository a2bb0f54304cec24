use crate::support::*;
use keyfan::sim::SimServer;

/// A simulator without latency, and a work directory whose `config.yaml`
/// has one key for it.
async fn one_key() -> (SimServer, Workdir) {
    let sim = simulator(&two_projects(0, 0)).await;
    let work = Workdir::new();
    work.write("config.yaml", &one_account(&sim.base_url()));
    (sim, work)
}

/// A CSV data file of `n` rows: `key,text,lang`.
fn rows(n: usize) -> String {
    let mut csv = String::from("key,text,lang\n");
    for i in 0..n {
        let lang = ["French", "German", "Hindi"][i % 3];
        csv.push_str(&format!("k{i},\"Sentence {i}, with a comma\",{lang}\n"));
    }
    csv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_over_a_10000_row_csv_sends_each_row_its_own_prompt() {
    let (sim, work) = one_key().await;
    work.write("rows.csv", &rows(10_000));
    work.write("instructions.txt", "Translate faithfully.");
    work.write(
        "job.yaml",
        "defaults:\n  max_output_tokens: 64\ntemplate: \"{{file:instructions.txt}} Into {{lang}}: {{text}}\"\nid: \"{{key}}\"\ndata: rows.csv\n",
    );
    let args = run_job(
        "job.yaml",
        "config.yaml",
        &["--state", "s.db", "-q", "--concurrency", "32"],
    );
    let out = work.keyfan(&args, &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let results = results(&work.path("job.results.jsonl"));
    assert_eq!(results.len(), 10_000);
    let mut seen = vec![false; 10_000];
    for row in &results {
        let i: usize = row["id"].as_str().unwrap()[1..].parse().unwrap();
        assert!(!std::mem::replace(&mut seen[i], true), "k{i} twice");
        let lang = ["French", "German", "Hindi"][i % 3];
        let prompt = format!("Translate faithfully. Into {lang}: Sentence {i}, with a comma");
        assert_eq!(row["status"], "ok", "{row}");
        assert!(
            row["output"].as_str().unwrap().contains(&digest(&prompt)),
            "{row}"
        );
    }
    assert_eq!(stats(&sim).await.requests, 10_000);

    // An edit of the included file is an edit of the job: nothing is sent.
    work.write("instructions.txt", "Translate loosely.");
    let out = work.keyfan(&args, &[]).await;
    assert_exit_saying(&out, 2, "has changed since run 1");
    assert_eq!(stats(&sim).await.requests, 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_with_an_unknown_placeholder_sends_nothing_and_names_file_line_and_field() {
    let (sim, work) = one_key().await;
    work.write("rows.csv", "key,text\nk1,hello\n");
    work.write(
        "job.yaml",
        "template: \"Into {{lang}}: {{text}}\"\n\ndata: rows.csv\n",
    );
    let out = work
        .keyfan(
            &run_job("job.yaml", "config.yaml", &["--state", "s.db"]),
            &[],
        )
        .await;
    let stderr = assert_exit_saying(&out, 2, "job.yaml:3: field `data`: ");
    assert!(stderr.contains("no column `lang`"), "{stderr}");
    assert_eq!(stats(&sim).await.requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setting_the_provider_lacks_is_refused_naming_the_item_s_line_and_field() {
    let (sim, work) = one_key().await;
    work.write(
        "job.yaml",
        "defaults:\n  top_k: 20\n  thinking_budget: 0\ntemplate: \"{{q}}\"\nitems:\n  - q: one\n  - q: two\n    reasoning_effort: high\n",
    );
    let args = run_job("job.yaml", "config.yaml", &["--state", "s.db"]);
    let out = work.keyfan(&args, &[]).await;
    let stderr = assert_exit_saying(
        &out,
        2,
        "job.yaml:7: field `reasoning_effort`: model `gemini-2.5-flash` is served by gemini \
         accounts, whose API has no `reasoning_effort`",
    );
    assert!(stderr.contains("nothing was sent"), "{stderr}");
    assert_eq!(stats(&sim).await.requests, 0);

    // Without it, the settings Gemini has go out.
    work.write(
        "job.yaml",
        "defaults:\n  top_k: 20\n  thinking_budget: 0\n  stop: [\"\\n\"]\ntemplate: \"{{q}}\"\nitems:\n  - q: one\n",
    );
    let out = work.keyfan(&args, &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_answer_that_fails_once_is_asked_again_and_then_passes() {
    let (sim, work) = one_key().await;
    work.write(
        "label.schema.json",
        r#"{"type": "object", "properties": {"label": {"enum": ["spam", "ham"]},
            "reason": {"type": "string"}}, "required": ["label", "reason"],
            "additionalProperties": false}"#,
    );
    work.write(
        "job.yaml",
        "defaults:\n  response_schema: label.schema.json\ntemplate: \"Label: {{text}}\"\nid: \"{{id}}\"\nitems:\n  - {id: fine, text: hello}\n  - {id: once, text: \"win a prize [[sim:badjson:1]]\"}\n  - {id: never, text: \"buy now [[sim:badjson]]\", schema_retries: 2}\n",
    );
    let args = run_job("job.yaml", "config.yaml", &["--state", "s.db", "-q"]);
    let out = work.keyfan(&args, &[]).await;
    // An item failed: exit code 3.
    assert_eq!(out.status.code(), Some(3), "{}", explain(&out));
    let rows = results(&work.path("job.results.jsonl"));
    let row = |id: &str| rows.iter().find(|r| r["id"] == id).unwrap().clone();

    let fine = row("fine");
    assert_eq!(
        (&fine["status"], &fine["attempts"]),
        (&"ok".into(), &1.into())
    );
    assert_eq!(fine["output_json"]["label"], "spam");
    let once = row("once");
    assert_eq!(
        (&once["status"], &once["attempts"]),
        (&"ok".into(), &2.into()),
        "{once}"
    );
    assert!(once["output_json"]["reason"]
        .as_str()
        .unwrap()
        .starts_with("digest:"));
    let never = row("never");
    assert_eq!(
        (&never["status"], &never["attempts"]),
        (&"failed".into(), &3.into())
    );
    assert_eq!(never["output_json"], serde_json::Value::Null);
    assert_eq!(
        never["error"],
        "the answer does not fit response_schema: required property `label` is missing"
    );
    assert_eq!(stats(&sim).await.requests, 6);

    let report: serde_json::Value = serde_json::from_str(&work.read("job.report.json")).unwrap();
    assert_eq!(report["totals"]["schema_failures"], 4);
    assert!(work
        .read("job.report.md")
        .contains("**Schema failures**: 4 answer(s)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_keyfan_cannot_check_is_refused_before_anything_is_sent() {
    let (sim, work) = one_key().await;
    work.write(
        "job.jsonl",
        "{\"id\": 1, \"prompt\": \"p\", \"response_schema\": {\"type\": \"string\", \"pattern\": \"^a\"}}\n",
    );
    let out = work.keyfan(&run_args("s.db", &[]), &[]).await;
    assert_exit_saying(
        &out,
        2,
        "job.jsonl:1: field `response_schema`: at /pattern: keyfan cannot check `pattern`",
    );
    assert_eq!(stats(&sim).await.requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_goes_out_turn_by_turn_and_is_answered_to_its_last_turn() {
    let (_sim, work) = one_key().await;
    work.write(
        "job.jsonl",
        "{\"id\": \"c1\", \"messages\": [{\"role\": \"user\", \"text\": \"My name is Ada.\"}, {\"role\": \"assistant\", \"text\": \"Hello Ada!\"}, {\"role\": \"user\", \"text\": \"What is my name?\"}]}\n",
    );
    let out = work.keyfan(&run_args("s.db", &["-q"]), &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let rows = results(&work.path("job.results.jsonl"));
    let output = rows[0]["output"].as_str().unwrap();
    assert!(output.contains(&digest("What is my name?")), "{output}");
    // Every turn was sent: the simulator counts 4 + 3 + 4 tokens (one per
    // 4 characters of each), where the last turn alone would be 4.
    assert_eq!(rows[0]["input_tokens"], 11, "{}", rows[0]);
}
