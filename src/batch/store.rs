//! The batches in the state file: one row per provider batch, written as
//! `creating` (with its items, marked `submitted`) in one transaction before
//! its create is sent, so that no kill can lose a batch or put an item in
//! two; and the queries collection needs.

use crate::provider::batch::BatchState;
use crate::store::{ItemStatus, RunId, Store, StoreError};
use rusqlite::{params, OptionalExtension, Row};
use serde::Serialize;

/// Where a recorded batch stands, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Recorded, its create sent or about to be: not known to exist yet.
    Creating,
    /// Known to the provider, as it last said.
    Provider(BatchState),
    /// Its results are in the state file; its unfinished items went back
    /// to pending.
    Collected,
    /// Never created (its create was refused, or no batch of its name
    /// exists): its items went back to pending.
    Abandoned,
}

impl Stage {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Creating => "creating",
            Stage::Provider(BatchState::Pending) => "pending",
            Stage::Provider(BatchState::Running) => "running",
            Stage::Provider(BatchState::Succeeded) => "succeeded",
            Stage::Provider(BatchState::Failed) => "failed",
            Stage::Provider(BatchState::Cancelled) => "cancelled",
            Stage::Provider(BatchState::Expired) => "expired",
            Stage::Collected => "collected",
            Stage::Abandoned => "abandoned",
        }
    }

    fn parse(text: &str) -> Stage {
        match text {
            "creating" => Stage::Creating,
            "pending" => Stage::Provider(BatchState::Pending),
            "running" => Stage::Provider(BatchState::Running),
            "succeeded" => Stage::Provider(BatchState::Succeeded),
            "failed" => Stage::Provider(BatchState::Failed),
            "cancelled" => Stage::Provider(BatchState::Cancelled),
            "expired" => Stage::Provider(BatchState::Expired),
            "abandoned" => Stage::Abandoned,
            // Anything else was written by a newer keyfan: leave it be.
            _ => Stage::Collected,
        }
    }

    /// Whether the batch still has items of the run in it.
    pub fn is_open(self) -> bool {
        !matches!(self, Stage::Collected | Stage::Abandoned)
    }
}

impl Serialize for Stage {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A recorded batch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchRow {
    /// Its row id in the state file.
    pub id: i64,
    /// The run it belongs to.
    #[serde(serialize_with = "run_id")]
    pub run: RunId,
    /// The name keyfan gave it, to find it by.
    pub display_name: String,
    /// The provider's id, once known.
    pub name: Option<String>,
    /// The account it went to.
    pub account: String,
    /// The fingerprint of the key it was created with.
    pub key: String,
    /// The model of its requests.
    pub model: String,
    /// Where it stands.
    pub stage: Stage,
    /// Items in it.
    pub items: u64,
    /// When it was recorded (RFC 3339 UTC).
    pub submitted_at: String,
    /// When it was seen ended (RFC 3339 UTC).
    pub ended_at: Option<String>,
    /// When its results were collected (RFC 3339 UTC).
    pub collected_at: Option<String>,
    /// The API's reason for a failed, expired, cancelled or refused batch.
    pub error: Option<String>,
    /// Result lines whose key named no item of the batch.
    pub unknown_keys: u64,
    /// The first few of those keys, comma-separated.
    pub unknown_first: Option<String>,
    /// What its results cost at the batch price (USD).
    pub cost_usd: f64,
    /// What the same usage would have cost online (USD).
    pub online_usd: f64,
}

fn run_id<S: serde::Serializer>(run: &RunId, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_i64(run.0)
}

const COLUMNS: &str = "id, run_id, display_name, name, account, key, model, state, items, \
     submitted_at, ended_at, collected_at, error, unknown_keys, unknown_first, cost_usd, online_usd";

impl BatchRow {
    fn from_row(row: &Row<'_>) -> rusqlite::Result<BatchRow> {
        Ok(BatchRow {
            id: row.get(0)?,
            run: RunId(row.get(1)?),
            display_name: row.get(2)?,
            name: row.get(3)?,
            account: row.get(4)?,
            key: row.get(5)?,
            model: row.get(6)?,
            stage: Stage::parse(&row.get::<_, String>(7)?),
            items: row.get::<_, i64>(8)?.unsigned_abs(),
            submitted_at: row.get(9)?,
            ended_at: row.get(10)?,
            collected_at: row.get(11)?,
            error: row.get(12)?,
            unknown_keys: row.get::<_, i64>(13)?.unsigned_abs(),
            unknown_first: row.get(14)?,
            cost_usd: row.get(15)?,
            online_usd: row.get(16)?,
        })
    }

    /// Seconds from submission to its end (or to now, while it runs).
    pub fn duration_s(&self) -> f64 {
        let parse = |s: &str| chrono::DateTime::parse_from_rfc3339(s).ok();
        let end = self
            .ended_at
            .as_deref()
            .and_then(parse)
            .map_or_else(chrono::Utc::now, |t| t.with_timezone(&chrono::Utc));
        parse(&self.submitted_at).map_or(0.0, |start| {
            (end - start.with_timezone(&chrono::Utc))
                .num_milliseconds()
                .max(0) as f64
                / 1000.0
        })
    }
}

/// What a new batch is: where it goes and what it holds.
pub(crate) struct Intent<'a> {
    pub run: RunId,
    pub account: &'a str,
    pub key: &'a str,
    pub model: &'a str,
    /// A short tag of the job (its hash's start), in the display name.
    pub tag: &'a str,
    /// Its items: (id, line).
    pub items: &'a [(String, u64)],
}

/// Records a batch about to be created, its items and their `submitted`
/// status, in one transaction. Returns its row id and display name.
pub(crate) fn record(store: &Store, intent: &Intent<'_>) -> Result<(i64, String), StoreError> {
    let conn = store.conn();
    let run = intent.run.0;
    let at = crate::store::now();
    let tx = conn.unchecked_transaction().map_err(|e| store.error(e))?;
    let id = {
        tx.execute(
            "INSERT INTO batches (run_id, display_name, account, key, model, state, items, submitted_at)
             VALUES (?1, 'keyfan-new', ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                run,
                intent.account,
                intent.key,
                intent.model,
                Stage::Creating.as_str(),
                intent.items.len() as i64,
                at
            ],
        )
        .map_err(|e| store.error(e))?;
        tx.last_insert_rowid()
    };
    let display = format!("keyfan-{}-r{run}-b{id}", intent.tag);
    tx.execute(
        "UPDATE batches SET display_name = ?1 WHERE id = ?2",
        params![display, id],
    )
    .map_err(|e| store.error(e))?;
    {
        let mut member = tx
            .prepare_cached(
                "INSERT INTO batch_items (batch_id, item_id, line, attempt)
                 VALUES (?1, ?2, ?3, 1 + (SELECT count(*) FROM batch_items bi
                   JOIN batches b ON b.id = bi.batch_id WHERE b.run_id = ?4 AND bi.item_id = ?2))",
            )
            .map_err(|e| store.error(e))?;
        let mut submitted = tx
            .prepare_cached(
                "INSERT INTO items (run_id, item_id, line, status, model, input_tokens,
                 output_tokens, latency_ms, attempts, account, cost_usd, finished_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, 0, 0, 0, 0, ?6, 0, ?7)
                 ON CONFLICT (run_id, item_id) DO UPDATE SET status = excluded.status,
                   model = excluded.model, account = excluded.account, output = NULL,
                   error = NULL, finished_at = excluded.finished_at",
            )
            .map_err(|e| store.error(e))?;
        for (item, line) in intent.items {
            member
                .execute(params![id, item, *line as i64, run])
                .map_err(|e| store.error(e))?;
            submitted
                .execute(params![
                    run,
                    item,
                    *line as i64,
                    ItemStatus::Submitted.as_str(),
                    intent.model,
                    intent.account,
                    at
                ])
                .map_err(|e| store.error(e))?;
        }
    }
    tx.commit().map_err(|e| store.error(e))?;
    Ok((id, display))
}

/// Sets a batch's provider id and state (and when it ended, and why, if
/// it did).
pub(crate) fn update(
    store: &Store,
    id: i64,
    name: &str,
    state: BatchState,
    error: Option<&str>,
) -> Result<(), StoreError> {
    store
        .conn()
        .execute(
            "UPDATE batches SET name = ?2, state = ?3, error = coalesce(?4, error),
             ended_at = CASE WHEN ?5 AND ended_at IS NULL THEN ?6 ELSE ended_at END
             WHERE id = ?1",
            params![
                id,
                name,
                Stage::Provider(state).as_str(),
                error,
                state.is_terminal(),
                crate::store::now()
            ],
        )
        .map_err(|e| store.error(e))?;
    Ok(())
}

/// What collecting a batch found.
#[derive(Debug, Default)]
pub(crate) struct Collected {
    /// Result lines whose key named no item of the batch.
    pub unknown: u64,
    /// The first few of those keys.
    pub unknown_first: Vec<String>,
    /// The results' cost at the batch price (USD).
    pub cost_usd: f64,
    /// The same usage's cost online (USD).
    pub online_usd: f64,
}

/// Closes a batch at `stage` (collected or abandoned): its items still
/// `submitted` go back to pending, in the same transaction. Returns how
/// many went back.
pub(crate) fn close(
    store: &Store,
    batch: &BatchRow,
    stage: Stage,
    error: Option<&str>,
    found: &Collected,
) -> Result<u64, StoreError> {
    let conn = store.conn();
    let tx = conn.unchecked_transaction().map_err(|e| store.error(e))?;
    let returned = tx
        .execute(
            "DELETE FROM items WHERE run_id = ?1 AND status = ?2 AND item_id IN
             (SELECT item_id FROM batch_items WHERE batch_id = ?3)",
            params![batch.run.0, ItemStatus::Submitted.as_str(), batch.id],
        )
        .map_err(|e| store.error(e))?;
    let now = crate::store::now();
    let first = (!found.unknown_first.is_empty()).then(|| found.unknown_first.join(", "));
    tx.execute(
        "UPDATE batches SET state = ?2, error = coalesce(?3, error), collected_at = ?4,
         ended_at = coalesce(ended_at, ?4), unknown_keys = ?5, unknown_first = ?6,
         cost_usd = ?7, online_usd = ?8 WHERE id = ?1",
        params![
            batch.id,
            stage.as_str(),
            error,
            now,
            found.unknown as i64,
            first,
            found.cost_usd,
            found.online_usd
        ],
    )
    .map_err(|e| store.error(e))?;
    tx.commit().map_err(|e| store.error(e))?;
    Ok(returned as u64)
}

/// Puts back to pending every item of `run` marked `submitted` that no open
/// batch holds (a state file edited by hand, or a batch row lost): nothing
/// is left waiting for a batch that will never answer it. Returns how many.
pub(crate) fn orphans_to_pending(store: &Store, run: RunId) -> Result<u64, StoreError> {
    let gone = store
        .conn()
        .execute(
            "DELETE FROM items WHERE run_id = ?1 AND status = ?2 AND item_id NOT IN
             (SELECT bi.item_id FROM batch_items bi JOIN batches b ON b.id = bi.batch_id
              WHERE b.run_id = ?1 AND b.state NOT IN (?3, ?4))",
            params![
                run.0,
                ItemStatus::Submitted.as_str(),
                Stage::Collected.as_str(),
                Stage::Abandoned.as_str()
            ],
        )
        .map_err(|e| store.error(e))?;
    Ok(gone as u64)
}

/// The open batches of `run` (all runs: `None`), oldest first.
pub(crate) fn open(store: &Store, run: Option<RunId>) -> Result<Vec<BatchRow>, StoreError> {
    Ok(all(store, run)?
        .into_iter()
        .filter(|b| b.stage.is_open())
        .collect())
}

/// Every batch of `run` (all runs: `None`), oldest first.
pub fn all(store: &Store, run: Option<RunId>) -> Result<Vec<BatchRow>, StoreError> {
    let conn = store.conn();
    let sql = format!("SELECT {COLUMNS} FROM batches WHERE ?1 IS NULL OR run_id = ?1 ORDER BY id");
    let mut statement = conn.prepare(&sql).map_err(|e| store.error(e))?;
    let rows = statement
        .query_map(params![run.map(|r| r.0)], BatchRow::from_row)
        .map_err(|e| store.error(e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| store.error(e))?;
    Ok(rows)
}

/// An item of a batch by its key: its line, its attempt number and whether
/// it still waits for this batch's result (`submitted`).
pub(crate) struct Member {
    pub line: u64,
    pub attempt: u32,
    pub waiting: bool,
}

/// The item keyed `key` in batch `batch`, if it holds one.
pub(crate) fn member(
    store: &Store,
    batch: &BatchRow,
    key: &str,
) -> Result<Option<Member>, StoreError> {
    let conn = store.conn();
    let mut statement = conn
        .prepare_cached(
            "SELECT bi.line, bi.attempt, i.status FROM batch_items bi
             LEFT JOIN items i ON i.run_id = ?1 AND i.item_id = bi.item_id
             WHERE bi.batch_id = ?2 AND bi.item_id = ?3",
        )
        .map_err(|e| store.error(e))?;
    statement
        .query_row(params![batch.run.0, batch.id, key], |row| {
            Ok(Member {
                line: row.get::<_, i64>(0)?.unsigned_abs(),
                attempt: u32::try_from(row.get::<_, i64>(1)?).unwrap_or(u32::MAX),
                waiting: row.get::<_, Option<String>>(2)?.as_deref()
                    == Some(ItemStatus::Submitted.as_str()),
            })
        })
        .optional()
        .map_err(|e| store.error(e))
}

/// The item ids batch `batch` holds.
pub(crate) fn member_ids(store: &Store, batch: &BatchRow) -> Result<Vec<String>, StoreError> {
    let conn = store.conn();
    let mut statement = conn
        .prepare_cached("SELECT item_id FROM batch_items WHERE batch_id = ?1")
        .map_err(|e| store.error(e))?;
    let ids = statement
        .query_map(params![batch.id], |row| row.get::<_, String>(0))
        .map_err(|e| store.error(e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| store.error(e))?;
    Ok(ids)
}

/// The ids of the items of run `run` that are `failed` after being in one
/// of its batches.
pub(crate) fn failed_in_batches(store: &Store, run: RunId) -> Result<Vec<String>, StoreError> {
    let conn = store.conn();
    let mut statement = conn
        .prepare_cached(
            "SELECT DISTINCT i.item_id FROM items i
             JOIN batch_items bi ON bi.item_id = i.item_id
             JOIN batches b ON b.id = bi.batch_id AND b.run_id = i.run_id
             WHERE i.run_id = ?1 AND i.status = ?2",
        )
        .map_err(|e| store.error(e))?;
    let ids = statement
        .query_map(params![run.0, ItemStatus::Failed.as_str()], |row| {
            row.get::<_, String>(0)
        })
        .map_err(|e| store.error(e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| store.error(e))?;
    Ok(ids)
}
