//! `keyfan::run`: one run of a job, from its [`Settings`] to its
//! [`RunOutcome`]. It validates the job, starts the simulator when asked,
//! checks the outputs, takes the state file's lock, checks the models,
//! resumes or starts the run, [`execute`]s it, finishes it and writes the
//! report. What a person sees of it goes to the [`Observer`] as events; it
//! never prints.

use super::sample::{self, SampleSummary};
use super::settings::Settings;
use super::{
    exit, models, Budget, ClientError, Clients, Earlier, Notice, Observer, Options, Recording,
    RetryPolicy, RunError, Start, Stop,
};
use crate::config::Config;
use crate::job::{self, JobError};
use crate::paths;
use crate::pool::{Pool, PoolError};
use crate::provider::Scrubber;
use crate::report::Report;
use crate::sim::{SimConfig, SimServer};
use crate::sink::{OutFormat, Sink};
use crate::store::postgres::PgState;
use crate::store::{ItemStatus, LockError, RunId, RunLock, RunRow, RunStatus, Store};
use std::path::PathBuf;
use std::sync::Arc;

/// Output cap sent under `--max-cost` or `max_cost_per_item` with items
/// that set none: the one the estimate's worst case assumes.
const COST_OUTPUT_CAP: u32 = crate::estimate::DEFAULT_OUTPUT_CAP;

/// Invalid job lines shown before the rest are only counted.
const SHOWN_ITEM_ERRORS: usize = 20;

/// How a run ended: what the summary, `--json` and the exit code are made of.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// The run in the state file.
    pub run: RunId,
    /// Whether it went to the built-in simulator.
    pub simulated: bool,
    /// How it ended.
    pub status: RunStatus,
    /// Its active time over all its invocations, as the report gives it.
    pub elapsed_s: f64,
    /// The whole run's items per status (this invocation's and earlier
    /// ones'), in the order of their stored names.
    pub items: Vec<(ItemStatus, u64)>,
    /// keyfan's own failures that stopped items or the run; their items
    /// stay pending.
    pub errors: Vec<String>,
    /// The keys disabled during the run: (fingerprint, account, reason).
    pub disabled: Vec<(String, String, String)>,
    /// Models for which every key was refused: the run stopped sending.
    pub keys_refused: Vec<String>,
    /// When the daily quotas reset, if items were deferred (RFC 3339 UTC).
    pub quota_resets_at: Option<String>,
    /// Under `--sample`: what the sample measured and implies.
    pub sample: Option<SampleSummary>,
    /// Where the results, the state file and the report went.
    pub outputs: super::Outputs,
}

impl RunOutcome {
    /// Items that ended with `status`.
    pub fn count(&self, status: ItemStatus) -> u64 {
        self.items
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(0, |(_, n)| *n)
    }

    /// The process exit code of this outcome (see [`exit::TABLE`]): how the
    /// run stopped first, then the worst item.
    pub fn exit_code(&self) -> u8 {
        match self.status {
            RunStatus::Failed => exit::ERROR,
            RunStatus::KeysRefused => exit::KEYS_REFUSED,
            RunStatus::Interrupted | RunStatus::OutputClosed => exit::INTERRUPTED,
            RunStatus::BudgetReached => exit::BUDGET,
            RunStatus::Batched => exit::SUBMITTED,
            // A finished run is never `running`; were it so, its items decide.
            RunStatus::Done | RunStatus::Sampled | RunStatus::Running => {
                if self.count(ItemStatus::Deferred) > 0 {
                    exit::DEFERRED
                } else if self.count(ItemStatus::Failed) + self.count(ItemStatus::Skipped) > 0 {
                    exit::ITEMS_FAILED
                } else {
                    exit::OK
                }
            }
        }
    }
}

/// Why a run could not start. Nothing was sent.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The job file cannot be read or is not a job.
    #[error(transparent)]
    Job(JobError),
    /// The job has invalid lines, and `--skip-invalid` was not given.
    #[error(
        "{job} has {count} invalid line(s): nothing was sent (fix them, or pass --skip-invalid \
         to run the rest)"
    )]
    InvalidLines {
        /// The job's label.
        job: String,
        /// How many.
        count: u64,
    },
    /// Items whose worst case costs more than `max_cost_per_item`.
    #[error(
        "{job} has {count} item(s) whose worst case costs more than max_cost_per_item \
         (${cap}): nothing was sent (lower their max_output_tokens, or raise the cap)"
    )]
    TooCostly {
        /// The job's label.
        job: String,
        /// How many.
        count: u64,
        /// The cap, in USD.
        cap: f64,
    },
    /// Generation settings the APIs of their models' providers lack.
    #[error("{job} uses {count} setting(s) its models' providers do not have: nothing was sent")]
    Settings {
        /// The job's label.
        job: String,
        /// How many (model, setting) pairs.
        count: usize,
    },
    /// Models no account serves, or their providers do not list.
    #[error("{job} asks for {count} model(s) that cannot be used: nothing was sent")]
    Models {
        /// The job's label.
        job: String,
        /// How many.
        count: usize,
    },
    /// `--out-format batch` for a job that is not a provider's batch file.
    #[error(
        "--out-format batch writes the output lines of a provider's batch API, but {job} is not \
         an OpenAI or Gemini batch file: nothing was sent (leave --out-format out for keyfan's \
         results)"
    )]
    NotBatch {
        /// The job's label.
        job: String,
    },
    /// The job changed since its latest run in the state file.
    #[error(
        "{job} has changed since run {} of it (started {}, {}): its sha256 was {}…, it is {}… \
         now. Nothing was sent. Restore the file to resume run {}, or pass --new-run to start \
         a new run of the edited job (items that run {} finished would be sent again)",
        run.id.0, run.started_at, run.status, short(&run.job_hash), short(hash), run.id.0,
        run.id.0
    )]
    JobChanged {
        /// The job's label.
        job: String,
        /// Its latest run.
        run: Box<RunRow>,
        /// The job's hash now.
        hash: String,
    },
    /// An output is the same file as an input or another output.
    #[error(
        "{name} {} is the same file as {other} ({}): nothing was written; choose another \
         path{}",
        output.display(), path.display(), if *name == "--out" { "" } else { " (--report PATH)" }
    )]
    SameFile {
        /// Which output.
        name: &'static str,
        /// Its path.
        output: PathBuf,
        /// The file it would overwrite.
        other: &'static str,
        /// That file's path.
        path: PathBuf,
    },
    /// The pool cannot be built (an unknown `--group`).
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// An account's HTTP client cannot be built (e.g. a bad proxy URL).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The state file's lock is held or cannot be taken.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The shared state (PostgreSQL) cannot be reached or refused its
    /// schema.
    #[error("{0}: nothing was sent (check --state and that the database is up)")]
    Shared(#[from] crate::store::postgres::PgError),
    /// A combination keyfan does not support yet: `depends_on` or
    /// `--batch` on a shared state (the shared queue hands items out in
    /// chunks with no regard to their parents; batches are kept in the
    /// state file), or `depends_on` under `--batch` (a child needs its
    /// parents' answers before it can be written into a batch).
    #[error("{job}: {what} is not supported yet: nothing was sent; {instead}")]
    NotSupported {
        /// The job's label.
        job: String,
        /// What was asked.
        what: &'static str,
        /// What to do instead.
        instead: &'static str,
    },
    /// The job's run in the shared state is worked by another live host,
    /// and `--join` was not given.
    #[error("{0}")]
    Held(crate::store::postgres::JoinError),
    /// An I/O failure while setting the run up.
    #[error("failed to {what}")]
    Io {
        /// What failed, e.g. `start the simulator`.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl StartError {
    /// The exit code: usage (2) when the command, config or job is at
    /// fault, locked (75), else keyfan's failure (1).
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Job(_)
            | StartError::InvalidLines { .. }
            | StartError::TooCostly { .. }
            | StartError::Models { .. }
            | StartError::Settings { .. }
            | StartError::NotBatch { .. }
            | StartError::NotSupported { .. }
            | StartError::JobChanged { .. }
            | StartError::SameFile { .. }
            | StartError::Pool(PoolError::UnknownGroup(..)) => exit::USAGE,
            StartError::Lock(LockError::Held { .. }) | StartError::Held(_) => exit::LOCKED,
            StartError::Client(_)
            | StartError::Lock(_)
            | StartError::Io { .. }
            | StartError::Shared(_) => exit::ERROR,
        }
    }

    /// An I/O failure while doing `what`, as the error of a `map_err`.
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StartError {
        let what = what.into();
        |source| StartError::Io { what, source }
    }
}

impl RunError {
    /// The exit code of a run that failed: see [`StartError::exit_code`];
    /// any other failure is keyfan's own (1).
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Start(e) => e.exit_code(),
            _ => exit::ERROR,
        }
    }
}

/// The first 12 hex digits of a hash.
fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// Opens (or, with `--join`, joins) the job's run in the shared state,
/// loading its items as the queue when the run is new, and ends there every
/// item this host finished locally that the queue still has open (what it
/// recorded while the database was out of reach).
async fn join_queue(
    mut state: PgState,
    how: &super::SharedState,
    job: &super::Job,
    hash: &str,
    store: &Store,
    local: RunId,
) -> Result<super::shared::Link, RunError> {
    let mut finished = Vec::new();
    store
        .for_each_item(local, |row| {
            if row.status != ItemStatus::Deferred && row.status != ItemStatus::Skipped {
                let json = serde_json::to_string(&row).map_err(|e| e.to_string())?;
                finished.push((row.line, json, row.status.as_str()));
            }
            Ok::<(), String>(())
        })?
        .map_err(|e| StartError::io("record a finished item")(std::io::Error::other(e)))?;
    let (file, key, hash, join, lease) = (
        job.file.clone(),
        job.key().to_owned(),
        hash.to_owned(),
        how.join,
        how.lease,
    );
    tokio::task::spawn_blocking(move || {
        let items = job::JobReader::open(&file)
            .map_err(StartError::Job)?
            .filter_map(Result::ok)
            .map(|item| (item.line, item.id));
        let run = state
            .open_run(&key, &hash, items, join, lease)
            .map_err(|e| match e {
                crate::store::postgres::JoinError::Db(e) => StartError::Shared(e),
                held => StartError::Held(held),
            })?
            .run();
        for (line, json, outcome) in finished {
            state.settle(run, line, &json, outcome)?;
        }
        Ok::<_, StartError>(super::shared::Link { state, run, lease })
    })
    .await
    .map_err(|e| StartError::io("join the shared run")(std::io::Error::other(e.to_string())))?
    .map_err(RunError::from)
}

/// Runs the job of `settings` to its end (or until stopped), telling
/// `observer` all along, and returns how it ended. A run that cannot start
/// sends nothing and returns a [`StartError`].
pub async fn run(
    settings: Settings,
    observer: impl Observer + 'static,
) -> Result<RunOutcome, RunError> {
    let Settings {
        job,
        mut config,
        config_path,
        outputs,
        simulate,
        offline,
        skip_invalid,
        resume,
        strategy,
        group,
        concurrency,
        max_cost,
        sample,
        stop_on_signals,
        batch,
    } = settings;
    let observer = super::Shared::new(observer);
    // The estimate the run stores is tallied in the same pass.
    let mut planner = crate::estimate::Planner::new(&config);
    let validation =
        job::validate_with(&job.file, |item| planner.add(item)).map_err(StartError::Job)?;
    let plan = planner.rows();
    if validation.error_count > 0 {
        let shown = validation.errors.iter().take(SHOWN_ITEM_ERRORS);
        observer.notice(&Notice::InvalidLines {
            shown: shown.map(ToString::to_string).collect(),
            hidden: validation.error_count - validation.errors.len().min(SHOWN_ITEM_ERRORS) as u64,
        });
        if !skip_invalid {
            return Err(StartError::InvalidLines {
                job: job.label,
                count: validation.error_count,
            }
            .into());
        }
    }
    // Batch output lines need the batch file whose lines they answer.
    let batch_output = match (outputs.format, validation.batch) {
        (OutFormat::Keyfan, _) => None,
        (OutFormat::Batch, Some(batch)) => Some(batch),
        (OutFormat::Batch, None) => return Err(StartError::NotBatch { job: job.label }.into()),
    };
    if let Some(cap) = config.max_cost_per_item {
        let costly = crate::estimate::over_cap(&job.file, &config, cap).map_err(StartError::Job)?;
        if costly.count > 0 {
            observer.notice(&Notice::InvalidLines {
                hidden: costly.count - costly.first.len() as u64,
                shown: costly.first.iter().map(ToString::to_string).collect(),
            });
            return Err(StartError::TooCostly {
                job: job.label,
                count: costly.count,
                cap,
            }
            .into());
        }
    }
    let refuse = |errors: Vec<models::ModelError>| {
        let count = errors.len();
        for error in errors {
            observer.notice(&Notice::ModelRefused {
                job: job.label.clone(),
                error,
            });
        }
        StartError::Models {
            job: job.label.clone(),
            count,
        }
    };
    let routes = models::route(&config, &validation.models).map_err(refuse)?;
    if let Some(batch) = validation.batch {
        models::batch_routes(&routes, batch).map_err(refuse)?;
    }
    let unsupported = models::unsupported_settings(&config, &validation.settings);
    if !unsupported.is_empty() {
        observer.notice(&Notice::InvalidLines {
            shown: unsupported.iter().map(ToString::to_string).collect(),
            hidden: 0,
        });
        return Err(StartError::Settings {
            job: job.label,
            count: unsupported.len(),
        }
        .into());
    }

    // Once per model, before anything is sent.
    for wanted in routes.values().flatten() {
        if config.prices.lookup(&wanted.model).is_none() {
            observer.notice(&Notice::ModelWarning(format!(
                "no price is known for model {wanted}: its cost is not counted (add it under \
                 `prices:` in the config)"
            )));
        }
    }
    outputs.check_distinct(&job.file, &config_path)?;
    let simulator = if simulate {
        let server = SimServer::start(SimConfig::rehearsal(&config), ([127, 0, 0, 1], 0).into())
            .await
            .map_err(StartError::io("start the simulator"))?;
        for provider in config.providers.values_mut() {
            provider.base_url = server.base_url();
        }
        observer.notice(&Notice::Simulated {
            base_url: server.base_url(),
        });
        Some(server)
    } else {
        None
    };

    let pool = Arc::new(Pool::new(&config, strategy, group.as_deref()).map_err(StartError::from)?);
    let clients = Arc::new(Clients::new(&config).map_err(StartError::from)?);
    let _lock = RunLock::acquire(&outputs.state).map_err(StartError::from)?;
    // The shared state is reached before anything is sent: unreachable, the
    // run sends nothing.
    let unsupported = match (&outputs.shared, &batch, validation.deps.is_empty()) {
        (Some(_), _, false) => Some((
            "depends_on on a shared state (--state postgres://…)",
            "run the job with a state file",
        )),
        (Some(_), Some(_), _) => Some((
            "--batch on a shared state (--state postgres://…)",
            "run it with a state file",
        )),
        (None, Some(_), false) => Some(("depends_on under --batch", "run the job without --batch")),
        _ => None,
    };
    if let Some((what, instead)) = unsupported {
        let job = job.label;
        return Err(StartError::NotSupported { job, what, instead }.into());
    }
    let shared = match &outputs.shared {
        Some(shared) => {
            let url = shared.url.clone();
            let connect = move || PgState::connect(&url, &crate::store::postgres::this_host());
            Some(off_runtime("connect to the shared state", connect).await?)
        }
        None => None,
    };
    // By its canonical path, the one the lock is named after.
    let state = paths::canonical(&outputs.state).map_err(StartError::io(format!(
        "resolve --state {}",
        outputs.state.display()
    )))?;
    let store = Store::open(&state)?;
    if !offline {
        let checked = models::check_listed(&config, &routes, &store).await?;
        for warning in checked.warnings {
            observer.notice(&Notice::ModelWarning(warning));
        }
        if !checked.errors.is_empty() {
            return Err(refuse(checked.errors).into());
        }
    }
    let earlier = match super::earlier(&store, &job.keys(), &validation.content_hash, resume)? {
        Earlier::None => None,
        Earlier::Same(run) => Some(run),
        // Standard input has no file whose edits could be meant: other
        // content is another job.
        Earlier::Changed(_) if job.stdin => None,
        Earlier::Changed(run) => {
            return Err(StartError::JobChanged {
                job: job.label,
                run: Box::new(run),
                hash: validation.content_hash,
            }
            .into())
        }
    };
    let sink = match batch_output {
        Some(batch) => Sink::create_batch(&outputs.target, batch),
        None => Sink::create(&outputs.target),
    };
    let sink = sink.map_err(StartError::io(format!("create {}", outputs.target)))?;
    let Start {
        run: run_id,
        resumed,
        done,
        prior_attempts,
        sink,
        rebuild,
    } = super::start(
        &store,
        sink,
        earlier,
        job.key(),
        &validation.content_hash,
        simulate,
        resume,
    )?;
    // The answers of the parents finished earlier, for the children to do.
    let deps = super::Dependencies::load(Arc::clone(&validation.deps), &store, run_id, &done.ids)?;
    let chosen = match sample {
        Some(sample) => Some(Arc::new(
            sample::choose(
                &job.file,
                &validation.content_hash,
                &done.ids,
                &deps,
                sample,
            )
            .map_err(StartError::Job)?,
        )),
        None => None,
    };
    for account in &config.accounts {
        for (model, limits) in &account.limits {
            store.save_limits(run_id, &account.name, model, *limits)?;
        }
    }
    // The estimate made before the run first sent anything, for its report.
    if !store.has_estimate(run_id)? {
        store.save_estimate(run_id, &plan)?;
    }
    let shared = match (shared, &outputs.shared) {
        (Some(state), Some(how)) => {
            Some(join_queue(state, how, &job, &validation.content_hash, &store, run_id).await?)
        }
        _ => None,
    };
    // The shared run, for the report's Hosts section.
    let shared_run = shared.as_ref().map(|link| link.run);
    let to_do = (validation.items + validation.error_count).saturating_sub(done.ids.len() as u64);
    if resumed {
        observer.notice(&Notice::Resuming {
            run: run_id,
            job: job.label.clone(),
            done: done.ids.len() as u64,
            to_do,
        });
    }

    let stop = Stop::default();
    let signals = stop_on_signals.then(|| {
        tokio::spawn(super::signals::watch(
            stop.clone(),
            config.timeout,
            observer.clone(),
        ))
    });
    let total = chosen.as_ref().map_or(to_do, |chosen| chosen.len() as u64);
    let options = Options {
        job: job.file.clone(),
        job_hash: validation.content_hash.clone(),
        total,
        // No more workers than items to send: each costs memory.
        concurrency: concurrency
            .min(usize::try_from(total).unwrap_or(usize::MAX))
            .max(1),
        policy: RetryPolicy {
            max_retries: config.max_retries,
            deadline: config.item_deadline,
            ..RetryPolicy::default()
        },
        default_model: config.model.clone(),
        done: Arc::new(done),
        first_lines: Arc::clone(&validation.first_lines),
        only: chosen.clone(),
        prior_attempts: Arc::new(prior_attempts),
        budget: max_cost.map(|cap| Arc::new(Budget::new(cap))),
        default_output_cap: (max_cost.is_some() || config.max_cost_per_item.is_some())
            .then_some(COST_OUTPUT_CAP),
        prices: Arc::new(config.prices.clone()),
        media: config.media,
        deps: Arc::new(deps),
    };
    let scrubber = scrubber(&config);
    let recording = Recording {
        store,
        run: run_id,
        sink,
        observer: Box::new(observer.clone()),
        scrubber: scrubber.clone(),
    };
    let executed = match batch {
        Some(limits) => {
            let batcher = crate::batch::Batcher {
                config: &config,
                clients: &clients,
                pool: &pool,
                providers: routes
                    .iter()
                    .flat_map(|(kind, wanted)| wanted.iter().map(|w| (w.model.clone(), *kind)))
                    .collect(),
                job: &job.file,
                job_hash: &validation.content_hash,
                limits,
                resume,
                dir: crate::batch::work_dir(&state),
                simulated: simulate,
                online: crate::batch::Online {
                    options: &options,
                    pool: Arc::clone(&pool),
                    clients: Arc::clone(&clients),
                    stop: &stop,
                },
            };
            batcher.run(recording).await
        }
        None => {
            super::execute_with(
                &options,
                Arc::clone(&pool),
                clients,
                recording,
                &stop,
                shared,
            )
            .await
        }
    };
    // The kept outcomes are in the results before the run's own, whichever
    // way it ended.
    let rebuilt = rebuild.map_or(Ok(()), crate::sink::Behind::finish);
    let (summary, store) = executed?;
    rebuilt.map_err(RunError::Sink)?;
    if let Some(signals) = signals {
        signals.abort();
    }
    let sample = match (sample, &chosen) {
        (Some(sample), Some(chosen)) => Some(SampleSummary::measure(
            &store,
            run_id,
            chosen,
            sample,
            summary.elapsed.as_secs_f64(),
            validation.items,
        )?),
        _ => None,
    };
    // A sample that left items to send is not the run's end.
    let status = match &sample {
        Some(sample) if summary.status == RunStatus::Done && sample.remaining > 0 => {
            RunStatus::Sampled
        }
        _ => summary.status,
    };
    store.finish_run(run_id, status)?;

    let mut report = Report::build(&store, run_id)?;
    // The whole run host by host, on a connection of its own (the run's is
    // closed by now); a database gone since leaves the section out (the
    // run's errors say so).
    if let (Some(run), Some(how)) = (shared_run, &outputs.shared) {
        let url = how.url.clone();
        let read =
            move || PgState::connect(&url, &crate::store::postgres::this_host())?.run_hosts(run);
        report.hosts = off_runtime("read the shared run's hosts", read)
            .await
            .ok()
            .flatten();
    }
    for (path, text) in [
        (&outputs.report_md, report.to_markdown()),
        (&outputs.report_json, report.to_json()),
        (&outputs.report_html, report.to_html()),
    ] {
        std::fs::write(path, text).map_err(StartError::io(format!("write {}", path.display())))?;
    }
    if let Some(server) = simulator {
        server.shutdown().await;
    }
    let outcome = RunOutcome {
        run: run_id,
        simulated: simulate,
        status,
        elapsed_s: report.elapsed_s,
        items: report.totals.status_counts(),
        errors: summary.errors,
        keys_refused: summary.keys_refused,
        disabled: pool
            .disabled()
            .into_iter()
            .map(|(key, account, mut reason)| {
                scrubber.clean(&mut reason);
                (key, account, reason)
            })
            .collect(),
        quota_resets_at: report.quota_resets_at,
        sample,
        outputs,
    };
    observer.done(&outcome);
    Ok(outcome)
}

/// Runs `f` (the synchronous PostgreSQL client) off the async runtime.
async fn off_runtime<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> Result<T, crate::store::postgres::PgError> + Send + 'static,
) -> Result<T, StartError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StartError::Io {
            what: what.to_owned(),
            source: std::io::Error::other(e.to_string()),
        })?
        .map_err(StartError::from)
}

/// The scrubber of every key in `config`: what keyfan writes or shows
/// holds no fragment of any of them.
pub fn scrubber(config: &Config) -> Scrubber {
    Scrubber::new(config.accounts.iter().flat_map(|a| &a.keys).map(|k| &k.key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::Target;

    fn outcome(status: RunStatus, items: &[(ItemStatus, u64)]) -> RunOutcome {
        RunOutcome {
            run: RunId(1),
            simulated: false,
            status,
            elapsed_s: 1.0,
            items: items.to_vec(),
            errors: Vec::new(),
            disabled: Vec::new(),
            keys_refused: Vec::new(),
            quota_resets_at: None,
            sample: None,
            outputs: super::super::Outputs {
                target: Target::Stdout,
                state: PathBuf::from("s.db"),
                report_md: PathBuf::from("r.md"),
                report_json: PathBuf::from("r.json"),
                report_html: PathBuf::from("r.html"),
                format: OutFormat::Keyfan,
                shared: None,
            },
        }
    }

    #[test]
    fn how_the_run_stopped_decides_the_code_before_its_items() {
        let worst = [
            (ItemStatus::Deferred, 1),
            (ItemStatus::Failed, 1),
            (ItemStatus::Ok, 1),
        ];
        for (status, code) in [
            (RunStatus::Failed, exit::ERROR),
            (RunStatus::KeysRefused, exit::KEYS_REFUSED),
            (RunStatus::Interrupted, exit::INTERRUPTED),
            (RunStatus::BudgetReached, exit::BUDGET),
            (RunStatus::Batched, exit::SUBMITTED),
            (RunStatus::Done, exit::DEFERRED),
            (RunStatus::Sampled, exit::DEFERRED),
        ] {
            assert_eq!(outcome(status, &worst).exit_code(), code, "{status}");
        }
        let done = |items: &[(ItemStatus, u64)]| outcome(RunStatus::Done, items).exit_code();
        assert_eq!(done(&[(ItemStatus::Skipped, 1)]), exit::ITEMS_FAILED);
        assert_eq!(done(&[(ItemStatus::Failed, 2)]), exit::ITEMS_FAILED);
        assert_eq!(
            done(&[(ItemStatus::Blocked, 1), (ItemStatus::Ok, 3)]),
            exit::OK
        );
        assert_eq!(done(&[]), exit::OK);
    }

    #[test]
    fn every_code_a_run_can_end_with_is_in_the_table() {
        let listed = |code| exit::TABLE.iter().any(|&(c, _)| c == code);
        for code in [
            exit::OK,
            exit::ERROR,
            exit::USAGE,
            exit::ITEMS_FAILED,
            exit::DEFERRED,
            exit::BUDGET,
            exit::KEYS_REFUSED,
            exit::SUBMITTED,
            exit::LOCKED,
            exit::INTERRUPTED,
        ] {
            assert!(listed(code), "{code}");
        }
        assert_eq!(exit::TABLE.len(), 10, "one row per code");
    }
}
