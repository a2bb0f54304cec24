//! One job, several hosts: the run row (the run lock across hosts) and the
//! work queue of the run's items.
//!
//! The host that starts a run loads its items as `pending`. Every host
//! working it (the first, and each `--join`) claims pending items in chunks
//! (`FOR UPDATE SKIP LOCKED`, so two hosts never take the same one), each
//! claim under a lease until `lease_until`, which the host renews while it
//! lives ([`PgState::heartbeat`]). A claim whose lease ran out (its host was
//! killed, or lost the network) is claimable again. An item ends once: only
//! the host that holds its claim can finish it, and a finished item is never
//! claimed again. Each finished item keeps its results line, so the whole
//! run's results come from here ([`PgState::results`]).

use super::{PgError, PgState};
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::Type;
use std::io::Write;
use std::time::Duration;

/// How [`PgState::open_run`] took the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// A new run, its items loaded: the id.
    Started(i64),
    /// The job's existing run (joined, or taken over from a dead host).
    Joined(i64),
}

impl Claim {
    /// The run's id.
    pub fn run(self) -> i64 {
        match self {
            Claim::Started(run) | Claim::Joined(run) => run,
        }
    }
}

/// Why a run could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// A live host works the job's run and this one did not ask to join.
    #[error(
        "run {run} of this job is in progress on {host} (pid {pid}, last seen {seen_s:.0} s ago): \
         pass --join to work it from here too, or wait for it to finish"
    )]
    Held {
        /// The run.
        run: i64,
        /// The host (`hostname:pid`) that last renewed it.
        host: String,
        /// Its process id.
        pid: i64,
        /// Seconds since its last heartbeat.
        seen_s: f64,
    },
    /// The database failed.
    #[error(transparent)]
    Db(#[from] PgError),
}

/// An item claimed by this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedItem {
    /// Its line in the job.
    pub line: u64,
    /// Its id.
    pub id: String,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn line_of(line: u64) -> i64 {
    i64::try_from(line).unwrap_or(i64::MAX)
}

impl PgState {
    /// Opens the run of the job whose content hashes to `job_hash`: its
    /// latest run if it has one, else a new one with `items` (line, id)
    /// loaded as pending. A run another host renewed within `stale_after` is
    /// refused unless `join`; one not renewed since (its hosts died) is taken
    /// over.
    pub fn open_run(
        &mut self,
        job_path: &str,
        job_hash: &str,
        items: impl IntoIterator<Item = (u64, String)>,
        join: bool,
        stale_after: Duration,
    ) -> Result<Claim, JoinError> {
        let (host, pid) = (self.host.clone(), i64::from(std::process::id()));
        let wrap = &self.wrapper();
        let mut tx = self.client.transaction().map_err(wrap)?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('keyfan-run/' || $1))",
            &[&job_hash],
        )
        .map_err(wrap)?;
        let latest = tx
            .query_opt(
                "SELECT id, status, host, pid,
                        extract(epoch FROM clock_timestamp() - heartbeat_at)::float8
                 FROM keyfan.runs WHERE job_hash = $1 ORDER BY id DESC LIMIT 1",
                &[&job_hash],
            )
            .map_err(wrap)?;
        if let Some(row) = latest {
            let (run, status, seen_s): (i64, String, f64) = (row.get(0), row.get(1), row.get(4));
            if status == "running" && !join && seen_s < secs(stale_after) {
                return Err(JoinError::Held {
                    run,
                    host: row.get(2),
                    pid: row.get(3),
                    seen_s,
                });
            }
            tx.execute(
                "UPDATE keyfan.runs SET status = 'running', host = $2, pid = $3,
                        heartbeat_at = clock_timestamp(), finished_at = NULL
                 WHERE id = $1",
                &[&run, &host, &pid],
            )
            .map_err(wrap)?;
            // A run taken up again sends what it deferred (as a resume does).
            if status != "running" {
                tx.execute(
                    "UPDATE keyfan.items SET status = 'pending', host = NULL, result = NULL,
                            outcome = NULL, finished_at = NULL
                     WHERE run_id = $1 AND outcome = 'deferred'",
                    &[&run],
                )
                .map_err(wrap)?;
            }
            tx.commit().map_err(wrap)?;
            return Ok(Claim::Joined(run));
        }
        let run: i64 = tx
            .query_one(
                "INSERT INTO keyfan.runs (job_path, job_hash, host, pid, status)
                 VALUES ($1, $2, $3, $4, 'running') RETURNING id",
                &[&job_path, &job_hash, &host, &pid],
            )
            .map_err(wrap)?
            .get(0);
        let sink = tx
            .copy_in("COPY keyfan.items (run_id, line, item_id, status) FROM STDIN BINARY")
            .map_err(wrap)?;
        let mut writer =
            BinaryCopyInWriter::new(sink, &[Type::INT8, Type::INT8, Type::TEXT, Type::TEXT]);
        for (line, id) in items {
            writer
                .write(&[&run, &line_of(line), &id, &"pending"])
                .map_err(wrap)?;
        }
        writer.finish().map_err(wrap)?;
        tx.commit().map_err(wrap)?;
        Ok(Claim::Started(run))
    }

    /// Claims up to `n` items of `run` that are pending or whose claim's
    /// lease ran out, in job order, each for `lease`.
    pub fn claim(
        &mut self,
        run: i64,
        n: u64,
        lease: Duration,
    ) -> Result<Vec<ClaimedItem>, PgError> {
        let host = self.host.clone();
        let rows = self
            .client
            .query(
                "UPDATE keyfan.items i
                 SET status = 'claimed', host = $2, claims = i.claims + 1,
                     lease_until = clock_timestamp() + $4 * interval '1 second'
                 FROM (SELECT line FROM keyfan.items
                       WHERE run_id = $1 AND (status = 'pending'
                             OR (status = 'claimed' AND lease_until < clock_timestamp()))
                       ORDER BY line LIMIT $3
                       FOR UPDATE SKIP LOCKED) c
                 WHERE i.run_id = $1 AND i.line = c.line
                 RETURNING i.line, i.item_id",
                &[&run, &host, &line_of(n), &secs(lease)],
            )
            .map_err(|e| self.wrap(e))?;
        let mut claimed: Vec<ClaimedItem> = rows
            .iter()
            .map(|row| ClaimedItem {
                line: u64::try_from(row.get::<_, i64>(0)).unwrap_or(0),
                id: row.get(1),
            })
            .collect();
        claimed.sort_by_key(|c| c.line);
        Ok(claimed)
    }

    /// Renews this host's claims on `run` and the run's heartbeat for
    /// another `lease`. How many claims it holds.
    pub fn heartbeat(&mut self, run: i64, lease: Duration) -> Result<u64, PgError> {
        let (host, pid) = (self.host.clone(), i64::from(std::process::id()));
        self.client
            .execute(
                "UPDATE keyfan.runs SET heartbeat_at = clock_timestamp(), host = $2, pid = $3
                 WHERE id = $1 AND status = 'running'",
                &[&run, &host, &pid],
            )
            .map_err(|e| self.wrap(e))?;
        let renewed = self
            .client
            .execute(
                "UPDATE keyfan.items
                 SET lease_until = clock_timestamp() + $3 * interval '1 second'
                 WHERE run_id = $1 AND host = $2 AND status = 'claimed'",
                &[&run, &host, &secs(lease)],
            )
            .map_err(|e| self.wrap(e))?;
        Ok(renewed)
    }

    /// Ends the claimed item at `line` with its results line and outcome
    /// (`ok`, `failed`, …). `false` when this host no longer holds its
    /// claim (the lease ran out and another host took it): the item ends
    /// there, not here.
    pub fn finish(
        &mut self,
        run: i64,
        line: u64,
        result: &str,
        outcome: &str,
    ) -> Result<bool, PgError> {
        self.end(run, line, result, outcome, true)
    }

    /// Ends the item at `line` with what this host recorded of it while the
    /// database was out of reach (its claim may since have lapsed), unless
    /// it ended already: the next start's reconciliation.
    pub fn settle(
        &mut self,
        run: i64,
        line: u64,
        result: &str,
        outcome: &str,
    ) -> Result<bool, PgError> {
        self.end(run, line, result, outcome, false)
    }

    fn end(
        &mut self,
        run: i64,
        line: u64,
        result: &str,
        outcome: &str,
        claimed: bool,
    ) -> Result<bool, PgError> {
        let host = self.host.clone();
        let changed = self
            .client
            .execute(
                "UPDATE keyfan.items
                 SET status = 'done', result = $3, outcome = $5,
                     finished_at = clock_timestamp(), lease_until = NULL, host = $4
                 WHERE run_id = $1 AND line = $2 AND status <> 'done'
                   AND (NOT $6 OR (status = 'claimed' AND host = $4))",
                &[&run, &line_of(line), &result, &host, &outcome, &claimed],
            )
            .map_err(|e| self.wrap(e))?;
        Ok(changed == 1)
    }

    /// Gives this host's unfinished claims on `run` back to pending (a
    /// host that stops early). How many.
    pub fn unclaim(&mut self, run: i64) -> Result<u64, PgError> {
        let host = self.host.clone();
        self.client
            .execute(
                "UPDATE keyfan.items SET status = 'pending', host = NULL, lease_until = NULL
                 WHERE run_id = $1 AND host = $2 AND status = 'claimed'",
                &[&run, &host],
            )
            .map_err(|e| self.wrap(e))
    }

    /// Items of `run` not finished yet (pending or claimed).
    pub fn open_items(&mut self, run: i64) -> Result<u64, PgError> {
        let row = self
            .client
            .query_one(
                "SELECT count(*) FROM keyfan.items WHERE run_id = $1 AND status <> 'done'",
                &[&run],
            )
            .map_err(|e| self.wrap(e))?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    /// Marks `run` finished when no item of it is open: the last host to
    /// finish closes it. Whether it did.
    pub fn close_run(&mut self, run: i64) -> Result<bool, PgError> {
        let changed = self
            .client
            .execute(
                "UPDATE keyfan.runs SET status = 'done', finished_at = clock_timestamp()
                 WHERE id = $1 AND status = 'running' AND NOT EXISTS
                   (SELECT 1 FROM keyfan.items WHERE run_id = $1 AND status <> 'done')",
                &[&run],
            )
            .map_err(|e| self.wrap(e))?;
        Ok(changed == 1)
    }

    /// The newest run's id, if any.
    pub fn latest_run(&mut self) -> Result<Option<i64>, PgError> {
        let row = self
            .client
            .query_one("SELECT max(id) FROM keyfan.runs", &[])
            .map_err(|e| self.wrap(e))?;
        Ok(row.get(0))
    }

    /// Writes every finished item's results line of `run`, in job order,
    /// to `out`, one per line. How many.
    pub fn results(&mut self, run: i64, out: &mut dyn Write) -> Result<u64, ResultsError> {
        let wrap = &self.wrapper();
        let mut written = 0;
        let mut rows = self
            .client
            .query_raw(
                "SELECT result FROM keyfan.items WHERE run_id = $1 AND status = 'done'
                 ORDER BY line",
                [&run],
            )
            .map_err(wrap)?;
        while let Some(row) = rows.next().map_err(wrap)? {
            let line: String = row.get(0);
            writeln!(out, "{}", line.trim_end()).map_err(ResultsError::Write)?;
            written += 1;
        }
        Ok(written)
    }
}

/// Why a run's results could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    /// The database failed.
    #[error(transparent)]
    Db(#[from] PgError),
    /// The output failed.
    #[error("failed to write results")]
    Write(#[source] std::io::Error),
}
