//! The error classes a failure is sorted into, once, and the typed API error
//! that carries one.

use super::{Scrubber, Usage};
use crate::types::{Limits, QuotaScope};
use std::time::Duration;

/// What the scheduler should do about a failure: each class names its action.
#[derive(Debug, Clone, PartialEq)]
pub enum ErrorClass {
    /// 429: cool or exhaust the account for the model, retry elsewhere.
    RateLimited {
        /// Which quota was hit.
        scope: QuotaScope,
        /// `RetryInfo.retryDelay`, `retry-after-ms` or `retry-after`, when sent.
        retry_after: Option<Duration>,
        /// The quota's value (`quotaValue`), when the API says it.
        limit: Option<u64>,
    },
    /// The key is unusable (invalid, API disabled, billing): disable it for the run.
    KeyInvalid {
        /// Machine-readable reason, e.g. `API_KEY_INVALID`, `SERVICE_DISABLED`,
        /// `invalid_api_key`, `insufficient_quota`.
        reason: String,
    },
    /// 5xx, timeout, reset, truncated body: retry with backoff, preferably
    /// on another key.
    Transient,
    /// The provider as a whole is overloaded (Anthropic's 529
    /// `overloaded_error`): retried with backoff like `Transient`, but
    /// without counting against the key, which did nothing wrong.
    Overloaded {
        /// `retry-after`, when sent: the first retry waits at least this.
        retry_after: Option<Duration>,
    },
    /// A 200 without usable output that the server did not finish normally
    /// (Gemini's empty candidate with `finishReason: OTHER`, no candidates at
    /// all): retried once or twice, without counting against the key, which
    /// did answer. (An empty answer the server finished normally is a reply.)
    EmptyAnswer,
    /// The request itself is wrong (400 about the request, 404 model,
    /// MAX_TOKENS with empty output): fail the item now, no retry.
    ItemInvalid,
    /// The API refused the prompt or the output on safety grounds: the item
    /// is `blocked`, not retried.
    Blocked {
        /// `promptFeedback.blockReason` or the candidate's `finishReason`.
        reason: String,
    },
}

/// A failed call: its class, the HTTP status when there was one, the
/// API's own message (never containing the key), and, for a 200 that is not
/// an answer, what the API billed for it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// What to do about it.
    pub class: ErrorClass,
    /// HTTP status, `None` for transport failures.
    pub status: Option<u16>,
    /// The API's message, or a description of the transport failure.
    pub message: String,
    /// What the API billed for a 200 that holds no answer (a blocked
    /// output, a cap spent on thinking, an empty candidate): the APIs bill
    /// it like any answer. `None` for every other failure, which is not
    /// billed. Boxed: most errors have none.
    pub billed: Option<Box<Billed>>,
    /// The per-minute limits the answer's headers stated (Anthropic's
    /// `anthropic-ratelimit-*`), for the pool to learn from. Boxed: most
    /// errors have none.
    pub stated: Option<Box<Limits>>,
}

/// What a 200 without an answer reported, and is billed for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Billed {
    /// Its usage.
    pub usage: Usage,
    /// Its finish reason as the API spells it (`SAFETY`, `MAX_TOKENS`,
    /// `length`), when it gave one.
    pub finish_reason: Option<String>,
}

impl ApiError {
    /// The same error, carrying the `usage` and `finish_reason` of the 200
    /// it was made of.
    pub(super) fn billed(self, usage: Usage, finish_reason: Option<&str>) -> Self {
        ApiError {
            billed: Some(Box::new(Billed {
                usage,
                finish_reason: finish_reason.map(str::to_owned),
            })),
            ..self
        }
    }

    /// The usage billed for it, if any.
    pub fn usage(&self) -> Option<Usage> {
        self.billed.as_ref().map(|b| b.usage)
    }

    /// Takes every fragment of the scrubber's keys out of the message and
    /// the reasons (all come from the server): APIs and proxies may echo the
    /// key back, and these go to the store, the report and the terminal.
    pub(super) fn scrub(mut self, scrubber: &Scrubber) -> Self {
        scrubber.clean(&mut self.message);
        if let ErrorClass::KeyInvalid { reason } | ErrorClass::Blocked { reason } = &mut self.class
        {
            scrubber.clean(reason);
        }
        self
    }
}
