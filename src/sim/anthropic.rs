//! Anthropic's wire format (`POST /v1/messages`, `x-api-key`,
//! `anthropic-version`): a `message` with text content and cache-aware
//! usage, Anthropic's error envelope with the fixtures' bodies, and the
//! `anthropic-ratelimit-*` headers on every answer and every 429, their
//! resets as RFC 3339 times (as in `anthropic_429_headers.json`).

use super::quota::{Headroom, Rejection, Scope, WindowUse};
use super::reply::{self, Directive, Prompt};
use super::wire::{
    encode, fixture_json, fixture_text, last_user_text, put, Answer, Content, Turn, Wire,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use chrono::SecondsFormat;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::LazyLock;

/// Served for a burst of 429s (no limit to name).
const RATE_LIMIT: &str = fixture_text!("anthropic_429_rate_limit.json");
/// Served for a 529, and for the simulator's 503 fault: Anthropic says
/// "overloaded" with 529.
const OVERLOADED: &str = fixture_text!("anthropic_529_overloaded.json");
/// Served for a 500.
const API_ERROR: &str = fixture_text!("anthropic_500_api_error.json");

static RATE_LIMITED: LazyLock<Value> = fixture_json!("anthropic_429_rate_limit.json");

/// The status Anthropic sends when it is overloaded.
const STATUS_OVERLOADED: u16 = 529;

/// Anthropic Messages.
#[derive(Debug)]
pub(crate) struct Anthropic;

#[derive(Deserialize)]
struct MessagesRequest {
    model: String,
    max_tokens: Option<u32>,
    #[serde(default)]
    system: Option<Content>,
    messages: Vec<Message>,
}

#[derive(Deserialize)]
struct Message {
    role: String,
    content: Content,
}

/// Parses a Messages body sent with `version` (the `anthropic-version`
/// header), or says why not in Anthropic's words.
pub(crate) fn parse_messages(version: Option<&str>, body: &[u8]) -> Result<Prompt, String> {
    if version.is_none() {
        return Err("anthropic-version: header is required".to_owned());
    }
    let request: MessagesRequest =
        serde_json::from_slice(body).map_err(|e| format!("invalid request body: {e}"))?;
    let Some(max_tokens) = request.max_tokens else {
        return Err("max_tokens: Field required".to_owned());
    };
    if request.messages.is_empty() {
        return Err("messages: at least one message is required".to_owned());
    }
    let input: u64 = request.system.as_ref().map_or(0, Content::tokens)
        + request
            .messages
            .iter()
            .map(|m| m.content.tokens())
            .sum::<u64>();
    let user_text = last_user_text(
        request
            .messages
            .iter()
            .map(|m| (m.role.as_str(), Some(&m.content))),
    );
    Ok(Prompt {
        model: request.model,
        user_text,
        input_tokens: input.max(1),
        max_output_tokens: Some(max_tokens),
        // The Messages API has no response schema.
        schema: None,
        media: Vec::new(),
    })
}

/// The answer to `GET /v1/models` with an `x-api-key`: Anthropic's list
/// shape, one page with every model the simulator serves.
pub(crate) fn model_list<'a>(models: impl IntoIterator<Item = &'a String>) -> Response {
    let mut ids: Vec<&String> = models.into_iter().collect();
    ids.sort();
    let data: Vec<Value> = ids
        .iter()
        .map(|id| json!({"type": "model", "id": id, "display_name": id, "created_at": "2025-09-29T00:00:00Z"}))
        .collect();
    let body = json!({
        "data": data,
        "has_more": false,
        "first_id": ids.first(),
        "last_id": ids.last(),
    });
    Anthropic::json(StatusCode::OK, encode(&body))
}

/// Anthropic's error envelope.
pub(crate) fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    Anthropic::json(status, encode(&body))
}

/// `anthropic-ratelimit-*` for the per-minute limits that are set (and
/// `tokens-*`, input and output together, when both are).
fn ratelimit_headers(headroom: &Headroom) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let mut put_window = |what: &str, window: &WindowUse| {
        let reset = headroom.at + window.reset;
        let values = [
            ("limit", window.limit.to_string()),
            (
                "remaining",
                window.limit.saturating_sub(window.used).to_string(),
            ),
            ("reset", reset.to_rfc3339_opts(SecondsFormat::Secs, true)),
        ];
        for (field, value) in values {
            let name = format!("anthropic-ratelimit-{what}-{field}");
            if let (Ok(name), Ok(value)) = (
                axum::http::HeaderName::try_from(name),
                HeaderValue::try_from(value),
            ) {
                headers.insert(name, value);
            }
        }
    };
    let windows = [
        ("requests", headroom.requests),
        ("input-tokens", headroom.tokens),
        ("output-tokens", headroom.output),
    ];
    for (what, window) in windows {
        if let Some(window) = window {
            put_window(what, &window);
        }
    }
    if let (Some(input), Some(output)) = (headroom.tokens, headroom.output) {
        let both = WindowUse {
            limit: input.limit + output.limit,
            used: input.used + output.used,
            reset: input.reset.max(output.reset),
        };
        put_window("tokens", &both);
    }
    headers
}

#[derive(Serialize)]
struct MessageBody<'a> {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: Vec<TextBlock<'a>>,
    stop_reason: &'static str,
    stop_sequence: Option<()>,
    usage: MessageUsage,
}

#[derive(Serialize)]
struct TextBlock<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
}

#[derive(Serialize)]
struct MessageUsage {
    input_tokens: u64,
    cache_creation_input_tokens: u64,
    cache_read_input_tokens: u64,
    output_tokens: u64,
    service_tier: &'static str,
}

impl Wire for Anthropic {
    const CONTENT_TYPE: &'static str = "application/json";

    fn invalid_key(_key: Option<&str>) -> Response {
        error(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid x-api-key",
        )
    }

    fn disabled_key() -> Response {
        error(
            StatusCode::FORBIDDEN,
            "permission_error",
            "Your API key does not have permission to use the specified resource.",
        )
    }

    fn model_not_found(model: &str) -> Response {
        error(
            StatusCode::NOT_FOUND,
            "not_found_error",
            &format!("model: {model}"),
        )
    }

    fn bad_request(message: &str) -> Response {
        error(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// The fixture's body, its message naming the limit that was hit, with
    /// `retry-after` (whole seconds, rounded up), `x-should-retry` and the
    /// rate-limit headers, as the recorded 429 has them.
    fn rate_limited(_model: &str, rejection: &Rejection) -> Response {
        let what = match rejection.scope {
            // Anthropic has no daily limit; a sim.yaml that sets one is
            // refused in the per-minute words.
            Scope::RequestsPerDay | Scope::RequestsPerMinute => "requests per minute",
            Scope::TokensPerMinute => "input tokens per minute",
            Scope::OutputTokensPerMinute => "output tokens per minute",
        };
        let message = format!(
            "This request would exceed the rate limit for your organization \
             (00000000-0000-4000-8000-000000000000) of {} {what}. For details, refer to: \
             https://docs.anthropic.com/en/api/rate-limits. You can see the response headers \
             for current usage. Please reduce the prompt length or the maximum tokens requested, \
             or try again later. You may also contact sales at \
             https://www.anthropic.com/contact-sales to discuss your options for a rate limit \
             increase.",
            thousands(rejection.limit)
        );
        let mut body = RATE_LIMITED.clone();
        put(&mut body, "/error/message", message);
        let mut response = Self::json(StatusCode::TOO_MANY_REQUESTS, encode(&body));
        let headers = response.headers_mut();
        headers.extend(ratelimit_headers(&rejection.headroom));
        let secs = rejection.retry_after.as_millis().div_ceil(1000).max(1);
        headers.insert("retry-after", HeaderValue::from(secs as u64));
        headers.insert("x-should-retry", HeaderValue::from_static("true"));
        response
    }

    fn fault(status: StatusCode, _request: u64) -> Response {
        match status.as_u16() {
            429 => Self::json(status, RATE_LIMIT),
            500 => Self::json(status, API_ERROR),
            503 | STATUS_OVERLOADED => Self::json(
                StatusCode::from_u16(STATUS_OVERLOADED).unwrap_or(status),
                OVERLOADED,
            ),
            code => {
                let kind = if code >= 500 {
                    "api_error"
                } else {
                    "invalid_request_error"
                };
                error(status, kind, status.canonical_reason().unwrap_or("Error"))
            }
        }
    }

    fn answer(turn: &Turn) -> Answer {
        let prompt = turn.prompt;
        let reply = reply::compose(prompt);
        // Gemini's directives, mapped to what Anthropic says for the same
        // outcome; `[[sim:other]]` has no counterpart and answers normally.
        let (text, stop_reason, output_tokens) = match prompt.directive() {
            Some(Directive::Block | Directive::Safety) => (None, "refusal", 0),
            Some(Directive::MaxTokens) => (
                None,
                "max_tokens",
                prompt.output_cap().unwrap_or(reply.tokens),
            ),
            None | Some(Directive::Other) => (
                Some(reply.text.as_str()),
                if reply.cut { "max_tokens" } else { "end_turn" },
                reply.tokens,
            ),
        };
        let message = MessageBody {
            id: format!("msg_{}", turn.id),
            kind: "message",
            role: "assistant",
            model: &prompt.model,
            content: text
                .map(|text| TextBlock { kind: "text", text })
                .into_iter()
                .collect(),
            stop_reason,
            stop_sequence: None,
            usage: MessageUsage {
                input_tokens: prompt.input_tokens,
                cache_creation_input_tokens: 0,
                cache_read_input_tokens: 0,
                output_tokens,
                service_tier: "standard",
            },
        };
        Answer {
            headers: ratelimit_headers(&turn.headroom),
            body: encode(&message),
            output_tokens,
        }
    }
}

/// `20000` as Anthropic writes it in messages: `20,000`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::reply::MEDIA_PART_TOKENS;

    #[test]
    fn bodies_parse_with_system_on_top_and_max_tokens_required() {
        let body = br#"{"model":"claude-haiku-4-5","max_tokens":5,"system":"abcd",
            "messages":[{"role":"user","content":[{"type":"text","text":"hello"},{"type":"image","source":{}}]}]}"#;
        let prompt = parse_messages(Some("2023-06-01"), body).expect("parses");
        assert_eq!(prompt.user_text, "hello");
        assert_eq!(prompt.input_tokens, 1 + 2 + MEDIA_PART_TOKENS);
        assert_eq!(prompt.max_output_tokens, Some(5));
        let no_cap = br#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#;
        assert_eq!(
            parse_messages(Some("2023-06-01"), no_cap).unwrap_err(),
            "max_tokens: Field required"
        );
        assert_eq!(
            parse_messages(None, body).unwrap_err(),
            "anthropic-version: header is required"
        );
        assert!(RATE_LIMITED.is_object());
        for text in [OVERLOADED, API_ERROR] {
            super::super::wire::fixture(text);
        }
    }

    #[test]
    fn limits_are_written_with_thousands_separators() {
        assert_eq!(thousands(20_000), "20,000");
        assert_eq!(thousands(1_000_000), "1,000,000");
        assert_eq!(thousands(999), "999");
    }
}
