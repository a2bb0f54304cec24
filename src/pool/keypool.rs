//! The pool: which key serves the next request, and what each outcome
//! teaches it.
//!
//! Quota belongs to the account, not the key: every account keeps, per model,
//! a [`SlidingWindow`] for RPM/TPM and the cool-down or exhaustion a 429 (or
//! the day's ledger) imposed. Keys keep their own health. A lease is only
//! handed out when the account has room for it now, so a correctly
//! configured run sees no 429 at all; when nothing has room the caller sleeps
//! until the earliest instant something will (computed, not polled).
//!
//! The pool never sends a request, holds no HTTP client and does not count
//! the day's requests: the caller sends, the store's quota ledger counts the
//! day, and [`Pool::settle`] tells the pool what came of each lease.

use super::strategy::{Candidate, Strategy, Turns};
use super::watch::{self, WaitFor, Waiting};
use super::window::{after, Admission, Cost, SlidingWindow};
use crate::config::Config;
use crate::types::{
    AccountId, ApiKey, KeyId, Limits, ModelRoute, ProviderKind, QuotaDay, QuotaScope,
};
use chrono::Utc;
use std::collections::{BTreeMap, HashMap};
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

/// Why no lease can be had, now or later.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Unavailable {
    /// No key can serve the model at all (none configured for its provider,
    /// or every one disabled): a run can do nothing more for the model.
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
    /// The request needs more input tokens than any account's TPM allows,
    /// or its output cap is more than any account's OTPM.
    #[error("the request's {tokens} input tokens (or its output cap) exceed every account's tokens-per-minute limits for {model}")]
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
    limits: HashMap<String, Limits>,
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
    /// Limits learned from 429s and stated by answers' headers, used where
    /// the config gave none.
    learned: Limits,
    cooled_until: Option<Instant>,
    /// The day's quota is spent (a 429 said so, or the ledger refused):
    /// until this instant of the pool's clock, which is `reset` on the wall.
    exhausted_until: Option<(Instant, chrono::DateTime<Utc>)>,
}

#[derive(Debug, Default)]
struct State {
    keys: Vec<KeyState>,
    quotas: HashMap<(usize, String), Quota>,
    turns: Turns,
    /// What the last look that found no room waits for, and until when.
    waiting: Option<(Instant, Waiting)>,
}

/// The key pool. Share it behind an `Arc`; all methods take `&self`.
#[derive(Debug)]
pub struct Pool {
    accounts: Vec<Account>,
    keys: Vec<Key>,
    strategy: Strategy,
    /// The config's `models` map: names routed to a provider explicitly.
    models: BTreeMap<String, ModelRoute>,
    /// The output a request without its own cap is admitted with.
    default_max_output_tokens: u32,
    state: Mutex<State>,
    changed: Notify,
}

/// What a request needs from the pool.
#[derive(Debug, Clone, Copy)]
pub struct Need<'a> {
    /// The model it asks for (a name of the config's `models` map or a
    /// provider's model name).
    pub model: &'a str,
    /// Its estimated input tokens, admitted against TPM.
    pub tokens: u64,
    /// Its output cap: its worst-case output, admitted against OTPM until
    /// the answer says the real output. `None`: the config's
    /// `default_max_output_tokens`.
    pub max_output_tokens: Option<u32>,
    /// The only account whose keys may serve it (a file uploaded under one
    /// project is visible to that project's keys only).
    pub pin: Option<AccountId>,
    /// A key not to use when another has room (the one that just failed).
    pub avoid: Option<KeyId>,
    /// Fail with [`Unavailable::PastDeadline`] rather than wait past this.
    pub deadline: Option<Instant>,
}

impl<'a> Need<'a> {
    /// A request of `model` with about `tokens` input tokens, any account.
    pub fn new(model: &'a str, tokens: u64) -> Need<'a> {
        Need {
            model,
            tokens,
            max_output_tokens: None,
            pin: None,
            avoid: None,
            deadline: None,
        }
    }

    /// The same need, with an output cap of `cap` (`None`: the default).
    pub fn with_output_cap(self, cap: Option<u32>) -> Need<'a> {
        Need {
            max_output_tokens: cap,
            ..self
        }
    }

    /// The same need, served by `account`'s keys only.
    pub fn pinned(self, account: AccountId) -> Need<'a> {
        Need {
            pin: Some(account),
            ..self
        }
    }
}

/// What came of a leased request, as far as the pool cares: whether the key
/// and the account's quota are fine. Built by the caller from the
/// provider's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Nothing was sent (the day's ledger refused it, or the caller
    /// stopped): the admission is taken back.
    NotSent,
    /// The server answered. Whatever the item's fate (ok, blocked, invalid,
    /// empty, overloaded), the key works. The counts are what the server
    /// counted against the per-minute limits, when it said; `stated`, the
    /// limits the answer's headers stated.
    Answered {
        /// Input tokens the server counted.
        input_tokens: Option<u64>,
        /// Output tokens the server counted: the rest of the output cap
        /// the request was admitted with frees up at once.
        output_tokens: Option<u64>,
        /// The per-minute limits the answer stated, learned where the
        /// config gives none.
        stated: Limits,
    },
    /// The key failed for a passing reason (5xx, timeout, reset): counts
    /// against its health.
    Failed,
    /// The API refused the key: it is disabled for the run.
    Refused {
        /// The API's reason, e.g. `API_KEY_INVALID`.
        reason: String,
    },
    /// The account's quota is full (429).
    RateLimited {
        /// Which quota.
        scope: QuotaScope,
        /// How long the server asked to wait.
        retry_after: Option<Duration>,
        /// The quota's value, when the server said it.
        limit: Option<u64>,
        /// The per-minute limits the answer stated.
        stated: Limits,
    },
}

impl Outcome {
    /// Whether the provider counted the request against the account's
    /// quota: everything it accepted for processing. A request not sent, a
    /// 429 and a refused key are not counted.
    pub fn counted(&self) -> bool {
        !matches!(
            self,
            Outcome::NotSent | Outcome::Refused { .. } | Outcome::RateLimited { .. }
        )
    }
}

/// A key leased for one request. Dropping it releases the key's in-flight
/// slot even if the request was cancelled; [`Pool::settle`] also records what
/// the request taught the pool.
#[derive(Debug)]
pub struct Lease<'p> {
    pool: &'p Pool,
    key: usize,
    model: String,
    /// When the request was admitted (its entry in the window), and with
    /// what estimated cost.
    started: Instant,
    cost: Cost,
}

impl Lease<'_> {
    /// The key to send with.
    pub fn key(&self) -> &ApiKey {
        &self.pool.keys[self.key].key
    }

    /// Which key of the pool this is.
    pub fn key_id(&self) -> KeyId {
        KeyId(self.key)
    }

    /// The account (project) the key belongs to, whose quota the request
    /// uses.
    pub fn account(&self) -> AccountId {
        AccountId(self.pool.keys[self.key].account)
    }

    /// The account's name.
    pub fn account_name(&self) -> &str {
        self.pool.account_name(self.account())
    }

    /// The model as its provider names it (a `models` entry resolved).
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The account's requests-per-day limit for the leased model, configured
    /// or learned, for the day's ledger.
    pub fn day_limit(&self) -> Option<u64> {
        self.limits().rpd.map(u64::from)
    }

    /// The account's limits for the leased model, configured or learned.
    pub fn limits(&self) -> Limits {
        let state = self.pool.lock();
        let account = self.pool.keys[self.key].account;
        let quota = state.quotas.get(&(account, self.model.clone()));
        self.pool.accounts[account].limits(&self.model, quota)
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

impl Pool {
    /// Builds the pool from a validated config: its accounts (in file order,
    /// numbered by [`AccountId`]), their keys and limits. Keys of `group` are
    /// preferred over all others; then the config's group order holds.
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
        let mut keys = Vec::new();
        for (index, account) in config.accounts.iter().enumerate() {
            accounts.push(Account {
                name: account.name.clone(),
                provider: account.provider,
                limits: account.limits.clone().into_iter().collect(),
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
            ..State::default()
        };
        Ok(Pool {
            accounts,
            keys,
            strategy,
            models: config.models.clone(),
            default_max_output_tokens: config.default_max_output_tokens,
            state: Mutex::new(state),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves counters that are still
        // consistent enough to finish and report the run.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The account `key` belongs to, if it is one of the pool's.
    pub fn account_of(&self, key: &ApiKey) -> Option<AccountId> {
        self.keys
            .iter()
            .find(|k| k.key == *key)
            .map(|k| AccountId(k.account))
    }

    /// The name of `account`.
    pub fn account_name(&self, account: AccountId) -> &str {
        &self.accounts[account.0].name
    }

    /// The account named `name` (in the config), if the pool has it.
    pub fn account_named(&self, name: &str) -> Option<AccountId> {
        self.accounts
            .iter()
            .position(|a| a.name == name)
            .map(AccountId)
    }

    /// A key of `account` the run has not disabled, for a request outside
    /// the attempt loop (deleting the account's uploads after the run).
    pub fn usable_key(&self, account: AccountId) -> Option<ApiKey> {
        let state = self.lock();
        self.keys
            .iter()
            .zip(&state.keys)
            .find(|(key, ks)| {
                key.account == account.0 && !matches!(ks.health, Health::Disabled { .. })
            })
            .map(|(key, _)| key.key.clone())
    }

    /// Counts one request sent outside a lease (a Files API upload made
    /// under the key a request leased, a deletion) in `account`'s
    /// per-minute window for `model`: the next leases wait for the room it
    /// took.
    pub fn count_request(&self, account: AccountId, model: &str) {
        let (_, model) = self.route(model);
        let mut state = self.lock();
        let quota = state
            .quotas
            .entry((account.0, model.to_owned()))
            .or_default();
        quota.window.record(Instant::now(), Cost::default());
    }

    /// Leases a key for one request that needs `need`: a key of the pinned
    /// account if there is one, preferring a key other than `need.avoid`.
    /// Waits, without polling, until some account has room; fails when none
    /// ever will, not within [`MAX_WAIT`], or not before `need.deadline`.
    pub async fn lease(&self, need: Need<'_>) -> Result<Lease<'_>, Unavailable> {
        loop {
            // Register interest before looking, so a release between the
            // look and the wait is not missed.
            let changed = self.changed.notified();
            let now = Instant::now();
            match self.try_lease(&need, now)? {
                Look::Leased(key) => {
                    return Ok(Lease {
                        pool: self,
                        key,
                        model: self.route(need.model).1.to_owned(),
                        started: now,
                        cost: self.cost(&need),
                    })
                }
                Look::Wait(Some(until)) => {
                    if need.deadline.is_some_and(|d| until > d) {
                        return Err(Unavailable::PastDeadline {
                            model: need.model.to_owned(),
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
    fn try_lease(&self, need: &Need<'_>, now: Instant) -> Result<Look, Unavailable> {
        let (provider, model) = self.route(need.model);
        let cost = self.cost(need);
        let tokens = need.tokens;
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
            if account.provider != provider || need.pin.is_some_and(|p| p.0 != key.account) {
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
            let limits = account.limits(model, Some(quota));
            let admission = quota.admission(now, &limits, cost);
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
            ready.retain(|c| Some(KeyId(c.id)) != need.avoid);
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
            quota.window.record(now, cost);
            let limits = self.accounts[key.account].limits(model, Some(quota));
            if limits.rpm.is_none() && limits.tpm.is_none() && limits.otpm.is_none() {
                // Nothing to enforce yet: keep only enough history for a
                // limit learned later, not a minute of a fast run.
                quota.window.keep_last(UNLIMITED_HISTORY);
            }
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

    /// The provider whose accounts serve `model` and the name it is sent
    /// as ([`crate::config::route`]); when none can, the one its name
    /// implies, which has no key.
    fn route<'m>(&'m self, model: &'m str) -> (ProviderKind, &'m str) {
        crate::config::route(&self.models, model, |p| {
            self.accounts.iter().any(|a| a.provider == p)
        })
        .unwrap_or_else(|| (ProviderKind::implied_by(model), model))
    }

    /// The name `model` is sent to its provider as: a name of the config's
    /// `models` map resolved, any other name as it is.
    pub fn model_name<'m>(&'m self, model: &'m str) -> &'m str {
        self.route(model).1
    }

    /// What `need` is admitted with: its input estimate and its output cap.
    fn cost(&self, need: &Need<'_>) -> Cost {
        Cost {
            input: need.tokens,
            output: u64::from(
                need.max_output_tokens
                    .unwrap_or(self.default_max_output_tokens),
            ),
        }
    }

    /// Records what came of a leased request and releases the lease.
    pub fn settle(&self, lease: Lease<'_>, outcome: Outcome) {
        let now = Instant::now();
        let account = self.keys[lease.key].account;
        let mut guard = self.lock();
        let state = &mut *guard;
        let ks = &mut state.keys[lease.key];
        let latency = now - lease.started;
        let quota = state
            .quotas
            .entry((account, lease.model.clone()))
            .or_default();
        match outcome {
            Outcome::NotSent => quota.window.forget(lease.started, lease.cost),
            // The key answered: whatever the item's fate, the key is fine.
            Outcome::Answered {
                input_tokens,
                output_tokens,
                stated,
            } => {
                let actual = Cost {
                    input: input_tokens.unwrap_or(lease.cost.input),
                    output: output_tokens.unwrap_or(lease.cost.output),
                };
                quota.window.correct(lease.started, lease.cost, actual);
                quota.learned = stated.or(quota.learned);
                ks.observe(false, latency, now);
            }
            Outcome::Failed => ks.observe(true, latency, now),
            Outcome::Refused { reason } => {
                ks.health = Health::Disabled { reason };
                // A refused key belongs to no project's quota.
                quota.window.forget(lease.started, lease.cost);
            }
            Outcome::RateLimited {
                scope,
                retry_after,
                limit,
                stated,
            } => {
                // A 429 says the key works: it is the account that is full.
                ks.proven = true;
                if ks.health == Health::Probing {
                    ks.health = Health::Healthy;
                }
                // The server did not count what it refused.
                quota.window.forget(lease.started, lease.cost);
                quota.learned = stated.or(quota.learned);
                quota.learn(scope, retry_after, limit, now);
            }
        }
        drop(guard);
        drop(lease);
    }

    /// Takes limits another host learned for the account named `account`
    /// and `model`, where this pool knows none (an account it lacks is
    /// ignored).
    pub fn adopt(&self, account: &str, model: &str, limits: Limits) {
        let Some(index) =
            (0..self.accounts.len()).find(|&a| self.account_name(AccountId(a)) == account)
        else {
            return;
        };
        let mut state = self.lock();
        let quota = state.quotas.entry((index, model.to_owned())).or_default();
        quota.learned = quota.learned.or(limits);
        drop(state);
        self.changed.notify_waiters();
    }

    /// Gives `account`'s minute for `model` no request for `wait` (hosts
    /// sharing it hold its room): its keys serve others meanwhile.
    pub fn cool_down(&self, account: AccountId, model: &str, wait: Duration) {
        let mut state = self.lock();
        let quota = state
            .quotas
            .entry((account.0, model.to_owned()))
            .or_default();
        quota.learn(QuotaScope::MinuteRequests, Some(wait), None, Instant::now());
        drop(state);
        self.changed.notify_waiters();
    }

    /// Marks `account`'s day quota for `model` spent until `reset` (the
    /// ledger refused a reservation): its keys serve no request of the model
    /// before then.
    pub fn exhaust(&self, account: AccountId, model: &str, reset: chrono::DateTime<Utc>) {
        let mut state = self.lock();
        let quota = state
            .quotas
            .entry((account.0, model.to_owned()))
            .or_default();
        quota.exhaust_until(Instant::now(), reset);
        drop(state);
        self.changed.notify_waiters();
    }

    /// What the pool is waiting for, while no key has room for some model.
    pub fn waiting(&self) -> Option<Waiting> {
        let state = self.lock();
        match &state.waiting {
            Some((until, waiting)) if *until > Instant::now() => Some(waiting.clone()),
            _ => None,
        }
    }

    /// The requests per minute the accounts that serve `model` allow
    /// together (configured or learned): the pace of a run the quotas hold
    /// back. `None` when some serving account has no known RPM.
    pub fn requests_per_minute(&self, model: &str) -> Option<u64> {
        let (provider, model) = self.route(model);
        let state = self.lock();
        let mut total = 0;
        for (index, account) in self.accounts.iter().enumerate() {
            if account.provider != provider {
                continue;
            }
            let quota = state.quotas.get(&(index, model.to_owned()));
            total += u64::from(account.limits(model, quota).rpm?);
        }
        (total > 0).then_some(total)
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
    fn limits(&self, model: &str, quota: Option<&Quota>) -> Limits {
        let configured = self.limits.get(model).copied().unwrap_or_default();
        configured.or(quota.map(|q| q.learned).unwrap_or_default())
    }
}

/// The outcome of one look at the pool.
enum Look {
    /// This key is leased.
    Leased(usize),
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
    /// The largest share used of any per-minute limit (RPM, TPM, OTPM) in
    /// the window. 0 where nothing is limited.
    fn used_share(&self, limits: &Limits) -> f64 {
        let share = |used: f64, limit: Option<f64>| limit.map_or(0.0, |l| used / l.max(1.0));
        let total = self.window.total();
        share(self.window.len() as f64, limits.rpm.map(f64::from))
            .max(share(total.input as f64, limits.tpm.map(|t| t as f64)))
            .max(share(total.output as f64, limits.otpm.map(|t| t as f64)))
    }

    /// Marks the day's quota spent until `reset` (a wall-clock instant).
    fn exhaust_until(&mut self, now: Instant, reset: chrono::DateTime<Utc>) {
        let wait = (reset - Utc::now()).to_std().unwrap_or_default();
        self.exhausted_until = Some((after(now, wait), reset));
    }

    fn admission(&mut self, now: Instant, limits: &Limits, cost: Cost) -> QuotaAdmission {
        if let Some((until, reset)) = self.exhausted_until {
            if until > now {
                return QuotaAdmission::DayExhausted(reset);
            }
            self.exhausted_until = None;
        }
        let cooled = self.cooled_until.filter(|&t| t > now);
        match (self.window.check(now, SKEW_MARGIN, limits, cost), cooled) {
            (Admission::Never, _) => QuotaAdmission::Never,
            (Admission::Now, None) => QuotaAdmission::Now,
            (Admission::Now, Some(c)) => QuotaAdmission::At(c, WaitFor::ServerDelay),
            (Admission::At(at, _), Some(c)) if c >= at => {
                QuotaAdmission::At(c, WaitFor::ServerDelay)
            }
            (Admission::At(at, why), _) => QuotaAdmission::At(at, why),
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
                self.exhaust_until(now, QuotaDay::today().reset());
                if let Some(limit) = limit {
                    self.learned
                        .rpd
                        .get_or_insert(limit.min(u64::from(u32::MAX)) as u32);
                }
            }
            QuotaScope::MinuteRequests
            | QuotaScope::MinuteTokens
            | QuotaScope::MinuteOutputTokens
            | QuotaScope::Unknown => {
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
                    (QuotaScope::MinuteOutputTokens, Some(limit)) => {
                        self.learned.otpm.get_or_insert(limit);
                    }
                    _ => {}
                }
            }
        }
    }
}
