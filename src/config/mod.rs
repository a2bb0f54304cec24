//! The config file (`config.yaml`): providers, accounts with their keys and
//! per-model limits, and run defaults. Loading expands `${ENV_VAR}` in keys
//! and validates everything, naming the file and the field path of each
//! mistake (`accounts[1].keys[0]`).
//!
//! serde_yaml is confined to this module and `job`, so a later swap of YAML
//! crate touches only them.

use crate::pool::ApiKey;
use crate::provider::ProviderKind;
use std::collections::BTreeMap;
use std::time::Duration;

/// A validated config.
#[derive(Debug, Clone)]
pub struct Config {
    /// Base URL per provider; every provider has an entry (built-in default
    /// or overridden).
    pub providers: BTreeMap<ProviderKind, ProviderConfig>,
    /// Accounts (Google Cloud projects, OpenAI organisations) in file order.
    pub accounts: Vec<AccountConfig>,
    /// Default model for items that name none.
    pub model: String,
    /// Default number of requests in flight.
    pub concurrency: usize,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Retries per item after its first attempt (transient failures).
    pub max_retries: u32,
}

/// Where a provider is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderConfig {
    /// e.g. `https://generativelanguage.googleapis.com`, or a simulator, proxy or gateway.
    pub base_url: String,
}

/// An account owns quota; all its keys share it.
#[derive(Debug, Clone)]
pub struct AccountConfig {
    /// Unique name, used in reports and the ledger.
    pub name: String,
    /// Which API the account's keys are for.
    pub provider: ProviderKind,
    /// The account's keys, at least one.
    pub keys: Vec<KeyConfig>,
    /// Per-model limits; a model not listed has no configured limit.
    pub limits: BTreeMap<String, Limits>,
    /// Optional egress HTTP(S) proxy for this account's requests.
    pub proxy: Option<String>,
}

/// One key of an account.
#[derive(Debug, Clone)]
pub struct KeyConfig {
    /// The key (expanded from `${ENV}` when written so).
    pub key: ApiKey,
    /// Relative share for the `weighted` strategy (default 1).
    pub weight: u32,
    /// Optional group name (default `default`).
    pub group: String,
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

/// What to do with a `${VAR}` that is not set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingEnv {
    /// An error naming the variable (real runs).
    Error,
    /// Substitute a placeholder key `sim-<account>-<n>` (rehearsals against
    /// the simulator, which need no real key).
    Placeholder,
}
