//! The key pool: accounts, keys, quotas, health and leases.

mod key;

pub use key::ApiKey;
