//! The key pool: accounts, keys, quotas, health and leases (DESIGN §2).

mod call;
mod day;
mod key;
mod keypool;
mod retry;
mod strategy;
#[cfg(test)]
mod tests;
mod watch;
mod window;

pub use call::{Attempt, CallError, Metered, RetryPolicy, Slot};
pub use day::{next_reset, pacific_day};
pub use key::ApiKey;
pub use keypool::{
    provider_for, serving_provider, KeyId, Lease, Pool, PoolError, Unavailable, MAX_WAIT,
};
pub use strategy::Strategy;
pub use watch::{WaitFor, Waiting, UNREACHABLE_AFTER};
