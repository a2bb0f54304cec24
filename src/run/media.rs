//! The media of a run's items: small ones go inline, larger files are
//! uploaded through the Files API once per (content, account) and shared by
//! every item naming them within the run. An uploaded file is visible only
//! to its account's keys, so an item whose file is already uploaded (or
//! being uploaded) under an account is pinned to it.

use crate::config::MediaConfig;
use crate::job::{Item, Media};
use crate::pool::Pool;
use crate::provider::{ApiError, Client, ErrorClass, MediaPart, RemoteFile, Upload};
use crate::types::{AccountId, ApiKey};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::io::AsyncReadExt;
use tokio::sync::OnceCell;

/// Bytes read at a time to hash a file.
const HASH_CHUNK: usize = 1024 * 1024;

/// One media input of an item, ready to send or to upload.
#[derive(Debug, Clone)]
pub(super) enum Slot {
    /// Sent as it is (inline bytes, a YouTube URL).
    Ready(MediaPart),
    /// A file to upload (or already uploaded) under the sending account.
    Upload {
        path: PathBuf,
        mime: &'static str,
        size: u64,
        /// SHA-256 of its content, lowercase hex.
        sha256: String,
    },
}

/// An uploaded file, once per (content hash, account).
type Uploaded = Arc<OnceCell<RemoteFile>>;

/// The run's uploads.
#[derive(Debug)]
pub(super) struct Uploads {
    config: MediaConfig,
    pool: Arc<Pool>,
    /// By (content hash, account).
    files: Mutex<HashMap<(String, AccountId), Uploaded>>,
}

fn io_error(path: &Path, error: &std::io::Error) -> String {
    format!("{}: cannot be read: {error}", path.display())
}

impl Uploads {
    /// No uploads yet.
    pub(super) fn new(config: MediaConfig, pool: Arc<Pool>) -> Uploads {
        Uploads {
            config,
            pool,
            files: Mutex::default(),
        }
    }

    fn files(&self) -> std::sync::MutexGuard<'_, HashMap<(String, AccountId), Uploaded>> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The item's media as it will be sent: every file inline when the
    /// request stays under `inline_max_bytes` (base64 takes 4 bytes per 3),
    /// else every file to upload, hashed here.
    pub(super) async fn prepare(&self, item: &Item) -> Result<Vec<Slot>, String> {
        let file_bytes: u64 = item
            .media
            .iter()
            .map(|m| match m {
                Media::File { size, .. } => size.div_ceil(3) * 4,
                Media::YouTube(url) => url.len() as u64,
            })
            .sum();
        let request_bytes = file_bytes + item.prompt.len() as u64;
        let inline = request_bytes < self.config.inline_max_bytes;
        let mut slots = Vec::with_capacity(item.media.len());
        for media in &item.media {
            slots.push(match media {
                Media::YouTube(url) => Slot::Ready(MediaPart::File {
                    mime: None,
                    uri: url.clone(),
                }),
                Media::File { path, mime, .. } if inline => Slot::Ready(MediaPart::Inline {
                    mime: (*mime).to_owned(),
                    data: tokio::fs::read(path)
                        .await
                        .map_err(|e| io_error(path, &e))?,
                }),
                Media::File { path, mime, size } => Slot::Upload {
                    path: path.clone(),
                    mime,
                    size: *size,
                    sha256: hash(path).await.map_err(|e| io_error(path, &e))?,
                },
            });
        }
        Ok(slots)
    }

    /// The account the item must be sent with: one that has (or is
    /// uploading) its first file to upload; `None` when none has yet.
    pub(super) fn pin(&self, slots: &[Slot]) -> Option<AccountId> {
        let sha = slots.iter().find_map(|s| match s {
            Slot::Upload { sha256, .. } => Some(sha256),
            Slot::Ready(_) => None,
        })?;
        let files = self.files();
        files
            .keys()
            .filter(|(hash, _)| hash == sha)
            .map(|&(_, account)| account)
            .min()
    }

    /// The parts to send with `key` (of the account the call leased):
    /// every file to upload is uploaded under that account, once, and
    /// waited for until `ACTIVE`.
    pub(super) async fn parts(
        &self,
        slots: &[Slot],
        client: &Client,
        key: &ApiKey,
    ) -> Result<Vec<MediaPart>, ApiError> {
        let account = self.pool.account_of(key);
        let mut parts = Vec::with_capacity(slots.len());
        for slot in slots {
            let (path, mime, size, sha256) = match slot {
                Slot::Ready(part) => {
                    parts.push(part.clone());
                    continue;
                }
                Slot::Upload {
                    path,
                    mime,
                    size,
                    sha256,
                } => (path, *mime, *size, sha256),
            };
            let Some(account) = account else {
                return Err(not_in_pool());
            };
            let cell = Arc::clone(self.files().entry((sha256.clone(), account)).or_default());
            let file = cell
                .get_or_try_init(|| async {
                    let display_name = path
                        .file_name()
                        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
                    let upload = Upload {
                        path,
                        mime,
                        size,
                        display_name: &display_name,
                        chunk_bytes: crate::provider::UPLOAD_CHUNK_BYTES,
                    };
                    let file = client.upload(key, upload).await?;
                    client.wait_active(key, file, self.config.poll).await
                })
                .await?;
            parts.push(MediaPart::File {
                mime: Some(mime.to_owned()),
                uri: file.uri.clone(),
            });
        }
        Ok(parts)
    }
}

fn not_in_pool() -> ApiError {
    ApiError {
        class: ErrorClass::ItemInvalid,
        status: None,
        message: "the leased key belongs to no account of the pool".to_owned(),
        billed: None,
        stated: None,
    }
}

/// The SHA-256 of a file's content (lowercase hex), read in chunks.
async fn hash(path: &Path) -> std::io::Result<String> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_CHUNK];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}
