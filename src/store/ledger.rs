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
use rusqlite::{params, Connection};
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
        .map(|r| reserve_one(conn, r).map(|counted| verdict(r, counted)))
        .collect()
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

/// Counts one request unless its limit is reached: a single conditional
/// upsert, so two processes on one state file can never both take the last
/// request. Whether it was counted.
fn reserve_one(conn: &Connection, r: &Reservation) -> rusqlite::Result<bool> {
    if r.limit == Some(0) {
        return Ok(false);
    }
    let limit = r.limit.map(|l| i64::try_from(l).unwrap_or(i64::MAX));
    let changed = conn
        .prepare_cached(
            "INSERT INTO ledger (account, model, day, requests, ok, input_tokens, output_tokens, cost_usd)
             VALUES (?1, ?2, ?3, 1, 0, 0, 0, 0.0)
             ON CONFLICT (account, model, day) DO UPDATE SET requests = requests + 1
             WHERE ?4 IS NULL OR requests < ?4",
        )?
        .execute(params![r.account, r.model, r.day.to_string(), limit])?;
    Ok(changed == 1)
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
    fn two_processes_on_one_state_file_never_pass_the_limit_together() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        Store::open(&path).unwrap();
        let limit = 150;
        let counted: usize = std::thread::scope(|scope| {
            let reservers: Vec<_> = (0..2)
                .map(|_| {
                    scope.spawn(|| {
                        let mut store = Store::open(&path).unwrap();
                        (0..100)
                            .map(|_| {
                                let verdicts = store.reserve(&[request("a", Some(limit))]).unwrap();
                                counted(&verdicts)
                            })
                            .sum::<usize>()
                    })
                })
                .collect();
            reservers.into_iter().map(|r| r.join().unwrap()).sum()
        });
        assert_eq!(counted, limit as usize);
        let store = Store::open(&path).unwrap();
        let rows = store.ledger("2026-11-28".parse().unwrap()).unwrap();
        assert_eq!(rows[0].requests, limit);
    }
}
