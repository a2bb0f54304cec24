//! `keyfan run`: the flags resolved into [`Settings`], [`crate::run()`]
//! with the display as its observer, and the `--json` summary.

use super::progress::Display;
use super::{Failure, RunArgs, Verbosity};
use crate::config::{Config, MissingEnv};
use crate::run::{Job, Outputs, Resume, Sample, Settings};
use anyhow::{anyhow, Context};

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
    // A rehearsal needs no real key: unset variables become placeholders.
    let missing = if args.simulate {
        MissingEnv::Placeholder
    } else {
        MissingEnv::Error
    };
    let config = super::load_config(&args.config, missing)?;
    let json = args.json;
    let settings = Settings::resolve(args, config)?;
    let outcome = crate::run(settings, Display::new(verbosity))
        .await
        .map_err(|e| Failure {
            code: e.exit_code(),
            error: e.into(),
        })?;
    let code = outcome.exit_code();
    if json {
        let Outputs {
            target,
            state,
            report_json,
            report_html,
            ..
        } = &outcome.outputs;
        let json = serde_json::json!({
            "run": outcome.run.0,
            "simulated": outcome.simulated,
            "status": outcome.status,
            "elapsed_s": outcome.elapsed_s,
            "items": outcome
                .items
                .iter()
                .map(|(status, n)| (status.as_str(), n))
                .collect::<std::collections::BTreeMap<_, _>>(),
            "results": target.to_string(),
            "report": report_json.display().to_string(),
            "report_html": report_html.display().to_string(),
            "state": state.display().to_string(),
            "sample": outcome.sample,
            "exit_code": code,
        });
        println!("{json}");
    }
    Ok(code)
}

impl Settings {
    /// The run's settings: each flag given wins over the config's value,
    /// and each output not given goes to its default place.
    fn resolve(args: RunArgs, config: Config) -> Result<Settings, Failure> {
        let job = Job::open(&args.job).context("failed to read the job from standard input")?;
        let mut outputs = Outputs {
            format: args.out_format,
            ..Outputs::pick(
                &job,
                args.out.as_deref(),
                args.state
                    .or_else(|| config.state.as_ref().map(|s| s.as_arg())),
                args.report.as_deref(),
                args.simulate,
            )
        };
        match &mut outputs.shared {
            Some(shared) => {
                shared.join = args.join;
                shared.lease = std::time::Duration::from_secs_f64(args.lease);
            }
            None if args.join => {
                return Err(Failure::usage(anyhow!(
                    "--join works a run several hosts share: it needs --state postgres://…"
                )))
            }
            None => {}
        }
        let resume = match (args.new_run, args.retry_failed) {
            (true, _) => Resume::Fresh,
            (false, true) => Resume::RetryFailed,
            (false, false) => Resume::Continue,
        };
        Ok(Settings {
            job,
            strategy: args.strategy.unwrap_or(config.strategy),
            concurrency: args.concurrency.unwrap_or(config.concurrency),
            config,
            config_path: args.config,
            outputs,
            simulate: args.simulate,
            offline: args.offline,
            skip_invalid: args.skip_invalid,
            resume,
            group: args.group,
            max_cost: args.max_cost,
            sample: args.sample.map(|items| Sample {
                items,
                seed: args.sample_seed,
            }),
            stop_on_signals: true,
            batch: args.batch.then_some(crate::batch::BatchSettings {
                max_requests: args.batch_size,
                max_bytes: args.batch_bytes,
                max_tokens: args.batch_tokens,
                online_fallback: args.online_fallback,
            }),
        })
    }
}
