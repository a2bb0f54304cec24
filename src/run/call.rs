//! The attempt loop: one logical request, from the first attempt to its
//! answer or its final failure, in one straight line per attempt:
//!
//! ```text
//! lease = pool.lease(need)               a key whose account has room now
//! ledger.reserve(account, model, day)    the day's quota, before sending
//! result = clients[account].send(key)    the provider
//! pool.settle(lease, outcome)            what the answer says of key and quota
//! retries.decide(error)                  RetryNow | RetryAfter(d) | GiveUp
//! ```
//!
//! [`Caller`] is also keyfan's library face: a Rust program builds one from
//! a config and gets lease, quota, retry and failover for its own requests.

use super::allowance::Allowance;
use super::clients::{ClientError, Clients};
use super::retry::{Decision, Retries, RetryPolicy};
use super::shared::Admission;
use crate::config::Config;
use crate::estimate::prompt_tokens;
use crate::pool::{after, Lease, Need, Outcome, Pool, PoolError, Strategy, Unavailable};
use crate::provider::{ApiError, Client, ErrorClass, Reply, Request};
use crate::store::{MemoryLedger, QuotaLedger, Reservation, Reserved};
use crate::types::{ApiKey, Limits, QuotaDay, QuotaUse};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Why a call gave up.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    /// No key could be leased (none usable, day quotas spent, too large, a
    /// wait too long).
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// The last attempt's error: final by class, or retries used up.
    #[error("{0}")]
    Api(ApiError),
    /// The stop token was cancelled before the call was done: nothing more
    /// was sent.
    #[error("stopped before the request was answered")]
    Stopped,
    /// The day's ledger could not be reached (the state file failed):
    /// nothing is sent whose use could not be counted.
    #[error("the quota ledger is unavailable; the request was not sent")]
    Ledger,
    /// Every endpoint sent to refuses connections and none has ever
    /// answered: no item can get through.
    #[error("no provider endpoint can be reached: {}", describe_unreachable(.0))]
    Unreachable(Vec<(String, String)>),
}

fn describe_unreachable(endpoints: &[(String, String)]) -> String {
    endpoints
        .iter()
        .map(|(url, error)| format!("{url} ({error})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A successful answer that may say what the server counted against the
/// account's per-minute limits (and what limits it stated), so the pool's
/// accounting can use the real counts instead of its estimates.
pub trait Metered {
    /// What the server counted and stated, if it said.
    fn quota_use(&self) -> Option<QuotaUse>;
}

/// A token count uses the request's admission and nothing more: no input or
/// output tokens of generation.
impl Metered for u64 {
    fn quota_use(&self) -> Option<QuotaUse> {
        None
    }
}

impl Metered for Reply {
    fn quota_use(&self) -> Option<QuotaUse> {
        Some(self.quota)
    }
}

/// One request a call made, shown to its observer.
#[derive(Debug)]
pub struct Attempt<'a> {
    /// 1-based number within the call.
    pub number: u32,
    /// The key used.
    pub key: &'a ApiKey,
    /// The key's account.
    pub account: &'a str,
    /// The quota day it was counted against.
    pub day: QuotaDay,
    /// Time from sending to the answer.
    pub latency: Duration,
    /// The error, when it failed.
    pub error: Option<&'a ApiError>,
}

/// Where the day's requests are counted before they are sent.
#[derive(Debug)]
pub(crate) enum Gate {
    /// The state file, through the recorder thread that owns it, reserved
    /// ahead a few requests at a time.
    Recorder(Allowance),
    /// Memory: a program without a state file.
    Memory(Mutex<MemoryLedger>),
    /// The shared state in PostgreSQL, which also shares the minute.
    Shared(super::shared::SharedGate),
}

impl Gate {
    /// Counts one request, or says the day is spent (or, with a shared
    /// minute, how long until it has room); `Err` when the ledger is gone.
    async fn reserve(
        &self,
        reservation: Reservation,
        minute: Limits,
    ) -> Result<Admission, CallError> {
        let verdict = match self {
            Gate::Shared(shared) => {
                return shared
                    .reserve(reservation, minute)
                    .await
                    .ok_or(CallError::Ledger)
            }
            Gate::Recorder(allowance) => allowance.reserve(reservation).await,
            Gate::Memory(ledger) => lock(ledger)
                .reserve(&[reservation])
                .ok()
                .and_then(|verdicts| verdicts.into_iter().next())
                .ok_or(CallError::Ledger),
        };
        verdict.map(Admission::Now)
    }

    /// Gives back a request the server did not count.
    fn release(&self, reservation: Reservation) {
        // A ledger that is gone has stopped the run: nothing to give back.
        let _ = match self {
            Gate::Recorder(allowance) => {
                allowance.release(reservation);
                true
            }
            Gate::Memory(ledger) => lock(ledger).release(&[reservation]).is_ok(),
            Gate::Shared(shared) => {
                shared.release(reservation);
                true
            }
        };
    }
}

fn lock(ledger: &Mutex<MemoryLedger>) -> std::sync::MutexGuard<'_, MemoryLedger> {
    ledger.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why a [`Caller`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CallerError {
    /// The pool refused the config (an unknown group).
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// An account's HTTP client could not be built.
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// Makes calls with lease, the day's quota, retry and failover: the pool,
/// one HTTP client per account, the day's ledger and the retry policy.
#[derive(Debug)]
pub struct Caller {
    pool: Arc<Pool>,
    clients: Arc<Clients>,
    gate: Gate,
    policy: RetryPolicy,
}

impl Caller {
    /// A caller for a program without a state file: the config's accounts
    /// and keys, the day's quota counted in memory.
    ///
    /// ```
    /// use keyfan::config::{Config, MissingEnv};
    /// use keyfan::pool::Strategy;
    /// use keyfan::provider::{Generation, Request};
    /// use keyfan::run::{Caller, RetryPolicy};
    /// use keyfan::sim::{SimConfig, SimServer};
    /// use std::path::Path;
    ///
    /// # #[tokio::main]
    /// # async fn main() -> anyhow::Result<()> {
    /// // With GEMINI_API_KEY unset, Placeholder gives a key the simulator
    /// // rehearsing this config accepts; a real program uses MissingEnv::Error
    /// // and keeps the public base URL.
    /// let yaml = "accounts:\n  - name: proj-a\n    keys: [\"${GEMINI_API_KEY}\"]\n";
    /// let mut config = Config::parse(yaml, Path::new("inline"), |_| None, MissingEnv::Placeholder)?;
    /// let sim = SimServer::start(SimConfig::rehearsal(&config), ([127, 0, 0, 1], 0).into()).await?;
    /// for provider in config.providers.values_mut() {
    ///     provider.base_url = sim.base_url();
    /// }
    ///
    /// let caller = Caller::new(&config, Strategy::Hybrid, RetryPolicy::default())?;
    /// let request = Request {
    ///     model: "gemini-2.5-flash",
    ///     prompt: "Why is the sky blue?",
    ///     system: None,
    ///     max_output_tokens: Some(200),
    ///     temperature: None,
    ///     turns: &[],
    ///     generation: Generation::none(),
    ///     media: &[],
    /// };
    /// let reply = caller.generate(&request).await?;
    /// assert!(reply.text.contains("digest:"));
    /// # sim.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn new(
        config: &Config,
        strategy: Strategy,
        policy: RetryPolicy,
    ) -> Result<Caller, CallerError> {
        let pool = Arc::new(Pool::new(config, strategy, None)?);
        Ok(Caller::with_clients(pool, Clients::new(config)?, policy))
    }

    /// A caller over `pool` with `clients` built elsewhere (one per account
    /// in the pool's order, e.g. on the in-memory transport), the day's
    /// quota counted in memory.
    pub fn with_clients(pool: Arc<Pool>, clients: Clients, policy: RetryPolicy) -> Caller {
        let gate = Gate::Memory(Mutex::default());
        Caller::with(pool, Arc::new(clients), gate, policy)
    }

    /// A caller from its parts.
    pub(crate) fn with(
        pool: Arc<Pool>,
        clients: Arc<Clients>,
        gate: Gate,
        policy: RetryPolicy,
    ) -> Caller {
        Caller {
            pool,
            clients,
            gate,
            policy,
        }
    }

    /// The pool, for what it can say of the run (what it waits for, which
    /// keys it disabled).
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Sends one prompt through [`Caller::call`], with its input tokens
    /// estimated from its text.
    pub async fn generate(&self, request: &Request<'_>) -> Result<Reply, CallError> {
        let tokens = prompt_tokens(request.prompt, request.system);
        let stop = CancellationToken::new();
        let need = Need::new(request.model, tokens);
        self.call(
            need,
            &stop,
            |client, key| async move { client.generate(&key, request).await },
            |_, _| {},
        )
        .await
    }

    /// Makes one logical request that needs `need`, until it is answered,
    /// fails for good, or `stop` is cancelled ([`CallError::Stopped`]: no
    /// further attempt is sent, and waits end at once). `send` makes one
    /// attempt with the client and key it is given (both cheap clones);
    /// `observe` sees every
    /// attempt sent, with the value when it succeeded.
    pub async fn call<T, F, Fut>(
        &self,
        need: Need<'_>,
        stop: &CancellationToken,
        mut send: F,
        mut observe: impl FnMut(&Attempt<'_>, Option<&T>),
    ) -> Result<T, CallError>
    where
        T: Metered,
        F: FnMut(Client, ApiKey) -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let deadline = self.policy.deadline.map(|d| after(Instant::now(), d));
        let mut need = Need { deadline, ..need };
        let mut retries = Retries::new(&self.policy);
        let mut number = 0;
        loop {
            let lease = tokio::select! {
                biased;
                _ = stop.cancelled() => return Err(CallError::Stopped),
                lease = self.pool.lease(need) => lease,
            };
            let lease = lease?;
            let reservation = match self.reserve(&lease).await {
                Ok(Some(reservation)) => reservation,
                refused => {
                    self.pool.settle(lease, Outcome::NotSent);
                    refused?;
                    continue;
                }
            };
            number += 1;
            let sent = Instant::now();
            let client = self.clients.get(lease.account()).clone();
            let result = send(client, lease.key().clone()).await;
            let attempt = Attempt {
                number,
                key: lease.key(),
                account: lease.account_name(),
                day: reservation.day,
                latency: sent.elapsed(),
                error: result.as_ref().err(),
            };
            observe(&attempt, result.as_ref().ok());
            let unreachable = self
                .clients
                .observe(lease.account(), result.as_ref().map(drop));
            need.avoid = Some(lease.key_id());
            let outcome = outcome(&result);
            if let (
                Gate::Shared(shared),
                Outcome::RateLimited {
                    scope,
                    limit: Some(limit),
                    ..
                },
            ) = (&self.gate, &outcome)
            {
                shared.learn(&reservation.account, &reservation.model, *scope, *limit);
            }
            if !outcome.counted() {
                self.gate.release(reservation);
            }
            self.pool.settle(lease, outcome);
            let error = match result {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            if unreachable {
                return Err(CallError::Unreachable(self.clients.unreachable()));
            }
            match retries.decide(&error) {
                Decision::RetryNow => {}
                // A retry that could only start after the deadline is not made.
                Decision::RetryAfter(wait)
                    if deadline.is_none_or(|d| after(Instant::now(), wait) < d) =>
                {
                    tokio::select! {
                        biased;
                        _ = stop.cancelled() => return Err(CallError::Stopped),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                Decision::RetryAfter(_) | Decision::GiveUp => return Err(CallError::Api(error)),
            }
        }
    }

    /// Counts the leased request against its account's day before it is
    /// sent. `None` when the day is spent: the pool is told, and the call
    /// gives the lease back unsent and leases again.
    async fn reserve(&self, lease: &Lease<'_>) -> Result<Option<Reservation>, CallError> {
        let model = lease.model();
        let reservation = Reservation {
            account: lease.account_name().to_owned(),
            model: model.to_owned(),
            day: QuotaDay::today(),
            limit: lease.day_limit(),
        };
        match self
            .gate
            .reserve(reservation.clone(), lease.limits())
            .await?
        {
            Admission::Now(Reserved::Reserved) => Ok(Some(reservation)),
            Admission::Now(Reserved::Exhausted { reset }) => {
                self.pool.exhaust(lease.account(), model, reset);
                Ok(None)
            }
            // Other hosts hold the account's minute: lease another meanwhile.
            Admission::Later(wait) => {
                self.pool.cool_down(lease.account(), model, wait);
                Ok(None)
            }
        }
    }
}

/// Why the API refused the key of `error`, as keyfan names it everywhere:
/// the API's reason and its message. `None` when the key was not refused.
pub(crate) fn refused_reason(error: &ApiError) -> Option<String> {
    match &error.class {
        ErrorClass::KeyInvalid { reason } => Some(format!("{reason}: {}", error.message)),
        _ => None,
    }
}

/// What an attempt's result tells the pool about its key and its quota.
fn outcome<T: Metered>(result: &Result<T, ApiError>) -> Outcome {
    let error = match result {
        Ok(value) => {
            let used = value.quota_use();
            return Outcome::Answered {
                input_tokens: used.map(|u| u.input_tokens),
                output_tokens: used.map(|u| u.output_tokens),
                stated: used.map(|u| u.stated).unwrap_or_default(),
            };
        }
        Err(error) => error,
    };
    match &error.class {
        // The server answered: the item's fate is no fault of the key, and
        // an overloaded provider is no fault of the key either. What a 200
        // without an answer billed counts in the window.
        ErrorClass::ItemInvalid
        | ErrorClass::Blocked { .. }
        | ErrorClass::EmptyAnswer
        | ErrorClass::Overloaded { .. } => Outcome::Answered {
            input_tokens: error.usage().map(|u| u.input_tokens),
            output_tokens: error.usage().map(|u| u.output_tokens),
            stated: error.stated.as_deref().copied().unwrap_or_default(),
        },
        ErrorClass::Transient => Outcome::Failed,
        ErrorClass::KeyInvalid { .. } => Outcome::Refused {
            reason: refused_reason(error).unwrap_or_default(),
        },
        ErrorClass::RateLimited {
            scope,
            retry_after,
            limit,
        } => Outcome::RateLimited {
            scope: *scope,
            retry_after: *retry_after,
            limit: *limit,
            stated: error.stated.as_deref().copied().unwrap_or_default(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MissingEnv;
    use futures_util::FutureExt;
    use std::sync::atomic::{AtomicU32, Ordering};

    const MODEL: &str = "gemini-2.5-flash";

    /// A caller over `accounts` whose requests never leave the process:
    /// the tests' `send` closures answer them.
    fn caller(accounts: &str, policy: RetryPolicy) -> Caller {
        let yaml = format!(
            "providers:\n  gemini: {{ base_url: http://127.0.0.1:9 }}\naccounts:\n{accounts}"
        );
        let config = Config::parse(
            &yaml,
            std::path::Path::new("test.yaml"),
            |_| None,
            MissingEnv::Error,
        )
        .expect("valid test config");
        Caller::new(&config, Strategy::RoundRobin, policy).expect("caller builds")
    }

    /// A `send` that answers every attempt with `answer`, counting them.
    fn answering<'a>(
        calls: &'a AtomicU32,
        answer: impl Fn() -> Result<Reply, ApiError> + 'a,
    ) -> impl FnMut(Client, ApiKey) -> std::future::Ready<Result<Reply, ApiError>> + 'a {
        move |_, _| {
            calls.fetch_add(1, Ordering::SeqCst);
            std::future::ready(answer())
        }
    }

    fn failure(class: ErrorClass) -> Result<Reply, ApiError> {
        Err(ApiError {
            class,
            status: Some(400),
            message: "API key not valid. Please pass a valid API key.".into(),
            billed: None,
            stated: None,
        })
    }

    fn reply() -> Result<Reply, ApiError> {
        Ok(Reply {
            text: "fine".into(),
            usage: crate::provider::Usage::default(),
            model_version: None,
            finish_reason: Some("STOP".into()),
            quota: QuotaUse::default(),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_stopped_call_sends_nothing_more_and_ends_its_backoff_at_once() {
        let policy = RetryPolicy {
            backoff_base: Duration::from_secs(3600),
            backoff_cap: Duration::from_secs(3600),
            seed: Some(1),
            ..RetryPolicy::default()
        };
        let caller = caller("  - name: a\n    keys: [k1, k2]\n", policy);
        let stop = CancellationToken::new();
        let calls = AtomicU32::new(0);
        let transient = || failure(ErrorClass::Transient);
        let need = Need::new(MODEL, 10);
        let call = caller.call(need, &stop, answering(&calls, transient), |_, _| {});
        let mut call = std::pin::pin!(call);
        assert!(call.as_mut().now_or_never().is_none(), "in its backoff");
        let start = Instant::now();
        stop.cancel();
        assert_eq!(call.await.unwrap_err(), CallError::Stopped);
        assert_eq!(Instant::now(), start, "the backoff ended at once");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // A call started after the stop sends nothing.
        let err = caller
            .call(need, &stop, answering(&calls, transient), |_, _| {})
            .await
            .unwrap_err();
        assert_eq!(err, CallError::Stopped);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn when_every_key_is_refused_the_call_says_no_key_can_serve() {
        let caller = caller("  - name: a\n    keys: [k1, k2]\n", RetryPolicy::default());
        let calls = AtomicU32::new(0);
        let refused = || {
            failure(ErrorClass::KeyInvalid {
                reason: "API_KEY_INVALID".into(),
            })
        };
        let stop = CancellationToken::new();
        let err = caller
            .call(
                Need::new(MODEL, 10),
                &stop,
                answering(&calls, refused),
                |_, _| {},
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, CallError::Unavailable(Unavailable::NoKey { .. })),
            "{err}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2, "one request per key");
        let disabled = caller.pool().disabled();
        assert_eq!(disabled.len(), 2);
        assert!(disabled
            .iter()
            .all(|(_, _, reason)| reason.starts_with("API_KEY_INVALID: API key not valid")));
    }

    #[tokio::test(start_paused = true)]
    async fn the_days_ledger_is_the_gate_and_a_refused_request_is_given_back() {
        let caller = caller(
            "  - name: a\n    keys: [k1]\n    limits: { gemini-2.5-flash: { rpd: 2 } }\n  - name: b\n    keys: [k2]\n    limits: { gemini-2.5-flash: { rpd: 1 } }\n",
            RetryPolicy::default(),
        );
        let stop = CancellationToken::new();
        let calls = AtomicU32::new(0);
        let mut accounts = Vec::new();
        for _ in 0..3 {
            caller
                .call(
                    Need::new(MODEL, 10),
                    &stop,
                    answering(&calls, reply),
                    |a, _| accounts.push(a.account.to_owned()),
                )
                .await
                .unwrap();
        }
        accounts.sort();
        assert_eq!(accounts, ["a", "a", "b"], "each account up to its rpd");
        let err = caller
            .call(
                Need::new(MODEL, 10),
                &stop,
                answering(&calls, reply),
                |_, _| {},
            )
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                CallError::Unavailable(Unavailable::DayExhausted { .. })
            ),
            "{err}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 3, "nothing past the limits");
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_is_given_back_to_the_days_ledger() {
        let caller = caller(
            "  - name: a\n    keys: [k1]\n    limits: { gemini-2.5-flash: { rpd: 1 } }\n",
            RetryPolicy::default(),
        );
        let stop = CancellationToken::new();
        let calls = AtomicU32::new(0);
        let full = || {
            failure(ErrorClass::RateLimited {
                scope: crate::types::QuotaScope::MinuteRequests,
                retry_after: Some(Duration::from_secs(1)),
                limit: None,
            })
        };
        let first = AtomicU32::new(0);
        let once_full = || match first.fetch_add(1, Ordering::SeqCst) {
            0 => full(),
            _ => reply(),
        };
        let reply = caller
            .call(
                Need::new(MODEL, 10),
                &stop,
                answering(&calls, once_full),
                |_, _| {},
            )
            .await;
        assert!(
            reply.is_ok(),
            "the 429 did not use up the day's one request"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_overloaded_provider_is_waited_out_without_resting_the_key() {
        let policy = RetryPolicy {
            backoff_base: Duration::from_millis(1),
            backoff_cap: Duration::from_millis(1),
            seed: Some(1),
            ..RetryPolicy::default()
        };
        let caller = caller("  - name: a\n    keys: [k1]\n", policy);
        let calls = AtomicU32::new(0);
        let overloaded_five_times = || match calls.load(Ordering::SeqCst) {
            1..=5 => failure(ErrorClass::Overloaded {
                retry_after: Some(Duration::from_secs(2)),
            }),
            _ => reply(),
        };
        let start = Instant::now();
        let stop = CancellationToken::new();
        let sent = AtomicU32::new(0);
        let result = caller
            .call(
                Need::new(MODEL, 10),
                &stop,
                |_, _| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    sent.fetch_add(1, Ordering::SeqCst);
                    std::future::ready(overloaded_five_times())
                },
                |_, _| {},
            )
            .await;
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(sent.load(Ordering::SeqCst), 6);
        // Each retry waited the server's 2 s, and no more: five failures in a
        // row would have rested a key that had failed (15 s).
        assert_eq!(Instant::now() - start, Duration::from_secs(10));
    }
}
