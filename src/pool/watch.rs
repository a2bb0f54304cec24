//! What the pool tells whoever watches a run: what it is waiting for and
//! until when, and which endpoints cannot be reached at all.

use chrono::{DateTime, Utc};
use std::fmt;
use tokio::time::Instant;

/// Connection failures in a row after which an endpoint is called
/// unreachable (and, when every endpoint is, the run stops).
pub const UNREACHABLE_AFTER: u32 = 5;

/// Which limit holds the next request back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitFor {
    /// The account's requests per minute are used up.
    Rpm,
    /// The account's input tokens per minute are used up.
    Tpm,
    /// A 429 asked to wait (`retryDelay`, `Retry-After`).
    ServerDelay,
    /// Every key is resting after errors in a row.
    KeyResting,
}

/// What the pool waits for when no key has room now.
#[derive(Debug, Clone, PartialEq)]
pub struct Waiting {
    /// The account whose room comes first.
    pub account: String,
    /// The model waited for.
    pub model: String,
    /// What holds it back.
    pub limit: WaitFor,
    /// When the room comes.
    pub until: DateTime<Utc>,
}

impl fmt::Display for Waiting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = self.until.with_timezone(&chrono::Local).format("%H:%M:%S");
        let (account, model) = (&self.account, &self.model);
        match self.limit {
            WaitFor::Rpm => write!(
                f,
                "waiting for quota: {account} {model} RPM, next room at {at}"
            ),
            WaitFor::Tpm => write!(
                f,
                "waiting for quota: {account} {model} TPM, next room at {at}"
            ),
            WaitFor::ServerDelay => write!(
                f,
                "waiting for quota: {account} {model} (the server asked to wait), next room at {at}"
            ),
            WaitFor::KeyResting => write!(
                f,
                "waiting for the keys of {account} to rest after errors ({model}), next try at {at}"
            ),
        }
    }
}

/// The wall-clock time of `at`, an instant of the pool's clock.
pub(super) fn wall(now: Instant, at: Instant) -> DateTime<Utc> {
    let ahead = chrono::TimeDelta::from_std(at.saturating_duration_since(now))
        .unwrap_or(chrono::TimeDelta::MAX);
    Utc::now()
        .checked_add_signed(ahead)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// What the pool knows of one base URL's reachability.
#[derive(Debug, Default)]
pub(super) struct Endpoint {
    /// Connection failures in a row.
    refused: u32,
    /// Whether it was ever sent to.
    tried: bool,
    /// Whether it ever answered (with any HTTP status).
    answered: bool,
    /// The last connection failure, for the user.
    last_error: String,
}

impl Endpoint {
    /// Records one request's fate: `connect_error` when the connection
    /// failed, else whether an HTTP answer came.
    pub(super) fn observe(&mut self, answered: bool, connect_error: Option<&str>) {
        self.tried = true;
        match connect_error {
            Some(error) => {
                self.refused = self.refused.saturating_add(1);
                error.clone_into(&mut self.last_error);
            }
            None => {
                self.refused = 0;
                self.answered |= answered;
            }
        }
    }

    /// The last connection failure, once there were enough in a row.
    pub(super) fn unreachable(&self) -> Option<&str> {
        (self.refused >= UNREACHABLE_AFTER).then_some(self.last_error.as_str())
    }

    /// Whether it was ever sent to.
    pub(super) fn tried(&self) -> bool {
        self.tried
    }

    /// Whether it ever answered.
    pub(super) fn answered(&self) -> bool {
        self.answered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_is_unreachable_after_failures_in_a_row_only() {
        let mut e = Endpoint::default();
        for _ in 0..UNREACHABLE_AFTER - 1 {
            e.observe(false, Some("connection refused"));
        }
        assert_eq!(e.unreachable(), None);
        e.observe(true, None);
        for _ in 0..UNREACHABLE_AFTER {
            e.observe(false, Some("connection refused"));
        }
        assert_eq!(e.unreachable(), Some("connection refused"));
        assert!(e.answered() && e.tried());
    }
}
