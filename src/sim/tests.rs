//! End-to-end tests: a real server on 127.0.0.1:0 and reqwest, as keyfan's
//! providers will talk to it. Time-dependent quotas move the simulator's
//! clock ([`SimServer::advance_clock`]) instead of sleeping.

use super::*;
use crate::config::{AccountConfig, Config, KeyConfig, Limits};
use crate::provider::ProviderKind;
use crate::types::ApiKey;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::Duration;

const FLASH: &str = "gemini-2.5-flash";

async fn start(config: SimConfig) -> SimServer {
    let addr = "127.0.0.1:0".parse().expect("address");
    SimServer::start(config, addr).await.expect("server starts")
}

fn project(name: &str, keys: &[&str], limits: &[(&str, ModelLimits)]) -> ProjectConfig {
    ProjectConfig {
        name: name.to_owned(),
        keys: keys.iter().map(|k| ApiKey::new(*k)).collect(),
        limits: limits
            .iter()
            .map(|(model, l)| (model.to_string(), *l))
            .collect(),
    }
}

fn limits(rpm: Option<u32>, tpm: Option<u64>, rpd: Option<u32>) -> ModelLimits {
    ModelLimits {
        rpm,
        tpm,
        otpm: None,
        rpd,
    }
}

/// One project `proj-a` with keys `sim-key-a1`, `sim-key-a2` and `limits`
/// on gemini-2.5-flash and gpt-4o-mini.
fn one_project(l: ModelLimits) -> SimConfig {
    SimConfig {
        projects: vec![project(
            "proj-a",
            &["sim-key-a1", "sim-key-a2"],
            &[(FLASH, l), ("gpt-4o-mini", l)],
        )],
        ..SimConfig::default()
    }
}

fn user(text: &str) -> Value {
    json!({"contents": [{"role": "user", "parts": [{"text": text}]}]})
}

fn digest(text: &str) -> String {
    hex::encode(&Sha256::digest(text.as_bytes())[..8])
}

async fn generate(server: &SimServer, key: &str, model: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!(
            "{}/v1beta/models/{model}:generateContent",
            server.base_url()
        ))
        .header("x-goog-api-key", key)
        .json(body)
        .send()
        .await
        .expect("request sent")
}

async fn chat(server: &SimServer, key: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.base_url()))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .expect("request sent")
}

async fn json_of(response: reqwest::Response) -> Value {
    response.json().await.expect("a JSON body")
}

/// Status of `n` sequential Gemini requests.
async fn statuses(server: &SimServer, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for i in 0..n {
        let response = generate(server, "sim-key-a1", FLASH, &user(&format!("q{i}"))).await;
        out.push(response.status().as_u16());
    }
    out
}

#[tokio::test]
async fn gemini_answers_with_the_digest_and_real_usage_fields() {
    let server = start(one_project(ModelLimits::default())).await;
    let body = json!({
        "systemInstruction": {"parts": [{"text": "You are terse."}]},
        "contents": [{"role": "user", "parts": [{"text": "Summarise "}, {"text": "Hamlet"}]}],
        "generationConfig": {"temperature": 0.3, "maxOutputTokens": 1000}
    });
    let response = generate(&server, "sim-key-a1", FLASH, &body).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("retry-after").is_none());
    let reply = json_of(response).await;
    let text = reply["candidates"][0]["content"]["parts"][0]["text"]
        .as_str()
        .expect("text");
    assert!(
        text.starts_with("[simulated gemini-2.5-flash] digest:"),
        "{text}"
    );
    assert!(text.contains(&format!("digest:{}", digest("Summarise Hamlet"))));
    assert_eq!(reply["candidates"][0]["finishReason"], "STOP");
    let usage = &reply["usageMetadata"];
    // "Summarise " (3) + "Hamlet" (2) + "You are terse." (4)
    assert_eq!(usage["promptTokenCount"], 9);
    assert_eq!(usage["promptTokensDetails"][0]["tokenCount"], 9);
    let output = usage["candidatesTokenCount"].as_u64().expect("output");
    assert_eq!(usage["totalTokenCount"], 9 + output);
    assert_eq!(reply["modelVersion"], FLASH);
    assert_eq!(reply["responseId"].as_str().map(str::len), Some(22));

    // The same prompt answers the same text.
    let again = json_of(generate(&server, "sim-key-a2", FLASH, &body).await).await;
    assert_eq!(again["candidates"][0]["content"]["parts"][0]["text"], text);
}

#[tokio::test]
async fn a_small_max_output_tokens_cuts_the_reply() {
    let server = start(one_project(ModelLimits::default())).await;
    let body = json!({"contents": [{"parts": [{"text": "hi"}]}], "generation_config": {"max_output_tokens": 2}});
    let reply = json_of(generate(&server, "sim-key-a1", FLASH, &body).await).await;
    assert_eq!(reply["candidates"][0]["finishReason"], "MAX_TOKENS");
    assert_eq!(reply["usageMetadata"]["candidatesTokenCount"], 2);
    assert_eq!(
        reply["candidates"][0]["content"]["parts"][0]["text"],
        "[simulat"
    );
}

#[tokio::test]
async fn the_key_can_come_from_the_query() {
    let server = start(one_project(ModelLimits::default())).await;
    let response = reqwest::Client::new()
        .post(format!(
            "{}/v1beta/models/{FLASH}:generateContent?key=sim-key-a2",
            server.base_url()
        ))
        .json(&user("hello"))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    let stats = server.stats();
    assert_eq!(stats.keys[ApiKey::new("sim-key-a2").fingerprint()].ok, 1);
}

#[tokio::test]
async fn an_unknown_key_gets_the_fixture_body_verbatim() {
    let server = start(one_project(ModelLimits::default())).await;
    let response = generate(&server, "not-a-key", FLASH, &user("x")).await;
    assert_eq!(response.status(), 400);
    let body = response.text().await.expect("body");
    assert_eq!(
        body,
        include_str!("../../tests/fixtures/gemini_400_api_key_invalid.json")
    );
    // A request with no key at all is refused the same way.
    let response = reqwest::Client::new()
        .post(format!(
            "{}/v1beta/models/{FLASH}:generateContent",
            server.base_url()
        ))
        .json(&user("x"))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 400);
    let stats = server.stats();
    let fingerprint = ApiKey::new("not-a-key").fingerprint().to_owned();
    assert_eq!(stats.keys[&fingerprint].statuses[&400], 1);
    assert_eq!(stats.keys["(none)"].requests, 1);
    assert!(stats.projects["proj-a"].models.is_empty());
}

#[tokio::test]
async fn a_disabled_key_gets_service_disabled() {
    let mut config = one_project(ModelLimits::default());
    config.disabled_keys = vec![ApiKey::new("sim-key-off")];
    let server = start(config).await;
    let response = generate(&server, "sim-key-off", FLASH, &user("x")).await;
    assert_eq!(response.status(), 403);
    let body = json_of(response).await;
    assert_eq!(body["error"]["status"], "PERMISSION_DENIED");
    assert_eq!(body["error"]["details"][1]["reason"], "SERVICE_DISABLED");
}

#[tokio::test]
async fn an_unknown_model_is_404_naming_it_and_v1beta() {
    let server = start(one_project(ModelLimits::default())).await;
    let response = generate(&server, "sim-key-a1", "gemini-9-ultra", &user("x")).await;
    assert_eq!(response.status(), 404);
    let body = json_of(response).await;
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.starts_with("models/gemini-9-ultra is not found for API version v1beta, or is not supported for generateContent."),
        "{message}"
    );
    let detail = body["error"]["details"][1]["detail"]
        .as_str()
        .expect("detail");
    assert_eq!(detail, message);
    assert_eq!(body["error"]["status"], "NOT_FOUND");
}

#[tokio::test]
async fn malformed_json_is_invalid_argument() {
    let server = start(one_project(ModelLimits::default())).await;
    let response = reqwest::Client::new()
        .post(format!(
            "{}/v1beta/models/{FLASH}:generateContent",
            server.base_url()
        ))
        .header("x-goog-api-key", "sim-key-a1")
        .body("{not json")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 400);
    let body = json_of(response).await;
    assert_eq!(body["error"]["status"], "INVALID_ARGUMENT");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("Invalid JSON payload received.")));
}

#[tokio::test]
async fn rpm_is_shared_by_the_keys_of_a_project() {
    let mut config = one_project(limits(Some(2), None, None));
    config.projects.push(project(
        "proj-b",
        &["sim-key-b1"],
        &[(FLASH, limits(Some(2), None, None))],
    ));
    let server = start(config).await;
    assert_eq!(
        generate(&server, "sim-key-a1", FLASH, &user("1"))
            .await
            .status(),
        200
    );
    assert_eq!(
        generate(&server, "sim-key-a2", FLASH, &user("2"))
            .await
            .status(),
        200
    );
    let refused = generate(&server, "sim-key-a1", FLASH, &user("3")).await;
    assert_eq!(refused.status(), 429);
    assert!(
        refused.headers().get("retry-after").is_none(),
        "Gemini sends no Retry-After"
    );
    let body = json_of(refused).await;
    assert_eq!(body["error"]["status"], "RESOURCE_EXHAUSTED");
    let violation = &body["error"]["details"][0]["violations"][0];
    assert_eq!(
        violation["quotaId"],
        "GenerateRequestsPerMinutePerProjectPerModel"
    );
    assert_eq!(
        violation["quotaMetric"],
        "generativelanguage.googleapis.com/generate_content_requests"
    );
    assert_eq!(violation["quotaDimensions"]["model"], FLASH);
    assert_eq!(violation["quotaValue"], "2");
    let delay = body["error"]["details"][2]["retryDelay"]
        .as_str()
        .expect("delay");
    let secs: f64 = delay.trim_end_matches('s').parse().expect("seconds");
    assert!(secs > 59.0 && secs <= 60.0, "{delay}");

    // Another project's quota is its own.
    assert_eq!(
        generate(&server, "sim-key-b1", FLASH, &user("4"))
            .await
            .status(),
        200
    );
    // A minute later the window has room again.
    server.advance_clock(Duration::from_secs(60));
    assert_eq!(
        generate(&server, "sim-key-a2", FLASH, &user("5"))
            .await
            .status(),
        200
    );
    let stats = server.stats();
    assert_eq!(stats.projects["proj-a"].rate_limited, 1);
    assert_eq!(
        stats.projects["proj-a"].models[FLASH].max_requests_in_60s,
        2
    );
}

#[tokio::test]
async fn rpd_refusals_name_the_per_day_quota_until_the_day_turns() {
    let server = start(one_project(limits(None, None, Some(1)))).await;
    assert_eq!(
        generate(&server, "sim-key-a1", FLASH, &user("1"))
            .await
            .status(),
        200
    );
    let refused = generate(&server, "sim-key-a2", FLASH, &user("2")).await;
    assert_eq!(refused.status(), 429);
    let body = json_of(refused).await;
    let violation = &body["error"]["details"][0]["violations"][0];
    assert_eq!(
        violation["quotaId"],
        "GenerateRequestsPerDayPerProjectPerModel"
    );
    assert_eq!(violation["quotaValue"], "1");
    // Like the real thing: a short retryDelay even though the day is spent.
    assert_eq!(body["error"]["details"][2]["retryDelay"], "22s");
    server.advance_clock(Duration::from_secs(24 * 3600));
    assert_eq!(
        generate(&server, "sim-key-a1", FLASH, &user("3"))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn tpm_counts_input_tokens() {
    let server = start(one_project(limits(None, Some(15), None))).await;
    let ten_tokens = "x".repeat(40);
    assert_eq!(
        generate(&server, "sim-key-a1", FLASH, &user(&ten_tokens))
            .await
            .status(),
        200
    );
    let refused = generate(&server, "sim-key-a2", FLASH, &user(&ten_tokens)).await;
    assert_eq!(refused.status(), 429);
    let body = json_of(refused).await;
    let violation = &body["error"]["details"][0]["violations"][0];
    assert_eq!(
        violation["quotaId"],
        "GenerateContentInputTokensPerModelPerMinute"
    );
    assert_eq!(
        violation["quotaMetric"],
        "generativelanguage.googleapis.com/generate_content_input_token_count"
    );
    assert_eq!(violation["quotaValue"], "15");
    // A small prompt still fits beside the first.
    assert_eq!(
        generate(&server, "sim-key-a2", FLASH, &user("tiny"))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn openai_answers_a_standard_chat_completion() {
    let server = start(one_project(limits(Some(10), Some(1000), None))).await;
    let body = json!({"model": "gpt-4o-mini", "max_tokens": 100, "temperature": 0,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]});
    let response = chat(&server, "sim-key-a1", &body).await;
    assert_eq!(response.status(), 200);
    let headers = response.headers();
    assert_eq!(headers["x-ratelimit-limit-requests"], "10");
    assert_eq!(headers["x-ratelimit-remaining-requests"], "9");
    assert_eq!(headers["x-ratelimit-remaining-tokens"], "994");
    let reply = json_of(response).await;
    assert_eq!(reply["object"], "chat.completion");
    assert_eq!(reply["model"], "gpt-4o-mini");
    let choice = &reply["choices"][0];
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["message"]["role"], "assistant");
    let text = choice["message"]["content"].as_str().expect("content");
    assert!(
        text.contains(&format!("digest:{}", digest("Hello there"))),
        "{text}"
    );
    let usage = &reply["usage"];
    assert_eq!(usage["prompt_tokens"], 6);
    let completion = usage["completion_tokens"].as_u64().expect("completion");
    assert_eq!(usage["total_tokens"], 6 + completion);
    assert!(reply["id"]
        .as_str()
        .is_some_and(|id| id.starts_with("chatcmpl-")));
}

#[tokio::test]
async fn openai_refuses_an_unknown_key_without_echoing_it() {
    let server = start(one_project(ModelLimits::default())).await;
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]});
    let secret = "sk-proj-THISISALONGSECRETKEY1234";
    let response = chat(&server, secret, &body).await;
    assert_eq!(response.status(), 401);
    let reply = json_of(response).await;
    assert_eq!(reply["error"]["code"], "invalid_api_key");
    assert_eq!(reply["error"]["type"], "invalid_request_error");
    let message = reply["error"]["message"].as_str().expect("message");
    assert!(
        message.starts_with("Incorrect API key provided: sk-pr****"),
        "{message}"
    );
    assert!(
        message.contains("1234.") && !message.contains(secret),
        "{message}"
    );

    let short = json_of(chat(&server, "short-key", &body).await).await;
    assert!(short["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("provided: *********.")));

    let missing = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.base_url()))
        .json(&body)
        .send()
        .await
        .expect("sent");
    assert_eq!(missing.status(), 401);
}

#[tokio::test]
async fn openai_rate_limits_carry_retry_headers() {
    let server = start(one_project(limits(Some(1), None, None))).await;
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]});
    assert_eq!(chat(&server, "sim-key-a1", &body).await.status(), 200);
    let refused = chat(&server, "sim-key-a2", &body).await;
    assert_eq!(refused.status(), 429);
    let headers = refused.headers().clone();
    assert_eq!(headers["retry-after"], "60");
    let ms: u64 = headers["retry-after-ms"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("ms");
    assert!((59_000..=60_000).contains(&ms), "{ms}");
    assert_eq!(headers["x-ratelimit-limit-requests"], "1");
    assert_eq!(headers["x-ratelimit-remaining-requests"], "0");
    assert!(headers.contains_key("x-ratelimit-reset-requests"));
    let reply = json_of(refused).await;
    assert_eq!(reply["error"]["code"], "rate_limit_exceeded");
    assert_eq!(reply["error"]["type"], "requests");
    let message = reply["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("on requests per min (RPM): Limit 1, Used 1, Requested 1."),
        "{message}"
    );
}

#[tokio::test]
async fn bursts_are_deterministic() {
    let mut config = one_project(ModelLimits::default());
    config.faults.bursts = vec![Burst {
        after: 2,
        count: 3,
        status: 503,
    }];
    let server = start(config).await;
    assert_eq!(statuses(&server, 6).await, [200, 200, 503, 503, 503, 200]);
    let stats = server.stats();
    assert_eq!(stats.requests, 6);
    let project = &stats.projects["proj-a"];
    // Faults count against quota but are not ok.
    assert_eq!((project.requests, project.ok), (6, 3));
}

#[tokio::test]
async fn random_faults_replay_with_the_same_seed() {
    let config = |seed| {
        let mut config = one_project(ModelLimits::default());
        config.seed = seed;
        config.faults.error_500 = 0.3;
        config.faults.error_503 = 0.3;
        config
    };
    let first = statuses(&start(config(7)).await, 30).await;
    assert_eq!(first, statuses(&start(config(7)).await, 30).await);
    assert!(
        first.contains(&500) && first.contains(&503) && first.contains(&200),
        "{first:?}"
    );
    assert_ne!(first, statuses(&start(config(8)).await, 30).await);
}

#[tokio::test]
async fn a_503_body_is_a_real_one() {
    let mut config = one_project(ModelLimits::default());
    config.faults.error_503 = 1.0;
    let server = start(config).await;
    let response = generate(&server, "sim-key-a1", FLASH, &user("x")).await;
    assert_eq!(response.status(), 503);
    let body = json_of(response).await;
    assert_eq!(body["error"]["status"], "UNAVAILABLE");
}

#[tokio::test]
async fn truncated_bodies_fail_to_decode() {
    let mut config = one_project(ModelLimits::default());
    config.faults.truncate = 1.0;
    let server = start(config).await;
    let response = generate(&server, "sim-key-a1", FLASH, &user("x")).await;
    assert_eq!(response.status(), 200);
    let announced = response.content_length().expect("a Content-Length");
    assert!(announced > 100);
    assert!(response.json::<Value>().await.is_err());
    let stats = server.stats();
    let key = &stats.keys[ApiKey::new("sim-key-a1").fingerprint()];
    assert_eq!((key.statuses[&200], key.ok), (1, 0));
}

#[tokio::test]
async fn stats_report_the_busiest_rolling_minute() {
    let server = start(one_project(ModelLimits::default())).await;
    statuses(&server, 3).await;
    server.advance_clock(Duration::from_secs(61));
    statuses(&server, 2).await;
    server.advance_clock(Duration::from_secs(30));
    // These two share a window with the previous two: 4 in 60 s.
    statuses(&server, 2).await;
    let served: Stats = reqwest::get(format!("{}/__stats", server.base_url()))
        .await
        .expect("stats")
        .json()
        .await
        .expect("Stats JSON");
    assert_eq!(served, server.stats());
    let model = &served.projects["proj-a"].models[FLASH];
    assert_eq!(model.max_requests_in_60s, 4);
    assert_eq!((model.requests, model.ok), (7, 7));
    assert!(model.input_tokens >= 7 && model.output_tokens > 7);
    let raw = reqwest::get(format!("{}/__stats", server.base_url()))
        .await
        .expect("stats")
        .text()
        .await
        .expect("text");
    assert!(
        !raw.contains("sim-key-a1"),
        "keys appear by fingerprint only"
    );
}

#[tokio::test]
async fn directives_return_the_real_edge_case_bodies() {
    let server = start(one_project(ModelLimits::default())).await;
    let blocked =
        json_of(generate(&server, "sim-key-a1", FLASH, &user("[[sim:block]]")).await).await;
    assert!(blocked.get("candidates").is_none());
    assert_eq!(
        blocked["promptFeedback"]["blockReason"],
        "PROHIBITED_CONTENT"
    );
    assert_eq!(blocked["usageMetadata"]["promptTokenCount"], 4);
    assert_eq!(blocked["modelVersion"], FLASH);

    let safety =
        json_of(generate(&server, "sim-key-a1", FLASH, &user("[[sim:safety]]")).await).await;
    assert_eq!(safety["candidates"][0]["finishReason"], "SAFETY");
    assert_eq!(safety["usageMetadata"]["totalTokenCount"], 4 + 20);

    let other = json_of(generate(&server, "sim-key-a1", FLASH, &user("[[sim:other]]")).await).await;
    assert_eq!(other["candidates"][0]["finishReason"], "OTHER");
    assert!(other["candidates"][0].get("content").is_none());

    let body = json!({"contents": [{"parts": [{"text": "[[sim:max_tokens]]"}]}],
        "generationConfig": {"maxOutputTokens": 30}});
    let spent = json_of(generate(&server, "sim-key-a1", FLASH, &body).await).await;
    assert_eq!(spent["candidates"][0]["finishReason"], "MAX_TOKENS");
    assert!(spent["candidates"][0]["content"].get("parts").is_none());
    assert_eq!(spent["usageMetadata"]["thoughtsTokenCount"], 30);
    assert!(spent["usageMetadata"].get("candidatesTokenCount").is_none());

    let chat_body =
        json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "[[sim:safety]]"}]});
    let filtered = json_of(chat(&server, "sim-key-a1", &chat_body).await).await;
    assert_eq!(filtered["choices"][0]["finish_reason"], "content_filter");
    assert!(filtered["choices"][0]["message"]["content"].is_null());
    assert_eq!(server.stats().projects["proj-a"].requests, 5);
}

#[tokio::test]
async fn count_tokens_is_free_and_agrees_with_generate() {
    let server = start(one_project(limits(Some(1), None, None))).await;
    let body = json!({"contents": [{"role": "user", "parts": [{"text": "The quick brown fox"}]}]});
    let url = format!("{}/v1beta/models/{FLASH}:countTokens", server.base_url());
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let response = client
            .post(&url)
            .header("x-goog-api-key", "sim-key-a1")
            .json(&body)
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 200);
        let counted = json_of(response).await;
        assert_eq!(counted["totalTokens"], 5);
        assert_eq!(counted["promptTokensDetails"][0]["tokenCount"], 5);
        assert_eq!(counted["contentTokens"][0]["partTokens"][0], 5);
    }
    let reply = json_of(generate(&server, "sim-key-a1", FLASH, &body).await).await;
    assert_eq!(reply["usageMetadata"]["promptTokenCount"], 5);
}

#[tokio::test]
async fn the_openai_model_list_is_free_and_checks_the_key() {
    let server = start(one_project(limits(Some(1), None, None))).await;
    let url = format!("{}/v1/models", server.base_url());
    let client = reqwest::Client::new();
    let list = |key: &'static str| client.get(&url).bearer_auth(key).send();
    for _ in 0..3 {
        let response = list("sim-key-a1").await.expect("sent");
        assert_eq!(response.status(), 200);
        let body = json_of(response).await;
        assert_eq!(body["object"], "list");
        assert!(body["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == FLASH));
    }
    let refused = list("not-a-key").await.expect("sent");
    assert_eq!(refused.status(), 401);
    assert_eq!(json_of(refused).await["error"]["code"], "invalid_api_key");
    assert_eq!(server.stats().requests, 0, "not numbered, no quota");
}

#[tokio::test]
async fn shutdown_aborts_hung_requests() {
    let mut config = one_project(ModelLimits::default());
    config.faults.hang = 1.0;
    config.faults.hang_ms = 600_000;
    let server = start(config).await;
    let url = format!(
        "{}/v1beta/models/{FLASH}:generateContent",
        server.base_url()
    );
    let pending = tokio::spawn(async move {
        let response = reqwest::Client::new()
            .post(url)
            .header("x-goog-api-key", "sim-key-a1")
            .json(&user("x"))
            .send()
            .await?;
        response.bytes().await
    });
    // Wait (bounded) until the request is inside the server.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while server.stats().requests < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the request did not reach the server within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.stats().requests, 1);
    tokio::time::timeout(Duration::from_secs(10), server.shutdown())
        .await
        .expect("shutdown does not wait for the hang");
    let outcome = pending.await.expect("client task");
    assert!(outcome.is_err(), "the hung request must not complete");
}

#[tokio::test]
async fn rehearsal_mirrors_the_accounts() {
    let account = |name: &str, keys: &[&str], rpm| AccountConfig {
        name: name.to_owned(),
        provider: ProviderKind::Gemini,
        keys: keys
            .iter()
            .map(|k| KeyConfig {
                key: ApiKey::new(*k),
                weight: 1,
                group: "default".to_owned(),
            })
            .collect(),
        limits: BTreeMap::from([(
            "gemini-2.5-pro".to_owned(),
            Limits {
                rpm: Some(rpm),
                tpm: None,
                otpm: None,
                rpd: Some(100),
            },
        )]),
        proxy: None,
    };
    let user_config = Config {
        state: None,
        providers: BTreeMap::new(),
        accounts: vec![
            account("proj-a", &["AIzaKeyOne", "AIzaKeyTwo"], 1),
            account("proj-b", &["AIzaKeyThree"], 5),
        ],
        model: FLASH.to_owned(),
        concurrency: 4,
        timeout: Duration::from_secs(60),
        max_retries: 3,
        item_deadline: None,
        strategy: crate::pool::Strategy::Hybrid,
        groups: vec!["default".to_owned()],
        default_max_output_tokens: 4096,
        models: BTreeMap::new(),
        prices: Default::default(),
        expected_output_tokens: None,
        max_cost_per_item: None,
        media: Default::default(),
    };
    let mut config = SimConfig::rehearsal(&user_config);
    assert_eq!(config.projects.len(), 2);
    assert_eq!(config.projects[0].name, "proj-a");
    assert_eq!(config.projects[0].keys[1].expose(), "AIzaKeyTwo");
    assert_eq!(
        config.projects[1].limits["gemini-2.5-pro"],
        limits(Some(5), None, Some(100))
    );
    assert!(config.latency.max_ms > 0);
    config.latency = LatencyConfig::default();
    let server = start(config).await;
    let pro = "gemini-2.5-pro";
    assert_eq!(
        generate(&server, "AIzaKeyOne", pro, &user("a"))
            .await
            .status(),
        200
    );
    assert_eq!(
        generate(&server, "AIzaKeyTwo", pro, &user("b"))
            .await
            .status(),
        429
    );
    assert_eq!(
        generate(&server, "AIzaKeyThree", pro, &user("c"))
            .await
            .status(),
        200
    );
    assert_eq!(
        generate(&server, "AIzaOther", pro, &user("d"))
            .await
            .status(),
        400
    );
}

#[tokio::test]
async fn start_refuses_a_contradictory_config() {
    let config = SimConfig {
        latency: LatencyConfig {
            min_ms: 5,
            max_ms: 1,
        },
        ..SimConfig::default()
    };
    let addr = "127.0.0.1:0".parse().expect("address");
    let err = SimServer::start(config, addr).await.expect_err("invalid");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("latency.min_ms"));
}

#[tokio::test]
async fn the_gemini_model_list_pages_like_the_api_and_checks_the_key() {
    let mut config = one_project(ModelLimits::default());
    config.models = Some(vec![
        "gemini-a".into(),
        "gemini-b".into(),
        "gemini-c".into(),
    ]);
    let server = start(config).await;
    let client = reqwest::Client::new();
    let page = |key: &'static str, query: &'static str| {
        client
            .get(format!("{}/v1beta/models{query}", server.base_url()))
            .header("x-goog-api-key", key)
            .send()
    };
    let first = json_of(page("sim-key-a1", "?pageSize=3").await.expect("sent")).await;
    let names: Vec<&str> = first["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    // Sorted; the limits name two more models.
    assert_eq!(
        names,
        [
            "models/gemini-2.5-flash",
            "models/gemini-a",
            "models/gemini-b"
        ]
    );
    assert_eq!(
        first["models"][0]["supportedGenerationMethods"][0],
        "generateContent"
    );
    assert_eq!(first["nextPageToken"], "3");
    let last = json_of(
        page("sim-key-a1", "?pageSize=3&pageToken=3")
            .await
            .expect("sent"),
    )
    .await;
    assert_eq!(last["models"].as_array().unwrap().len(), 2);
    assert!(last.get("nextPageToken").is_none(), "{last}");
    let bad_token = page("sim-key-a1", "?pageToken=zz").await.expect("sent");
    assert_eq!(bad_token.status(), 400);
    let refused = page("not-a-key", "").await.expect("sent");
    assert_eq!(refused.status(), 400);
    assert_eq!(
        json_of(refused).await["error"]["details"][0]["reason"],
        "API_KEY_INVALID"
    );
    let stats = server.stats();
    assert_eq!(stats.model_lists, 4);
    assert_eq!(stats.requests, 0, "not numbered, no quota");
}

const HAIKU: &str = "claude-haiku-4-5";

async fn messages(server: &SimServer, key: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/v1/messages", server.base_url()))
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .json(body)
        .send()
        .await
        .expect("request sent")
}

fn anthropic_project(otpm: u64) -> SimConfig {
    let l = ModelLimits {
        rpm: Some(50),
        tpm: Some(10_000),
        otpm: Some(otpm),
        rpd: None,
    };
    SimConfig {
        projects: vec![project("org-a", &["sk-ant-a1", "sk-ant-a2"], &[(HAIKU, l)])],
        disabled_keys: vec![ApiKey::new("sk-ant-off")],
        ..SimConfig::default()
    }
}

fn ask(text: &str, max_tokens: u32) -> Value {
    json!({"model": HAIKU, "max_tokens": max_tokens, "system": "Be brief.",
           "messages": [{"role": "user", "content": text}]})
}

#[tokio::test]
async fn anthropic_answers_a_message_with_the_digest_and_its_ratelimit_headers() {
    let server = start(anthropic_project(500)).await;
    let response = messages(&server, "sk-ant-a1", &ask("Why is the sky blue?", 100)).await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    let body = json_of(response).await;
    assert_eq!(
        (body["type"].as_str(), body["role"].as_str()),
        (Some("message"), Some("assistant"))
    );
    assert_eq!(body["stop_reason"], "end_turn");
    let text = body["content"][0]["text"].as_str().expect("a text block");
    assert!(
        text.contains(&format!("digest:{}", digest("Why is the sky blue?"))),
        "{text}"
    );
    let usage = &body["usage"];
    assert_eq!(usage["input_tokens"], 3 + 5, "system and user text");
    assert_eq!(usage["cache_read_input_tokens"], 0);
    assert_eq!(
        usage["output_tokens"].as_u64(),
        Some(reply::text_tokens(text))
    );
    // Headroom at admission: the 100-token cap is counted until settled.
    assert_eq!(headers["anthropic-ratelimit-output-tokens-limit"], "500");
    assert_eq!(
        headers["anthropic-ratelimit-output-tokens-remaining"],
        "400"
    );
    assert_eq!(headers["anthropic-ratelimit-input-tokens-limit"], "10000");
    assert_eq!(headers["anthropic-ratelimit-requests-remaining"], "49");
    assert_eq!(headers["anthropic-ratelimit-tokens-limit"], "10500");
    let reset = headers["anthropic-ratelimit-requests-reset"]
        .to_str()
        .unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(reset).is_ok(),
        "{reset}"
    );
}

#[tokio::test]
async fn anthropic_otpm_frees_the_unused_cap_and_refuses_with_the_real_429() {
    let server = start(anthropic_project(150)).await;
    // Admitted at its cap of 100, settled at its real 60.
    let first = messages(&server, "sk-ant-a1", &ask("a [[sim:tokens=60]]", 100)).await;
    assert_eq!(first.status(), 200);
    let used = json_of(first).await["usage"]["output_tokens"]
        .as_u64()
        .unwrap();
    assert!((60..=62).contains(&used), "{used}");
    // 60 + 40 fits the 150; 60 + 40 + 100 does not.
    assert_eq!(
        messages(&server, "sk-ant-a2", &ask("b", 40)).await.status(),
        200
    );
    let refused = messages(&server, "sk-ant-a1", &ask("c", 100)).await;
    assert_eq!(refused.status(), 429);
    let headers = refused.headers().clone();
    assert_eq!(headers["retry-after"], "60");
    assert_eq!(headers["x-should-retry"], "true");
    assert_eq!(headers["anthropic-ratelimit-output-tokens-limit"], "150");
    let body = json_of(refused).await;
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("of 150 output tokens per minute."),
        "{message}"
    );
    let stats = server.stats();
    assert_eq!(stats.projects["org-a"].rate_limited, 1);
    assert!(stats.projects["org-a"].models[HAIKU].max_output_in_60s <= 150);
}

#[tokio::test]
async fn anthropic_errors_are_anthropics() {
    let mut config = anthropic_project(1000);
    config.faults.bursts = vec![Burst {
        after: 0,
        count: 1,
        status: 529,
    }];
    let server = start(config).await;
    let overloaded = messages(&server, "sk-ant-a1", &ask("x", 10)).await;
    assert_eq!(overloaded.status().as_u16(), 529);
    let body = json_of(overloaded).await;
    assert_eq!(body["error"]["type"], "overloaded_error");
    let kinds = [
        ("sk-ant-nope", ask("x", 10), 401, "authentication_error"),
        ("sk-ant-off", ask("x", 10), 403, "permission_error"),
        (
            "sk-ant-a1",
            json!({"model": HAIKU, "messages": [{"role": "user", "content": "x"}]}),
            400,
            "invalid_request_error",
        ),
        (
            "sk-ant-a1",
            json!({"model": "claude-none", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
            404,
            "not_found_error",
        ),
    ];
    for (key, body, status, kind) in kinds {
        let response = messages(&server, key, &body).await;
        assert_eq!(response.status(), status, "{kind}");
        assert_eq!(json_of(response).await["error"]["type"], kind);
    }
    let unversioned = reqwest::Client::new()
        .post(format!("{}/v1/messages", server.base_url()))
        .header("x-api-key", "sk-ant-a1")
        .json(&ask("x", 10))
        .send()
        .await
        .unwrap();
    assert_eq!(unversioned.status(), 400);
    let list = reqwest::Client::new()
        .get(format!("{}/v1/models", server.base_url()))
        .header("x-api-key", "sk-ant-a1")
        .send()
        .await
        .unwrap();
    let list = json_of(list).await;
    assert_eq!(list["has_more"], false);
    assert!(list["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["id"] == HAIKU && m["type"] == "model"));
}
