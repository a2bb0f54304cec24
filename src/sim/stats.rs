//! What the simulator saw, as served by `GET /__stats` and
//! [`super::SimServer::stats`]. Keys appear only by fingerprint. Tests
//! deserialize it to prove what keyfan did on the wire (e.g. that it never
//! exceeded an RPM: `max_requests_in_60s`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A snapshot of all counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Generate requests received (`generateContent` and chat completions),
    /// whatever their outcome; they are numbered in this order for bursts.
    pub requests: u64,
    /// Model list requests (`GET /v1beta/models` pages and `GET /v1/models`),
    /// with any key.
    #[serde(default)]
    pub model_lists: u64,
    /// Per key fingerprint (`ApiKey::fingerprint`), including invalid keys;
    /// a request with no key at all is listed under `(none)`.
    pub keys: BTreeMap<String, KeyStats>,
    /// Per project name.
    pub projects: BTreeMap<String, ProjectStats>,
    /// Every file uploaded to the Files API, by file name.
    #[serde(default)]
    pub uploads: Vec<UploadStats>,
    /// The most uploads in progress at once (started, not yet finalized).
    #[serde(default)]
    pub uploads_in_progress_max: u64,
}

/// One file uploaded to the simulated Files API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadStats {
    /// `files/{id}`.
    pub file: String,
    /// The project that uploaded it (the only one that can use it).
    pub project: String,
    /// SHA-256 of its bytes, lowercase hex.
    pub sha256: String,
    /// Its size.
    pub bytes: u64,
    /// Deleted (`DELETE files/{id}`) since.
    #[serde(default)]
    pub deleted: bool,
}

/// What one key sent and got.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyStats {
    /// Requests made with the key (`countTokens` included; model lists are
    /// counted in [`Stats::model_lists`] only).
    pub requests: u64,
    /// Complete 200 answers. Truncated and aborted answers went out with
    /// status 200 but are not `ok`: they are `statuses[200] - ok`.
    pub ok: u64,
    /// Responses by HTTP status.
    pub statuses: BTreeMap<u16, u64>,
}

impl KeyStats {
    /// Counts one response.
    pub(crate) fn record(&mut self, status: u16, ok: bool) {
        self.requests += 1;
        self.ok += u64::from(ok);
        *self.statuses.entry(status).or_default() += 1;
    }
}

/// One project's quota use: requests with a valid key of the project for an
/// existing model and a well-formed body (what quota is checked on).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectStats {
    /// Requests checked against quota.
    pub requests: u64,
    /// Complete 200 answers.
    pub ok: u64,
    /// Requests refused with 429 (not counted against quota).
    pub rate_limited: u64,
    /// Per model.
    pub models: BTreeMap<String, ModelStats>,
}

/// One model's use within a project.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelStats {
    /// Requests checked against quota.
    pub requests: u64,
    /// Complete 200 answers.
    pub ok: u64,
    /// Input tokens of the `ok` answers.
    pub input_tokens: u64,
    /// Output tokens (visible and thinking) of the `ok` answers.
    pub output_tokens: u64,
    /// The most requests admitted (counted against quota) in any rolling
    /// 60 s window.
    pub max_requests_in_60s: u64,
    /// The most output tokens counted in any rolling 60 s window, output
    /// caps of requests in flight included (what an OTPM limits).
    #[serde(default)]
    pub max_output_in_60s: u64,
}
