//! `keyfan run`: validate, (optionally) start the simulator, run, report.

use super::progress::Display;
use super::{exit, scrubber, Failure, RunArgs, Verbosity};
use crate::config::{Config, MissingEnv};
use crate::job;
use crate::pool::{Pool, PoolError, RetryPolicy};
use crate::report::Report;
use crate::run::{self, Budget, Options, Recording, ResumePolicy, Start, Stop, Summary};
use crate::sim::{SimConfig, SimServer};
use crate::sink::{Sink, Target};
use crate::store::{ItemStatus, LockError, RunLock, Store};
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
    if args.json && args.out.as_deref() == Some("-") {
        return Err(Failure::usage(anyhow!(
            "--json and --out - both want standard output: choose one"
        )));
    }
    // A rehearsal needs no real key: unset variables become placeholders.
    let missing = if args.simulate {
        MissingEnv::Placeholder
    } else {
        MissingEnv::Error
    };
    let mut config = Config::load(&args.config, |name| std::env::var(name).ok(), missing)
        .map_err(Failure::usage)?;
    let validation = job::validate(&args.job).map_err(Failure::usage)?;
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
                args.job.display(),
                validation.error_count
            )));
        }
    }

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

    let target = Target::parse(
        &args
            .out
            .unwrap_or_else(|| beside(&args.job, "results.jsonl").display().to_string()),
    );
    let state = args.state.unwrap_or_else(|| {
        beside(
            &args.job,
            if args.simulate {
                "simulated.db"
            } else {
                "keyfan.db"
            },
        )
    });
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
    let store = Store::open(&state)?;
    run::seed_from_ledger(&pool, &store)?;
    let mut sink = Sink::create(&target).with_context(|| format!("failed to create {target}"))?;
    let Start {
        run: run_id,
        resumed,
        done,
    } = run::start(
        &store,
        &mut sink,
        &args.job.display().to_string(),
        &validation.content_hash,
        args.simulate,
        ResumePolicy {
            new_run: args.new_run,
            retry_failed: args.retry_failed,
        },
    )?;
    let to_do = (validation.items + validation.error_count).saturating_sub(done.len() as u64);
    if resumed && verbosity != Verbosity::Quiet {
        eprintln!(
            "keyfan: resuming run {} of {}: {} item(s) already finished, {to_do} to go (--new-run starts afresh)",
            run_id.0,
            args.job.display(),
            done.len()
        );
    }
    let display = Display::new(verbosity, to_do, Arc::clone(&pool));

    let stop = Stop::default();
    let signals = tokio::spawn(watch_signals(stop.clone(), config.timeout, verbosity));
    let options = Options {
        job: args.job.clone(),
        total: to_do,
        concurrency: args.concurrency.unwrap_or(config.concurrency).max(1),
        policy: RetryPolicy {
            max_retries: config.max_retries,
            deadline: config.item_deadline,
            ..RetryPolicy::default()
        },
        default_model: config.model.clone(),
        done: Arc::new(done),
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
    let status = if summary.interrupted {
        "interrupted"
    } else if summary.budget_reached {
        "stopped at --max-cost"
    } else {
        "done"
    };
    store.finish_run(run_id, status)?;

    let report = Report::build(&store, run_id)?;
    let report_md = beside(&args.job, "report.md");
    let report_json = beside(&args.job, "report.json");
    std::fs::write(&report_md, report.to_markdown())
        .with_context(|| format!("failed to write {}", report_md.display()))?;
    std::fs::write(&report_json, report.to_json())
        .with_context(|| format!("failed to write {}", report_json.display()))?;
    if let Some(server) = simulator {
        server.shutdown().await;
    }

    // The whole run's items, this invocation's and earlier ones'.
    let items: BTreeMap<String, u64> = store.status_counts(run_id)?.into_iter().collect();
    let code = exit_code(&summary, &items);
    if verbosity != Verbosity::Quiet {
        eprintln!(
            "keyfan: {}run {} {status} in {:.1}s: {}",
            if args.simulate { "SIMULATED " } else { "" },
            run_id.0,
            summary.elapsed.as_secs_f64(),
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
            "status": status,
            "elapsed_s": summary.elapsed.as_secs_f64(),
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

/// `jobs/demo.jsonl` + `results.jsonl` → `jobs/demo.results.jsonl`.
fn beside(job: &Path, suffix: &str) -> PathBuf {
    job.with_extension(suffix)
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
    if summary.interrupted {
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
