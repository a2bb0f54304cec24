//! Answers no real API sends, from the scripted [`Hostile`] server: keyfan
//! must neither panic, nor lose an item, nor leak a key, nor store nonsense.
//! Runs go `--offline`: the script answers every request, the model list's
//! included.

use crate::hostile::*;
use crate::support::*;

/// Asserts that a finished run wrote every item of a [`jsonl_job`] of `n`
/// once, each `ok`, without any thread panicking.
fn assert_all_ok_without_panic(work: &Workdir, out: &std::process::Output, n: usize) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{}", explain(out));
    assert_eq!(out.status.code(), Some(0), "{}", explain(out));
    let rows = results(&work.path("job.results.jsonl"));
    assert_eq!(rows.len(), n, "{}", explain(out));
    for row in &rows {
        assert_eq!(row["status"], "ok", "{row}");
    }
}

/// Asserts that a finished run exited 3 and wrote `n` rows, each `failed`
/// after `attempts` attempts; returns the rows. `context` starts each
/// message.
fn assert_all_failed(
    work: &Workdir,
    out: &std::process::Output,
    n: usize,
    attempts: u32,
    context: &str,
) -> Vec<serde_json::Value> {
    assert_eq!(out.status.code(), Some(3), "{context}: {}", explain(out));
    let rows = results(&work.path("job.results.jsonl"));
    assert_eq!(rows.len(), n, "{context}: {}", explain(out));
    for row in &rows {
        assert_eq!(row["status"], "failed", "{context}: {row}");
        assert_eq!(row["attempts"], attempts, "{context}: {row}");
    }
    rows
}

/// Runs a 6-item job at concurrency 4 against `server` with two accounts of
/// `provider`, so that one account cooled by the first answer leaves the
/// other to finish the job.
async fn run_six_items(server: &Hostile, provider: &str) -> (Workdir, std::process::Output) {
    let work = hostile_work(
        server,
        6,
        &[
            ("proj-a", provider, &["hostile-key-a1"]),
            ("proj-b", provider, &["hostile-key-b1"]),
        ],
        "concurrency: 4\nmax_retries: 2\n",
    );
    let out = run_offline(&work, &[], &[]).await;
    (work, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_gemini_retry_delay_neither_panics_nor_loses_an_item() {
    let server = huge_gemini_delay_then_ok().await;
    let (work, out) = run_six_items(&server, "gemini").await;
    assert_all_ok_without_panic(&work, &out, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_openai_retry_after_neither_panics_nor_loses_an_item() {
    let server = Hostile::start(|seen| match seen.number {
        0 => Answer::json(429, fixture("openai_429_rate_limit_tokens.json"))
            .header("retry-after", "10000000000000000000"),
        _ => Answer::json(200, openai_reply("fine", "stop", 3)),
    })
    .await;
    let (work, out) = run_six_items(&server, "openai").await;
    assert_all_ok_without_panic(&work, &out, 6);
}

/// A server that answers every request with a redirect (301, 302, 307 and
/// 308 in turn) to `target`, with a query that must never be shown.
async fn redirecting_to(target: &Hostile) -> Hostile {
    let location = format!("{}/stolen?token=query-secret", target.base_url());
    Hostile::start(move |seen| {
        let status = [301, 302, 307, 308][seen.number % 4];
        Answer::json(status, "{}").header("location", &location)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed_and_the_key_stays_home() {
    let target = Hostile::start(|_| Answer::json(200, gemini_reply("stolen").to_string())).await;
    let origin = redirecting_to(&target).await;
    let target_host = target.base_url().replace("http://", "");
    let key = "redirect-key-must-stay-home";
    for provider in ["gemini", "openai"] {
        let work = hostile_work(&origin, 4, &[("proj-a", provider, &[key])], "");
        let out = run_offline(&work, &[], &[]).await;
        for row in assert_all_failed(&work, &out, 4, 1, provider) {
            let error = row["error"].as_str().expect("an error");
            assert!(error.contains(&target_host), "{provider}: {error}");
            assert!(!error.contains("query-secret"), "{provider}: {error}");
        }
    }
    let check = Workdir::new();
    check.write(
        "config.yaml",
        &hostile_config(
            &origin.base_url(),
            &[
                ("g", "gemini", &[key]),
                ("o", "openai", &[&format!("{key}-o")]),
            ],
            "",
        ),
    );
    let out = check
        .keyfan(&["keys", "check", "--config", "config.yaml"], &[])
        .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_ne!(out.status.code(), Some(0), "{}", explain(&out));
    assert_eq!(stdout.matches(&target_host).count(), 2, "{}", explain(&out));
    // Every request went to the origin, with the key; none reached the target.
    assert_eq!(origin.requests().len(), 10);
    for seen in origin.requests() {
        assert!(seen.path.starts_with("/v1"), "{seen:?}");
        let auth = seen
            .header("x-goog-api-key")
            .or(seen.header("authorization"));
        assert!(auth.is_some_and(|a| a.contains(key)), "{seen:?}");
    }
    assert!(target.requests().is_empty(), "{:?}", target.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_check_calls_every_401_invalid_whatever_its_body() {
    // llama.cpp's server, a bare proxy, an empty body, and OpenAI's own.
    let bodies = [
        r#"{"error":{"code":401,"message":"Invalid API Key","type":"authentication_error"}}"#
            .to_owned(),
        "Unauthorized".to_owned(),
        String::new(),
        fixture("openai_401_invalid_api_key.json"),
    ];
    let server =
        Hostile::start(move |seen| Answer::json(401, bodies[seen.number % 4].clone())).await;
    let work = Workdir::new();
    let keys = ["wrong-key-0", "wrong-key-1", "wrong-key-2", "wrong-key-3"];
    work.write(
        "config.yaml",
        &hostile_config(&server.base_url(), &[("local", "openai", &keys)], ""),
    );
    let out = work
        .keyfan(&["keys", "check", "--config", "config.yaml", "--json"], &[])
        .await;
    let rows: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", explain(&out)));
    assert_eq!(rows.len(), 4, "{}", explain(&out));
    for row in &rows {
        assert_eq!(row["status"], "invalid", "{row}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_answer_finished_normally_is_the_items_outcome() {
    // Every other request gets llama.cpp's real answer to a prompt its
    // model answers with nothing.
    let server = Hostile::start(|seen| match seen.number % 2 {
        0 => Answer::json(200, openai_reply("", "stop", 0)),
        _ => Answer::json(200, openai_reply("fine", "stop", 3)),
    })
    .await;
    let work = hostile_work(
        &server,
        12,
        &[("local", "openai", &["local-key"])],
        "concurrency: 4\n",
    );
    let started = std::time::Instant::now();
    let out = run_offline(&work, &[], &[]).await;
    assert_all_ok_without_panic(&work, &out, 12);
    let rows = results(&work.path("job.results.jsonl"));
    assert!(rows.iter().all(|row| row["attempts"] == 1), "{rows:?}");
    assert_eq!(rows.iter().filter(|row| row["output"] == "").count(), 6);
    assert_eq!(server.requests().len(), 12);
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_gemini_candidate_is_retried_twice_without_pausing_the_key() {
    let other = fixture("gemini_candidate_finish_other_no_content.json");
    let server = Hostile::start(move |_| Answer::json(200, other.clone())).await;
    let work = hostile_work(
        &server,
        4,
        &[("proj-a", "gemini", &["only-key"])],
        "concurrency: 4\nmax_retries: 5\n",
    );
    let started = std::time::Instant::now();
    let out = run_offline(&work, &[], &[]).await;
    for row in assert_all_failed(&work, &out, 4, 3, "OTHER") {
        assert!(row["error"]
            .as_str()
            .unwrap()
            .contains("finishReason OTHER"));
    }
    assert_eq!(server.requests().len(), 12);
    // 12 failures in a row would open the key's circuit for 15 s if they
    // counted against it.
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_token_counts_are_a_malformed_reply_not_a_poisoned_ledger() {
    let mut absurd = gemini_reply("fine");
    absurd["usageMetadata"]["promptTokenCount"] = u64::MAX.into();
    let absurd = absurd.to_string();
    let fine = gemini_reply("fine").to_string();
    let server = Hostile::start(move |seen| match seen.number {
        0 | 1 => Answer::json(200, absurd.clone()),
        _ => Answer::json(200, fine.clone()),
    })
    .await;
    let work = hostile_work(
        &server,
        3,
        &[("proj-a", "gemini", &["usage-key"])],
        "concurrency: 1\n",
    );
    let out = run_offline(&work, &[], &[]).await;
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("out of range"),
        "{}",
        explain(&out)
    );
    assert_all_ok_without_panic(&work, &out, 3);
    let rows = results(&work.path("job.results.jsonl"));
    assert!(rows.iter().all(|row| row["input_tokens"] == 6), "{rows:?}");
    // The state file reads back for every command that reads it.
    for args in [
        &["report", "--state", "state.db"][..],
        &[
            "keys",
            "status",
            "--config",
            "config.yaml",
            "--state",
            "state.db",
        ],
        &run_args("state.db", &["--offline"]),
    ] {
        let out = work.keyfan(args, &[]).await;
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", explain(&out));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_name_that_would_change_the_url_is_refused_before_sending() {
    let server = Hostile::start(|_| Answer::json(200, gemini_reply("sent").to_string())).await;
    let work = hostile_work(&server, 0, &[("proj-a", "gemini", &["model-key"])], "");
    work.write(
        "job.jsonl",
        "{\"id\": \"a\", \"prompt\": \"hi\"}\n{\"id\": \"b\", \"prompt\": \"hi\", \"model\": \"gemini-../../../evil?x=1#\"}\n",
    );
    let out = run_offline(&work, &[], &[]).await;
    assert_exit_saying(
        &out,
        2,
        "job.jsonl:2: field `model`: is not a model name: '?' is not allowed",
    );
    assert!(server.requests().is_empty(), "{:?}", server.requests());
}
