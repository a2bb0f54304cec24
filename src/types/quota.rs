//! Accounts, keys, providers and their quotas.

use serde::{Deserialize, Serialize};

/// An account of the pool (a Google Cloud project, an OpenAI organisation):
/// its index in the config's `accounts`, in file order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AccountId(pub usize);

/// A key of the pool: its index over all accounts' keys, in file order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub usize);

/// Which wire protocol an endpoint speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Google Gemini Developer API (`/v1beta/models/{model}:generateContent`).
    Gemini,
    /// OpenAI chat completions (`/v1/chat/completions`) and compatible servers.
    Openai,
}

/// Per-model quota of one account. `None` means not configured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Requests per minute.
    pub rpm: Option<u32>,
    /// Input tokens per minute.
    pub tpm: Option<u64>,
    /// Requests per day (reset at midnight US/Pacific).
    pub rpd: Option<u32>,
}

/// Which quota a 429 says was hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaScope {
    /// Requests per minute (Gemini `...RequestsPerMinute...`, OpenAI `requests`).
    MinuteRequests,
    /// Input tokens per minute (Gemini `...InputTokens...PerMinute...`, OpenAI `tokens`).
    MinuteTokens,
    /// Requests per day: exhausted until the next midnight US/Pacific,
    /// whatever the body's retry delay says.
    Day,
    /// A 429 that names no quota (a bare `RESOURCE_EXHAUSTED`): treated as
    /// per-minute with a default cool-down.
    Unknown,
}
