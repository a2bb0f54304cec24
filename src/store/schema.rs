//! The schema and its migrations, keyed on `PRAGMA user_version`.

use super::StoreError;
use rusqlite::Connection;
use std::path::Path;

/// Each entry migrates from version `index` to `index + 1`.
const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE runs (
        id          INTEGER PRIMARY KEY,
        job_path    TEXT NOT NULL,
        job_hash    TEXT NOT NULL,
        simulated   INTEGER NOT NULL,
        started_at  TEXT NOT NULL,
        finished_at TEXT,
        status      TEXT NOT NULL
    );
    CREATE TABLE items (
        run_id        INTEGER NOT NULL REFERENCES runs (id),
        item_id       TEXT NOT NULL,
        line          INTEGER NOT NULL,
        status        TEXT NOT NULL,
        model         TEXT,
        output        TEXT,
        input_tokens  INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        latency_ms    INTEGER NOT NULL,
        attempts      INTEGER NOT NULL,
        key           TEXT,
        account       TEXT,
        error         TEXT,
        cost_usd      REAL NOT NULL,
        finished_at   TEXT NOT NULL,
        PRIMARY KEY (run_id, item_id)
    );
    CREATE TABLE attempts (
        run_id        INTEGER NOT NULL REFERENCES runs (id),
        item_id       TEXT NOT NULL,
        attempt       INTEGER NOT NULL,
        key           TEXT NOT NULL,
        account       TEXT NOT NULL,
        model         TEXT NOT NULL,
        class         TEXT NOT NULL,
        http_status   INTEGER,
        latency_ms    INTEGER NOT NULL,
        input_tokens  INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        cost_usd      REAL NOT NULL,
        error         TEXT,
        at            TEXT NOT NULL,
        day           TEXT NOT NULL
    );
    CREATE INDEX attempts_by_run ON attempts (run_id);
    CREATE TABLE ledger (
        account       TEXT NOT NULL,
        model         TEXT NOT NULL,
        day           TEXT NOT NULL,
        requests      INTEGER NOT NULL,
        ok            INTEGER NOT NULL,
        input_tokens  INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        cost_usd      REAL NOT NULL,
        PRIMARY KEY (account, model, day)
    );
    CREATE TABLE keys (
        key        TEXT PRIMARY KEY,
        account    TEXT NOT NULL,
        state      TEXT NOT NULL,
        reason     TEXT,
        updated_at TEXT NOT NULL
    );
",
    "
    -- A run's active time: the sum of its invocations' durations, so a
    -- resumed run's elapsed time leaves out the gaps between invocations.
    ALTER TABLE runs ADD COLUMN active_ms INTEGER NOT NULL DEFAULT 0;
    -- When the current invocation started (NULL once the run finished).
    ALTER TABLE runs ADD COLUMN resumed_at TEXT;
",
    "
    CREATE TABLE model_lists (
        provider   TEXT NOT NULL,
        base_url   TEXT NOT NULL,
        models     TEXT NOT NULL,
        fetched_at TEXT NOT NULL,
        PRIMARY KEY (provider, base_url)
    );
",
    "
    -- An item's usage beyond its input and output tokens, and whether its
    -- cost_usd is a cost: 0 when a request went to a model with no known
    -- price (its cost is then unknown, never 0).
    ALTER TABLE items ADD COLUMN thinking_tokens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE items ADD COLUMN cached_tokens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE items ADD COLUMN finish_reason TEXT;
    ALTER TABLE items ADD COLUMN cost_known INTEGER NOT NULL DEFAULT 1;
",
    "
    -- The limits each account had for each model when a run (re)started, so
    -- its report compares use with them from the state file alone.
    CREATE TABLE run_limits (
        run_id  INTEGER NOT NULL REFERENCES runs (id),
        account TEXT NOT NULL,
        model   TEXT NOT NULL,
        rpm     INTEGER,
        tpm     INTEGER,
        rpd     INTEGER,
        otpm    INTEGER,
        PRIMARY KEY (run_id, account, model)
    );
",
    "
    -- A structured answer (an item with a response_schema), as JSON text.
    ALTER TABLE items ADD COLUMN output_json TEXT;
",
    "
    -- Whether an attempt's cost_usd is a cost: 0 when it went to a model
    -- with no known price (its cost is then unknown, never 0). The ledger
    -- counts such requests, so a day's cost with any of them is unknown.
    ALTER TABLE attempts ADD COLUMN cost_known INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE ledger ADD COLUMN cost_unknown INTEGER NOT NULL DEFAULT 0;
",
    "
    -- The estimate made before a run first sent anything, per model, so
    -- its report sets it against what the run used. A cost is NULL when
    -- the model's price was unknown.
    CREATE TABLE run_estimates (
        run_id                 INTEGER NOT NULL REFERENCES runs (id),
        model                  TEXT NOT NULL,
        items                  INTEGER NOT NULL,
        input_tokens           INTEGER NOT NULL,
        output_tokens_expected INTEGER NOT NULL,
        output_tokens_worst    INTEGER NOT NULL,
        cost_expected_usd      REAL,
        cost_worst_usd         REAL,
        PRIMARY KEY (run_id, model)
    );
",
    "
    CREATE TABLE uploads (
        sha256     TEXT NOT NULL,
        account    TEXT NOT NULL,
        name       TEXT NOT NULL,
        uri        TEXT NOT NULL,
        mime       TEXT NOT NULL,
        size       INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        state      TEXT NOT NULL,
        error      TEXT,
        PRIMARY KEY (sha256, account)
    );
    CREATE TABLE upload_events (
        run_id  INTEGER NOT NULL REFERENCES runs (id),
        account TEXT NOT NULL,
        kind    TEXT NOT NULL,
        bytes   INTEGER NOT NULL,
        at      TEXT NOT NULL
    );
    CREATE INDEX upload_events_by_run ON upload_events (run_id);
    ",
    // Batch API jobs (`run --batch`): one row per provider batch, recorded
    // (as `creating`) before its create is sent, and the items in each.
    "
    CREATE TABLE batches (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id        INTEGER NOT NULL REFERENCES runs (id),
        display_name  TEXT NOT NULL UNIQUE,
        name          TEXT,
        account       TEXT NOT NULL,
        key           TEXT NOT NULL,
        model         TEXT NOT NULL,
        state         TEXT NOT NULL,
        items         INTEGER NOT NULL,
        submitted_at  TEXT NOT NULL,
        ended_at      TEXT,
        collected_at  TEXT,
        error         TEXT,
        unknown_keys  INTEGER NOT NULL DEFAULT 0,
        unknown_first TEXT,
        cost_usd      REAL NOT NULL DEFAULT 0,
        online_usd    REAL NOT NULL DEFAULT 0
    );
    CREATE INDEX batches_by_run ON batches (run_id, state);
    CREATE TABLE batch_items (
        batch_id INTEGER NOT NULL REFERENCES batches (id),
        item_id  TEXT NOT NULL,
        line     INTEGER NOT NULL,
        attempt  INTEGER NOT NULL,
        PRIMARY KEY (batch_id, item_id)
    );
    CREATE INDEX batch_items_by_item ON batch_items (item_id);
",
];

/// Brings the database at `path` to the newest schema, in WAL mode. A file
/// that is not a keyfan state file (not SQLite, or a database with tables
/// of its own) is refused before anything is written to it.
pub(super) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let wrap = |source| StoreError::Sqlite {
        path: path.to_owned(),
        source,
    };
    let foreign = |what: &'static str| StoreError::Foreign {
        path: path.to_owned(),
        what,
    };
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(wrap)?;
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(|e| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::NotADatabase) => foreign("not an SQLite database"),
            _ => wrap(e),
        })?;
    if version == 0 {
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |row| row.get(0))
            .map_err(wrap)?;
        if tables > 0 {
            return Err(foreign("an SQLite database of another program"));
        }
    }
    // WAL lets readers (reports, `keys status`) run beside a writing run;
    // NORMAL sync in WAL mode still survives a process crash.
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(wrap)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(wrap)?;
    let supported = MIGRATIONS.len() as i64;
    if version > supported {
        return Err(StoreError::TooNew {
            path: path.to_owned(),
            found: version,
            supported,
        });
    }
    for (from, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction().map_err(wrap)?;
        tx.execute_batch(sql).map_err(wrap)?;
        tx.pragma_update(None, "user_version", from as i64 + 1)
            .map_err(wrap)?;
        tx.commit().map_err(wrap)?;
    }
    Ok(())
}
