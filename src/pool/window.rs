//! The per-minute limiter: a sliding-window log of the requests, input
//! tokens and output tokens admitted in the last 60 s.
//!
//! Google does not say how it counts "per minute". A log of admissions is the
//! one limiter that is safe under both a rolling window and fixed calendar
//! minutes, and it still lets a fresh account burst its whole minute at once.
//! A GCRA or token bucket with a burst of the full limit is not safe under a
//! rolling window (it admits L at t=0 and then one more every 60/L s), and one
//! with a small burst wastes the first minute.

use super::watch::WaitFor;
use crate::types::Limits;
use std::collections::VecDeque;
use tokio::time::{Duration, Instant};

/// The length of the window Google counts RPM and TPM over.
pub const WINDOW: Duration = Duration::from_secs(60);

/// The longest wait the pool ever computes: an instant this far ahead is
/// "not in this run" (about 30 years, like tokio's own far future).
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `at + wait`, never panicking: a wait too long for the clock (a server's
/// `retryDelay` of 2^64 seconds) becomes a far-future instant.
pub fn after(at: Instant, wait: Duration) -> Instant {
    at.checked_add(wait.min(FAR_FUTURE))
        .or_else(|| at.checked_add(Duration::from_secs(86_400)))
        .unwrap_or(at)
}

/// Whether a request fits the window now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// It fits now.
    Now,
    /// It fits from this instant on, if nothing else is admitted before;
    /// the limit named is the one that holds it back longest.
    At(Instant, WaitFor),
    /// It can never fit: it alone needs more tokens than the limit.
    Never,
}

/// What one request counts against the per-minute token limits: its input
/// tokens (estimated, then as the server counted them) and its output
/// tokens (its output cap until it is answered, then its real output).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cost {
    /// Input tokens, counted against TPM (ITPM).
    pub input: u64,
    /// Output tokens, counted against OTPM.
    pub output: u64,
}

/// One admission: when, and what it counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    at: Instant,
    cost: Cost,
}

/// A log of admissions over the last [`WINDOW`] plus a safety margin.
#[derive(Debug, Clone, Default)]
pub struct SlidingWindow {
    entries: VecDeque<Entry>,
    /// The sums of the entries' costs.
    total: Cost,
}

impl SlidingWindow {
    /// Forgets admissions older than the window plus `margin` at `now`.
    fn prune(&mut self, now: Instant, margin: Duration) {
        while let Some(&entry) = self.entries.front() {
            if after(entry.at, WINDOW + margin) > now {
                break;
            }
            self.entries.pop_front();
            self.take(entry.cost);
        }
    }

    fn take(&mut self, cost: Cost) {
        self.total.input -= cost.input;
        self.total.output -= cost.output;
    }

    fn add(&mut self, cost: Cost) {
        self.total.input += cost.input;
        self.total.output += cost.output;
    }

    /// Whether one more request of `cost` fits under `limits`' RPM, TPM and
    /// OTPM at `now`. An entry keeps counting until `WINDOW + margin` after
    /// its admission, so clock skew with the server cannot bite.
    pub fn check(
        &mut self,
        now: Instant,
        margin: Duration,
        limits: &Limits,
        cost: Cost,
    ) -> Admission {
        self.prune(now, margin);
        let too_big = |limit: Option<u64>, need: u64| limit.is_some_and(|l| need > l);
        if too_big(limits.tpm, cost.input)
            || too_big(limits.otpm, cost.output)
            || limits.rpm == Some(0)
        {
            return Admission::Never;
        }
        // How many of the oldest entries must expire before the request fits
        // each limit; the one needing most binds (ties: RPM, then OTPM).
        let rpm = limits.rpm.map_or(0, |rpm| {
            (self.entries.len() + 1).saturating_sub(rpm as usize)
        });
        let entries = &self.entries;
        // How many of the oldest entries must go for `need` more of one
        // token dimension (`of`) to fit `limit`.
        let to_expire = |limit: Option<u64>, mut total: u64, need: u64, of: fn(&Cost) -> u64| {
            let mut k = 0;
            while limit.is_some_and(|limit| total + need > limit) {
                total -= of(&entries[k].cost);
                k += 1;
            }
            k
        };
        let tpm = to_expire(limits.tpm, self.total.input, cost.input, |c| c.input);
        let otpm = to_expire(limits.otpm, self.total.output, cost.output, |c| c.output);
        let (expire, why) = [
            (rpm, WaitFor::Rpm),
            (otpm, WaitFor::Otpm),
            (tpm, WaitFor::Tpm),
        ]
        .into_iter()
        .fold(
            (0, WaitFor::Rpm),
            |best, this| {
                if this.0 > best.0 {
                    this
                } else {
                    best
                }
            },
        );
        match expire {
            0 => Admission::Now,
            k => Admission::At(after(self.entries[k - 1].at, WINDOW + margin), why),
        }
    }

    /// Records an admission of `cost` at `now`.
    pub fn record(&mut self, now: Instant, cost: Cost) {
        self.entries.push_back(Entry { at: now, cost });
        self.add(cost);
    }

    /// Takes back an admission the server did not count (a 429, a refused
    /// key), so the log matches the server's count.
    pub fn forget(&mut self, at: Instant, cost: Cost) {
        let entry = Entry { at, cost };
        if let Some(i) = self.entries.iter().rposition(|&e| e == entry) {
            self.entries.remove(i);
            self.take(cost);
        }
    }

    /// Forgets all but the `n` most recent admissions.
    pub fn keep_last(&mut self, n: usize) {
        while self.entries.len() > n {
            if let Some(entry) = self.entries.pop_front() {
                self.take(entry.cost);
            }
        }
    }

    /// Replaces an admission's estimated cost by what the server counted
    /// (its input tokens, its real output), so admission tracks what the
    /// server counts and an unused output cap frees up at once.
    pub fn correct(&mut self, at: Instant, estimated: Cost, actual: Cost) {
        let wanted = Entry {
            at,
            cost: estimated,
        };
        if let Some(i) = self.entries.iter().rposition(|&e| e == wanted) {
            self.entries[i].cost = actual;
            self.take(estimated);
            self.add(actual);
        }
    }

    /// Requests admitted in the window (as of the last check).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// What the requests admitted in the window count (as of the last check).
    pub fn total(&self) -> Cost {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: Duration = Duration::from_millis(250);

    fn rpm(n: u32) -> Limits {
        Limits {
            rpm: Some(n),
            ..Limits::default()
        }
    }

    fn tpm(n: u64) -> Limits {
        Limits {
            tpm: Some(n),
            ..Limits::default()
        }
    }

    fn otpm(n: u64) -> Limits {
        Limits {
            otpm: Some(n),
            ..Limits::default()
        }
    }

    fn input(n: u64) -> Cost {
        Cost {
            input: n,
            output: 0,
        }
    }

    fn output(n: u64) -> Cost {
        Cost {
            input: 0,
            output: n,
        }
    }

    #[test]
    fn instants_far_in_the_future_do_not_overflow() {
        let t0 = Instant::now();
        let far = after(t0, Duration::MAX);
        assert!(far > after(t0, Duration::from_secs(86_400 * 365)));
        assert_eq!(
            after(t0, Duration::from_secs(7)),
            t0 + Duration::from_secs(7)
        );
    }

    #[test]
    fn a_fresh_window_admits_a_whole_minute_at_once() {
        let t0 = Instant::now();
        let mut w = SlidingWindow::default();
        for _ in 0..10 {
            assert_eq!(w.check(t0, M, &rpm(10), input(1)), Admission::Now);
            w.record(t0, input(1));
        }
        assert_eq!(
            w.check(t0, M, &rpm(10), input(1)),
            Admission::At(t0 + WINDOW + M, WaitFor::Rpm)
        );
    }

    #[test]
    fn the_wait_is_until_the_oldest_needed_entry_leaves() {
        let t0 = Instant::now();
        let mut w = SlidingWindow::default();
        for i in 0..3 {
            w.record(t0 + Duration::from_secs(i * 10), input(1));
        }
        let now = t0 + Duration::from_secs(30);
        assert_eq!(
            w.check(now, M, &rpm(2), input(1)),
            Admission::At(t0 + Duration::from_secs(10) + WINDOW + M, WaitFor::Rpm)
        );
        // After the first two expire, it fits.
        let later = t0 + Duration::from_secs(10) + WINDOW + M;
        assert_eq!(w.check(later, M, &rpm(2), input(1)), Admission::Now);
        assert_eq!(w.entries.len(), 1);
    }

    #[test]
    fn tokens_per_minute_wait_for_enough_tokens_to_leave() {
        let t0 = Instant::now();
        let mut w = SlidingWindow::default();
        w.record(t0, input(600));
        w.record(t0 + Duration::from_secs(5), input(300));
        assert_eq!(w.check(t0, M, &tpm(1000), input(100)), Admission::Now);
        assert_eq!(
            w.check(t0 + Duration::from_secs(6), M, &tpm(1000), input(200)),
            Admission::At(t0 + WINDOW + M, WaitFor::Tpm)
        );
        assert_eq!(w.check(t0, M, &tpm(1000), input(1001)), Admission::Never);
        assert_eq!(w.total.input, 900);
    }

    #[test]
    fn output_tokens_are_admitted_at_their_cap_and_settled_at_their_real_count() {
        let t0 = Instant::now();
        let mut w = SlidingWindow::default();
        let cap = output(400);
        for _ in 0..20 {
            assert_eq!(w.check(t0, M, &otpm(8000), cap), Admission::Now);
            w.record(t0, cap);
        }
        // 20 caps of 400 fill 8,000: the 21st waits for the window.
        assert_eq!(
            w.check(t0, M, &otpm(8000), cap),
            Admission::At(t0 + WINDOW + M, WaitFor::Otpm)
        );
        // Each answer used 100: three quarters of every cap free up at once.
        for _ in 0..20 {
            w.correct(t0, cap, output(100));
        }
        assert_eq!(w.total.output, 2000);
        for _ in 0..15 {
            assert_eq!(w.check(t0, M, &otpm(8000), cap), Admission::Now);
            w.record(t0, cap);
        }
        assert_ne!(w.check(t0, M, &otpm(8000), cap), Admission::Now);
        assert_eq!(w.check(t0, M, &otpm(300), cap), Admission::Never);
        // Input and output are separate limits.
        let both = Limits {
            tpm: Some(10),
            otpm: Some(1_000_000),
            ..Limits::default()
        };
        assert_eq!(
            w.check(
                t0,
                M,
                &both,
                Cost {
                    input: 10,
                    output: 400
                }
            ),
            Admission::Now
        );
    }

    #[test]
    fn the_limit_that_holds_longest_is_named() {
        let t0 = Instant::now();
        let mut w = SlidingWindow::default();
        w.record(t0, input(8));
        w.record(t0 + Duration::from_secs(10), input(1));
        w.record(t0 + Duration::from_secs(20), input(1));
        let both = Limits {
            rpm: Some(3),
            tpm: Some(10),
            ..Limits::default()
        };
        // RPM frees up when the first entry leaves; 9 more tokens need the
        // first two gone, so TPM binds, until the second entry leaves.
        assert_eq!(
            w.check(t0 + Duration::from_secs(30), M, &both, input(9)),
            Admission::At(t0 + Duration::from_secs(10) + WINDOW + M, WaitFor::Tpm)
        );
        assert_eq!(
            w.check(t0 + Duration::from_secs(30), M, &both, input(1)),
            Admission::At(t0 + WINDOW + M, WaitFor::Rpm)
        );
    }

    #[test]
    fn keep_last_bounds_the_log() {
        let t0 = Instant::now();
        let mut w = SlidingWindow::default();
        for i in 0..10 {
            w.record(t0, input(i));
        }
        w.keep_last(3);
        assert_eq!(w.len(), 3);
        assert_eq!(w.total.input, 7 + 8 + 9);
    }

    #[test]
    fn a_corrected_admission_counts_the_real_tokens() {
        let t0 = Instant::now();
        let mut w = SlidingWindow::default();
        w.record(t0, input(10));
        w.correct(t0, input(10), input(90));
        assert_eq!(w.total.input, 90);
        assert_ne!(w.check(t0, M, &tpm(100), input(20)), Admission::Now);
        w.correct(t0, input(90), input(5));
        assert_eq!(w.check(t0, M, &tpm(100), input(20)), Admission::Now);
    }

    #[test]
    fn a_forgotten_admission_frees_its_room() {
        let t0 = Instant::now();
        let mut w = SlidingWindow::default();
        w.record(t0, input(10));
        w.record(t0, input(20));
        assert_ne!(w.check(t0, M, &rpm(2), input(1)), Admission::Now);
        w.forget(t0, input(20));
        assert_eq!(w.check(t0, M, &rpm(2), input(1)), Admission::Now);
        assert_eq!(w.total.input, 10);
        w.forget(t0, input(99));
        assert_eq!(
            w.len(),
            1,
            "forgetting what was never admitted changes nothing"
        );
    }
}
