//! `keyfan estimate`: hand-computed figures, nothing sent, unknown prices.

use crate::support::{assert_exit_saying, explain, simulator, stats, two_projects, Workdir};

/// 40 ASCII characters (10 tokens, cap 100); 10 hanzi (10 tokens, no cap:
/// 8,192); on gemini-2.5-pro "Hello" + system "Be terse." (2 + 3 tokens,
/// cap 1,000).
const JOB: &str = r#"{"id":"a","prompt":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","max_output_tokens":100}
{"id":"b","prompt":"用一句话解释机器学习"}
{"id":"c","prompt":"Hello","system":"Be terse.","model":"gemini-2.5-pro","max_output_tokens":1000}
"#;

fn config(base_url: &str) -> String {
    format!(
        "providers: {{ gemini: {{ base_url: {base_url} }} }}\nmodel: gemini-2.5-flash\n\
         accounts:\n  - name: proj-a\n    keys: [test-key-a1]\n    limits: {{ gemini-2.5-flash: {{ rpm: 60, rpd: 100 }} }}\n\
         \x20 - name: proj-b\n    keys: [test-key-b1]\n    limits: {{ gemini-2.5-flash: {{ rpm: 60, rpd: 100 }} }}\n"
    )
}

#[tokio::test]
async fn the_estimate_equals_the_hand_computed_figures_and_sends_nothing() {
    let sim = simulator(&two_projects(0, 0)).await;
    let work = Workdir::new();
    work.write("job.jsonl", JOB);
    work.write("config.yaml", &config(&sim.base_url()));
    let args = [
        "estimate",
        "job.jsonl",
        "--config",
        "config.yaml",
        "--expect-output",
        "300",
    ];
    let out = work.keyfan(&[&args[..], &["--json"]].concat(), &[]).await;
    assert!(out.status.success(), "{}", explain(&out));
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let close = |v: &serde_json::Value, want: f64| {
        let got = v.as_f64().expect("a number");
        assert!((got - want).abs() < 1e-12, "{got} != {want}");
    };
    // Flash: 20 input tokens; expected output 100 (capped) + 300; worst
    // 100 + 8,192. $0.30 / $2.50 per 1M.
    let flash = &e["models"][0];
    assert_eq!(flash["model"], "gemini-2.5-flash");
    assert_eq!(
        (&flash["items"], &flash["input_tokens"]),
        (&2.into(), &20.into())
    );
    assert_eq!(flash["output_tokens_expected"], 400);
    assert_eq!(flash["output_tokens_worst"], 8292);
    close(
        &flash["cost"]["expected_usd"],
        (20.0 * 0.30 + 400.0 * 2.50) / 1e6,
    );
    close(
        &flash["cost"]["worst_usd"],
        (20.0 * 0.30 + 8292.0 * 2.50) / 1e6,
    );
    assert_eq!(flash["wall_time"]["rpm"], 120);
    // Pro: 5 input tokens, 300 expected, 1,000 worst; $1.25 / $10.
    let pro = &e["models"][1];
    close(
        &pro["cost"]["expected_usd"],
        (5.0 * 1.25 + 300.0 * 10.0) / 1e6,
    );
    let total = (20.0 * 0.30 + 400.0 * 2.50 + 5.0 * 1.25 + 300.0 * 10.0) / 1e6;
    close(&e["total"]["cost"]["expected_usd"], total);
    close(&e["total"]["cost"]["expected_batch_usd"], total / 2.0);
    assert_eq!(e["total"]["input_tokens"], 25);
    assert_eq!(e["expected_output"]["from"], "--expect-output");
    assert_eq!(
        pro["price"]["source"],
        "https://ai.google.dev/gemini-api/docs/pricing"
    );

    let table = work.keyfan(&args, &[]).await;
    assert!(table.status.success(), "{}", explain(&table));
    let text = String::from_utf8_lossy(&table.stdout);
    for says in [
        "gemini-2.5-flash",
        "$0.0010",
        "300 tokens per item (--expect-output)",
        "under a minute at 2 projects × 60 RPM",
    ] {
        assert!(text.contains(says), "`{says}` missing from:\n{text}");
    }
    let stats = stats(&sim).await;
    assert_eq!((stats.requests, stats.model_lists), (0, 0), "{stats:?}");
}

#[tokio::test]
async fn a_model_without_a_price_is_an_error_until_the_config_prices_it() {
    let work = Workdir::new();
    work.write(
        "job.jsonl",
        "{\"id\":\"1\",\"prompt\":\"hi\",\"model\":\"llama3\"}\n",
    );
    let accounts = "accounts:\n  - { name: local, provider: openai, keys: [k] }\n";
    work.write("config.yaml", accounts);
    let args = ["estimate", "job.jsonl", "--config", "config.yaml"];
    let out = work.keyfan(&args, &[]).await;
    assert_exit_saying(&out, 2, "no price is known for model `llama3` (line 1)");
    work.write(
        "config.yaml",
        &format!("{accounts}prices:\n  llama3: {{ input: 0, output: 0 }}\n"),
    );
    let out = work.keyfan(&args, &[]).await;
    assert!(out.status.success(), "{}", explain(&out));
    work.write(
        "config.yaml",
        &format!("{accounts}prices:\n  llama3: {{ input: 0, output: 0, cache: 1 }}\n"),
    );
    let out = work.keyfan(&args, &[]).await;
    assert_exit_saying(&out, 2, "prices.llama3: unknown field `cache`");
}

/// The heuristic against the simulator's own count (`countTokens`, which
/// counts as its `generateContent` bills) on the demo job: the figure the
/// README quotes.
#[tokio::test]
async fn on_the_demo_job_the_heuristic_is_within_the_readme_figure_of_the_simulator() {
    let sim = simulator(&two_projects(0, 0)).await;
    let demo = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/jobs/demo.jsonl"))
        .expect("the demo job");
    let client = reqwest::Client::new();
    let (mut heuristic, mut counted) = (0u64, 0u64);
    for line in demo.lines().filter(|l| !l.trim().is_empty()) {
        let item: serde_json::Value = serde_json::from_str(line).unwrap();
        let texts = [&item["prompt"], &item["system"]];
        for text in texts.iter().filter_map(|t| t.as_str()) {
            heuristic += keyfan::estimate::estimate_tokens(text);
            let body = serde_json::json!({"contents": [{"parts": [{"text": text}]}]});
            let reply: serde_json::Value = client
                .post(format!(
                    "{}/v1beta/models/gemini-2.5-flash:countTokens",
                    sim.base_url()
                ))
                .header("x-goog-api-key", "test-key-a1")
                .json(&body)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            counted += reply["totalTokens"].as_u64().expect("totalTokens");
        }
    }
    let ratio = heuristic as f64 / counted as f64;
    println!("demo job: heuristic {heuristic} tokens, simulator {counted}, ratio {ratio:.3}");
    assert!((1.0..1.25).contains(&ratio), "{heuristic} vs {counted}");
}

/// `max_cost_per_item`: an item whose worst case costs more fails
/// validation with its line; nothing is sent.
#[tokio::test]
async fn an_item_over_max_cost_per_item_is_refused_with_its_line_and_nothing_is_sent() {
    let sim = simulator(&two_projects(0, 0)).await;
    let work = Workdir::new();
    work.write("job.jsonl", JOB);
    // Item c's worst case: (5 × $1.25 + 1,000 × $10) / 1M = $0.01000625;
    // item b's: 10 input + 8,192 output of flash = $0.020483.
    work.write(
        "config.yaml",
        &format!("{}max_cost_per_item: 0.01\n", config(&sim.base_url())),
    );
    let out = work
        .keyfan(&["run", "job.jsonl", "--config", "config.yaml"], &[])
        .await;
    let stderr = assert_exit_saying(&out, 2, "2 item(s) whose worst case costs more");
    assert!(
        stderr.contains("job.jsonl:2: field `max_output_tokens`")
            && stderr.contains("job.jsonl:3: field `max_output_tokens`"),
        "{stderr}"
    );
    assert!(!stderr.contains("job.jsonl:1:"), "{stderr}");
    assert_eq!(stats(&sim).await.requests, 0);
}

/// A plain run warns once per model that has no price; it is not refused.
#[tokio::test]
async fn a_plain_run_warns_once_of_a_model_without_a_price() {
    let sim = simulator(&two_projects(0, 0)).await;
    let work = Workdir::new();
    work.write(
        "job.jsonl",
        "{\"id\":\"1\",\"prompt\":\"hi\",\"model\":\"llama3\"}\n{\"id\":\"2\",\"prompt\":\"yo\",\"model\":\"llama3\"}\n",
    );
    work.write(
        "config.yaml",
        &format!(
            "providers: {{ openai: {{ base_url: {} }} }}\naccounts:\n  - {{ name: local, provider: openai, keys: [test-key-a1] }}\n",
            sim.base_url()
        ),
    );
    let out = work
        .keyfan(
            &["run", "job.jsonl", "--config", "config.yaml", "--offline"],
            &[],
        )
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warning = "no price is known for model `llama3` (line 1): its cost is not counted";
    assert_eq!(stderr.matches(warning).count(), 1, "{}", explain(&out));
}

/// `--count-tokens`: the API counts each item's input (through the key
/// pool), and nothing is generated.
#[tokio::test]
async fn count_tokens_asks_the_api_for_each_items_input_and_generates_nothing() {
    let sim = simulator(&two_projects(0, 0)).await;
    let work = Workdir::new();
    work.write("job.jsonl", JOB);
    work.write("config.yaml", &config(&sim.base_url()));
    let estimate = async |extra: &[&str]| {
        let args = [
            &["estimate", "job.jsonl", "--config", "config.yaml", "--json"],
            extra,
        ]
        .concat();
        let out = work.keyfan(&args, &[]).await;
        assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("estimate JSON")
    };
    let guessed = estimate(&[]).await;
    assert_eq!(guessed["input_counted"], 0);
    let counted = estimate(&["--count-tokens"]).await;
    assert_eq!(counted["input_counted"], 3, "every item counted by the API");
    // The simulator counts 4 characters a token in every script: the ten
    // Chinese characters of item b are 3 tokens, not the heuristic's 10.
    let input = |e: &serde_json::Value| e["total"]["input_tokens"].as_u64().unwrap();
    assert_eq!(input(&guessed) - input(&counted), 7, "{counted}");
    let stats = stats(&sim).await;
    let counts: u64 = stats.keys.values().map(|k| k.requests).sum();
    assert_eq!(counts, 3, "one countTokens per item");
    assert!(
        stats.projects.values().all(|p| p.requests == 0),
        "nothing generated: {stats:?}"
    );
}
