//! Where a run starts: the run of the same job that the state file already
//! holds (resumed), or a new one, and what it already finished.

use super::RunError;
use crate::job::id_hash;
use crate::sink::Sink;
use crate::store::{ItemStatus, RunId, RunRow, Store, StoreError};
use std::collections::{HashMap, HashSet};

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
    /// Ids (as [`id_hash`]es) of the items it keeps and will not send again.
    pub done: HashSet<u64>,
    /// Requests already sent for the items it will send (again), by
    /// [`id_hash`]: an item's `attempts` counts across resumes.
    pub prior_attempts: HashMap<u64, u32>,
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

/// Takes up the `earlier` run (from [`earlier`]), or creates a run of the
/// job at `job_path` with content `job_hash`, and writes the outcomes it
/// keeps to `sink`: the results file is rebuilt from the store, so an
/// outcome whose row a crash lost is written again, and none twice.
pub fn start(
    store: &Store,
    sink: &mut Sink,
    earlier: Option<RunId>,
    job_path: &str,
    job_hash: &str,
    simulated: bool,
    resume: Resume,
) -> Result<Start, RunError> {
    let run = match earlier {
        Some(run) => {
            store.reopen_run(run)?;
            run
        }
        None => store.create_run(job_path, job_hash, simulated)?,
    };
    let mut done = HashSet::new();
    store
        .for_each_item(run, |row| {
            // An item skipped because its parent did not end ok (it has
            // its own id, unlike a skipped line) goes with its parent.
            let skipped_child = row.status == ItemStatus::Skipped
                && !row.id.starts_with(crate::job::SKIPPED_ID_PREFIX);
            let again = row.status == ItemStatus::Deferred
                || ((row.status == ItemStatus::Failed || skipped_child)
                    && resume == Resume::RetryFailed);
            if again {
                return Ok(());
            }
            done.insert(id_hash(&row.id));
            // In a provider's batch: not a result yet.
            if row.status == ItemStatus::Submitted {
                return Ok(());
            }
            sink.write(&row)
        })?
        .and_then(|()| sink.flush())
        .map_err(RunError::Sink)?;
    let prior_attempts = match earlier {
        // Every item not kept is sent (again): failed and deferred ones
        // included, as their attempts count on.
        Some(_) => store
            .unfinished_attempts(run, |id| !done.contains(&id_hash(id)))?
            .into_iter()
            .map(|(id, n)| (id_hash(&id), n))
            .collect(),
        None => HashMap::new(),
    };
    Ok(Start {
        run,
        resumed: earlier.is_some(),
        done,
        prior_attempts,
    })
}
