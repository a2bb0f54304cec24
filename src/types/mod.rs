//! The shared vocabulary of keyfan: the words every other module uses to talk
//! about keys, accounts, providers, quotas and days. This module imports no
//! other keyfan module, so anything may depend on it and it on nothing.

mod day;
mod key;
mod quota;

pub use day::QuotaDay;
pub use key::ApiKey;
pub use quota::{AccountId, KeyId, Limits, ProviderKind, QuotaScope};
