//! `keyfan keys check` and `keyfan keys status`.

use super::{exit, open_state, print_json, scrubber, Failure, KeysArgs, KeysCommand, Verbosity};
use crate::config::{Config, MissingEnv};
use crate::pool::{pacific_day, provider_for};
use crate::provider::{self, ErrorClass, ProviderKind};
use anyhow::Context;
use serde::Serialize;
use std::time::Instant;

/// One row of `keys check`.
#[derive(Debug, Serialize)]
struct Check {
    key: String,
    account: String,
    status: &'static str,
    latency_ms: u64,
    detail: Option<String>,
}

pub(super) async fn run(args: KeysArgs, _verbosity: Verbosity) -> Result<u8, Failure> {
    let config = Config::load(
        &args.config,
        |name| std::env::var(name).ok(),
        MissingEnv::Error,
    )
    .map_err(Failure::usage)?;
    match args.command {
        KeysCommand::Check { json } => check(&config, json).await,
        KeysCommand::Status { state, json } => status(&config, &state, json),
    }
}

/// One free request per key (Gemini's countTokens on the default model,
/// OpenAI's model list): it proves the key, the API and the account's access.
async fn check(config: &Config, json: bool) -> Result<u8, Failure> {
    let gemini_model = if provider_for(&config.model) == ProviderKind::Gemini {
        config.model.as_str()
    } else {
        "gemini-2.5-flash"
    };
    // The provider scrubs each key from its own errors; this scrubs every
    // configured key from every detail.
    let scrub = scrubber(config);
    let mut checks = Vec::new();
    for account in &config.accounts {
        let client = provider::Client::new(
            account.provider,
            &config.providers[&account.provider].base_url,
            config.timeout,
            account.proxy.as_deref(),
        )
        .context("failed to build the HTTP client")?;
        for key in &account.keys {
            let started = Instant::now();
            let result = client.check(&key.key, gemini_model).await;
            let latency_ms = started.elapsed().as_millis() as u64;
            let (status, detail) = match result {
                Ok(()) => ("ok", None),
                Err(e) => {
                    let status = match &e.class {
                        // The key itself is wrong, as opposed to a valid key
                        // without access (API disabled, no permission,
                        // billing). A 401 means the server did not accept the
                        // credential, whatever its body says: OpenAI-compatible
                        // servers answer a wrong key with a 401 of any shape.
                        ErrorClass::KeyInvalid { reason }
                            if e.status == Some(401)
                                || matches!(
                                    reason.as_str(),
                                    "API_KEY_INVALID" | "invalid_api_key"
                                ) =>
                        {
                            "invalid"
                        }
                        ErrorClass::KeyInvalid { .. } => "no access",
                        ErrorClass::RateLimited { .. } => "rate limited",
                        _ => "error",
                    };
                    let mut detail = e.message;
                    scrub.clean(&mut detail);
                    (status, Some(detail))
                }
            };
            checks.push(Check {
                key: key.key.fingerprint().to_owned(),
                account: account.name.clone(),
                status,
                latency_ms,
                detail,
            });
        }
    }
    if json {
        print_json(&checks)?;
    } else {
        println!(
            "{:<14} {:<16} {:<12} {:>8}  detail",
            "key", "account", "status", "ms"
        );
        for c in &checks {
            println!(
                "{:<14} {:<16} {:<12} {:>8}  {}",
                c.key,
                c.account,
                c.status,
                c.latency_ms,
                c.detail.as_deref().unwrap_or("")
            );
        }
    }
    let all_ok = checks
        .iter()
        .all(|c| matches!(c.status, "ok" | "unchecked"));
    Ok(if all_ok { exit::OK } else { exit::ITEMS_FAILED })
}

/// One row of `keys status`: an account's use of a model today.
#[derive(Debug, Serialize)]
struct ModelUsage {
    account: String,
    model: String,
    requests: u64,
    rpd: Option<u32>,
    input_tokens: u64,
    cost_usd: f64,
}

/// One row of `keys status`: a key's last known state.
#[derive(Debug, Serialize)]
struct KeyStatus {
    key: String,
    account: String,
    state: String,
    reason: Option<String>,
    since: Option<String>,
}

/// Today's usage per account and model against the configured limits, and
/// each key's last known state, from the state file.
fn status(config: &Config, state: &std::path::Path, json: bool) -> Result<u8, Failure> {
    let store = open_state(state)?;
    let day = pacific_day(chrono::Utc::now()).to_string();
    let ledger = store.ledger(&day)?;
    let known = store.keys()?;
    let mut usage = Vec::new();
    for account in &config.accounts {
        let mut models: Vec<&str> = account.limits.keys().map(String::as_str).collect();
        for l in ledger.iter().filter(|l| l.account == account.name) {
            if !models.contains(&l.model.as_str()) {
                models.push(&l.model);
            }
        }
        for model in models {
            let used = ledger
                .iter()
                .find(|l| l.account == account.name && l.model == model);
            usage.push(ModelUsage {
                account: account.name.clone(),
                model: model.to_owned(),
                requests: used.map_or(0, |l| l.requests),
                rpd: account.limits.get(model).and_then(|l| l.rpd),
                input_tokens: used.map_or(0, |l| l.input_tokens),
                cost_usd: used.map_or(0.0, |l| l.cost_usd),
            });
        }
    }
    let keys: Vec<KeyStatus> = config
        .accounts
        .iter()
        .flat_map(|a| a.keys.iter().map(move |k| (a, k)))
        .map(|(account, key)| {
            let row = known.iter().find(|r| r.key == key.key.fingerprint());
            KeyStatus {
                key: key.key.fingerprint().to_owned(),
                account: account.name.clone(),
                state: row.map_or_else(|| "unused".to_owned(), |r| r.state.clone()),
                reason: row.and_then(|r| r.reason.clone()),
                since: row.map(|r| r.updated_at.clone()),
            }
        })
        .collect();
    if json {
        print_json(&serde_json::json!({"day": day, "usage": usage, "keys": keys}))?;
        return Ok(exit::OK);
    }
    println!("Usage on {day} (US/Pacific day):");
    println!(
        "{:<16} {:<24} {:>10} {:>10} {:>14} {:>10}",
        "account", "model", "requests", "rpd", "input tokens", "cost USD"
    );
    for u in &usage {
        println!(
            "{:<16} {:<24} {:>10} {:>10} {:>14} {:>10.4}",
            u.account,
            u.model,
            u.requests,
            u.rpd.map_or("-".into(), |v| v.to_string()),
            u.input_tokens,
            u.cost_usd,
        );
    }
    println!("\nKeys:");
    for k in &keys {
        println!(
            "{:<14} {:<16} {:<9} {}",
            k.key,
            k.account,
            k.state,
            k.reason.as_deref().unwrap_or_default()
        );
    }
    Ok(exit::OK)
}
