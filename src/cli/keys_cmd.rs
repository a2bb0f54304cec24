//! `keyfan keys check` and `keyfan keys status`.

use super::{exit, open_state, print_json, Failure, KeysArgs, KeysCommand, Verbosity};
use crate::config::{Config, MissingEnv};
use crate::provider::{self, ErrorClass, ProviderKind};
use crate::run::scrubber;
use crate::types::QuotaDay;
use anyhow::Context;
use serde::Serialize;
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Instant;

/// What `keys check` found of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyCheck {
    /// It answered.
    Ok,
    /// The key itself is wrong.
    Invalid,
    /// A valid key without access (API disabled, no permission, billing).
    NoAccess,
    /// The account is out of quota just now.
    RateLimited,
    /// Anything else (network, 5xx).
    Error,
}

impl KeyCheck {
    /// The result of a check that failed with `error`.
    fn of(error: &provider::ApiError) -> KeyCheck {
        match &error.class {
            // A 401 means the server did not accept the credential, whatever
            // its body says: OpenAI-compatible servers answer a wrong key
            // with a 401 of any shape.
            ErrorClass::KeyInvalid { reason }
                if error.status == Some(401)
                    || matches!(reason.as_str(), "API_KEY_INVALID" | "invalid_api_key") =>
            {
                KeyCheck::Invalid
            }
            ErrorClass::KeyInvalid { .. } => KeyCheck::NoAccess,
            ErrorClass::RateLimited { .. } => KeyCheck::RateLimited,
            _ => KeyCheck::Error,
        }
    }

    /// The result as printed.
    fn as_str(self) -> &'static str {
        match self {
            KeyCheck::Ok => "ok",
            KeyCheck::Invalid => "invalid",
            KeyCheck::NoAccess => "no access",
            KeyCheck::RateLimited => "rate limited",
            KeyCheck::Error => "error",
        }
    }
}

impl Serialize for KeyCheck {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One row of `keys check`.
#[derive(Debug, Serialize)]
struct Check {
    key: String,
    account: String,
    status: KeyCheck,
    latency_ms: u64,
    detail: Option<String>,
}

pub(super) async fn run(args: KeysArgs, _verbosity: Verbosity) -> Result<u8, Failure> {
    match args.command {
        KeysCommand::Check { json } => {
            let config = Config::load(
                &args.config,
                |name| std::env::var(name).ok(),
                MissingEnv::Error,
            )
            .map_err(Failure::usage)?;
            check(&config, json).await
        }
        KeysCommand::Status {
            state,
            simulate,
            json,
        } => status(&args.config, simulate, &state, json),
    }
}

/// One free request per key (Gemini's countTokens on the default model,
/// OpenAI's and Anthropic's model lists): it proves the key, the API and the
/// account's access.
async fn check(config: &Config, json: bool) -> Result<u8, Failure> {
    let gemini_model = if ProviderKind::implied_by(&config.model) == ProviderKind::Gemini {
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
                Ok(()) => (KeyCheck::Ok, None),
                Err(e) => {
                    let status = KeyCheck::of(&e);
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
                c.status.as_str(),
                c.latency_ms,
                c.detail.as_deref().unwrap_or("")
            );
        }
    }
    let all_ok = checks.iter().all(|c| c.status == KeyCheck::Ok);
    Ok(if all_ok { exit::OK } else { exit::ITEMS_FAILED })
}

/// One row of `keys status`: a key's last known state.
#[derive(Debug, Serialize)]
struct KeyStatus {
    key: String,
    account: String,
    /// A [`crate::store::KeyState`], or `unused` for a configured key the
    /// state file does not know.
    state: &'static str,
    reason: Option<String>,
    since: Option<String>,
}

/// What `keys status` knows of the config: none when the file does not
/// exist, and each key's fingerprint only when it can be computed (every
/// key variable set, or placeholders under `--simulate`).
struct StatusConfig {
    config: Option<Config>,
    keys_known: bool,
}

/// Loads the config for `keys status`, which needs no key: limits come from
/// it when it exists, and its keys' fingerprints when they are known. Under
/// `simulate`, unset variables become the placeholders a `run --simulate`
/// used, so the fingerprints match a simulated run's state file.
fn status_config(path: &Path, simulate: bool) -> Result<StatusConfig, Failure> {
    if !path.exists() {
        eprintln!(
            "keyfan: {} does not exist: showing the state file alone, without limits",
            path.display()
        );
        return Ok(StatusConfig {
            config: None,
            keys_known: false,
        });
    }
    let unset = RefCell::new(BTreeSet::new());
    let env = |name: &str| {
        let value = std::env::var(name).ok();
        if value.is_none() {
            unset.borrow_mut().insert(name.to_owned());
        }
        value
    };
    let config = Config::load(path, env, MissingEnv::Placeholder).map_err(Failure::usage)?;
    let unset = unset.into_inner();
    let keys_known = simulate || unset.is_empty();
    if !keys_known {
        eprintln!(
            "keyfan: {} not set: listing the keys the state file knows (--simulate for a simulated run's keys)",
            unset.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    Ok(StatusConfig {
        config: Some(config),
        keys_known,
    })
}

/// Today's usage per account and model (the ledger, with the config's
/// limits when it loads), and each key's last known state, from the state
/// file. No key is needed: the state file holds fingerprints.
fn status(config: &Path, simulate: bool, state: &Path, json: bool) -> Result<u8, Failure> {
    let store = open_state(state)?;
    let StatusConfig { config, keys_known } = status_config(config, simulate)?;
    let accounts = config.as_ref().map_or(&[][..], |c| c.accounts.as_slice());
    let day = QuotaDay::today();
    let ledger = store.ledger(day)?;
    let usage = crate::report::quota_usage(&ledger, accounts);
    // Every key the state file knows, then the config's keys it does not.
    let mut keys: Vec<KeyStatus> = store
        .keys()?
        .into_iter()
        .map(|r| KeyStatus {
            key: r.key,
            account: r.account,
            state: r.state.as_str(),
            reason: r.reason,
            since: Some(r.updated_at),
        })
        .collect();
    if keys_known {
        for account in accounts {
            for key in &account.keys {
                let fingerprint = key.key.fingerprint();
                if !keys.iter().any(|k| k.key == fingerprint) {
                    keys.push(KeyStatus {
                        key: fingerprint.to_owned(),
                        account: account.name.clone(),
                        state: "unused",
                        reason: None,
                        since: None,
                    });
                }
            }
        }
    }
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
            "{:<16} {:<24} {:>10} {:>10} {:>14} {:>10}",
            u.account,
            u.model,
            u.requests,
            u.rpd.map_or("-".into(), |v| v.to_string()),
            u.input_tokens,
            crate::report::usd(u.cost_usd, 4),
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
