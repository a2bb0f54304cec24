//! When to try an item again: the retry policy, acted on by error class, and
//! exponential backoff with full jitter.
//!
//! | class | decision |
//! |---|---|
//! | `RateLimited` | retry now: the pool waits exactly as long as the quota needs (no backoff) |
//! | `KeyInvalid` | retry now: the pool has disabled the key, another serves |
//! | `Transient` | retry after a backoff, up to `max_retries` |
//! | `EmptyAnswer` | as `Transient`, but at most twice |
//! | `Overloaded` | as `Transient`, waiting at least the server's `retry-after` |
//! | `ItemInvalid`, `Blocked` | give up: retrying cannot help |
//!
//! The n-th backoff is uniform in `[0, min(cap, base·2ⁿ)]`, which spreads the
//! retries of many workers apart instead of letting them hammer a recovering
//! server in step. It draws from a seeded RNG when the policy names a seed,
//! so a test under paused time is repeatable.

use crate::provider::{ApiError, ErrorClass};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::time::Duration;

/// Retries of an item after 200s without usable output: the APIs say to
/// retry, but a prompt that keeps getting none will not get one by trying
/// [`RetryPolicy::max_retries`] times. They count as transient retries too.
const EMPTY_ANSWER_RETRIES: u32 = 2;

/// How hard an item is tried.
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
    /// Seed of the backoff's jitter; `None` draws one from the OS.
    pub seed: Option<u64>,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_retries: 5,
            max_rate_limited: 20,
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(30),
            deadline: None,
            seed: None,
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Decision {
    /// Try again at once (the pool decides which key, and when it has room).
    RetryNow,
    /// Try again after this backoff.
    RetryAfter(Duration),
    /// Stop: the item's outcome is this error.
    GiveUp,
}

/// The retry state of one item.
#[derive(Debug)]
pub struct Retries<'p> {
    policy: &'p RetryPolicy,
    transient: u32,
    empty: u32,
    rate_limited: u32,
    backoffs: u32,
    /// The backoff's jitter, seeded on the first backoff: most items never
    /// back off, and seeding from the OS costs a system call.
    rng: Option<SmallRng>,
}

impl<'p> Retries<'p> {
    /// A fresh item under `policy`.
    pub fn new(policy: &'p RetryPolicy) -> Retries<'p> {
        Retries {
            policy,
            transient: 0,
            empty: 0,
            rate_limited: 0,
            backoffs: 0,
            rng: None,
        }
    }

    /// What to do after `error`, by its class and the counts so far.
    pub fn decide(&mut self, error: &ApiError) -> Decision {
        let policy = self.policy;
        match error.class {
            ErrorClass::ItemInvalid | ErrorClass::Blocked { .. } => Decision::GiveUp,
            ErrorClass::KeyInvalid { .. } => Decision::RetryNow,
            ErrorClass::RateLimited { .. } => {
                self.rate_limited += 1;
                match self.rate_limited <= policy.max_rate_limited {
                    true => Decision::RetryNow,
                    false => Decision::GiveUp,
                }
            }
            ErrorClass::Transient => {
                self.transient += 1;
                self.backoff(self.transient <= policy.max_retries)
            }
            ErrorClass::Overloaded { retry_after } => {
                self.transient += 1;
                match self.backoff(self.transient <= policy.max_retries) {
                    Decision::RetryAfter(wait) => {
                        Decision::RetryAfter(wait.max(retry_after.unwrap_or_default()))
                    }
                    other => other,
                }
            }
            ErrorClass::EmptyAnswer => {
                self.transient += 1;
                self.empty += 1;
                self.backoff(
                    self.transient <= policy.max_retries && self.empty <= EMPTY_ANSWER_RETRIES,
                )
            }
        }
    }

    /// The next backoff when `allowed`, else giving up.
    fn backoff(&mut self, allowed: bool) -> Decision {
        if !allowed {
            return Decision::GiveUp;
        }
        let ceiling = self
            .policy
            .backoff_base
            .saturating_mul(2u32.saturating_pow(self.backoffs))
            .min(self.policy.backoff_cap);
        self.backoffs += 1;
        let seed = self.policy.seed;
        let rng = self.rng.get_or_insert_with(|| {
            seed.map_or_else(SmallRng::from_entropy, SmallRng::seed_from_u64)
        });
        Decision::RetryAfter(ceiling.mul_f64(rng.gen::<f64>()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(class: ErrorClass) -> ApiError {
        ApiError {
            class,
            status: None,
            message: String::new(),
            billed: None,
            stated: None,
        }
    }

    #[test]
    fn the_jitter_is_seeded_on_the_first_backoff_only() {
        let policy = RetryPolicy::default();
        let mut retries = Retries::new(&policy);
        let limited = ErrorClass::RateLimited {
            scope: crate::provider::QuotaScope::MinuteRequests,
            limit: None,
            retry_after: None,
        };
        assert_eq!(retries.decide(&error(limited)), Decision::RetryNow);
        assert!(retries.rng.is_none(), "nothing drawn, nothing seeded");
        assert!(matches!(
            retries.decide(&error(ErrorClass::Transient)),
            Decision::RetryAfter(_)
        ));
        assert!(retries.rng.is_some());
    }

    #[test]
    fn waits_grow_exponentially_under_the_cap_and_are_jittered() {
        let policy = RetryPolicy {
            max_retries: 8,
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(1),
            seed: Some(7),
            ..RetryPolicy::default()
        };
        let mut retries = Retries::new(&policy);
        let waits: Vec<Duration> = (0..8)
            .map(|_| match retries.decide(&error(ErrorClass::Transient)) {
                Decision::RetryAfter(wait) => wait,
                other => panic!("{other:?}"),
            })
            .collect();
        let ceilings = [100, 200, 400, 800, 1000, 1000, 1000, 1000];
        for (wait, ceiling) in waits.iter().zip(ceilings) {
            assert!(
                *wait <= Duration::from_millis(ceiling),
                "{wait:?} > {ceiling}ms"
            );
        }
        // Full jitter: not every wait sits at its ceiling.
        assert!(waits
            .iter()
            .zip(ceilings)
            .any(|(w, c)| *w < Duration::from_millis(c) / 2));
        // Seeded: the same policy draws the same waits.
        let mut again = Retries::new(&policy);
        assert_eq!(
            again.decide(&error(ErrorClass::Transient)),
            Decision::RetryAfter(waits[0])
        );
        assert_eq!(
            retries.decide(&error(ErrorClass::Transient)),
            Decision::GiveUp
        );
    }

    #[test]
    fn each_class_is_decided_by_its_own_rule() {
        let policy = RetryPolicy {
            max_rate_limited: 1,
            ..RetryPolicy::default()
        };
        let mut retries = Retries::new(&policy);
        assert_eq!(
            retries.decide(&error(ErrorClass::ItemInvalid)),
            Decision::GiveUp
        );
        let blocked = ErrorClass::Blocked {
            reason: "SAFETY".into(),
        };
        assert_eq!(retries.decide(&error(blocked)), Decision::GiveUp);
        let refused = ErrorClass::KeyInvalid {
            reason: "API_KEY_INVALID".into(),
        };
        assert_eq!(retries.decide(&error(refused)), Decision::RetryNow);
        let full = ErrorClass::RateLimited {
            scope: crate::types::QuotaScope::MinuteRequests,
            retry_after: None,
            limit: None,
        };
        assert_eq!(retries.decide(&error(full.clone())), Decision::RetryNow);
        assert_eq!(retries.decide(&error(full)), Decision::GiveUp);
        // An empty answer is tried again twice, whatever max_retries allows.
        let empty: Vec<Decision> = (0..3)
            .map(|_| retries.decide(&error(ErrorClass::EmptyAnswer)))
            .collect();
        assert!(matches!(
            empty[..2],
            [Decision::RetryAfter(_), Decision::RetryAfter(_)]
        ));
        assert_eq!(empty[2], Decision::GiveUp);
    }
}
