//! Anthropic Messages API adapter (`POST {base_url}/v1/messages`,
//! <https://docs.anthropic.com/en/api/messages>).
//!
//! The key travels as `x-api-key`, with `anthropic-version: 2023-06-01`. The
//! system prompt is the body's top-level `system`, not a message, and
//! `max_tokens` is required: a request without a cap gets the client's
//! default ([`super::Client::with_default_max_output_tokens`], the config's
//! `default_max_output_tokens`).
//!
//! Usage (anthropic-sdk-python `types/usage.py`): `input_tokens` excludes
//! the cache's tokens, which come as `cache_creation_input_tokens` and
//! `cache_read_input_tokens`; `output_tokens` includes thinking. Anthropic's
//! input-tokens-per-minute limit counts `input_tokens` and cache writes but
//! not cache reads (<https://docs.anthropic.com/en/api/rate-limits>, "cache-aware
//! ITPM"), so that is what the pool is told the quota counted.
//!
//! Every answer, a 200 or an error, carries `anthropic-ratelimit-{requests,
//! input-tokens,output-tokens}-{limit,remaining,reset}` (reset as an RFC 3339
//! time; <https://github.com/bespokelabsai/curator/issues/535> shows them on
//! a 200): their limits are handed to the pool, which paces the account by
//! them when the config gives none.
//!
//! Errors: `{"type":"error","error":{"type":..,"message":..},"request_id":..}`
//! (anthropic-sdk-python `types/shared/error_response.py`). 429
//! `rate_limit_error` cools the account for `retry-after`; 529
//! `overloaded_error` is [`ErrorClass::Overloaded`]; `authentication_error`
//! (401), `permission_error` (403) and `billing_error` disable the key; 400
//! `invalid_request_error`, 404 and 413 fail the item with the API's message.

use super::common::{
    self, api_error, blocked, class_by_status, header, no_output, retry_after_header,
};
use super::transport::{get_with, post_json_with};
use super::{ApiError, Client, ErrorClass, QuotaScope, Reply, Request, Usage};
use crate::types::{ApiKey, Limits, QuotaUse};
use chrono::{DateTime, Utc};
use reqwest::header::HeaderMap;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The API version every request names (the only stable one).
pub(super) const API_VERSION: &str = "2023-06-01";

/// Models listed per page (the API's largest page).
const PAGE_LIMIT: u32 = 1000;

/// The headers every request carries besides the key.
pub(super) const HEADERS: [(&str, &str); 1] = [("anthropic-version", API_VERSION)];

/// Sends one prompt to `messages`.
pub(super) async fn generate(
    client: &Client,
    key: &ApiKey,
    req: &Request<'_>,
) -> Result<Reply, ApiError> {
    let url = client.endpoint_url("messages", "", |base| format!("{base}/v1/messages"));
    let body = MessagesBody::new(req, client.default_max_output_tokens);
    let auth = ("x-api-key", key.expose());
    let (body, headers) = post_json_with(client, &url, auth, &HEADERS, &body, classify).await?;
    let stated = stated_limits(&headers);
    match parse_message(&body) {
        Ok(mut reply) => {
            reply.quota.stated = stated;
            Ok(reply)
        }
        Err(error) => Err(ApiError {
            stated: Some(Box::new(stated)),
            ..error
        }),
    }
}

/// One page of the model list (`GET /v1/models?limit=..&after_id=..`): free,
/// so it is how a key is checked. Returns the body (parsed in `models`).
pub(super) async fn list_models(
    client: &Client,
    key: &ApiKey,
    after: Option<&str>,
) -> Result<Vec<u8>, ApiError> {
    let mut url = common::url(&format!("{}/v1/models", client.base_url))?;
    url.query_pairs_mut()
        .append_pair("limit", &PAGE_LIMIT.to_string());
    if let Some(after) = after {
        url.query_pairs_mut().append_pair("after_id", after);
    }
    let auth = ("x-api-key", key.expose());
    get_with(client, url.as_str(), auth, &HEADERS, classify).await
}

// ---------------------------------------------------------------------------
// Request body

/// The generation settings the Messages API has, as jobs spell them:
/// `top_p`, `top_k`, `stop` (`stop_sequences`) and `thinking_budget`
/// (extended thinking's `budget_tokens`). It has no seed, no JSON mode and
/// no response schema (Anthropic's Messages API reference).
pub(super) const SETTINGS: &[&str] = &["top_p", "top_k", "stop", "thinking_budget"];

/// A Messages body: the conversation's turns and the prompt, the system
/// prompt at the top level.
#[derive(Debug, Serialize)]
pub(super) struct MessagesBody<'a> {
    model: &'a str,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<&'a str>,
    messages: Vec<Message<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<u32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop_sequences: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<Thinking>,
}

#[derive(Debug, Serialize)]
struct Message<'a> {
    role: &'static str,
    content: &'a str,
}

/// Extended thinking, on with a budget.
#[derive(Debug, Serialize)]
struct Thinking {
    #[serde(rename = "type")]
    kind: &'static str,
    budget_tokens: u32,
}

impl<'a> MessagesBody<'a> {
    /// The body for `req`; `default_cap` when it names no output cap.
    pub(super) fn new(req: &Request<'a>, default_cap: u32) -> Self {
        let turns = req.turns.iter().map(|turn| Message {
            role: turn.role.chat_name(),
            content: &turn.text,
        });
        let user = Message {
            role: "user",
            content: req.prompt,
        };
        let g = req.generation;
        MessagesBody {
            model: req.model,
            max_tokens: req.max_output_tokens.unwrap_or(default_cap),
            system: req.system,
            messages: turns.chain([user]).collect(),
            temperature: req.temperature,
            top_p: g.top_p,
            top_k: g.top_k,
            stop_sequences: &g.stop,
            // A budget of 0 (or Gemini's -1, automatic) leaves thinking off.
            thinking: g
                .thinking_budget
                .and_then(|b| u32::try_from(b).ok())
                .filter(|&b| b > 0)
                .map(|budget_tokens| Thinking {
                    kind: "enabled",
                    budget_tokens,
                }),
        }
    }
}

// ---------------------------------------------------------------------------
// Response

/// A message, only the fields keyfan reads.
#[derive(Debug, Deserialize)]
struct MessageResponse {
    #[serde(default)]
    content: Vec<Block>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<MessageUsage>,
    #[serde(default)]
    model: Option<String>,
}

/// A content block: `text`, `thinking`, `tool_use`, ...; only text is read.
#[derive(Debug, Deserialize)]
struct Block {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct MessageUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens_details: Option<OutputDetails>,
}

#[derive(Debug, Deserialize)]
struct OutputDetails {
    #[serde(default)]
    thinking_tokens: Option<u64>,
}

impl MessageUsage {
    /// Normalised usage (input with the cache's tokens, as the other
    /// providers count it) and what the per-minute quota counted. Absurd
    /// counts make the reply malformed.
    fn usage(&self) -> Result<(Usage, QuotaUse), ApiError> {
        let fresh = self.input_tokens.unwrap_or(0);
        let written = self.cache_creation_input_tokens.unwrap_or(0);
        let read = self.cache_read_input_tokens.unwrap_or(0);
        let output = self.output_tokens.unwrap_or(0);
        let thinking = self
            .output_tokens_details
            .as_ref()
            .and_then(|d| d.thinking_tokens)
            .unwrap_or(0);
        common::believable_counts(&[
            ("input_tokens", fresh),
            ("cache_creation_input_tokens", written),
            ("cache_read_input_tokens", read),
            ("output_tokens", output),
            ("thinking_tokens", thinking),
        ])?;
        let usage = Usage {
            input_tokens: fresh + written + read,
            cached_tokens: read,
            cache_write_tokens: written,
            output_tokens: output,
            thinking_tokens: thinking,
        };
        let quota = QuotaUse {
            input_tokens: fresh + written,
            output_tokens: output,
            stated: Limits::default(),
        };
        Ok((usage, quota))
    }
}

/// Turns a 2xx Messages body into a reply, or into the error a 200 can
/// still be: refused, capped before any text, or empty.
pub(super) fn parse_message(body: &[u8]) -> Result<Reply, ApiError> {
    let response: MessageResponse =
        serde_json::from_slice(body).map_err(|e| common::undecodable(&e))?;
    let (usage, quota) = response.usage.unwrap_or_default().usage()?;
    let text: String = response
        .content
        .iter()
        .filter(|b| b.kind == "text")
        .filter_map(|b| b.text.as_deref())
        .collect();
    let stop = response.stop_reason.as_deref().unwrap_or("");
    let finish_reason = (!stop.is_empty()).then_some(stop);
    // A 200 without an answer is billed like one.
    let billed = |error: ApiError| error.billed(usage, finish_reason);
    // As with Gemini's SAFETY, text cut off by a refusal is not an answer.
    if stop == "refusal" {
        return Err(billed(blocked("the output", stop, None)));
    }
    // `end_turn` without text is the model's whole answer, empty as it is.
    if !text.is_empty() || matches!(stop, "end_turn" | "stop_sequence") {
        return Ok(Reply {
            text,
            usage,
            model_version: response.model,
            finish_reason: finish_reason.map(str::to_owned),
            quota,
        });
    }
    Err(billed(match stop {
        "max_tokens" => common::cap_used_up("max_tokens", &usage),
        "model_context_window_exceeded" => api_error(
            ErrorClass::ItemInvalid,
            Some(200),
            "the prompt filled the model's context window before any visible text",
        ),
        "" => no_output("stop_reason absent"),
        other => no_output(&format!("stop_reason {other}")),
    }))
}

// ---------------------------------------------------------------------------
// Headers

/// The per-minute limits an answer's `anthropic-ratelimit-*-limit` headers
/// state (requests, input tokens, output tokens).
fn stated_limits(headers: &HeaderMap) -> Limits {
    Limits {
        rpm: ratelimit(headers, "requests", "limit").and_then(|v| u32::try_from(v).ok()),
        tpm: ratelimit(headers, "input-tokens", "limit"),
        otpm: ratelimit(headers, "output-tokens", "limit"),
        rpd: None,
    }
}

/// `anthropic-ratelimit-{what}-{field}` as a number.
fn ratelimit(headers: &HeaderMap, what: &str, field: &str) -> Option<u64> {
    header(headers, &format!("anthropic-ratelimit-{what}-{field}"))?
        .parse()
        .ok()
}

/// `anthropic-ratelimit-{what}-reset`, an RFC 3339 time, as a wait from `now`.
fn reset_in(headers: &HeaderMap, what: &str, now: DateTime<Utc>) -> Option<Duration> {
    let at = header(headers, &format!("anthropic-ratelimit-{what}-reset"))?;
    let at = DateTime::parse_from_rfc3339(at).ok()?.with_timezone(&Utc);
    common::wait_until(at, now)
}

// ---------------------------------------------------------------------------
// Errors

/// Classifies a non-2xx response from its status, headers and body; the
/// answer's stated limits go with it.
pub(super) fn classify(status: u16, headers: &HeaderMap, body: &[u8]) -> ApiError {
    let parsed = common::parse_error(body);
    let message = common::error_message(status, body, parsed.as_ref());
    let kind = parsed.as_ref().and_then(|e| e.kind.as_deref());
    let now = Utc::now();
    let class = match (status, kind) {
        (429, _) | (_, Some("rate_limit_error")) => rate_limited(headers, &message, now),
        (529, _) | (_, Some("overloaded_error")) => ErrorClass::Overloaded {
            retry_after: retry_after_header(headers, now),
        },
        (_, Some(reason @ ("authentication_error" | "permission_error" | "billing_error"))) => {
            ErrorClass::KeyInvalid {
                reason: reason.to_owned(),
            }
        }
        _ => class_by_status(status),
    };
    ApiError {
        stated: Some(Box::new(stated_limits(headers))),
        ..api_error(class, Some(status), message)
    }
}

/// A `rate_limit_error`: the scope from the message (`... of 20,000 input
/// tokens per minute`), else from the header whose `remaining` is 0; the
/// wait from `retry-after`, else from that limit's reset; the limit from
/// its header.
fn rate_limited(headers: &HeaderMap, message: &str, now: DateTime<Utc>) -> ErrorClass {
    const SCOPES: [(&str, &str, QuotaScope); 3] = [
        (
            "output tokens per minute",
            "output-tokens",
            QuotaScope::MinuteOutputTokens,
        ),
        (
            "input tokens per minute",
            "input-tokens",
            QuotaScope::MinuteTokens,
        ),
        (
            "requests per minute",
            "requests",
            QuotaScope::MinuteRequests,
        ),
    ];
    let hit = SCOPES
        .iter()
        .find(|(words, ..)| message.contains(words))
        .or_else(|| {
            SCOPES
                .iter()
                .find(|(_, what, _)| ratelimit(headers, what, "remaining") == Some(0))
        });
    let Some(&(_, what, scope)) = hit else {
        return ErrorClass::RateLimited {
            scope: QuotaScope::Unknown,
            retry_after: retry_after_header(headers, now),
            limit: None,
        };
    };
    ErrorClass::RateLimited {
        scope,
        retry_after: retry_after_header(headers, now).or_else(|| reset_in(headers, what, now)),
        limit: ratelimit(headers, what, "limit"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::{Generation, Role};
    use reqwest::header::{HeaderName, HeaderValue};

    const RATE_LIMIT_BODY: &str =
        include_str!("../../tests/fixtures/anthropic_429_rate_limit.json");
    const HEADERS_429: &str = include_str!("../../tests/fixtures/anthropic_429_headers.json");
    const OVERLOADED: &str = include_str!("../../tests/fixtures/anthropic_529_overloaded.json");
    const API_ERROR: &str = include_str!("../../tests/fixtures/anthropic_500_api_error.json");

    /// The recorded 429's headers (`anthropic_429_headers.json`).
    fn recorded_429_headers() -> HeaderMap {
        let recorded: serde_json::Value = serde_json::from_str(HEADERS_429).unwrap();
        recorded["headers"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(name, value)| {
                (
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value.as_str().unwrap()).unwrap(),
                )
            })
            .collect()
    }

    fn error(kind: &str, message: &str) -> String {
        format!(
            r#"{{"type":"error","error":{{"type":"{kind}","message":"{message}"}},"request_id":"req_1"}}"#
        )
    }

    #[test]
    fn the_recorded_429_cools_for_retry_after_and_states_every_limit() {
        let headers = recorded_429_headers();
        let error = classify(429, &headers, RATE_LIMIT_BODY.as_bytes());
        assert_eq!(
            error.class,
            ErrorClass::RateLimited {
                scope: QuotaScope::MinuteTokens,
                retry_after: Some(Duration::from_secs(16)),
                limit: Some(200_000),
            }
        );
        assert!(error
            .message
            .starts_with("This request would exceed the rate limit for your organization"));
        assert_eq!(
            error.stated.as_deref().copied().unwrap_or_default(),
            Limits {
                rpm: Some(4000),
                tpm: Some(200_000),
                otpm: Some(80_000),
                rpd: None,
            }
        );
    }

    #[test]
    fn a_429_without_words_or_retry_after_takes_the_empty_limit_and_its_reset() {
        let mut headers = recorded_429_headers();
        headers.remove("retry-after");
        headers.insert(
            "anthropic-ratelimit-output-tokens-remaining",
            HeaderValue::from_static("0"),
        );
        headers.insert(
            "anthropic-ratelimit-input-tokens-remaining",
            HeaderValue::from_static("5"),
        );
        let now = DateTime::parse_from_rfc3339("2025-06-02T15:14:30Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            rate_limited(&headers, "Rate limited", now),
            ErrorClass::RateLimited {
                scope: QuotaScope::MinuteOutputTokens,
                retry_after: Some(Duration::from_secs(15)),
                limit: Some(80_000),
            }
        );
        assert_eq!(
            rate_limited(&HeaderMap::new(), "Rate limited", now),
            ErrorClass::RateLimited {
                scope: QuotaScope::Unknown,
                retry_after: None,
                limit: None,
            }
        );
    }

    #[test]
    fn statuses_map_to_the_issues_classes() {
        let none = HeaderMap::new();
        let cases = [
            (
                529,
                OVERLOADED.to_owned(),
                ErrorClass::Overloaded { retry_after: None },
            ),
            (500, API_ERROR.to_owned(), ErrorClass::Transient),
            (
                401,
                error("authentication_error", "invalid x-api-key"),
                ErrorClass::KeyInvalid {
                    reason: "authentication_error".into(),
                },
            ),
            (
                403,
                error("permission_error", "Your API key does not have permission"),
                ErrorClass::KeyInvalid {
                    reason: "permission_error".into(),
                },
            ),
            (
                400,
                error("invalid_request_error", "max_tokens: Field required"),
                ErrorClass::ItemInvalid,
            ),
            (
                413,
                error("request_too_large", "Request exceeds the maximum size"),
                ErrorClass::ItemInvalid,
            ),
            (
                404,
                error("not_found_error", "model: claude-x"),
                ErrorClass::ItemInvalid,
            ),
        ];
        for (status, body, want) in cases {
            let got = classify(status, &none, body.as_bytes());
            assert_eq!(got.class, want, "{status}");
            assert_eq!(got.status, Some(status));
        }
        let invalid = classify(
            400,
            &none,
            error("invalid_request_error", "max_tokens: Field required").as_bytes(),
        );
        assert_eq!(invalid.message, "max_tokens: Field required");
        assert_eq!(
            classify(529, &none, OVERLOADED.as_bytes()).message,
            "Overloaded"
        );
    }

    /// The shape of a message per anthropic-sdk-python `types/message.py`
    /// and `types/usage.py` (constructed: the fixture set has no success body).
    const CACHED_REPLY: &str = r#"{
      "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF", "type": "message", "role": "assistant",
      "model": "claude-sonnet-4-5-20250929",
      "content": [{"type": "thinking", "thinking": "Let me think", "signature": "x"},
                  {"type": "text", "text": "Recursion is "}, {"type": "text", "text": "..."}],
      "stop_reason": "end_turn", "stop_sequence": null,
      "usage": {"input_tokens": 20, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 1000,
                "output_tokens": 414, "output_tokens_details": {"thinking_tokens": 192}, "service_tier": "standard"}
    }"#;

    #[test]
    fn a_reply_counts_cache_writes_but_not_cache_reads_against_itpm() {
        let reply = parse_message(CACHED_REPLY.as_bytes()).unwrap();
        assert_eq!(reply.text, "Recursion is ...");
        assert_eq!(
            reply.model_version.as_deref(),
            Some("claude-sonnet-4-5-20250929")
        );
        assert_eq!(
            reply.usage,
            Usage {
                input_tokens: 1120,
                cached_tokens: 1000,
                cache_write_tokens: 100,
                output_tokens: 414,
                thinking_tokens: 192,
            }
        );
        assert_eq!(
            (reply.quota.input_tokens, reply.quota.output_tokens),
            (120, 414)
        );
    }

    #[test]
    fn replies_without_usable_output() {
        let with = |content: &str, stop: &str| {
            format!(
                r#"{{"content":{content},"stop_reason":{stop},"usage":{{"input_tokens":10,"output_tokens":64}}}}"#
            )
        };
        let cases = [
            (
                with("[]", r#""refusal""#),
                ErrorClass::Blocked {
                    reason: "refusal".into(),
                },
            ),
            (with("[]", r#""max_tokens""#), ErrorClass::ItemInvalid),
            (
                with("[]", r#""model_context_window_exceeded""#),
                ErrorClass::ItemInvalid,
            ),
            (with("[]", "null"), ErrorClass::EmptyAnswer),
            (with("[]", r#""pause_turn""#), ErrorClass::EmptyAnswer),
        ];
        for (body, class) in cases {
            let error = parse_message(body.as_bytes()).unwrap_err();
            assert_eq!(error.class, class, "{body}");
            assert_eq!(error.status, Some(200));
        }
        // `end_turn` without text is the whole answer; text cut at the cap is output.
        assert_eq!(
            parse_message(with("[]", r#""end_turn""#).as_bytes())
                .unwrap()
                .text,
            ""
        );
        let cut = with(r#"[{"type":"text","text":"Once upon"}]"#, r#""max_tokens""#);
        assert_eq!(parse_message(cut.as_bytes()).unwrap().text, "Once upon");
    }

    #[test]
    fn conversations_and_settings_take_the_messages_apis_names() {
        let turns = [
            crate::provider::Turn {
                role: Role::User,
                text: "Name a colour.".into(),
            },
            crate::provider::Turn {
                role: Role::Model,
                text: "Blue.".into(),
            },
        ];
        let generation = Generation {
            top_k: Some(40),
            stop: vec!["END".into()],
            thinking_budget: Some(1024),
            ..Generation::default()
        };
        let req = Request {
            model: "claude-sonnet-4-5",
            prompt: "Another?",
            system: None,
            max_output_tokens: Some(2048),
            temperature: None,
            turns: &turns,
            generation: &generation,
            media: &[],
        };
        assert_eq!(
            serde_json::to_string(&MessagesBody::new(&req, 4096)).unwrap(),
            r#"{"model":"claude-sonnet-4-5","max_tokens":2048,"messages":[{"role":"user","content":"Name a colour."},{"role":"assistant","content":"Blue."},{"role":"user","content":"Another?"}],"top_k":40,"stop_sequences":["END"],"thinking":{"type":"enabled","budget_tokens":1024}}"#
        );
        for name in ["top_p", "top_k", "stop", "thinking_budget"] {
            assert!(
                crate::provider::supports(crate::types::ProviderKind::Anthropic, name),
                "{name}"
            );
        }
        for name in ["seed", "response_schema", "reasoning_effort"] {
            assert!(
                !crate::provider::supports(crate::types::ProviderKind::Anthropic, name),
                "{name}"
            );
        }
    }

    #[test]
    fn bodies_put_system_on_top_and_always_carry_max_tokens() {
        let req = Request {
            model: "claude-haiku-4-5",
            prompt: "Hi",
            system: Some("Be brief."),
            max_output_tokens: Some(50),
            temperature: Some(0.5),
            turns: &[],
            generation: Generation::none(),
            media: &[],
        };
        assert_eq!(
            serde_json::to_string(&MessagesBody::new(&req, 4096)).unwrap(),
            r#"{"model":"claude-haiku-4-5","max_tokens":50,"system":"Be brief.","messages":[{"role":"user","content":"Hi"}],"temperature":0.5}"#
        );
        let bare = Request {
            system: None,
            max_output_tokens: None,
            temperature: None,
            ..req
        };
        assert_eq!(
            serde_json::to_string(&MessagesBody::new(&bare, 777)).unwrap(),
            r#"{"model":"claude-haiku-4-5","max_tokens":777,"messages":[{"role":"user","content":"Hi"}]}"#
        );
    }
}
