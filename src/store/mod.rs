//! Durable state in SQLite: runs, items, attempts and the per-day quota
//! ledger. The store is the source of truth: an item's outcome is committed
//! here before it is written to any results file, and reports are built from
//! here, not from memory.
//!
//! Owns: the SQLite schema and its migrations, runs, items, attempts, the
//! day ledger, the queries a resume needs, and the run lock. Never:
//! formatting for people (the report and the sinks do that) or the network.
//!
//! [`postgres`] is the second backend, behind the same [`QuotaLedger`]
//! trait: the state several hosts share (`--state postgres://…`): the day's
//! ledger, the minute's slices, the run row and the job's work queue. A
//! host then keeps its own detail here, in SQLite.

mod ledger;
mod lock;
pub mod postgres;
mod rows;
mod schema;
#[cfg(test)]
mod tests;
mod uploads;

pub use ledger::{MemoryLedger, QuotaLedger, Reservation, Reserved};
pub use lock::{lock_path, LockError, RunLock};
pub use rows::{
    round_usd, AttemptClass, AttemptRow, AttemptUsage, Batch, EstimateRow, ItemRow, ItemStatus,
    KeyRow, KeyState, LedgerRow, RunId, RunRow, RunStatus, UnknownValue,
};
pub use uploads::{
    UploadChange, UploadCount, UploadEvent, UploadEventKind, UploadRow, UploadState,
};

use crate::types::{Limits, QuotaDay};
use rusqlite::{params, Connection, OptionalExtension, Params, Row};
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::path::{Path, PathBuf};

/// A run's items counted ([`Store::item_counts`]).
#[derive(Debug, Default)]
pub struct ItemCounts {
    /// Items per status, in the order of their stored names.
    pub statuses: Vec<(ItemStatus, u64)>,
    /// Items per model (those with one).
    pub models: HashMap<String, u64>,
    /// The first skipped children asked for, in job-file order: id, line
    /// and error.
    pub skipped_children: Vec<(String, u64, String)>,
}

/// A failure of the state file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused an operation on the state file.
    #[error("state file {path}: {source}")]
    Sqlite {
        /// The state file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// The file is not a keyfan state file; nothing was written to it.
    #[error("{} is not a keyfan state file ({what}): check --state", path.display())]
    Foreign {
        /// The file.
        path: PathBuf,
        /// What it is instead.
        what: &'static str,
    },
    /// The shared state in PostgreSQL failed.
    #[error(transparent)]
    Shared(#[from] postgres::PgError),
    /// The state file was written by a newer keyfan.
    #[error("state file {path} has schema version {found}, newer than this keyfan's {supported}: upgrade keyfan")]
    TooNew {
        /// The state file.
        path: PathBuf,
        /// Its schema version.
        found: i64,
        /// The newest this build knows.
        supported: i64,
    },
    /// A stored state this keyfan does not know (a newer keyfan wrote it,
    /// or a hand edit): refused rather than read as some default.
    #[error("state file {path}: {source} (written by a newer keyfan, or edited by hand)")]
    UnknownValue {
        /// The state file.
        path: PathBuf,
        /// The table, column and value.
        #[source]
        source: UnknownValue,
    },
}

/// An open state file.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating and migrating as needed) the state file at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let wrap = |source| StoreError::Sqlite {
            path: path.to_owned(),
            source,
        };
        let mut conn = Connection::open(path).map_err(wrap)?;
        schema::migrate(&mut conn, path)?;
        Ok(Store {
            conn,
            path: path.to_owned(),
        })
    }

    /// The state file's connection, for the tables of [`crate::batch`]
    /// (its own SQL, beside the run's).
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    /// A state file error of `source`, naming the file.
    pub(crate) fn error(&self, source: rusqlite::Error) -> StoreError {
        self.wrap(source)
    }

    fn wrap(&self, source: rusqlite::Error) -> StoreError {
        let path = self.path.clone();
        if let rusqlite::Error::FromSqlConversionFailure(_, _, cause) = &source {
            if let Some(unknown) = cause.downcast_ref::<UnknownValue>() {
                return StoreError::UnknownValue {
                    path,
                    source: unknown.clone(),
                };
            }
        }
        StoreError::Sqlite { path, source }
    }

    /// Starts a run of the job at `job_path` whose bytes hash to `job_hash`.
    pub fn create_run(
        &self,
        job_path: &str,
        job_hash: &str,
        simulated: bool,
    ) -> Result<RunId, StoreError> {
        self.conn
            .execute(
                "INSERT INTO runs (job_path, job_hash, simulated, started_at, status, resumed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?4)",
                params![job_path, job_hash, simulated, now(), RunStatus::Running],
            )
            .map_err(|e| self.wrap(e))?;
        Ok(RunId(self.conn.last_insert_rowid()))
    }

    /// Every run, newest first.
    pub fn runs(&self) -> Result<Vec<RunRow>, StoreError> {
        self.collect(
            "SELECT id, job_path, job_hash, simulated, started_at, finished_at, status,
                    active_ms, resumed_at
             FROM runs ORDER BY id DESC",
            [],
            RunRow::from_row,
        )
    }

    /// Items of a run per status, in the order of their stored names.
    pub fn status_counts(&self, run: RunId) -> Result<Vec<(ItemStatus, u64)>, StoreError> {
        let mut counts: HashMap<ItemStatus, u64> = HashMap::new();
        self.each(
            &format!(
                "SELECT t.status FROM items AS t NOT INDEXED WHERE {}",
                in_run("items", "t")
            ),
            [run.0],
            |row| row.get::<_, ItemStatus>(0),
            |status| {
                *counts.entry(status).or_default() += 1;
                true
            },
        )?;
        Ok(by_name(counts))
    }

    /// A run's items counted in one pass (as [`Store::status_counts`] counts
    /// them, and more): per status and per model, with
    /// the first `children` (in job-file order) that ended `skipped`
    /// because a parent of theirs did not end ok (unlike a skipped line,
    /// such an item keeps its own id). Counted here rather than with GROUP
    /// BY, which would sort every item of a million-item run to count a
    /// handful of statuses.
    pub fn item_counts(&self, run: RunId, children: u32) -> Result<ItemCounts, StoreError> {
        let mut statuses: HashMap<ItemStatus, u64> = HashMap::new();
        let mut models: HashMap<String, u64> = HashMap::new();
        // The first children by line: a max-heap of the `children` lowest.
        let mut skipped: BinaryHeap<(u64, String, String)> = BinaryHeap::new();
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT t.status, t.model, t.item_id, t.line, t.error
                 FROM items AS t NOT INDEXED WHERE {}",
                in_run("items", "t")
            ))
            .map_err(|e| self.wrap(e))?;
        let mut rows = stmt.query([run.0]).map_err(|e| self.wrap(e))?;
        while let Some(row) = rows.next().map_err(|e| self.wrap(e))? {
            let mut read = || -> rusqlite::Result<_> {
                let status: ItemStatus = row.get(0)?;
                *statuses.entry(status).or_default() += 1;
                if let Some(model) = row.get_ref(1)?.as_str_or_null()? {
                    match models.get_mut(model) {
                        Some(n) => *n += 1,
                        None => {
                            models.insert(model.to_owned(), 1);
                        }
                    }
                }
                if children == 0 || status != ItemStatus::Skipped {
                    return Ok(());
                }
                let id = row.get_ref(2)?.as_str()?;
                if !id.starts_with("#line:") {
                    let line: u64 = row.get(3)?;
                    let error: Option<String> = row.get(4)?;
                    skipped.push((line, id.to_owned(), error.unwrap_or_default()));
                    if skipped.len() > children as usize {
                        skipped.pop();
                    }
                }
                Ok(())
            };
            read().map_err(|e| self.wrap(e))?;
        }
        Ok(ItemCounts {
            statuses: by_name(statuses),
            models,
            skipped_children: skipped
                .into_sorted_vec()
                .into_iter()
                .map(|(line, id, error)| (id, line, error))
                .collect(),
        })
    }

    /// What a run's retries cost: the summed cost of every attempt of a
    /// finished item that was not its final attempt (billed empty answers
    /// that were tried again, mostly; a 429 or a 5xx costs nothing).
    /// `None` when one of them went to a model whose price is unknown.
    pub fn retries_cost(&self, run: RunId) -> Result<Option<f64>, StoreError> {
        // Only the attempts that can precede their item's last are looked up
        // in items: one numbered below 1 (a hand-edited state), or one of an
        // item of more than one attempt (one set, built in one scan). An
        // attempt numbered 1 or more of an item of at most one cannot be
        // below its count, so the filter drops nothing the join keeps.
        self.conn
            .prepare_cached(&format!(
                "SELECT total(t.cost_usd), coalesce(min(t.cost_known), 1)
                 FROM attempts AS t NOT INDEXED
                 JOIN items i ON i.run_id = t.run_id AND i.item_id = t.item_id
                 WHERE {}
                   AND (t.attempt < 1 OR t.item_id IN (
                        SELECT r.item_id FROM items AS r NOT INDEXED
                        WHERE {} AND r.attempts > 1))
                   AND t.attempt < i.attempts",
                in_run("attempts", "t"),
                in_run("items", "r"),
            ))
            .and_then(|mut stmt| {
                stmt.query_row([run.0], |row| {
                    Ok(row.get::<_, bool>(1)?.then_some(row.get(0)?))
                })
            })
            .map_err(|e| self.wrap(e))
    }

    /// Marks a run as running again (a resume).
    pub fn reopen_run(&self, run: RunId) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE runs SET finished_at = NULL, status = ?3, resumed_at = ?2
                 WHERE id = ?1",
                params![run.0, now(), RunStatus::Running],
            )
            .map_err(|e| self.wrap(e))?;
        Ok(())
    }

    /// Marks a run finished with `status`, adding this invocation's
    /// duration to its active time.
    pub fn finish_run(&self, run: RunId, status: RunStatus) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE runs SET finished_at = ?2, status = ?3, resumed_at = NULL,
                   active_ms = active_ms + coalesce(max(0, CAST(round(
                     (julianday(?2) - julianday(resumed_at)) * 86400000) AS INTEGER)), 0)
                 WHERE id = ?1",
                params![run.0, now(), status],
            )
            .map_err(|e| self.wrap(e))?;
        Ok(())
    }

    /// A run's record.
    pub fn run(&self, run: RunId) -> Result<Option<RunRow>, StoreError> {
        self.conn
            .query_row(
                "SELECT id, job_path, job_hash, simulated, started_at, finished_at, status,
                        active_ms, resumed_at
                 FROM runs WHERE id = ?1",
                [run.0],
                RunRow::from_row,
            )
            .optional()
            .map_err(|e| self.wrap(e))
    }

    /// Runs `body` in one immediate transaction (it takes the write lock at
    /// once, so two processes on one file wait for each other instead of
    /// failing), committed when `body` succeeds.
    fn in_transaction<T>(
        &mut self,
        body: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let path = self.path.clone();
        let wrap = |source| StoreError::Sqlite { path, source };
        (|| {
            let tx = self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let value = body(&tx)?;
            tx.commit()?;
            Ok(value)
        })()
        .map_err(wrap)
    }

    /// Commits a batch in one transaction: the day's ledger first (requests
    /// released, then requests reserved, through the same gate as
    /// [`QuotaLedger`]), then attempts (with what they used, and key states)
    /// and finished items. After this returns the batch survives a crash;
    /// before, none of it is visible. Returns how many requests of each
    /// reservation the ledger counted, in order (0: the day is spent): a
    /// request goes out only once it is counted.
    pub fn commit(&mut self, run: RunId, batch: &Batch) -> Result<Vec<u64>, StoreError> {
        let path = self.path.clone();
        let wrap = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        // Immediate: the ledger's counts are read and then raised, and no
        // other process on the file may write in between.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(wrap)?;
        ledger::release_all(&tx, &batch.releases).map_err(wrap)?;
        let granted = ledger::reserve_each(&tx, &batch.reservations).map_err(wrap)?;
        uploads::apply(&tx, run, &batch.uploads, &batch.upload_events).map_err(wrap)?;
        {
            let mut ledger = tx
                .prepare_cached(
                    // Token sums saturate: SQLite turns an overflowing
                    // integer sum into a REAL, which no count reads back.
                    "INSERT INTO ledger (account, model, day, requests, ok, input_tokens, output_tokens,
                     cost_usd, cost_unknown)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                     ON CONFLICT (account, model, day) DO UPDATE SET
                       requests = requests + excluded.requests, ok = ok + excluded.ok,
                       input_tokens = CASE
                         WHEN excluded.input_tokens > 9223372036854775807 - input_tokens
                         THEN 9223372036854775807 ELSE input_tokens + excluded.input_tokens END,
                       output_tokens = CASE
                         WHEN excluded.output_tokens > 9223372036854775807 - output_tokens
                         THEN 9223372036854775807 ELSE output_tokens + excluded.output_tokens END,
                       cost_usd = cost_usd + excluded.cost_usd,
                       cost_unknown = cost_unknown + excluded.cost_unknown",
                )
                .map_err(wrap)?;
            let mut insert_attempt = tx
                .prepare_cached(
                    "INSERT INTO attempts (run_id, item_id, attempt, key, account, model, class,
                     http_status, latency_ms, input_tokens, output_tokens, cost_usd, error, at, day,
                     cost_known)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
                )
                .map_err(wrap)?;
            let mut upsert_key = tx
                .prepare_cached(
                    "INSERT INTO keys (key, account, state, reason, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (key) DO UPDATE SET account = excluded.account,
                       state = excluded.state, reason = excluded.reason,
                       updated_at = excluded.updated_at",
                )
                .map_err(wrap)?;
            // What the attempts used and each key's last word are summed
            // per ledger row and per key first: one statement each, with
            // what one statement per attempt would have left.
            let mut used: BTreeMap<(&str, &str, &str), Used> = BTreeMap::new();
            let mut key_states: BTreeMap<&str, &AttemptRow> = BTreeMap::new();
            for a in &batch.attempts {
                insert_attempt
                    .execute(params![
                        run.0,
                        a.item_id,
                        a.attempt,
                        a.key,
                        a.account,
                        a.model,
                        a.class.as_str(),
                        a.http_status,
                        a.latency_ms,
                        a.input_tokens,
                        a.output_tokens,
                        a.cost_usd.unwrap_or(0.0),
                        a.error,
                        a.at,
                        a.day,
                        a.cost_usd.is_some(),
                    ])
                    .map_err(wrap)?;
                // What the request used; its reservation is settled apart.
                used.entry((&a.account, &a.model, &a.day))
                    .or_default()
                    .add(a);
                // A key's last word is kept across runs for `keys status`:
                // refused (with the API's reason), or answering.
                if key_state(a.class).is_some() {
                    key_states.insert(&a.key, a);
                }
            }
            for ((account, model, day), u) in &used {
                ledger
                    .execute(params![
                        account,
                        model,
                        day,
                        0,
                        u.ok,
                        u.input_tokens,
                        u.output_tokens,
                        u.cost_usd,
                        u.cost_unknown,
                    ])
                    .map_err(wrap)?;
            }
            for a in key_states.values() {
                upsert_key
                    .execute(params![a.key, a.account, key_state(a.class), a.error, a.at])
                    .map_err(wrap)?;
            }
            let mut upsert_item = tx
                .prepare_cached(
                    "INSERT INTO items (run_id, item_id, line, status, model, output, input_tokens,
                     output_tokens, latency_ms, attempts, key, account, error, cost_usd, finished_at,
                     thinking_tokens, cached_tokens, finish_reason, cost_known, output_json)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
                     ?16, ?17, ?18, ?19, ?20)
                     ON CONFLICT (run_id, item_id) DO UPDATE SET
                       status = excluded.status, model = excluded.model, output = excluded.output,
                       input_tokens = excluded.input_tokens, output_tokens = excluded.output_tokens,
                       latency_ms = excluded.latency_ms, attempts = excluded.attempts,
                       key = excluded.key, account = excluded.account, error = excluded.error,
                       cost_usd = excluded.cost_usd, finished_at = excluded.finished_at,
                       thinking_tokens = excluded.thinking_tokens,
                       cached_tokens = excluded.cached_tokens,
                       finish_reason = excluded.finish_reason, cost_known = excluded.cost_known,
                       output_json = excluded.output_json",
                )
                .map_err(wrap)?;
            let finished_at = now();
            for i in &batch.items {
                upsert_item
                    .execute(params![
                        run.0,
                        i.id,
                        i.line,
                        i.status.as_str(),
                        i.model,
                        i.output,
                        i.input_tokens,
                        i.output_tokens,
                        i.latency_ms,
                        i.attempts,
                        i.key,
                        i.account,
                        i.error,
                        i.cost.unwrap_or(0.0),
                        finished_at,
                        i.thinking_tokens,
                        i.cached_tokens,
                        i.finish_reason,
                        i.cost.is_some(),
                        i.output_json,
                    ])
                    .map_err(wrap)?;
            }
        }
        tx.commit().map_err(wrap)?;
        Ok(granted)
    }

    /// Calls `each` with every finished item of a run, in job-file order,
    /// one row in memory at a time (a run may hold millions). Stops at the
    /// first error `each` returns, and returns it.
    pub fn for_each_item<E>(
        &self,
        run: RunId,
        mut each: impl FnMut(ItemRow) -> Result<(), E>,
    ) -> Result<Result<(), E>, StoreError> {
        let mut failed = Ok(());
        self.each(
            "SELECT item_id, line, status, model, output, input_tokens, output_tokens,
                    latency_ms, attempts, key, account, error, cost_usd,
                    thinking_tokens, cached_tokens, finish_reason, cost_known, output_json
             FROM items WHERE run_id = ?1 ORDER BY line",
            [run.0],
            ItemRow::from_row,
            |row| {
                failed = each(row);
                failed.is_ok()
            },
        )?;
        Ok(failed)
    }

    /// Calls `each` with the id, line and status of every finished item of
    /// a run, in no particular order: what a resumed run keeps, without
    /// reading (and sorting) the rows whole.
    pub fn item_states(
        &self,
        run: RunId,
        mut each: impl FnMut(&str, u64, ItemStatus),
    ) -> Result<(), StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT item_id, line, status FROM items WHERE run_id = ?1")
            .map_err(|e| self.wrap(e))?;
        let mut rows = stmt.query([run.0]).map_err(|e| self.wrap(e))?;
        while let Some(row) = rows.next().map_err(|e| self.wrap(e))? {
            let id = row
                .get_ref(0)
                .and_then(|v| v.as_str().map_err(Into::into))
                .map_err(|e| self.wrap(e))?;
            let line = row.get(1).map_err(|e| self.wrap(e))?;
            let status = row.get(2).map_err(|e| self.wrap(e))?;
            each(id, line, status);
        }
        Ok(())
    }

    /// Another connection to this state file that reads it as it is now:
    /// nothing committed after this call shows in its reads (a read
    /// transaction of WAL mode, held until it is dropped).
    pub fn snapshot(&self) -> Result<Store, StoreError> {
        let store = Store::open(&self.path)?;
        store
            .conn
            .execute_batch("BEGIN")
            .and_then(|()| {
                // The first read of the transaction fixes what it sees.
                store
                    .conn
                    .query_row("SELECT count(*) FROM runs", [], |_| Ok(()))
            })
            .map_err(|e| store.wrap(e))?;
        Ok(store)
    }

    /// Calls `each` with every attempt of a run, in the order they were
    /// committed, one row in memory at a time.
    pub fn for_each_attempt(
        &self,
        run: RunId,
        mut each: impl FnMut(AttemptRow),
    ) -> Result<(), StoreError> {
        self.each(
            &format!(
                "SELECT t.item_id, t.attempt, t.key, t.account, t.model, t.class, t.http_status,
                        t.latency_ms, t.input_tokens, t.output_tokens, t.cost_usd, t.error, t.at,
                        t.day, t.cost_known
                 FROM attempts AS t NOT INDEXED WHERE {} ORDER BY t.rowid",
                in_run("attempts", "t")
            ),
            [run.0],
            AttemptRow::from_row,
            |row| {
                each(row);
                true
            },
        )
    }

    /// Calls `each` with what the report reads of every attempt of a run
    /// (its usage, borrowed from the row: nothing is allocated per
    /// attempt), in the order they were committed.
    pub fn for_each_attempt_usage(
        &self,
        run: RunId,
        mut each: impl FnMut(&AttemptUsage<'_>),
    ) -> Result<(), StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT t.key, t.account, t.model, t.class, t.latency_ms, t.input_tokens,
                        t.output_tokens, t.cost_usd, t.cost_known, t.at
                 FROM attempts AS t NOT INDEXED WHERE {} ORDER BY t.rowid",
                in_run("attempts", "t")
            ))
            .map_err(|e| self.wrap(e))?;
        let mut rows = stmt.query([run.0]).map_err(|e| self.wrap(e))?;
        while let Some(row) = rows.next().map_err(|e| self.wrap(e))? {
            each(&AttemptUsage::from_row(row).map_err(|e| self.wrap(e))?);
        }
        Ok(())
    }

    /// Requests sent so far for each item of a run that `unfinished`
    /// accepts (by its id): `(item id, attempts)`. One streaming pass over
    /// the run's attempts, which a half-done million-item run has half a
    /// million of; only the accepted ids are kept.
    pub fn unfinished_attempts(
        &self,
        run: RunId,
        mut unfinished: impl FnMut(&str) -> bool,
    ) -> Result<HashMap<String, u32>, StoreError> {
        let mut counts: HashMap<String, u32> = HashMap::new();
        self.each_text(
            "SELECT item_id FROM attempts WHERE run_id = ?1",
            run,
            |id| {
                if unfinished(id) {
                    let count = counts.entry(id.to_owned()).or_default();
                    *count = count.saturating_add(1);
                }
            },
        )?;
        Ok(counts)
    }

    /// The last known state of every key that has been used.
    pub fn keys(&self) -> Result<Vec<KeyRow>, StoreError> {
        self.collect(
            "SELECT key, account, state, reason, updated_at FROM keys ORDER BY account, key",
            [],
            KeyRow::from_row,
        )
    }

    /// Records the limits `account` has for `model` in `run` (replacing
    /// those of an earlier invocation of the run).
    pub fn save_limits(
        &self,
        run: RunId,
        account: &str,
        model: &str,
        limits: Limits,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO run_limits (run_id, account, model, rpm, tpm, rpd, otpm)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (run_id, account, model) DO UPDATE SET
                   rpm = excluded.rpm, tpm = excluded.tpm, rpd = excluded.rpd,
                   otpm = excluded.otpm",
                params![
                    run.0,
                    account,
                    model,
                    limits.rpm,
                    limits.tpm,
                    limits.rpd,
                    limits.otpm
                ],
            )
            .map_err(|e| self.wrap(e))?;
        Ok(())
    }

    /// The limits recorded for `run`: `(account, model, limits)`.
    pub fn limits(&self, run: RunId) -> Result<Vec<(String, String, Limits)>, StoreError> {
        self.collect(
            "SELECT account, model, rpm, tpm, rpd, otpm FROM run_limits
             WHERE run_id = ?1 ORDER BY account, model",
            [run.0],
            |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    Limits {
                        rpm: row.get(2)?,
                        tpm: row.get(3)?,
                        rpd: row.get(4)?,
                        otpm: row.get(5)?,
                    },
                ))
            },
        )
    }

    /// Whether an estimate is stored for `run`.
    pub fn has_estimate(&self, run: RunId) -> Result<bool, StoreError> {
        self.conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM run_estimates WHERE run_id = ?1)",
                [run.0],
                |row| row.get(0),
            )
            .map_err(|e| self.wrap(e))
    }

    /// Stores the estimate of `run`, one row per model (replacing any), in
    /// one transaction.
    pub fn save_estimate(&self, run: RunId, rows: &[EstimateRow]) -> Result<(), StoreError> {
        (|| {
            let tx = self.conn.unchecked_transaction()?;
            tx.execute("DELETE FROM run_estimates WHERE run_id = ?1", [run.0])?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO run_estimates (run_id, model, items, input_tokens,
                     output_tokens_expected, output_tokens_worst, cost_expected_usd,
                     cost_worst_usd)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?;
                for r in rows {
                    insert.execute(params![
                        run.0,
                        r.model,
                        r.items,
                        r.input_tokens,
                        r.output_tokens_expected,
                        r.output_tokens_worst,
                        r.cost_expected_usd,
                        r.cost_worst_usd,
                    ])?;
                }
            }
            tx.commit()
        })()
        .map_err(|e| self.wrap(e))
    }

    /// The estimate stored for `run`, by model (empty when none was made).
    pub fn estimate(&self, run: RunId) -> Result<Vec<EstimateRow>, StoreError> {
        self.collect(
            "SELECT model, items, input_tokens, output_tokens_expected, output_tokens_worst,
                    cost_expected_usd, cost_worst_usd
             FROM run_estimates WHERE run_id = ?1 ORDER BY model",
            [run.0],
            EstimateRow::from_row,
        )
    }

    /// The ledger rows of one quota day.
    pub fn ledger(&self, day: QuotaDay) -> Result<Vec<LedgerRow>, StoreError> {
        self.collect(
            "SELECT account, model, day, requests, ok, input_tokens, output_tokens, cost_usd,
                    cost_unknown
             FROM ledger WHERE day = ?1 ORDER BY account, model",
            [day.to_string()],
            LedgerRow::from_row,
        )
    }

    /// The models `base_url` listed for `provider` (`gemini`, `openai`) less
    /// than [`MODEL_LIST_MAX_AGE`] ago, if it did.
    pub fn model_list(
        &self,
        provider: &str,
        base_url: &str,
    ) -> Result<Option<Vec<String>>, StoreError> {
        let json: Option<String> = self
            .conn
            .query_row(
                "SELECT models FROM model_lists
                 WHERE provider = ?1 AND base_url = ?2 AND fetched_at >= ?3",
                params![provider, base_url, model_lists_fresh_since()],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| self.wrap(e))?;
        // A list that does not parse is as good as none: it is fetched again.
        Ok(json.and_then(|json| serde_json::from_str(&json).ok()))
    }

    /// Keeps the models `base_url` listed for `provider` just now, and
    /// forgets lists too old to use.
    pub fn save_model_list(
        &self,
        provider: &str,
        base_url: &str,
        models: &[String],
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(models).expect("strings serialize");
        self.conn
            .execute(
                "DELETE FROM model_lists WHERE fetched_at < ?1",
                [model_lists_fresh_since()],
            )
            .and_then(|_| {
                self.conn.execute(
                    "INSERT INTO model_lists (provider, base_url, models, fetched_at)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (provider, base_url) DO UPDATE SET
                       models = excluded.models, fetched_at = excluded.fetched_at",
                    params![provider, base_url, json, now()],
                )
            })
            .map_err(|e| self.wrap(e))?;
        Ok(())
    }

    /// Runs a query and hands each row, mapped, to `each` until it says stop
    /// (returns `false`).
    fn each<T>(
        &self,
        sql: &str,
        params: impl Params,
        map: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
        mut each: impl FnMut(T) -> bool,
    ) -> Result<(), StoreError> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(|e| self.wrap(e))?;
        let rows = stmt.query_map(params, map).map_err(|e| self.wrap(e))?;
        for row in rows {
            if !each(row.map_err(|e| self.wrap(e))?) {
                break;
            }
        }
        Ok(())
    }

    /// Runs a query of one text column over `run` and hands each value to
    /// `each`, borrowed from the row: nothing is allocated per row.
    fn each_text(
        &self,
        sql: &str,
        run: RunId,
        mut each: impl FnMut(&str),
    ) -> Result<(), StoreError> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(|e| self.wrap(e))?;
        let mut rows = stmt.query([run.0]).map_err(|e| self.wrap(e))?;
        while let Some(row) = rows.next().map_err(|e| self.wrap(e))? {
            let text = row
                .get_ref(0)
                .and_then(|v| v.as_str().map_err(Into::into))
                .map_err(|e| self.wrap(e))?;
            each(text);
        }
        Ok(())
    }

    /// Runs a query and collects its mapped rows.
    fn collect<T>(
        &self,
        sql: &str,
        params: impl Params,
        map: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, StoreError> {
        let mut all = Vec::new();
        self.each(sql, params, map, |row| {
            all.push(row);
            true
        })?;
        Ok(all)
    }
}

/// The condition that row `t` (the alias) of `table` (read `NOT INDEXED`) is
/// one of run `?1`'s: a scan of the table from the run's first rowid to its
/// last (a run's rows are mostly contiguous), rather than a search of the
/// index on `run_id` followed by a lookup of every row it finds, which costs
/// several times the scan. The scan is in rowid order: `ORDER BY t.rowid`
/// sorts nothing.
fn in_run(table: &str, t: &str) -> String {
    format!(
        "{t}.rowid BETWEEN (SELECT min(rowid) FROM {table} WHERE run_id = ?1)
                       AND (SELECT max(rowid) FROM {table} WHERE run_id = ?1)
         AND {t}.run_id = ?1"
    )
}

/// Item counts per status, in the order of the statuses' stored names.
fn by_name(counts: HashMap<ItemStatus, u64>) -> Vec<(ItemStatus, u64)> {
    let mut counts: Vec<(ItemStatus, u64)> = counts.into_iter().collect();
    counts.sort_by_key(|(status, _)| status.as_str());
    counts
}

/// The stored state a key takes from an attempt of `class`, if any:
/// refused, or answering.
fn key_state(class: AttemptClass) -> Option<&'static str> {
    match class {
        AttemptClass::KeyInvalid => Some("disabled"),
        AttemptClass::Ok => Some("ok"),
        _ => None,
    }
}

/// What a batch's attempts used of one ledger row (account, model, day).
#[derive(Debug, Default)]
struct Used {
    ok: u64,
    /// Token sums saturate at SQLite's largest integer, as the upsert does.
    input_tokens: i64,
    output_tokens: i64,
    cost_usd: f64,
    cost_unknown: u64,
}

impl Used {
    fn add(&mut self, a: &AttemptRow) {
        let tokens = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.ok += u64::from(a.class == AttemptClass::Ok);
        self.input_tokens = self.input_tokens.saturating_add(tokens(a.input_tokens));
        self.output_tokens = self.output_tokens.saturating_add(tokens(a.output_tokens));
        self.cost_usd += a.cost_usd.unwrap_or(0.0);
        self.cost_unknown += u64::from(a.cost_usd.is_none());
    }
}

/// How long a model list is trusted: providers add models rarely, and a
/// list a day old still names every model of a run planned today.
pub const MODEL_LIST_MAX_AGE: chrono::TimeDelta = chrono::TimeDelta::days(1);

/// Now, as the store keeps times (RFC 3339 UTC with milliseconds, which
/// sorts as the time does): what rows built outside the store stamp.
pub fn now() -> String {
    stored(chrono::Utc::now())
}

fn stored(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The oldest `fetched_at` of a model list still used, as stored (the
/// stored form sorts as the time does).
fn model_lists_fresh_since() -> String {
    stored(chrono::Utc::now() - MODEL_LIST_MAX_AGE)
}
