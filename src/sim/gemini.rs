//! Gemini's wire format (`/v1beta/models/{model}:generateContent` and
//! `:countTokens`): request parsing (camelCase and snake_case), answers
//! shaped like the recorded ones, and every error body taken from the
//! fixtures in `tests/fixtures/`.

use super::quota::{Rejection, Scope};
use super::reply::{self, Directive, Prompt, MEDIA_PART_TOKENS};
use super::wire::{encode, fixture_json, fixture_text, put, Answer, Turn, Wire};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::LazyLock;
use std::time::Duration;

/// Bodies served verbatim.
const API_KEY_INVALID: &str = fixture_text!("gemini_400_api_key_invalid.json");
const SERVICE_DISABLED: &str = fixture_text!("gemini_403_service_disabled.json");
const INTERNAL: &str = fixture_text!("gemini_500_internal.json");
const OVERLOADED: &str = fixture_text!("gemini_503_overloaded.json");
const HIGH_DEMAND: &str = fixture_text!("gemini_503_high_demand.json");
const BARE_429: &str = fixture_text!("gemini_429_bare_resource_exhausted.json");
const FINISH_OTHER: &str = fixture_text!("gemini_candidate_finish_other_no_content.json");

/// Bodies served patched.
static NOT_FOUND: LazyLock<Value> = fixture_json!("gemini_404_model_not_found.json");
static REQUESTS_429: LazyLock<Value> = fixture_json!("gemini_429_free_tier_rpd.json");
static TOKENS_429: LazyLock<Value> = fixture_json!("gemini_429_free_tier_input_tpm.json");
static PROMPT_BLOCKED: LazyLock<Value> =
    fixture_json!("gemini_prompt_blocked_prohibited_content.json");
static FINISH_SAFETY: LazyLock<Value> = fixture_json!("gemini_candidate_finish_safety.json");
static THOUGHTS_SPENT: LazyLock<Value> =
    fixture_json!("gemini_generateContent_empty_candidate_max_tokens.json");
static COUNT_TOKENS: LazyLock<Value> = fixture_json!("gemini_countTokens.json");

/// Where the 429 fixtures keep what is patched.
const QUOTA_METRIC: &str = "/error/details/0/violations/0/quotaMetric";
const QUOTA_ID: &str = "/error/details/0/violations/0/quotaId";
const QUOTA_MODEL: &str = "/error/details/0/violations/0/quotaDimensions/model";
const QUOTA_VALUE: &str = "/error/details/0/violations/0/quotaValue";
const RETRY_DELAY: &str = "/error/details/2/retryDelay";

/// The Gemini Developer API.
#[derive(Debug)]
pub(crate) struct Gemini;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateRequest {
    #[serde(default)]
    contents: Vec<Content>,
    #[serde(alias = "system_instruction")]
    system_instruction: Option<Content>,
    #[serde(alias = "generation_config")]
    generation_config: Option<GenerationConfig>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig {
    #[serde(alias = "max_output_tokens")]
    max_output_tokens: Option<u32>,
    #[serde(alias = "response_json_schema")]
    response_json_schema: Option<Value>,
    #[serde(alias = "media_resolution")]
    media_resolution: Option<String>,
}

/// Tokens a media part counts at `MEDIA_RESOLUTION_LOW`: a frame at low
/// resolution on Gemini 2.x ("frames are tokenized at 66 tokens per frame",
/// <https://ai.google.dev/gemini-api/docs/video-understanding>), so a test
/// sees the resolution arrive in `promptTokenCount`.
const LOW_MEDIA_PART_TOKENS: u64 = 66;

#[derive(Deserialize)]
struct Content {
    role: Option<String>,
    #[serde(default)]
    parts: Vec<Part>,
}

/// Only what counts tokens; other part fields (thought, functionCall, …)
/// are accepted and ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Part {
    text: Option<String>,
    #[serde(alias = "inline_data")]
    inline_data: Option<IgnoredAny>,
    #[serde(alias = "file_data")]
    file_data: Option<IgnoredAny>,
}

impl Part {
    /// Its tokens, a media part counting `media` tokens.
    fn tokens(&self, media: u64) -> u64 {
        let is_media = self.inline_data.is_some() || self.file_data.is_some();
        self.text.as_deref().map_or(0, reply::text_tokens) + if is_media { media } else { 0 }
    }
}

impl Content {
    fn tokens(&self, media: u64) -> u64 {
        self.parts.iter().map(|p| p.tokens(media)).sum()
    }
}

/// Parses a `generateContent` body for `model`, or says why not in Google's
/// words (rendered by [`Wire::bad_request`]).
pub(crate) fn parse_generate(model: &str, body: &[u8]) -> Result<Prompt, String> {
    let mut request: GenerateRequest = serde_json::from_slice(body).map_err(malformed)?;
    let config = request.generation_config.take();
    if request.contents.is_empty() {
        return Err("* GenerateContentRequest.contents: contents is not specified\n".to_owned());
    }
    let media = match config.as_ref().and_then(|c| c.media_resolution.as_deref()) {
        Some("MEDIA_RESOLUTION_LOW") => LOW_MEDIA_PART_TOKENS,
        _ => MEDIA_PART_TOKENS,
    };
    let system = request
        .system_instruction
        .as_ref()
        .map_or(0, |c| c.tokens(media));
    let input = request
        .contents
        .iter()
        .map(|c| c.tokens(media))
        .sum::<u64>()
        + system;
    // The digest covers the last user turn (role "user" or unset).
    let user_text = request
        .contents
        .iter()
        .rev()
        .find(|c| matches!(c.role.as_deref(), None | Some("user")))
        .map(|c| c.parts.iter().filter_map(|p| p.text.as_deref()).collect())
        .unwrap_or_default();
    Ok(Prompt {
        model: model.to_owned(),
        user_text,
        input_tokens: input.max(1),
        max_output_tokens: config.as_ref().and_then(|c| c.max_output_tokens),
        schema: config
            .and_then(|c| c.response_json_schema)
            .map(std::sync::Arc::new),
        media: Vec::new(),
    })
}

/// Answers a `countTokens` body (free: no quota), shaped like the recording,
/// with the same count `generateContent` would report as `promptTokenCount`.
pub(crate) fn count_tokens(body: &[u8]) -> Response {
    #[derive(Deserialize)]
    struct CountRequest {
        #[serde(default)]
        contents: Vec<Content>,
    }
    let request: CountRequest = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(e) => return Gemini::bad_request(&malformed(e)),
    };
    let per_content: Vec<Value> = request
        .contents
        .iter()
        .map(|c| json!({"partTokens": c.parts.iter().map(|p| p.tokens(MEDIA_PART_TOKENS)).collect::<Vec<_>>(), "roleTokens": 0}))
        .collect();
    let total = request
        .contents
        .iter()
        .map(|c| c.tokens(MEDIA_PART_TOKENS))
        .sum::<u64>()
        .max(1);
    let mut body = COUNT_TOKENS.clone();
    put(&mut body, "/totalTokens", total);
    put(&mut body, "/promptTokensDetails/0/tokenCount", total);
    put(&mut body, "/contentTokens", per_content);
    Gemini::json(StatusCode::OK, encode(&body))
}

/// Gemini's page size when `pageSize` is absent, and its largest
/// (https://ai.google.dev/api/models#method:-models.list).
const LIST_PAGE: (usize, usize) = (50, 1000);

/// A page of `GET /v1beta/models` over `models` (sorted here): the API's
/// shape, `{"models": [Model...], "nextPageToken": "..."}`, the token absent
/// on the last page. This simulator's token is the offset of the next page;
/// one it did not hand out is a 400, as the API answers.
pub(crate) fn model_page<'a>(
    models: impl IntoIterator<Item = &'a String>,
    page_size: Option<usize>,
    page_token: Option<&str>,
) -> Response {
    let mut ids: Vec<&String> = models.into_iter().collect();
    ids.sort();
    let size = match page_size {
        None | Some(0) => LIST_PAGE.0,
        Some(n) => n.min(LIST_PAGE.1),
    };
    let start = match page_token.filter(|t| !t.is_empty()) {
        None => 0,
        Some(token) => match token.parse::<usize>() {
            Ok(offset) if offset < ids.len() => offset,
            _ => return envelope(StatusCode::BAD_REQUEST, "Invalid page token."),
        },
    };
    let end = (start + size).min(ids.len());
    let page: Vec<Value> = ids[start..end]
        .iter()
        .map(|id| {
            json!({
                "name": format!("models/{id}"),
                "version": "001",
                "displayName": id,
                "description": format!("{id}, as served by the keyfan simulator"),
                "inputTokenLimit": 1_048_576,
                "outputTokenLimit": 65_536,
                "supportedGenerationMethods": ["generateContent", "countTokens"],
                "temperature": 1,
                "topP": 0.95,
                "topK": 64,
                "maxTemperature": 2
            })
        })
        .collect();
    let mut body = json!({ "models": page });
    if end < ids.len() {
        body["nextPageToken"] = json!(end.to_string());
    }
    Gemini::json(StatusCode::OK, encode(&body))
}

/// 404 for `model` on `method`: the fixture with the model, `v1beta` and the
/// method patched into its message and details.
pub(crate) fn model_not_found_for(model: &str, method: &str) -> Response {
    let patch = |text: &str| {
        text.replace("generateContent", method)
            .replace("models/gemini-5.0-flash", &format!("models/{model}"))
            .replace("API version v1,", "API version v1beta,")
    };
    let mut body = NOT_FOUND.clone();
    map_strings(&mut body, &patch);
    Gemini::json(StatusCode::NOT_FOUND, encode(&body))
}

/// Applies `f` to every string in `value`.
fn map_strings(value: &mut Value, f: &impl Fn(&str) -> String) {
    match value {
        Value::String(text) => *text = f(text),
        Value::Array(items) => items.iter_mut().for_each(|v| map_strings(v, f)),
        Value::Object(fields) => fields.values_mut().for_each(|v| map_strings(v, f)),
        _ => {}
    }
}

fn malformed(error: serde_json::Error) -> String {
    format!("Invalid JSON payload received. {error}")
}

/// Google's error envelope without details.
fn envelope(status: StatusCode, message: &str) -> Response {
    let body = json!({"error": {"code": status.as_u16(), "message": message, "status": rpc_status(status)}});
    Gemini::json(status, encode(&body))
}

/// The google.rpc code name Google pairs with an HTTP status.
fn rpc_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        500 => "INTERNAL",
        501 => "UNIMPLEMENTED",
        502 | 503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "UNKNOWN",
    }
}

/// A protobuf Duration as JSON: `"17s"`, or with 3, 6 or 9 fractional
/// digits (`"0.847655010s"`).
pub(crate) fn google_duration(d: Duration) -> String {
    let (secs, nanos) = (d.as_secs(), d.subsec_nanos());
    if nanos == 0 {
        format!("{secs}s")
    } else if nanos % 1_000_000 == 0 {
        format!("{secs}.{:03}s", nanos / 1_000_000)
    } else if nanos % 1_000 == 0 {
        format!("{secs}.{:06}s", nanos / 1_000)
    } else {
        format!("{secs}.{nanos:09}s")
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerateResponse<'a> {
    candidates: [Candidate<'a>; 1],
    usage_metadata: UsageMetadata,
    model_version: &'a str,
    response_id: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Candidate<'a> {
    content: CandidateContent<'a>,
    finish_reason: &'static str,
    index: u32,
}

#[derive(Serialize)]
struct CandidateContent<'a> {
    parts: [TextPart<'a>; 1],
    role: &'static str,
}

#[derive(Serialize)]
struct TextPart<'a> {
    text: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    prompt_token_count: u64,
    candidates_token_count: u64,
    total_token_count: u64,
    prompt_tokens_details: [ModalityCount; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ModalityCount {
    modality: &'static str,
    token_count: u64,
}

/// A directive's fixture with this turn's prompt tokens, model and id.
fn directive_body(fixture: &Value, turn: &Turn, output: u64) -> Value {
    let input = turn.prompt.input_tokens;
    let mut body = fixture.clone();
    put(&mut body, "/usageMetadata/promptTokenCount", input);
    put(
        &mut body,
        "/usageMetadata/promptTokensDetails/0/tokenCount",
        input,
    );
    put(&mut body, "/usageMetadata/totalTokenCount", input + output);
    put(&mut body, "/modelVersion", turn.prompt.model.as_str());
    put(&mut body, "/responseId", turn.id.as_str());
    body
}

impl Wire for Gemini {
    const CONTENT_TYPE: &'static str = "application/json; charset=UTF-8";

    fn invalid_key(_key: Option<&str>) -> Response {
        Self::json(StatusCode::BAD_REQUEST, API_KEY_INVALID)
    }

    fn disabled_key() -> Response {
        Self::json(StatusCode::FORBIDDEN, SERVICE_DISABLED)
    }

    fn model_not_found(model: &str) -> Response {
        model_not_found_for(model, "generateContent")
    }

    fn bad_request(message: &str) -> Response {
        envelope(StatusCode::BAD_REQUEST, message)
    }

    /// The fixture's shape with the paid-tier quota names (the fixtures were
    /// recorded on the free tier, whose ids end in `-FreeTier`). Per-day
    /// refusals keep the fixture's short `retryDelay`, as real ones do.
    fn rate_limited(model: &str, rejection: &Rejection) -> Response {
        let (fixture, metric, quota_id) = match rejection.scope {
            Scope::RequestsPerDay => (
                &REQUESTS_429,
                "generativelanguage.googleapis.com/generate_content_requests",
                "GenerateRequestsPerDayPerProjectPerModel",
            ),
            Scope::RequestsPerMinute => (
                &REQUESTS_429,
                "generativelanguage.googleapis.com/generate_content_requests",
                "GenerateRequestsPerMinutePerProjectPerModel",
            ),
            Scope::TokensPerMinute => (
                &TOKENS_429,
                "generativelanguage.googleapis.com/generate_content_input_token_count",
                "GenerateContentInputTokensPerModelPerMinute",
            ),
            // Gemini has no output limit; a sim.yaml that sets one gets the
            // input-token body's shape.
            Scope::OutputTokensPerMinute => (
                &TOKENS_429,
                "generativelanguage.googleapis.com/generate_content_output_token_count",
                "GenerateContentOutputTokensPerModelPerMinute",
            ),
        };
        let mut body = Value::clone(fixture);
        put(&mut body, QUOTA_METRIC, metric);
        put(&mut body, QUOTA_ID, quota_id);
        put(&mut body, QUOTA_MODEL, model);
        put(&mut body, QUOTA_VALUE, rejection.limit.to_string());
        if rejection.scope != Scope::RequestsPerDay {
            put(
                &mut body,
                RETRY_DELAY,
                google_duration(rejection.retry_after),
            );
        }
        // No Retry-After header: Gemini puts the delay only in the body.
        Self::json(StatusCode::TOO_MANY_REQUESTS, encode(&body))
    }

    fn fault(status: StatusCode, request: u64) -> Response {
        match status.as_u16() {
            500 => Self::json(status, INTERNAL),
            // Both wordings are live (2025 and 2026); alternate for coverage.
            503 if request.is_multiple_of(2) => Self::json(status, HIGH_DEMAND),
            503 => Self::json(status, OVERLOADED),
            429 => Self::json(status, BARE_429),
            _ => envelope(status, status.canonical_reason().unwrap_or("Error")),
        }
    }

    fn answer(turn: &Turn) -> Answer {
        let prompt = turn.prompt;
        let (body, output_tokens) = match prompt.directive() {
            None => {
                let reply = reply::answer(prompt, turn.bad_json);
                let response = GenerateResponse {
                    candidates: [Candidate {
                        content: CandidateContent {
                            parts: [TextPart { text: &reply.text }],
                            role: "model",
                        },
                        finish_reason: if reply.cut { "MAX_TOKENS" } else { "STOP" },
                        index: 0,
                    }],
                    usage_metadata: UsageMetadata {
                        prompt_token_count: prompt.input_tokens,
                        candidates_token_count: reply.tokens,
                        total_token_count: prompt.input_tokens + reply.tokens,
                        prompt_tokens_details: [ModalityCount {
                            modality: "TEXT",
                            token_count: prompt.input_tokens,
                        }],
                    },
                    model_version: &prompt.model,
                    response_id: &turn.id,
                };
                (encode(&response), reply.tokens)
            }
            Some(Directive::Block) => (encode(&directive_body(&PROMPT_BLOCKED, turn, 0)), 0),
            Some(Directive::Safety) => {
                let output = FINISH_SAFETY
                    .pointer("/usageMetadata/candidatesTokenCount")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                (
                    encode(&directive_body(&FINISH_SAFETY, turn, output)),
                    output,
                )
            }
            Some(Directive::Other) => (FINISH_OTHER.into(), 0),
            Some(Directive::MaxTokens) => {
                // Thinking spent the whole cap (the fixture's own 19 if none).
                let thoughts = prompt.output_cap().unwrap_or_else(|| {
                    THOUGHTS_SPENT
                        .pointer("/usageMetadata/thoughtsTokenCount")
                        .and_then(Value::as_u64)
                        .unwrap_or(0)
                });
                let mut body = directive_body(&THOUGHTS_SPENT, turn, thoughts);
                put(&mut body, "/usageMetadata/thoughtsTokenCount", thoughts);
                (encode(&body), thoughts)
            }
        };
        Answer {
            headers: HeaderMap::new(),
            body,
            output_tokens,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::wire::fixture;

    #[test]
    fn every_fixture_parses() {
        for text in [
            API_KEY_INVALID,
            SERVICE_DISABLED,
            INTERNAL,
            OVERLOADED,
            HIGH_DEMAND,
            BARE_429,
            FINISH_OTHER,
        ] {
            fixture(text);
        }
        for value in [
            &NOT_FOUND,
            &REQUESTS_429,
            &TOKENS_429,
            &PROMPT_BLOCKED,
            &FINISH_SAFETY,
            &THOUGHTS_SPENT,
            &COUNT_TOKENS,
        ] {
            assert!(value.is_object());
        }
        for pointer in [
            QUOTA_METRIC,
            QUOTA_ID,
            QUOTA_MODEL,
            QUOTA_VALUE,
            RETRY_DELAY,
        ] {
            assert!(REQUESTS_429.pointer(pointer).is_some(), "{pointer}");
            assert!(TOKENS_429.pointer(pointer).is_some(), "{pointer}");
        }
    }

    #[test]
    fn durations_are_formatted_like_google() {
        assert_eq!(google_duration(Duration::from_secs(17)), "17s");
        assert_eq!(google_duration(Duration::from_millis(1500)), "1.500s");
        assert_eq!(
            google_duration(Duration::from_micros(2_000_001)),
            "2.000001s"
        );
        assert_eq!(
            google_duration(Duration::from_nanos(847_655_010)),
            "0.847655010s"
        );
    }

    #[test]
    fn snake_case_bodies_parse_like_camel_case() {
        let camel = br#"{"contents":[{"role":"user","parts":[{"text":"abcdefgh"}]}],
            "systemInstruction":{"parts":[{"text":"abcd"}]},"generationConfig":{"maxOutputTokens":9,"temperature":0.2}}"#;
        let snake = br#"{"contents":[{"role":"user","parts":[{"text":"abcdefgh"}]}],
            "system_instruction":{"parts":[{"text":"abcd"}]},"generation_config":{"max_output_tokens":9}}"#;
        let a = parse_generate("m", camel).expect("camelCase");
        assert_eq!(a, parse_generate("m", snake).expect("snake_case"));
        assert_eq!((a.input_tokens, a.max_output_tokens), (3, Some(9)));
        assert_eq!(a.user_text, "abcdefgh");
    }

    #[test]
    fn the_last_user_turn_is_the_user_text() {
        let body = br#"{"contents":[{"role":"user","parts":[{"text":"first"}]},
            {"role":"model","parts":[{"text":"reply"}]},
            {"role":"user","parts":[{"text":"sec"},{"inline_data":{"mime_type":"image/png","data":""}},{"text":"ond"}]}]}"#;
        let prompt = parse_generate("m", body).expect("parses");
        assert_eq!(prompt.user_text, "second");
        assert_eq!(prompt.input_tokens, 2 + 2 + 1 + MEDIA_PART_TOKENS + 1);
    }
}
