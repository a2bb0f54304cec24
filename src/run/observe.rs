//! What a run tells its [`Observer`] besides attempts, items and progress:
//! plain [`Notice`]s, and the pool's [`Load`] with each tick. The run and
//! its signal watcher share one observer ([`Shared`]), so one display owns
//! every line a person sees.

use super::models::ModelError;
use super::Clients;
use super::{Observer, Progress, RunOutcome};
use crate::pool::{Pool, Waiting};
use crate::store::{AttemptRow, ItemRow, RunId};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Something the run says once, as it happens.
#[derive(Debug, Clone)]
pub enum Notice {
    /// The job's invalid lines: the first few, and how many more there are.
    /// With `--skip-invalid` the run goes on; without, it is refused.
    InvalidLines {
        /// The first errors, in file order.
        shown: Vec<String>,
        /// The errors not shown.
        hidden: u64,
    },
    /// A model the run cannot use: the run is refused.
    ModelRefused {
        /// The job's label.
        job: String,
        /// What is wrong with the model.
        error: ModelError,
    },
    /// A warning about the job's models: a model list that could not be
    /// had (its models go unchecked), or a model with no known price (its
    /// cost is not counted).
    ModelWarning(String),
    /// The run is a rehearsal against the built-in simulator.
    Simulated {
        /// The simulator's address.
        base_url: String,
    },
    /// An earlier run of the job is taken up.
    Resuming {
        /// The run.
        run: RunId,
        /// The job's label.
        job: String,
        /// Items it already finished.
        done: u64,
        /// Items still to do.
        to_do: u64,
    },
    /// Ctrl-C or SIGTERM: no new requests; those in flight get `grace`.
    Stopping {
        /// How long the requests in flight may take.
        grace: Duration,
    },
    /// The requests in flight are abandoned (their items stay pending).
    Abandoning {
        /// Why: the grace period is over (else a second signal came).
        grace_over: bool,
    },
    /// The API refused a key: it is not used again in this run.
    KeyDisabled {
        /// The key's fingerprint.
        key: String,
        /// Its account.
        account: String,
        /// The API's message.
        reason: String,
    },
    /// What `--batch` did: a batch submitted, adopted, collected or
    /// refused (keys scrubbed).
    Batch(String),
    /// `--max-cost` was reached: nothing more is sent, and the requests in
    /// flight finish.
    BudgetReached {
        /// The cap, in USD.
        cap: f64,
    },
    /// An account holding uploaded files cannot serve the items that need
    /// them; `media.on_unavailable` says what they do.
    MediaUnavailable {
        /// The account.
        account: String,
        /// What its items do.
        policy: crate::config::OnUnavailable,
        /// Why it cannot serve.
        why: String,
    },
}

/// What the pool is doing, as of the last tick.
#[derive(Debug, Clone, Default)]
pub struct Load {
    /// Requests in flight.
    pub in_flight: u32,
    /// What the run waits for while the quotas hold it back.
    pub waiting: Option<Waiting>,
    /// While it waits: the requests per minute the accounts serving the
    /// model allow together, when all are known (the quota's pace).
    pub quota_rpm: Option<u64>,
    /// Endpoints that keep refusing connections: (base URL, OS error).
    pub unreachable: Vec<(String, String)>,
}

impl Load {
    /// The load of `pool` and `clients` now.
    pub(super) fn of(pool: &Pool, clients: &Clients) -> Load {
        let waiting = pool.waiting();
        Load {
            in_flight: pool.in_flight(),
            quota_rpm: waiting
                .as_ref()
                .and_then(|w| pool.requests_per_minute(&w.model)),
            waiting,
            unreachable: clients.unreachable(),
        }
    }
}

/// One observer shared by the recorder, the signal watcher and the run's
/// own notices; calls never interleave.
#[derive(Clone)]
pub(super) struct Shared(Arc<Mutex<Box<dyn Observer>>>);

impl Shared {
    pub(super) fn new(observer: impl Observer + 'static) -> Shared {
        Shared(Arc::new(Mutex::new(Box::new(observer))))
    }

    fn with(&self, tell: impl FnOnce(&mut dyn Observer)) {
        tell(&mut **self.0.lock().unwrap_or_else(|e| e.into_inner()));
    }

    pub(super) fn notice(&self, notice: &Notice) {
        self.with(|o| o.notice(notice));
    }

    pub(super) fn done(&self, outcome: &RunOutcome) {
        self.with(|o| o.done(outcome));
    }
}

impl Observer for Shared {
    fn attempt(&mut self, attempt: &AttemptRow) {
        self.with(|o| o.attempt(attempt));
    }

    fn finished(&mut self, item: &ItemRow) {
        self.with(|o| o.finished(item));
    }

    fn progress(&mut self, progress: &Progress) {
        self.with(|o| o.progress(progress));
    }

    fn notice(&mut self, notice: &Notice) {
        Shared::notice(self, notice);
    }

    fn done(&mut self, outcome: &RunOutcome) {
        Shared::done(self, outcome);
    }
}
