//! OpenAI's wire format (`/v1/chat/completions`, also served at Gemini's
//! OpenAI-compatible path): a standard `chat.completion`, OpenAI's error
//! envelope from the fixtures, and the `retry-after`, `retry-after-ms` and
//! `x-ratelimit-*` headers.

use super::quota::{Headroom, Rejection, Scope};
use super::reply::{self, Directive, Prompt};
use super::wire::{
    encode, fixture, fixture_json, fixture_text, last_user_text, put, Answer, Content, Turn, Wire,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::LazyLock;
use std::time::Duration;

/// Served verbatim: a disabled key's account has no quota left to buy.
const INSUFFICIENT_QUOTA: &str = fixture_text!("openai_429_insufficient_quota.json");
/// Served verbatim for a burst of 429s (no limit to name).
const RATE_LIMIT: &str = fixture_text!("openai_429_rate_limit_tokens.json");

static INVALID_KEY: LazyLock<Value> = fixture_json!("openai_401_invalid_api_key.json");
static RATE_LIMITED: LazyLock<Value> = LazyLock::new(|| fixture(RATE_LIMIT));

/// OpenAI chat completions.
#[derive(Debug)]
pub(crate) struct OpenAi;

#[derive(Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<Message>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    response_format: Option<ResponseFormat>,
}

/// `response_format`; only `json_schema` shapes the answer.
#[derive(Deserialize)]
struct ResponseFormat {
    json_schema: Option<JsonSchema>,
}

#[derive(Deserialize)]
struct JsonSchema {
    schema: Option<Value>,
}

#[derive(Deserialize)]
struct Message {
    role: String,
    content: Option<Content>,
}

/// The answer to `GET /v1/models`: OpenAI's list shape, one entry per model
/// the simulator serves, sorted.
pub(crate) fn model_list<'a>(models: impl IntoIterator<Item = &'a String>) -> Response {
    let mut ids: Vec<&String> = models.into_iter().collect();
    ids.sort();
    let data: Vec<Value> = ids
        .into_iter()
        .map(|id| json!({"id": id, "object": "model", "created": 1_686_935_002, "owned_by": "system"}))
        .collect();
    OpenAi::json(
        StatusCode::OK,
        encode(&json!({"object": "list", "data": data})),
    )
}

/// Parses a chat completion body, or says why not in OpenAI's words
/// (rendered by [`Wire::bad_request`]).
pub(crate) fn parse_chat(body: &[u8]) -> Result<Prompt, String> {
    let request: ChatRequest = serde_json::from_slice(body)
        .map_err(|e| format!("We could not parse the JSON body of your request: {e}"))?;
    if request.messages.is_empty() {
        return Err("[] is too short - 'messages'".to_owned());
    }
    let input: u64 = request
        .messages
        .iter()
        .filter_map(|m| m.content.as_ref())
        .map(Content::tokens)
        .sum();
    let user_text = last_user_text(
        request
            .messages
            .iter()
            .map(|m| (m.role.as_str(), m.content.as_ref())),
    );
    Ok(Prompt {
        model: request.model,
        user_text,
        input_tokens: input.max(1),
        max_output_tokens: request.max_completion_tokens.or(request.max_tokens),
        schema: request
            .response_format
            .and_then(|f| f.json_schema)
            .and_then(|s| s.schema)
            .map(std::sync::Arc::new),
        media: Vec::new(),
    })
}

/// OpenAI's error envelope.
pub(super) fn error(status: StatusCode, message: &str, kind: &str, code: Option<&str>) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    OpenAi::json(status, encode(&body))
}

/// A key as OpenAI echoes it: first 5 and last 4 characters around
/// asterisks; a key shorter than 12 characters only as asterisks, so no
/// message ever shows a whole key.
fn mask(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() < 12 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..5].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 9))
}

/// A duration as Go prints it, as OpenAI's headers and messages do: `"1s"`,
/// `"6m0s"`, `"20ms"`, `"1m30.5s"`.
fn go_duration(d: Duration) -> String {
    /// `whole.fraction` with the fraction's trailing zeros trimmed.
    fn decimal(whole: u128, fraction: u128, digits: usize) -> String {
        if fraction == 0 {
            return whole.to_string();
        }
        let fraction = format!("{fraction:0digits$}");
        format!("{whole}.{}", fraction.trim_end_matches('0'))
    }
    let nanos = d.as_nanos();
    match nanos {
        0 => "0s".to_owned(),
        1..=999 => format!("{nanos}ns"),
        1_000..=999_999 => format!("{}µs", decimal(nanos / 1_000, nanos % 1_000, 3)),
        1_000_000..=999_999_999 => {
            format!("{}ms", decimal(nanos / 1_000_000, nanos % 1_000_000, 6))
        }
        _ => {
            let secs = nanos / 1_000_000_000;
            let (hours, minutes) = (secs / 3600, secs / 60 % 60);
            let seconds = decimal(secs % 60, nanos % 1_000_000_000, 9);
            match (hours, minutes) {
                (0, 0) => format!("{seconds}s"),
                (0, _) => format!("{minutes}m{seconds}s"),
                _ => format!("{hours}h{minutes}m{seconds}s"),
            }
        }
    }
}

/// `x-ratelimit-*` for the per-minute limits that are set.
fn ratelimit_headers(headroom: &Headroom) -> HeaderMap {
    const NAMES: [[&str; 3]; 2] = [
        [
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        ],
        [
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-tokens",
        ],
    ];
    let mut headers = HeaderMap::new();
    for (window, [limit, remaining, reset]) in
        [headroom.requests, headroom.tokens].iter().zip(NAMES)
    {
        let Some(window) = window else { continue };
        headers.insert(limit, HeaderValue::from(window.limit));
        headers.insert(
            remaining,
            HeaderValue::from(window.limit.saturating_sub(window.used)),
        );
        // from_bytes, not from_str: Go writes microseconds as "µs".
        if let Ok(value) = HeaderValue::from_bytes(go_duration(window.reset).as_bytes()) {
            headers.insert(reset, value);
        }
    }
    headers
}

#[derive(Serialize)]
struct Completion<'a> {
    id: String,
    object: &'static str,
    created: i64,
    model: &'a str,
    choices: [Choice<'a>; 1],
    usage: CompletionUsage,
    system_fingerprint: Option<&'a str>,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    message: AssistantMessage<'a>,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct AssistantMessage<'a> {
    role: &'static str,
    content: Option<&'a str>,
    refusal: Option<&'a str>,
}

#[derive(Serialize)]
struct CompletionUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

impl Wire for OpenAi {
    const CONTENT_TYPE: &'static str = "application/json";

    fn invalid_key(key: Option<&str>) -> Response {
        let mut body = INVALID_KEY.clone();
        match key {
            Some(key) => {
                let message = format!(
                    "Incorrect API key provided: {}. You can find your API key at \
                     https://platform.openai.com/account/api-keys.",
                    mask(key)
                );
                put(&mut body, "/error/message", message);
            }
            None => {
                let message = "You didn't provide an API key. You need to provide your API key \
                               in an Authorization header using Bearer auth (i.e. Authorization: \
                               Bearer YOUR_KEY).";
                put(&mut body, "/error/message", message);
                put(&mut body, "/error/code", Value::Null);
            }
        }
        Self::json(StatusCode::UNAUTHORIZED, encode(&body))
    }

    fn disabled_key() -> Response {
        Self::json(StatusCode::TOO_MANY_REQUESTS, INSUFFICIENT_QUOTA)
    }

    fn model_not_found(model: &str) -> Response {
        let message =
            format!("The model `{model}` does not exist or you do not have access to it.");
        error(
            StatusCode::NOT_FOUND,
            &message,
            "invalid_request_error",
            Some("model_not_found"),
        )
    }

    fn bad_request(message: &str) -> Response {
        error(
            StatusCode::BAD_REQUEST,
            message,
            "invalid_request_error",
            None,
        )
    }

    fn rate_limited(model: &str, rejection: &Rejection) -> Response {
        let (what, kind) = match rejection.scope {
            Scope::RequestsPerDay => ("requests per day (RPD)", "requests"),
            Scope::RequestsPerMinute => ("requests per min (RPM)", "requests"),
            Scope::TokensPerMinute => ("tokens per min (TPM)", "tokens"),
            Scope::OutputTokensPerMinute => ("output tokens per min (OTPM)", "tokens"),
        };
        let wait = rejection.retry_after;
        let message = format!(
            "Rate limit reached for {model} in organization org-simulated on {what}: \
             Limit {}, Used {}, Requested {}. Please try again in {}. \
             Visit https://platform.openai.com/account/rate-limits to learn more.",
            rejection.limit,
            rejection.used,
            rejection.requested,
            go_duration(wait)
        );
        let mut body = RATE_LIMITED.clone();
        put(&mut body, "/error/message", message);
        put(&mut body, "/error/type", kind);
        let mut response = Self::json(StatusCode::TOO_MANY_REQUESTS, encode(&body));
        let headers = response.headers_mut();
        headers.extend(ratelimit_headers(&rejection.headroom));
        // Whole seconds rounded up, so a client honouring only this header
        // never comes back early.
        let secs = wait.as_millis().div_ceil(1000).max(1);
        headers.insert("retry-after", HeaderValue::from(secs as u64));
        headers.insert(
            "retry-after-ms",
            HeaderValue::from(wait.as_millis().max(1) as u64),
        );
        response
    }

    fn fault(status: StatusCode, _request: u64) -> Response {
        match status.as_u16() {
            429 => Self::json(status, RATE_LIMIT),
            500 => error(
                status,
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                None,
            ),
            503 => error(
                status,
                "The server is overloaded or not ready yet.",
                "server_error",
                None,
            ),
            code => {
                let kind = if code >= 500 {
                    "server_error"
                } else {
                    "invalid_request_error"
                };
                error(
                    status,
                    status.canonical_reason().unwrap_or("Error"),
                    kind,
                    None,
                )
            }
        }
    }

    fn answer(turn: &Turn) -> Answer {
        let prompt = turn.prompt;
        let reply = reply::answer(prompt, turn.bad_json);
        // Gemini's directives, mapped to what OpenAI says for the same
        // outcome; `[[sim:other]]` has no OpenAI counterpart and answers
        // normally.
        let (content, finish_reason, completion_tokens) = match prompt.directive() {
            Some(Directive::Block | Directive::Safety) => (None, "content_filter", 0),
            Some(Directive::MaxTokens) => (
                Some(""),
                "length",
                prompt.output_cap().unwrap_or(reply.tokens),
            ),
            None | Some(Directive::Other) => (
                Some(reply.text.as_str()),
                if reply.cut { "length" } else { "stop" },
                reply.tokens,
            ),
        };
        let completion = Completion {
            id: format!("chatcmpl-{}", turn.id),
            object: "chat.completion",
            created: turn.created,
            model: &prompt.model,
            choices: [Choice {
                index: 0,
                message: AssistantMessage {
                    role: "assistant",
                    content,
                    refusal: None,
                },
                logprobs: None,
                finish_reason,
            }],
            usage: CompletionUsage {
                prompt_tokens: prompt.input_tokens,
                completion_tokens,
                total_tokens: prompt.input_tokens + completion_tokens,
            },
            system_fingerprint: None,
        };
        Answer {
            headers: ratelimit_headers(&turn.headroom),
            body: encode(&completion),
            output_tokens: completion_tokens,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::reply::MEDIA_PART_TOKENS;

    #[test]
    fn keys_are_masked_never_echoed() {
        assert_eq!(
            // A dot keeps this fake from looking like a real key to scanners.
            mask("sk-VKMIs.abcdefghijklmnopqrstuvwxyz0123456789wjh3"),
            format!("sk-VK{}wjh3", "*".repeat(40))
        );
        assert_eq!(mask("sim-key-1"), "*********");
        assert_eq!(mask("abcdefghijkl"), "abcde***ijkl");
    }

    #[test]
    fn durations_are_formatted_like_go() {
        assert_eq!(go_duration(Duration::from_secs(1)), "1s");
        assert_eq!(go_duration(Duration::from_secs(360)), "6m0s");
        assert_eq!(go_duration(Duration::from_millis(20)), "20ms");
        assert_eq!(go_duration(Duration::from_millis(90_500)), "1m30.5s");
        assert_eq!(
            go_duration(Duration::from_nanos(847_655_010)),
            "847.65501ms"
        );
        assert_eq!(go_duration(Duration::from_secs(7322)), "2h2m2s");
        assert_eq!(go_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn string_and_part_contents_parse() {
        let body = br#"{"model":"gpt-4o","max_tokens":5,"messages":[
            {"role":"system","content":"abcd"},
            {"role":"user","content":[{"type":"text","text":"hello"},{"type":"image_url","image_url":{"url":"x"}}]}]}"#;
        let prompt = parse_chat(body).expect("parses");
        assert_eq!(prompt.user_text, "hello");
        assert_eq!(prompt.input_tokens, 1 + 2 + MEDIA_PART_TOKENS);
        assert_eq!(prompt.max_output_tokens, Some(5));
        assert!(RATE_LIMITED.is_object() && INVALID_KEY.is_object());
        fixture(INSUFFICIENT_QUOTA);
    }
}
