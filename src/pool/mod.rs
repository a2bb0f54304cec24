//! The key pool: accounts, keys, quotas, health and leases (DESIGN §2).

mod call;
mod keypool;
mod retry;
mod strategy;
#[cfg(test)]
mod tests;
mod watch;
mod window;

pub use call::{Attempt, CallError, Metered, RetryPolicy, Slot};
pub use keypool::{
    provider_for, serving_provider, KeyId, Lease, Pool, PoolError, Unavailable, MAX_WAIT,
};
pub use strategy::Strategy;
pub use watch::{WaitFor, Waiting, UNREACHABLE_AFTER};
