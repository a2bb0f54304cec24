//! The pool: which key serves the next request, and what each outcome
//! teaches it.
//!
//! Quota belongs to the account, not the key: every account keeps, per model,
//! a [`SlidingWindow`] for RPM/TPM, a day counter for RPD, and the cool-down
//! or exhaustion a 429 imposed. Keys keep their own health. A lease is only
//! handed out when the account has room for it now, so a correctly
//! configured run sees no 429 at all; when nothing has room the caller sleeps
//! until the earliest instant something will (computed, not polled).

use super::strategy::{Candidate, Strategy, Turns};
use super::watch::{self, Endpoint, WaitFor, Waiting};
use super::window::{after, Admission, SlidingWindow};
use crate::config::{Config, Limits};
use crate::provider::{self, ErrorClass, ProviderKind, QuotaScope};
use crate::types::{ApiKey, QuotaDay};
use chrono::Utc;
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::Notify;
use tokio::time::{Duration, Instant};

/// Cool-down after a 429 that says neither which quota nor how long.
const DEFAULT_COOL_DOWN: Duration = Duration::from_secs(20);
/// The longest wait for room the pool sits out. A per-minute quota never
/// needs more than about 60 s, so when a server asks for more than this
/// and no account has room sooner, the item is deferred instead
/// ([`Unavailable::ServerDelay`]) rather than stalling the run unseen.
pub const MAX_WAIT: Duration = Duration::from_secs(600);
/// Extra time an admission keeps counting past the window (clock skew).
const SKEW_MARGIN: Duration = Duration::from_millis(300);
/// Consecutive transient failures that open a key's circuit.
const BREAKER_THRESHOLD: u32 = 5;
/// How long an open circuit rests before one probe may decide.
const BREAKER_COOL_DOWN: Duration = Duration::from_secs(15);
/// Recent failure rate that opens a circuit, once enough is known.
const BREAKER_ERROR_RATE: f64 = 0.5;
/// Outcomes a key needs before its failure rate can open its circuit.
const BREAKER_MIN_SAMPLES: u32 = 10;
/// Admissions remembered for an (account, model) with no known per-minute
/// limit: more than any real RPM, far less than a minute at full speed.
const UNLIMITED_HISTORY: usize = 100_000;
/// Weight of the newest observation in the latency and reliability averages.
const EWMA_ALPHA: f64 = 0.2;

/// An index into the pool's keys.
pub type KeyId = usize;

/// Why no lease can be had, now or later.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Unavailable {
    /// No key can serve the model at all (none configured for its provider,
    /// or every one disabled).
    #[error("no usable key for model {model}: {why}")]
    NoKey {
        /// The model asked for.
        model: String,
        /// Why, for the user.
        why: String,
    },
    /// Every account's day quota for the model is spent until `until`.
    #[error("every account's daily quota for {model} is spent until {until}")]
    DayExhausted {
        /// The model asked for.
        model: String,
        /// When the first quota resets (UTC).
        until: chrono::DateTime<Utc>,
    },
    /// No account has room for longer than [`MAX_WAIT`]: a server asked to
    /// wait until `until` (a huge `retryDelay` or `Retry-After`).
    #[error("the server asked to wait until {} before the next request for {model}", .until.format("%Y-%m-%d %H:%M:%S UTC"))]
    ServerDelay {
        /// The model asked for.
        model: String,
        /// When the first account has room again (UTC).
        until: chrono::DateTime<Utc>,
    },
    /// The next room comes after the item's deadline (`item_deadline`).
    #[error("the next room for {model} is at {}, after the item's deadline (item_deadline)", .until.format("%Y-%m-%d %H:%M:%S UTC"))]
    PastDeadline {
        /// The model asked for.
        model: String,
        /// When the first account has room again (UTC).
        until: chrono::DateTime<Utc>,
    },
    /// The request needs more input tokens than any account's TPM allows.
    #[error("the request's {tokens} input tokens exceed every account's tokens-per-minute limit for {model}")]
    NeverFits {
        /// The model asked for.
        model: String,
        /// The request's estimated input tokens.
        tokens: u64,
    },
}

/// One key's health.
#[derive(Debug, Clone, PartialEq)]
enum Health {
    Healthy,
    /// Too many consecutive transient failures: resting until `until`.
    Open {
        until: Instant,
    },
    /// The rest is over and one probe request is out; it decides.
    Probing,
    /// Invalid or without access: never used again in this run.
    Disabled {
        reason: String,
    },
}

#[derive(Debug)]
struct Account {
    name: String,
    provider: ProviderKind,
    client: provider::Client,
    limits: HashMap<String, Limits>,
    /// Index of its base URL in [`Pool::endpoints`].
    endpoint: usize,
}

#[derive(Debug)]
struct Key {
    key: ApiKey,
    account: usize,
    weight: u32,
    /// Priority of the key's group: 0 is used first.
    rank: usize,
}

/// Why a pool could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// An account's HTTP client could not be built (e.g. a bad proxy URL).
    #[error("failed to build the HTTP client of account {account}")]
    Client {
        /// The account.
        account: String,
        /// reqwest's error.
        #[source]
        source: reqwest::Error,
    },
    /// The group asked for has no key.
    #[error("no key is in group `{0}`; the config's groups are: {1}")]
    UnknownGroup(String, String),
}

#[derive(Debug)]
struct KeyState {
    health: Health,
    in_flight: u32,
    consecutive_failures: u32,
    /// Outcomes seen (for the error-rate breaker's minimum).
    samples: u32,
    /// EWMA of the failure indicator: the recent error rate.
    error_rate: f64,
    /// EWMA of answered requests' latency in ms.
    latency_ms: Option<f64>,
    /// Whether the API has accepted the key at least once.
    proven: bool,
}

impl KeyState {
    fn new() -> KeyState {
        KeyState {
            health: Health::Healthy,
            in_flight: 0,
            consecutive_failures: 0,
            samples: 0,
            error_rate: 0.0,
            latency_ms: None,
            proven: false,
        }
    }

    /// Records one outcome of the key itself (not of its account's quota).
    fn observe(&mut self, failed: bool, latency: Duration, now: Instant) {
        let ms = latency.as_secs_f64() * 1000.0;
        if !failed {
            self.proven = true;
            self.latency_ms = Some(self.latency_ms.map_or(ms, |l| l + EWMA_ALPHA * (ms - l)));
        }
        self.samples = self.samples.saturating_add(1);
        self.error_rate += EWMA_ALPHA * (f64::from(u8::from(failed)) - self.error_rate);
        if failed {
            self.consecutive_failures += 1;
            let tripped = self.consecutive_failures >= BREAKER_THRESHOLD
                || (self.samples >= BREAKER_MIN_SAMPLES && self.error_rate > BREAKER_ERROR_RATE);
            if self.health == Health::Probing || tripped {
                self.health = Health::Open {
                    until: after(now, BREAKER_COOL_DOWN),
                };
            }
        } else {
            self.consecutive_failures = 0;
            if self.health == Health::Probing {
                self.health = Health::Healthy;
            }
        }
    }
}

/// Quota state of one (account, model).
#[derive(Debug, Default)]
struct Quota {
    window: SlidingWindow,
    /// Limits learned from 429s where the config gave none.
    learned: Limits,
    cooled_until: Option<Instant>,
    exhausted_until: Option<(Instant, chrono::DateTime<Utc>)>,
    day: Option<QuotaDay>,
    day_used: u64,
}

#[derive(Debug, Default)]
struct State {
    keys: Vec<KeyState>,
    quotas: HashMap<(usize, String), Quota>,
    turns: Turns,
    /// What the last look that found no room waits for, and until when.
    waiting: Option<(Instant, Waiting)>,
    /// Reachability of each of [`Pool::endpoints`].
    endpoints: Vec<Endpoint>,
}

/// The key pool. Share it behind an `Arc`; all methods take `&self`.
#[derive(Debug)]
pub struct Pool {
    accounts: Vec<Account>,
    /// The distinct base URLs of the accounts.
    endpoints: Vec<String>,
    keys: Vec<Key>,
    strategy: Strategy,
    state: Mutex<State>,
    changed: Notify,
}

/// A key leased for one request. Dropping it releases the key's in-flight
/// slot even if the request was cancelled; [`Pool::settle`] also records what
/// the request taught the pool.
#[derive(Debug)]
pub struct Lease<'p> {
    pool: &'p Pool,
    key: KeyId,
    model: String,
    /// When the request was admitted (its entry in the window), and with
    /// how many estimated input tokens.
    started: Instant,
    tokens: u64,
}

impl Lease<'_> {
    /// The key to send with.
    pub fn key(&self) -> &ApiKey {
        &self.pool.keys[self.key].key
    }

    /// Which key of the pool this is.
    pub fn key_id(&self) -> KeyId {
        self.key
    }

    /// The account (project) the key belongs to.
    pub fn account(&self) -> &str {
        &self.pool.accounts[self.pool.keys[self.key].account].name
    }

    /// The HTTP client for the key's account (its provider, base URL, proxy).
    pub fn client(&self) -> &provider::Client {
        &self.pool.accounts[self.pool.keys[self.key].account].client
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut state = self.pool.lock();
        state.keys[self.key].in_flight -= 1;
        drop(state);
        self.pool.changed.notify_waiters();
    }
}

/// The provider that serves `model`: Gemini for `gemini-*`/`gemma-*`,
/// OpenAI-compatible for everything else.
pub fn provider_for(model: &str) -> ProviderKind {
    if model.starts_with("gemini") || model.starts_with("gemma") {
        ProviderKind::Gemini
    } else {
        ProviderKind::Openai
    }
}

/// The provider whose accounts serve `model`, given which providers have
/// accounts (`configured`): the one its name implies ([`provider_for`]), or,
/// for a `gemini*`/`gemma*` model where no Gemini account exists, the
/// OpenAI-compatible accounts (Gemini's own OpenAI-compatible endpoint or a
/// gateway serves it). Any other model goes to OpenAI-compatible accounts
/// only: the Gemini API serves no other model. `None`: no account can.
pub fn serving_provider(
    model: &str,
    configured: impl Fn(ProviderKind) -> bool,
) -> Option<ProviderKind> {
    let implied = provider_for(model);
    if configured(implied) {
        Some(implied)
    } else if implied == ProviderKind::Gemini && configured(ProviderKind::Openai) {
        Some(ProviderKind::Openai)
    } else {
        None
    }
}

impl Pool {
    /// Builds the pool from a validated config: one HTTP client per account
    /// (its provider's base URL, its proxy, the configured timeout). Keys of
    /// `group` are preferred over all others; then the config's group order
    /// holds.
    pub fn new(
        config: &Config,
        strategy: Strategy,
        group: Option<&str>,
    ) -> Result<Pool, PoolError> {
        let mut order: Vec<&str> = config.groups.iter().map(String::as_str).collect();
        if let Some(group) = group {
            let at = order
                .iter()
                .position(|g| *g == group)
                .ok_or_else(|| PoolError::UnknownGroup(group.to_owned(), order.join(", ")))?;
            let preferred = order.remove(at);
            order.insert(0, preferred);
        }
        let mut accounts = Vec::new();
        let mut endpoints: Vec<String> = Vec::new();
        let mut keys = Vec::new();
        for (index, account) in config.accounts.iter().enumerate() {
            let base_url = &config.providers[&account.provider].base_url;
            let endpoint = endpoints
                .iter()
                .position(|e| e == base_url)
                .unwrap_or_else(|| {
                    endpoints.push(base_url.clone());
                    endpoints.len() - 1
                });
            accounts.push(Account {
                name: account.name.clone(),
                provider: account.provider,
                client: provider::Client::new(
                    account.provider,
                    base_url,
                    config.timeout,
                    account.proxy.as_deref(),
                )
                .map_err(|source| PoolError::Client {
                    account: account.name.clone(),
                    source,
                })?,
                limits: account.limits.clone().into_iter().collect(),
                endpoint,
            });
            keys.extend(account.keys.iter().map(|k| {
                Key {
                    key: k.key.clone(),
                    account: index,
                    weight: k.weight.max(1),
                    rank: order
                        .iter()
                        .position(|g| *g == k.group)
                        .unwrap_or(order.len()),
                }
            }));
        }
        let state = State {
            keys: keys.iter().map(|_| KeyState::new()).collect(),
            endpoints: endpoints.iter().map(|_| Endpoint::default()).collect(),
            ..State::default()
        };
        Ok(Pool {
            accounts,
            endpoints,
            keys,
            strategy,
            state: Mutex::new(state),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves counters that are still
        // consistent enough to finish and report the run.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Leases a key for one request of `model` with an estimated `tokens`
    /// input tokens, preferring a key other than `avoid` (the one that just
    /// failed this item). Waits, without polling, until some account has
    /// room; fails when none ever will, or not within [`MAX_WAIT`].
    pub async fn lease(
        &self,
        model: &str,
        tokens: u64,
        avoid: Option<KeyId>,
    ) -> Result<Lease<'_>, Unavailable> {
        self.lease_before(model, tokens, avoid, None).await
    }

    /// [`Pool::lease`], failing at once with [`Unavailable::PastDeadline`]
    /// when the next room comes after `deadline`.
    pub async fn lease_before(
        &self,
        model: &str,
        tokens: u64,
        avoid: Option<KeyId>,
        deadline: Option<Instant>,
    ) -> Result<Lease<'_>, Unavailable> {
        loop {
            // Register interest before looking, so a release between the
            // look and the wait is not missed.
            let changed = self.changed.notified();
            let now = Instant::now();
            match self.try_lease(model, tokens, avoid, now)? {
                Look::Leased(key) => {
                    return Ok(Lease {
                        pool: self,
                        key,
                        model: model.to_owned(),
                        started: now,
                        tokens,
                    })
                }
                Look::Wait(Some(until)) => {
                    if deadline.is_some_and(|d| until > d) {
                        return Err(Unavailable::PastDeadline {
                            model: model.to_owned(),
                            until: watch::wall(now, until),
                        });
                    }
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => {}
                        _ = changed => {}
                    }
                }
                Look::Wait(None) => changed.await,
            }
        }
    }

    /// One look at the pool: a lease, a wait, or `Err` for never.
    fn try_lease(
        &self,
        model: &str,
        tokens: u64,
        avoid: Option<KeyId>,
        now: Instant,
    ) -> Result<Look, Unavailable> {
        let provider = self.serving_provider(model);
        let mut state = self.lock();
        let state = &mut *state;
        let mut ready = Vec::new();
        // The first instant some key has room, what holds it back, and
        // the key's account.
        let mut earliest: Option<(Instant, WaitFor, usize)> = None;
        let mut day_reset: Option<chrono::DateTime<Utc>> = None;
        let mut never_fits = false;
        let mut busy = false;
        let mut busy_rank: Option<usize> = None;
        let mut usable = 0;
        for (id, key) in self.keys.iter().enumerate() {
            let account = &self.accounts[key.account];
            if account.provider != provider {
                continue;
            }
            let ks = &mut state.keys[id];
            // `None`: only once its request in flight answers. A key not yet
            // proven gets one request until it answers, so an invalid key
            // costs one request, not one per worker.
            let key_ready = match ks.health {
                Health::Disabled { .. } => continue,
                Health::Probing => None,
                Health::Open { until } if until > now => Some(until),
                Health::Healthy if !ks.proven && ks.in_flight > 0 => None,
                Health::Healthy | Health::Open { .. } => Some(now),
            };
            usable += 1;
            let quota = state
                .quotas
                .entry((key.account, model.to_owned()))
                .or_default();
            let limits = account.limits(model, quota);
            let admission = quota.admission(now, &limits, tokens);
            if key_ready.is_none() {
                match admission {
                    // Room, once its request in flight answers: a group
                    // whose key is only that busy is not unavailable.
                    QuotaAdmission::Now => {
                        busy = true;
                        busy_rank = Some(busy_rank.map_or(key.rank, |r: usize| r.min(key.rank)));
                    }
                    QuotaAdmission::At(..) => busy = true,
                    QuotaAdmission::DayExhausted(_) | QuotaAdmission::Never => {}
                }
            }
            let at = match admission {
                QuotaAdmission::Now => key_ready.map(|k| (k, WaitFor::KeyResting)),
                // A key blocked by both waits for the later; an answer wakes
                // the pool anyway.
                QuotaAdmission::At(at, why) => key_ready.map(|k| {
                    if k > at {
                        (k, WaitFor::KeyResting)
                    } else {
                        (at, why)
                    }
                }),
                QuotaAdmission::DayExhausted(reset) => {
                    day_reset = Some(day_reset.map_or(reset, |d| d.min(reset)));
                    None
                }
                QuotaAdmission::Never => {
                    never_fits = true;
                    None
                }
            };
            match at {
                Some((at, _)) if at <= now => ready.push(Candidate {
                    id,
                    weight: key.weight,
                    in_flight: ks.in_flight,
                    quota_used: quota.used_share(&limits),
                    latency_ms: ks.latency_ms,
                    reliability: 1.0 - ks.error_rate,
                }),
                Some((at, why)) if earliest.is_none_or(|(e, ..)| at < e) => {
                    earliest = Some((at, why, key.account));
                }
                Some(_) | None => {}
            }
        }
        // Only the most preferred group with room is used, and a group falls
        // over only when it is unavailable, not while a key of a preferred
        // group waits for its first answer or its probe.
        if let Some(best) = ready.iter().map(|c| self.keys[c.id].rank).min() {
            ready.retain(|c| self.keys[c.id].rank == best);
            if busy_rank.is_some_and(|waiting| waiting < best) {
                ready.clear();
            }
        }
        // A retry goes to another key when there is one.
        if ready.len() > 1 {
            ready.retain(|c| Some(c.id) != avoid);
        }
        if !ready.is_empty() {
            let id = self
                .strategy
                .choose(&ready, self.keys.len(), &mut state.turns);
            let key = &self.keys[id];
            let ks = &mut state.keys[id];
            ks.in_flight += 1;
            if matches!(ks.health, Health::Open { .. }) {
                ks.health = Health::Probing;
            }
            let quota = state
                .quotas
                .get_mut(&(key.account, model.to_owned()))
                .expect("quota looked at above");
            quota.window.record(now, tokens);
            let limits = self.accounts[key.account].limits(model, quota);
            if limits.rpm.is_none() && limits.tpm.is_none() {
                // Nothing to enforce yet: keep only enough history for a
                // limit learned later, not a minute of a fast run.
                quota.window.keep_last(UNLIMITED_HISTORY);
            }
            quota.day_used += 1;
            if state
                .waiting
                .as_ref()
                .is_some_and(|(_, w)| w.model == model)
            {
                state.waiting = None;
            }
            return Ok(Look::Leased(id));
        }
        if let Some((at, limit, account)) = earliest {
            let until = watch::wall(now, at);
            // A request in flight may still change the picture: wait for it
            // before giving up on a far-off room.
            if !busy && at > after(now, MAX_WAIT) {
                return Err(Unavailable::ServerDelay {
                    model: model.to_owned(),
                    until,
                });
            }
            let waiting = Waiting {
                account: self.accounts[account].name.clone(),
                model: model.to_owned(),
                limit,
                until,
            };
            state.waiting = Some((at, waiting));
            return Ok(Look::Wait(Some(at)));
        }
        if busy {
            return Ok(Look::Wait(None));
        }
        if usable == 0 {
            return Err(Unavailable::NoKey {
                model: model.to_owned(),
                why: format!("every {provider:?} key is disabled or none is configured")
                    .to_lowercase(),
            });
        }
        if let Some(until) = day_reset {
            return Err(Unavailable::DayExhausted {
                model: model.to_owned(),
                until,
            });
        }
        debug_assert!(never_fits);
        Err(Unavailable::NeverFits {
            model: model.to_owned(),
            tokens,
        })
    }

    /// The provider whose accounts serve `model` ([`serving_provider`]);
    /// when none can, the one its name implies, which has no key.
    fn serving_provider(&self, model: &str) -> ProviderKind {
        serving_provider(model, |p| self.accounts.iter().any(|a| a.provider == p))
            .unwrap_or_else(|| provider_for(model))
    }

    /// Records what a request taught the pool and releases the lease:
    /// `error` is `None` when it succeeded, `input_tokens` the prompt tokens
    /// the server reported, when it did.
    pub fn settle(&self, lease: Lease<'_>, error: Option<&ErrorClass>, input_tokens: Option<u64>) {
        let now = Instant::now();
        let account = self.keys[lease.key].account;
        let mut guard = self.lock();
        let state = &mut *guard;
        let ks = &mut state.keys[lease.key];
        let latency = now - lease.started;
        if let Some(actual) = input_tokens {
            if let Some(quota) = state.quotas.get_mut(&(account, lease.model.clone())) {
                quota.window.correct(lease.started, lease.tokens, actual);
            }
        }
        match error {
            // The key answered: whatever the item's fate, the key is fine.
            None
            | Some(ErrorClass::ItemInvalid)
            | Some(ErrorClass::Blocked { .. })
            | Some(ErrorClass::EmptyAnswer) => ks.observe(false, latency, now),
            Some(ErrorClass::Transient) => ks.observe(true, latency, now),
            Some(ErrorClass::KeyInvalid { reason }) => {
                ks.health = Health::Disabled {
                    reason: reason.clone(),
                };
                // A refused key belongs to no project's quota.
                if let Some(quota) = state.quotas.get_mut(&(account, lease.model.clone())) {
                    quota.take_back(lease.started, lease.tokens);
                }
            }
            Some(ErrorClass::RateLimited {
                scope,
                retry_after,
                limit,
            }) => {
                // A 429 says the key works: it is the account that is full.
                ks.proven = true;
                if ks.health == Health::Probing {
                    ks.health = Health::Healthy;
                }
                let quota = state
                    .quotas
                    .entry((account, lease.model.clone()))
                    .or_default();
                // The server did not count what it refused.
                quota.take_back(lease.started, lease.tokens);
                quota.learn(*scope, *retry_after, *limit, now);
            }
        }
        drop(guard);
        drop(lease);
    }

    /// Starts today's day counters from the persisted ledger, so a second
    /// run on the same day knows what the first one spent: `(account, model,
    /// requests)` for the current Pacific day.
    pub fn seed_day_usage<'a>(&self, used: impl IntoIterator<Item = (&'a str, &'a str, u64)>) {
        let today = QuotaDay::today();
        let mut state = self.lock();
        for (account, model, requests) in used {
            if let Some(index) = self.accounts.iter().position(|a| a.name == account) {
                let quota = state.quotas.entry((index, model.to_owned())).or_default();
                quota.day = Some(today);
                quota.day_used = requests;
            }
        }
    }

    /// What the pool is waiting for, while no key has room for some model.
    pub fn waiting(&self) -> Option<Waiting> {
        let state = self.lock();
        match &state.waiting {
            Some((until, waiting)) if *until > Instant::now() => Some(waiting.clone()),
            _ => None,
        }
    }

    /// Records what the request sent with `key` met at its endpoint: an
    /// HTTP answer, a failure to connect (`connect_error`), or neither (a
    /// timeout, a cut connection).
    pub(super) fn observe_endpoint(&self, key: KeyId, answered: bool, connect_error: Option<&str>) {
        let endpoint = self.accounts[self.keys[key].account].endpoint;
        self.lock().endpoints[endpoint].observe(answered, connect_error);
    }

    /// Base URLs that failed to connect [`watch::UNREACHABLE_AFTER`] times
    /// in a row, each with its last connection error.
    pub fn unreachable(&self) -> Vec<(String, String)> {
        let state = self.lock();
        self.endpoints
            .iter()
            .zip(&state.endpoints)
            .filter_map(|(url, e)| Some((url.clone(), e.unreachable()?.to_owned())))
            .collect()
    }

    /// Whether the run cannot go on: every endpoint sent to has failed to
    /// connect [`watch::UNREACHABLE_AFTER`] times in a row, and none has
    /// ever answered (a wrong port or host, not a passing outage).
    pub(super) fn all_unreachable(&self) -> bool {
        let state = self.lock();
        let tried = || state.endpoints.iter().filter(|e| e.tried());
        tried().next().is_some() && tried().all(|e| e.unreachable().is_some() && !e.answered())
    }

    /// Requests in flight across all keys.
    pub fn in_flight(&self) -> u32 {
        self.lock().keys.iter().map(|k| k.in_flight).sum()
    }

    /// Why each disabled key was disabled: (fingerprint, account, reason).
    pub fn disabled(&self) -> Vec<(String, String, String)> {
        let state = self.lock();
        self.keys
            .iter()
            .zip(&state.keys)
            .filter_map(|(k, s)| match &s.health {
                Health::Disabled { reason } => Some((
                    k.key.fingerprint().to_owned(),
                    self.accounts[k.account].name.clone(),
                    reason.clone(),
                )),
                _ => None,
            })
            .collect()
    }
}

impl Account {
    /// The account's limits for `model`: configured ones, else learned ones.
    fn limits(&self, model: &str, quota: &Quota) -> Limits {
        let configured = self.limits.get(model).copied().unwrap_or_default();
        Limits {
            rpm: configured.rpm.or(quota.learned.rpm),
            tpm: configured.tpm.or(quota.learned.tpm),
            rpd: configured.rpd.or(quota.learned.rpd),
        }
    }
}

/// The outcome of one look at the pool.
enum Look {
    /// This key is leased.
    Leased(KeyId),
    /// Nothing now: look again at this instant, or when a request answers
    /// (`None`: only then).
    Wait(Option<Instant>),
}

#[derive(Clone, Copy)]
enum QuotaAdmission {
    Now,
    At(Instant, WaitFor),
    DayExhausted(chrono::DateTime<Utc>),
    Never,
}

impl Quota {
    /// Takes back the admission of a request the server did not count.
    fn take_back(&mut self, admitted: Instant, tokens: u64) {
        self.window.forget(admitted, tokens);
        self.day_used = self.day_used.saturating_sub(1);
    }

    /// The largest share used of any limit: RPM and TPM in the window, RPD
    /// today. 0 where nothing is limited.
    fn used_share(&self, limits: &Limits) -> f64 {
        let share = |used: f64, limit: Option<f64>| limit.map_or(0.0, |l| used / l.max(1.0));
        share(self.window.len() as f64, limits.rpm.map(f64::from))
            .max(share(
                self.window.tokens() as f64,
                limits.tpm.map(|t| t as f64),
            ))
            .max(share(self.day_used as f64, limits.rpd.map(f64::from)))
    }

    fn admission(&mut self, now: Instant, limits: &Limits, tokens: u64) -> QuotaAdmission {
        let wall = Utc::now();
        let today = QuotaDay::of(wall);
        if self.day != Some(today) {
            self.day = Some(today);
            self.day_used = 0;
            self.exhausted_until = None;
        }
        if let Some((until, reset)) = self.exhausted_until {
            if until > now {
                return QuotaAdmission::DayExhausted(reset);
            }
        }
        if limits
            .rpd
            .is_some_and(|rpd| self.day_used >= u64::from(rpd))
        {
            return QuotaAdmission::DayExhausted(today.reset());
        }
        let cooled = self.cooled_until.filter(|&t| t > now);
        match (
            self.window
                .check(now, SKEW_MARGIN, limits.rpm, limits.tpm, tokens),
            cooled,
        ) {
            (Admission::Never, _) => QuotaAdmission::Never,
            (Admission::Now, None) => QuotaAdmission::Now,
            (Admission::Now, Some(c)) => QuotaAdmission::At(c, WaitFor::ServerDelay),
            (Admission::At(at), Some(c)) if c >= at => QuotaAdmission::At(c, WaitFor::ServerDelay),
            (Admission::At(at), _) => {
                let rpm_full = limits
                    .rpm
                    .is_some_and(|rpm| self.window.len() >= rpm as usize);
                QuotaAdmission::At(at, if rpm_full { WaitFor::Rpm } else { WaitFor::Tpm })
            }
        }
    }

    /// Learns from a 429: cool for the retry delay (per minute), or exhaust
    /// until the next Pacific midnight (per day, whatever the delay says), and
    /// adopt the quota's value where the config gave none.
    fn learn(
        &mut self,
        scope: QuotaScope,
        retry_after: Option<Duration>,
        limit: Option<u64>,
        now: Instant,
    ) {
        match scope {
            QuotaScope::Day => {
                let wall = Utc::now();
                let reset = QuotaDay::of(wall).reset();
                let wait = (reset - wall).to_std().unwrap_or_default();
                self.exhausted_until = Some((after(now, wait), reset));
                if let Some(limit) = limit {
                    self.learned
                        .rpd
                        .get_or_insert(limit.min(u64::from(u32::MAX)) as u32);
                }
            }
            QuotaScope::MinuteRequests | QuotaScope::MinuteTokens | QuotaScope::Unknown => {
                let until = after(now, retry_after.unwrap_or(DEFAULT_COOL_DOWN));
                self.cooled_until = Some(self.cooled_until.map_or(until, |c| c.max(until)));
                match (scope, limit) {
                    (QuotaScope::MinuteRequests, Some(limit)) => {
                        self.learned
                            .rpm
                            .get_or_insert(limit.min(u64::from(u32::MAX)) as u32);
                    }
                    (QuotaScope::MinuteTokens, Some(limit)) => {
                        self.learned.tpm.get_or_insert(limit);
                    }
                    _ => {}
                }
            }
        }
    }
}
