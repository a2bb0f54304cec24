//! The media of a run's items: small ones go inline, larger files are
//! uploaded through the Files API once per (content, account) and shared by
//! every item naming them. An uploaded file is visible only to its
//! account's keys, so an item whose file is already uploaded (or being
//! uploaded) under an account is pinned to it.
//!
//! Uploads outlive the run: each is committed to the state file as soon as
//! it is `ACTIVE` (before any item uses it), so a later run (or a rerun
//! after a kill) reuses it until it expires 48 hours after its upload. An
//! upload the API no longer knows (expired early, deleted) is uploaded
//! again, once per request. After a run that left nothing for later, the
//! run's uploads are deleted unless `media.keep_uploads` is set.

use super::{Event, Notice};
use crate::config::{MediaConfig, OnUnavailable};
use crate::job::{Item, Media};
use crate::pool::Pool;
use crate::provider::{
    ApiError, Client, ErrorClass, MediaPart, RemoteFile, Reply, Request, Upload,
};
use crate::store::{
    Batch, RunId, Store, StoreError, UploadChange, UploadEvent, UploadEventKind, UploadRow,
    UploadState,
};
use crate::types::{AccountId, ApiKey};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot, OnceCell, Semaphore};

/// Bytes read at a time to hash a file.
const HASH_CHUNK: usize = 1024 * 1024;

/// How long the Files API keeps a file: "Files are stored for 48 hours"
/// (<https://ai.google.dev/gemini-api/docs/files>).
const FILE_LIFETIME: chrono::TimeDelta = chrono::TimeDelta::hours(48);

/// One media input of an item, ready to send or to upload.
#[derive(Debug, Clone)]
pub(crate) enum Slot {
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

/// An upload that reached its end: usable, or failed for good.
#[derive(Debug)]
struct Held {
    file: RemoteFile,
    /// Why the API could not process it: every item naming it fails with
    /// this, and it is not uploaded again.
    failed: Option<String>,
    /// Remembered from an earlier run and not yet used in this one: its
    /// first use counts as a reuse.
    earlier: AtomicBool,
}

/// One (content, account): its upload, once.
#[derive(Debug, Default)]
struct Entry {
    held: OnceCell<Held>,
    /// An earlier upload of it is gone: this one is a re-upload.
    again: bool,
}

/// The run's uploads.
#[derive(Debug)]
pub(crate) struct Uploads {
    config: MediaConfig,
    pool: Arc<Pool>,
    /// To the recorder, which owns the state file.
    events: mpsc::UnboundedSender<Event>,
    /// By (content hash, account).
    files: Mutex<HashMap<(String, AccountId), Arc<Entry>>>,
    /// Accounts that could not serve (the run was told): under
    /// `on_unavailable: reupload` their items go elsewhere.
    unavailable: Mutex<HashSet<AccountId>>,
    /// Uploads in flight at most (`media.upload_concurrency`).
    transfers: Semaphore,
}

/// What the run holds once its items are done: the uploads to delete
/// after it (without the recorder's channel, which must close first).
#[derive(Debug)]
pub(super) struct Leftovers {
    keep: bool,
    uploads: Vec<(AccountId, String, String)>,
}

fn io_error(path: &Path, error: &std::io::Error) -> String {
    format!("{}: cannot be read: {error}", path.display())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Uploads {
    /// The uploads `remembered` by earlier runs (those of accounts the pool
    /// has), to reuse; new ones are told to the recorder through `events`.
    pub(super) fn new(
        config: MediaConfig,
        pool: Arc<Pool>,
        events: mpsc::UnboundedSender<Event>,
        remembered: Vec<UploadRow>,
    ) -> Uploads {
        let mut files = HashMap::new();
        for row in remembered {
            let Some(account) = pool.account_named(&row.account) else {
                continue;
            };
            let held = Held {
                failed: (row.state == UploadState::Failed).then(|| row.error.unwrap_or_default()),
                file: RemoteFile {
                    name: row.name,
                    uri: row.uri,
                    mime_type: row.mime,
                    state: Some(row.state.as_str().to_uppercase()),
                    error: None,
                },
                earlier: AtomicBool::new(true),
            };
            let entry = Entry {
                held: OnceCell::new_with(Some(held)),
                again: false,
            };
            files.insert((row.sha256, account), Arc::new(entry));
        }
        Uploads {
            transfers: Semaphore::new(config.upload_concurrency.max(1)),
            config,
            pool,
            events,
            files: Mutex::new(files),
            unavailable: Mutex::default(),
        }
    }

    /// The item's media as it will be sent: every file inline when the
    /// request stays under `inline_max_bytes` (base64 takes 4 bytes per 3),
    /// else every file to upload, hashed here.
    pub(crate) async fn prepare(&self, item: &Item) -> Result<Vec<Slot>, String> {
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
    /// uploading) its first file to upload and has not been found unable
    /// to serve; `None` when none has.
    pub(crate) fn pin(&self, slots: &[Slot]) -> Option<AccountId> {
        let sha = slots.iter().find_map(|s| match s {
            Slot::Upload { sha256, .. } => Some(sha256),
            Slot::Ready(_) => None,
        })?;
        // Under `wait`, the account stays the one to wait for.
        let unavailable = match self.config.on_unavailable {
            OnUnavailable::Reupload => lock(&self.unavailable).clone(),
            OnUnavailable::Wait => HashSet::new(),
        };
        lock(&self.files)
            .keys()
            .filter(|(hash, account)| hash == sha && !unavailable.contains(account))
            .map(|&(_, account)| account)
            .min()
    }

    /// The item pinned to `account` cannot be served by it (`why`): under
    /// `media.on_unavailable: reupload` the account is avoided from now on
    /// (its items go to an account with room, which uploads the files) and
    /// `true` says to send the item again; under `wait` the item waits
    /// (it is deferred). The first time per account, the run is told.
    pub(super) fn unavailable(&self, account: AccountId, why: &str) -> bool {
        let policy = self.config.on_unavailable;
        let first = lock(&self.unavailable).insert(account);
        let name = self.pool.account_name(account).to_owned();
        if first {
            let _ = self.events.send(Event::Notice(Notice::MediaUnavailable {
                account: name.clone(),
                policy,
                why: why.to_owned(),
            }));
        }
        let kind = match policy {
            OnUnavailable::Reupload if !first => return true,
            OnUnavailable::Reupload => UploadEventKind::Repin,
            OnUnavailable::Wait => UploadEventKind::Wait,
        };
        self.tell(Vec::new(), vec![event(name, kind, 0)]);
        policy == OnUnavailable::Reupload
    }

    /// Sends `request` with `key` (of the account the call leased), its
    /// files uploaded under that account first (once each, waited for
    /// until `ACTIVE`). A file the API no longer knows (a 403 or 404 for an
    /// upload that expired or was deleted) is uploaded again, once.
    pub(super) async fn generate(
        &self,
        slots: &[Slot],
        client: &Client,
        key: &ApiKey,
        request: &Request<'_>,
    ) -> Result<Reply, ApiError> {
        self.send(slots, client, key, request.model, |parts| async move {
            let sent = Request {
                media: &parts,
                ..request.clone()
            };
            client.generate(key, &sent).await
        })
        .await
    }

    /// Counts `request`'s input tokens with the API (`countTokens`) and
    /// `key`, its files uploaded under that account first, exactly as
    /// [`Uploads::generate`] would send them.
    pub(crate) async fn count(
        &self,
        slots: &[Slot],
        client: &Client,
        key: &ApiKey,
        request: &Request<'_>,
    ) -> Result<u64, ApiError> {
        self.send(slots, client, key, request.model, |parts| async move {
            let sent = Request {
                media: &parts,
                ..request.clone()
            };
            client.count_tokens(key, &sent).await
        })
        .await
    }

    /// `op` with the media parts of `slots` for `key` (uploaded under its
    /// account first); a file the API no longer knows is uploaded again,
    /// once, and `op` made again.
    async fn send<T, Fut>(
        &self,
        slots: &[Slot],
        client: &Client,
        key: &ApiKey,
        model: &str,
        op: impl Fn(Vec<MediaPart>) -> Fut,
    ) -> Result<T, ApiError>
    where
        Fut: std::future::Future<Output = Result<T, ApiError>>,
    {
        let account = self.pool.account_of(key).ok_or_else(not_in_pool)?;
        let mut again = true;
        loop {
            let (parts, used) = self.parts(slots, client, key, account, model).await?;
            match op(parts).await {
                Err(error) if again && file_gone(&error) => {
                    again = false;
                    self.forget(account, &used, &error.message);
                }
                result => return result,
            }
        }
    }

    /// The parts to send with `key` of `account`, and the uploads they
    /// name (content hash, file name).
    async fn parts(
        &self,
        slots: &[Slot],
        client: &Client,
        key: &ApiKey,
        account: AccountId,
        model: &str,
    ) -> Result<(Vec<MediaPart>, Vec<(String, String)>), ApiError> {
        let mut parts = Vec::with_capacity(slots.len());
        let mut used = Vec::new();
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
            // A file the API failed to process under one account fails
            // under any: it is not uploaded again.
            if let Some((name, reason)) = self.failed(sha256) {
                return Err(failed(&name, &reason));
            }
            let entry = Arc::clone(
                lock(&self.files)
                    .entry((sha256.clone(), account))
                    .or_default(),
            );
            let held = entry
                .held
                .get_or_try_init(|| async {
                    let upload = Upload {
                        path,
                        mime,
                        size,
                        display_name: &path
                            .file_name()
                            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                        chunk_bytes: crate::provider::UPLOAD_CHUNK_BYTES,
                    };
                    self.upload(client, key, (account, model), sha256, upload, entry.again)
                        .await
                })
                .await?;
            if held.earlier.swap(false, Ordering::Relaxed) {
                let name = self.pool.account_name(account).to_owned();
                self.tell(Vec::new(), vec![event(name, UploadEventKind::Reuse, 0)]);
            }
            if let Some(reason) = &held.failed {
                return Err(failed(&held.file.name, reason));
            }
            used.push((sha256.clone(), held.file.name.clone()));
            parts.push(MediaPart::File {
                mime: Some(mime.to_owned()),
                uri: held.file.uri.clone(),
            });
        }
        Ok((parts, used))
    }

    /// The name of the upload of `sha256` the API failed to process, and
    /// why, under whichever account it was.
    fn failed(&self, sha256: &str) -> Option<(String, String)> {
        lock(&self.files).iter().find_map(|((sha, _), entry)| {
            let held = entry.held.get().filter(|_| sha == sha256)?;
            Some((held.file.name.clone(), held.failed.clone()?))
        })
    }

    /// Uploads a file under `key` and waits for its processing; an upload
    /// that ends (`ACTIVE`, or `FAILED` with the API's reason) is committed
    /// to the state file before this returns. The transfer takes one of
    /// the `upload_concurrency` slots, and counts as one request in the
    /// account's per-minute window for `model`.
    async fn upload(
        &self,
        client: &Client,
        key: &ApiKey,
        (account, model): (AccountId, &str),
        sha256: &str,
        upload: Upload<'_>,
        again: bool,
    ) -> Result<Held, ApiError> {
        let file = {
            // The semaphore is never closed.
            let _slot = self.transfers.acquire().await.ok();
            self.pool.count_request(account, model);
            client.upload(key, upload).await?
        };
        let (name, uri) = (file.name.clone(), file.uri.clone());
        let (file, failed) = match client.wait_active(key, file, self.config.poll).await {
            Ok(file) => (file, None),
            // `FAILED` (no HTTP status: the file's own state), not a
            // failed poll.
            Err(error)
                if matches!(error.class, ErrorClass::ItemInvalid) && error.status.is_none() =>
            {
                let file = RemoteFile {
                    name,
                    uri,
                    mime_type: upload.mime.to_owned(),
                    state: Some("FAILED".to_owned()),
                    error: None,
                };
                (file, Some(error.message))
            }
            Err(error) => return Err(error),
        };
        let created = chrono::Utc::now();
        let stamp = |t: chrono::DateTime<chrono::Utc>| {
            t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        };
        let account_name = self.pool.account_name(account).to_owned();
        let row = UploadRow {
            sha256: sha256.to_owned(),
            account: account_name.clone(),
            name: file.name.clone(),
            uri: file.uri.clone(),
            mime: upload.mime.to_owned(),
            size: upload.size,
            created_at: stamp(created),
            expires_at: stamp(created + FILE_LIFETIME),
            state: match failed {
                Some(_) => UploadState::Failed,
                None => UploadState::Active,
            },
            error: failed.clone(),
        };
        let kind = match again {
            true => UploadEventKind::Reupload,
            false => UploadEventKind::Upload,
        };
        let committed = self.tell(
            vec![UploadChange::Put(row)],
            vec![event(account_name, kind, upload.size)],
        );
        // Durable before any item uses it: a rerun after a kill finds it.
        let _ = committed.await;
        Ok(Held {
            file,
            failed,
            earlier: AtomicBool::new(false),
        })
    }

    /// Forgets the uploads of `used` (under `account`) the API said are
    /// gone (those `message` names; all of them when it names none), so
    /// the next use uploads them again. An upload already replaced by a
    /// newer one is left alone: concurrent items re-upload it once.
    fn forget(&self, account: AccountId, used: &[(String, String)], message: &str) {
        let named: Vec<_> = used
            .iter()
            .filter(|(_, name)| message.contains(name.trim_start_matches("files/")))
            .collect();
        let gone = match named.is_empty() {
            true => used.iter().collect(),
            false => named,
        };
        let mut changes = Vec::new();
        let mut files = lock(&self.files);
        for (sha256, name) in gone {
            let key = (sha256.clone(), account);
            let current = files.get(&key).and_then(|e| e.held.get());
            if current.is_some_and(|held| held.file.name == *name) {
                files.insert(
                    key,
                    Arc::new(Entry {
                        held: OnceCell::new(),
                        again: true,
                    }),
                );
                changes.push(UploadChange::Gone {
                    sha256: sha256.clone(),
                    account: self.pool.account_name(account).to_owned(),
                });
            }
        }
        drop(files);
        if !changes.is_empty() {
            drop(self.tell(changes, Vec::new()));
        }
    }

    /// Tells the recorder; the answer comes once it is committed.
    fn tell(&self, changes: Vec<UploadChange>, events: Vec<UploadEvent>) -> oneshot::Receiver<()> {
        let (committed, answer) = oneshot::channel();
        let _ = self.events.send(Event::Uploads {
            changes,
            events,
            committed,
        });
        answer
    }

    /// What is left once the items are done: the uploads to delete, unless
    /// `keep_uploads`.
    pub(super) fn leftovers(self) -> Leftovers {
        let uploads = self
            .files
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .into_iter()
            .filter_map(|((sha256, account), entry)| {
                let held = entry.held.get()?;
                // An earlier run's upload this run did not use is not its own.
                (!held.earlier.load(Ordering::Relaxed))
                    .then(|| (account, sha256, held.file.name.clone()))
            })
            .collect();
        Leftovers {
            keep: self.config.keep_uploads,
            uploads,
        }
    }
}

/// What the uploads made outside a run came to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct UploadTally {
    /// Files uploaded (or uploaded again).
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Uploads of earlier runs reused.
    pub reused: u64,
}

/// Uploads made outside a run (`keyfan estimate --count-tokens`): those
/// the state file remembers are reused, and each new one is remembered in
/// it as soon as it is `ACTIVE` (by a thread of its own, as the run's
/// recorder does), for the runs that follow to reuse. None is deleted:
/// the run that uses them deletes them after it (unless
/// `media.keep_uploads`), or they expire.
#[derive(Debug)]
pub(crate) struct Detached {
    uploads: Uploads,
    writer: std::thread::JoinHandle<Result<UploadTally, StoreError>>,
}

impl Detached {
    /// Uploads under `pool`'s accounts, remembered in the state file at
    /// `state` (created at the first upload if it does not exist).
    pub(crate) fn open(
        config: MediaConfig,
        pool: Arc<Pool>,
        state: &Path,
    ) -> Result<Detached, StoreError> {
        let mut store = match state.exists() {
            true => Some(Store::open(state)?),
            false => None,
        };
        let remembered = match &store {
            Some(store) => store.live_uploads(&crate::store::now())?,
            None => Vec::new(),
        };
        let (events, mut received) = mpsc::unbounded_channel();
        let state = state.to_owned();
        let writer = std::thread::spawn(move || {
            let mut tally = UploadTally::default();
            while let Some(event) = received.blocking_recv() {
                let Event::Uploads {
                    changes,
                    events,
                    committed,
                } = event
                else {
                    continue;
                };
                if !changes.is_empty() {
                    if store.is_none() {
                        store = Some(Store::open(&state)?);
                    }
                    if let Some(store) = &mut store {
                        store.remember_uploads(&changes)?;
                    }
                }
                for e in events {
                    match e.kind {
                        UploadEventKind::Upload | UploadEventKind::Reupload => {
                            tally.files += 1;
                            tally.bytes += e.bytes;
                        }
                        UploadEventKind::Reuse => tally.reused += 1,
                        _ => {}
                    }
                }
                let _ = committed.send(());
            }
            Ok(tally)
        });
        Ok(Detached {
            uploads: Uploads::new(config, pool, events, remembered),
            writer,
        })
    }

    /// The uploads, to prepare, pin and count items with.
    pub(crate) fn uploads(&self) -> &Uploads {
        &self.uploads
    }

    /// Waits until every upload is in the state file; what was uploaded
    /// and reused.
    pub(crate) fn finish(self) -> Result<UploadTally, StoreError> {
        drop(self.uploads);
        self.writer
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

impl Leftovers {
    /// Deletes the run's uploads (`DELETE files/{id}` with a usable key of
    /// each one's account, counted in its per-minute window for `model`)
    /// and forgets them in the state file. Kept under `keep_uploads`, or
    /// when the run left items for a later run (`finished` false), which
    /// will want them. A failed deletion leaves the upload remembered: it
    /// expires on its own.
    pub(super) async fn delete(
        self,
        finished: bool,
        (pool, clients): (&Pool, &super::Clients),
        model: &str,
        (store, run): (&mut Store, RunId),
    ) -> Result<(), StoreError> {
        if self.keep || !finished {
            return Ok(());
        }
        let mut batch = Batch::default();
        for (account, sha256, name) in self.uploads {
            let Some(key) = pool.usable_key(account) else {
                continue;
            };
            pool.count_request(account, model);
            if clients.get(account).delete_file(&key, &name).await.is_ok() {
                let account = pool.account_name(account).to_owned();
                batch
                    .upload_events
                    .push(event(account.clone(), UploadEventKind::Delete, 0));
                batch.uploads.push(UploadChange::Gone { sha256, account });
            }
        }
        if !batch.uploads.is_empty() {
            store.commit(run, &batch)?;
        }
        Ok(())
    }
}

fn event(account: String, kind: UploadEventKind, bytes: u64) -> UploadEvent {
    UploadEvent {
        account,
        kind,
        bytes,
    }
}

/// A 403 or 404 naming a file: the upload expired or was deleted.
fn file_gone(error: &ApiError) -> bool {
    matches!(error.class, ErrorClass::ItemInvalid)
        && matches!(error.status, Some(403 | 404))
        && error.message.contains("File")
}

/// The error of every item naming a file the API could not process.
fn failed(name: &str, reason: &str) -> ApiError {
    ApiError {
        class: ErrorClass::ItemInvalid,
        status: None,
        message: match reason.contains(name) {
            true => reason.to_owned(),
            false => format!("file {name} failed processing: {reason}"),
        },
        billed: None,
        stated: None,
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
