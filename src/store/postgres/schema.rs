//! keyfan's PostgreSQL schema `keyfan` and its versioned migrations: each
//! entry of [`MIGRATIONS`] is applied once, in order, in one transaction
//! with its version recorded, under an advisory lock so hosts starting
//! together migrate once. Append new entries; never edit an applied one.

use super::{PgError, PgUrl};

/// The migrations, version `i + 1` at index `i`.
const MIGRATIONS: &[&str] = &[
    // 1: the day's ledger, minute slices, learned limits, runs and the queue.
    "CREATE TABLE keyfan.ledger (
        account text NOT NULL,
        model text NOT NULL,
        day text NOT NULL,
        requests bigint NOT NULL,
        PRIMARY KEY (account, model, day)
     );
     CREATE TABLE keyfan.minute_slices (
        id bigserial PRIMARY KEY,
        account text NOT NULL,
        model text NOT NULL,
        host text NOT NULL,
        requests bigint NOT NULL,
        tokens bigint NOT NULL,
        granted_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        expires_at timestamptz NOT NULL
     );
     CREATE INDEX minute_slices_live ON keyfan.minute_slices (account, model, expires_at);
     CREATE TABLE keyfan.learned_limits (
        account text NOT NULL,
        model text NOT NULL,
        rpm bigint,
        tpm bigint,
        otpm bigint,
        rpd bigint,
        host text NOT NULL,
        learned_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        PRIMARY KEY (account, model)
     );
     CREATE TABLE keyfan.runs (
        id bigserial PRIMARY KEY,
        job_path text NOT NULL,
        job_hash text NOT NULL,
        host text NOT NULL,
        pid bigint NOT NULL,
        status text NOT NULL,
        started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        heartbeat_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        finished_at timestamptz
     );
     CREATE INDEX runs_job ON keyfan.runs (job_hash, status);
     CREATE TABLE keyfan.items (
        run_id bigint NOT NULL REFERENCES keyfan.runs (id),
        line bigint NOT NULL,
        item_id text NOT NULL,
        status text NOT NULL,
        host text,
        lease_until timestamptz,
        claims integer NOT NULL DEFAULT 0,
        outcome text,
        result text,
        finished_at timestamptz,
        PRIMARY KEY (run_id, line)
     );
     CREATE INDEX items_open ON keyfan.items (run_id, status, line);",
];

/// The newest schema version this build knows.
pub(super) fn latest() -> i32 {
    i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX)
}

/// Creates the schema if missing and applies every migration not applied.
pub(super) fn migrate(client: &mut postgres::Client, url: &PgUrl) -> Result<(), PgError> {
    let wrap = |source| PgError::Db {
        url: url.clone(),
        source,
    };
    let mut tx = client.transaction().map_err(wrap)?;
    // One migrator at a time across hosts (the key is keyfan's own).
    tx.execute("SELECT pg_advisory_xact_lock(4846571730)", &[])
        .map_err(wrap)?;
    tx.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS keyfan;
         CREATE TABLE IF NOT EXISTS keyfan.migrations (
            version integer PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT clock_timestamp()
         );",
    )
    .map_err(wrap)?;
    let found: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM keyfan.migrations",
            &[],
        )
        .map_err(wrap)?
        .get(0);
    if found > latest() {
        return Err(PgError::TooNew {
            url: url.clone(),
            found,
            supported: latest(),
        });
    }
    for (version, sql) in (1..)
        .zip(MIGRATIONS)
        .skip(usize::try_from(found).unwrap_or(0))
    {
        tx.batch_execute(sql).map_err(wrap)?;
        tx.execute(
            "INSERT INTO keyfan.migrations (version) VALUES ($1)",
            &[&version],
        )
        .map_err(wrap)?;
    }
    tx.commit().map_err(wrap)
}
