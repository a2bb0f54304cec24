//! keyfan: a batch processor for LLM APIs that fans a job of prompts across
//! many API keys in many accounts, inside every account's quotas.
//!
//! Data flows one way: [`job`] → [`run`](mod@run) (scheduler) → [`pool`] (lease) →
//! [`provider`] → [`store`] → [`report`]. The [`sim`] module is a local
//! simulator of the real APIs for rehearsals and tests; [`types`] holds the
//! vocabulary they share and imports none of them.
//!
//! A program that wants only the attempt loop (lease, the day's quota,
//! retry, failover) for its own requests uses [`run::Caller`].
//!
//! A program (or a test) runs a job as the CLI does with [`run()`]: its
//! [`run::Settings`] in, events to its [`run::Observer`] along the way, and
//! a [`run::RunOutcome`] (with its exit code) out.
#![warn(missing_docs)]

pub mod batch;
pub mod cli;
pub mod config;
pub mod estimate;
pub mod job;
pub mod paths;
pub mod pool;
pub mod price;
pub mod provider;
pub mod report;
pub mod run;
pub mod schema;
pub mod sim;
pub mod sink;
pub mod store;
pub mod types;

pub use run::run;
