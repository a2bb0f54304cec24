//! The key pool: accounts, keys, quotas, health and leases (DESIGN §2).

mod call;
mod keypool;
mod retry;
mod strategy;
#[cfg(test)]
mod tests;
mod window;

pub use call::{Attempt, CallError, Metered, RetryPolicy, Slot};
pub use keypool::{provider_for, KeyId, Lease, Pool, PoolError, Unavailable};
pub use strategy::Strategy;
