//! Files uploaded to a provider's Files API, remembered until they expire so
//! a later run reuses them, and what each run did with uploads (for the
//! report). Keyed by (content SHA-256, account): a file is visible only to
//! the project that uploaded it.
//!
//! Owns: the upload rows and upload events, written in the recorder's
//! transaction, and their queries. Never: talking to a Files API or
//! deciding when to upload, reuse or delete (the run's media stage does).

use super::rows::stored_as_text;
use super::{RunId, Store, StoreError, UnknownValue};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{params, Transaction};
use serde::Serialize;

/// Where an upload stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UploadState {
    /// Processed and usable until it expires.
    Active,
    /// The API could not process it: its items fail with `error`, and it is
    /// not uploaded again while the row lives.
    Failed,
}

stored_as_text!(UploadState in "uploads"."state" {
    Active => "active",
    Failed => "failed",
});

/// An upload as the state file keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRow {
    /// SHA-256 of the file's content, lowercase hex.
    pub sha256: String,
    /// The account (config name) whose project holds it.
    pub account: String,
    /// `files/{id}`.
    pub name: String,
    /// The URI requests name it by.
    pub uri: String,
    /// Its MIME type.
    pub mime: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was uploaded (as the store keeps times).
    pub created_at: String,
    /// When the API forgets it: `created_at` + 48 h.
    pub expires_at: String,
    /// Usable, or failed.
    pub state: UploadState,
    /// The API's reason, when failed.
    pub error: Option<String>,
}

/// A change to the remembered uploads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadChange {
    /// An upload is usable (or failed for good): remembered, replacing any
    /// earlier one of the same content and account.
    Put(UploadRow),
    /// An upload is gone (deleted, expired, refused): forgotten.
    Gone {
        /// Its content's SHA-256.
        sha256: String,
        /// Its account.
        account: String,
    },
}

/// What a run did with an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UploadEventKind {
    /// A file uploaded for the first time under an account.
    Upload,
    /// A file uploaded again: its earlier upload expired or was deleted.
    Reupload,
    /// An upload of an earlier run reused.
    Reuse,
    /// An upload deleted after the run.
    Delete,
    /// `media.on_unavailable: reupload`: the account could not serve, its
    /// items went to another account (which uploads the file).
    Repin,
    /// `media.on_unavailable: wait`: an item waits for the account's day
    /// quota (it is deferred).
    Wait,
}

stored_as_text!(UploadEventKind in "upload_events"."kind" {
    Upload => "upload",
    Reupload => "reupload",
    Reuse => "reuse",
    Delete => "delete",
    Repin => "repin",
    Wait => "wait",
});

/// One thing a run did with an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadEvent {
    /// The account.
    pub account: String,
    /// What happened.
    pub kind: UploadEventKind,
    /// Bytes sent (an upload or re-upload); 0 for the rest.
    pub bytes: u64,
}

/// A run's uploads under one account, as the report counts them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UploadCount {
    /// The account.
    pub account: String,
    /// Files uploaded for the first time.
    pub uploads: u64,
    /// Files uploaded again after their upload expired or was deleted.
    pub reuploads: u64,
    /// Uploads of earlier runs reused.
    pub reused: u64,
    /// Bytes uploaded (uploads and re-uploads).
    pub bytes: u64,
    /// Uploads deleted after the run.
    pub deleted: u64,
    /// Times its items moved to another account (`on_unavailable: reupload`).
    pub repins: u64,
    /// Items that waited for it (`on_unavailable: wait`).
    pub waits: u64,
}

/// Applies a batch's upload changes and events, in its transaction.
pub(super) fn apply(
    tx: &Transaction<'_>,
    run: RunId,
    changes: &[UploadChange],
    events: &[UploadEvent],
) -> rusqlite::Result<()> {
    put_changes(tx, changes)?;
    if events.is_empty() {
        return Ok(());
    }
    let mut event = tx.prepare_cached(
        "INSERT INTO upload_events (run_id, account, kind, bytes, at) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    let at = super::now();
    for e in events {
        event.execute(params![
            run.0,
            e.account,
            e.kind,
            i64::try_from(e.bytes).unwrap_or(i64::MAX),
            at
        ])?;
    }
    Ok(())
}

/// Applies upload changes (none: nothing), in the transaction `tx`.
fn put_changes(tx: &Transaction<'_>, changes: &[UploadChange]) -> rusqlite::Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let mut put = tx.prepare_cached(
        "INSERT OR REPLACE INTO uploads (sha256, account, name, uri, mime, size, created_at,
         expires_at, state, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    let mut gone = tx.prepare_cached("DELETE FROM uploads WHERE sha256 = ?1 AND account = ?2")?;
    for change in changes {
        match change {
            UploadChange::Put(u) => put.execute(params![
                u.sha256,
                u.account,
                u.name,
                u.uri,
                u.mime,
                i64::try_from(u.size).unwrap_or(i64::MAX),
                u.created_at,
                u.expires_at,
                u.state,
                u.error,
            ])?,
            UploadChange::Gone { sha256, account } => gone.execute(params![sha256, account])?,
        };
    }
    // Expired uploads are of no use to any run: forgotten on the way.
    tx.prepare_cached("DELETE FROM uploads WHERE expires_at <= ?1")?
        .execute([super::now()])?;
    Ok(())
}

impl Store {
    /// Remembers (or forgets) uploads made outside a run (`keyfan estimate
    /// --count-tokens` uploads the files it counts), in one transaction, for
    /// the runs that follow to reuse.
    pub fn remember_uploads(&mut self, changes: &[UploadChange]) -> Result<(), StoreError> {
        let path = self.path.clone();
        let wrap = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(wrap)?;
        put_changes(&tx, changes).map_err(wrap)?;
        tx.commit().map_err(wrap)
    }

    /// The uploads that have not expired by `now` (as the store keeps
    /// times), for a run to reuse.
    pub fn live_uploads(&self, now: &str) -> Result<Vec<UploadRow>, StoreError> {
        self.collect(
            "SELECT sha256, account, name, uri, mime, size, created_at, expires_at, state, error
             FROM uploads WHERE expires_at > ?1 ORDER BY account, sha256",
            [now],
            |row| {
                Ok(UploadRow {
                    sha256: row.get(0)?,
                    account: row.get(1)?,
                    name: row.get(2)?,
                    uri: row.get(3)?,
                    mime: row.get(4)?,
                    size: row.get::<_, i64>(5)?.max(0).unsigned_abs(),
                    created_at: row.get(6)?,
                    expires_at: row.get(7)?,
                    state: row.get(8)?,
                    error: row.get(9)?,
                })
            },
        )
    }

    /// What `run` did with uploads, per account (by name).
    pub fn upload_counts(&self, run: RunId) -> Result<Vec<UploadCount>, StoreError> {
        let mut counts: Vec<UploadCount> = Vec::new();
        self.each(
            "SELECT account, kind, count(*), sum(bytes) FROM upload_events WHERE run_id = ?1
             GROUP BY account, kind ORDER BY account",
            [run.0],
            |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, UploadEventKind>(1)?,
                    row.get::<_, i64>(2)?.max(0).unsigned_abs(),
                    row.get::<_, i64>(3)?.max(0).unsigned_abs(),
                ))
            },
            |(account, kind, n, bytes)| {
                if counts.last().is_none_or(|c| c.account != account) {
                    counts.push(UploadCount {
                        account,
                        ..UploadCount::default()
                    });
                }
                if let Some(count) = counts.last_mut() {
                    count.bytes += bytes;
                    *match kind {
                        UploadEventKind::Upload => &mut count.uploads,
                        UploadEventKind::Reupload => &mut count.reuploads,
                        UploadEventKind::Reuse => &mut count.reused,
                        UploadEventKind::Delete => &mut count.deleted,
                        UploadEventKind::Repin => &mut count.repins,
                        UploadEventKind::Wait => &mut count.waits,
                    } += n;
                }
                true
            },
        )?;
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Batch;

    fn row(sha256: &str, account: &str, expires_at: &str) -> UploadRow {
        UploadRow {
            sha256: sha256.to_owned(),
            account: account.to_owned(),
            name: format!("files/{sha256}"),
            uri: format!("https://example.test/v1beta/files/{sha256}"),
            mime: "video/mp4".to_owned(),
            size: 100,
            created_at: "2026-11-28T10:00:00.000Z".to_owned(),
            expires_at: expires_at.to_owned(),
            state: UploadState::Active,
            error: None,
        }
    }

    #[test]
    fn uploads_are_remembered_until_they_expire_and_counted_per_run() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        let run = store.create_run("job.jsonl", "hash", false).unwrap();
        let event = |account: &str, kind, bytes| UploadEvent {
            account: account.to_owned(),
            kind,
            bytes,
        };
        let batch = Batch {
            uploads: vec![
                UploadChange::Put(row("aa", "a", "2999-01-01T00:00:00.000Z")),
                UploadChange::Put(row("bb", "b", "2999-01-01T00:00:00.000Z")),
                UploadChange::Put(row("cc", "a", "2000-01-01T00:00:00.000Z")),
            ],
            upload_events: vec![
                event("a", UploadEventKind::Upload, 100),
                event("a", UploadEventKind::Reupload, 100),
                event("b", UploadEventKind::Reuse, 0),
                event("b", UploadEventKind::Repin, 0),
            ],
            ..Batch::default()
        };
        store.commit(run, &batch).unwrap();
        let live = store.live_uploads(&crate::store::now()).unwrap();
        let names: Vec<_> = live
            .iter()
            .map(|u| (u.sha256.as_str(), u.account.as_str()))
            .collect();
        assert_eq!(
            names,
            [("aa", "a"), ("bb", "b")],
            "the expired one is not reused"
        );

        let gone = Batch {
            uploads: vec![UploadChange::Gone {
                sha256: "aa".into(),
                account: "a".into(),
            }],
            upload_events: vec![event("a", UploadEventKind::Delete, 0)],
            ..Batch::default()
        };
        store.commit(run, &gone).unwrap();
        let live = store.live_uploads(&crate::store::now()).unwrap();
        assert_eq!(live, [row("bb", "b", "2999-01-01T00:00:00.000Z")]);

        let counts = store.upload_counts(run).unwrap();
        assert_eq!(
            counts,
            [
                UploadCount {
                    account: "a".into(),
                    uploads: 1,
                    reuploads: 1,
                    bytes: 200,
                    deleted: 1,
                    ..UploadCount::default()
                },
                UploadCount {
                    account: "b".into(),
                    reused: 1,
                    repins: 1,
                    ..UploadCount::default()
                },
            ]
        );
    }
}
