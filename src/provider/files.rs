//! Gemini's Files API: the resumable upload (start, then chunks at their
//! offsets, the last one finalizing), and polling `files/{id}` until the file
//! is `ACTIVE`. The protocol, as googleapis/python-genai speaks it
//! (`_extra_utils.py` `prepare_resumable_upload`, `_api_client.py`
//! `_upload_fd`, `files.py`):
//!
//! 1. `POST {base}/upload/v1beta/files` with `X-Goog-Upload-Protocol:
//!    resumable`, `X-Goog-Upload-Command: start`,
//!    `X-Goog-Upload-Header-Content-Length` and `…-Content-Type`, body
//!    `{"file": {"display_name": …}}`; the answer's `X-Goog-Upload-URL` is
//!    where the bytes go.
//! 2. `POST <upload URL>` per chunk with `X-Goog-Upload-Command: upload`
//!    (`upload, finalize` for the last) and `X-Goog-Upload-Offset`; the
//!    server answers `X-Goog-Upload-Status: active`, then `final` with
//!    `{"file": File}`.
//! 3. `GET {base}/v1beta/files/{id}` until `state` is `ACTIVE` (or `FAILED`).
//! 4. `DELETE {base}/v1beta/files/{id}` once it is no longer needed.
//!
//! A project stores at most 20 GB of files ("The File API lets you store up
//! to 20 GB of files per project", <https://ai.google.dev/gemini-api/docs/files>);
//! an upload past it is a 429 `RESOURCE_EXHAUSTED` on the
//! `file_storage_bytes` metric (quoted in
//! <https://github.com/googleapis/python-genai/issues/1172>), which no wait
//! within a run cures: it fails the item with the API's message.
//!
//! The file is read from disk one chunk at a time, never whole.

use super::common::api_error;
use super::gemini::{classify, classify_answer};
use super::transport::{delete, get, post_bytes};
use super::{ApiError, Client, ErrorClass};
use crate::types::ApiKey;
use reqwest::header::HeaderMap;
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// The chunk size the SDK uploads in (`CHUNK_SIZE = 8 * 1024 * 1024` in
/// python-genai `_api_client.py`).
pub const UPLOAD_CHUNK_BYTES: usize = 8 * 1024 * 1024;

/// The longest wait between two polls of a processing file.
const MAX_POLL: Duration = Duration::from_secs(10);

/// A file in the Files API, as `files/{id}` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoteFile {
    /// `files/{id}`.
    pub name: String,
    /// The URI a request names it by (`fileData.fileUri`).
    pub uri: String,
    /// Its MIME type.
    #[serde(default)]
    pub mime_type: String,
    /// `PROCESSING`, `ACTIVE` or `FAILED` (absent while unknown).
    #[serde(default)]
    pub state: Option<String>,
    /// Why it failed, when `FAILED` (a `google.rpc.Status`).
    #[serde(default)]
    pub error: Option<FileError>,
}

/// The `error` of a failed file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FileError {
    /// The API's reason.
    #[serde(default)]
    pub message: String,
}

/// The finalize answer: `{"file": File}`.
#[derive(Deserialize)]
struct Uploaded {
    file: RemoteFile,
}

/// What to upload.
#[derive(Debug, Clone, Copy)]
pub struct Upload<'a> {
    /// The file on disk.
    pub path: &'a Path,
    /// Its MIME type.
    pub mime: &'a str,
    /// Its size in bytes.
    pub size: u64,
    /// The name shown in the Files API (`displayName`).
    pub display_name: &'a str,
    /// Bytes per chunk request.
    pub chunk_bytes: usize,
}

const AUTH: &str = "x-goog-api-key";

/// The quota metric of a project's Files API storage, in its 429.
const STORAGE_METRIC: &str = "file_storage_bytes";

impl Client {
    /// Uploads a file with the resumable protocol, streaming it from disk in
    /// chunks of `upload.chunk_bytes`; returns the file as finalized (usually
    /// still `PROCESSING`). The upload URL must be on the client's own
    /// endpoint: the key never goes anywhere else.
    pub async fn upload(&self, key: &ApiKey, upload: Upload<'_>) -> Result<RemoteFile, ApiError> {
        let result = self.upload_inner(key, upload).await;
        super::without_key(result, key)
    }

    async fn upload_inner(&self, key: &ApiKey, up: Upload<'_>) -> Result<RemoteFile, ApiError> {
        let start_url = format!("{}/upload/v1beta/files", self.base_url);
        let size = up.size.to_string();
        let meta = serde_json::json!({"file": {"display_name": up.display_name}});
        let (_, headers) = post_bytes(
            self,
            &start_url,
            (AUTH, key.expose()),
            &[
                ("X-Goog-Upload-Protocol", "resumable"),
                ("X-Goog-Upload-Command", "start"),
                ("X-Goog-Upload-Header-Content-Length", &size),
                ("X-Goog-Upload-Header-Content-Type", up.mime),
            ],
            ("application/json", meta.to_string().into_bytes()),
            upload_start_error,
        )
        .await?;
        let url = headers
            .get("x-goog-upload-url")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| transient("the upload start answer has no X-Goog-Upload-URL"))?
            .to_owned();
        if !url.starts_with(&format!("{}/", self.base_url)) {
            return Err(api_error(
                ErrorClass::ItemInvalid,
                None,
                "the upload URL the server gave is not on its own endpoint; not sending there",
            ));
        }
        let mut file = tokio::fs::File::open(up.path)
            .await
            .map_err(|e| unreadable(up.path, &e))?;
        let chunk = up.chunk_bytes.max(1) as u64;
        let mut offset = 0u64;
        loop {
            let mut buf = Vec::with_capacity(chunk.min(up.size.saturating_sub(offset)) as usize);
            (&mut file)
                .take(chunk)
                .read_to_end(&mut buf)
                .await
                .map_err(|e| unreadable(up.path, &e))?;
            let last = offset + buf.len() as u64 >= up.size || buf.is_empty();
            let command = if last { "upload, finalize" } else { "upload" };
            let at = offset.to_string();
            offset += buf.len() as u64;
            let (body, headers) = post_bytes(
                self,
                &url,
                (AUTH, key.expose()),
                &[
                    ("X-Goog-Upload-Command", command),
                    ("X-Goog-Upload-Offset", &at),
                ],
                ("application/octet-stream", buf),
                classify_answer,
            )
            .await?;
            let status = headers
                .get("x-goog-upload-status")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if last {
                if status != "final" {
                    return Err(transient("the finalized upload did not end `final`"));
                }
                let uploaded: Uploaded = serde_json::from_slice(&body)
                    .map_err(|e| transient(&format!("unreadable upload answer: {e}")))?;
                return Ok(uploaded.file);
            }
            if status != "active" {
                return Err(transient(&format!(
                    "the upload ended early (X-Goog-Upload-Status: {status})"
                )));
            }
        }
    }

    /// `GET files/{id}`: the file's state.
    pub async fn file(&self, key: &ApiKey, name: &str) -> Result<RemoteFile, ApiError> {
        let url = format!("{}/v1beta/{name}", self.base_url);
        let result = get(self, &url, AUTH, key.expose(), classify_answer)
            .await
            .and_then(|body| {
                serde_json::from_slice(&body)
                    .map_err(|e| transient(&format!("unreadable file description: {e}")))
            });
        super::without_key(result, key)
    }

    /// `DELETE files/{id}`: the file is gone from the project.
    pub async fn delete_file(&self, key: &ApiKey, name: &str) -> Result<(), ApiError> {
        let url = format!("{}/v1beta/{name}", self.base_url);
        let result = delete(self, &url, (AUTH, key.expose()), classify_answer)
            .await
            .map(drop);
        super::without_key(result, key)
    }

    /// Polls `file` until it is `ACTIVE`, waiting `poll` at first and twice
    /// as long each time (at most 10 s); a `FAILED` file is an
    /// [`ErrorClass::ItemInvalid`] error with the API's reason.
    pub async fn wait_active(
        &self,
        key: &ApiKey,
        mut file: RemoteFile,
        mut poll: Duration,
    ) -> Result<RemoteFile, ApiError> {
        loop {
            match file.state.as_deref() {
                Some("ACTIVE") => return Ok(file),
                Some("FAILED") => {
                    let reason = file.error.map(|e| e.message).unwrap_or_default();
                    return Err(api_error(
                        ErrorClass::ItemInvalid,
                        None,
                        format!("file {} failed processing: {reason}", file.name),
                    ));
                }
                _ => {}
            }
            tokio::time::sleep(poll).await;
            poll = (poll * 2).min(MAX_POLL);
            file = self.file(key, &file.name).await?;
        }
    }
}

/// The upload start's error: a 429 on the project's storage metric fails the
/// item (no wait within a run frees storage); anything else as Gemini's.
fn upload_start_error(status: u16, _headers: &HeaderMap, body: &[u8]) -> ApiError {
    match classify(status, body) {
        full if status == 429 && full.message.contains(STORAGE_METRIC) => ApiError {
            class: ErrorClass::ItemInvalid,
            message: format!("the project's Files API storage is full: {}", full.message),
            ..full
        },
        error => error,
    }
}

fn transient(message: &str) -> ApiError {
    api_error(ErrorClass::Transient, None, message)
}

/// A file that cannot be read fails its items.
fn unreadable(path: &Path, error: &std::io::Error) -> ApiError {
    api_error(
        ErrorClass::ItemInvalid,
        None,
        format!("{}: cannot be read: {error}", path.display()),
    )
}
