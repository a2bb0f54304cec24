//! The providers' own batch files run as jobs, unchanged: OpenAI Batch API
//! and Gemini batch input files, their output written in each batch API's
//! own output shape (`--out-format batch`) and read back as its documented
//! lines, their bodies sent as written, and bad lines refused before
//! anything is sent.

use crate::hostile::{gemini_reply, openai_reply, Answer, Hostile};
use crate::support::{
    assert_exit_saying, digest, explain, simulator, stats, Workdir, TWO_PROVIDER_PROJECTS,
};
use keyfan::sim::SimServer;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// An OpenAI Batch API output line, as the API documents it (openai-openapi
/// `BatchRequestOutput`): nothing more, nothing less.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenAiOutputLine {
    id: String,
    custom_id: String,
    response: Option<OpenAiResponse>,
    error: Option<OpenAiError>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenAiResponse {
    status_code: u16,
    request_id: String,
    body: ChatCompletion,
}

/// The fields of a `chat.completion` a batch pipeline reads.
#[derive(Debug, Deserialize)]
struct ChatCompletion {
    object: String,
    model: String,
    choices: Vec<ChatChoice>,
    usage: ChatUsage,
}

#[derive(Debug, Deserialize)]
struct ChatChoice {
    message: ChatMessage,
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    content: String,
}

#[derive(Debug, Deserialize)]
struct ChatUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenAiError {
    code: String,
    message: String,
}

/// A Gemini batch results line: `{"response": GenerateContentResponse,
/// "key"}`, or `{"error": Status, "key"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GeminiOutputLine {
    key: String,
    response: Option<GenerateContentResponse>,
    error: Option<GeminiStatus>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateContentResponse {
    candidates: Vec<Candidate>,
    usage_metadata: UsageMetadata,
    model_version: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    content: Content,
    finish_reason: String,
}

#[derive(Debug, Deserialize)]
struct Content {
    role: String,
    parts: Vec<Part>,
}

#[derive(Debug, Deserialize)]
struct Part {
    text: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    prompt_token_count: u64,
    total_token_count: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GeminiStatus {
    code: i32,
    message: String,
    status: String,
}

/// The text of `tests/fixtures/batch/NAME`.
fn batch_fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/batch/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A config with Gemini account `g` and OpenAI-compatible account `o`
/// (the simulator's [`TWO_PROVIDER_PROJECTS`]) at `base_url`, then `extra`.
fn config(base_url: &str, extra: &str) -> String {
    format!(
        "providers:\n  gemini: {{ base_url: \"{base_url}\" }}\n  openai: {{ base_url: \"{base_url}\" }}\nmodel: gemini-2.5-flash\ntimeout: 5s\n{extra}accounts:\n  - name: g\n    keys: [test-key-g1]\n  - name: o\n    provider: openai\n    keys: [test-key-o1]\n"
    )
}

/// Parses every line of the JSONL file at `path` as a `T`.
fn lines<T: serde::de::DeserializeOwned>(work: &Workdir, name: &str) -> Vec<T> {
    work.read(name)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// Runs `job` with `config.yaml` (state `s.db`) to `--out out`, then
/// `extra`, and asserts that it ends with exit code 0.
async fn run_ok(work: &Workdir, job: &str, out: &str, extra: &[&str]) {
    let args = [
        &[
            "run",
            job,
            "--config",
            "config.yaml",
            "--state",
            "s.db",
            "--out",
            out,
        ],
        extra,
    ]
    .concat();
    let output = work.keyfan(&args, &[]).await;
    assert_eq!(output.status.code(), Some(0), "{}", explain(&output));
}

/// Writes the job `(name, text)` and a [`config`] for `sim`, and runs the
/// job to `out` with `--out-format batch`, asserting that it ends with 0.
async fn run_batch(work: &Workdir, sim: &SimServer, (name, text): (&str, &str), out: &str) {
    work.write(name, text);
    work.write("config.yaml", &config(&sim.base_url(), ""));
    run_ok(work, name, out, &["--out-format", "batch"]).await;
}

/// The OpenAI batch file of the fixture's lines and `n` generated ones,
/// each with the text its last user message says; the last generated line
/// asks to be blocked.
fn openai_batch(n: usize) -> (String, BTreeMap<String, String>) {
    let mut text = batch_fixture("openai_batch_input.jsonl");
    let mut asked = BTreeMap::from([
        ("request-1".to_owned(), "Hello world!".to_owned()),
        (
            "request-2".to_owned(),
            "Name three primary colours.".to_owned(),
        ),
    ]);
    for i in 0..n {
        let question = if i + 1 == n {
            "Say something [[sim:block]]".to_owned()
        } else {
            format!("Question {i}: why is the sea salty?")
        };
        let messages = if i % 2 == 0 {
            json!([{"role": "developer", "content": "Answer briefly."}, {"role": "user", "content": question}])
        } else {
            json!([{"role": "user", "content": [{"type": "text", "text": question}]}])
        };
        let line = json!({
            "custom_id": format!("gen-{i}"), "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": messages, "max_tokens": 200, "temperature": 0.3},
        });
        text.push_str(&format!("{line}\n"));
        asked.insert(format!("gen-{i}"), question);
    }
    (text, asked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_batch_file_runs_unchanged_and_its_output_reads_as_the_batch_apis() {
    let sim = simulator(TWO_PROVIDER_PROJECTS).await;
    let work = Workdir::new();
    let (job, asked) = openai_batch(20);
    run_batch(&work, &sim, ("batchinput.jsonl", &job), "output.jsonl").await;
    let output: Vec<OpenAiOutputLine> = lines(&work, "output.jsonl");
    let mut seen = BTreeMap::new();
    for line in &output {
        assert!(line.id.starts_with("batch_req_"), "{line:?}");
        let asked = &asked[&line.custom_id];
        assert!(
            seen.insert(line.custom_id.clone(), ()).is_none(),
            "{line:?} twice"
        );
        if asked.contains("[[sim:block]]") {
            let error = line.error.as_ref().expect("a blocked item's error");
            assert_eq!(error.code, "blocked", "{line:?}");
            assert!(
                !error.message.is_empty() && line.response.is_none(),
                "{line:?}"
            );
            continue;
        }
        let response = line.response.as_ref().expect("an answer");
        assert!(line.error.is_none(), "{line:?}");
        assert_eq!(response.status_code, 200);
        assert_eq!(response.request_id.len(), 32);
        let body = &response.body;
        assert_eq!(
            (body.object.as_str(), body.model.as_str()),
            ("chat.completion", "gpt-4o-mini")
        );
        let choice = &body.choices[0];
        assert_eq!(choice.message.role, "assistant");
        assert!(
            choice.message.content.contains(&digest(asked)),
            "{} got another request's answer: {}",
            line.custom_id,
            choice.message.content
        );
        assert_eq!(choice.finish_reason.as_deref(), Some("stop"));
        let usage = &body.usage;
        assert!(usage.prompt_tokens > 0 && usage.completion_tokens > 0);
        assert_eq!(
            usage.total_tokens,
            usage.prompt_tokens + usage.completion_tokens
        );
    }
    assert_eq!(seen.len(), asked.len(), "every custom_id once: {seen:?}");
    // Every body went to the OpenAI-compatible account, none to Gemini's.
    let stats = stats(&sim).await;
    let openai = &stats.projects["o"].models["gpt-4o-mini"];
    assert_eq!(openai.ok, asked.len() as u64, "{stats:?}");
    assert!(!stats.projects.contains_key("g") || stats.projects["g"].models.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gemini_batch_file_runs_unchanged_and_its_output_reads_as_the_batch_apis() {
    let sim = simulator(TWO_PROVIDER_PROJECTS).await;
    let work = Workdir::new();
    let mut job = batch_fixture("gemini_batch_input.jsonl");
    let mut asked = BTreeMap::from([
        ("request-1".to_owned(), "...".to_owned()),
        ("request-2".to_owned(), "...".to_owned()),
    ]);
    for i in 0..20 {
        let question = match i {
            19 => "Say something [[sim:block]]".to_owned(),
            _ => format!("第{i}个问题：为什么天空是蓝色的？"),
        };
        // Both casings of GenerateContentRequest, as batch files hold them.
        let request = if i % 2 == 0 {
            json!({"system_instruction": {"parts": [{"text": "Be brief."}]},
                   "contents": [{"role": "user", "parts": [{"text": question}]}],
                   "generation_config": {"temperature": 0.2, "max_output_tokens": 300}})
        } else {
            json!({"contents": [{"role": "user", "parts": [{"text": question}]}],
                   "generationConfig": {"maxOutputTokens": 300}})
        };
        job.push_str(&format!(
            "{}\n",
            json!({"key": format!("k{i}"), "request": request})
        ));
        asked.insert(format!("k{i}"), question);
    }
    run_batch(&work, &sim, ("batch.jsonl", &job), "out.jsonl").await;
    let output: Vec<GeminiOutputLine> = lines(&work, "out.jsonl");
    assert_eq!(output.len(), asked.len());
    let mut keys: Vec<&str> = output.iter().map(|l| l.key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), asked.len(), "every key once");
    for line in &output {
        let asked = &asked[&line.key];
        if asked.contains("[[sim:block]]") {
            let error = line.error.as_ref().expect("a blocked item's error");
            assert_eq!(
                (error.code, error.status.as_str()),
                (400, "FAILED_PRECONDITION")
            );
            assert!(
                !error.message.is_empty() && line.response.is_none(),
                "{line:?}"
            );
            continue;
        }
        let response = line.response.as_ref().expect("an answer");
        assert!(line.error.is_none(), "{line:?}");
        assert_eq!(response.model_version, "gemini-2.5-flash");
        let candidate = &response.candidates[0];
        assert_eq!(
            (
                candidate.content.role.as_str(),
                candidate.finish_reason.as_str()
            ),
            ("model", "STOP")
        );
        assert!(
            candidate.content.parts[0].text.contains(&digest(asked)),
            "{} got another request's answer: {:?}",
            line.key,
            candidate.content.parts[0].text
        );
        let usage = &response.usage_metadata;
        assert!(usage.total_token_count > usage.prompt_token_count);
    }
    let stats = stats(&sim).await;
    assert_eq!(
        stats.projects["g"].models["gemini-2.5-flash"].ok,
        asked.len() as u64
    );
    // The default results shape still works for a batch file: its ids are the keys.
    run_ok(&work, "batch.jsonl", "keyfan.jsonl", &[]).await;
    let rows: Vec<Value> = lines(&work, "keyfan.jsonl");
    assert_eq!(rows.len(), asked.len());
    assert!(rows
        .iter()
        .all(|r| asked.contains_key(r["id"].as_str().unwrap())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_files_bodies_reach_the_api_as_written_but_for_the_model() {
    let gemini = gemini_reply("fine").to_string();
    let openai = openai_reply("fine", "stop", 3);
    let server = Hostile::start(move |seen| match seen.path.contains(":generateContent") {
        true => Answer::json(200, gemini.clone()),
        false => Answer::json(200, openai.clone()),
    })
    .await;
    let work = Workdir::new();
    // `cheap` is a name of the config's `models` map: it goes out as the
    // model it names; every other field goes as written.
    let body = json!({"model": "cheap", "messages": [{"role": "user", "content": "hi"}],
                      "logit_bias": {"50256": -100}, "user": "u-1", "n": 1,
                      "response_format": {"type": "json_object"}});
    let line =
        json!({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": body});
    work.write("openai.jsonl", &format!("{line}\n"));
    let request = json!({"model": "models/gemini-2.5-pro", "contents": [{"parts": [{"text": "hi"}]}],
                         "safety_settings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
                         "generation_config": {"temperature": 0.7}});
    work.write(
        "gemini.jsonl",
        &format!("{}\n", json!({"key": "b", "request": request})),
    );
    let extra = "models:\n  cheap: { provider: openai, name: gpt-4o-mini }\n";
    work.write("config.yaml", &config(&server.base_url(), extra));
    for job in ["openai.jsonl", "gemini.jsonl"] {
        let args = ["run", job, "--config", "config.yaml", "--offline"];
        let out = work.keyfan(&args, &[]).await;
        assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
        // A cap only when the run needs one: `--max-cost` reserves a worst case.
        let out = work
            .keyfan(
                &[&args[..], &["--new-run", "--max-cost", "5"]].concat(),
                &[],
            )
            .await;
        assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    }
    let seen = server.requests();
    assert_eq!(seen.len(), 4, "{seen:?}");
    let sent = |i: usize| serde_json::from_slice::<Value>(&seen[i].body).unwrap();
    let mut expected = body.clone();
    expected["model"] = "gpt-4o-mini".into();
    assert!(
        seen[0].path.ends_with("/v1/chat/completions"),
        "{}",
        seen[0].path
    );
    assert_eq!(sent(0), expected);
    expected["max_tokens"] = 8192.into();
    assert_eq!(sent(1), expected, "the cap a budget needs, nothing else");
    // Gemini: the model goes in the URL, not the body.
    assert!(
        seen[2]
            .path
            .ends_with("/models/gemini-2.5-pro:generateContent"),
        "{}",
        seen[2].path
    );
    let mut expected = request.clone();
    expected.as_object_mut().unwrap().remove("model");
    assert_eq!(sent(2), expected);
    expected["generation_config"]["max_output_tokens"] = 8192.into();
    assert_eq!(sent(3), expected, "in the request's own casing");
}

/// Runs `job` with `config` (state `s.db`), then `extra`, and asserts that
/// it is refused (exit 2) saying `says`.
async fn assert_refused(work: &Workdir, job: &str, config: &str, extra: &[&str], says: &str) {
    let args = [&["run", job, "--config", config, "--state", "s.db"], extra].concat();
    assert_exit_saying(&work.keyfan(&args, &[]).await, 2, says);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_batch_line_is_refused_with_its_file_and_line_and_nothing_is_sent() {
    let sim = simulator(TWO_PROVIDER_PROJECTS).await;
    let work = Workdir::new();
    work.write("config.yaml", &config(&sim.base_url(), ""));
    let good = |id: &str| {
        json!({"custom_id": id, "method": "POST", "url": "/v1/chat/completions",
               "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}})
    };
    let mut bad_url = good("c");
    bad_url["url"] = "/v1/embeddings".into();
    let mut no_id = good("d");
    no_id.as_object_mut().unwrap().remove("custom_id");
    let gemini = json!({"key": "e", "request": {"contents": [{"parts": [{"text": "hi"}]}]}});
    let cases = [
        (&gemini, "batch.jsonl:3: this line is a Gemini batch line"),
        (
            &bad_url,
            "batch.jsonl:3: field `url`: `/v1/embeddings` is not supported",
        ),
        (&no_id, "batch.jsonl:3: field `custom_id`: is required"),
    ];
    for (line, says) in cases {
        let job = format!("{}\n{}\n{line}\n", good("a"), good("b"));
        work.write("batch.jsonl", &job);
        assert_refused(&work, "batch.jsonl", "config.yaml", &[], says).await;
    }
    // A batch file whose provider has no account: refused, naming both.
    work.write("batch.jsonl", &format!("{}\n", good("a")));
    let gemini_only = format!(
        "providers:\n  gemini: {{ base_url: \"{}\" }}\naccounts:\n  - name: g\n    keys: [test-key-g1]\n",
        sim.base_url()
    );
    work.write("gemini-only.yaml", &gemini_only);
    let says = "`gpt-4o-mini` (line 1)";
    assert_refused(&work, "batch.jsonl", "gemini-only.yaml", &[], says).await;
    // A Gemini batch file whose model goes to the OpenAI-compatible accounts.
    work.write("gemini.jsonl", &format!("{gemini}\n"));
    let openai_only = format!(
        "providers:\n  openai: {{ base_url: \"{}\" }}\nmodel: gemini-2.5-flash\naccounts:\n  - name: o\n    provider: openai\n    keys: [test-key-o1]\n",
        sim.base_url()
    );
    work.write("openai-only.yaml", &openai_only);
    let says = "is served by openai accounts, but the job is a Gemini batch file";
    assert_refused(&work, "gemini.jsonl", "openai-only.yaml", &[], says).await;
    // Batch output lines for a job that is not a batch file.
    work.write("plain.jsonl", "{\"id\": \"p\", \"prompt\": \"hi\"}\n");
    let (extra, says) = (
        ["--out-format", "batch"],
        "is not an OpenAI or Gemini batch file",
    );
    assert_refused(&work, "plain.jsonl", "config.yaml", &extra, says).await;
    let stats = stats(&sim).await;
    let sent: u64 = stats
        .projects
        .values()
        .flat_map(|p| p.models.values())
        .map(|m| m.requests)
        .sum();
    assert_eq!(sent, 0, "nothing was sent: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batch_file_examples_of_jobs_run_as_they_are() {
    let work = Workdir::new();
    let root = env!("CARGO_MANIFEST_DIR");
    let copy = |name: &str| {
        let text = std::fs::read_to_string(format!("{root}/{name}")).expect("example");
        work.write(name.rsplit('/').next().unwrap(), &text);
        text.lines().count()
    };
    let gemini = copy("jobs/gemini-batch.jsonl");
    let openai = copy("jobs/openai-batch.jsonl");
    copy("config.example.yaml");
    work.write(
        "openai.yaml",
        "accounts:\n  - name: openai-main\n    provider: openai\n    keys: [\"${OPENAI_API_KEY}\"]\n",
    );
    for (job, config, n) in [
        ("gemini-batch.jsonl", "config.example.yaml", gemini),
        ("openai-batch.jsonl", "openai.yaml", openai),
    ] {
        let args = [
            "run",
            job,
            "--config",
            config,
            "--simulate",
            "--out",
            "out.jsonl",
            "--out-format",
            "batch",
        ];
        let out = work.keyfan(&args, &[]).await;
        assert_eq!(out.status.code(), Some(0), "{job}: {}", explain(&out));
        let output: Vec<Value> = lines(&work, "out.jsonl");
        assert_eq!(output.len(), n, "{job}");
        assert!(
            output.iter().all(|l| l["error"].is_null()),
            "{job}: {output:?}"
        );
    }
}
