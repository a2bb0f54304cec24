//! A local simulator of the Gemini, OpenAI and Anthropic APIs: a real HTTP server
//! (axum) that speaks their wire formats, enforces per-project quotas like
//! Google does, and injects faults from a seeded RNG. It serves the README
//! demo (`keyfan run --simulate`), the test suite (real sockets on
//! 127.0.0.1, no mocks in the core) and users rehearsing a big job against
//! their real config ([`SimConfig::rehearsal`]) before spending money.
//! [`Simulator`] is the same simulator without a socket: its
//! [`Simulator::router`] is handed to an in-memory provider client, so that
//! tests can run under tokio's paused time (its windows, latency and day run
//! on tokio's clock).
//!
//! Owns: the simulated APIs, their quotas, faults and counters. Never: code
//! shared with [`crate::provider`], or any traffic beyond its own socket.
//!
//! It deliberately shares no code with [`crate::provider`]: its bodies come
//! from the real API fixtures in `tests/fixtures/`, so a parsing bug in the
//! provider cannot hide behind the same bug in the simulator.
//!
//! # Endpoints
//! - `POST /v1beta/models/{model}:generateContent`, key in header
//!   `x-goog-api-key` or query `?key=`. Body: `contents`,
//!   `systemInstruction`, `generationConfig.maxOutputTokens` (camelCase or
//!   snake_case); other fields are accepted and ignored.
//! - `POST /v1beta/models/{model}:countTokens`: free (no quota, no faults).
//! - `POST /v1/chat/completions` (and Gemini's compatible
//!   `/v1beta/openai/chat/completions`), `Authorization: Bearer KEY`.
//! - `POST /v1/messages`: Anthropic's Messages API, key in `x-api-key`;
//!   `anthropic-version` and `max_tokens` are required (400 without).
//! - `GET /v1/models`: free like `countTokens`; how OpenAI keys are checked
//!   (`Authorization: Bearer`), and Anthropic's (`x-api-key`), each in its
//!   API's list shape.
//! - `GET /v1beta/models` (`pageSize`, `pageToken`): Gemini's model list,
//!   free, in the API's shape and pagination.
//! - The Files API (`files`): `POST /upload/v1beta/files` (the resumable
//!   upload: start, chunks, finalize), `GET` and `DELETE /v1beta/files/{id}`;
//!   a file is `PROCESSING` for `files.processing_ms`, then `ACTIVE`, and
//!   gone after `files.expiry_ms` (48 h); a project stores at most
//!   `files.storage_bytes` (20 GiB) of live files; each chunk is answered
//!   after `files.chunk_ms`. A `generateContent` (or `countTokens`) naming
//!   a file of another project gets the real 403, one still processing a
//!   400 `FAILED_PRECONDITION`.
//! - `GET /__stats`: [`Stats`] as JSON; keys only by fingerprint.
//!
//! # Order of checks
//! Key (unknown → 400 `API_KEY_INVALID` / 401 `invalid_api_key` / 401
//! `authentication_error`; listed in `disabled_keys` → 403
//! `SERVICE_DISABLED` / 429 `insufficient_quota` / 403 `permission_error`)
//! → body (malformed → 400) → model (unknown → 404) → requests per Pacific
//! day → requests per rolling 60 s → input tokens per rolling 60 s → output
//! tokens per rolling 60 s, each request counted at its output cap until it
//! is answered and then at its real output (a refused request gets 429 and
//! is not counted) → faults → latency → answer. Quotas are per project:
//! for Anthropic, per organisation.
//! Gemini 429s carry the delay only in `RetryInfo` (no `Retry-After`, as
//! the real API); OpenAI 429s carry `retry-after`, `retry-after-ms` and
//! `x-ratelimit-*`; Anthropic's answers and 429s all carry
//! `anthropic-ratelimit-*` (resets as RFC 3339 times), its 429s
//! `retry-after` and `x-should-retry` too, and its 503 fault is a 529
//! `overloaded_error`.
//!
//! # Answers
//! The text is deterministic and names the prompt:
//! `[simulated MODEL] digest:HEX — a few words`, HEX being the first 16 hex
//! characters of the SHA-256 of the user text (the text parts of the last
//! user turn). Input tokens ≈ ⌈characters / 4⌉ per text part (system
//! included) plus 258 per media part (66 at `MEDIA_RESOLUTION_LOW`), at
//! least 1; a video part's `videoMetadata` shows after its media digest as
//! `@START~END/FPSfps`; output tokens ≈ the
//! reply's ⌈characters / 4⌉. A smaller `maxOutputTokens` cuts the text
//! (finishReason `MAX_TOKENS`, OpenAI `length`).
//!
//! # Directives (for tests)
//! A user text containing one of these gets the matching real body (HTTP
//! 200, counted against quota like any request):
//! - `[[sim:block]]`: prompt blocked, no candidates (`PROHIBITED_CONTENT`);
//!   OpenAI: `content_filter`.
//! - `[[sim:safety]]`: candidate with finishReason `SAFETY`; OpenAI:
//!   `content_filter`.
//! - `[[sim:other]]`: finishReason `OTHER`, no content (Gemini only).
//! - `[[sim:max_tokens]]`: `MAX_TOKENS` with empty content, thinking spent
//!   the budget; OpenAI: `length` with empty content; Anthropic:
//!   `max_tokens` with no text.
//! - `[[sim:tokens=N]]`: the answer goes on to about N tokens (still cut
//!   at the output cap).
//!
//! Anthropic maps `[[sim:block]]` and `[[sim:safety]]` to `stop_reason:
//! refusal`.
//!
//! # Faults
//! Generate requests are numbered from 1 in arrival order across the
//! server. `faults.bursts` give requests `after+1 ..= after+count` a status.
//! Otherwise one draw from a `SmallRng` seeded with `seed ^ number` (so a
//! request's fate does not depend on concurrency) picks 500, 503, hang
//! (answer after `hang_ms`) or truncate (a 200 announcing the full
//! `Content-Length`, cut halfway, connection closed). Faults are decided
//! after quota and count against it, as a real server counts a 500 it
//! returns. Latency (uniform `[min_ms, max_ms]`, drawn from the same
//! seeded RNG) applies to admitted requests only; refusals answer at once.
//! Shutdown aborts hangs and latency waits by closing their connections.

mod anthropic;
mod batch;
mod config;
mod files;
mod gemini;
mod openai;
mod quota;
mod reply;
mod server;
mod stats;
#[cfg(test)]
mod tests;
mod wire;

pub use config::{
    BatchEnd, BatchesConfig, Burst, FaultConfig, FilesConfig, LatencyConfig, ModelLimits,
    ProjectConfig, SimConfig, SimConfigError,
};
pub use server::{SimServer, Simulator};
pub use stats::{KeyStats, ModelStats, ProjectStats, Stats, UploadStats};
