//! Per-project, per-model quota as Google enforces it: requests and input
//! tokens over a rolling 60 s window (a sliding log of admissions) and
//! requests per Pacific day; and output tokens per rolling minute as
//! Anthropic counts them: a request is admitted with its `max_tokens` and
//! settled with its real output ("OTPM rate limits are estimated based on
//! max_tokens at the beginning of each request, and adjusted at the end of
//! the request", <https://docs.anthropic.com/en/api/rate-limits>). Pure bookkeeping: the caller passes the time in,
//! so tests move time without sleeping.

use super::config::ModelLimits;
use super::stats::{ModelStats, ProjectStats};
use chrono::{DateTime, Days, NaiveDate, Utc};
use chrono_tz::America::Los_Angeles;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// The rolling window of RPM and TPM.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);

/// The simulator's time: tokio's clock (real, or paused and advanced in
/// tests) plus a skew that [`super::Simulator::advance_clock`] pushes
/// forward, so a minute or a day can pass without waiting. The wall clock
/// is read once, at the start, and then follows the monotonic one: paused
/// time turns the Pacific day too.
#[derive(Debug)]
pub(crate) struct Clock {
    /// The start, on tokio's clock and on the wall.
    origin: (Instant, DateTime<Utc>),
    skew_nanos: AtomicU64,
}

impl Clock {
    /// A clock starting at the current time.
    pub(crate) fn new() -> Clock {
        Clock {
            origin: (Instant::now(), Utc::now()),
            skew_nanos: AtomicU64::new(0),
        }
    }

    fn skew(&self) -> Duration {
        Duration::from_nanos(self.skew_nanos.load(Ordering::Relaxed))
    }

    /// Monotonic now, for the rolling windows.
    pub(crate) fn now(&self) -> Instant {
        Instant::now() + self.skew()
    }

    /// Wall-clock now, for the Pacific day.
    pub(crate) fn wall(&self) -> DateTime<Utc> {
        let (start, start_wall) = self.origin;
        // A skew beyond chrono's range (~262,000 years) saturates.
        chrono::Duration::from_std(self.now() - start)
            .ok()
            .and_then(|since| start_wall.checked_add_signed(since))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// Moves the clock forward by `by`.
    pub(crate) fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.skew_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// The Pacific calendar day of `wall` (RPD resets at midnight there).
pub(crate) fn pacific_day(wall: DateTime<Utc>) -> NaiveDate {
    wall.with_timezone(&Los_Angeles).date_naive()
}

/// Time from `wall` to the next midnight in Los Angeles, DST-aware.
pub(crate) fn until_pacific_midnight(wall: DateTime<Utc>) -> Duration {
    let next_day = pacific_day(wall)
        .checked_add_days(Days::new(1))
        .and_then(|day| day.and_hms_opt(0, 0, 0))
        .and_then(|midnight| midnight.and_local_timezone(Los_Angeles).earliest());
    next_day
        .and_then(|midnight| (midnight.with_timezone(&Utc) - wall).to_std().ok())
        .unwrap_or(Duration::from_secs(24 * 3600))
}

/// Which limit a request hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Requests per Pacific day.
    RequestsPerDay,
    /// Requests per rolling minute.
    RequestsPerMinute,
    /// Input tokens per rolling minute.
    TokensPerMinute,
    /// Output tokens per rolling minute.
    OutputTokensPerMinute,
}

/// Use of one per-minute limit, for OpenAI's `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WindowUse {
    /// The limit.
    pub limit: u64,
    /// Used in the current window.
    pub used: u64,
    /// Until the window is empty again.
    pub reset: Duration,
}

/// Per-minute use after a request was decided.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Headroom {
    /// Requests, when an RPM is set.
    pub requests: Option<WindowUse>,
    /// Input tokens, when a TPM is set.
    pub tokens: Option<WindowUse>,
    /// Output tokens, when an OTPM is set.
    pub output: Option<WindowUse>,
    /// The simulator's wall clock when it was decided (Anthropic states
    /// resets as times).
    pub at: DateTime<Utc>,
}

/// A request refused with 429.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rejection {
    /// The limit it hit.
    pub scope: Scope,
    /// That limit's value.
    pub limit: u64,
    /// Already used of it.
    pub used: u64,
    /// What this request asked for (1 request, its input tokens, or its
    /// output cap).
    pub requested: u64,
    /// When it could succeed: the window frees enough, or the day rolls over.
    pub retry_after: Duration,
    /// Per-minute use, unchanged by the refused request.
    pub headroom: Headroom,
}

/// One admission in the window.
#[derive(Debug, Clone, Copy)]
struct Admitted {
    at: Instant,
    /// Input tokens.
    input: u64,
    /// Output tokens: the cap until settled, then the real output.
    output: u64,
    /// Its ticket, to settle it by.
    ticket: u64,
}

/// An admitted request's claim on its window, to settle its output by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket(u64);

/// The quota state of one model in one project.
#[derive(Debug, Default)]
struct ModelState {
    /// Admissions in the last [`WINDOW`].
    log: VecDeque<Admitted>,
    /// Sum of the input tokens in `log`.
    window_tokens: u64,
    /// Sum of the output tokens in `log`.
    window_output: u64,
    /// Admissions so far: the next ticket.
    tickets: u64,
    /// The Pacific day `day_requests` counts.
    day: Option<NaiveDate>,
    day_requests: u64,
    stats: ModelStats,
}

impl ModelState {
    fn prune(&mut self, now: Instant) {
        while let Some(&entry) = self.log.front() {
            if now.duration_since(entry.at) < WINDOW {
                break;
            }
            self.log.pop_front();
            self.window_tokens -= entry.input;
            self.window_output -= entry.output;
        }
    }

    /// When the entry at `index` leaves the window.
    fn expiry(&self, index: usize, now: Instant) -> Duration {
        self.log
            .get(index)
            .map_or(Duration::ZERO, |e| (e.at + WINDOW).duration_since(now))
    }

    /// Until the whole window is empty (OpenAI's `x-ratelimit-reset-*`).
    fn full_reset(&self, now: Instant) -> Duration {
        self.log
            .len()
            .checked_sub(1)
            .map_or(Duration::ZERO, |last| self.expiry(last, now))
    }

    fn headroom(&self, limits: ModelLimits, now: Instant, wall: DateTime<Utc>) -> Headroom {
        let reset = self.full_reset(now);
        let window = |limit: u64, used: u64| WindowUse { limit, used, reset };
        Headroom {
            requests: limits
                .rpm
                .map(|rpm| window(u64::from(rpm), self.log.len() as u64)),
            tokens: limits.tpm.map(|tpm| window(tpm, self.window_tokens)),
            output: limits.otpm.map(|otpm| window(otpm, self.window_output)),
            at: wall,
        }
    }

    /// Until `tokens` more of one kind (`of`, summing to `in_window`) fit
    /// under `limit`; a whole window if they never can.
    fn tokens_free_in(
        &self,
        (limit, mut in_window): (u64, u64),
        tokens: u64,
        of: fn(&Admitted) -> u64,
        now: Instant,
    ) -> Duration {
        if tokens > limit {
            return WINDOW;
        }
        for (index, entry) in self.log.iter().enumerate() {
            in_window -= of(entry);
            if in_window + tokens <= limit {
                return self.expiry(index, now);
            }
        }
        Duration::ZERO
    }

    /// Checks RPD, then RPM, then TPM, then OTPM (with the output cap); the
    /// first one exceeded refuses.
    fn check(
        &self,
        limits: ModelLimits,
        (tokens, output): (u64, u64),
        now: Instant,
        wall: DateTime<Utc>,
    ) -> Option<Rejection> {
        let in_window = self.log.len() as u64;
        let (scope, limit, used, requested, retry_after) = if let Some(rpd) = limits
            .rpd
            .filter(|&rpd| self.day_requests >= u64::from(rpd))
        {
            let rpd = u64::from(rpd);
            let wait = until_pacific_midnight(wall);
            (Scope::RequestsPerDay, rpd, self.day_requests, 1, wait)
        } else if let Some(rpm) = limits.rpm.filter(|&rpm| in_window >= u64::from(rpm)) {
            // The request fits once all but rpm - 1 of the logged ones expired.
            let wait = match (in_window + 1).checked_sub(u64::from(rpm)) {
                Some(frees) if rpm > 0 => self.expiry(frees as usize - 1, now),
                _ => WINDOW,
            };
            (Scope::RequestsPerMinute, u64::from(rpm), in_window, 1, wait)
        } else if let Some(tpm) = limits.tpm.filter(|&tpm| self.window_tokens + tokens > tpm) {
            let in_window = (tpm, self.window_tokens);
            let wait = self.tokens_free_in(in_window, tokens, |e| e.input, now);
            (
                Scope::TokensPerMinute,
                tpm,
                self.window_tokens,
                tokens,
                wait,
            )
        } else if let Some(otpm) = limits
            .otpm
            .filter(|&otpm| self.window_output + output > otpm)
        {
            let in_window = (otpm, self.window_output);
            let wait = self.tokens_free_in(in_window, output, |e| e.output, now);
            (
                Scope::OutputTokensPerMinute,
                otpm,
                self.window_output,
                output,
                wait,
            )
        } else {
            return None;
        };
        Some(Rejection {
            scope,
            limit,
            used,
            requested,
            retry_after,
            headroom: self.headroom(limits, now, wall),
        })
    }
}

/// The quota state and counters of one project, behind one mutex.
#[derive(Debug, Default)]
pub(crate) struct ProjectState {
    models: HashMap<String, ModelState>,
    requests: u64,
    ok: u64,
    rate_limited: u64,
}

impl ProjectState {
    fn model(&mut self, model: &str) -> &mut ModelState {
        // Look up before inserting so the common case allocates no key.
        if !self.models.contains_key(model) {
            self.models.insert(model.to_owned(), ModelState::default());
        }
        self.models.get_mut(model).expect("inserted above")
    }

    /// Admits one request of `tokens` input tokens and an output cap of
    /// `output` to `model` at `now` (`wall` for the day), or refuses it
    /// without counting it. The ticket settles its output.
    pub(crate) fn admit(
        &mut self,
        model: &str,
        limits: ModelLimits,
        (tokens, output): (u64, u64),
        now: Instant,
        wall: DateTime<Utc>,
    ) -> Result<(Headroom, Ticket), Box<Rejection>> {
        self.requests += 1;
        let day = pacific_day(wall);
        let state = self.model(model);
        state.stats.requests += 1;
        state.prune(now);
        if state.day != Some(day) {
            state.day = Some(day);
            state.day_requests = 0;
        }
        if let Some(rejection) = state.check(limits, (tokens, output), now, wall) {
            self.rate_limited += 1;
            return Err(Box::new(rejection));
        }
        let ticket = state.tickets;
        state.tickets += 1;
        state.log.push_back(Admitted {
            at: now,
            input: tokens,
            output,
            ticket,
        });
        state.window_tokens += tokens;
        state.window_output += output;
        state.day_requests += 1;
        let in_window = state.log.len() as u64;
        state.stats.max_requests_in_60s = state.stats.max_requests_in_60s.max(in_window);
        state.stats.max_output_in_60s = state.stats.max_output_in_60s.max(state.window_output);
        Ok((state.headroom(limits, now, wall), Ticket(ticket)))
    }

    /// Records how an admitted request ended: its window counts its real
    /// output from now on (none for a failure), and tokens are billed only
    /// for a complete answer.
    pub(crate) fn settle(
        &mut self,
        model: &str,
        ticket: Ticket,
        ok: bool,
        input: u64,
        output: u64,
    ) {
        let state = self.model(model);
        // Tickets rise with admission, in log order: a binary search finds
        // the entry at once in a window of a million (a linear one made the
        // simulator the bottleneck of a fast run).
        if let Ok(at) = state.log.binary_search_by_key(&ticket.0, |e| e.ticket) {
            let entry = &mut state.log[at];
            state.window_output = state.window_output - entry.output + output;
            entry.output = output;
        }
        if !ok {
            return;
        }
        self.ok += 1;
        let stats = &mut self.model(model).stats;
        stats.ok += 1;
        stats.input_tokens += input;
        stats.output_tokens += output;
    }

    /// A snapshot for `/__stats`.
    pub(crate) fn stats(&self) -> ProjectStats {
        ProjectStats {
            requests: self.requests,
            ok: self.ok,
            rate_limited: self.rate_limited,
            models: self
                .models
                .iter()
                .map(|(model, state)| (model.clone(), state.stats.clone()))
                .collect::<BTreeMap<_, _>>(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn limits(rpm: Option<u32>, tpm: Option<u64>, rpd: Option<u32>) -> ModelLimits {
        ModelLimits {
            rpm,
            tpm,
            otpm: None,
            rpd,
        }
    }

    #[test]
    fn rpm_is_a_rolling_window_and_says_when_a_slot_frees() {
        let mut state = ProjectState::default();
        let t0 = Instant::now();
        let wall = Utc::now();
        let l = limits(Some(2), None, None);
        assert!(state.admit("m", l, (1, 0), t0, wall).is_ok());
        assert!(state
            .admit("m", l, (1, 0), t0 + Duration::from_secs(10), wall)
            .is_ok());
        let refused = state
            .admit("m", l, (1, 0), t0 + Duration::from_secs(30), wall)
            .expect_err("third in a minute");
        assert_eq!(refused.scope, Scope::RequestsPerMinute);
        assert_eq!(refused.retry_after, Duration::from_secs(30));
        // The first admission leaves the window at t0 + 60 s exactly.
        assert!(state.admit("m", l, (1, 0), t0 + WINDOW, wall).is_ok());
        let stats = state.stats();
        assert_eq!((stats.requests, stats.rate_limited), (4, 1));
        assert_eq!(stats.models["m"].max_requests_in_60s, 2);
    }

    #[test]
    fn tpm_counts_input_tokens_and_waits_for_enough_to_expire() {
        let mut state = ProjectState::default();
        let t0 = Instant::now();
        let wall = Utc::now();
        let l = limits(None, Some(100), None);
        assert!(state.admit("m", l, (60, 0), t0, wall).is_ok());
        assert!(state
            .admit("m", l, (30, 0), t0 + Duration::from_secs(5), wall)
            .is_ok());
        let refused = state
            .admit("m", l, (50, 0), t0 + Duration::from_secs(20), wall)
            .expect_err("over tpm");
        assert_eq!(refused.scope, Scope::TokensPerMinute);
        assert_eq!(
            (refused.limit, refused.used, refused.requested),
            (100, 90, 50)
        );
        assert_eq!(refused.retry_after, Duration::from_secs(40));
        let too_big = state.admit("m", l, (101, 0), t0 + WINDOW * 5, wall);
        assert_eq!(too_big.expect_err("never fits").retry_after, WINDOW);
    }

    #[test]
    fn rpd_resets_at_pacific_midnight() {
        let mut state = ProjectState::default();
        let now = Instant::now();
        // 23:30 in Los Angeles (PDT, UTC-7) on 2026-07-01.
        let late = Utc
            .with_ymd_and_hms(2026, 7, 2, 6, 30, 0)
            .single()
            .expect("valid");
        let l = limits(None, None, Some(1));
        assert!(state.admit("m", l, (1, 0), now, late).is_ok());
        let refused = state
            .admit("m", l, (1, 0), now, late)
            .expect_err("day spent");
        assert_eq!(refused.scope, Scope::RequestsPerDay);
        assert_eq!(refused.retry_after, Duration::from_secs(30 * 60));
        let next_day = late + chrono::Duration::minutes(31);
        assert!(state.admit("m", l, (1, 0), now, next_day).is_ok());
    }

    #[test]
    fn rpd_is_checked_before_rpm_and_refusals_are_not_counted() {
        let mut state = ProjectState::default();
        let now = Instant::now();
        let wall = Utc::now();
        let l = limits(Some(1), None, Some(1));
        assert!(state.admit("m", l, (1, 0), now, wall).is_ok());
        for _ in 0..3 {
            let refused = state
                .admit("m", l, (1, 0), now, wall)
                .expect_err("both spent");
            assert_eq!(refused.scope, Scope::RequestsPerDay);
        }
        assert_eq!(state.stats().models["m"].max_requests_in_60s, 1);
    }

    #[test]
    fn otpm_admits_the_cap_and_frees_the_unused_output_at_settlement() {
        let mut state = ProjectState::default();
        let t0 = Instant::now();
        let wall = Utc::now();
        let l = ModelLimits {
            otpm: Some(1000),
            ..ModelLimits::default()
        };
        let (_, first) = state.admit("m", l, (5, 400), t0, wall).unwrap();
        let (headroom, second) = state.admit("m", l, (5, 400), t0, wall).unwrap();
        assert_eq!(headroom.output.map(|o| o.used), Some(800));
        let refused = state
            .admit("m", l, (5, 400), t0, wall)
            .expect_err("caps fill it");
        assert_eq!(refused.scope, Scope::OutputTokensPerMinute);
        assert_eq!(
            (refused.limit, refused.used, refused.requested),
            (1000, 800, 400)
        );
        assert_eq!(refused.retry_after, WINDOW);
        state.settle("m", first, true, 5, 100);
        state.settle("m", second, false, 5, 0);
        for _ in 0..2 {
            assert!(state.admit("m", l, (5, 400), t0, wall).is_ok());
        }
        let stats = state.stats();
        assert_eq!(stats.models["m"].max_output_in_60s, 900);
        assert_eq!(stats.models["m"].output_tokens, 100);
    }

    #[test]
    fn zero_limits_refuse_everything() {
        let mut state = ProjectState::default();
        let refused = state
            .admit(
                "m",
                limits(Some(0), None, None),
                (1, 0),
                Instant::now(),
                Utc::now(),
            )
            .expect_err("limit 0");
        assert_eq!(refused.retry_after, WINDOW);
    }

    #[test]
    fn the_clock_advances_both_instants_and_days() {
        let clock = Clock::new();
        let (before, wall) = (clock.now(), clock.wall());
        clock.advance(Duration::from_secs(86_400));
        assert!(clock.now().duration_since(before) >= Duration::from_secs(86_400));
        assert!(pacific_day(clock.wall()) > pacific_day(wall));
    }

    #[tokio::test(start_paused = true)]
    async fn paused_time_drives_the_windows_and_the_day() {
        let clock = Clock::new();
        let (before, wall) = (clock.now(), clock.wall());
        tokio::time::advance(Duration::from_secs(86_400)).await;
        assert_eq!(clock.now() - before, Duration::from_secs(86_400));
        assert_eq!(clock.wall() - wall, chrono::Duration::days(1));
    }
}
