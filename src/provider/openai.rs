//! OpenAI chat completions adapter (`POST /v1/chat/completions`,
//! <https://platform.openai.com/docs/api-reference/chat>), for OpenAI itself and for
//! OpenAI-compatible servers, Gemini's compatibility endpoint included.
//!
//! **`base_url` convention.** The configured base is the server's root, and
//! `/v1/chat/completions` is appended: `https://api.openai.com` →
//! `https://api.openai.com/v1/chat/completions`. When the base already
//! contains a version segment (`v1`, `v1beta`, `v2alpha`, ...), only
//! `/chat/completions` is appended, so the bases that providers document
//! work as given: `https://generativelanguage.googleapis.com/v1beta/openai`,
//! `https://openrouter.ai/api/v1`.
//!
//! The key travels as `Authorization: Bearer <key>`. Gemini's compatibility
//! endpoint answers with Google-style errors (possibly array-wrapped); those
//! are classified by the Gemini rules.

use super::common::{
    self, api_error, blocked, class_by_status, duration_after, header, no_output, number_after,
    retry_after_header, ErrorBody,
};
use super::transport::{get, post_json};
use super::{gemini, ApiError, Client, ErrorClass, QuotaScope, RawRequest, Reply, Request, Usage};
use crate::types::ApiKey;
use chrono::Utc;
use reqwest::header::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Sends one prompt to `chat/completions`.
pub(super) async fn generate(
    client: &Client,
    key: &ApiKey,
    req: &Request<'_>,
) -> Result<Reply, ApiError> {
    chat(client, key, &ChatBody::new(req)).await
}

/// Sends a body written elsewhere (a batch file's line) to
/// `chat/completions`, as [`raw_body`] makes it.
pub(super) async fn generate_raw(
    client: &Client,
    key: &ApiKey,
    req: &RawRequest<'_>,
) -> Result<Reply, ApiError> {
    chat(client, key, &raw_body(req)).await
}

/// The `chat/completions` body of a body written elsewhere: as it is, with
/// the request's model as its `model` and, when it names no `max_tokens`
/// nor `max_completion_tokens`, the request's cap as `max_tokens`.
pub(super) fn raw_body(req: &RawRequest<'_>) -> Map<String, Value> {
    let mut body = (*req.body.body).clone();
    body.insert("model".to_owned(), req.model.into());
    if let Some(cap) = req.max_output_tokens {
        if !body.contains_key("max_tokens") && !body.contains_key("max_completion_tokens") {
            body.insert("max_tokens".to_owned(), cap.into());
        }
    }
    body
}

/// Posts `body` to `chat/completions` with the key as a bearer token and
/// reads the completion.
async fn chat(client: &Client, key: &ApiKey, body: &impl Serialize) -> Result<Reply, ApiError> {
    let url = client.endpoint_url("chat/completions", "", chat_url);
    let body = post_json(
        client,
        &url,
        "authorization",
        &format!("Bearer {}", key.expose()),
        body,
        classify,
    )
    .await?;
    parse_chat(&body)
}

/// Lists the models the key may use: free, so it is how a key is checked.
/// Returns the body (parsed in `models`).
pub(super) async fn list_models(client: &Client, key: &ApiKey) -> Result<Vec<u8>, ApiError> {
    let url = api_url(&client.base_url, "models");
    let auth = format!("Bearer {}", key.expose());
    get(client, &url, "authorization", &auth, classify).await
}

/// The chat completions URL for `base_url` (see the module docs).
pub(super) fn chat_url(base_url: &str) -> String {
    api_url(base_url, "chat/completions")
}

/// `endpoint` under `base_url`'s API version, adding `/v1` when the base
/// names no version (see the module docs).
pub(super) fn api_url(base_url: &str, endpoint: &str) -> String {
    let path = base_url
        .split_once("://")
        .map_or(base_url, |(_, rest)| rest);
    // The first segment is the host.
    if path.split('/').skip(1).any(is_version_segment) {
        format!("{base_url}/{endpoint}")
    } else {
        format!("{base_url}/v1/{endpoint}")
    }
}

/// `v1`, `v2`, `v1beta`, `v1alpha2`: a `v`, a digit, then letters or digits.
fn is_version_segment(segment: &str) -> bool {
    let mut chars = segment.chars();
    chars.next() == Some('v')
        && chars.next().is_some_and(|c| c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_alphanumeric())
}

// ---------------------------------------------------------------------------
// Request body

/// A chat completions body: the system message (if any), then the user's.
///
/// The cap is sent as `max_tokens`, not OpenAI's newer
/// `max_completion_tokens`: every OpenAI-compatible server (vLLM, Ollama,
/// llama.cpp, OpenRouter, Gemini's compatibility endpoint) accepts
/// `max_tokens`, while many ignore or reject the newer name. The cost is that
/// OpenAI's o-series reasoning models reject `max_tokens` with a 400, which
/// fails the item with OpenAI's own message saying so.
///
/// Of the other settings, chat completions has `top_p`, `stop`, `seed`,
/// `reasoning_effort` and `response_format`: `{"type": "json_schema",
/// "json_schema": {"name", "schema", "strict"}}` for a schema, else
/// `json_object` for `application/json` or `text` for `text/plain`
/// (<https://platform.openai.com/docs/api-reference/chat/create>).
#[derive(Debug, Serialize)]
pub(super) struct ChatBody<'a> {
    model: &'a str,
    messages: Vec<ChatMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_effort: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<ResponseFormat<'a>>,
}

/// `response_format`.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ResponseFormat<'a> {
    JsonSchema { json_schema: JsonSchema<'a> },
    JsonObject,
    Text,
}

/// A named schema. Sent with `strict: false`: strict mode refuses schemas
/// that do not close every object (`additionalProperties: false`) and
/// require every property, and keyfan checks each answer against the
/// schema itself.
#[derive(Debug, Serialize)]
struct JsonSchema<'a> {
    name: &'static str,
    schema: &'a serde_json::Value,
    strict: bool,
}

/// The [`super::Generation`] settings chat completions has, as
/// [`super::supports`] asks.
pub(super) const SETTINGS: &[&str] = &[
    "top_p",
    "stop",
    "seed",
    "reasoning_effort",
    "response_mime_type",
    "response_schema",
];

#[derive(Debug, Serialize)]
struct ChatMessage<'a> {
    role: &'static str,
    content: &'a str,
}

impl<'a> ChatBody<'a> {
    /// The body for `req`, absent settings omitted.
    pub(super) fn new(req: &Request<'a>) -> Self {
        let system = req.system.map(|content| ChatMessage {
            role: "system",
            content,
        });
        let turns = req.turns.iter().map(|turn| ChatMessage {
            role: turn.role.chat_name(),
            content: &turn.text,
        });
        let user = ChatMessage {
            role: "user",
            content: req.prompt,
        };
        let g = req.generation;
        let response_format = match (&g.response_schema, g.response_mime_type.as_deref()) {
            (Some(schema), _) => Some(ResponseFormat::JsonSchema {
                json_schema: JsonSchema {
                    name: "response",
                    schema,
                    strict: false,
                },
            }),
            (None, Some("application/json")) => Some(ResponseFormat::JsonObject),
            (None, Some(_)) => Some(ResponseFormat::Text),
            (None, None) => None,
        };
        ChatBody {
            model: req.model,
            messages: system.into_iter().chain(turns).chain([user]).collect(),
            max_tokens: req.max_output_tokens,
            temperature: req.temperature,
            top_p: g.top_p,
            stop: &g.stop,
            seed: g.seed,
            reasoning_effort: g.reasoning_effort.as_deref(),
            response_format,
        }
    }
}

// ---------------------------------------------------------------------------
// Response

/// A chat completion, only the fields keyfan reads. Counts are `Option`
/// because compatible servers send `null` for what they do not track.
#[derive(Debug, Deserialize)]
struct ChatResponse {
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<ChatUsage>,
    #[serde(default)]
    model: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Choice {
    #[serde(default)]
    message: Option<Message>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Message {
    #[serde(default)]
    content: Option<String>,
    /// Set instead of `content` when the model declines (structured outputs).
    #[serde(default)]
    refusal: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ChatUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Debug, Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct CompletionDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

impl ChatUsage {
    /// Normalised usage: `completion_tokens` already includes reasoning
    /// tokens (openai/openai-python `types/completion_usage.py`: they "are
    /// still counted in the total completion tokens"), and `prompt_tokens`
    /// the cached ones. Absurd
    /// counts make the reply malformed.
    fn usage(&self) -> Result<Usage, ApiError> {
        let usage = Usage {
            input_tokens: self.prompt_tokens.unwrap_or(0),
            cached_tokens: self
                .prompt_tokens_details
                .as_ref()
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
            output_tokens: self.completion_tokens.unwrap_or(0),
            thinking_tokens: self
                .completion_tokens_details
                .as_ref()
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
            cache_write_tokens: 0,
        };
        common::believable_counts(&[
            ("prompt_tokens", usage.input_tokens),
            ("cached_tokens", usage.cached_tokens),
            ("completion_tokens", usage.output_tokens),
            ("reasoning_tokens", usage.thinking_tokens),
        ])?;
        Ok(usage)
    }
}

/// Turns a 2xx chat completions body into a reply, or into the error a 200
/// can still be: filtered, refused, capped before any text, or empty. Such
/// an error carries the usage and finish reason the 200 reported: they are
/// billed.
pub(super) fn parse_chat(body: &[u8]) -> Result<Reply, ApiError> {
    let response: ChatResponse =
        serde_json::from_slice(body).map_err(|e| common::undecodable(&e))?;
    let usage = response
        .usage
        .as_ref()
        .map_or(Ok(Usage::default()), ChatUsage::usage)?;
    let finish = response
        .choices
        .first()
        .and_then(|c| c.finish_reason.as_deref());
    answer_of(&response, usage).map_err(|e| e.billed(usage, finish))
}

/// The reply in a parsed 200, or why it holds none.
fn answer_of(response: &ChatResponse, usage: Usage) -> Result<Reply, ApiError> {
    let Some(choice) = response.choices.first() else {
        return Err(no_output("no choices"));
    };
    let finish = choice.finish_reason.as_deref().unwrap_or("");
    // As with Gemini's SAFETY, partial text cut off by the filter is not an
    // answer to hand on.
    if finish == "content_filter" {
        return Err(blocked("the output", finish, None));
    }
    let message = choice.message.as_ref();
    let text = message.and_then(|m| m.content.as_deref()).unwrap_or("");
    let refusal = message
        .and_then(|m| m.refusal.as_deref())
        .filter(|r| !r.is_empty());
    // `stop` without text (and without a refusal) is the model's whole
    // answer, empty as it is: asking again gets the same.
    if !text.is_empty() || (finish == "stop" && refusal.is_none()) {
        return Ok(Reply {
            text: text.to_owned(),
            quota: common::counted(&usage),
            usage,
            model_version: response.model.clone(),
            finish_reason: choice.finish_reason.clone(),
        });
    }
    if let Some(refusal) = refusal {
        return Err(blocked("the output", "refusal", Some(refusal)));
    }
    if finish == "length" {
        return Err(common::cap_used_up("max_tokens", &usage));
    }
    Err(no_output(&format!(
        "finish_reason {}",
        if finish.is_empty() { "absent" } else { finish }
    )))
}

// ---------------------------------------------------------------------------
// Errors

/// Classifies a non-2xx response from its status, headers and body.
pub(super) fn classify(status: u16, headers: &HeaderMap, body: &[u8]) -> ApiError {
    let parsed = common::parse_error(body);
    if let Some(google) = parsed.as_ref().filter(|e| e.is_google()) {
        let mut error = gemini::classify_parsed(status, body, Some(google));
        // Google sends no Retry-After, only `RetryInfo` in the body
        // (https://github.com/AtomicBot-ai/atomic-agent/pull/271), but a gateway in front
        // of it may: use it when the body had no wait.
        if let ErrorClass::RateLimited { retry_after, .. } = &mut error.class {
            if retry_after.is_none() {
                *retry_after = retry_after_header(headers, Utc::now());
            }
        }
        return error;
    }
    let message = common::error_message(status, body, parsed.as_ref());
    let empty = ErrorBody::default();
    let error = parsed.as_ref().unwrap_or(&empty);
    let code = error.code_str();
    let kind = error.kind.as_deref();
    let reason = |fallback: &str| code.or(kind).unwrap_or(fallback).to_owned();
    let class = match status {
        // Same status as rate limiting, but billing: retrying never helps.
        429 if code == Some("insufficient_quota") || kind == Some("insufficient_quota") => {
            ErrorClass::KeyInvalid {
                reason: "insufficient_quota".into(),
            }
        }
        // A single request larger than the per-minute token limit (same
        // code as rate limiting) can never succeed.
        429 if message.contains("Request too large") => ErrorClass::ItemInvalid,
        429 => rate_limited(kind, headers, &message),
        401 => ErrorClass::KeyInvalid {
            reason: reason("unauthorized"),
        },
        // e.g. `unsupported_country_region_territory`: the key or its egress.
        403 => ErrorClass::KeyInvalid {
            reason: reason("forbidden"),
        },
        _ => class_by_status(status),
    };
    api_error(class, Some(status), message)
}

/// A `rate_limit_exceeded` 429: the scope from `error.type`, the wait from the
/// headers or the message, the limit from the headers or the message.
fn rate_limited(kind: Option<&str>, headers: &HeaderMap, message: &str) -> ErrorClass {
    let (scope, limit_header) = match kind {
        Some("tokens") => (QuotaScope::MinuteTokens, Some("x-ratelimit-limit-tokens")),
        Some("requests") => (
            QuotaScope::MinuteRequests,
            Some("x-ratelimit-limit-requests"),
        ),
        _ => (QuotaScope::Unknown, None),
    };
    let retry_after = retry_after_header(headers, Utc::now())
        .or_else(|| duration_after(message, "Please try again in "));
    let limit = limit_header
        .and_then(|name| header(headers, name)?.parse().ok())
        .or_else(|| number_after(message, &["Limit: ", "Limit "]));
    ErrorClass::RateLimited {
        scope,
        retry_after,
        limit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::Generation;
    use chrono::DateTime;
    use reqwest::header::HeaderValue;
    use std::time::Duration;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| (*name, HeaderValue::from_str(value).unwrap()))
            .map(|(name, value)| (reqwest::header::HeaderName::from_static(name), value))
            .collect()
    }

    #[test]
    fn urls_follow_the_base_url_convention() {
        let cases = [
            (
                "https://api.openai.com",
                "https://api.openai.com/v1/chat/completions",
            ),
            (
                "http://127.0.0.1:8080",
                "http://127.0.0.1:8080/v1/chat/completions",
            ),
            (
                "https://generativelanguage.googleapis.com/v1beta/openai",
                "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions",
            ),
            (
                "https://openrouter.ai/api/v1",
                "https://openrouter.ai/api/v1/chat/completions",
            ),
            (
                "https://proxy.example/vault/openai",
                "https://proxy.example/vault/openai/v1/chat/completions",
            ),
        ];
        for (base, want) in cases {
            assert_eq!(chat_url(base), want);
        }
    }

    #[test]
    fn retry_after_headers_in_order_of_precedence() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:27:00Z")
            .unwrap()
            .with_timezone(&Utc);
        type Headers<'a> = &'a [(&'static str, &'a str)];
        let cases: [(Headers, Option<Duration>); 7] = [
            (
                &[("retry-after-ms", "1500.5"), ("retry-after", "9")],
                Some(Duration::from_micros(1_500_500)),
            ),
            (&[("retry-after", "16")], Some(Duration::from_secs(16))),
            (
                &[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")],
                Some(Duration::from_secs(60)),
            ),
            (&[("retry-after", "Wed, 21 Oct 2015 07:20:00 GMT")], None),
            (&[("retry-after-ms", "0"), ("retry-after", "-1")], None),
            (
                &[("retry-after-ms", "soon"), ("retry-after", "2")],
                Some(Duration::from_secs(2)),
            ),
            (&[], None),
        ];
        for (pairs, want) in cases {
            assert_eq!(retry_after_header(&headers(pairs), now), want, "{pairs:?}");
        }
    }

    #[test]
    fn absurd_retry_after_headers_are_clamped_to_a_day() {
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let day = common::MAX_SERVER_DELAY;
        type Headers<'a> = &'a [(&'static str, &'a str)];
        let cases: [(Headers, Option<Duration>); 7] = [
            (&[("retry-after", "10000000000000000000")], Some(day)),
            (&[("retry-after", "1e400")], Some(day)),
            (&[("retry-after", "inf")], Some(day)),
            (&[("retry-after", "NaN")], None),
            (&[("retry-after-ms", "18446744073709551615000")], Some(day)),
            (
                &[("retry-after", "Thu, 31 Dec 2099 23:59:59 GMT")],
                Some(day),
            ),
            (
                &[("retry-after", "Thu, 01 Jan 2026 00:01:30 GMT")],
                Some(Duration::from_secs(90)),
            ),
        ];
        for (pairs, want) in cases {
            assert_eq!(retry_after_header(&headers(pairs), now), want, "{pairs:?}");
        }
        // Through the classifier too: the header feeds the 429's wait.
        let body = br#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#;
        let class = classify(
            429,
            &headers(&[("retry-after", "10000000000000000000")]),
            body,
        )
        .class;
        assert!(
            matches!(class, ErrorClass::RateLimited { retry_after: Some(d), .. } if d == day),
            "{class:?}"
        );
    }

    #[test]
    fn request_too_large_can_never_succeed() {
        let body = br#"{"error":{"message":"Request too large for gpt-4o in organization org-x on tokens per min (TPM): Limit 30000, Requested 30601. The input or output tokens must be reduced in order to run successfully.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#;
        assert_eq!(
            classify(429, &HeaderMap::new(), body).class,
            ErrorClass::ItemInvalid
        );
    }

    #[test]
    fn requests_scope_with_limit_and_wait_from_the_message() {
        let body = br#"{"error":{"message":"Rate limit reached for gpt-3.5-turbo in organization org-x on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20s. Visit https://platform.openai.com/account/rate-limits to learn more.","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
        assert_eq!(
            classify(429, &HeaderMap::new(), body).class,
            ErrorClass::RateLimited {
                scope: QuotaScope::MinuteRequests,
                retry_after: Some(Duration::from_secs(20)),
                limit: Some(3),
            }
        );
    }

    #[test]
    fn other_openai_statuses() {
        let body = |code: &str| {
            format!(
                r#"{{"error":{{"message":"m","type":"invalid_request_error","param":null,"code":"{code}"}}}}"#
            )
        };
        let cases = [
            (
                403,
                body("unsupported_country_region_territory"),
                ErrorClass::KeyInvalid {
                    reason: "unsupported_country_region_territory".into(),
                },
            ),
            (
                400,
                body("context_length_exceeded"),
                ErrorClass::ItemInvalid,
            ),
            (404, body("model_not_found"), ErrorClass::ItemInvalid),
            (500, body("server_error"), ErrorClass::Transient),
            (
                401,
                String::new(),
                ErrorClass::KeyInvalid {
                    reason: "unauthorized".into(),
                },
            ),
        ];
        for (status, body, want) in cases {
            assert_eq!(
                classify(status, &HeaderMap::new(), body.as_bytes()).class,
                want,
                "{status}"
            );
        }
    }

    #[test]
    fn google_style_body_takes_retry_after_header_when_it_has_no_wait() {
        let body = br#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}"#;
        assert_eq!(
            classify(429, &headers(&[("retry-after", "7")]), body).class,
            ErrorClass::RateLimited {
                scope: QuotaScope::Unknown,
                retry_after: Some(Duration::from_secs(7)),
                limit: None,
            }
        );
    }

    /// The shape of a chat completion per openai-python's
    /// `types/chat/chat_completion.py` and `types/completion_usage.py`
    /// (constructed, not recorded: the fixture set has no OpenAI success body).
    const REASONING_REPLY: &str = r#"{
      "id": "chatcmpl-abc123", "object": "chat.completion", "created": 1777319815,
      "model": "o3-mini-2025-01-31", "system_fingerprint": "fp_7a15bf1b39", "service_tier": "default",
      "choices": [{"index": 0, "logprobs": null, "finish_reason": "stop",
        "message": {"role": "assistant", "content": "Recursion is ...", "refusal": null, "annotations": []}}],
      "usage": {"prompt_tokens": 1200, "completion_tokens": 414, "total_tokens": 1614,
        "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 192, "audio_tokens": 0,
          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}
    }"#;

    #[test]
    fn reply_with_reasoning_and_cached_tokens() {
        let reply = parse_chat(REASONING_REPLY.as_bytes()).unwrap();
        assert_eq!(reply.text, "Recursion is ...");
        assert_eq!(reply.model_version.as_deref(), Some("o3-mini-2025-01-31"));
        assert_eq!(
            reply.usage,
            Usage {
                input_tokens: 1200,
                cached_tokens: 1024,
                output_tokens: 414,
                thinking_tokens: 192,
                cache_write_tokens: 0,
            }
        );
    }

    #[test]
    fn replies_without_usable_output() {
        let with = |choice: &str, usage: &str| {
            format!(r#"{{"model":"m","choices":[{choice}],"usage":{usage}}}"#)
        };
        let usage = r#"{"prompt_tokens":10,"completion_tokens":64,"completion_tokens_details":{"reasoning_tokens":64}}"#;
        let cases = [
            (
                with(r#"{"message":{"role":"assistant","content":null},"finish_reason":"content_filter"}"#, "null"),
                ErrorClass::Blocked { reason: "content_filter".into() },
                "the output was blocked: content_filter",
            ),
            (
                with(r#"{"message":{"role":"assistant","content":null,"refusal":"I can't help with that."},"finish_reason":"stop"}"#, "null"),
                ErrorClass::Blocked { reason: "refusal".into() },
                "the output was blocked: refusal: I can't help with that.",
            ),
            (
                with(r#"{"message":{"role":"assistant","content":""},"finish_reason":"length"}"#, usage),
                ErrorClass::ItemInvalid,
                "the output cap (max_tokens) was used up before any visible text: 64 thinking + 0 visible output tokens for a 10-token prompt",
            ),
            (
                with(r#"{"message":{"role":"assistant","content":null}}"#, usage),
                ErrorClass::EmptyAnswer,
                "the API returned no output (finish_reason absent)",
            ),
            (r#"{"choices":[]}"#.to_owned(), ErrorClass::EmptyAnswer, "the API returned no output (no choices)"),
        ];
        for (body, class, message) in cases {
            let error = parse_chat(body.as_bytes()).unwrap_err();
            assert_eq!(error.class, class, "{body}");
            assert_eq!(error.status, Some(200));
            assert!(error.message.starts_with(message), "{}", error.message);
            // What the 200 reported is billed, and goes with the error.
            let billed = error.usage().expect("a 200 carries its usage");
            let reported = body.contains(usage);
            assert_eq!(billed.input_tokens, if reported { 10 } else { 0 }, "{body}");
            assert_eq!(
                billed.thinking_tokens,
                if reported { 64 } else { 0 },
                "{body}"
            );
        }
        let capped = with(
            r#"{"message":{"role":"assistant","content":""},"finish_reason":"length"}"#,
            usage,
        );
        let error = parse_chat(capped.as_bytes()).unwrap_err();
        let billed = error.billed.expect("a 200 carries its finish reason");
        assert_eq!(billed.finish_reason.as_deref(), Some("length"));
    }

    #[test]
    fn an_empty_answer_finished_with_stop_is_a_reply() {
        // llama.cpp's server, for a prompt its model answers with nothing.
        let body = r#"{"choices":[{"finish_reason":"stop","index":0,"message":{"role":"assistant","content":""}}],
            "created":1777319815,"model":"qwen","object":"chat.completion",
            "usage":{"completion_tokens":0,"prompt_tokens":17,"total_tokens":17}}"#;
        let reply = parse_chat(body.as_bytes()).unwrap();
        assert_eq!(reply.text, "");
        assert_eq!(reply.usage.input_tokens, 17);
        let null = r#"{"choices":[{"finish_reason":"stop","message":{"role":"assistant","content":null}}]}"#;
        assert_eq!(parse_chat(null.as_bytes()).unwrap().text, "");
    }

    #[test]
    fn absurd_token_counts_make_a_malformed_reply() {
        let body =
            openai_like_reply(r#"{"prompt_tokens":12,"completion_tokens":9223372036854775807}"#);
        let error = parse_chat(body.as_bytes()).unwrap_err();
        assert_eq!(error.class, ErrorClass::Transient);
        assert!(
            error
                .message
                .starts_with("malformed reply: usage completion_tokens = 9223372036854775807"),
            "{}",
            error.message
        );
        let sane = openai_like_reply(r#"{"prompt_tokens":1000000000000,"completion_tokens":3}"#);
        assert_eq!(
            parse_chat(sane.as_bytes()).unwrap().usage.input_tokens,
            1_000_000_000_000
        );
    }

    fn openai_like_reply(usage: &str) -> String {
        format!(
            r#"{{"model":"m","choices":[{{"message":{{"role":"assistant","content":"hi"}},"finish_reason":"stop"}}],"usage":{usage}}}"#
        )
    }

    #[test]
    fn bodies_build_system_then_user() {
        let req = Request {
            model: "gpt-4o-mini",
            prompt: "Hi",
            system: Some("Be brief."),
            max_output_tokens: Some(50),
            temperature: Some(0.7),
            turns: &[],
            generation: Generation::none(),
            media: &[],
        };
        let json = serde_json::to_string(&ChatBody::new(&req)).unwrap();
        assert_eq!(
            json,
            r#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}],"max_tokens":50,"temperature":0.7}"#
        );
        let bare = Request {
            system: None,
            max_output_tokens: None,
            temperature: None,
            ..req
        };
        assert_eq!(
            serde_json::to_string(&ChatBody::new(&bare)).unwrap(),
            r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hi"}]}"#
        );
    }
}
