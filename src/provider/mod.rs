//! One adapter per API: request building, response parsing and error
//! classification. A provider never chooses keys; it is handed one.
//!
//! Owns: each API's wire format, its error classes and the scrubbing of keys
//! from what comes back. Never: choosing keys, retrying, waiting or counting
//! quota: one call is one request, and its outcome is returned as is.
//!
//! Every failure is classified once, into an [`ErrorClass`], and the scheduler
//! acts by class: a 429 cools or exhausts the account, an invalid key is
//! disabled, a transient failure is retried with backoff, a wrong request
//! fails its item at once.
//!
//! - `gemini`: `generateContent` / `countTokens` under `{base_url}/v1beta/models/`.
//! - `openai`: `chat/completions`; `base_url` is the server root
//!   (`https://api.openai.com`, `/v1` is added) or a base that already has a
//!   version segment (`.../v1beta/openai`, `.../api/v1`, used as given).
//! - `anthropic`: the Messages API under `{base_url}/v1/`, and the
//!   `anthropic-ratelimit-*` headers every answer carries.
//! - `batch`: the Batch APIs (Gemini's, OpenAI's, Anthropic's): input lines, create, get,
//!   list, cancel, results downloaded to disk and parsed line by line.
//! - `files`: Gemini's Files API (resumable upload, polling until `ACTIVE`).
//! - `batchline`: the line shapes of OpenAI's and Gemini's own batch files.
//!   A body from such a line is sent as it is ([`RawBody`], [`Client::generate_raw`]).
//! - `models`: the model lists, to check a job's models before a run.
//! - `common`: error envelopes (Google's, OpenAI's, Anthropic's, array-wrapped), the
//!   status fallback and the wait/limit hints in messages.
//! - `transport`: one POST; transport failures become `Transient` with
//!   messages that name no URL; redirects are not followed (the key would
//!   go with them) but fail with a message naming the target's host. Over
//!   `reqwest`, or in process to an axum `Router` for paused-time tests.
//!
//! Classification is pure (status, headers, body → [`ApiError`]) so that it is
//! tested on the real recorded bodies in `tests/fixtures/` without HTTP.

mod anthropic;
pub mod batch;
pub mod batchline;
mod common;
mod error;
mod files;
mod gemini;
mod models;
mod openai;
mod scrub;
#[cfg(test)]
mod tests;
mod transport;

pub use crate::types::{ProviderKind, QuotaScope};
pub use common::MAX_SERVER_DELAY;
pub use error::{ApiError, Billed, ErrorClass};
pub use files::{FileError, RemoteFile, Upload, UPLOAD_CHUNK_BYTES};
pub use scrub::Scrubber;

use transport::Transport;

use crate::types::{ApiKey, QuotaUse};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};
use std::time::Duration;

/// One prompt, as the provider needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Request<'a> {
    /// Model id without the `models/` prefix, e.g. `gemini-2.5-flash`.
    pub model: &'a str,
    /// The user text: the last turn of a conversation.
    pub prompt: &'a str,
    /// Earlier turns of a conversation, oldest first, before `prompt`;
    /// empty for a single prompt.
    pub turns: &'a [Turn],
    /// Optional system instruction.
    pub system: Option<&'a str>,
    /// Cap on output tokens (for Gemini this includes thinking tokens).
    pub max_output_tokens: Option<u32>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Every other generation setting ([`Generation::none`] for none).
    pub generation: &'a Generation,
    /// Media parts, sent before the text (Gemini only).
    pub media: &'a [MediaPart],
}

/// A request body someone else wrote (a line of a provider's own batch
/// file), for the API of `kind`: an OpenAI chat completions body, or a
/// Gemini `GenerateContentRequest`. It is sent as it is, apart from its
/// model and, when the run needs a cap and the body has none, an output
/// cap; its answer is read like any other.
#[derive(Debug, Clone, PartialEq)]
pub struct RawBody {
    /// The API the body is written for: [`ProviderKind::Openai`] or
    /// [`ProviderKind::Gemini`].
    pub kind: ProviderKind,
    /// The body.
    pub body: Arc<Map<String, Value>>,
}

/// A [`RawBody`] to send.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RawRequest<'a> {
    /// The model to send it to (OpenAI: written into the body's `model`;
    /// Gemini: the URL's, any `model` in the body left out).
    pub model: &'a str,
    /// The body.
    pub body: &'a RawBody,
    /// An output cap, written into the body only when it sets none
    /// (OpenAI `max_tokens`, Gemini `generationConfig.maxOutputTokens`).
    pub max_output_tokens: Option<u32>,
}

/// One earlier turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    /// Who said it.
    pub role: Role,
    /// What was said.
    pub text: String,
}

/// The speaker of a [`Turn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The person (Gemini `user`, OpenAI `user`).
    User,
    /// The model (Gemini `model`, OpenAI `assistant`).
    Model,
}

impl Role {
    /// The role's name in chat-style APIs (OpenAI, Anthropic): `user` or
    /// `assistant`.
    pub(crate) fn chat_name(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Model => "assistant",
        }
    }
}

/// Generation settings besides the output cap and the temperature, as
/// keyfan names them; each adapter maps them to its API's own names, and
/// [`supports`] says which an API has. A job that sets one its provider
/// lacks is refused before anything is sent: none is silently dropped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Generation {
    /// Nucleus sampling mass, 0.0–1.0.
    pub top_p: Option<f32>,
    /// Top-k sampling.
    pub top_k: Option<u32>,
    /// Stop sequences.
    pub stop: Vec<String>,
    /// Sampling seed.
    pub seed: Option<i64>,
    /// Thinking budget in tokens (Gemini 2.5; 0 off, -1 automatic).
    pub thinking_budget: Option<i32>,
    /// Thinking level (Gemini 3): `minimal`, `low`, `medium` or `high`.
    pub thinking_level: Option<String>,
    /// Reasoning effort (OpenAI): `minimal`, `low`, `medium` or `high`.
    pub reasoning_effort: Option<String>,
    /// The answer's MIME type: `application/json` or `text/plain`.
    pub response_mime_type: Option<String>,
    /// A JSON Schema the answer must follow (structured output).
    pub response_schema: Option<Arc<Value>>,
    /// How finely media are tokenized (Gemini `mediaResolution`).
    pub media_resolution: Option<MediaResolution>,
    /// The part of each video to use and its sampling rate (Gemini
    /// `videoMetadata`).
    pub clip: VideoClip,
}

/// How finely Gemini tokenizes media: `generationConfig.mediaResolution`
/// `MEDIA_RESOLUTION_LOW|MEDIUM|HIGH` (googleapis/python-genai `types.py`,
/// `class MediaResolution`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaResolution {
    /// `low`.
    Low,
    /// `medium`.
    Medium,
    /// `high`.
    High,
}

impl MediaResolution {
    /// Every level, as jobs spell them.
    pub const ALL: [(&'static str, MediaResolution); 3] = [
        ("low", MediaResolution::Low),
        ("medium", MediaResolution::Medium),
        ("high", MediaResolution::High),
    ];

    /// The API's name: `MEDIA_RESOLUTION_LOW`, …
    pub fn wire(self) -> &'static str {
        match self {
            MediaResolution::Low => "MEDIA_RESOLUTION_LOW",
            MediaResolution::Medium => "MEDIA_RESOLUTION_MEDIUM",
            MediaResolution::High => "MEDIA_RESOLUTION_HIGH",
        }
    }
}

/// Which part of each video of an item is used, and how many frames per
/// second are sampled from it: Gemini's part-level `videoMetadata`
/// (`startOffset`, `endOffset`, `fps`; googleapis/python-genai `types.py`,
/// `class VideoMetadata`). Unset fields are left to the API (the whole
/// video, 1 frame per second).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct VideoClip {
    /// Where the clip starts.
    pub start: Option<Duration>,
    /// Where the clip ends.
    pub end: Option<Duration>,
    /// Frames sampled per second, in (0, 24].
    pub fps: Option<f64>,
}

impl VideoClip {
    /// Whether any field is set.
    pub fn is_set(&self) -> bool {
        self.start.is_some() || self.end.is_some() || self.fps.is_some()
    }
}

impl Generation {
    /// No settings: what a plain prompt is sent with.
    pub fn none() -> &'static Generation {
        static NONE: LazyLock<Generation> = LazyLock::new(Generation::default);
        &NONE
    }

    /// The names of the settings that are set, as jobs spell them.
    pub fn names(&self) -> Vec<&'static str> {
        [
            ("top_p", self.top_p.is_some()),
            ("top_k", self.top_k.is_some()),
            ("stop", !self.stop.is_empty()),
            ("seed", self.seed.is_some()),
            ("thinking_budget", self.thinking_budget.is_some()),
            ("thinking_level", self.thinking_level.is_some()),
            ("reasoning_effort", self.reasoning_effort.is_some()),
            ("response_mime_type", self.response_mime_type.is_some()),
            ("response_schema", self.response_schema.is_some()),
            ("media_resolution", self.media_resolution.is_some()),
            ("start_offset", self.clip.start.is_some()),
            ("end_offset", self.clip.end.is_some()),
            ("fps", self.clip.fps.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }
}

/// Whether the API of `kind` has the [`Generation`] setting `name` (as
/// [`Generation::names`] spells it).
pub fn supports(kind: ProviderKind, name: &str) -> bool {
    match kind {
        ProviderKind::Gemini => gemini::SETTINGS.contains(&name),
        ProviderKind::Openai => openai::SETTINGS.contains(&name),
        ProviderKind::Anthropic => anthropic::SETTINGS.contains(&name),
    }
}

/// A media input of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaPart {
    /// Bytes sent in the request (`inlineData`).
    Inline {
        /// The MIME type.
        mime: String,
        /// The bytes.
        data: Vec<u8>,
    },
    /// A file the API fetches (`fileData`): an uploaded file's URI, or a
    /// YouTube URL (no MIME type).
    File {
        /// The MIME type, when known.
        mime: Option<String>,
        /// The URI.
        uri: String,
    },
}

/// Token counts of one call the API billed, normalised across providers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens, cached ones included.
    pub input_tokens: u64,
    /// Of `input_tokens`, how many were served from a cache.
    pub cached_tokens: u64,
    /// Of `input_tokens`, how many were written to a cache (Anthropic's
    /// `cache_creation_input_tokens`, billed above the input rate).
    #[serde(default)]
    pub cache_write_tokens: u64,
    /// Visible output tokens plus thinking tokens (what is billed as output).
    pub output_tokens: u64,
    /// Of `output_tokens`, how many were thinking.
    pub thinking_tokens: u64,
}

/// A successful reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The visible text (thought parts excluded).
    pub text: String,
    /// Token usage as reported by the API.
    pub usage: Usage,
    /// The concrete model version the API says it used, when it says one.
    pub model_version: Option<String>,
    /// Why the output ended, as the API spells it (Gemini `STOP`,
    /// `MAX_TOKENS`; OpenAI `stop`, `length`), when it says.
    pub finish_reason: Option<String>,
    /// What the account's per-minute quota counted for it, and the limits
    /// the answer stated.
    pub quota: QuotaUse,
}

/// An HTTP client bound to one endpoint (and, through `reqwest`, to one
/// optional egress proxy), or to an in-process server
/// ([`Client::in_memory`]). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    transport: Transport,
    kind: ProviderKind,
    base_url: String,
    /// Per request. `reqwest` enforces it over HTTP, the transport in
    /// memory; kept to name it in "timed out" messages.
    timeout: Duration,
    /// The output cap sent when a request has none and the API requires
    /// one (Anthropic's `max_tokens`).
    default_max_output_tokens: u32,
    /// The URLs of the requests sent so far, parsed once: per endpoint,
    /// per model. Shared by the client's clones.
    urls: Arc<RwLock<Urls>>,
}

/// Parsed request URLs: per endpoint (a handful), per model.
type Urls = Vec<(&'static str, HashMap<String, Arc<reqwest::Url>>)>;

/// The output cap sent to an API that requires one when neither the item
/// nor the config (`default_max_output_tokens`) gives one.
pub const DEFAULT_MAX_OUTPUT_TOKENS: u32 = 4096;

/// The base URL of an in-memory client: only its path reaches the server,
/// and `.invalid` can never resolve, so no request could leave the process.
const IN_MEMORY_BASE_URL: &str = "http://in-memory.invalid";

impl Client {
    /// Builds a client for `kind` at `base_url` (no trailing slash needed),
    /// with a per-request `timeout` and an optional egress `proxy` URL.
    pub fn new(
        kind: ProviderKind,
        base_url: &str,
        timeout: Duration,
        proxy: Option<&str>,
    ) -> Result<Self, reqwest::Error> {
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(256)
            // A redirect would carry the key to another host (reqwest strips
            // only `Authorization` across origins, not `x-goog-api-key`),
            // and the APIs never redirect: a 3xx is an error instead.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("keyfan/", env!("CARGO_PKG_VERSION")));
        if let Some(proxy) = proxy {
            builder = builder.proxy(reqwest::Proxy::all(proxy)?);
        } else if is_loopback(base_url) {
            // An HTTP(S)_PROXY in the environment must not capture requests
            // to a local server (the simulator, a local gateway).
            builder = builder.no_proxy();
        }
        Ok(Client {
            transport: Transport::Http(builder.build()?),
            kind,
            base_url: base_url.trim_end_matches('/').to_owned(),
            timeout,
            default_max_output_tokens: DEFAULT_MAX_OUTPUT_TOKENS,
            urls: Arc::default(),
        })
    }

    /// Builds a client for `kind` whose requests go to `router` in this
    /// process (the simulator's, [`crate::sim::Simulator::router`]) instead
    /// of over a socket, each within `timeout` on tokio's clock. Statuses are
    /// classified exactly as over HTTP. Lets a whole run go under tokio's
    /// paused time, which cannot drive real sockets.
    pub fn in_memory(kind: ProviderKind, router: axum::Router, timeout: Duration) -> Client {
        Client {
            transport: Transport::Memory(router),
            kind,
            base_url: IN_MEMORY_BASE_URL.to_owned(),
            timeout,
            default_max_output_tokens: DEFAULT_MAX_OUTPUT_TOKENS,
            urls: Arc::default(),
        }
    }

    /// The same client, sending `cap` as the output cap of a request that
    /// has none to an API that requires one (Anthropic's `max_tokens`).
    pub fn with_default_max_output_tokens(self, cap: u32) -> Client {
        Client {
            default_max_output_tokens: cap,
            ..self
        }
    }

    /// The endpoint's base URL, as configured (without a trailing `/`).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The URL of `endpoint` for `model` (`""` when the URL names no
    /// model), which `make` writes from the base URL: parsed on its first
    /// request, then kept, so that a request does not parse its URL again.
    /// A URL that does not parse is handed back as text, for the request to
    /// fail with `reqwest`'s own error.
    fn endpoint_url(
        &self,
        endpoint: &'static str,
        model: &str,
        make: impl FnOnce(&str) -> String,
    ) -> transport::Parsed {
        let urls = self.urls.read().unwrap_or_else(|e| e.into_inner());
        let known = urls
            .iter()
            .find(|(e, _)| *e == endpoint)
            .and_then(|(_, models)| models.get(model));
        if let Some(url) = known {
            return transport::Parsed::Url(Arc::clone(url));
        }
        drop(urls);
        let text = make(&self.base_url);
        let Ok(url) = reqwest::Url::parse(&text) else {
            return transport::Parsed::Text(text);
        };
        let url = Arc::new(url);
        let mut urls = self.urls.write().unwrap_or_else(|e| e.into_inner());
        let at = match urls.iter().position(|(e, _)| *e == endpoint) {
            Some(at) => at,
            None => {
                urls.push((endpoint, HashMap::new()));
                urls.len() - 1
            }
        };
        urls[at].1.insert(model.to_owned(), Arc::clone(&url));
        transport::Parsed::Url(url)
    }

    /// Sends one prompt and returns the reply or a classified error.
    ///
    /// The error never contains a fragment of the key: it is scrubbed here,
    /// the one place every adapter's error passes through.
    pub async fn generate(&self, key: &ApiKey, req: &Request<'_>) -> Result<Reply, ApiError> {
        let result = match self.kind {
            ProviderKind::Gemini => gemini::generate(self, key, req).await,
            _ if !req.media.is_empty() => Err(common::api_error(
                ErrorClass::ItemInvalid,
                None,
                "media items need a Gemini model",
            )),
            ProviderKind::Openai => openai::generate(self, key, req).await,
            ProviderKind::Anthropic => anthropic::generate(self, key, req).await,
        };
        without_key(result, key)
    }

    /// Sends a [`RawBody`] as it is (see [`RawRequest`]) and returns the
    /// reply or a classified error, as [`Client::generate`] does. A body
    /// written for another API than this client's fails as
    /// [`ErrorClass::ItemInvalid`].
    pub async fn generate_raw(
        &self,
        key: &ApiKey,
        req: &RawRequest<'_>,
    ) -> Result<Reply, ApiError> {
        let result = match (self.kind, req.body.kind) {
            (ProviderKind::Openai, ProviderKind::Openai) => {
                openai::generate_raw(self, key, req).await
            }
            (ProviderKind::Gemini, ProviderKind::Gemini) => {
                gemini::generate_raw(self, key, req).await
            }
            (client, body) => Err(common::api_error(
                ErrorClass::ItemInvalid,
                None,
                format!("{body:?} request bodies cannot be sent to {client:?} accounts")
                    .to_lowercase(),
            )),
        };
        without_key(result, key)
    }

    /// The API's count of `req`'s input tokens, free of charge: Gemini's
    /// `countTokens`. The other APIs have no free count: an
    /// [`ErrorClass::ItemInvalid`] error says so.
    pub async fn count_tokens(&self, key: &ApiKey, req: &Request<'_>) -> Result<u64, ApiError> {
        let result = match self.kind {
            ProviderKind::Gemini => gemini::count_tokens(self, key, req).await,
            ProviderKind::Openai | ProviderKind::Anthropic => Err(common::api_error(
                ErrorClass::ItemInvalid,
                None,
                format!("the {:?} API has no free token count", self.kind).to_lowercase(),
            )),
        };
        without_key(result, key)
    }

    /// Checks that the API accepts `key`, with a request that costs
    /// nothing: Gemini's `countTokens` on `model`, OpenAI's and Anthropic's
    /// model lists.
    pub async fn check(&self, key: &ApiKey, model: &str) -> Result<(), ApiError> {
        let result = match self.kind {
            ProviderKind::Gemini => {
                let ping = Request {
                    model,
                    prompt: "ping",
                    turns: &[],
                    system: None,
                    max_output_tokens: None,
                    temperature: None,
                    generation: Generation::none(),
                    media: &[],
                };
                gemini::count_tokens(self, key, &ping).await.map(drop)
            }
            ProviderKind::Openai => openai::list_models(self, key).await.map(drop),
            ProviderKind::Anthropic => anthropic::list_models(self, key, None).await.map(drop),
        };
        without_key(result, key)
    }
}

/// `result` with every fragment of `key` taken out of its error: the one
/// place every adapter's error passes through on its way out.
fn without_key<T>(result: Result<T, ApiError>, key: &ApiKey) -> Result<T, ApiError> {
    result.map_err(|e| e.scrub(&Scrubber::new([key])))
}

/// The longest model name accepted.
const MAX_MODEL_CHARS: usize = 256;

/// Checks that `model` is a model name as the providers spell them, and
/// says what is wrong when it is not. Gemini's ids (`gemini-2.5-flash`,
/// optionally as `models/gemini-2.5-flash`), OpenAI's (`gpt-4o-mini`,
/// `ft:gpt-4o-mini:org:suffix:id`), and those of OpenAI-compatible servers
/// (`meta-llama/llama-3.1-8b-instruct`, `qwen2.5:0.5b`, Cloudflare's
/// `@cf/meta/llama-3.1-8b-instruct`) use only ASCII letters and digits and
/// `. _ : / - @`, with no empty, `.` or `..` path segment. Anything else
/// (`?`, `#`, `%`, spaces) could only change the URL it goes into.
pub fn check_model_name(model: &str) -> Result<(), String> {
    if model.trim().is_empty() {
        return Err("must not be empty".to_owned());
    }
    if model.chars().count() > MAX_MODEL_CHARS {
        return Err(format!(
            "is not a model name: longer than {MAX_MODEL_CHARS} characters"
        ));
    }
    if let Some(bad) = model
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._:/-@".contains(*c)))
    {
        return Err(format!(
            "is not a model name: {bad:?} is not allowed (letters, digits and . _ : / - @ are)"
        ));
    }
    if model.split('/').any(|s| matches!(s, "" | "." | "..")) {
        return Err(
            "is not a model name: it has an empty, `.` or `..` part between slashes".to_owned(),
        );
    }
    Ok(())
}

/// Whether `base_url` names this machine.
fn is_loopback(base_url: &str) -> bool {
    let host = base_url
        .split_once("://")
        .map_or(base_url, |(_, rest)| rest)
        .split(['/', '?'])
        .next()
        .unwrap_or_default();
    let host = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.chars().all(|c| c.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    host == "localhost" || host == "[::1]" || host.starts_with("127.")
}
