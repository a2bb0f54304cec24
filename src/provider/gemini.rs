//! Gemini Developer API adapter (<https://ai.google.dev/api>).
//!
//! - `generate`: `POST {base_url}/v1beta/models/{model}:generateContent`
//! - `count_tokens`: `POST {base_url}/v1beta/models/{model}:countTokens`
//!
//! The key travels in the `x-goog-api-key` header, never as `?key=`: URLs end
//! up in `reqwest` error messages, proxy logs and traces.
//!
//! Gemini sends no rate-limit headers and no `Retry-After` (the recorded
//! exchanges in googleapis/js-genai `test/system/recordings/`;
//! <https://github.com/dcdpr/jp/pull/1061>): all it
//! says about a 429 is in the body, so [`classify`] reads only status and body.

use super::common::{self, api_error, blocked, class_by_status, no_output, ErrorBody};
use super::transport::post_json;
use super::{
    ApiError, Client, ErrorClass, MediaPart, QuotaScope, RawRequest, Reply, Request, Role, Usage,
    VideoClip,
};
use crate::types::ApiKey;
use reqwest::header::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Sends one prompt to `generateContent`.
pub(super) async fn generate(
    client: &Client,
    key: &ApiKey,
    req: &Request<'_>,
) -> Result<Reply, ApiError> {
    let body = call(
        client,
        key,
        req.model,
        "generateContent",
        &GenerateBody::new(req),
    )
    .await?;
    parse_generate(&body)
}

/// Sends a `GenerateContentRequest` written elsewhere (a batch file's line)
/// to the request's model, as [`raw_body`] makes it.
pub(super) async fn generate_raw(
    client: &Client,
    key: &ApiKey,
    req: &RawRequest<'_>,
) -> Result<Reply, ApiError> {
    let body = call(client, key, req.model, "generateContent", &raw_body(req)).await?;
    parse_generate(&body)
}

/// The request body of a `GenerateContentRequest` written elsewhere: as it
/// is, without a `model` of its own (the URL, or the batch, names it) and,
/// when it sets no output cap, with the request's as `maxOutputTokens` (in
/// the casing of its `generationConfig`).
pub(super) fn raw_body(req: &RawRequest<'_>) -> Map<String, Value> {
    let mut body = (*req.body.body).clone();
    body.remove("model");
    if let Some(cap) = req.max_output_tokens {
        let (config, field) = if body.contains_key("generation_config") {
            ("generation_config", "max_output_tokens")
        } else {
            ("generationConfig", "maxOutputTokens")
        };
        let config = body
            .entry(config)
            .or_insert_with(|| Value::Object(Default::default()));
        if let Value::Object(config) = config {
            if !config.contains_key("maxOutputTokens") && !config.contains_key("max_output_tokens")
            {
                config.insert(field.to_owned(), cap.into());
            }
        }
    }
    body
}

/// Counts the prompt's tokens with the free `countTokens`.
pub(super) async fn count_tokens(
    client: &Client,
    key: &ApiKey,
    req: &Request<'_>,
) -> Result<u64, ApiError> {
    let body = call(client, key, req.model, "countTokens", &CountBody::new(req)).await?;
    parse_count(&body)
}

/// Posts `body` to the model's `method` with the key in `x-goog-api-key`.
async fn call(
    client: &Client,
    key: &ApiKey,
    model: &str,
    method: &'static str,
    body: &impl Serialize,
) -> Result<Vec<u8>, ApiError> {
    let url = client.endpoint_url(method, model, |base| method_url(base, model, method));
    post_json(
        client,
        &url,
        "x-goog-api-key",
        key.expose(),
        body,
        classify_answer,
    )
    .await
}

/// `{base_url}/v1beta/models/{model}:{method}`, with the model's id (a
/// `models/` prefix removed) percent-encoded as one path segment: whatever
/// the name holds, it cannot reach another path, a query or a fragment.
pub(super) fn method_url(base_url: &str, model: &str, method: &str) -> String {
    let id = model.strip_prefix("models/").unwrap_or(model);
    let segment = percent_encode(id);
    format!("{base_url}/v1beta/models/{segment}:{method}")
}

/// `text` percent-encoded with only RFC 3986 unreserved characters kept as
/// they are, so it is safe as one path segment or one query value.
pub(super) fn percent_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

// ---------------------------------------------------------------------------
// Request bodies

/// A `generateContent` body. Field names and nesting follow the recorded SDK
/// requests (fixture `gemini_generateContent_system_instruction_2.5-flash.request.json`):
/// `systemInstruction` is a sibling of `contents` with role `user`, and
/// `generationConfig` is always sent, empty when nothing is set, as the SDK does.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct GenerateBody<'a> {
    /// A conversation's earlier turns, then the prompt.
    contents: Vec<Content<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_instruction: Option<Content<'a>>,
    generation_config: GenerationConfig<'a>,
}

/// The [`super::Generation`] settings Gemini has, as [`super::supports`]
/// asks; `generationConfig` carries each under its own name, but the clip
/// (`start_offset`, `end_offset`, `fps`), which each video part carries as
/// its `videoMetadata`.
pub(super) const SETTINGS: &[&str] = &[
    "top_p",
    "top_k",
    "stop",
    "seed",
    "thinking_budget",
    "thinking_level",
    "response_mime_type",
    "response_schema",
    "media_resolution",
    "start_offset",
    "end_offset",
    "fps",
];

/// A `countTokens` body: only `contents`, because the Developer API rejects
/// a system instruction or a generation config there (googleapis/python-genai
/// `models.py`, `_CountTokensConfig_to_mldev`).
#[derive(Debug, Serialize)]
pub(super) struct CountBody<'a> {
    contents: [Content<'a>; 1],
}

/// One turn: its media parts (the user's last turn may have some), then its
/// text; `user` or `model`.
#[derive(Debug, Serialize)]
struct Content<'a> {
    parts: Vec<PartOut<'a>>,
    role: &'static str,
}

/// A part of a turn, in the API's camelCase (`_Part_to_mldev` in
/// googleapis/python-genai `models.py`).
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum PartOut<'a> {
    Text {
        text: &'a str,
    },
    Inline {
        #[serde(rename = "inlineData")]
        inline_data: Blob<'a>,
        #[serde(rename = "videoMetadata", skip_serializing_if = "Option::is_none")]
        video_metadata: Option<VideoMetadata>,
    },
    File {
        #[serde(rename = "fileData")]
        file_data: FileData<'a>,
        #[serde(rename = "videoMetadata", skip_serializing_if = "Option::is_none")]
        video_metadata: Option<VideoMetadata>,
    },
}

/// A video part's `videoMetadata`: offsets as protobuf Duration strings
/// (`"10s"`, `"1.5s"`) and the frames per second sampled (the request in
/// `_Part_to_mldev`, googleapis/python-genai `models.py`; the docs' REST
/// sample at <https://ai.google.dev/gemini-api/docs/video-understanding>).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct VideoMetadata {
    #[serde(skip_serializing_if = "Option::is_none")]
    start_offset: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    end_offset: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fps: Option<f64>,
}

impl VideoMetadata {
    /// The metadata of `clip` for a part of type `mime` (`None`: a YouTube
    /// URL, a video): none for a part that is no video, or an unset clip.
    fn of(clip: &VideoClip, mime: Option<&str>) -> Option<VideoMetadata> {
        let video = mime.is_none_or(|m| m.starts_with("video/"));
        let seconds = |d: std::time::Duration| format!("{}s", d.as_secs_f64());
        (video && clip.is_set()).then(|| VideoMetadata {
            start_offset: clip.start.map(seconds),
            end_offset: clip.end.map(seconds),
            fps: clip.fps,
        })
    }
}

/// `inlineData`: the bytes, base64-encoded as they are written.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Blob<'a> {
    mime_type: &'a str,
    #[serde(serialize_with = "base64_bytes")]
    data: &'a [u8],
}

/// `fileData`: an uploaded file's URI (or a YouTube URL, without a type).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct FileData<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    mime_type: Option<&'a str>,
    file_uri: &'a str,
}

fn base64_bytes<S: serde::Serializer>(data: &&[u8], serializer: S) -> Result<S::Ok, S::Error> {
    use base64::display::Base64Display;
    use base64::engine::general_purpose::STANDARD;
    serializer.collect_str(&Base64Display::new(data, &STANDARD))
}

/// `generationConfig`, with the names of googleapis/python-genai's
/// `_GenerateContentConfig_to_mldev`: `stopSequences`, `thinkingConfig`
/// (`thinkingBudget` for 2.5, `thinkingLevel` in capitals for 3), and a
/// JSON Schema as `responseJsonSchema`, which wants `responseMimeType`
/// `application/json` (sent with it unless set).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_output_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<u32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop_sequences: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking_config: Option<ThinkingConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_mime_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_json_schema: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    media_resolution: Option<&'static str>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ThinkingConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking_budget: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking_level: Option<String>,
}

impl<'a> Content<'a> {
    fn user(text: &'a str) -> Self {
        Content::said(Role::User, &[], &VideoClip::default(), text)
    }

    /// A turn of `role`: its `media` (in order, each video with `clip`),
    /// then its `text`.
    fn said(role: Role, media: &'a [MediaPart], clip: &VideoClip, text: &'a str) -> Self {
        let mut parts: Vec<PartOut<'a>> = media
            .iter()
            .map(|part| match part {
                MediaPart::Inline { mime, data } => PartOut::Inline {
                    inline_data: Blob {
                        mime_type: mime,
                        data,
                    },
                    video_metadata: VideoMetadata::of(clip, Some(mime)),
                },
                MediaPart::File { mime, uri } => PartOut::File {
                    file_data: FileData {
                        mime_type: mime.as_deref(),
                        file_uri: uri,
                    },
                    video_metadata: VideoMetadata::of(clip, mime.as_deref()),
                },
            })
            .collect();
        parts.push(PartOut::Text { text });
        Content {
            parts,
            role: match role {
                Role::User => "user",
                Role::Model => "model",
            },
        }
    }
}

impl<'a> GenerateBody<'a> {
    /// The body for `req`, absent settings omitted.
    pub(super) fn new(req: &Request<'a>) -> Self {
        let g = req.generation;
        let thinking =
            (g.thinking_budget.is_some() || g.thinking_level.is_some()).then(|| ThinkingConfig {
                thinking_budget: g.thinking_budget,
                thinking_level: g.thinking_level.as_deref().map(str::to_ascii_uppercase),
            });
        let schema = g.response_schema.as_deref();
        let mime = g
            .response_mime_type
            .as_deref()
            .or(schema.map(|_| "application/json"));
        let turns = req
            .turns
            .iter()
            .map(|t| Content::said(t.role, &[], &g.clip, &t.text));
        GenerateBody {
            contents: turns
                .chain([Content::said(Role::User, req.media, &g.clip, req.prompt)])
                .collect(),
            system_instruction: req.system.map(Content::user),
            generation_config: GenerationConfig {
                max_output_tokens: req.max_output_tokens,
                temperature: req.temperature,
                top_p: g.top_p,
                top_k: g.top_k,
                stop_sequences: &g.stop,
                seed: g.seed,
                thinking_config: thinking,
                response_mime_type: mime,
                response_json_schema: schema,
                media_resolution: g.media_resolution.map(|r| r.wire()),
            },
        }
    }
}

impl<'a> CountBody<'a> {
    /// The body for `req`: its prompt and media (videos with their clip)
    /// only; a media resolution cannot be sent with a count.
    pub(super) fn new(req: &Request<'a>) -> Self {
        CountBody {
            contents: [Content::said(
                Role::User,
                req.media,
                &req.generation.clip,
                req.prompt,
            )],
        }
    }
}

// ---------------------------------------------------------------------------
// Responses

/// A `GenerateContentResponse`, only the fields keyfan reads; unknown fields
/// (`turnToken`, `responseId`, `safetyRatings`, ...) are ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateResponse {
    #[serde(default)]
    candidates: Vec<Candidate>,
    #[serde(default)]
    prompt_feedback: Option<PromptFeedback>,
    #[serde(default)]
    usage_metadata: UsageMetadata,
    #[serde(default)]
    model_version: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    #[serde(default)]
    content: Option<CandidateContent>,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    finish_message: Option<String>,
}

#[derive(Debug, Deserialize)]
struct CandidateContent {
    /// Absent when nothing was produced (`{"role":"model"}` or `{}`).
    #[serde(default)]
    parts: Vec<Part>,
}

#[derive(Debug, Deserialize)]
struct Part {
    #[serde(default)]
    text: Option<String>,
    /// Thought summaries (`includeThoughts`) are parts with `thought: true`.
    #[serde(default)]
    thought: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    #[serde(default)]
    block_reason: Option<String>,
    #[serde(default)]
    block_reason_message: Option<String>,
}

/// `usageMetadata`; any count may be absent (`candidatesTokenCount` is when
/// nothing visible was produced), which means 0.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    #[serde(default)]
    prompt_token_count: u64,
    #[serde(default)]
    cached_content_token_count: u64,
    #[serde(default)]
    candidates_token_count: u64,
    #[serde(default)]
    thoughts_token_count: u64,
}

impl UsageMetadata {
    /// Normalised usage: thinking is billed as output but not counted in
    /// `candidatesTokenCount` (googleapis/python-genai `types.py`,
    /// `GenerateContentResponseUsageMetadata`; the pricing page's "Output
    /// price (including thinking tokens)"), so output is their sum. Absurd
    /// counts make the reply malformed.
    fn usage(&self) -> Result<Usage, ApiError> {
        common::believable_counts(&[
            ("promptTokenCount", self.prompt_token_count),
            ("cachedContentTokenCount", self.cached_content_token_count),
            ("candidatesTokenCount", self.candidates_token_count),
            ("thoughtsTokenCount", self.thoughts_token_count),
        ])?;
        Ok(Usage {
            input_tokens: self.prompt_token_count,
            cached_tokens: self.cached_content_token_count,
            output_tokens: self.candidates_token_count + self.thoughts_token_count,
            thinking_tokens: self.thoughts_token_count,
            cache_write_tokens: 0,
        })
    }
}

/// Finish reasons that mean the output was withheld on policy grounds
/// (the `FinishReason` enum of googleapis/python-genai `types.py`). The
/// image variants are included for completeness: they mean the same for
/// image output.
const BLOCKING_FINISH_REASONS: &[&str] = &[
    "SAFETY",
    "RECITATION",
    "PROHIBITED_CONTENT",
    "BLOCKLIST",
    "SPII",
    "IMAGE_SAFETY",
    "IMAGE_PROHIBITED_CONTENT",
    "IMAGE_RECITATION",
];

/// Turns a 2xx `generateContent` body into a reply, or into the error a 200
/// can still be: a blocked prompt or output, no output at all, or an output
/// cap used up before any visible text (each recorded in `tests/fixtures/`:
/// `gemini_prompt_blocked_*`, `gemini_candidate_finish_*`,
/// `gemini_generateContent_empty_candidate_max_tokens.json`). Such an error
/// carries the usage and finish reason the 200 reported: the API bills them
/// (a reply cut by thinking at `maxOutputTokens`, recorded in
/// `tests/fixtures/replay/pa-2.5-pro-maxtok-no-output.json`, still reports
/// its 15 prompt and 2 thinking tokens).
pub(super) fn parse_generate(body: &[u8]) -> Result<Reply, ApiError> {
    let response: GenerateResponse =
        serde_json::from_slice(body).map_err(|e| common::undecodable(&e))?;
    let usage = response.usage_metadata.usage()?;
    let finish = response
        .candidates
        .first()
        .and_then(|c| c.finish_reason.as_deref());
    answer_of(&response, usage).map_err(|e| e.billed(usage, finish))
}

/// The reply in a parsed 200, or why it holds none.
fn answer_of(response: &GenerateResponse, usage: Usage) -> Result<Reply, ApiError> {
    let Some(candidate) = response.candidates.first() else {
        // No candidate: either the prompt was blocked, or the API failed
        // without saying why.
        let feedback = response.prompt_feedback.as_ref();
        return Err(match feedback.and_then(|f| f.block_reason.as_deref()) {
            Some(reason) => blocked(
                "the prompt",
                reason,
                feedback.and_then(|f| f.block_reason_message.as_deref()),
            ),
            None => no_output("no candidates and no block reason"),
        });
    };
    let finish = candidate.finish_reason.as_deref().unwrap_or("");
    if BLOCKING_FINISH_REASONS.contains(&finish) {
        // Even with partial text: what was produced before the block is not
        // an answer to hand on.
        return Err(blocked(
            "the output",
            finish,
            candidate.finish_message.as_deref(),
        ));
    }
    let text: String = candidate
        .content
        .iter()
        .flat_map(|c| &c.parts)
        .filter(|p| !p.thought)
        .filter_map(|p| p.text.as_deref())
        .collect();
    // MAX_TOKENS with text is a success: truncated output is still output.
    // STOP without text is the model's whole answer, empty as it is.
    if !text.is_empty() || finish == "STOP" {
        return Ok(Reply {
            text,
            quota: common::counted(&usage),
            usage,
            // `modelVersion` sometimes carries the resource prefix
            // (`models/gemini-2.5-pro`); `Request::model` never does.
            model_version: response
                .model_version
                .as_deref()
                .map(|v| v.strip_prefix("models/").unwrap_or(v).to_owned()),
            finish_reason: candidate.finish_reason.clone(),
        });
    }
    if finish == "MAX_TOKENS" {
        // Thinking counts against maxOutputTokens (observed in
        // `tests/fixtures/gemini_generateContent_empty_candidate_max_tokens.json`:
        // 19 thought tokens under a cap of 20, and no text).
        return Err(common::cap_used_up("maxOutputTokens", &usage));
    }
    let why = match (finish, candidate.finish_message.as_deref()) {
        ("", _) => "a candidate without text or finish reason".to_owned(),
        (finish, None) => format!("finishReason {finish}"),
        (finish, Some(message)) => format!("finishReason {finish}: {message}"),
    };
    Err(no_output(&why))
}

/// Parses a 2xx `countTokens` body: `totalTokens`.
pub(super) fn parse_count(body: &[u8]) -> Result<u64, ApiError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct CountResponse {
        total_tokens: u64,
    }
    serde_json::from_slice::<CountResponse>(body)
        .map(|r| r.total_tokens)
        .map_err(|e| common::undecodable(&e))
}

// ---------------------------------------------------------------------------
// Errors

/// Classifies a non-2xx Gemini response from its status and body.
pub(super) fn classify(status: u16, body: &[u8]) -> ApiError {
    classify_parsed(status, body, common::parse_error(body).as_ref())
}

/// [`classify`] in the shape the transport calls it with: Gemini's headers
/// say nothing about an error, so they are not read.
pub(super) fn classify_answer(status: u16, _headers: &HeaderMap, body: &[u8]) -> ApiError {
    classify(status, body)
}

/// [`classify`] for a body already parsed (Gemini's OpenAI-compatible
/// endpoint answers OpenAI clients with these Google-style errors).
pub(super) fn classify_parsed(status: u16, body: &[u8], parsed: Option<&ErrorBody>) -> ApiError {
    let message = common::error_message(status, body, parsed);
    let empty = ErrorBody::default();
    let error = parsed.unwrap_or(&empty);
    let key_invalid = |reason: &str| ErrorClass::KeyInvalid {
        reason: reason.to_owned(),
    };
    let class = match status {
        429 => rate_limited(error),
        400 => match error.error_info_reason() {
            Some(reason @ "API_KEY_INVALID") => key_invalid(reason),
            // "User location is not supported for the API use." and "free
            // tier is not available in your country": the key's project or
            // egress, not the item (e.g. poenl/gemini-api#4).
            _ if error.status.as_deref() == Some("FAILED_PRECONDITION") => {
                key_invalid("FAILED_PRECONDITION")
            }
            _ => ErrorClass::ItemInvalid,
        },
        401 => key_invalid(
            error
                .error_info_reason()
                .or(error.status.as_deref())
                .unwrap_or("UNAUTHENTICATED"),
        ),
        // A file uploaded under another project's key: the item could succeed
        // after a re-upload with this key, which keyfan does not do yet, so
        // for now the item fails. (Files belong to the project of the key
        // that uploaded them: https://github.com/snailyp/gemini-balance/issues/401.)
        403 if message.contains("permission to access the File") => ErrorClass::ItemInvalid,
        // SERVICE_DISABLED and friends carry an ErrorInfo reason; "The caller
        // does not have permission" carries none.
        403 => key_invalid(error.error_info_reason().unwrap_or("PERMISSION_DENIED")),
        _ => class_by_status(status),
    };
    api_error(class, Some(status), message)
}

/// A 429's scope, wait and limit, from its `QuotaFailure` and `RetryInfo`
/// details (<https://ai.google.dev/gemini-api/docs/rate-limits>; real bodies in
/// `tests/fixtures/gemini_429_*.json`).
fn rate_limited(error: &ErrorBody) -> ErrorClass {
    // Quota ids with their values: `QuotaFailure` violations, and the 2024
    // shape that named the quota in `ErrorInfo.metadata.quota_limit`.
    let violations = error.details_of("QuotaFailure").flat_map(|d| {
        d.violations
            .iter()
            .filter_map(|v| Some((v.quota_id.as_deref()?, v.quota_value.as_ref())))
    });
    let error_infos = error.details_of("ErrorInfo").filter_map(|d| {
        let id = d.metadata.get("quota_limit")?.as_str()?;
        Some((id, d.metadata.get("quota_limit_value")))
    });
    // The widest scope wins: a per-day violation next to a per-minute one
    // means waiting a minute will not help.
    let (scope, value) = violations
        .chain(error_infos)
        .map(|(id, value)| (scope_of(id), value))
        .max_by_key(|(scope, _)| breadth(*scope))
        .unwrap_or((QuotaScope::Unknown, None));
    let message = error.message();
    let retry_after = error
        .details_of("RetryInfo")
        .find_map(|d| common::parse_duration(d.retry_delay.as_deref()?))
        .or_else(|| common::duration_after(message, "Please retry in "));
    let limit = value
        .and_then(quota_value)
        .or_else(|| common::number_after(message, &["limit: "]));
    ErrorClass::RateLimited {
        scope,
        retry_after,
        limit,
    }
}

/// Which quota a `quotaId` names, e.g. `GenerateRequestsPerDayPerProjectPerModel-FreeTier`.
fn scope_of(quota_id: &str) -> QuotaScope {
    if quota_id.contains("PerDay") || quota_id.contains("Daily") {
        QuotaScope::Day
    } else if quota_id.contains("Token") && quota_id.contains("PerMinute") {
        QuotaScope::MinuteTokens
    } else if quota_id.contains("PerMinute") || quota_id.contains("Requests") {
        QuotaScope::MinuteRequests
    } else {
        QuotaScope::Unknown
    }
}

/// How long a scope's exhaustion lasts, to pick the widest of several.
fn breadth(scope: QuotaScope) -> u8 {
    match scope {
        QuotaScope::Unknown => 0,
        QuotaScope::MinuteRequests => 1,
        QuotaScope::MinuteTokens | QuotaScope::MinuteOutputTokens => 2,
        QuotaScope::Day => 3,
    }
}

/// `quotaValue` is a string on the wire ("250000"); accept a number too.
fn quota_value(value: &Value) -> Option<u64> {
    match value {
        Value::String(s) => s.parse().ok(),
        other => other.as_u64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids_are_one_encoded_path_segment() {
        let base = "https://generativelanguage.googleapis.com";
        let cases = [
            ("gemini-2.5-flash", "gemini-2.5-flash"),
            ("models/gemini-2.0-flash-001", "gemini-2.0-flash-001"),
            (
                "gemini-../../../evil?x=1#",
                "gemini-..%2F..%2F..%2Fevil%3Fx%3D1%23",
            ),
            ("a b%2F:c", "a%20b%252F%3Ac"),
            ("模型", "%E6%A8%A1%E5%9E%8B"),
        ];
        for (model, segment) in cases {
            assert_eq!(
                method_url(base, model, "generateContent"),
                format!("{base}/v1beta/models/{segment}:generateContent")
            );
        }
    }

    #[test]
    fn quota_ids_map_to_scopes() {
        let cases = [
            (
                "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
                QuotaScope::Day,
            ),
            (
                "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                QuotaScope::MinuteRequests,
            ),
            (
                "GenerateContentInputTokensPerModelPerMinute-FreeTier",
                QuotaScope::MinuteTokens,
            ),
            ("GenerateContentPaidTierDailyRequests", QuotaScope::Day),
            (
                "GenerateContentRequestsPerMinutePerProjectPerRegion",
                QuotaScope::MinuteRequests,
            ),
            ("SomethingElse", QuotaScope::Unknown),
        ];
        for (id, want) in cases {
            assert_eq!(scope_of(id), want, "{id}");
        }
    }

    #[test]
    fn older_error_info_quota_limit_and_fractional_retry_delay() {
        // The 2024 shape (https://github.com/tech-shrimp/gemini-playground/issues/10):
        // ErrorInfo RATE_LIMIT_EXCEEDED naming
        // the quota in its metadata; and a fractional protobuf Duration.
        let body = br#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED","details":[
            {"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"0.847655010s"},
            {"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"RATE_LIMIT_EXCEEDED","domain":"googleapis.com",
             "metadata":{"quota_limit":"GenerateContentRequestsPerMinutePerProjectPerRegion","quota_limit_value":"15","service":"generativelanguage.googleapis.com"}}]}}"#;
        assert_eq!(
            classify(429, body).class,
            ErrorClass::RateLimited {
                scope: QuotaScope::MinuteRequests,
                retry_after: Some(std::time::Duration::from_nanos(847_655_010)),
                limit: Some(15),
            }
        );
    }

    #[test]
    fn absurd_retry_delays_are_clamped_to_a_day() {
        // The body's RetryInfo first, else the hint in the message.
        for (delay, hint) in [
            ("18000000000000000000s", "1s"),
            ("999999999s", "1s"),
            ("bogus", "18000000000000000000s"),
        ] {
            let body = format!(
                r#"{{"error":{{"code":429,"status":"RESOURCE_EXHAUSTED",
                "message":"Please retry in {hint}.",
                "details":[{{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"{delay}"}}]}}}}"#
            );
            let class = classify(429, body.as_bytes()).class;
            assert!(
                matches!(
                    class,
                    ErrorClass::RateLimited { retry_after: Some(d), .. }
                        if d == common::MAX_SERVER_DELAY
                ),
                "{delay}: {class:?}"
            );
        }
    }

    #[test]
    fn retry_hint_in_milliseconds_when_no_retry_info() {
        let body = br#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED",
            "message":"* Quota exceeded for metric: x, limit: 10\nPlease retry in 856.559356ms."}}"#;
        assert_eq!(
            classify(429, body).class,
            ErrorClass::RateLimited {
                scope: QuotaScope::Unknown,
                retry_after: Some(std::time::Duration::from_nanos(856_559_356)),
                limit: Some(10),
            }
        );
    }

    #[test]
    fn location_not_supported_disables_the_key() {
        let body = br#"{"error":{"code":400,"message":"User location is not supported for the API use.","status":"FAILED_PRECONDITION"}}"#;
        let error = classify(400, body);
        assert_eq!(
            error.class,
            ErrorClass::KeyInvalid {
                reason: "FAILED_PRECONDITION".into()
            }
        );
        assert_eq!(
            error.message,
            "User location is not supported for the API use."
        );
    }

    #[test]
    fn other_statuses_without_a_body() {
        for (status, want) in [
            (408, ErrorClass::Transient),
            (409, ErrorClass::Transient),
            (413, ErrorClass::ItemInvalid),
            (422, ErrorClass::ItemInvalid),
            (502, ErrorClass::Transient),
            (504, ErrorClass::Transient),
            (529, ErrorClass::Transient),
            (
                429,
                ErrorClass::RateLimited {
                    scope: QuotaScope::Unknown,
                    retry_after: None,
                    limit: None,
                },
            ),
        ] {
            let error = classify(status, b"");
            assert_eq!(error.class, want, "{status}");
            assert_eq!(error.status, Some(status));
            assert!(error.message.starts_with(&format!("HTTP {status}")));
        }
    }

    #[test]
    fn stop_without_text_is_an_empty_reply() {
        for body in [
            r#"{"candidates":[{"content":{"role":"model"},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":5}}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":""}],"role":"model"},"finishReason":"STOP"}]}"#,
        ] {
            let reply = parse_generate(body.as_bytes()).unwrap();
            assert_eq!(reply.text, "", "{body}");
        }
    }

    #[test]
    fn no_text_without_a_normal_finish_is_an_empty_answer() {
        for (body, why) in [
            (
                r#"{"candidates":[{"content":{"role":"model"}}]}"#,
                "a candidate without text or finish reason",
            ),
            (r#"{"candidates":[]}"#, "no candidates and no block reason"),
        ] {
            let error = parse_generate(body.as_bytes()).unwrap_err();
            assert_eq!(error.class, ErrorClass::EmptyAnswer, "{body}");
            assert_eq!(error.message, format!("the API returned no output ({why})"));
        }
    }

    #[test]
    fn absurd_token_counts_make_a_malformed_reply() {
        for field in [
            "promptTokenCount",
            "candidatesTokenCount",
            "thoughtsTokenCount",
        ] {
            let body = format!(
                r#"{{"candidates":[{{"content":{{"parts":[{{"text":"hi"}}]}},"finishReason":"STOP"}}],
                "usageMetadata":{{"{field}":18446744073709551615}}}}"#
            );
            let error = parse_generate(body.as_bytes()).unwrap_err();
            assert_eq!(error.class, ErrorClass::Transient);
            assert_eq!(
                error.message,
                format!("malformed reply: usage {field} = 18446744073709551615 is not a believable token count (more than 1000000000000)")
            );
        }
        let body = r#"{"candidates":[{"content":{"parts":[{"text":"hi"}]},"finishReason":"STOP"}],
            "usageMetadata":{"promptTokenCount":1000000000000,"candidatesTokenCount":1000000000000,"thoughtsTokenCount":1000000000000}}"#;
        let usage = parse_generate(body.as_bytes()).unwrap().usage;
        assert_eq!(usage.output_tokens, 2_000_000_000_000);
    }

    #[test]
    fn truncated_200_body_is_transient() {
        let error =
            parse_generate(br#"{"candidates":[{"content":{"parts":[{"text":"hal"#).unwrap_err();
        assert_eq!(error.class, ErrorClass::Transient);
        assert_eq!(error.status, Some(200));
        assert!(
            error.message.starts_with("response body truncated"),
            "{}",
            error.message
        );
    }
}
