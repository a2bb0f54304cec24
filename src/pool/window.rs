//! The per-minute limiter: a sliding-window log of the requests and input
//! tokens admitted in the last 60 s.
//!
//! Google does not say how it counts "per minute". A log of admissions is the
//! one limiter that is safe under both a rolling window and fixed calendar
//! minutes, and it still lets a fresh account burst its whole minute at once.
//! A GCRA or token bucket with a burst of the full limit is not safe under a
//! rolling window (it admits L at t=0 and then one more every 60/L s), and one
//! with a small burst wastes the first minute.

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
    /// It fits from this instant on, if nothing else is admitted before.
    At(Instant),
    /// It can never fit: it alone needs more tokens than the limit.
    Never,
}

/// A log of admissions over the last [`WINDOW`] plus a safety margin.
#[derive(Debug, Clone, Default)]
pub struct SlidingWindow {
    entries: VecDeque<(Instant, u64)>,
    tokens: u64,
}

impl SlidingWindow {
    /// Forgets admissions older than the window plus `margin` at `now`.
    fn prune(&mut self, now: Instant, margin: Duration) {
        while let Some(&(at, tokens)) = self.entries.front() {
            if after(at, WINDOW + margin) > now {
                break;
            }
            self.entries.pop_front();
            self.tokens -= tokens;
        }
    }

    /// Whether one more request of `tokens` input tokens fits under `rpm`
    /// and `tpm` at `now`. An entry keeps counting until `WINDOW + margin`
    /// after its admission, so clock skew with the server cannot bite.
    pub fn check(
        &mut self,
        now: Instant,
        margin: Duration,
        rpm: Option<u32>,
        tpm: Option<u64>,
        tokens: u64,
    ) -> Admission {
        self.prune(now, margin);
        if tpm.is_some_and(|tpm| tokens > tpm) || rpm == Some(0) {
            return Admission::Never;
        }
        // How many of the oldest entries must expire before the request fits.
        let mut expire = 0;
        if let Some(rpm) = rpm {
            expire = (self.entries.len() + 1).saturating_sub(rpm as usize);
        }
        if let Some(tpm) = tpm {
            let mut total = self.tokens;
            let mut k = 0;
            while total + tokens > tpm {
                total -= self.entries[k].1;
                k += 1;
            }
            expire = expire.max(k);
        }
        match expire {
            0 => Admission::Now,
            k => Admission::At(after(self.entries[k - 1].0, WINDOW + margin)),
        }
    }

    /// Records an admission of `tokens` input tokens at `now`.
    pub fn record(&mut self, now: Instant, tokens: u64) {
        self.entries.push_back((now, tokens));
        self.tokens += tokens;
    }

    /// Takes back an admission the server did not count (a 429, a refused
    /// key), so the log matches the server's count.
    pub fn forget(&mut self, at: Instant, tokens: u64) {
        if let Some(i) = self.entries.iter().rposition(|&e| e == (at, tokens)) {
            self.entries.remove(i);
            self.tokens -= tokens;
        }
    }

    /// Forgets all but the `n` most recent admissions.
    pub fn keep_last(&mut self, n: usize) {
        while self.entries.len() > n {
            if let Some((_, tokens)) = self.entries.pop_front() {
                self.tokens -= tokens;
            }
        }
    }

    /// Replaces an admission's estimated input tokens by the count the
    /// server reported, so TPM admission tracks what the server counts.
    pub fn correct(&mut self, at: Instant, estimated: u64, actual: u64) {
        if let Some(entry) = self
            .entries
            .iter_mut()
            .rev()
            .find(|e| **e == (at, estimated))
        {
            entry.1 = actual;
            self.tokens = self.tokens - estimated + actual;
        }
    }

    /// Requests admitted in the window (as of the last check).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Input tokens admitted in the window (as of the last check).
    pub fn tokens(&self) -> u64 {
        self.tokens
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: Duration = Duration::from_millis(250);

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
            assert_eq!(w.check(t0, M, Some(10), None, 1), Admission::Now);
            w.record(t0, 1);
        }
        assert_eq!(
            w.check(t0, M, Some(10), None, 1),
            Admission::At(t0 + WINDOW + M)
        );
    }

    #[test]
    fn the_wait_is_until_the_oldest_needed_entry_leaves() {
        let t0 = Instant::now();
        let mut w = SlidingWindow::default();
        for i in 0..3 {
            w.record(t0 + Duration::from_secs(i * 10), 1);
        }
        let now = t0 + Duration::from_secs(30);
        assert_eq!(
            w.check(now, M, Some(2), None, 1),
            Admission::At(t0 + Duration::from_secs(10) + WINDOW + M)
        );
        // After the first two expire, it fits.
        let later = t0 + Duration::from_secs(10) + WINDOW + M;
        assert_eq!(w.check(later, M, Some(2), None, 1), Admission::Now);
        assert_eq!(w.entries.len(), 1);
    }

    #[test]
    fn tokens_per_minute_wait_for_enough_tokens_to_leave() {
        let t0 = Instant::now();
        let mut w = SlidingWindow::default();
        w.record(t0, 600);
        w.record(t0 + Duration::from_secs(5), 300);
        assert_eq!(w.check(t0, M, None, Some(1000), 100), Admission::Now);
        assert_eq!(
            w.check(t0 + Duration::from_secs(6), M, None, Some(1000), 200),
            Admission::At(t0 + WINDOW + M)
        );
        assert_eq!(w.check(t0, M, None, Some(1000), 1001), Admission::Never);
        assert_eq!(w.tokens, 900);
    }

    #[test]
    fn keep_last_bounds_the_log() {
        let t0 = Instant::now();
        let mut w = SlidingWindow::default();
        for i in 0..10 {
            w.record(t0, i);
        }
        w.keep_last(3);
        assert_eq!(w.len(), 3);
        assert_eq!(w.tokens, 7 + 8 + 9);
    }

    #[test]
    fn a_corrected_admission_counts_the_real_tokens() {
        let t0 = Instant::now();
        let mut w = SlidingWindow::default();
        w.record(t0, 10);
        w.correct(t0, 10, 90);
        assert_eq!(w.tokens, 90);
        assert_ne!(w.check(t0, M, None, Some(100), 20), Admission::Now);
        w.correct(t0, 90, 5);
        assert_eq!(w.check(t0, M, None, Some(100), 20), Admission::Now);
    }

    #[test]
    fn a_forgotten_admission_frees_its_room() {
        let t0 = Instant::now();
        let mut w = SlidingWindow::default();
        w.record(t0, 10);
        w.record(t0, 20);
        assert_ne!(w.check(t0, M, Some(2), None, 1), Admission::Now);
        w.forget(t0, 20);
        assert_eq!(w.check(t0, M, Some(2), None, 1), Admission::Now);
        assert_eq!(w.tokens, 10);
        w.forget(t0, 99);
        assert_eq!(
            w.len(),
            1,
            "forgetting what was never admitted changes nothing"
        );
    }
}
