//! `keyfan batches list|status|cancel`: the provider batches a state file
//! records. `list` reads the state file only; `status` and `cancel` ask the
//! providers with the config's keys.

use super::{exit, open_state, print_json, BatchesArgs, BatchesCommand, Failure};
use crate::batch::store::all;
use crate::batch::{BatchRow, Stage};
use crate::config::{Config, MissingEnv};
use crate::provider::batch::BatchJob;
use crate::run::Clients;
use crate::types::AccountId;
use anyhow::anyhow;
use serde::Serialize;

pub(super) async fn run(args: BatchesArgs) -> Result<u8, Failure> {
    let Some(state) = &args.state else {
        return Err(Failure::usage(anyhow!(
            "--state is required: the state file of your `run --batch` runs"
        )));
    };
    let store = open_state(state)?;
    let batches = all(&store, None)?;
    drop(store);
    match args.command {
        BatchesCommand::List => list(&batches, args.json),
        BatchesCommand::Status => {
            let config = config(&args.config)?;
            status(&config, &batches, args.json).await
        }
        BatchesCommand::Cancel { batch } => {
            let config = config(&args.config)?;
            let Some(row) = batches
                .iter()
                .find(|b| b.display_name == batch || b.name.as_deref() == Some(&batch))
            else {
                return Err(Failure::usage(anyhow!(
                    "{} records no batch named {batch}",
                    state.display()
                )));
            };
            let clients = Clients::new(&config)?;
            crate::batch::cancel(&config, &clients, row)
                .await
                .map_err(|e| anyhow!("cancelling batch {}: {e}", row.display_name))?;
            eprintln!(
                "keyfan: asked account {} to cancel batch {}: the next `run --batch` collects \
                 what it finished and puts the rest back to pending",
                row.account, row.display_name
            );
            Ok(exit::OK)
        }
    }
}

fn config(path: &std::path::Path) -> Result<Config, Failure> {
    super::load_config(path, MissingEnv::Error)
}

/// A batch's age (open) or duration (ended), as `3h12m`.
fn age(batch: &BatchRow) -> String {
    super::progress::duration(std::time::Duration::from_secs(batch.duration_s() as u64))
}

fn list(batches: &[BatchRow], json: bool) -> Result<u8, Failure> {
    if json {
        print_json(&batches)?;
        return Ok(exit::OK);
    }
    if batches.is_empty() {
        println!("no batches recorded");
        return Ok(exit::OK);
    }
    println!(
        "{:>4}  {:<28} {:<11} {:>7} {:>8}  {:<14} {:<20} provider id",
        "run", "batch", "stage", "items", "age", "account", "model"
    );
    for b in batches {
        println!(
            "{:>4}  {:<28} {:<11} {:>7} {:>8}  {:<14} {:<20} {}",
            b.run.0,
            b.display_name,
            b.stage,
            b.items,
            age(b),
            b.account,
            b.model,
            b.name.as_deref().unwrap_or("-")
        );
        if let Some(error) = &b.error {
            println!("      {error}");
        }
        if b.unknown_keys > 0 {
            println!(
                "      {} result line(s) with unknown keys: {}",
                b.unknown_keys,
                b.unknown_first.as_deref().unwrap_or_default()
            );
        }
    }
    Ok(exit::OK)
}

/// One open batch as its provider sees it.
#[derive(Serialize)]
struct Seen<'a> {
    batch: &'a BatchRow,
    provider: Option<Provider>,
    error: Option<String>,
}

#[derive(Serialize)]
struct Provider {
    state: String,
    total: u64,
    succeeded: u64,
    failed: u64,
}

impl From<BatchJob> for Provider {
    fn from(job: BatchJob) -> Provider {
        Provider {
            state: Stage::Provider(job.state).as_str().to_owned(),
            total: job.total,
            succeeded: job.succeeded,
            failed: job.failed,
        }
    }
}

async fn status(config: &Config, batches: &[BatchRow], json: bool) -> Result<u8, Failure> {
    let clients = Clients::new(config)?;
    let mut seen = Vec::new();
    for batch in batches.iter().filter(|b| b.stage.is_open()) {
        let account = config.accounts.iter().position(|a| a.name == batch.account);
        let (provider, error) = match (account, &batch.name) {
            (None, _) => (
                None,
                Some(format!("the config has no account {}", batch.account)),
            ),
            (_, None) => (
                None,
                Some("not confirmed yet: the next run looks for it".into()),
            ),
            (Some(index), Some(name)) => {
                let keys = &config.accounts[index].keys;
                let key = keys
                    .iter()
                    .find(|k| k.key.fingerprint() == batch.key)
                    .or(keys.first());
                match key {
                    None => (None, Some(format!("account {} has no key", batch.account))),
                    Some(key) => match clients
                        .get(AccountId(index))
                        .get_batch(&key.key, name)
                        .await
                    {
                        Ok(job) => (Some(Provider::from(job)), None),
                        Err(e) => (None, Some(e.message)),
                    },
                }
            }
        };
        seen.push(Seen {
            batch,
            provider,
            error,
        });
    }
    if json {
        print_json(&seen)?;
        return Ok(exit::OK);
    }
    if seen.is_empty() {
        println!("no open batches");
        return Ok(exit::OK);
    }
    println!(
        "{:<28} {:<14} {:>8}  {:<10} {:>7} {:>9} {:>7}",
        "batch", "account", "age", "state", "total", "succeeded", "failed"
    );
    for s in &seen {
        match (&s.provider, &s.error) {
            (Some(p), _) => println!(
                "{:<28} {:<14} {:>8}  {:<10} {:>7} {:>9} {:>7}",
                s.batch.display_name,
                s.batch.account,
                age(s.batch),
                p.state,
                p.total,
                p.succeeded,
                p.failed
            ),
            (None, error) => println!(
                "{:<28} {:<14} {:>8}  {}",
                s.batch.display_name,
                s.batch.account,
                age(s.batch),
                error.as_deref().unwrap_or_default()
            ),
        }
    }
    Ok(exit::OK)
}
