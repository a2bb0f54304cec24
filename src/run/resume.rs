//! Where a run starts: the run of the same job that the state file already
//! holds (resumed), or a new one, and what it already finished.

use super::RunError;
use crate::job::{id_hash, SKIPPED_ID_PREFIX};
use crate::sink::{Behind, Sink};
use crate::store::{ItemStatus, RunId, RunRow, Store, StoreError};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// How a run takes up an earlier run of the same job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Resume {
    /// Resume it: its finished items are not sent again (the default).
    #[default]
    Continue,
    /// Resume it, and send again the items that failed (`--retry-failed`).
    RetryFailed,
    /// Start a fresh run even if one of the same job exists, or one of an
    /// earlier version of it (`--new-run`).
    Fresh,
}

/// The run to execute and what it already holds.
#[derive(Debug)]
pub struct Start {
    /// The run.
    pub run: RunId,
    /// Whether it is an earlier run taken up again.
    pub resumed: bool,
    /// The items it keeps and will not send again.
    pub done: Done,
    /// Requests already sent for the items it will send (again), by
    /// [`id_hash`]: an item's `attempts` counts across resumes.
    pub prior_attempts: HashMap<u64, u32>,
    /// Where the run's outcomes go.
    pub sink: Sink,
    /// The outcomes it kept, still being written to the results before
    /// `sink`'s: wait for them with [`Behind::finish`].
    pub rebuild: Option<Behind>,
}

/// The items a run keeps from its earlier invocations: not sent again.
#[derive(Debug, Default)]
pub struct Done {
    /// Their ids, as [`id_hash`]es.
    pub ids: HashSet<u64>,
    /// Their lines, but for skipped lines' (whose lines are read again, in
    /// case they now hold an item): the job is the one they were read
    /// from (its hash is the run's), so the feeder passes over them
    /// without parsing them.
    pub lines: Arc<HashSet<u64>>,
}

/// The earlier run of a job that a new invocation could take up.
#[derive(Debug, Clone, PartialEq)]
pub enum Earlier {
    /// None: a new run starts.
    None,
    /// The newest run of the same file with the same content: resumed.
    Same(RunId),
    /// The newest run of the same file, whose content has changed since:
    /// neither resumed nor silently replaced (the caller decides).
    Changed(RunRow),
}

/// Finds the run a new invocation of the job takes up: the newest run
/// recorded under any of `job_paths` (the job's canonical path first, then
/// the spellings older keyfans stored) with content `job_hash`; failing
/// that, the newest run of the same path with other content. Under
/// [`Resume::Fresh`] there is none.
pub fn earlier(
    store: &Store,
    job_paths: &[&str],
    job_hash: &str,
    resume: Resume,
) -> Result<Earlier, StoreError> {
    if resume == Resume::Fresh {
        return Ok(Earlier::None);
    }
    let runs: Vec<RunRow> = store
        .runs()?
        .into_iter()
        .filter(|run| job_paths.contains(&run.job_path.as_str()))
        .collect();
    if let Some(run) = runs.iter().find(|run| run.job_hash == job_hash) {
        return Ok(Earlier::Same(run.id));
    }
    Ok(runs
        .into_iter()
        .next()
        .map_or(Earlier::None, Earlier::Changed))
}

/// Whether a resumed run keeps (and does not send again) the item of a
/// row with `status` and `id`.
fn kept(status: ItemStatus, id: &str, resume: Resume) -> bool {
    // An item skipped because its parent did not end ok (it has its own
    // id, unlike a skipped line) goes with its parent.
    let skipped_child = status == ItemStatus::Skipped && !id.starts_with(SKIPPED_ID_PREFIX);
    let again = status == ItemStatus::Deferred
        || ((status == ItemStatus::Failed || skipped_child) && resume == Resume::RetryFailed);
    !again
}

/// Takes up the `earlier` run (from [`earlier`]), or creates a run of the
/// job at `job_path` with content `job_hash`. A run taken up has `sink`
/// rebuilt from the store, so an outcome whose row a crash lost is written
/// again, and none twice: the outcomes it keeps, as the store holds them
/// now, are written on a thread of their own while the run goes on
/// ([`Sink::behind`]), and the rows it adds come after them.
pub fn start(
    store: &Store,
    sink: Sink,
    earlier: Option<RunId>,
    job_path: &str,
    job_hash: &str,
    simulated: bool,
    resume: Resume,
) -> Result<Start, RunError> {
    let Some(run) = earlier else {
        return Ok(Start {
            run: store.create_run(job_path, job_hash, simulated)?,
            resumed: false,
            done: Done::default(),
            prior_attempts: HashMap::new(),
            sink,
            rebuild: None,
        });
    };
    store.reopen_run(run)?;
    let (mut ids, mut lines) = (HashSet::new(), HashSet::new());
    store.item_states(run, |id, line, status| {
        if kept(status, id, resume) {
            ids.insert(id_hash(id));
            if !id.starts_with(SKIPPED_ID_PREFIX) {
                lines.insert(line);
            }
        }
    })?;
    // Every item not kept is sent (again): failed and deferred ones
    // included, as their attempts count on.
    let prior_attempts = store
        .unfinished_attempts(run, |id| !ids.contains(&id_hash(id)))?
        .into_iter()
        .map(|(id, n)| (id_hash(&id), n))
        .collect();
    // Read before the run commits anything, the rows are the ones kept.
    let snapshot = store.snapshot()?;
    let (sink, rebuild) = sink
        .behind(move |sink| {
            snapshot
                .for_each_item(run, |row| match row.status {
                    // In a provider's batch: not a result yet.
                    ItemStatus::Submitted => Ok(()),
                    status if kept(status, &row.id, resume) => sink.write(&row),
                    _ => Ok(()),
                })
                .map_err(std::io::Error::other)?
        })
        .map_err(RunError::Sink)?;
    Ok(Start {
        run,
        resumed: true,
        done: Done {
            ids,
            lines: Arc::new(lines),
        },
        prior_attempts,
        sink,
        rebuild: Some(rebuild),
    })
}
