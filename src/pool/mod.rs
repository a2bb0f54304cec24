//! The key pool: accounts, keys, per-minute quota windows, strategies,
//! health and leases (optionally pinned to one account).
//!
//! The pool decides which key serves the next request and learns from what
//! came of it. It never sends a request, holds no HTTP client, does not
//! count the day's requests (the store's quota ledger does) and knows
//! nothing of any provider's wire format.

mod keypool;
mod strategy;
#[cfg(test)]
mod tests;
mod watch;
mod window;

pub use keypool::{Lease, Need, Outcome, Pool, PoolError, Unavailable, MAX_WAIT};
pub use strategy::Strategy;
pub use watch::{WaitFor, Waiting};
pub use window::after;
