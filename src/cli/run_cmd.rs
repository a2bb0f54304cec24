//! `keyfan run`: validate, (optionally) start the simulator, run, report.

use super::progress::Display;
use super::{exit, scrubber, Failure, RunArgs, Verbosity};
use crate::config::{Config, MissingEnv};
use crate::job;
use crate::paths;
use crate::pool::{Pool, PoolError, RetryPolicy};
use crate::report::Report;
use crate::run::{self, models, Budget, Earlier, Options, Recording, Resume, Start, Stop, Summary};
use crate::sim::{SimConfig, SimServer};
use crate::sink::{Sink, Target};
use crate::store::{ItemStatus, LockError, RunLock, RunRow, RunStatus, Store};
use anyhow::{anyhow, Context};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Output cap sent under `--max-cost` with items that set none.
const BUDGET_OUTPUT_CAP: u32 = 8192;

/// Item errors printed before the rest are only counted.
const SHOWN_ITEM_ERRORS: usize = 20;

pub(super) async fn run(args: RunArgs, verbosity: Verbosity) -> Result<u8, Failure> {
    if args.dry_run {
        return Err(Failure::usage(anyhow!(
            "keyfan has no --dry-run: use --simulate to rehearse the job against the built-in \
             simulator (no key, no network, no cost)"
        )));
    }
    if args.json && args.out.as_deref() == Some("-") {
        return Err(Failure::usage(anyhow!(
            "--json and --out - both want standard output: choose one"
        )));
    }
    let job = Job::new(&args.job)?;
    // A rehearsal needs no real key: unset variables become placeholders.
    let missing = if args.simulate {
        MissingEnv::Placeholder
    } else {
        MissingEnv::Error
    };
    let mut config = Config::load(&args.config, |name| std::env::var(name).ok(), missing)
        .map_err(Failure::usage)?;
    let validation = job::validate(&job.file).map_err(Failure::usage)?;
    if validation.error_count > 0 {
        for error in validation.errors.iter().take(SHOWN_ITEM_ERRORS) {
            eprintln!("keyfan: {error}");
        }
        let hidden = validation.error_count - validation.errors.len().min(SHOWN_ITEM_ERRORS) as u64;
        if hidden > 0 {
            eprintln!("keyfan: … and {hidden} more invalid lines");
        }
        if !args.skip_invalid {
            return Err(Failure::usage(anyhow!(
                "{} has {} invalid line(s): nothing was sent (fix them, or pass --skip-invalid to run the rest)",
                job.label,
                validation.error_count
            )));
        }
    }

    let routes = models::route(&config, &validation.models)
        .map_err(|errors| refuse_models(&job.label, &errors))?;

    let outputs = Outputs::new(&args, &job)?;
    outputs.check_distinct(&job.file, &args.config)?;
    let Outputs {
        target,
        state,
        report_md,
        report_json,
    } = outputs;

    let simulator = if args.simulate {
        let server = SimServer::start(SimConfig::rehearsal(&config), ([127, 0, 0, 1], 0).into())
            .await
            .context("failed to start the simulator")?;
        for provider in config.providers.values_mut() {
            provider.base_url = server.base_url();
        }
        if verbosity != Verbosity::Quiet {
            eprintln!(
                "keyfan: SIMULATED run: every request goes to the built-in simulator at {}, not to a real API",
                server.base_url()
            );
        }
        Some(server)
    } else {
        None
    };

    let strategy = args.strategy.unwrap_or(config.strategy);
    let pool = Arc::new(Pool::new(&config, strategy, args.group.as_deref()).map_err(
        |e| match e {
            PoolError::UnknownGroup(..) => Failure::usage(e),
            PoolError::Client { .. } => e.into(),
        },
    )?);
    let _lock = RunLock::acquire(&state).map_err(|e| match e {
        LockError::Held { .. } => Failure {
            code: exit::LOCKED,
            error: e.into(),
        },
        LockError::Io { .. } => e.into(),
    })?;
    // By its canonical path, the one the lock is named after.
    let store = Store::open(&paths::canonical(&state)?)?;
    run::seed_from_ledger(&pool, &store)?;
    if !args.offline {
        let checked = models::check_listed(&config, &routes, &store).await?;
        if verbosity != Verbosity::Quiet {
            for warning in &checked.warnings {
                eprintln!("keyfan: warning: {warning}");
            }
        }
        if !checked.errors.is_empty() {
            return Err(refuse_models(&job.label, &checked.errors));
        }
    }
    let policy = match (args.new_run, args.retry_failed) {
        (true, _) => Resume::Fresh,
        (false, true) => Resume::RetryFailed,
        (false, false) => Resume::Continue,
    };
    let earlier = match run::earlier(&store, &job.keys(), &validation.content_hash, policy)? {
        Earlier::None => None,
        Earlier::Same(run) => Some(run),
        // Standard input has no file whose edits could be meant: other
        // content is another job.
        Earlier::Changed(_) if job.stdin => None,
        Earlier::Changed(run) => {
            return Err(Failure::usage(changed(
                &job,
                &run,
                &validation.content_hash,
            )))
        }
    };
    let mut sink = Sink::create(&target).with_context(|| format!("failed to create {target}"))?;
    let Start {
        run: run_id,
        resumed,
        done,
        prior_attempts,
    } = run::start(
        &store,
        &mut sink,
        earlier,
        &job.key,
        &validation.content_hash,
        args.simulate,
        policy,
    )?;
    let to_do = (validation.items + validation.error_count).saturating_sub(done.len() as u64);
    if resumed && verbosity != Verbosity::Quiet {
        eprintln!(
            "keyfan: resuming run {} of {}: {} item(s) already finished, {to_do} to go (--new-run starts afresh)",
            run_id.0,
            job.label,
            done.len()
        );
    }
    let display = Display::new(verbosity, to_do, Arc::clone(&pool));

    let stop = Stop::default();
    let signals = tokio::spawn(watch_signals(stop.clone(), config.timeout, verbosity));
    let options = Options {
        job: job.file.clone(),
        total: to_do,
        // No more workers than items to send: each costs memory.
        concurrency: args
            .concurrency
            .unwrap_or(config.concurrency)
            .min(usize::try_from(to_do).unwrap_or(usize::MAX))
            .max(1),
        policy: RetryPolicy {
            max_retries: config.max_retries,
            deadline: config.item_deadline,
            ..RetryPolicy::default()
        },
        default_model: config.model.clone(),
        done: Arc::new(done),
        prior_attempts: Arc::new(prior_attempts),
        budget: args.max_cost.map(|cap| Arc::new(Budget::new(cap))),
        budget_output_cap: BUDGET_OUTPUT_CAP,
    };
    let scrub = scrubber(&config);
    let recording = Recording {
        store,
        run: run_id,
        sink,
        observer: Box::new(display),
        scrubber: scrub.clone(),
    };
    let (summary, store) = run::execute(&options, Arc::clone(&pool), recording, &stop).await?;
    signals.abort();
    let status = if !summary.errors.is_empty() {
        RunStatus::Failed
    } else if summary.interrupted || summary.output_closed {
        RunStatus::Interrupted
    } else if summary.budget_reached {
        RunStatus::BudgetReached
    } else {
        RunStatus::Done
    };
    store.finish_run(run_id, status)?;

    let report = Report::build(&store, run_id)?;
    std::fs::write(&report_md, report.to_markdown())
        .with_context(|| format!("failed to write {}", report_md.display()))?;
    std::fs::write(&report_json, report.to_json())
        .with_context(|| format!("failed to write {}", report_json.display()))?;
    if let Some(server) = simulator {
        server.shutdown().await;
    }

    // The whole run's items, this invocation's and earlier ones'.
    let items: BTreeMap<String, u64> = store
        .status_counts(run_id)?
        .into_iter()
        .map(|(status, n)| (status.as_str().to_owned(), n))
        .collect();
    let code = exit_code(&summary, &items);
    // Errors are shown even with -q: the items they left pending go out
    // with the next run.
    for error in &summary.errors {
        eprintln!("keyfan: error: {error}");
    }
    if !summary.errors.is_empty() {
        eprintln!("keyfan: the items not finished stay pending: running the same command again sends them");
    }
    // The run's active time, as the report gives it: a resumed run's
    // earlier invocations count, the gaps between them do not.
    let elapsed_s = report.elapsed_s;
    if verbosity != Verbosity::Quiet {
        if summary.output_closed {
            eprintln!(
                "keyfan: the results output was closed: stopped sending; finished items are kept in {} (running the same command again writes them and sends the rest)",
                state.display()
            );
        }
        eprintln!(
            "keyfan: {}run {} {status} in {elapsed_s:.1}s: {}",
            if args.simulate { "SIMULATED " } else { "" },
            run_id.0,
            counts(&items)
        );
        for (key, account, mut reason) in pool.disabled() {
            scrub.clean(&mut reason);
            eprintln!("keyfan: key {key} ({account}) was disabled for this run: {reason}");
        }
        if let Some(reset) = &report.quota_resets_at {
            eprintln!(
                "keyfan: daily quotas are spent: deferred items can go after {reset} (midnight US/Pacific)"
            );
        }
        eprintln!("keyfan: results: {target}");
        eprintln!(
            "keyfan: report:  {} and {}",
            report_md.display(),
            report_json.display()
        );
    }
    if args.json {
        let json = serde_json::json!({
            "run": run_id.0,
            "simulated": args.simulate,
            "status": status.as_str(),
            "elapsed_s": elapsed_s,
            "items": items,
            "results": target.to_string(),
            "report": report_json.display().to_string(),
            "state": state.display().to_string(),
            "exit_code": code,
        });
        println!("{json}");
    }
    Ok(code)
}

/// Prints each model problem and the usage failure that ends the command
/// before anything is sent.
fn refuse_models(job: &str, errors: &[models::ModelError]) -> Failure {
    for error in errors {
        eprintln!("keyfan: {job}: {error}");
    }
    Failure::usage(anyhow!(
        "{job} asks for {} model(s) that cannot be used: nothing was sent",
        errors.len()
    ))
}

/// `jobs/demo.jsonl` + `results.jsonl` → `jobs/demo.results.jsonl`.
fn beside(job: &Path, suffix: &str) -> PathBuf {
    job.with_extension(suffix)
}

/// The job as the run sees it.
struct Job {
    /// The file to read: the job file, or standard input's spool.
    file: PathBuf,
    /// What messages call it: the path as typed, or "standard input".
    label: String,
    /// Where default outputs go beside: the job file, or `stdin.jsonl` in
    /// the current directory.
    base: PathBuf,
    /// The job's name in the state file: its canonical path, or `-`.
    key: String,
    /// The path as typed, under which earlier keyfans stored runs.
    typed: String,
    /// Whether the job came from standard input.
    stdin: bool,
    /// Removes standard input's spool when the run is over.
    _spool: Option<Spool>,
}

impl Job {
    fn new(path: &Path) -> Result<Job, Failure> {
        if path == Path::new("-") {
            let spool =
                Spool::from_stdin().context("failed to read the job from standard input")?;
            return Ok(Job {
                file: spool.file.clone(),
                label: "standard input".to_owned(),
                base: PathBuf::from("stdin.jsonl"),
                key: "-".to_owned(),
                typed: "-".to_owned(),
                stdin: true,
                _spool: Some(spool),
            });
        }
        let typed = path.display().to_string();
        Ok(Job {
            file: path.to_owned(),
            label: typed.clone(),
            base: path.to_owned(),
            // A job that cannot be resolved is not found either: validation
            // says so.
            key: paths::canonical(path).map_or_else(|_| typed.clone(), |p| p.display().to_string()),
            typed,
            stdin: false,
            _spool: None,
        })
    }

    /// The names an earlier run of this job may be stored under.
    fn keys(&self) -> Vec<&str> {
        vec![self.key.as_str(), self.typed.as_str()]
    }
}

/// A job read from standard input, spooled to a private temporary file so
/// it can be validated and then read again by the run (its content hash
/// matches a rerun with the same input to its run). Removed when dropped.
struct Spool {
    dir: PathBuf,
    file: PathBuf,
}

impl Spool {
    fn from_stdin() -> std::io::Result<Spool> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!("keyfan-stdin-{}-{nanos}", std::process::id()));
        // `create_dir` fails if the name exists, so the directory is ours.
        std::fs::create_dir(&dir)?;
        let spool = Spool {
            file: dir.join("stdin.jsonl"),
            dir,
        };
        let mut file = std::fs::File::create_new(&spool.file)?;
        std::io::copy(&mut std::io::stdin().lock(), &mut file)?;
        Ok(spool)
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where a run writes: results, state file, report.
struct Outputs {
    target: Target,
    state: PathBuf,
    report_md: PathBuf,
    report_json: PathBuf,
}

impl Outputs {
    fn new(args: &RunArgs, job: &Job) -> Result<Outputs, Failure> {
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| beside(&job.base, "results.jsonl").display().to_string());
        let target = Target::parse(&out);
        let state = args.state.clone().unwrap_or_else(|| {
            beside(
                &job.base,
                if args.simulate {
                    "simulated.db"
                } else {
                    "keyfan.db"
                },
            )
        });
        let (report_md, report_json) = match (&args.report, &args.out, &target) {
            (Some(path), _, _) => (path.with_extension("md"), path.with_extension("json")),
            (None, Some(_), Target::File(out)) => {
                (beside(out, "report.md"), beside(out, "report.json"))
            }
            _ => (
                beside(&job.base, "report.md"),
                beside(&job.base, "report.json"),
            ),
        };
        Ok(Outputs {
            target,
            state,
            report_md,
            report_json,
        })
    }

    /// Refuses (before anything is written) an output that is the same
    /// file as the job, the config, the state file or one of its side files
    /// (SQLite's `-wal` and `-shm`, the run lock), or as another output:
    /// writing it would destroy that file. Paths are compared by identity
    /// (see [`paths::same_file`]), so a symlink or hard link is caught.
    fn check_distinct(&self, job: &Path, config: &Path) -> Result<(), Failure> {
        let state = paths::canonical(&self.state)
            .with_context(|| format!("failed to resolve --state {}", self.state.display()))?;
        let mut inputs: Vec<(&str, PathBuf)> = vec![
            ("the job", job.to_owned()),
            ("the config", config.to_owned()),
            ("the state file", self.state.clone()),
        ];
        for suffix in ["-wal", "-shm", "-journal"] {
            inputs.push((
                "the state file's journal",
                paths::with_suffix(&state, suffix),
            ));
        }
        inputs.push(("the state file's lock", crate::store::lock_path(&state)));
        let mut outputs: Vec<(&str, &Path)> = Vec::new();
        if let Target::File(out) = &self.target {
            outputs.push(("--out", out));
        }
        outputs.push(("the report", &self.report_md));
        outputs.push(("the JSON report", &self.report_json));
        for (i, &(name, output)) in outputs.iter().enumerate() {
            let earlier = outputs[..i].iter().map(|&(n, p)| (n, p.to_owned()));
            let clash = inputs
                .iter()
                .cloned()
                .chain(earlier)
                .find(|(_, other)| paths::same_file(output, other));
            if let Some((other, path)) = clash {
                return Err(Failure::usage(anyhow!(
                    "{name} {} is the same file as {other} ({}): nothing was written; choose another path{}",
                    output.display(),
                    path.display(),
                    if name == "--out" { "" } else { " (--report PATH)" }
                )));
            }
        }
        Ok(())
    }
}

/// The refusal to resume or replace a run whose job file has changed.
fn changed(job: &Job, run: &RunRow, hash: &str) -> anyhow::Error {
    let short = |hash: &str| hash.get(..12).unwrap_or(hash).to_owned();
    anyhow!(
        "{} has changed since run {} of it (started {}, {}): its sha256 was {}…, it is {}… now. \
         Nothing was sent. Restore the file to resume run {}, or pass --new-run to start a new \
         run of the edited job (items that run {} finished would be sent again)",
        job.label,
        run.id.0,
        run.started_at,
        run.status,
        short(&run.job_hash),
        short(hash),
        run.id.0,
        run.id.0,
    )
}

fn counts(items: &BTreeMap<String, u64>) -> String {
    if items.is_empty() {
        return "no items".to_owned();
    }
    items
        .iter()
        .map(|(status, n)| format!("{n} {status}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn exit_code(summary: &Summary, items: &BTreeMap<String, u64>) -> u8 {
    let count = |status: ItemStatus| items.get(status.as_str()).copied().unwrap_or(0);
    if !summary.errors.is_empty() {
        exit::ERROR
    } else if summary.interrupted || summary.output_closed {
        exit::INTERRUPTED
    } else if summary.budget_reached {
        exit::BUDGET
    } else if count(ItemStatus::Deferred) > 0 {
        exit::DEFERRED
    } else if count(ItemStatus::Failed) > 0 || count(ItemStatus::Skipped) > 0 {
        exit::ITEMS_FAILED
    } else {
        exit::OK
    }
}

/// First Ctrl-C or SIGTERM: stop dispatching and give the requests in
/// flight up to `grace` to finish. Second (or the grace period over):
/// abandon them; their items stay pending for the next run.
async fn watch_signals(stop: Stop, grace: Duration, verbosity: Verbosity) {
    let say = |what: &str| {
        if verbosity != Verbosity::Quiet {
            eprintln!("keyfan: {what}");
        }
    };
    if shutdown_signal().await.is_err() {
        return;
    }
    say(&format!(
        "stopping: no new requests; waiting up to {}s for those in flight (Ctrl-C again to abandon them)",
        grace.as_secs()
    ));
    stop.graceful.cancel();
    tokio::select! {
        _ = shutdown_signal() => say("abandoning the requests in flight"),
        _ = tokio::time::sleep(grace) => say("grace period over: abandoning the requests in flight"),
    }
    stop.abort.cancel();
}

async fn shutdown_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}
