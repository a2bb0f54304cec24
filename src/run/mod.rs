//! The run: a bounded pool of workers that take items from the job and take
//! each through the attempt loop ([`Caller`]: lease, the day's ledger, the
//! provider, settle, retry), and one recorder thread that commits every
//! outcome to the store, appends it to the results file and tells the
//! observer.
//!
//! The run owns the HTTP clients (one per account), retries and backoff,
//! the budget guard and cancellation. Workers never print or write files:
//! they emit [`Event`]s. The run parses no format and prints nothing.

mod allowance;
mod budget;
mod call;
mod clients;
mod deps;
mod entry;
pub mod exit;
mod media;
pub mod models;
mod observe;
mod recorder;
mod resume;
mod retry;
mod sample;
mod settings;
mod shared;
mod signals;
#[cfg(test)]
mod tests;
mod worker;

pub use budget::Budget;
pub use call::{Attempt, CallError, Caller, CallerError, Metered};
pub use clients::{ClientError, Clients, UNREACHABLE_AFTER};
pub use deps::Dependencies;
pub use entry::{run, scrubber, RunOutcome, StartError};
pub use media::UploadTally;
pub(crate) use media::{Detached, Slot, Uploads};
pub use observe::{Load, Notice};
pub use recorder::{Observer, Progress};
pub use resume::{earlier, start, Done, Earlier, Resume, Start};
pub use retry::{Decision, Retries, RetryPolicy};
pub use sample::{Sample, SampleSummary};
pub use settings::{default_state, Job, Outputs, Settings, SharedState, DEFAULT_LEASE};

use observe::Shared;

use crate::job::{id_hash, Item, ItemError, JobReader};
use crate::pool::Pool;
use crate::provider::Scrubber;
use crate::sink::Sink;
use crate::store::{AttemptRow, ItemRow, ItemStatus, Reservation, RunId, RunStatus, Store};
use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio_util::sync::CancellationToken;

/// What one run does.
#[derive(Debug, Clone)]
pub struct Options {
    /// The job file.
    pub job: PathBuf,
    /// The sha256 of the job file as validated: the run says so if the
    /// file it reads differs.
    pub job_hash: String,
    /// Number of items in the job (from validation), for progress.
    pub total: u64,
    /// Workers, hence requests in flight at most.
    pub concurrency: usize,
    /// How hard to retry each item.
    pub policy: RetryPolicy,
    /// Model for items that name none.
    pub default_model: String,
    /// The items a resumed run already finished.
    pub done: Arc<Done>,
    /// Where each id of the job was first used, as validation found it:
    /// the feeder then checks ids for duplicates on the lines it parses
    /// only (see [`JobReader::validated`]).
    pub first_lines: Arc<crate::job::FirstLines>,
    /// Under `--sample`, the ids (as [`crate::job::id_hash`]es) of the only
    /// items to send; invalid lines are then left for the next run.
    pub only: Option<Arc<HashSet<u64>>>,
    /// Requests earlier invocations sent for items still to do, by
    /// [`crate::job::id_hash`]: their attempt numbers go on from there.
    pub prior_attempts: Arc<HashMap<u64, u32>>,
    /// The spending cap, if any (`--max-cost`).
    pub budget: Option<Arc<Budget>>,
    /// Output cap sent with items that set none, if any: set while a cost
    /// cap is in force, so every request's worst case is known.
    pub default_output_cap: Option<u32>,
    /// The prices of the models (the config's).
    pub prices: Arc<crate::price::PriceTable>,
    /// How media items are sent (the config's `media:`).
    pub media: crate::config::MediaConfig,
    /// The items' dependencies, and the answers of the parents finished
    /// earlier: items with parents are held back until those end.
    pub deps: Arc<Dependencies>,
}

/// Something a worker reports.
#[derive(Debug)]
pub enum Event {
    /// Requests are about to be sent: a command, answered once the day's
    /// ledger has counted them (durably), as many as the day's limit
    /// allows. Only a counted request goes out.
    Reserve {
        /// The requests' account, model and day.
        reservation: Reservation,
        /// How many requests (at least one).
        count: u64,
        /// How many the ledger counted: 0 when the day is spent.
        reply: oneshot::Sender<u64>,
    },
    /// A reserved request the server did not count (a 429, a refused key):
    /// given back to the day's ledger.
    Release(Reservation),
    /// A request was answered (or failed). Sent before its item's
    /// `Finished`, so it is committed no later than the outcome.
    Attempt(AttemptRow),
    /// An item is finished.
    Finished(ItemRow),
    /// A second passed: the pool's load, so the display can refresh.
    Tick(Load),
    /// Something the person running the job should hear of at once.
    Notice(Notice),
    /// Uploads became usable or are gone, or were used: `committed` hears
    /// once it is in the state file.
    Uploads {
        /// Uploads to remember or forget.
        changes: Vec<crate::store::UploadChange>,
        /// What the run did, for the report.
        events: Vec<crate::store::UploadEvent>,
        /// Told after the commit.
        committed: oneshot::Sender<()>,
    },
}

/// How often the observer hears from a run even when nothing happens.
const TICK: Duration = Duration::from_secs(1);

/// How a run ended.
#[derive(Debug, Clone)]
pub struct Summary {
    /// How it stopped: keyfan's own failure first, then keys refused, then
    /// an interrupt or a closed results output, then the budget; else done.
    pub status: RunStatus,
    /// keyfan's own failures that stopped items or the run (a worker's
    /// panic, no endpoint reachable): the items involved stay pending.
    pub errors: Vec<String>,
    /// Models for which every key was refused (invalid, disabled): the run
    /// stopped dispatching, and the remaining items stay pending.
    pub keys_refused: Vec<String>,
    /// Wall time of this invocation.
    pub elapsed: Duration,
}

/// Failures that stop a run, as workers meet them: keyfan's own (each makes
/// the run end as failed), and models no key can serve any more. The items
/// involved are left pending.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    errors: std::sync::Mutex<Vec<String>>,
    keys_refused: std::sync::Mutex<Vec<String>>,
}

/// Adds `value` to `list`, once: every worker may meet the same failure.
fn add_once(list: &std::sync::Mutex<Vec<String>>, value: String) {
    let mut all = list.lock().unwrap_or_else(|e| e.into_inner());
    if !all.contains(&value) {
        all.push(value);
    }
}

fn take_all(list: &std::sync::Mutex<Vec<String>>) -> Vec<String> {
    std::mem::take(&mut *list.lock().unwrap_or_else(|e| e.into_inner()))
}

impl Faults {
    /// Adds a failure of keyfan itself.
    fn push(&self, message: String) {
        add_once(&self.errors, message);
    }

    /// Adds a model for which every key was refused.
    fn refuse_keys(&self, model: String) {
        add_once(&self.keys_refused, model);
    }
}

/// A future whose panic is caught and returned instead of unwinding
/// through the task that awaits it.
struct CatchUnwind<'a>(Pin<Box<dyn Future<Output = ()> + Send + 'a>>);

impl Future for CatchUnwind<'_> {
    type Output = Result<(), Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(())) => Poll::Ready(Ok(())),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

/// The text of a panic's payload.
fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// A failure that stops a run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The job file could not be read.
    #[error(transparent)]
    Job(#[from] crate::job::JobError),
    /// The state file failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The results file failed.
    #[error("failed to write results")]
    Sink(#[source] std::io::Error),
    /// The run could not start: nothing was sent.
    #[error(transparent)]
    Start(#[from] StartError),
}

/// Where a run's outcomes go: all owned by the recorder thread.
pub struct Recording {
    /// The state file, where every outcome is committed first.
    pub store: Store,
    /// The run the outcomes belong to.
    pub run: RunId,
    /// The results file, appended after each commit.
    pub sink: Sink,
    /// The display.
    pub observer: Box<dyn Observer>,
    /// Takes every fragment of a configured key out of each outcome and
    /// error before it is committed, written or shown.
    pub scrubber: Scrubber,
}

/// How a run is stopped early.
#[derive(Debug, Clone, Default)]
pub struct Stop {
    /// Stop dispatching; let requests in flight finish.
    pub graceful: CancellationToken,
    /// Abandon the requests in flight too (their items stay pending).
    pub abort: CancellationToken,
}

/// Runs the job with the keys of `pool` and the HTTP clients of its
/// accounts: returns when every item is finished, or when `stop` is
/// triggered (gracefully: once the requests in flight have finished).
pub async fn execute(
    options: &Options,
    pool: Arc<Pool>,
    clients: Arc<Clients>,
    recording: Recording,
    stop: &Stop,
) -> Result<(Summary, Store), RunError> {
    execute_with(options, pool, clients, recording, stop, None).await
}

/// [`execute`], with the quotas reserved in the state several hosts share
/// when `shared` is given, and the items those of the job's queue that this
/// host claims: losing it stops dispatch, fails the run, and leaves the
/// unsent items pending.
pub(crate) async fn execute_with(
    options: &Options,
    pool: Arc<Pool>,
    clients: Arc<Clients>,
    recording: Recording,
    stop: &Stop,
    shared: Option<shared::Link>,
) -> Result<(Summary, Store), RunError> {
    let started = std::time::Instant::now();
    // Dispatch stops on Ctrl-C (the parent token) and also, on its own, when
    // the budget is reached or the recorder fails: neither is an interrupt.
    let cancel = &stop.graceful.child_token();
    // Unbounded: workers must never block on recording, and at most a few
    // events per request in flight can be waiting.
    let (event_tx, event_rx) = mpsc::unbounded_channel();
    // Uploads of earlier runs that have not expired are reused.
    let remembered = recording.store.live_uploads(&crate::store::now())?;
    let run = recording.run;
    let (media_pool, media_clients) = (Arc::clone(&pool), Arc::clone(&clients));
    let tracker = options.deps.tracker(
        &options.done.ids,
        &options.default_model,
        recording.scrubber.clone(),
        event_tx.clone(),
    );
    let faults = Arc::new(Faults::default());
    let (shared, shared_thread) =
        match shared {
            None => (None, None),
            Some(link) => {
                let (faults, cancel) = (Arc::clone(&faults), cancel.clone());
                let lost = move |error: String| {
                    faults.push(format!(
                        "the shared state was lost ({error}): dispatch stopped; unsent items stay \
                     pending"
                    ));
                    cancel.cancel();
                };
                let (gate, thread) = shared::SharedGate::spawn(link, Arc::clone(&pool), lost)
                    .map_err(|source| StartError::Io {
                        what: "start the shared-state thread".to_owned(),
                        source,
                    })?;
                (Some(gate), Some(thread))
            }
        };
    let mut recording = recording;
    if let Some(gate) = &shared {
        recording.observer = Box::new(shared::Finisher::new(recording.observer, gate));
    }
    let recorder = recorder::spawn(recording, options.total, event_rx, cancel.clone());
    let ticker = {
        let events = event_tx.clone();
        let (pool, clients) = (Arc::clone(&pool), Arc::clone(&clients));
        tokio::spawn(async move {
            let mut every = tokio::time::interval(TICK);
            every.tick().await;
            loop {
                every.tick().await;
                if events.send(Event::Tick(Load::of(&pool, &clients))).is_err() {
                    break;
                }
            }
        })
    };
    // The day's ledger is reached through the recorder, which owns the
    // state file, or through the thread that owns the shared state.
    let gate = match &shared {
        None => call::Gate::Recorder(allowance::Allowance::new(
            event_tx.clone(),
            options.concurrency,
        )),
        Some(shared) => call::Gate::Shared(shared.clone()),
    };
    let caller = Arc::new(Caller::with(pool, clients, gate, options.policy.clone()));

    // The job is streamed: a bounded channel between the reader thread and
    // the workers keeps memory flat whatever the job's size.
    let (item_tx, item_rx) = mpsc::channel::<Item>(options.concurrency * 2);
    let reader = JobReader::open(&options.job)?;
    let (tracker, released) = tracker.unzip();
    let feeder = {
        let held = tracker
            .clone()
            .zip(released)
            .map(|(tracker, released)| deps::Feed { tracker, released });
        let cancel = cancel.clone();
        let events = event_tx.clone();
        let done = Arc::clone(&options.done);
        let first_lines = Arc::clone(&options.first_lines);
        let only = options.only.clone();
        let validated = options.job_hash.clone();
        let faults = Arc::clone(&faults);
        let (queue, job) = (shared.clone(), options.job.clone());
        let chunk = options.concurrency as u64;
        tokio::task::spawn_blocking(move || {
            if let Some(queue) = queue {
                // The job's hash was checked against its run's when joining.
                if let Err(error) = feed_claims(reader, &job, &queue, chunk, &item_tx, &cancel) {
                    faults.push(error.to_string());
                }
                return;
            }
            // The job has the run's hash: its kept items are on the lines
            // they were read from.
            let reader = reader.validated(first_lines, Arc::clone(&done.lines));
            let reader = feed(
                reader,
                &done.ids,
                only.as_deref(),
                item_tx,
                events,
                cancel,
                held,
            );
            // The items sent were read from the file: if it is not the file
            // that was validated (and resumed by), the run must say so.
            if let Err(changed) = reader.verify(&validated) {
                faults.push(changed.to_string());
            }
        })
    };

    let item_rx = Arc::new(Mutex::new(item_rx));
    let media = Arc::new(media::Uploads::new(
        options.media,
        Arc::clone(caller.pool()),
        event_tx.clone(),
        remembered,
    ));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..options.concurrency {
        let worker = worker::Worker {
            caller: Arc::clone(&caller),
            events: event_tx.clone(),
            default_model: options.default_model.clone(),
            budget: options.budget.clone(),
            default_output_cap: options.default_output_cap,
            prices: Arc::clone(&options.prices),
            stop: cancel.clone(),
            prior_attempts: Arc::clone(&options.prior_attempts),
            faults: Arc::clone(&faults),
            media: Arc::clone(&media),
            deps: tracker.clone(),
        };
        let item_rx = Arc::clone(&item_rx);
        let cancel = cancel.clone();
        workers.spawn(async move {
            loop {
                let item = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => break,
                    item = async { item_rx.lock().await.recv().await } => item,
                };
                let Some(item) = item else { break };
                let id = item.id.clone();
                // The item of a panicking worker stays pending (no outcome
                // is recorded) and the run is told; the worker goes on.
                if let Err(panic) = CatchUnwind(Box::pin(worker.process(item))).await {
                    worker.faults.push(format!(
                        "internal error: worker panicked on item {id}: {}",
                        panic_message(&*panic)
                    ));
                }
                // A parent that did not end leaves its children pending.
                if let Some(deps) = &worker.deps {
                    deps.settled(&id);
                }
            }
        });
    }
    drop(event_tx);
    drop(caller);
    drop(tracker);

    tokio::select! {
        _ = async { while workers.join_next().await.is_some() {} } => {}
        _ = stop.abort.cancelled() => workers.abort_all(),
    }
    // Dropping the workers and the ticker drops their event senders; the
    // recorder then drains what was sent and returns the store.
    drop(workers);
    // The workers are gone, and with them every other holder of the
    // uploads (and of their channel to the recorder).
    let leftovers = Arc::into_inner(media).map(media::Uploads::leftovers);
    ticker.abort();
    let _ = ticker.await;
    // The feeder ends once the workers' receiver is gone or it is cancelled.
    drop(item_rx);
    // A panicked feeder has already stopped feeding; the recorder's counts
    // show the items it never sent as missing.
    let _ = feeder.await;
    let (mut store, output_closed) = recorder.join().await?;
    // The recorder's observer held the last other handle on the shared
    // state: its thread ends the items it was sent, and the report that
    // follows sees them ended.
    drop(shared);
    if let Some(thread) = shared_thread {
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
    let errors = take_all(&faults.errors);
    let keys_refused = take_all(&faults.keys_refused);
    let status = if !errors.is_empty() {
        RunStatus::Failed
    } else if !keys_refused.is_empty() {
        RunStatus::KeysRefused
    } else if stop.graceful.is_cancelled() {
        RunStatus::Interrupted
    } else if output_closed {
        RunStatus::OutputClosed
    } else if options.budget.as_ref().is_some_and(|b| b.reached()) {
        RunStatus::BudgetReached
    } else {
        RunStatus::Done
    };
    if let Some(leftovers) = leftovers {
        // Deleted only when nothing is left for a later run to send.
        let deferred = store
            .status_counts(run)?
            .iter()
            .any(|&(status, n)| status == ItemStatus::Deferred && n > 0);
        let finished = status == RunStatus::Done && !deferred;
        leftovers
            .delete(
                finished,
                (&media_pool, &media_clients),
                &options.default_model,
                (&mut store, run),
            )
            .await?;
    }
    Ok((
        Summary {
            status,
            errors,
            keys_refused,
            elapsed: started.elapsed(),
        },
        store,
    ))
}

/// Reads the job into the workers' channel, all but the `done` items (or
/// only those in `only`); invalid lines (only present when the user chose
/// `--skip-invalid`) become `skipped` outcomes, except in a sample. Items
/// with parents go through `deps` (held back until their parents end).
/// Returns the reader, which knows the hash of what it read.
fn feed(
    mut reader: JobReader,
    done: &HashSet<u64>,
    only: Option<&HashSet<u64>>,
    items: mpsc::Sender<Item>,
    events: mpsc::UnboundedSender<Event>,
    cancel: CancellationToken,
    mut deps: Option<deps::Feed>,
) -> JobReader {
    let left_out = |id: &str| {
        let id = id_hash(id);
        done.contains(&id) || only.is_some_and(|only| !only.contains(&id))
    };
    for entry in &mut reader {
        if cancel.is_cancelled() || deps.as_mut().is_some_and(|d| !d.forward(&items, &cancel)) {
            break;
        }
        let entry = match &deps {
            Some(deps) => deps.tracker.check(entry),
            None => entry,
        };
        let sent = match entry {
            Ok(item) if left_out(&item.id) => {
                if let Some(deps) = deps.as_ref().filter(|_| !done.contains(&id_hash(&item.id))) {
                    deps.tracker.passed(&item);
                }
                true
            }
            Ok(item) => match &deps {
                Some(deps) => deps
                    .tracker
                    .admit(item)
                    .is_none_or(|item| send_unless_cancelled(&items, item, &cancel)),
                None => send_unless_cancelled(&items, item, &cancel),
            },
            Err(_) if only.is_some() => true,
            Err(error) if done.contains(&id_hash(&error.skipped_id())) => true,
            Err(error) => events.send(Event::Finished(skipped(&error))).is_ok(),
        };
        if !sent {
            break;
        }
    }
    if let Some(deps) = deps {
        deps.finish(&items, &cancel);
    }
    reader
}

/// Feeds the workers the items this host claims from the job's queue in
/// the shared state, `chunk` at a time, until no item is open (or the run
/// stops, or the shared state is gone). Claims come in job order; a claim
/// of an earlier line (another host's lapsed claim) reads the job again
/// from its start.
fn feed_claims(
    mut reader: JobReader,
    job: &std::path::Path,
    queue: &shared::SharedGate,
    chunk: u64,
    items: &mpsc::Sender<Item>,
    cancel: &CancellationToken,
) -> Result<(), crate::job::JobError> {
    let mut last = 0;
    while !cancel.is_cancelled() {
        let Some(claimed) = queue.claim(chunk) else {
            return Ok(());
        };
        if claimed.items.is_empty() {
            if claimed.open == 0 {
                return Ok(());
            }
            // Other hosts hold the rest: their claims may yet lapse.
            std::thread::sleep(CLAIM_POLL);
            continue;
        }
        for wanted in claimed.items {
            if wanted.line <= last {
                reader = JobReader::open(job)?;
            }
            last = wanted.line;
            let found = reader
                .by_ref()
                .filter_map(Result::ok)
                .find(|item| item.line == wanted.line);
            let Some(item) = found else { continue };
            if !send_unless_cancelled(items, item, cancel) {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// How often a host with nothing to claim asks again while other hosts
/// hold the last items.
const CLAIM_POLL: Duration = Duration::from_millis(250);

/// Sends `item` to the workers, waiting for room unless the run stops
/// meanwhile (workers that stopped read no more, so a plain blocking send
/// could wait forever). Whether it was sent.
///
/// When the channel is full, the reader waits for room for half of it at
/// once: it is woken once per that many items, not once per item.
fn send_unless_cancelled(
    items: &mpsc::Sender<Item>,
    item: Item,
    cancel: &CancellationToken,
) -> bool {
    let item = match items.try_send(item) {
        Ok(()) => return true,
        Err(mpsc::error::TrySendError::Closed(_)) => return false,
        Err(mpsc::error::TrySendError::Full(item)) => item,
    };
    let room = (items.max_capacity() / 2).max(1);
    tokio::runtime::Handle::current().block_on(async {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => false,
            permits = items.reserve_many(room) => match permits.ok().and_then(|mut p| p.next()) {
                Some(permit) => {
                    permit.send(item);
                    true
                }
                None => false,
            },
        }
    })
}

/// The outcome of a job line that failed validation (a duplicate id
/// included): its id is not trustworthy, so the row is named after its line.
fn skipped(error: &ItemError) -> ItemRow {
    ItemRow {
        error: Some(error.to_string()),
        ..ItemRow::unsent(error.skipped_id(), error.line, ItemStatus::Skipped, None)
    }
}
