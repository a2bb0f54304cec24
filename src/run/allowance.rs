//! The day's quota, reserved ahead through the recorder: a worker takes a
//! request the ledger has already counted (durably) from the allowance,
//! without waiting for a commit of its own.
//!
//! When its account's allowance is empty, a worker asks the recorder for its
//! own request and a few more in one reservation, which the ledger grants up
//! to the day's limit. The allowance never holds more than the run has
//! workers, and holds nothing when the limit is small (under
//! [`LIMIT_PER_EXTRA`]), so what a `kill -9` can leave counted but unsent
//! stays at most two requests per worker. It gives back what it holds when
//! it is dropped at the end of a run, so a finished run's ledger counts
//! exactly the requests sent.
//!
//! The allowance owns the requests reserved ahead and nothing else: the
//! limits are the ledger's, and what each request used is committed with
//! its attempt.

use super::call::CallError;
use super::Event;
use crate::store::{Reservation, Reserved};
use std::sync::Mutex;
use tokio::sync::{mpsc, oneshot};

/// The most requests one reservation asks for.
const BLOCK: u64 = 64;

/// A day limit allows one request reserved ahead per this many requests: no
/// reserving ahead under 100 a day, where every request counts.
const LIMIT_PER_EXTRA: u64 = 100;

/// Requests counted in the ledger and not yet sent, per account, model and
/// day, refilled through the recorder.
#[derive(Debug)]
pub(crate) struct Allowance {
    events: mpsc::UnboundedSender<Event>,
    /// The most requests held, together with those asked for.
    cap: u64,
    state: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    /// Requests held for each account, model and day, under the limit they
    /// were reserved against.
    groups: Vec<(Reservation, u64)>,
    /// Requests held in all, and asked for but not yet granted.
    total: u64,
}

impl Allowance {
    /// An allowance that reserves through the recorder behind `events`,
    /// holding at most `workers` requests ahead.
    pub(crate) fn new(events: mpsc::UnboundedSender<Event>, workers: usize) -> Allowance {
        Allowance {
            events,
            cap: workers as u64,
            state: Mutex::default(),
        }
    }

    /// Counts one request of `reservation` against its day: from what is
    /// held, or reserved now with a few more. `Err` when the recorder is
    /// gone.
    pub(crate) async fn reserve(&self, reservation: Reservation) -> Result<Reserved, CallError> {
        let extra = {
            let mut held = self.lock();
            if held.take(&reservation) {
                return Ok(Reserved::Reserved);
            }
            // What was reserved under another limit (a learned one) is
            // given back: the next requests are counted against this one.
            while let Some((stale, count)) = held.remove_stale(&reservation) {
                self.give_back(&stale, count);
            }
            let extra = reservation
                .limit
                .map_or(BLOCK, |limit| limit / LIMIT_PER_EXTRA)
                .min(BLOCK - 1)
                .min(self.cap.saturating_sub(held.total));
            held.total += extra;
            extra
        };
        let (reply, granted) = oneshot::channel();
        let sent = self.events.send(Event::Reserve {
            reservation: reservation.clone(),
            count: 1 + extra,
            reply,
        });
        let granted = match sent {
            Ok(()) => granted.await.ok(),
            Err(_) => None,
        };
        let mut held = self.lock();
        held.total -= extra;
        match granted {
            None => Err(CallError::Ledger),
            Some(0) => Ok(Reserved::Exhausted {
                reset: reservation.day.reset(),
            }),
            Some(n) => {
                held.add(reservation, n - 1);
                Ok(Reserved::Reserved)
            }
        }
    }

    /// Gives back one request of `reservation` the server did not count.
    pub(crate) fn release(&self, reservation: Reservation) {
        self.give_back(&reservation, 1);
    }

    fn give_back(&self, reservation: &Reservation, count: u64) {
        for _ in 0..count {
            // A recorder that is gone has stopped the run: nothing to give
            // back to.
            let _ = self.events.send(Event::Release(reservation.clone()));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Held {
    /// Takes one request of `r`'s group, reserved under `r`'s limit.
    fn take(&mut self, r: &Reservation) -> bool {
        let Some((_, count)) = self
            .groups
            .iter_mut()
            .find(|(g, count)| *count > 0 && same_group(g, r) && g.limit == r.limit)
        else {
            return false;
        };
        *count -= 1;
        self.total -= 1;
        true
    }

    /// Removes what `r`'s group holds under another limit.
    fn remove_stale(&mut self, r: &Reservation) -> Option<(Reservation, u64)> {
        let at = self
            .groups
            .iter()
            .position(|(g, count)| *count > 0 && same_group(g, r) && g.limit != r.limit)?;
        let stale = self.groups.swap_remove(at);
        self.total -= stale.1;
        Some(stale)
    }

    /// Holds `count` more requests of `r`'s group under `r`'s limit.
    fn add(&mut self, r: Reservation, count: u64) {
        if count == 0 {
            return;
        }
        self.total += count;
        match self
            .groups
            .iter_mut()
            .find(|(g, _)| same_group(g, &r) && g.limit == r.limit)
        {
            Some((_, held)) => *held += count,
            None => self.groups.push((r, count)),
        }
    }
}

fn same_group(a: &Reservation, b: &Reservation) -> bool {
    a.day == b.day && a.account == b.account && a.model == b.model
}

impl Drop for Allowance {
    /// Gives back every request still held: the ledger then counts exactly
    /// the requests that went out.
    fn drop(&mut self) {
        let held = std::mem::take(self.state.get_mut().unwrap_or_else(|e| e.into_inner()));
        for (reservation, count) in held.groups {
            self.give_back(&reservation, count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::QuotaDay;

    fn request(limit: Option<u64>) -> Reservation {
        Reservation {
            account: "a".to_owned(),
            model: "gemini-2.5-flash".to_owned(),
            day: "2026-11-28".parse::<QuotaDay>().unwrap(),
            limit,
        }
    }

    /// A recorder that keeps one account's count in memory, granting up to
    /// each reservation's limit: what it counts in the end, and how many
    /// requests each reservation asked for.
    fn recorder(
        mut events: mpsc::UnboundedReceiver<Event>,
    ) -> tokio::task::JoinHandle<(u64, Vec<u64>)> {
        tokio::spawn(async move {
            let (mut counted, mut asks) = (0, Vec::new());
            while let Some(event) = events.recv().await {
                match event {
                    Event::Reserve {
                        reservation,
                        count,
                        reply,
                    } => {
                        let room = reservation.limit.map_or(u64::MAX, |l| l - counted);
                        let granted = count.min(room);
                        counted += granted;
                        asks.push(count);
                        let _ = reply.send(granted);
                    }
                    Event::Release(_) => counted -= 1,
                    other => panic!("not a ledger event: {other:?}"),
                }
            }
            (counted, asks)
        })
    }

    #[tokio::test]
    async fn reserves_ahead_within_the_workers_and_gives_back_what_it_holds() {
        let (events, rx) = mpsc::unbounded_channel();
        let ledger = recorder(rx);
        let allowance = Allowance::new(events, 8);
        for _ in 0..100 {
            assert_eq!(
                allowance.reserve(request(None)).await.unwrap(),
                Reserved::Reserved
            );
        }
        drop(allowance);
        let (counted, asks) = ledger.await.unwrap();
        assert_eq!(counted, 100, "what was held and not used is given back");
        // Its own request, and never more than the workers ahead.
        assert!(asks.iter().all(|&n| n <= 1 + 8), "{asks:?}");
        assert_eq!(asks.len(), 12, "one reservation per 9 requests: {asks:?}");
    }

    #[tokio::test]
    async fn a_small_daily_limit_is_reserved_one_request_at_a_time() {
        let (events, rx) = mpsc::unbounded_channel();
        let ledger = recorder(rx);
        let allowance = Allowance::new(events, 8);
        for _ in 0..50 {
            assert_eq!(
                allowance.reserve(request(Some(50))).await.unwrap(),
                Reserved::Reserved
            );
        }
        let reset = "2026-11-28".parse::<QuotaDay>().unwrap().reset();
        assert_eq!(
            allowance.reserve(request(Some(50))).await.unwrap(),
            Reserved::Exhausted { reset }
        );
        drop(allowance);
        let (counted, asks) = ledger.await.unwrap();
        assert_eq!(counted, 50);
        assert!(asks.iter().all(|&n| n == 1), "{asks:?}");
    }

    #[tokio::test]
    async fn what_was_held_under_another_limit_is_given_back_first() {
        let (events, rx) = mpsc::unbounded_channel();
        let ledger = recorder(rx);
        let allowance = Allowance::new(events, 8);
        let _ = allowance.reserve(request(None)).await.unwrap();
        // A limit is learned: the 7 held without one go back, and the next
        // requests are counted against it.
        for _ in 0..2 {
            let got = allowance.reserve(request(Some(300))).await.unwrap();
            assert_eq!(got, Reserved::Reserved);
        }
        drop(allowance);
        let (counted, asks) = ledger.await.unwrap();
        assert_eq!(asks, [9, 4], "300 a day allows 3 ahead");
        assert_eq!(counted, 3);
    }
}
