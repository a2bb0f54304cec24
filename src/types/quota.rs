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
    /// Anthropic Messages API (`/v1/messages`).
    Anthropic,
}

impl ProviderKind {
    /// The provider a model's name implies: Gemini for `gemini-*` and
    /// `gemma-*`, Anthropic for `claude-*`, OpenAI-compatible for everything
    /// else.
    pub fn implied_by(model: &str) -> ProviderKind {
        if model.starts_with("gemini") || model.starts_with("gemma") {
            ProviderKind::Gemini
        } else if model.starts_with("claude") {
            ProviderKind::Anthropic
        } else {
            ProviderKind::Openai
        }
    }

    /// The provider whose accounts serve `model`, given which providers have
    /// accounts (`configured`): the one its name implies, or, for a
    /// `gemini*`/`gemma*` or `claude*` model where no account of that
    /// provider exists, the OpenAI-compatible accounts (the provider's own
    /// OpenAI-compatible endpoint or a gateway serves it). Any other model
    /// goes to OpenAI-compatible accounts only: the Gemini and Anthropic APIs
    /// serve no other model. `None`: no account can.
    pub fn serving(model: &str, configured: impl Fn(ProviderKind) -> bool) -> Option<ProviderKind> {
        let implied = ProviderKind::implied_by(model);
        if configured(implied) {
            Some(implied)
        } else if implied != ProviderKind::Openai && configured(ProviderKind::Openai) {
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
    /// Input tokens per minute (Anthropic's ITPM).
    pub tpm: Option<u64>,
    /// Output tokens per minute (Anthropic's OTPM), admitted with each
    /// request's output cap and settled with its real output.
    pub otpm: Option<u64>,
    /// Requests per day (reset at midnight US/Pacific).
    pub rpd: Option<u32>,
}

impl Limits {
    /// These limits, each one not set here taken from `fallback`.
    pub fn or(self, fallback: Limits) -> Limits {
        Limits {
            rpm: self.rpm.or(fallback.rpm),
            tpm: self.tpm.or(fallback.tpm),
            otpm: self.otpm.or(fallback.otpm),
            rpd: self.rpd.or(fallback.rpd),
        }
    }
}

/// What one answered request used of its account's per-minute quota, as
/// the provider counts it, and the limits the answer's headers stated
/// (Anthropic's `anthropic-ratelimit-*`; nothing for other providers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaUse {
    /// Input tokens counted against the input-tokens-per-minute limit.
    pub input_tokens: u64,
    /// Output tokens counted against the output-tokens-per-minute limit.
    pub output_tokens: u64,
    /// The per-minute limits the answer stated (`rpd` is never stated).
    pub stated: Limits,
}

/// A model name of the config's `models` map: the provider that serves it
/// and the name that provider knows it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRoute {
    /// The provider whose accounts serve it.
    pub provider: ProviderKind,
    /// The model's name on the wire.
    pub name: String,
}

/// Which quota a 429 says was hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaScope {
    /// Requests per minute (Gemini `...RequestsPerMinute...`, OpenAI `requests`).
    MinuteRequests,
    /// Input tokens per minute (Gemini `...InputTokens...PerMinute...`, OpenAI
    /// `tokens`, Anthropic's input tokens per minute).
    MinuteTokens,
    /// Output tokens per minute (Anthropic's output tokens per minute).
    MinuteOutputTokens,
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
        use ProviderKind::{Anthropic, Gemini, Openai};
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
        assert_eq!(
            route("claude-sonnet-4-5", &[Anthropic, Openai]),
            Some(Anthropic)
        );
        assert_eq!(route("claude-sonnet-4-5", &[Gemini, Openai]), Some(Openai));
        assert_eq!(route("claude-sonnet-4-5", &[Gemini]), None);
        assert_eq!(route("gpt-4o-mini", &[Anthropic]), None);
    }
}
