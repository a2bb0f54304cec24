//! The quota ledger: the one gate for daily quotas (requests per day, reset
//! at midnight US/Pacific).
//!
//! Every request is reserved here before it is sent, against its account's
//! per-day limit for the model. A reservation either counts the request or is
//! refused with the instant the quota resets; it never counts past the limit.
//! A request the server did not count (a 429, a refused key) is released.
//! Because the count lives in the state file, every run that shares the file
//! (cron runs on the same day, several jobs) draws on one count.
//!
//! The ledger owns the day's counts and nothing else: per-minute windows are
//! the pool's, and what a request used (tokens, cost) is settled with its
//! attempt in [`super::Store::commit`].

use super::{Store, StoreError};
use crate::types::QuotaDay;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;

/// One request to count against `account`'s quota for `model` on `day`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The account whose quota it uses.
    pub account: String,
    /// The model.
    pub model: String,
    /// The quota day it counts against.
    pub day: QuotaDay,
    /// The account's requests-per-day limit for the model, when one is known
    /// (configured or learned); `None` counts without a limit.
    pub limit: Option<u64>,
}

/// What the ledger said to a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Reserved {
    /// Counted: the request may go out.
    Reserved,
    /// The day's quota is spent: nothing was counted, and nothing may be
    /// sent on this account for this model before `reset`.
    Exhausted {
        /// When the quota day ends.
        reset: DateTime<Utc>,
    },
}

/// The gate for daily quotas. [`Store`] keeps it in the state file; a
/// [`MemoryLedger`] serves a program that keeps no state.
pub trait QuotaLedger {
    /// Reserves one request for each of `requests`, in order, each atomically
    /// against its limit; durable when this returns.
    fn reserve(&mut self, requests: &[Reservation]) -> Result<Vec<Reserved>, StoreError>;

    /// Gives back one reserved request for each of `requests`: requests the
    /// server did not count.
    fn release(&mut self, requests: &[Reservation]) -> Result<(), StoreError>;
}

impl QuotaLedger for Store {
    fn reserve(&mut self, requests: &[Reservation]) -> Result<Vec<Reserved>, StoreError> {
        self.in_transaction(|tx| reserve_all(tx, requests))
    }

    fn release(&mut self, requests: &[Reservation]) -> Result<(), StoreError> {
        self.in_transaction(|tx| release_all(tx, requests))
    }
}

/// Reserves each of `requests` on `conn`, in order: the one gate, shared by
/// [`QuotaLedger::reserve`] and a run's group commit
/// ([`Store::commit`](super::Store::commit)).
pub(super) fn reserve_all(
    conn: &Connection,
    requests: &[Reservation],
) -> rusqlite::Result<Vec<Reserved>> {
    requests
        .iter()
        .map(|r| reserve_up_to(conn, r, 1).map(|counted| verdict(r, counted == 1)))
        .collect()
}

/// Reserves `count` requests of each of `requests` on `conn`, as far as
/// their limits allow, in order: the first asker of an account's last
/// requests gets them. One statement per account, model and day, however
/// many ask. How many each was granted.
pub(super) fn reserve_each(
    conn: &Connection,
    requests: &[(Reservation, u64)],
) -> rusqlite::Result<Vec<u64>> {
    let mut granted = vec![0; requests.len()];
    let mut done = vec![false; requests.len()];
    for (i, (r, _)) in requests.iter().enumerate() {
        if done[i] {
            continue;
        }
        let group: Vec<usize> = (i..requests.len())
            .filter(|&j| !done[j] && requests[j].0 == *r)
            .collect();
        let wanted = group.iter().map(|&j| requests[j].1).sum();
        let mut left = reserve_up_to(conn, r, wanted)?;
        for j in group {
            granted[j] = requests[j].1.min(left);
            left -= granted[j];
            done[j] = true;
        }
    }
    Ok(granted)
}

/// Gives back one request for each of `requests` on `conn`.
pub(super) fn release_all(conn: &Connection, requests: &[Reservation]) -> rusqlite::Result<()> {
    let mut release = conn.prepare_cached(
        "UPDATE ledger SET requests = max(requests - 1, 0)
         WHERE account = ?1 AND model = ?2 AND day = ?3",
    )?;
    for r in requests {
        release.execute(params![r.account, r.model, r.day.to_string()])?;
    }
    Ok(())
}

/// Counts up to `wanted` requests of `r`, as many as its limit leaves room
/// for: one conditional upsert, which never counts past the limit. How many
/// it counted (0 when the day is spent).
///
/// The upsert takes what the row has room for in the same statement, so two
/// processes on one state file can never both take the last request; the
/// caller's transaction must be immediate, so that the count read back to
/// learn what was taken is this statement's.
fn reserve_up_to(conn: &Connection, r: &Reservation, wanted: u64) -> rusqlite::Result<u64> {
    if r.limit == Some(0) || wanted == 0 {
        return Ok(0);
    }
    let limit = r.limit.map(|l| i64::try_from(l).unwrap_or(i64::MAX));
    let wanted = i64::try_from(wanted).unwrap_or(i64::MAX);
    let day = r.day.to_string();
    let before: i64 = conn
        .prepare_cached(
            "SELECT requests FROM ledger WHERE account = ?1 AND model = ?2 AND day = ?3",
        )?
        .query_row(params![r.account, r.model, day], |row| row.get(0))
        .optional()?
        .unwrap_or(0);
    let room = limit.map_or(wanted, |limit| wanted.min(limit.saturating_sub(before)));
    if room <= 0 {
        return Ok(0);
    }
    let changed = conn
        .prepare_cached(
            "INSERT INTO ledger (account, model, day, requests, ok, input_tokens, output_tokens, cost_usd)
             VALUES (?1, ?2, ?3, ?4, 0, 0, 0, 0.0)
             ON CONFLICT (account, model, day) DO UPDATE SET requests = requests + excluded.requests
             WHERE ?5 IS NULL OR requests + excluded.requests <= ?5",
        )?
        .execute(params![r.account, r.model, day, room, limit])?;
    Ok(if changed == 1 { room as u64 } else { 0 })
}

fn verdict(r: &Reservation, counted: bool) -> Reserved {
    if counted {
        Reserved::Reserved
    } else {
        Reserved::Exhausted {
            reset: r.day.reset(),
        }
    }
}

/// A ledger in memory, for a program that calls the APIs through keyfan
/// without a state file: the same gate, forgotten when the process ends.
#[derive(Debug, Default)]
pub struct MemoryLedger {
    counts: HashMap<(String, String, QuotaDay), u64>,
}

impl QuotaLedger for MemoryLedger {
    fn reserve(&mut self, requests: &[Reservation]) -> Result<Vec<Reserved>, StoreError> {
        Ok(requests
            .iter()
            .map(|r| {
                let count = self
                    .counts
                    .entry((r.account.clone(), r.model.clone(), r.day))
                    .or_default();
                let counted = r.limit.is_none_or(|limit| *count < limit);
                if counted {
                    *count += 1;
                }
                verdict(r, counted)
            })
            .collect())
    }

    fn release(&mut self, requests: &[Reservation]) -> Result<(), StoreError> {
        for r in requests {
            if let Some(count) = self
                .counts
                .get_mut(&(r.account.clone(), r.model.clone(), r.day))
            {
                *count = count.saturating_sub(1);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Batch;

    fn request(account: &str, limit: Option<u64>) -> Reservation {
        Reservation {
            account: account.to_owned(),
            model: "gemini-2.5-flash".to_owned(),
            day: "2026-11-28".parse().unwrap(),
            limit,
        }
    }

    fn counted(verdicts: &[Reserved]) -> usize {
        verdicts
            .iter()
            .filter(|v| **v == Reserved::Reserved)
            .count()
    }

    /// Both ledgers refuse at the limit, count nothing when they refuse, and
    /// take back what is released.
    fn refuses_at_the_limit(ledger: &mut dyn QuotaLedger) {
        let three = vec![request("a", Some(3)); 5];
        let verdicts = ledger.reserve(&three).unwrap();
        assert_eq!(counted(&verdicts), 3);
        let reset = "2026-11-28".parse::<QuotaDay>().unwrap().reset();
        assert_eq!(verdicts[3], Reserved::Exhausted { reset });
        // Another account, or no limit, is not held back by this one.
        assert_eq!(
            counted(&ledger.reserve(&[request("b", Some(3))]).unwrap()),
            1
        );
        assert_eq!(
            counted(&ledger.reserve(&vec![request("d", None); 9]).unwrap()),
            9
        );
        // A zero limit (a free tier without the model) refuses at once.
        assert_eq!(
            counted(&ledger.reserve(&[request("c", Some(0))]).unwrap()),
            0
        );
        ledger.release(&[request("a", Some(3))]).unwrap();
        ledger.release(&[request("a", Some(3))]).unwrap();
        assert_eq!(counted(&ledger.reserve(&three).unwrap()), 2);
    }

    #[test]
    fn the_state_file_ledger_refuses_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        refuses_at_the_limit(&mut store);
        let row = &store.ledger("2026-11-28".parse().unwrap()).unwrap();
        let a = row.iter().find(|r| r.account == "a").unwrap();
        assert_eq!(a.requests, 3, "never counted past the limit");
    }

    #[test]
    fn the_memory_ledger_refuses_at_the_limit() {
        refuses_at_the_limit(&mut MemoryLedger::default());
    }

    #[test]
    fn a_group_commit_grants_blocks_in_order_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        let run = store.create_run("job.jsonl", "abc", false).unwrap();
        let (a, free) = (request("a", Some(10)), request("b", None));
        let batch = Batch {
            reservations: vec![
                (a.clone(), 4),
                (free.clone(), 7),
                (a.clone(), 4),
                (a.clone(), 4),
            ],
            ..Batch::default()
        };
        // The first askers of the last requests get them.
        assert_eq!(store.commit(run, &batch).unwrap(), [4, 7, 4, 2]);
        let again = Batch {
            reservations: vec![(a, 1), (free, 1)],
            ..Batch::default()
        };
        assert_eq!(store.commit(run, &again).unwrap(), [0, 1]);
        let rows = store.ledger("2026-11-28".parse().unwrap()).unwrap();
        let requests = |account: &str| rows.iter().find(|r| r.account == account).unwrap().requests;
        assert_eq!((requests("a"), requests("b")), (10, 8));
    }

    /// Two processes reserving `block` requests at a time, 100 times each,
    /// on one file whose limit is 150 blocks: how many requests they got,
    /// and how many the file counts.
    fn two_processes_reserving(block: u64) -> (u64, u64) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        Store::open(&path).unwrap();
        let limit = 150 * block;
        let counted = std::thread::scope(|scope| {
            let reservers: Vec<_> = (0..2)
                .map(|_| {
                    scope.spawn(|| {
                        let mut store = Store::open(&path).unwrap();
                        let run = store.create_run("job.jsonl", "abc", false).unwrap();
                        let r = request("a", Some(limit));
                        (0..100)
                            .map(|_| match block {
                                1 => counted(&store.reserve(std::slice::from_ref(&r)).unwrap())
                                    as u64,
                                _ => {
                                    let batch = Batch {
                                        reservations: vec![(r.clone(), block)],
                                        ..Batch::default()
                                    };
                                    store.commit(run, &batch).unwrap()[0]
                                }
                            })
                            .sum::<u64>()
                    })
                })
                .collect();
            reservers.into_iter().map(|r| r.join().unwrap()).sum()
        });
        let store = Store::open(&path).unwrap();
        let rows = store.ledger("2026-11-28".parse().unwrap()).unwrap();
        (counted, rows[0].requests)
    }

    #[test]
    fn two_processes_on_one_state_file_never_pass_the_limit_together() {
        assert_eq!(two_processes_reserving(1), (150, 150));
        // In blocks, through the run's group commit, as a run reserves ahead.
        assert_eq!(two_processes_reserving(7), (1050, 1050));
    }
}
