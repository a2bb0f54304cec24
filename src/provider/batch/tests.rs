//! The batch client against the simulator, in memory: every request goes
//! through the same code as over HTTP.

use super::*;
use crate::provider::{Generation, RawBody};
use crate::sim::{BatchEnd, BatchesConfig, ProjectConfig, SimConfig, Simulator};
use std::time::Duration;

const DELAY: Duration = Duration::from_millis(400);

fn sim(end: BatchEnd) -> Simulator {
    let config = SimConfig {
        projects: vec![
            ProjectConfig {
                name: "p".into(),
                keys: vec![ApiKey::new("key-p")],
                limits: Default::default(),
            },
            ProjectConfig {
                name: "q".into(),
                keys: vec![ApiKey::new("key-q")],
                limits: Default::default(),
            },
        ],
        batches: BatchesConfig {
            pending_ms: 100,
            running_ms: 200,
            end,
            lose_create_replies: 0,
        },
        ..SimConfig::default()
    };
    Simulator::new(&config).expect("a valid simulator config")
}

fn request<'a>(model: &'a str, prompt: &'a str) -> Request<'a> {
    Request {
        model,
        prompt,
        turns: &[],
        system: None,
        max_output_tokens: None,
        temperature: Some(0.5),
        generation: Generation::none(),
        media: &[],
    }
}

/// Writes `prompts` as a batch input file, keyed `k0`, `k1`…, and creates
/// the batch named `name`.
async fn submit(
    client: &Client,
    key: &ApiKey,
    model: &str,
    prompts: &[&str],
    name: &str,
    dir: &Path,
) -> BatchJob {
    let path = dir.join(format!("{name}.jsonl"));
    let mut file = Vec::new();
    for (n, prompt) in prompts.iter().enumerate() {
        client
            .write_batch_line(&format!("k{n}"), &request(model, prompt), &mut file)
            .expect("a line");
    }
    std::fs::write(&path, &file).expect("write input");
    let input = BatchInput {
        path: &path,
        size: file.len() as u64,
        model,
        display_name: name,
    };
    client.create_batch(key, input).await.expect("created")
}

/// Downloads `job`'s results and parses every line.
async fn results(client: &Client, key: &ApiKey, job: &BatchJob, dir: &Path) -> Vec<BatchResult> {
    let path = dir.join("results.jsonl");
    client
        .download_batch_results(key, job, &path)
        .await
        .expect("downloaded");
    std::fs::read(&path)
        .expect("results file")
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| client.parse_batch_line(l).expect("a results line"))
        .collect()
}

fn text(outcome: &BatchOutcome) -> &str {
    match outcome {
        BatchOutcome::Reply(reply) => &reply.text,
        other => panic!("not a reply: {other:?}"),
    }
}

#[tokio::test]
async fn a_gemini_file_batch_waits_runs_and_answers_every_key() {
    let sim = sim(BatchEnd::Succeeded);
    let client = Client::in_memory(ProviderKind::Gemini, sim.router(), Duration::from_secs(5));
    let key = ApiKey::new("key-p");
    let dir = tempfile::tempdir().expect("tempdir");
    let prompts = ["first", "second [[sim:batch_error]]", "third"];
    let job = submit(
        &client,
        &key,
        "gemini-2.5-flash",
        &prompts,
        "kf-1",
        dir.path(),
    )
    .await;
    assert!(job.name.starts_with("batches/"), "{job:?}");
    assert_eq!(
        (job.state, job.total, job.display_name.as_str()),
        (BatchState::Pending, 3, "kf-1")
    );
    sim.advance_clock(Duration::from_millis(150));
    assert_eq!(
        client.get_batch(&key, &job.name).await.expect("get").state,
        BatchState::Running
    );
    sim.advance_clock(DELAY);
    let done = client.get_batch(&key, &job.name).await.expect("get");
    assert_eq!(
        (done.state, done.succeeded, done.failed),
        (BatchState::Succeeded, 2, 1)
    );
    let lines = results(&client, &key, &done, dir.path()).await;
    let keys: Vec<&str> = lines.iter().map(|l| l.key.as_str()).collect();
    assert_eq!(keys, ["k0", "k1", "k2"]);
    assert!(text(&lines[0].outcome).contains("digest:"), "{lines:?}");
    match &lines[1].outcome {
        BatchOutcome::Failed(e) => assert!(e.message.contains("invalid argument"), "{e:?}"),
        other => panic!("{other:?}"),
    }
    // Another project sees neither the batch nor its results.
    let other = ApiKey::new("key-q");
    assert!(client.get_batch(&other, &job.name).await.is_err());
    assert!(client.list_batches(&other).await.expect("list").is_empty());
    let listed = client.list_batches(&key).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].display_name, "kf-1");
}

#[tokio::test]
async fn the_gemini_input_line_is_snake_case_but_keeps_the_schema_names() {
    let client = Client::in_memory(
        ProviderKind::Gemini,
        sim(BatchEnd::Succeeded).router(),
        Duration::from_secs(5),
    );
    let schema =
        serde_json::json!({"type": "object", "properties": {"isGood": {"type": "boolean"}}});
    let generation = Generation {
        response_schema: Some(std::sync::Arc::new(schema)),
        ..Generation::default()
    };
    let req = Request {
        system: Some("be brief"),
        max_output_tokens: Some(64),
        generation: &generation,
        ..request("gemini-2.5-flash", "hello")
    };
    let mut out = Vec::new();
    client
        .write_batch_line("id-1", &req, &mut out)
        .expect("a line");
    let line: GeminiBatchInputLine = serde_json::from_slice(&out).expect("JSON");
    assert_eq!(line.key, "id-1");
    let config = &line.request["generation_config"];
    assert_eq!(config["max_output_tokens"], 64);
    assert!(
        config["response_json_schema"]["properties"]["isGood"].is_object(),
        "{line:?}"
    );
    assert!(line.request["system_instruction"].is_object(), "{line:?}");
}

#[tokio::test]
async fn an_openai_batch_answers_out_of_order_and_an_expired_one_gives_back_the_rest() {
    for end in [BatchEnd::Succeeded, BatchEnd::Expired] {
        let sim = sim(end);
        let client = Client::in_memory(ProviderKind::Openai, sim.router(), Duration::from_secs(5));
        let key = ApiKey::new("key-p");
        let dir = tempfile::tempdir().expect("tempdir");
        let prompts = ["a", "b", "c [[sim:batch_error]]", "d"];
        let job = submit(&client, &key, "gpt-4o-mini", &prompts, "kf-2", dir.path()).await;
        assert_eq!(
            (job.state, job.display_name.as_str()),
            (BatchState::Pending, "kf-2")
        );
        sim.advance_clock(DELAY);
        let done = client.get_batch(&key, &job.name).await.expect("get");
        let lines = results(&client, &key, &done, dir.path()).await;
        let mut keys: Vec<&str> = lines.iter().map(|l| l.key.as_str()).collect();
        assert_ne!(
            keys,
            ["k0", "k1", "k2", "k3"],
            "the simulator does not keep the order"
        );
        keys.sort_unstable();
        assert_eq!(keys, ["k0", "k1", "k2", "k3"]);
        let of = |k: &str| &lines.iter().find(|l| l.key == k).expect("a line").outcome;
        assert!(text(of("k0")).contains("digest:"));
        match end {
            BatchEnd::Succeeded => {
                assert_eq!(done.state, BatchState::Succeeded);
                assert!(matches!(of("k2"), BatchOutcome::Failed(e) if e.status == Some(400)));
            }
            _ => {
                assert_eq!(done.state, BatchState::Expired);
                assert_eq!(of("k2"), &BatchOutcome::Unfinished);
                assert_eq!(of("k3"), &BatchOutcome::Unfinished);
            }
        }
    }
}

#[tokio::test]
async fn a_cancelled_batch_ends_cancelled_and_a_failed_one_says_why() {
    for kind in [ProviderKind::Gemini, ProviderKind::Openai] {
        let model = if kind == ProviderKind::Gemini {
            "gemini-2.5-flash"
        } else {
            "gpt-4o-mini"
        };
        let sim = sim(BatchEnd::Succeeded);
        let client = Client::in_memory(kind, sim.router(), Duration::from_secs(5));
        let key = ApiKey::new("key-p");
        let dir = tempfile::tempdir().expect("tempdir");
        let job = submit(&client, &key, model, &["x"], "kf-3", dir.path()).await;
        client.cancel_batch(&key, &job.name).await.expect("cancel");
        let after = client.get_batch(&key, &job.name).await.expect("get");
        assert_eq!(after.state, BatchState::Cancelled, "{kind:?}");
        let failed = submit(
            &client,
            &key,
            model,
            &["y"],
            "kf [[sim:batch_failed]]",
            dir.path(),
        )
        .await;
        sim.advance_clock(DELAY);
        let failed = client.get_batch(&key, &failed.name).await.expect("get");
        assert_eq!(failed.state, BatchState::Failed, "{kind:?}");
        assert!(
            failed
                .error
                .as_deref()
                .is_some_and(|e| e.contains("failed")),
            "{failed:?}"
        );
        assert!(failed.results.is_empty());
    }
}

#[tokio::test]
async fn a_body_written_elsewhere_goes_in_the_line_as_written_but_for_the_model() {
    // A line of a `client` batch for `body`, written for the API of `kind`.
    let line = |client: ProviderKind, kind: ProviderKind, body: &serde_json::Value| {
        let client = Client::in_memory(
            client,
            sim(BatchEnd::Succeeded).router(),
            Duration::from_secs(5),
        );
        let body = RawBody {
            kind,
            body: std::sync::Arc::new(body.as_object().expect("an object").clone()),
        };
        let req = RawRequest {
            model: "wire-model",
            body: &body,
            max_output_tokens: None,
        };
        let mut out = Vec::new();
        client
            .write_raw_batch_line("id-1", &req, &mut out)
            .map(|()| serde_json::from_slice::<serde_json::Value>(&out).expect("JSON"))
    };
    let (openai, gemini) = (ProviderKind::Openai, ProviderKind::Gemini);
    let chat = serde_json::json!({"model": "alias", "messages": [{"role": "user", "content": "hi"}],
                                  "logit_bias": {"50256": -100}, "user": "u-1"});
    let mut expected = chat.clone();
    expected["model"] = "wire-model".into();
    assert_eq!(
        line(openai, openai, &chat).expect("a line"),
        serde_json::json!({"custom_id": "id-1", "method": "POST",
                           "url": "/v1/chat/completions", "body": expected})
    );
    // Gemini: the batch names the model; the request keeps its own casing.
    let generate = serde_json::json!({"model": "models/x", "contents": [{"parts": [{"text": "hi"}]}],
                                      "generationConfig": {"temperature": 0.7}});
    let mut expected = generate.clone();
    expected.as_object_mut().expect("an object").remove("model");
    assert_eq!(
        line(gemini, gemini, &generate).expect("a line"),
        serde_json::json!({"key": "id-1", "request": expected})
    );
    // A body for another API does not go in this provider's batch.
    let error = line(gemini, openai, &chat).expect_err("refused");
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
}
