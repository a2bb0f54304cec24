//! The shared quota: the day's ledger ([`QuotaLedger`] on [`PgState`]),
//! per-minute windows handed out in expiring slices, and limits learned
//! from 429s.
//!
//! A slice is a share of an account's minute for one model: `requests`
//! requests and `tokens` tokens a host may send until `expires_at`. Its
//! share counts against the limit from its grant until 60 s after it
//! expires (or is given back, which ends it at once): any request sent
//! under it falls inside that span, so the slices live at any instant hold
//! every request of any rolling 60 s that ends then, and a grant never lets
//! their sum pass the limit. A host thus reaches the database once per
//! slice, not once per request.

use super::{PgError, PgState};
use crate::store::{QuotaLedger, Reservation, Reserved, StoreError};
use crate::types::Limits;
use postgres::{Client, Statement};
use std::time::Duration;

/// A share of an account's minute, held by this host.
#[derive(Debug, Clone, PartialEq)]
pub struct Slice {
    /// Its row.
    pub id: i64,
    /// Requests it allows.
    pub requests: u64,
    /// Tokens it allows.
    pub tokens: u64,
    /// How long it may be used from now (by the database's clock).
    pub valid_for: Duration,
}

/// No room in the account's minute: try again after `retry_in`, when a
/// share may come free: a slice still open may be given back when it ends,
/// a closed one stops counting 60 s after.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SliceRefused {
    /// Until a share comes free.
    pub retry_in: Duration,
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn seconds(d: f64) -> Duration {
    Duration::try_from_secs_f64(d.max(0.0)).unwrap_or(Duration::ZERO)
}

/// The ledger's statements, prepared once per connection: a reservation
/// is then one round trip.
pub(super) struct Statements {
    reserve: Statement,
    reserve_all: Statement,
    release: Statement,
}

impl Statements {
    pub(super) fn prepare(client: &mut Client) -> Result<Statements, postgres::Error> {
        Ok(Statements {
            // One conditional upsert per request: PostgreSQL takes the row
            // lock, so two hosts can never both take the last request of a
            // day.
            reserve: client.prepare(
                "INSERT INTO keyfan.ledger AS l (account, model, day, requests)
                 VALUES ($1, $2, $3, 1)
                 ON CONFLICT (account, model, day) DO UPDATE SET requests = l.requests + 1
                 WHERE $4::bigint IS NULL OR l.requests < $4::bigint",
            )?,
            // Requests that arrive together for one (account, model, day):
            // all of them, if all fit.
            reserve_all: client.prepare(
                "INSERT INTO keyfan.ledger AS l (account, model, day, requests)
                 VALUES ($1, $2, $3, $4::bigint)
                 ON CONFLICT (account, model, day) DO UPDATE SET requests = l.requests + $4::bigint
                 WHERE $5::bigint IS NULL OR l.requests + $4::bigint <= $5::bigint",
            )?,
            release: client.prepare(
                "UPDATE keyfan.ledger SET requests = greatest(requests - 1, 0)
                 WHERE account = $1 AND model = $2 AND day = $3",
            )?,
        })
    }
}

impl QuotaLedger for PgState {
    /// Requests for one (account, model, day) are reserved together, in one
    /// round trip, when they all fit; else one by one, so each is counted
    /// or refused exactly as alone.
    fn reserve(&mut self, requests: &[Reservation]) -> Result<Vec<Reserved>, StoreError> {
        let mut verdicts = vec![None; requests.len()];
        let mut groups: Vec<(&Reservation, Vec<usize>)> = Vec::new();
        for (index, r) in requests.iter().enumerate() {
            match groups.iter_mut().find(|(first, _)| *first == r) {
                Some((_, members)) => members.push(index),
                None => groups.push((r, vec![index])),
            }
        }
        for (r, members) in groups {
            let (limit, day) = (r.limit.map(to_i64), r.day.to_string());
            let count = to_i64(members.len() as u64);
            let together = members.len() > 1
                && limit.is_none_or(|l| l >= count)
                && self
                    .client
                    .execute(
                        &self.statements.reserve_all,
                        &[&r.account, &r.model, &day, &count, &limit],
                    )
                    .map_err(|e| self.wrap(e))?
                    == 1;
            for index in members {
                let counted = together
                    || (r.limit != Some(0)
                        && self
                            .client
                            .execute(
                                &self.statements.reserve,
                                &[&r.account, &r.model, &day, &limit],
                            )
                            .map_err(|e| self.wrap(e))?
                            == 1);
                verdicts[index] = Some(if counted {
                    Reserved::Reserved
                } else {
                    Reserved::Exhausted {
                        reset: r.day.reset(),
                    }
                });
            }
        }
        Ok(verdicts.into_iter().flatten().collect())
    }

    fn release(&mut self, requests: &[Reservation]) -> Result<(), StoreError> {
        for r in requests {
            let day = r.day.to_string();
            self.client
                .execute(&self.statements.release, &[&r.account, &r.model, &day])
                .map_err(|e| self.wrap(e))?;
        }
        Ok(())
    }
}

impl PgState {
    /// The requests counted for `account` and `model` on `day`.
    pub fn day_count(&mut self, account: &str, model: &str, day: &str) -> Result<u64, PgError> {
        let row = self
            .client
            .query_opt(
                "SELECT requests FROM keyfan.ledger WHERE account = $1 AND model = $2 AND day = $3",
                &[&account, &model, &day],
            )
            .map_err(|e| self.wrap(e))?;
        Ok(row.map_or(0, |r| to_u64(r.get(0))))
    }

    /// Takes a share of `account`'s minute for `model`: up to `requests`
    /// requests and `tokens` tokens, usable for `valid_for`, within the
    /// per-minute `limits` (`rpm`, and `tpm` for tokens) together with every
    /// other host's live slices. Grants less than asked when less is left,
    /// and refuses when no request (or no token, under a token limit) is.
    pub fn take_slice(
        &mut self,
        account: &str,
        model: &str,
        limits: Limits,
        requests: u64,
        tokens: u64,
        valid_for: Duration,
    ) -> Result<Result<Slice, SliceRefused>, PgError> {
        let host = self.host.clone();
        let wrap = &self.wrapper();
        let mut tx = self.client.transaction().map_err(wrap)?;
        // Grants of one (account, model) are serialised; others go on.
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1 || '/' || $2))",
            &[&account, &model],
        )
        .map_err(wrap)?;
        tx.execute(
            "DELETE FROM keyfan.minute_slices
             WHERE account = $1 AND model = $2
               AND expires_at < clock_timestamp() - interval '61 seconds'",
            &[&account, &model],
        )
        .map_err(wrap)?;
        let live = tx
            .query_one(
                "SELECT coalesce(sum(requests), 0)::bigint, coalesce(sum(tokens), 0)::bigint,
                        extract(epoch FROM min(CASE WHEN expires_at > clock_timestamp()
                                THEN expires_at ELSE expires_at + interval '60 seconds' END)
                                - clock_timestamp())::float8
                 FROM keyfan.minute_slices
                 WHERE account = $1 AND model = $2
                   AND expires_at + interval '60 seconds' > clock_timestamp()",
                &[&account, &model],
            )
            .map_err(wrap)?;
        let (held_requests, held_tokens) = (to_u64(live.get(0)), to_u64(live.get(1)));
        let retry_in = seconds(live.get::<_, Option<f64>>(2).unwrap_or(0.0));
        let room_requests = limits
            .rpm
            .map_or(requests, |rpm| u64::from(rpm).saturating_sub(held_requests));
        let room_tokens = limits
            .tpm
            .map_or(tokens, |tpm| tpm.saturating_sub(held_tokens));
        let (granted_requests, granted_tokens) =
            (requests.min(room_requests), tokens.min(room_tokens));
        if granted_requests == 0 || (tokens > 0 && granted_tokens == 0) {
            tx.commit().map_err(wrap)?;
            return Ok(Err(SliceRefused { retry_in }));
        }
        let row = tx
            .query_one(
                "INSERT INTO keyfan.minute_slices (account, model, host, requests, tokens, expires_at)
                 VALUES ($1, $2, $3, $4, $5, clock_timestamp() + $6 * interval '1 second')
                 RETURNING id",
                &[
                    &account,
                    &model,
                    &host,
                    &to_i64(granted_requests),
                    &to_i64(granted_tokens),
                    &valid_for.as_secs_f64(),
                ],
            )
            .map_err(wrap)?;
        tx.commit().map_err(wrap)?;
        Ok(Ok(Slice {
            id: row.get(0),
            requests: granted_requests,
            tokens: granted_tokens,
            valid_for,
        }))
    }

    /// Ends `slice` now (a second from now: requests admitted under it may
    /// still be on their way), keeping only what was used of it: the rest
    /// goes back to the account's minute for every host.
    pub fn give_back(
        &mut self,
        slice: i64,
        used_requests: u64,
        used_tokens: u64,
    ) -> Result<(), PgError> {
        self.client
            .execute(
                "UPDATE keyfan.minute_slices
                 SET requests = least(requests, $2), tokens = least(tokens, $3),
                     expires_at = least(expires_at, clock_timestamp() + interval '1 second')
                 WHERE id = $1",
                &[&slice, &to_i64(used_requests), &to_i64(used_tokens)],
            )
            .map_err(|e| self.wrap(e))?;
        Ok(())
    }

    /// Records limits learned for `account` and `model` (from a 429 or the
    /// headers of an answer): each one given replaces the one known, for
    /// every host.
    pub fn learn(&mut self, account: &str, model: &str, limits: Limits) -> Result<(), PgError> {
        let host = self.host.clone();
        self.client
            .execute(
                "INSERT INTO keyfan.learned_limits AS k (account, model, rpm, tpm, otpm, rpd, host)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (account, model) DO UPDATE SET
                   rpm = coalesce(excluded.rpm, k.rpm), tpm = coalesce(excluded.tpm, k.tpm),
                   otpm = coalesce(excluded.otpm, k.otpm), rpd = coalesce(excluded.rpd, k.rpd),
                   host = excluded.host, learned_at = clock_timestamp()",
                &[
                    &account,
                    &model,
                    &limits.rpm.map(i64::from),
                    &limits.tpm.map(to_i64),
                    &limits.otpm.map(to_i64),
                    &limits.rpd.map(i64::from),
                    &host,
                ],
            )
            .map_err(|e| self.wrap(e))?;
        Ok(())
    }

    /// Every limit any host has learned: (account, model, limits).
    pub fn learned(&mut self) -> Result<Vec<(String, String, Limits)>, PgError> {
        let narrow = |n: Option<i64>| n.map(|n| u32::try_from(n).unwrap_or(u32::MAX));
        let wide = |n: Option<i64>| n.map(to_u64);
        let rows = self
            .client
            .query(
                "SELECT account, model, rpm, tpm, otpm, rpd FROM keyfan.learned_limits
                 ORDER BY account, model",
                &[],
            )
            .map_err(|e| self.wrap(e))?;
        Ok(rows
            .iter()
            .map(|row| {
                let limits = Limits {
                    rpm: narrow(row.get(2)),
                    tpm: wide(row.get(3)),
                    otpm: wide(row.get(4)),
                    rpd: narrow(row.get(5)),
                };
                (row.get(0), row.get(1), limits)
            })
            .collect())
    }
}
