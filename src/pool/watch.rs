//! What the pool tells whoever watches a run: what it is waiting for and
//! until when.

use chrono::{DateTime, Utc};
use std::fmt;
use tokio::time::Instant;

/// Which limit holds the next request back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitFor {
    /// The account's requests per minute are used up.
    Rpm,
    /// The account's input tokens per minute are used up.
    Tpm,
    /// The account's output tokens per minute are used up.
    Otpm,
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
            WaitFor::Otpm => write!(
                f,
                "waiting for quota: {account} {model} OTPM, next room at {at}"
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
