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

impl ProviderKind {
    /// The provider a model's name implies: Gemini for `gemini-*` and
    /// `gemma-*`, OpenAI-compatible for everything else.
    pub fn implied_by(model: &str) -> ProviderKind {
        if model.starts_with("gemini") || model.starts_with("gemma") {
            ProviderKind::Gemini
        } else {
            ProviderKind::Openai
        }
    }

    /// The provider whose accounts serve `model`, given which providers have
    /// accounts (`configured`): the one its name implies, or, for a
    /// `gemini*`/`gemma*` model where no Gemini account exists, the
    /// OpenAI-compatible accounts (Gemini's own OpenAI-compatible endpoint or
    /// a gateway serves it). Any other model goes to OpenAI-compatible
    /// accounts only: the Gemini API serves no other model. `None`: no
    /// account can.
    pub fn serving(model: &str, configured: impl Fn(ProviderKind) -> bool) -> Option<ProviderKind> {
        let implied = ProviderKind::implied_by(model);
        if configured(implied) {
            Some(implied)
        } else if implied == ProviderKind::Gemini && configured(ProviderKind::Openai) {
            Some(ProviderKind::Openai)
        } else {
            None
        }
    }
}

/// Per-model quota of one account. `None` means not configured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_are_routed_as_the_readme_documents() {
        use ProviderKind::{Gemini, Openai};
        let route = |model, configured: &[ProviderKind]| {
            ProviderKind::serving(model, |p| configured.contains(&p))
        };
        assert_eq!(route("gemini-2.5-flash", &[Gemini, Openai]), Some(Gemini));
        assert_eq!(route("gemma-3-27b-it", &[Gemini]), Some(Gemini));
        assert_eq!(route("gpt-4o-mini", &[Gemini, Openai]), Some(Openai));
        // Gemini's OpenAI-compatible endpoint (or a gateway) serves Gemini models.
        assert_eq!(route("gemini-2.5-flash", &[Openai]), Some(Openai));
        // The Gemini API serves no other model.
        assert_eq!(route("gpt-4o-mini", &[Gemini]), None);
    }
}
