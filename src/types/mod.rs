//! The shared vocabulary of keyfan: the words every other module uses to talk
//! about keys, accounts, providers, quotas and days. This module imports no
//! other keyfan module, so anything may depend on it and it on nothing.
//!
//! Owns: the vocabulary's types and their invariants (a key's fingerprint,
//! the Pacific quota day). Never: I/O, or policy about what to do with a key,
//! a quota or a day.

mod day;
mod key;
mod quota;

pub use day::QuotaDay;
pub use key::ApiKey;
pub use quota::{AccountId, KeyId, Limits, ModelRoute, ProviderKind, QuotaScope, QuotaUse};
