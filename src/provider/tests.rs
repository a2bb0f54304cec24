//! The adapters against the real recorded bodies: every fixture in
//! `tests/fixtures/` parses to the expected reply or error (a new fixture
//! fails [`every_fixture_is_covered`] until it gets a row or a reason to be
//! skipped), every replay exchange too, request bodies equal the recorded
//! ones, and two loopback tests check the wire and the transport failures.

use super::gemini::{self, CountBody, GenerateBody};
use super::openai::{self, ChatBody};
use super::{
    ApiError, Client, ErrorClass, Generation, ProviderKind, QuotaScope, Reply, Request, Scrubber,
    Usage,
};
use crate::types::ApiKey;
use reqwest::header::HeaderMap;
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn read(name: &str) -> Vec<u8> {
    let path = fixture_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("fixture is JSON")
}

/// A body as the server sees it (through text, so `f32` temperatures compare
/// as the JSON numbers they are sent as).
fn wire<T: Serialize>(body: &T) -> Value {
    json(serde_json::to_string(body).unwrap().as_bytes())
}

#[derive(Clone, Copy, Debug)]
enum Api {
    Gemini,
    Openai,
}

/// What the adapter makes of one body with one status.
fn outcome(api: Api, status: u16, body: &[u8]) -> Result<Reply, ApiError> {
    match (api, status) {
        (Api::Gemini, 200) => gemini::parse_generate(body),
        (Api::Gemini, _) => Err(gemini::classify(status, body)),
        (Api::Openai, 200) => openai::parse_chat(body),
        (Api::Openai, _) => Err(openai::classify(status, &HeaderMap::new(), body)),
    }
}

/// The visible text of a Gemini response, computed from the raw JSON: the
/// first candidate's parts without `thought: true` ones.
fn visible_text(response: &Value) -> String {
    response["candidates"][0]["content"]["parts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|part| part["thought"] != Value::Bool(true))
        .filter_map(|part| part["text"].as_str())
        .collect()
}

/// The usage of a Gemini response, computed from the raw `usageMetadata`.
fn usage_of(response: &Value) -> Usage {
    let count = |name: &str| response["usageMetadata"][name].as_u64().unwrap_or(0);
    Usage {
        input_tokens: count("promptTokenCount"),
        cached_tokens: count("cachedContentTokenCount"),
        output_tokens: count("candidatesTokenCount") + count("thoughtsTokenCount"),
        thinking_tokens: count("thoughtsTokenCount"),
        cache_write_tokens: 0,
    }
}

/// The API's own `error.message`, plain or array-wrapped.
fn envelope_message(body: &Value) -> Option<&str> {
    body.get("error")
        .or_else(|| body.get(0)?.get("error"))?
        .get("message")?
        .as_str()
}

enum Want {
    Reply {
        /// The start of the text (the whole text is checked against [`visible_text`]).
        starts: &'static str,
        usage: Usage,
        model: &'static str,
    },
    Count(u64),
    Error {
        status: u16,
        class: ErrorClass,
        /// A part of the message; envelope errors must also carry the API's
        /// `error.message` verbatim.
        says: &'static str,
    },
}

const fn usage(input: u64, cached: u64, output: u64, thinking: u64) -> Usage {
    Usage {
        input_tokens: input,
        cached_tokens: cached,
        output_tokens: output,
        thinking_tokens: thinking,
        cache_write_tokens: 0,
    }
}

fn error(status: u16, class: ErrorClass, says: &'static str) -> Want {
    Want::Error {
        status,
        class,
        says,
    }
}

fn key_invalid(reason: &str) -> ErrorClass {
    ErrorClass::KeyInvalid {
        reason: reason.into(),
    }
}

fn blocked(reason: &str) -> ErrorClass {
    ErrorClass::Blocked {
        reason: reason.into(),
    }
}

fn limited(scope: QuotaScope, retry_after: Option<Duration>, limit: Option<u64>) -> ErrorClass {
    ErrorClass::RateLimited {
        scope,
        retry_after,
        limit,
    }
}

fn secs(n: u64) -> Option<Duration> {
    Some(Duration::from_secs(n))
}

/// One row per response-body fixture: what each adapter must make of it.
fn fixture_rows() -> Vec<(&'static str, Api, Want)> {
    use Api::{Gemini, Openai};
    use ErrorClass::{EmptyAnswer, ItemInvalid, Transient};
    use QuotaScope::{Day, MinuteTokens, Unknown};
    vec![
        // Gemini successes.
        ("gemini_generateContent_basic_2.0-flash.json", Gemini, Want::Reply { starts: "The sky is blue because of", usage: usage(6, 0, 353, 0), model: "gemini-2.0-flash" }),
        ("gemini_generateContent_json_schema_implicit_cache.json", Gemini, Want::Reply { starts: "{\n  \"simpleString\": \"example\"", usage: usage(5, 3, 238 + 41, 41), model: "gemini-2.5-flash" }),
        ("gemini_generateContent_system_instruction_2.5-flash.json", Gemini, Want::Reply { starts: "low", usage: usage(9, 0, 1 + 20, 20), model: "gemini-2.5-flash" }),
        ("gemini_generateContent_thought_summary.json", Gemini, Want::Reply { starts: "Mountain View", usage: usage(14, 0, 2 + 24, 24), model: "gemini-2.5-flash" }),
        ("gemini_countTokens.json", Gemini, Want::Count(11)),
        // Gemini 200s without usable output.
        ("gemini_prompt_blocked_prohibited_content.json", Gemini, error(200, blocked("PROHIBITED_CONTENT"), "the prompt was blocked: PROHIBITED_CONTENT")),
        ("gemini_candidate_finish_safety.json", Gemini, error(200, blocked("SAFETY"), "the output was blocked: SAFETY")),
        ("gemini_candidate_finish_other_no_content.json", Gemini, error(200, EmptyAnswer, "the API returned no output (finishReason OTHER: Model failed to generate content due to internal error.)")),
        ("gemini_generateContent_empty_candidate_max_tokens.json", Gemini, error(200, ItemInvalid, "the output cap (maxOutputTokens) was used up before any visible text: 19 thinking + 0 visible output tokens for a 7-token prompt")),
        // Only a thought part, then the cap: nothing visible.
        ("gemini_generateContent_include_thoughts.json", Gemini, error(200, ItemInvalid, "19 thinking + 0 visible output tokens for a 17-token prompt")),
        // Gemini errors.
        ("gemini_400_api_key_invalid.json", Gemini, error(400, key_invalid("API_KEY_INVALID"), "API key not valid")),
        ("gemini_403_service_disabled.json", Gemini, error(403, key_invalid("SERVICE_DISABLED"), "has not been used in project 12345678")),
        ("gemini_403_caller_no_permission.json", Gemini, error(403, key_invalid("PERMISSION_DENIED"), "The caller does not have permission")),
        ("gemini_403_file_permission.json", Gemini, error(403, ItemInvalid, "You do not have permission to access the File")),
        ("gemini_404_model_not_found.json", Gemini, error(404, ItemInvalid, "models/gemini-5.0-flash is not found")),
        ("gemini_404_model_not_found_stream.json", Gemini, error(404, ItemInvalid, "models/custom-gemini-2.0-flash is not found")),
        ("gemini_429_bare_resource_exhausted.json", Gemini, error(429, limited(Unknown, None, None), "Resource has been exhausted")),
        ("gemini_429_free_tier_input_tpm.json", Gemini, error(429, limited(MinuteTokens, secs(26), Some(250_000)), "You exceeded your current quota")),
        // Per-day next to per-minute: the day wins, and its short retryDelay
        // is reported as sent (the scheduler ignores it for Day); the limit
        // comes from the message, since no violation has a quotaValue.
        ("gemini_429_free_tier_limit0_multi_violation.json", Gemini, error(429, limited(Day, secs(10), Some(0)), "limit: 0, model: gemini-2.0-flash")),
        ("gemini_429_free_tier_rpd.json", Gemini, error(429, limited(Day, secs(22), Some(250)), "You exceeded your current quota")),
        ("gemini_429_free_tier_rpd_new_format.json", Gemini, error(429, limited(Day, secs(8), Some(200)), "limit: 200")),
        ("gemini_500_internal.json", Gemini, error(500, Transient, "An internal error has occurred")),
        ("gemini_503_high_demand.json", Gemini, error(503, Transient, "experiencing high demand")),
        ("gemini_503_overloaded.json", Gemini, error(503, Transient, "The model is overloaded")),
        ("gemini_openai_compat_429_list_wrapped.json", Gemini, error(429, limited(Unknown, None, None), "Resource has been exhausted")),
        // The same body as Gemini's OpenAI-compatible endpoint sends it.
        ("gemini_openai_compat_429_list_wrapped.json", Openai, error(429, limited(Unknown, None, None), "Resource has been exhausted")),
        // OpenAI errors.
        ("openai_401_invalid_api_key.json", Openai, error(401, key_invalid("invalid_api_key"), "Incorrect API key provided")),
        ("openai_429_insufficient_quota.json", Openai, error(429, key_invalid("insufficient_quota"), "You exceeded your current quota")),
        ("openai_429_rate_limit_tokens.json", Openai, error(429, limited(MinuteTokens, Some(Duration::from_millis(1)), Some(60_000)), "Rate limit reached")),
    ]
}

/// Request fixtures that keyfan's own requests must reproduce exactly.
fn request_rows() -> Vec<(&'static str, Value)> {
    let ask = |prompt, system| Request {
        model: "gemini-2.5-flash",
        prompt,
        system,
        max_output_tokens: None,
        temperature: None,
        turns: &[],
        generation: Generation::none(),
        media: &[],
    };
    let sky = ask("why is the sky blue?", None);
    let recorded = json(&read(
        "gemini_generateContent_json_schema_implicit_cache.request.json",
    ));
    let structured = Generation {
        response_schema: Some(Arc::new(
            recorded["generationConfig"]["responseJsonSchema"].clone(),
        )),
        ..Generation::default()
    };
    vec![
        (
            "gemini_generateContent_json_schema_implicit_cache.request.json",
            wire(&GenerateBody::new(&Request {
                generation: &structured,
                ..ask("populate the following object", None)
            })),
        ),
        (
            "gemini_generateContent_system_instruction_2.5-flash.request.json",
            wire(&GenerateBody::new(&ask(
                "high",
                Some("I say high you say low"),
            ))),
        ),
        (
            "gemini_generateContent_basic_2.0-flash.request.json",
            wire(&GenerateBody::new(&sky)),
        ),
        (
            "gemini_404_model_not_found_stream.request.json",
            wire(&GenerateBody::new(&sky)),
        ),
        (
            "gemini_countTokens.request.json",
            wire(&CountBody::new(&ask(
                "The quick brown fox jumps over the lazy dog.",
                None,
            ))),
        ),
    ]
}

/// Why a fixture has no row, or `None` if it should have one.
fn skip_reason(name: &str) -> Option<&'static str> {
    Some(match name {
        "README.md" => "the index of the fixtures",
        _ if name.ends_with(".src.txt") => "provenance notes, not bodies",
        _ if name.starts_with("anthropic_") => {
            "no Anthropic adapter: ProviderKind is Gemini or Openai"
        }
        _ if name.starts_with("gemini_sse_")
            || name.starts_with("gemini_streamGenerateContent_") =>
        {
            "streaming is out of scope: keyfan calls unary generateContent"
        }
        "gemini_generateContent_empty_candidate_max_tokens.request.json" => {
            "sends candidateCount, which keyfan does not"
        }
        "gemini_generateContent_include_thoughts.request.json" => {
            "sends thinkingConfig, which keyfan does not"
        }
        "openai_ratelimit_headers_doc_table.json" => {
            "headers, not a body: see openai_rate_limit_headers_win"
        }
        "report-screenshot.png" => "the README's picture of the HTML report, not an API body",
        _ => return None,
    })
}

#[test]
fn every_fixture_is_covered() {
    let rows = fixture_rows();
    let requests = request_rows();
    let mut uncovered = Vec::new();
    for entry in std::fs::read_dir(fixture_dir()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            continue; // replay/ has its own test
        }
        let name = entry.file_name().into_string().unwrap();
        let covered = rows.iter().any(|(file, ..)| *file == name)
            || requests.iter().any(|(file, _)| *file == name)
            || skip_reason(&name).is_some();
        if !covered {
            uncovered.push(name);
        }
    }
    assert!(
        uncovered.is_empty(),
        "fixtures without a row or a skip reason: {uncovered:?}"
    );
}

#[test]
fn every_fixture_parses_as_expected() {
    for (file, api, want) in fixture_rows() {
        let body = read(file);
        match want {
            Want::Count(total) => assert_eq!(gemini::parse_count(&body), Ok(total), "{file}"),
            Want::Reply {
                starts,
                usage,
                model,
            } => {
                let reply = outcome(api, 200, &body).unwrap_or_else(|e| panic!("{file}: {e:?}"));
                assert!(reply.text.starts_with(starts), "{file}: {:?}", reply.text);
                assert_eq!(reply.text, visible_text(&json(&body)), "{file}");
                assert_eq!(reply.usage, usage, "{file}");
                assert_eq!(reply.model_version.as_deref(), Some(model), "{file}");
            }
            Want::Error {
                status,
                class,
                says,
            } => {
                let gemini_200 = matches!(api, Api::Gemini) && status == 200;
                let error = outcome(api, status, &body).expect_err(file);
                assert_eq!(error.class, class, "{file}");
                assert_eq!(error.status, Some(status), "{file}");
                // A 200 that is no answer is billed: its usage goes with it.
                let billed = gemini_200.then(|| usage_of(&json(&body)));
                assert_eq!(error.usage(), billed, "{file}");
                assert!(error.message.contains(says), "{file}: {:?}", error.message);
                if let Some(message) = envelope_message(&json(&body)) {
                    assert_eq!(error.message, message, "{file}");
                }
            }
        }
    }
}

#[test]
fn request_bodies_match_recorded_ones() {
    for (file, built) in request_rows() {
        assert_eq!(built, json(&read(file)), "{file}");
    }
    // With settings: fields inside generationConfig, absent ones omitted.
    let req = Request {
        model: "gemini-2.5-flash",
        prompt: "p",
        system: None,
        max_output_tokens: Some(20),
        temperature: None,
        turns: &[],
        generation: Generation::none(),
        media: &[],
    };
    assert_eq!(
        wire(&GenerateBody::new(&req)),
        serde_json::json!({"contents": [{"parts": [{"text": "p"}], "role": "user"}],
                           "generationConfig": {"maxOutputTokens": 20}})
    );
}

#[test]
fn openai_rate_limit_headers_win() {
    // OpenAI's documented sample headers (limit 150000 tokens) beat the
    // message's "Limit: 60000"; `retry-after-ms` beats "try again in 1ms".
    let table = json(&read("openai_ratelimit_headers_doc_table.json"));
    let mut headers: HeaderMap = table
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, value)| {
            (
                reqwest::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.as_str().unwrap().parse().unwrap(),
            )
        })
        .collect();
    headers.insert("retry-after-ms", "2500".parse().unwrap());
    let error = openai::classify(429, &headers, &read("openai_429_rate_limit_tokens.json"));
    assert_eq!(
        error.class,
        limited(
            QuotaScope::MinuteTokens,
            Some(Duration::from_millis(2500)),
            Some(150_000)
        )
    );
}

/// Replay cases that are not a success, with what they must be.
fn replay_failure(name: &str) -> Option<ErrorClass> {
    match name {
        "pa-1.5-flash-safety-block.json" => Some(blocked("SAFETY")),
        // MAX_TOKENS after 2 thinking tokens, no text.
        "pa-2.5-pro-maxtok-no-output.json" => Some(ErrorClass::ItemInvalid),
        "pa-3.6-flahs-404-unknown-model.json" => Some(ErrorClass::ItemInvalid),
        _ => None,
    }
}

/// The text of a content with exactly one part, which is text.
fn only_text(content: &Value) -> Option<&str> {
    match content["parts"].as_array()?.as_slice() {
        [part] => part["text"].as_str(),
        _ => None,
    }
}

/// The [`Request`] a recorded request body came from, when it uses nothing
/// but what keyfan sends (one user text, a system instruction, a cap and a
/// temperature inside a present `generationConfig`).
fn as_request(case: &Value) -> Option<Request<'_>> {
    let body = case["request"].as_object()?;
    let known = ["contents", "systemInstruction", "generationConfig"];
    if body.keys().any(|k| !known.contains(&k.as_str())) {
        return None;
    }
    let config = body.get("generationConfig")?.as_object()?;
    if config
        .keys()
        .any(|k| k != "maxOutputTokens" && k != "temperature")
    {
        return None;
    }
    let prompt = match body["contents"].as_array()?.as_slice() {
        [content] => only_text(content)?,
        _ => return None,
    };
    let system = match body.get("systemInstruction") {
        Some(instruction) => Some(only_text(instruction)?),
        None => None,
    };
    Some(Request {
        model: case["model"].as_str()?,
        prompt,
        system,
        max_output_tokens: config
            .get("maxOutputTokens")
            .and_then(Value::as_u64)
            .map(|n| n as u32),
        temperature: config
            .get("temperature")
            .and_then(Value::as_f64)
            .map(|t| t as f32),
        turns: &[],
        generation: Generation::none(),
        media: &[],
    })
}

#[test]
fn every_replay_exchange() {
    let mut names: Vec<String> = std::fs::read_dir(fixture_dir().join("replay"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 26);
    let mut rebuilt = 0;
    for name in &names {
        let case = json(&read(&format!("replay/{name}")));
        let status = case["status"].as_u64().unwrap() as u16;
        let response = &case["response"];
        let got = outcome(Api::Gemini, status, &serde_json::to_vec(response).unwrap());
        match replay_failure(name) {
            Some(class) => {
                let error = got.expect_err(name);
                assert_eq!(error.class, class, "{name}: {}", error.message);
                assert_eq!(error.status, Some(status), "{name}");
                // A 200 that is no answer is billed: its usage goes with it.
                let billed = (status == 200).then(|| usage_of(response));
                assert_eq!(error.usage(), billed, "{name}");
                let finish = response["candidates"][0]["finishReason"].as_str();
                let finished = error
                    .billed
                    .as_ref()
                    .and_then(|b| b.finish_reason.as_deref());
                assert_eq!(finished, finish, "{name}");
            }
            None => {
                assert_eq!(status, 200, "{name}");
                let reply = got.unwrap_or_else(|e| panic!("{name}: {e:?}"));
                assert!(!reply.text.is_empty(), "{name}");
                let finish = response["candidates"][0]["finishReason"].as_str();
                assert_eq!(reply.finish_reason.as_deref(), finish, "{name}");
                assert_eq!(reply.text, visible_text(response), "{name}");
                let usage = usage_of(response);
                assert_eq!(reply.usage, usage, "{name}");
                // Independent check of the output rule: the API's total is
                // prompt + candidates + thoughts (the `total_token_count`
                // docstring of googleapis/python-genai `types.py`).
                let total = response["usageMetadata"]["totalTokenCount"]
                    .as_u64()
                    .unwrap();
                assert_eq!(usage.input_tokens + usage.output_tokens, total, "{name}");
            }
        }
        if let Some(req) = as_request(&case) {
            assert_eq!(wire(&GenerateBody::new(&req)), case["request"], "{name}");
            rebuilt += 1;
        }
    }
    // js-2.0-flash-maxtok-temp, js-2.0-flash-story, pa-2.0-flash-system.
    assert!(rebuilt >= 3, "only {rebuilt} replay requests were rebuilt");
}

#[test]
fn the_key_is_scrubbed_from_messages_and_reasons() {
    let key = ApiKey::new("AIzaSyD-this-is-not-a-real-key-k3Qf");
    let leaky = ApiError {
        class: ErrorClass::KeyInvalid {
            reason: "key-this-is-not".into(),
        },
        status: None,
        message: format!("{0} and again {0}", key.expose()),
        billed: None,
        stated: None,
    };
    let scrubbed = leaky.scrub(&Scrubber::new([&key]));
    assert_eq!(scrubbed.message, "AIza…k3Qf and again AIza…k3Qf");
    assert_eq!(
        scrubbed.class,
        ErrorClass::KeyInvalid {
            reason: "keyAIza…k3Qf".into()
        }
    );
    let empty = ApiKey::new("");
    let error = gemini::classify(500, &read("gemini_500_internal.json"));
    assert_eq!(error.clone().scrub(&Scrubber::new([&empty])), error);
}

// ---------------------------------------------------------------------------
// Loopback

/// What the loopback server saw of one request.
#[derive(Debug)]
struct Seen {
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Value,
}

/// Answers like each API would when the key is wrong, echoing the key back
/// as a careless proxy might; `generateContent` succeeds.
fn answer(path: &str, key: &str) -> (u16, String) {
    if path.ends_with(":generateContent") {
        let body = read("gemini_generateContent_thought_summary.json");
        (200, String::from_utf8(body).unwrap())
    } else if path.ends_with(":countTokens") {
        let body = format!(
            r#"{{"error":{{"code":400,"message":"API key not valid: {key}","status":"INVALID_ARGUMENT",
            "details":[{{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID"}}]}}}}"#
        );
        (400, body)
    } else {
        let body = format!(
            r#"{{"error":{{"message":"Incorrect API key provided: {key}.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}}}"#
        );
        (401, body)
    }
}

#[tokio::test]
async fn loopback_wire_format_and_key_scrubbing() {
    use axum::body::Bytes;
    use axum::http::{StatusCode, Uri};

    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let record = seen.clone();
    let handler = move |uri: Uri, headers: HeaderMap, body: Bytes| {
        let record = record.clone();
        async move {
            let key = headers
                .get("x-goog-api-key")
                .or(headers.get("authorization"))
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .trim_start_matches("Bearer ")
                .to_owned();
            let (status, reply) = answer(uri.path(), &key);
            record.lock().unwrap().push(Seen {
                path: uri.path().to_owned(),
                query: uri.query().map(str::to_owned),
                headers,
                body: if body.is_empty() {
                    Value::Null
                } else {
                    json(&body)
                },
            });
            (StatusCode::from_u16(status).unwrap(), reply)
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = axum::Router::new().fallback(handler);
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    let key = ApiKey::new("AIzaSyD-loopback-test-key-00000k3Qf");
    let req = Request {
        model: "gemini-2.5-flash",
        prompt: "Where is Google's headquarters?",
        system: Some("Answer with the city only."),
        max_output_tokens: Some(64),
        temperature: Some(0.2),
        turns: &[],
        generation: Generation::none(),
        media: &[],
    };
    let timeout = Duration::from_secs(5);
    let gemini = Client::new(ProviderKind::Gemini, &format!("{base}/"), timeout, None).unwrap();
    let openai = Client::new(ProviderKind::Openai, &base, timeout, None).unwrap();

    let reply = gemini.generate(&key, &req).await.unwrap();
    assert_eq!(reply.text, "Mountain View");
    let error = gemini.check(&key, req.model).await.unwrap_err();
    assert_eq!(error.class, key_invalid("API_KEY_INVALID"));
    assert_eq!(error.message, "API key not valid: AIza…k3Qf");
    let error = openai.generate(&key, &req).await.unwrap_err();
    assert_eq!(error.class, key_invalid("invalid_api_key"));
    assert_eq!(error.message, "Incorrect API key provided: AIza…k3Qf.");
    let error = openai.check(&key, req.model).await.unwrap_err();
    assert_eq!(error.class, key_invalid("invalid_api_key"));
    assert_eq!(error.message, "Incorrect API key provided: AIza…k3Qf.");

    let seen = seen.lock().unwrap();
    let paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/v1beta/models/gemini-2.5-flash:generateContent",
            "/v1beta/models/gemini-2.5-flash:countTokens",
            "/v1/chat/completions",
            "/v1/models",
        ]
    );
    assert!(
        seen.iter().all(|s| s.query.is_none()),
        "the key must never be in the URL"
    );
    for gemini_call in &seen[..2] {
        assert_eq!(gemini_call.headers["x-goog-api-key"], key.expose());
        assert!(!gemini_call.headers.contains_key("authorization"));
    }
    assert_eq!(
        seen[2].headers["authorization"],
        format!("Bearer {}", key.expose()).as_str()
    );
    assert!(!seen[2].headers.contains_key("x-goog-api-key"));
    assert_eq!(
        seen[3].headers["authorization"],
        seen[2].headers["authorization"]
    );
    assert_eq!(seen[0].body, wire(&GenerateBody::new(&req)));
    // A key check counts a one-word prompt: the cheapest real request.
    let ping = Request {
        prompt: "ping",
        system: None,
        max_output_tokens: None,
        temperature: None,
        ..req
    };
    assert_eq!(seen[1].body, wire(&CountBody::new(&ping)));
    assert_eq!(seen[2].body, wire(&ChatBody::new(&req)));
    assert_eq!(seen[3].body, Value::Null, "a GET has no body");
}

#[tokio::test]
async fn loopback_transport_failures_are_transient() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// Reads one HTTP request (head and `content-length` body) so that
    /// closing the socket afterwards is a clean EOF, not a reset.
    async fn read_request(socket: &mut TcpStream) {
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = socket.read(&mut chunk).await.unwrap();
            buffer.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buffer).to_lowercase();
            if let Some(end) = text.find("\r\n\r\n") {
                let length: usize = text
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if buffer.len() >= end + 4 + length || n == 0 {
                    return;
                }
            }
        }
    }

    /// A server that reads one request, writes `reply` and, if `hang`,
    /// keeps the connection open without finishing.
    async fn server(reply: &'static [u8], hang: bool) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            read_request(&mut socket).await;
            socket.write_all(reply).await.unwrap();
            if hang {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        });
        base
    }

    let key = ApiKey::new("AIzaSyD-loopback-test-key-00000k3Qf");
    let req = Request {
        model: "gemini-2.5-flash",
        prompt: "hi",
        system: None,
        max_output_tokens: None,
        temperature: None,
        turns: &[],
        generation: Generation::none(),
        media: &[],
    };
    let call = |base: String| {
        let key = key.clone();
        let req = req.clone();
        async move {
            let timeout = Duration::from_millis(300);
            let client = Client::new(ProviderKind::Gemini, &base, timeout, None).unwrap();
            client.generate(&key, &req).await.unwrap_err()
        }
    };

    let error = call(server(b"", true).await).await;
    assert_eq!(error.message, "request timed out after 300ms");

    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let refused = call(base).await;
    assert!(
        refused.message.starts_with("connection failed: "),
        "{}",
        refused.message
    );

    let head =
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"candi";
    let truncated = call(server(head, false).await).await;
    assert!(
        truncated.message.starts_with("response body truncated: "),
        "{}",
        truncated.message
    );

    for error in [&error, &refused, &truncated] {
        assert_eq!(error.class, ErrorClass::Transient, "{}", error.message);
        assert_eq!(error.status, None);
        assert!(!error.message.contains("http://"), "{}", error.message);
    }
}

#[test]
fn only_local_base_urls_bypass_environment_proxies() {
    for local in [
        "http://127.0.0.1:8089",
        "http://localhost",
        "http://[::1]:9/x",
        "http://127.0.0.2:1/",
    ] {
        assert!(super::is_loopback(local), "{local}");
    }
    for remote in [
        "https://generativelanguage.googleapis.com",
        "https://api.openai.com/v1",
        "http://10.0.0.1:80",
    ] {
        assert!(!super::is_loopback(remote), "{remote}");
    }
}

#[test]
fn model_names_in_the_providers_character_set() {
    for good in [
        "gemini-2.5-flash",
        "models/gemini-2.0-flash-001",
        "gpt-4o-mini-2024-07-18",
        "ft:gpt-4o-mini:my-org:custom:abc123",
        "meta-llama/llama-3.1-8b-instruct",
        "google/gemini-2.0-flash-exp:free",
        "qwen2.5:0.5b",
        "@cf/meta/llama-3.1-8b-instruct",
        "Qwen/Qwen2.5-0.5B-Instruct",
    ] {
        assert_eq!(super::check_model_name(good), Ok(()), "{good}");
    }
    for (bad, why) in [
        ("gemini-../../../evil?x=1#", "'?' is not allowed"),
        ("gemini 2.5", "' ' is not allowed"),
        ("gemini%2F", "'%' is not allowed"),
        ("模型", "'模' is not allowed"),
        ("../evil", "`..` part"),
        ("a//b", "empty"),
        ("/gemini", "empty"),
        ("models/./x", "`.` or"),
    ] {
        let error = super::check_model_name(bad).unwrap_err();
        assert!(error.contains(why), "{bad}: {error}");
    }
    assert!(super::check_model_name(&"a".repeat(257)).is_err());
}

#[test]
fn media_settings_go_out_as_gemini_takes_them() {
    use super::{MediaPart, MediaResolution, VideoClip};
    let settings = Generation {
        media_resolution: Some(MediaResolution::Low),
        clip: VideoClip {
            start: Some(Duration::from_secs(90)),
            end: Some(Duration::from_millis(120_500)),
            fps: Some(2.0),
        },
        ..Generation::default()
    };
    let media = [
        MediaPart::File {
            mime: Some("video/mp4".into()),
            uri: "https://generativelanguage.googleapis.com/v1beta/files/abc".into(),
        },
        MediaPart::Inline {
            mime: "image/png".into(),
            data: vec![1, 2, 3],
        },
        MediaPart::File {
            mime: None,
            uri: "https://youtu.be/x".into(),
        },
    ];
    let req = Request {
        model: "m",
        prompt: "What happens?",
        turns: &[],
        system: None,
        max_output_tokens: None,
        temperature: None,
        generation: &settings,
        media: &media,
    };
    let gemini = wire(&GenerateBody::new(&req));
    assert_eq!(
        gemini["generationConfig"],
        serde_json::json!({"mediaResolution": "MEDIA_RESOLUTION_LOW"})
    );
    let clip = serde_json::json!({"startOffset": "90s", "endOffset": "120.5s", "fps": 2.0});
    let parts = &gemini["contents"][0]["parts"];
    // Videos (a YouTube URL is one) carry the clip; an image does not.
    assert_eq!(parts[0]["videoMetadata"], clip);
    assert!(parts[1].get("videoMetadata").is_none(), "{parts}");
    assert_eq!(parts[2]["videoMetadata"], clip);
    // A count carries the clip but no generation config.
    let count = wire(&CountBody::new(&req));
    assert_eq!(count["contents"][0]["parts"][0]["videoMetadata"], clip);
    assert!(count.get("generationConfig").is_none());
    for name in ["media_resolution", "start_offset", "end_offset", "fps"] {
        assert!(settings.names().contains(&name));
        assert!(super::supports(super::ProviderKind::Gemini, name));
        assert!(!super::supports(super::ProviderKind::Openai, name));
        assert!(!super::supports(super::ProviderKind::Anthropic, name));
    }
}

#[test]
fn generation_settings_go_out_under_each_api_s_own_names() {
    let settings = Generation {
        top_p: Some(0.5),
        top_k: Some(40),
        stop: vec!["END".into()],
        seed: Some(7),
        thinking_budget: Some(0),
        thinking_level: Some("low".into()),
        reasoning_effort: Some("high".into()),
        response_mime_type: Some("text/plain".into()),
        ..Generation::default()
    };
    let turns = [
        super::Turn {
            role: super::Role::User,
            text: "Hi".into(),
        },
        super::Turn {
            role: super::Role::Model,
            text: "Hello!".into(),
        },
    ];
    let req = Request {
        model: "m",
        prompt: "And now?",
        turns: &turns,
        system: None,
        max_output_tokens: None,
        temperature: None,
        generation: &settings,
        media: &[],
    };
    let gemini = wire(&GenerateBody::new(&req));
    assert_eq!(
        gemini["generationConfig"],
        serde_json::json!({"topP": 0.5, "topK": 40, "stopSequences": ["END"], "seed": 7,
            "thinkingConfig": {"thinkingBudget": 0, "thinkingLevel": "LOW"},
            "responseMimeType": "text/plain"})
    );
    let roles: Vec<&str> = gemini["contents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "model", "user"]);
    let openai = wire(&ChatBody::new(&req));
    assert_eq!(openai["top_p"], 0.5);
    assert_eq!(openai["stop"], serde_json::json!(["END"]));
    assert_eq!(
        (&openai["seed"], &openai["reasoning_effort"]),
        (&7.into(), &"high".into())
    );
    assert_eq!(
        openai["response_format"],
        serde_json::json!({"type": "text"})
    );
    assert_eq!(openai["messages"][1]["role"], "assistant");
    assert!(openai.get("top_k").is_none() && openai.get("thinking_budget").is_none());

    let schema = Arc::new(serde_json::json!({"type": "object"}));
    let structured = Generation {
        response_schema: Some(Arc::clone(&schema)),
        ..Generation::default()
    };
    let openai = wire(&ChatBody::new(&Request {
        generation: &structured,
        ..req
    }));
    assert_eq!(
        openai["response_format"],
        serde_json::json!({"type": "json_schema",
            "json_schema": {"name": "response", "schema": {"type": "object"}, "strict": false}})
    );

    // What each API has, and so what a job may set for its models.
    assert!(Generation::default().names().is_empty());
    assert_eq!(settings.names().len(), 8);
    let gemini_lacks: Vec<_> = settings
        .names()
        .into_iter()
        .filter(|n| !super::supports(ProviderKind::Gemini, n))
        .collect();
    assert_eq!(gemini_lacks, ["reasoning_effort"]);
    let openai_lacks: Vec<_> = settings
        .names()
        .into_iter()
        .filter(|n| !super::supports(ProviderKind::Openai, n))
        .collect();
    assert_eq!(openai_lacks, ["top_k", "thinking_budget", "thinking_level"]);
}
