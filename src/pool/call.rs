//! `Pool::call`: lease, send, learn, retry and fail over, for any request.
//!
//! This is the library face of keyfan (DESIGN §1): a Rust program hands the
//! pool a closure that makes one request with the client and key it is given,
//! and gets back the first success or the final failure. Every failure is
//! acted on by its class (DESIGN §3):
//!
//! | class | action |
//! |---|---|
//! | `RateLimited` | the account is cooled or exhausted; retry at once on a key with room (no backoff: the pool waits exactly as long as the quota needs) |
//! | `KeyInvalid` | the key is disabled for the run; retry at once on another |
//! | `Transient` | retry after exponential backoff with full jitter, on another key if one has room |
//! | `EmptyAnswer` | as `Transient`, but at most twice, and the key's health does not suffer |
//! | `ItemInvalid`, `Blocked` | final: retrying cannot help |
//!
//! The caller's stop token is looked at before every attempt: once it is
//! cancelled nothing more is sent, and waits (for room, or a backoff) end
//! at once.

use super::retry::Backoff;
use super::window::after;
use super::{Pool, Unavailable};
use crate::provider::{self, ApiError, ErrorClass, Reply};
use crate::types::ApiKey;
use rand::{rngs::SmallRng, SeedableRng};
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Retries of an item after 200s without usable output: the APIs say to
/// retry, but a prompt that keeps getting none will not get one by trying
/// [`RetryPolicy::max_retries`] times. They count as transient retries too.
const EMPTY_ANSWER_RETRIES: u32 = 2;

/// How hard [`Pool::call`] tries.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries after transient failures (5xx, timeouts, empty answers).
    pub max_retries: u32,
    /// Retries after 429s. With correct limits there are none; with learned
    /// limits, a few per account while the pool learns them.
    pub max_rate_limited: u32,
    /// First backoff ceiling.
    pub backoff_base: Duration,
    /// Largest backoff ceiling.
    pub backoff_cap: Duration,
    /// Give up (with the last error) once this much time has passed since
    /// the first attempt, whatever the counts say.
    pub deadline: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_retries: 5,
            max_rate_limited: 20,
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(30),
            deadline: None,
        }
    }
}

/// Why [`Pool::call`] gave up.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    /// No key could be leased (none usable, day quotas spent, too large).
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// The last attempt's error: final by class, or retries used up.
    #[error("{0}")]
    Api(ApiError),
    /// The stop token was cancelled before the call was done: nothing more
    /// was sent.
    #[error("stopped before the request was answered")]
    Stopped,
    /// Every endpoint the pool sent to refuses connections and none has
    /// ever answered: no item can get through, so the run should stop.
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

/// Whether `error` is a failure to connect at all (refused, no route, DNS),
/// as the transport describes it: the request never reached a server.
fn connect_failure(error: &ApiError) -> Option<&str> {
    (error.status.is_none() && error.message.starts_with("connection failed"))
        .then_some(error.message.as_str())
}

/// A successful answer that may say how many input tokens the server
/// counted, so the pool's TPM accounting can use the real count instead of
/// its estimate.
pub trait Metered {
    /// Input tokens the server counted, if it said.
    fn input_tokens(&self) -> Option<u64>;
}

impl Metered for Reply {
    fn input_tokens(&self) -> Option<u64> {
        Some(self.usage.input_tokens)
    }
}

/// What one attempt is sent with: handed to [`Pool::call`]'s closure.
#[derive(Debug, Clone)]
pub struct Slot {
    /// The HTTP client of the key's account.
    pub client: provider::Client,
    /// The key.
    pub key: ApiKey,
    /// The key's account, whose quota the request uses.
    pub account: String,
}

/// One request [`Pool::call`] made, shown to its observer.
#[derive(Debug)]
pub struct Attempt<'a> {
    /// 1-based number within the call.
    pub number: u32,
    /// The key used.
    pub key: &'a ApiKey,
    /// The key's account.
    pub account: &'a str,
    /// Time from sending to the answer.
    pub latency: Duration,
    /// The error, when it failed.
    pub error: Option<&'a ApiError>,
}

impl Pool {
    /// Makes one logical request of `model` (about `tokens` input tokens)
    /// with lease, retry and failover, until `stop` is cancelled (then
    /// [`CallError::Stopped`]). `request` is called once per attempt
    /// with the [`Slot`] (client, key, account) to use; `observe` sees every
    /// attempt, with the value when it succeeded. The value tells the pool
    /// the input tokens the server counted ([`Metered`]; `Reply` does).
    ///
    /// ```
    /// use keyfan::config::{Config, MissingEnv};
    /// use keyfan::pool::{Pool, RetryPolicy, Strategy};
    /// use keyfan::provider::Request;
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
    /// let pool = Pool::new(&config, Strategy::Hybrid, None)?;
    /// let stop = tokio_util::sync::CancellationToken::new();
    /// let request = Request {
    ///     model: "gemini-2.5-flash",
    ///     prompt: "Why is the sky blue?",
    ///     system: None,
    ///     max_output_tokens: Some(200),
    ///     temperature: None,
    /// };
    /// let reply = pool
    ///     .call(
    ///         request.model,
    ///         10,
    ///         &RetryPolicy::default(),
    ///         &stop,
    ///         |slot| {
    ///             let request = request.clone();
    ///             async move { slot.client.generate(&slot.key, &request).await }
    ///         },
    ///         |_attempt, _reply| {},
    ///     )
    ///     .await?;
    /// assert!(reply.text.contains("digest:"));
    /// # sim.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn call<T, F, Fut>(
        &self,
        model: &str,
        tokens: u64,
        policy: &RetryPolicy,
        stop: &CancellationToken,
        mut request: F,
        mut observe: impl FnMut(&Attempt<'_>, Option<&T>),
    ) -> Result<T, CallError>
    where
        T: Metered,
        F: FnMut(Slot) -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let started = Instant::now();
        let deadline = policy.deadline.map(|d| after(started, d));
        let mut backoff = Backoff::new(policy.backoff_base, policy.backoff_cap);
        let mut rng = SmallRng::from_entropy();
        let (mut transient, mut empty, mut rate_limited) = (0, 0, 0);
        let mut avoid = None;
        let mut last_error: Option<ApiError> = None;
        for number in 1.. {
            let lease = tokio::select! {
                biased;
                _ = stop.cancelled() => return Err(CallError::Stopped),
                lease = self.lease_before(model, tokens, avoid, deadline) => lease,
            };
            let lease = match (lease, last_error) {
                (Ok(lease), _) => lease,
                // The last key was refused and none is left: the API's own
                // words say more than "no usable key".
                (Err(Unavailable::NoKey { .. }), Some(error))
                    if matches!(error.class, ErrorClass::KeyInvalid { .. }) =>
                {
                    return Err(CallError::Api(error))
                }
                (Err(unavailable), _) => return Err(unavailable.into()),
            };
            let sent = Instant::now();
            let result = request(Slot {
                client: lease.client().clone(),
                key: lease.key().clone(),
                account: lease.account().to_owned(),
            })
            .await;
            let error = result.as_ref().err();
            observe(
                &Attempt {
                    number,
                    key: lease.key(),
                    account: lease.account(),
                    latency: sent.elapsed(),
                    error,
                },
                result.as_ref().ok(),
            );
            avoid = Some(lease.key_id());
            let refused = error.and_then(connect_failure);
            self.observe_endpoint(
                lease.key_id(),
                error.is_none_or(|e| e.status.is_some()),
                refused,
            );
            let refused = refused.is_some();
            let counted = result.as_ref().ok().and_then(Metered::input_tokens);
            self.settle(lease, error.map(|e| &e.class), counted);
            let error = match result {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            if refused && self.all_unreachable() {
                return Err(CallError::Unreachable(self.unreachable()));
            }
            let wait = match error.class {
                ErrorClass::ItemInvalid | ErrorClass::Blocked { .. } => None,
                ErrorClass::KeyInvalid { .. } => Some(Duration::ZERO),
                ErrorClass::RateLimited { .. } => {
                    rate_limited += 1;
                    (rate_limited <= policy.max_rate_limited).then_some(Duration::ZERO)
                }
                ErrorClass::Transient => {
                    transient += 1;
                    (transient <= policy.max_retries).then(|| backoff.next_delay(&mut rng))
                }
                ErrorClass::EmptyAnswer => {
                    transient += 1;
                    empty += 1;
                    (transient <= policy.max_retries && empty <= EMPTY_ANSWER_RETRIES)
                        .then(|| backoff.next_delay(&mut rng))
                }
            };
            // A retry that could only start after the deadline is not made.
            let wait = wait.filter(|&w| deadline.is_none_or(|d| after(Instant::now(), w) < d));
            match wait {
                Some(wait) => tokio::select! {
                    biased;
                    _ = stop.cancelled() => return Err(CallError::Stopped),
                    _ = tokio::time::sleep(wait) => {}
                },
                None => return Err(CallError::Api(error)),
            }
            last_error = Some(error);
        }
        unreachable!("the attempt loop only ends by returning")
    }
}
