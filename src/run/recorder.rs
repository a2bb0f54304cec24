//! The recorder: the one owner of the state file, the results file and the
//! observer. It commits each batch of events in one transaction, then
//! appends the committed outcomes to the results file and flushes it, so a
//! crash can lose an outcome's row only together with its commit.
//!
//! When the results go to a pipe whose reader went away (`--out - | head`),
//! the run stops dispatching, and the outcomes still coming in are
//! committed to the store only: a rerun writes them.

use super::{Event, Load, Notice, Recording, RunError, RunOutcome};
use crate::provider::Scrubber;
use crate::sink::Sink;
use crate::store::{AttemptClass, AttemptRow, Batch, ItemRow, ItemStatus, RunId, Store};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Largest batch committed in one transaction.
const MAX_BATCH: usize = 4096;

/// The longest an outcome waits for others to share its commit: a crash
/// loses at most this much of the run's outcomes (their items are sent
/// again), and nothing already written to the results.
const LINGER: Duration = Duration::from_millis(2);

/// A batch this large is committed without lingering.
const LINGER_UNTIL: usize = 512;

/// How often a lingering batch looks for more.
const LINGER_STEP: Duration = Duration::from_micros(200);

/// Counters of a run in progress.
#[derive(Debug, Clone)]
pub struct Progress {
    /// Items in the job.
    pub total: u64,
    /// Items finished, per status.
    pub counts: BTreeMap<&'static str, u64>,
    /// Requests that failed and were followed by another attempt.
    pub retries: u64,
    /// Of those, 429s.
    pub rate_limited: u64,
    /// When the run started.
    pub started: Instant,
    /// The pool's load as of the last tick.
    pub load: Load,
}

impl Progress {
    /// Items finished, whatever their status.
    pub fn done(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Items finished with `status`.
    pub fn count(&self, status: ItemStatus) -> u64 {
        self.counts.get(status.as_str()).copied().unwrap_or(0)
    }
}

/// Whoever shows the run to a person: the one owner of everything a run
/// says. Called by the recorder after each committed batch, and by the run
/// for its notices and its end; never by workers. Each event is ignored
/// unless the observer shows it.
pub trait Observer: Send {
    /// A request was answered or failed.
    fn attempt(&mut self, _attempt: &AttemptRow) {}
    /// An item finished (its outcome is committed and written).
    fn finished(&mut self, _item: &ItemRow) {}
    /// A batch was committed or a second passed; `progress` is up to date.
    fn progress(&mut self, _progress: &Progress) {}
    /// Something the run says once (a warning, a signal, a resume).
    fn notice(&mut self, _notice: &Notice) {}
    /// The run is over: its outcome, committed and reported.
    fn done(&mut self, _outcome: &RunOutcome) {}
}

pub(super) struct Recorder {
    handle: tokio::task::JoinHandle<Result<(Store, bool), RunError>>,
}

impl Recorder {
    /// Waits for the recorder to drain its channel and returns the store,
    /// and whether the results output was closed under it.
    pub(super) async fn join(self) -> Result<(Store, bool), RunError> {
        self.handle
            .await
            .expect("the recorder thread does not panic")
    }
}

/// Starts the recorder on a blocking thread. If it fails (the disk is full,
/// the results file vanished), it cancels the run: nothing more may be sent
/// whose outcome could not be kept.
pub(super) fn spawn(
    Recording {
        mut store,
        run,
        mut sink,
        mut observer,
        scrubber,
    }: Recording,
    total: u64,
    mut events: mpsc::UnboundedReceiver<Event>,
    cancel: CancellationToken,
) -> Recorder {
    let handle = tokio::task::spawn_blocking(move || {
        let mut progress = Progress {
            total,
            counts: BTreeMap::new(),
            retries: 0,
            rate_limited: 0,
            started: Instant::now(),
            load: Load::default(),
        };
        let mut output = Output {
            sink: &mut sink,
            closed: false,
            cancel: &cancel,
        };
        let result = (|| {
            while let Some(first) = events.blocking_recv() {
                let batch = gather(first, &mut events);
                record(
                    &mut store,
                    run,
                    &mut output,
                    &mut *observer,
                    &mut progress,
                    &scrubber,
                    batch,
                )?;
            }
            Ok(())
        })();
        if result.is_err() {
            cancel.cancel();
        }
        let closed = output.closed;
        result.map(|()| (store, closed))
    });
    Recorder { handle }
}

/// The batch that starts with `first`: what else is sent meanwhile, up to
/// [`MAX_BATCH`]. While nobody waits for the commit (outcomes only, no
/// reservation), it lingers up to [`LINGER`] for more: one commit of many
/// outcomes costs far less than many commits of a few.
fn gather(first: Event, events: &mut mpsc::UnboundedReceiver<Event>) -> Vec<Event> {
    let until = Instant::now() + LINGER;
    let mut waited_for = awaited(&first);
    let mut batch = vec![first];
    loop {
        while batch.len() < MAX_BATCH {
            match events.try_recv() {
                Ok(event) => {
                    waited_for |= awaited(&event);
                    batch.push(event);
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return batch,
            }
        }
        if waited_for || batch.len() >= LINGER_UNTIL || Instant::now() >= until {
            return batch;
        }
        std::thread::sleep(LINGER_STEP);
    }
}

/// Whether someone waits for `event` to be committed.
fn awaited(event: &Event) -> bool {
    matches!(event, Event::Reserve { .. } | Event::Uploads { .. })
}

/// The results file, as long as someone reads it.
struct Output<'a> {
    sink: &'a mut Sink,
    /// Set once a write met a closed pipe: nothing more is written.
    closed: bool,
    /// Cancelled then, so nothing more is sent.
    cancel: &'a CancellationToken,
}

impl Output<'_> {
    /// Appends `items` and flushes. A closed pipe is not a failure: it
    /// stops the run, and the items stay in the store.
    fn write(&mut self, items: &[ItemRow]) -> Result<(), RunError> {
        if self.closed {
            return Ok(());
        }
        let written = items
            .iter()
            .try_for_each(|item| self.sink.write(item))
            .and_then(|()| self.sink.flush());
        match written {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.closed = true;
                self.cancel.cancel();
                Ok(())
            }
            result => result.map_err(RunError::Sink),
        }
    }
}

fn record(
    store: &mut Store,
    run: RunId,
    output: &mut Output<'_>,
    observer: &mut dyn Observer,
    progress: &mut Progress,
    scrubber: &Scrubber,
    batch: Vec<Event>,
) -> Result<(), RunError> {
    let mut commit = Batch::default();
    let mut replies = Vec::new();
    let mut notices = Vec::new();
    let mut acks = Vec::new();
    for event in batch {
        match event {
            Event::Reserve {
                reservation,
                count,
                reply,
            } => {
                commit.reservations.push((reservation, count));
                replies.push(reply);
            }
            Event::Release(reservation) => commit.releases.push(reservation),
            // Everything leaves the run from here: no fragment of a key
            // goes to the store, the results, the report or the display.
            Event::Attempt(mut row) => {
                scrubber.clean_option(&mut row.error);
                commit.attempts.push(row);
            }
            Event::Finished(mut item) => {
                scrubber.clean_option(&mut item.output);
                scrubber.clean_option(&mut item.error);
                commit.items.push(item);
            }
            Event::Uploads {
                changes,
                events,
                committed,
            } => {
                commit.uploads.extend(changes);
                commit.upload_events.extend(events);
                acks.push(committed);
            }
            Event::Tick(load) => progress.load = load,
            Event::Notice(mut notice) => {
                if let Notice::KeyDisabled { reason, .. } = &mut notice {
                    scrubber.clean(reason);
                }
                notices.push(notice);
            }
        }
    }
    let ticks_only = commit.releases.is_empty()
        && commit.reservations.is_empty()
        && commit.attempts.is_empty()
        && commit.items.is_empty()
        && commit.uploads.is_empty()
        && commit.upload_events.is_empty();
    if !ticks_only {
        let granted = store.commit(run, &commit)?;
        // A counted request may go out now: the count is durable.
        for (reply, granted) in replies.into_iter().zip(granted) {
            let _ = reply.send(granted);
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }
    if !commit.items.is_empty() {
        output.write(&commit.items)?;
    }
    let Batch {
        attempts, items, ..
    } = commit;
    for row in &attempts {
        // An attempt after the first means the one before it was retried.
        if row.attempt > 1 {
            progress.retries += 1;
        }
        if row.class == AttemptClass::RateLimited {
            progress.rate_limited += 1;
        }
        observer.attempt(row);
    }
    for item in &items {
        *progress.counts.entry(item.status.as_str()).or_default() += 1;
        observer.finished(item);
    }
    for notice in &notices {
        observer.notice(notice);
    }
    observer.progress(progress);
    Ok(())
}
