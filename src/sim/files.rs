//! The simulated Files API: the resumable upload (start, chunks at their
//! offsets, finalize) with the real headers and status values, `GET
//! files/{id}` (`PROCESSING` until `files.processing_ms` have passed, then
//! `ACTIVE`; `FAILED` when the display name holds `[[sim:file_failed]]`),
//! `DELETE files/{id}`, and the checks of a `generateContent` (or
//! `countTokens`) naming files:
//! a file of another project (or none, or one deleted or expired) is the
//! real 403, one still processing a 400 `FAILED_PRECONDITION`.
//!
//! A file lives `files.expiry_ms` after its upload (the API keeps files 48
//! hours), and a project stores at most `files.storage_bytes` of live files
//! (the API's 20 GiB `FileStorageBytesPerProject`): an upload past it is
//! the real 429 `RESOURCE_EXHAUSTED` on `file_storage_bytes`, as quoted in
//! <https://github.com/alphaXiv/feedback/issues/16> (2025-10-22).
//!
//! Files are project-scoped as in the real API. Their bytes are not kept
//! (JSONL files, a batch's input, excepted): only their SHA-256, which
//! answers carry (the first 16 hex characters) so a test can prove which
//! file reached which item.

use super::config::FilesConfig;
use super::gemini::Gemini;
use super::server::lock;
use super::stats::UploadStats;
use super::wire::{encode, fixture_json, fixture_text, put, Wire};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// The 403 for a file another project uploaded (or none did).
static NO_PERMISSION: LazyLock<Value> = fixture_json!("gemini_403_file_permission.json");

/// The directive in a display name that makes the file end `FAILED`.
const FAIL_DIRECTIVE: &str = "[[sim:file_failed]]";

/// How long the API keeps a file: "Files are stored for 48 hours"
/// (<https://ai.google.dev/gemini-api/docs/files>).
const DEFAULT_EXPIRY: Duration = Duration::from_secs(48 * 3600);

/// "The File API lets you store up to 20 GB of files per project"; the
/// quota's value in the API's error is 21474836480.
const DEFAULT_STORAGE_BYTES: u64 = 21_474_836_480;

/// An upload under way.
struct Session {
    project: usize,
    size: u64,
    mime: String,
    display_name: String,
    received: u64,
    hasher: Sha256,
    /// The bytes of a JSONL upload (a batch's input), kept for the Batch
    /// API; other files keep only their digest.
    kept: Option<Vec<u8>>,
}

/// A finalized file.
struct Stored {
    project: usize,
    mime: String,
    size: u64,
    display_name: String,
    sha256: String,
    ready_at: Instant,
    failed: bool,
    /// Wall time of its upload, for `createTime` and `expirationTime`.
    created: chrono::DateTime<chrono::Utc>,
    /// When it is gone.
    expires_at: Instant,
    /// Deleted by `DELETE files/{id}`; kept for the counters.
    deleted: bool,
    /// The bytes of a JSONL upload (a batch's input), for the Batch API.
    kept: Option<Arc<[u8]>>,
}

impl Stored {
    /// Not deleted and not expired: usable, and counted in the storage.
    fn live(&self) -> bool {
        !self.deleted && Instant::now() < self.expires_at
    }
}

/// Every upload session and file, by id.
pub(crate) struct Files {
    processing: Duration,
    expiry: Duration,
    storage_bytes: u64,
    /// How long each chunk waits before it is answered.
    chunk: Duration,
    /// The most upload sessions open at once.
    in_progress_max: AtomicU64,
    next: AtomicU64,
    sessions: Mutex<HashMap<String, Session>>,
    files: Mutex<HashMap<String, Stored>>,
}

/// Google's error envelope without details.
pub(super) fn envelope(status: StatusCode, rpc: &str, message: &str) -> Response {
    let body = json!({"error": {"code": status.as_u16(), "message": message, "status": rpc}});
    Gemini::json(status, encode(&body))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// The start request's body: `{"file": {"display_name": …}}`.
#[derive(Deserialize, Default)]
struct StartBody {
    #[serde(default)]
    file: StartFile,
}

#[derive(Deserialize, Default)]
struct StartFile {
    #[serde(default, alias = "displayName")]
    display_name: String,
}

impl Files {
    /// No files yet; each becomes `ACTIVE` `processing_ms` after its
    /// finalize, and is gone `expiry_ms` after it.
    pub(crate) fn new(config: FilesConfig) -> Files {
        Files {
            processing: Duration::from_millis(config.processing_ms),
            expiry: config
                .expiry_ms
                .map_or(DEFAULT_EXPIRY, Duration::from_millis),
            storage_bytes: config.storage_bytes.unwrap_or(DEFAULT_STORAGE_BYTES),
            chunk: Duration::from_millis(config.chunk_ms),
            in_progress_max: AtomicU64::new(0),
            next: AtomicU64::new(0),
            sessions: Mutex::default(),
            files: Mutex::default(),
        }
    }

    /// `POST /upload/v1beta/files` from `project`: a start (no `upload_id`)
    /// or a chunk of the session `upload_id`. `origin` is where the server
    /// is reached (`http://host:port`), for the upload URL.
    pub(crate) fn upload(
        &self,
        project: usize,
        upload_id: Option<&str>,
        origin: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Response {
        match upload_id {
            None => self.start(project, origin, headers, body),
            Some(id) => self.chunk(project, id, headers, body),
        }
    }

    fn start(&self, project: usize, origin: &str, headers: &HeaderMap, body: &[u8]) -> Response {
        if header(headers, "x-goog-upload-protocol") != "resumable"
            || header(headers, "x-goog-upload-command") != "start"
        {
            return envelope(
                StatusCode::BAD_REQUEST,
                "INVALID_ARGUMENT",
                "expected X-Goog-Upload-Protocol: resumable and X-Goog-Upload-Command: start",
            );
        }
        let Ok(size) = header(headers, "x-goog-upload-header-content-length").parse::<u64>() else {
            return envelope(
                StatusCode::BAD_REQUEST,
                "INVALID_ARGUMENT",
                "X-Goog-Upload-Header-Content-Length is missing or not a number",
            );
        };
        let stored: u64 = lock(&self.files)
            .values()
            .filter(|f| f.project == project && f.live())
            .map(|f| f.size)
            .sum();
        if stored.saturating_add(size) > self.storage_bytes {
            return storage_exhausted(self.storage_bytes);
        }
        let start: StartBody = serde_json::from_slice(body).unwrap_or_default();
        let id = format!("upload-{}", self.next.fetch_add(1, Ordering::Relaxed) + 1);
        let mime = header(headers, "x-goog-upload-header-content-type");
        let mut sessions = lock(&self.sessions);
        sessions.insert(
            id.clone(),
            Session {
                project,
                size,
                kept: mime.contains("jsonl").then(Vec::new),
                mime: mime.to_owned(),
                display_name: start.file.display_name,
                received: 0,
                hasher: Sha256::new(),
            },
        );
        self.in_progress_max
            .fetch_max(sessions.len() as u64, Ordering::Relaxed);
        drop(sessions);
        let url = format!("{origin}/upload/v1beta/files?upload_id={id}&upload_protocol=resumable");
        let mut response = Gemini::json(StatusCode::OK, "");
        let headers = response.headers_mut();
        if let Ok(url) = HeaderValue::from_str(&url) {
            headers.insert("x-goog-upload-url", url);
        }
        headers.insert("x-goog-upload-status", HeaderValue::from_static("active"));
        response
    }

    fn chunk(&self, project: usize, id: &str, headers: &HeaderMap, body: &[u8]) -> Response {
        let command = header(headers, "x-goog-upload-command");
        let finalize = command.split(',').any(|c| c.trim() == "finalize");
        let offset = header(headers, "x-goog-upload-offset").parse::<u64>().ok();
        let mut sessions = lock(&self.sessions);
        let Some(session) = sessions.get_mut(id).filter(|s| s.project == project) else {
            return final_error(StatusCode::NOT_FOUND, "NOT_FOUND", "No such upload.");
        };
        if offset != Some(session.received) {
            return final_error(
                StatusCode::BAD_REQUEST,
                "INVALID_ARGUMENT",
                &format!(
                    "X-Goog-Upload-Offset must be {} for this upload",
                    session.received
                ),
            );
        }
        session.hasher.update(body);
        if let Some(kept) = &mut session.kept {
            kept.extend_from_slice(body);
        }
        session.received += body.len() as u64;
        if !finalize {
            let mut response = Gemini::json(StatusCode::OK, "");
            response
                .headers_mut()
                .insert("x-goog-upload-status", HeaderValue::from_static("active"));
            return response;
        }
        let Some(session) = sessions.remove(id) else {
            return final_error(StatusCode::NOT_FOUND, "NOT_FOUND", "No such upload.");
        };
        drop(sessions);
        if session.received != session.size {
            return final_error(
                StatusCode::BAD_REQUEST,
                "INVALID_ARGUMENT",
                &format!(
                    "the upload announced {} bytes and sent {}",
                    session.size, session.received
                ),
            );
        }
        let file_id = format!("sim{:06}", self.next.fetch_add(1, Ordering::Relaxed) + 1);
        let stored = Stored {
            project,
            failed: session.display_name.contains(FAIL_DIRECTIVE),
            mime: session.mime,
            size: session.size,
            display_name: session.display_name,
            sha256: hex::encode(session.hasher.finalize()),
            ready_at: Instant::now() + self.processing,
            created: chrono::Utc::now(),
            expires_at: Instant::now() + self.expiry,
            deleted: false,
            kept: session.kept.map(Arc::from),
        };
        let body = json!({ "file": self.describe(&file_id, &stored, false) });
        lock(&self.files).insert(file_id, stored);
        let mut response = Gemini::json(StatusCode::OK, encode(&body));
        response
            .headers_mut()
            .insert("x-goog-upload-status", HeaderValue::from_static("final"));
        response
    }

    /// `GET /v1beta/files/{id}` from `project`.
    pub(crate) fn get(&self, project: usize, id: &str) -> Response {
        let files = lock(&self.files);
        match files.get(id).filter(|f| f.project == project && f.live()) {
            Some(file) => Gemini::json(
                StatusCode::OK,
                encode(&self.describe(id, file, Instant::now() >= file.ready_at)),
            ),
            None => no_permission(id),
        }
    }

    /// `DELETE /v1beta/files/{id}` from `project`: `{}`, or the 403 for a
    /// file it cannot see (another project's, gone or never there).
    pub(crate) fn delete(&self, project: usize, id: &str) -> Response {
        let mut files = lock(&self.files);
        match files
            .get_mut(id)
            .filter(|f| f.project == project && f.live())
        {
            Some(file) => {
                file.deleted = true;
                Gemini::json(StatusCode::OK, "{}")
            }
            None => no_permission(id),
        }
    }

    /// The bytes of `project`'s JSONL file `id` (`files/` stripped), if it
    /// has one by that id.
    pub(crate) fn jsonl(&self, project: usize, id: &str) -> Option<Arc<[u8]>> {
        let files = lock(&self.files);
        let file = files.get(id).filter(|f| f.project == project)?;
        file.kept.clone()
    }

    /// Checks the files a `generateContent` body from `project` names, and
    /// gives the digests of what each media part carries, in order: an
    /// uploaded file's bytes, a YouTube URL's text, inline bytes (decoded).
    /// An error is the response to send instead.
    pub(crate) fn media(&self, project: usize, body: &[u8]) -> Result<Vec<String>, Box<Response>> {
        let Ok(request) = serde_json::from_slice::<MediaRequest>(body) else {
            // The generate pipeline answers a malformed body.
            return Ok(Vec::new());
        };
        let files = lock(&self.files);
        let mut digests = Vec::new();
        for part in request.contents.iter().flat_map(|c| &c.parts) {
            let at = digests.len();
            if let Some(data) = &part.inline_data {
                use base64::Engine;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(&data.data)
                    .unwrap_or_default();
                digests.push(short_digest(&hex::encode(Sha256::digest(&bytes))));
            }
            if let (Some(clip), Some(digest)) = (&part.video_metadata, digests.get_mut(at)) {
                digest.push_str(&clip.tag());
            }
            let Some(file) = &part.file_data else {
                continue;
            };
            let Some((_, id)) = file.file_uri.split_once("/v1beta/files/") else {
                digests.push(short_digest(&hex::encode(Sha256::digest(
                    file.file_uri.as_bytes(),
                ))));
                continue;
            };
            let stored = match files.get(id).filter(|f| f.project == project && f.live()) {
                Some(stored) => stored,
                None => return Err(Box::new(no_permission(id))),
            };
            if stored.failed || Instant::now() < stored.ready_at {
                // The simulator's own wording; the status is the API's.
                return Err(Box::new(envelope(
                    StatusCode::BAD_REQUEST,
                    "FAILED_PRECONDITION",
                    &format!("The File {id} is not in an ACTIVE state and usage is not allowed."),
                )));
            }
            digests.push(short_digest(&stored.sha256));
            if let Some(clip) = &part.video_metadata {
                digests[at].push_str(&clip.tag());
            }
        }
        Ok(digests)
    }

    /// How long each upload chunk waits before it is answered
    /// (`files.chunk_ms`).
    pub(crate) fn chunk_delay(&self) -> Duration {
        self.chunk
    }

    /// The most uploads in progress at once (sessions started and not yet
    /// finalized), for the counters.
    pub(crate) fn in_progress_max(&self) -> u64 {
        self.in_progress_max.load(Ordering::Relaxed)
    }

    /// Every file, for the counters.
    pub(crate) fn stats(&self, project_name: impl Fn(usize) -> String) -> Vec<UploadStats> {
        let mut uploads: Vec<UploadStats> = lock(&self.files)
            .iter()
            .map(|(id, f)| UploadStats {
                file: format!("files/{id}"),
                project: project_name(f.project),
                sha256: f.sha256.clone(),
                bytes: f.size,
                deleted: f.deleted,
            })
            .collect();
        uploads.sort_by(|a, b| a.file.cmp(&b.file));
        uploads
    }
}

/// The first 16 hex characters of a SHA-256, as answers carry it.
fn short_digest(sha256_hex: &str) -> String {
    sha256_hex[..16].to_owned()
}

/// The real 403 with the file's id in its message.
fn no_permission(id: &str) -> Response {
    let mut body = NO_PERMISSION.clone();
    let message =
        format!("You do not have permission to access the File {id} or it may not exist.");
    put(&mut body, "/error/message", message);
    Gemini::json(StatusCode::FORBIDDEN, encode(&body))
}

/// An upload error: 4xx with `X-Goog-Upload-Status: final`, as the SDK's
/// tests record them (python-genai `tests/client/test_upload_errors.py`).
fn final_error(status: StatusCode, rpc: &str, message: &str) -> Response {
    let mut response = envelope(status, rpc, message);
    response
        .headers_mut()
        .insert("x-goog-upload-status", HeaderValue::from_static("final"));
    response
}

/// The 429 of an upload past the project's storage, with the quota's value.
fn storage_exhausted(limit: u64) -> Response {
    let message = format!(
        "You exceeded your current quota, please check your plan and billing details. For more \
         information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.\n\
         * Quota exceeded for metric: generativelanguage.googleapis.com/file_storage_bytes, \
         limit: {limit}"
    );
    let body = json!({"error": {
        "code": 429,
        "message": message,
        "status": "RESOURCE_EXHAUSTED",
        "details": [
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
                "quotaMetric": "generativelanguage.googleapis.com/file_storage_bytes",
                "quotaId": "FileStorageBytesPerProject",
                "quotaValue": limit.to_string(),
            }]},
            {"@type": "type.googleapis.com/google.rpc.Help", "links": [{
                "description": "Learn more about Gemini API quotas",
                "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
            }]},
        ],
    }});
    let mut response = Gemini::json(StatusCode::TOO_MANY_REQUESTS, encode(&body));
    response
        .headers_mut()
        .insert("x-goog-upload-status", HeaderValue::from_static("final"));
    response
}

impl Files {
    /// The File resource's JSON (fields as in the API reference).
    fn describe(&self, id: &str, file: &Stored, ready: bool) -> Value {
        let mut value = resource(id, file, ready);
        let time = |t: chrono::DateTime<chrono::Utc>| {
            t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        };
        let expires = chrono::Duration::from_std(self.expiry)
            .ok()
            .and_then(|d| file.created.checked_add_signed(d))
            .unwrap_or(file.created);
        value["createTime"] = json!(time(file.created));
        value["updateTime"] = json!(time(file.created));
        value["expirationTime"] = json!(time(expires));
        value
    }
}

/// The File resource's JSON without its times.
fn resource(id: &str, file: &Stored, ready: bool) -> Value {
    let state = match (file.failed, ready) {
        (true, true) => "FAILED",
        (false, true) => "ACTIVE",
        _ => "PROCESSING",
    };
    let mut value = json!({
        "name": format!("files/{id}"),
        "displayName": file.display_name,
        "mimeType": file.mime,
        "sizeBytes": file.size.to_string(),
        "uri": format!("https://generativelanguage.googleapis.com/v1beta/files/{id}"),
        "state": state,
        "source": "UPLOADED",
    });
    if state == "FAILED" {
        value["error"] =
            json!({"code": 400, "message": "The simulator was asked to fail this file."});
    }
    value
}

/// The media parts of a `generateContent` body.
#[derive(Deserialize)]
struct MediaRequest {
    #[serde(default)]
    contents: Vec<MediaContent>,
}

#[derive(Deserialize)]
struct MediaContent {
    #[serde(default)]
    parts: Vec<MediaPart>,
}

#[derive(Deserialize)]
struct MediaPart {
    #[serde(alias = "inline_data", rename = "inlineData")]
    inline_data: Option<InlineData>,
    #[serde(alias = "file_data", rename = "fileData")]
    file_data: Option<FileData>,
    #[serde(alias = "video_metadata", rename = "videoMetadata")]
    video_metadata: Option<VideoMetadata>,
}

/// A video part's clip, as the API takes it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VideoMetadata {
    #[serde(alias = "start_offset")]
    start_offset: Option<String>,
    #[serde(alias = "end_offset")]
    end_offset: Option<String>,
    fps: Option<f64>,
}

impl VideoMetadata {
    /// What the answer shows of it after the part's digest, so a test sees
    /// it arrive: `@START~END/FPSfps`, each `-` when absent.
    fn tag(&self) -> String {
        let or_dash = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".to_owned());
        format!(
            "@{}~{}/{}fps",
            or_dash(&self.start_offset),
            or_dash(&self.end_offset),
            self.fps.map_or_else(|| "-".to_owned(), |f| f.to_string())
        )
    }
}

#[derive(Deserialize)]
struct InlineData {
    #[serde(default)]
    data: String,
}

#[derive(Deserialize)]
struct FileData {
    #[serde(alias = "file_uri", rename = "fileUri")]
    file_uri: String,
}
