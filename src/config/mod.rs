//! The config file (`config.yaml`): providers, accounts with their keys and
//! per-model limits, and run defaults. Loading expands `${ENV_VAR}` in keys
//! and validates everything, naming the file and the field path of each
//! mistake (`accounts[1].keys[0]`).
//!
//! Owns: the config schema, `${ENV_VAR}` expansion and validation. Never: I/O
//! beyond reading the one file and the variables it names, the network, or
//! a key in any message.
//!
//! serde_yaml is confined to this module and `job`, so a later swap of YAML
//! crate touches only them.
//!
//! Loading runs in two stages. `raw` deserializes the file as written,
//! rejecting unknown fields and checking each field on its own inside serde,
//! so those errors carry serde_yaml's field path, line and column. Then
//! [`Config::parse`] expands keys and checks what spans fields (duplicate
//! names and keys), naming the field path.
//!
//! No error ever contains a key: keys are named by their field path and, for
//! duplicates, by [`ApiKey::fingerprint`].

mod env;
mod raw;
#[cfg(test)]
mod tests;

use crate::pool::Strategy;
use crate::price::{Long, Price, PriceEntry, PriceTable};
pub use crate::types::Limits;
use crate::types::{ApiKey, ModelRoute, ProviderKind};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A validated config.
#[derive(Debug, Clone)]
pub struct Config {
    /// Base URL per provider; every provider has an entry (built-in default
    /// or overridden).
    pub providers: BTreeMap<ProviderKind, ProviderConfig>,
    /// Accounts (Google Cloud projects, OpenAI organisations) in file order.
    pub accounts: Vec<AccountConfig>,
    /// Default model for items that name none.
    pub model: String,
    /// Default number of requests in flight.
    pub concurrency: usize,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Retries per item after its first attempt (transient failures).
    pub max_retries: u32,
    /// Give up on an item this long after its first attempt.
    pub item_deadline: Option<Duration>,
    /// How the pool chooses among keys with room.
    pub strategy: Strategy,
    /// Key groups in priority order: while any key of the first group has
    /// room, only its keys are used; when none has, the next group's are.
    /// Groups not listed come after the listed ones, in order of first use.
    pub groups: Vec<String>,
    /// The output cap sent to an API that requires one (Anthropic's
    /// `max_tokens`) for an item that gives none; also the output an
    /// output-tokens-per-minute limit admits such an item with.
    pub default_max_output_tokens: u32,
    /// Model names mapped to a provider and the name it knows the model by
    /// (`models: {my-alias: {provider: anthropic, name: claude-...}}`).
    pub models: BTreeMap<String, ModelRoute>,
    /// Model prices: the built-in table with `prices:` over it.
    pub prices: PriceTable,
    /// Output tokens an item is expected to produce, for `keyfan estimate`.
    pub expected_output_tokens: Option<u32>,
    /// The most an item's worst case may cost (USD); a costlier item is
    /// refused before anything is sent.
    pub max_cost_per_item: Option<f64>,
    /// How media items are sent (`media:`).
    pub media: MediaConfig,
    /// Where runs keep their state (`state:`, `${ENV}` expanded) when
    /// `--state` names none.
    pub state: Option<StateSetting>,
}

/// The config's `state:`: a SQLite file, or `postgres://…`, the state
/// several hosts share. Shown (`Debug`) without a password.
#[derive(Clone, PartialEq, Eq)]
pub struct StateSetting(String);

impl StateSetting {
    /// The setting as `--state` takes it.
    pub fn as_arg(&self) -> PathBuf {
        PathBuf::from(&self.0)
    }
}

impl std::fmt::Debug for StateSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match crate::store::postgres::PgUrl::parse(&self.0) {
            Some(url) => write!(f, "StateSetting({url})"),
            None => write!(f, "StateSetting({:?})", self.0),
        }
    }
}

/// How media items are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaConfig {
    /// A request whose media (base64-encoded) and text come to less than
    /// this many bytes carries its files inline; larger ones are uploaded
    /// through the Files API.
    pub inline_max_bytes: u64,
    /// The first wait between two polls of an uploaded file still
    /// processing; each next wait doubles.
    pub poll: Duration,
    /// Leave the run's uploads in the Files API (and in the state file,
    /// for later runs) instead of deleting them after the run.
    pub keep_uploads: bool,
    /// What an item pinned to an account that cannot serve does.
    pub on_unavailable: OnUnavailable,
    /// Uploads in flight at most.
    pub upload_concurrency: usize,
}

/// What an item does when the account holding its uploaded file cannot
/// serve it (its day quota is spent, or all its keys are refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnUnavailable {
    /// Waits for that account: the item is deferred to a run after its
    /// quota resets.
    Wait,
    /// Goes to another account with room, which uploads the file.
    #[default]
    Reupload,
}

impl OnUnavailable {
    /// The name the config gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            OnUnavailable::Wait => "wait",
            OnUnavailable::Reupload => "reupload",
        }
    }
}

/// Uploads in flight at most by default: a few large transfers share a
/// link better than many.
pub const DEFAULT_UPLOAD_CONCURRENCY: usize = 4;

/// Gemini's inline payload limit: "we are increasing the maximum payload
/// size for inline data from 20MB to 100MB (base64 encoded ...)", 2026-01-12
/// (https://blog.google/innovation-and-ai/technology/developers-tools/gemini-api-new-file-limits).
pub const DEFAULT_INLINE_MAX_BYTES: u64 = 100 * 1000 * 1000;

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            inline_max_bytes: DEFAULT_INLINE_MAX_BYTES,
            // The docs' sample polls every 5 s; most small files are ready sooner.
            poll: Duration::from_secs(1),
            keep_uploads: false,
            on_unavailable: OnUnavailable::default(),
            upload_concurrency: DEFAULT_UPLOAD_CONCURRENCY,
        }
    }
}

/// Where a provider is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderConfig {
    /// e.g. `https://generativelanguage.googleapis.com`, or a simulator, proxy or gateway.
    pub base_url: String,
}

/// An account owns quota; all its keys share it.
#[derive(Debug, Clone)]
pub struct AccountConfig {
    /// Unique name, used in reports and the ledger.
    pub name: String,
    /// Which API the account's keys are for.
    pub provider: ProviderKind,
    /// The account's keys, at least one.
    pub keys: Vec<KeyConfig>,
    /// Per-model limits; a model not listed has no configured limit.
    pub limits: BTreeMap<String, Limits>,
    /// Optional egress HTTP(S) proxy for this account's requests.
    pub proxy: Option<String>,
}

/// One key of an account.
#[derive(Debug, Clone)]
pub struct KeyConfig {
    /// The key (expanded from `${ENV}` when written so).
    pub key: ApiKey,
    /// Relative share for the `weighted` strategy (default 1).
    pub weight: u32,
    /// Optional group name (default `default`).
    pub group: String,
}

/// What to do with a `${VAR}` that is not set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingEnv {
    /// An error naming the variable (real runs).
    Error,
    /// Substitute a placeholder key `sim-<account>-<n>` (rehearsals against
    /// the simulator, which need no real key).
    Placeholder,
}

/// Why a config could not be loaded. Every message starts with the file's
/// path; none contains a key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file does not exist.
    #[error(
        "config {} does not exist: start from the example (`cp config.example.yaml config.yaml`, \
         then list your accounts) or pass --config FILE",
        path.display()
    )]
    Missing {
        /// The config file.
        path: PathBuf,
    },
    /// The file could not be read.
    #[error("failed to read config {}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Not YAML, or not the config's shape (unknown field, wrong type, a
    /// field-local check failed). The message is serde_yaml's, with its field
    /// path, line and column; quoted string values are redacted from it,
    /// because a misplaced key would otherwise be echoed.
    #[error("{}: {message}", path.display())]
    Syntax {
        /// The config file.
        path: PathBuf,
        /// serde_yaml's message, redacted.
        message: String,
    },
    /// Well-formed, but a check across fields failed.
    #[error("{}: {field}: {reason}", path.display())]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// Field path, e.g. `accounts[0].keys[1]`.
        field: String,
        /// What is wrong, as a lowercase fragment.
        reason: String,
    },
}

/// Defaults for fields the file may omit.
const DEFAULT_MODEL: &str = "gemini-2.5-flash";
const DEFAULT_CONCURRENCY: usize = 8;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_MAX_RETRIES: u32 = 5;
const DEFAULT_GROUP: &str = "default";

/// The most requests in flight a run accepts (`concurrency`, `-j`): far
/// above what any set of quotas serves, and low enough that the workers and
/// their buffers stay small.
pub const MAX_CONCURRENCY: usize = 10_000;

/// Every provider, so each gets a `providers` entry. Adding a variant to
/// [`ProviderKind`] breaks the exhaustive match in [`default_base_url`], which
/// is the reminder to list it here too.
const ALL_PROVIDERS: [ProviderKind; 3] = [
    ProviderKind::Gemini,
    ProviderKind::Openai,
    ProviderKind::Anthropic,
];

/// The public endpoint of each provider.
fn default_base_url(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::Gemini => "https://generativelanguage.googleapis.com",
        ProviderKind::Openai => "https://api.openai.com",
        ProviderKind::Anthropic => "https://api.anthropic.com",
    }
}

impl Config {
    /// Reads and validates `path`; `env` looks up environment variables
    /// (inject `|k| std::env::var(k).ok()` in production, a map in tests).
    pub fn load(
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
        missing: MissingEnv,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ConfigError::Missing {
                    path: path.to_owned(),
                }
            } else {
                ConfigError::Read {
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
        Config::parse(&text, path, env, missing)
    }

    /// Validates config `text`; `origin` is the path named in errors.
    pub fn parse(
        text: &str,
        origin: &Path,
        env: impl Fn(&str) -> Option<String>,
        missing: MissingEnv,
    ) -> Result<Config, ConfigError> {
        let raw: raw::RawConfig =
            serde_yaml::from_str(text).map_err(|err| ConfigError::Syntax {
                path: origin.to_owned(),
                message: redact_strings(&err.to_string()),
            })?;
        let invalid = |field: String, reason: String| ConfigError::Invalid {
            path: origin.to_owned(),
            field,
            reason,
        };

        let mut providers = raw.providers;
        let providers = ALL_PROVIDERS
            .into_iter()
            .map(|kind| {
                let base_url = providers
                    .remove(&kind)
                    .map_or_else(|| default_base_url(kind).to_owned(), |p| p.base_url.0);
                (kind, ProviderConfig { base_url })
            })
            .collect();

        if raw.accounts.is_empty() {
            return Err(invalid(
                "accounts".to_owned(),
                "at least one account is required".to_owned(),
            ));
        }
        // Account name and key → where first seen, to name both places.
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut seen_keys: HashMap<ApiKey, String> = HashMap::new();
        let mut accounts = Vec::with_capacity(raw.accounts.len());
        for (a, account) in raw.accounts.into_iter().enumerate() {
            let name = account.name.0;
            if let Some(first) = names.insert(name.clone(), a) {
                return Err(invalid(
                    format!("accounts[{a}].name"),
                    format!("duplicate account name `{name}`, also used by accounts[{first}]"),
                ));
            }
            if account.keys.is_empty() {
                return Err(invalid(
                    format!("accounts[{a}].keys"),
                    "at least one key is required".to_owned(),
                ));
            }
            let mut keys = Vec::with_capacity(account.keys.len());
            for (k, raw_key) in account.keys.into_iter().enumerate() {
                let field = format!("accounts[{a}].keys[{k}]");
                let secret = match env::expand(&raw_key.template, &env) {
                    Ok(secret) => secret,
                    Err(env::ExpandError::Missing(_)) if missing == MissingEnv::Placeholder => {
                        format!("sim-{name}-{}", k + 1)
                    }
                    Err(env::ExpandError::Missing(var)) => {
                        return Err(invalid(
                            field,
                            format!("environment variable {var} is not set"),
                        ))
                    }
                    Err(env::ExpandError::Syntax(reason)) => {
                        return Err(invalid(field, reason.to_owned()))
                    }
                };
                // A stray newline from `$(cat keyfile)` would make a valid key
                // fail as API_KEY_INVALID far from its cause.
                let secret = secret.trim();
                if secret.is_empty() {
                    return Err(invalid(field, empty_key_reason(&raw_key.template)));
                }
                if let Some(what) = unsendable(secret) {
                    return Err(invalid(
                        field,
                        format!("key contains {what}, which cannot be sent in an HTTP header"),
                    ));
                }
                let key = ApiKey::new(secret);
                if let Some(first) = seen_keys.get(&key) {
                    return Err(invalid(
                        field,
                        format!("key {key} is already listed at {first}"),
                    ));
                }
                seen_keys.insert(key.clone(), field);
                keys.push(KeyConfig {
                    key,
                    weight: raw_key.weight.0,
                    group: raw_key.group.0,
                });
            }
            accounts.push(AccountConfig {
                name,
                provider: account.provider.unwrap_or(ProviderKind::Gemini),
                keys,
                limits: account
                    .limits
                    .into_iter()
                    .map(|(model, l)| {
                        let limits = Limits {
                            rpm: l.rpm.map(|v| v.0),
                            tpm: l.tpm.map(|v| v.0),
                            otpm: l.otpm.map(|v| v.0),
                            rpd: l.rpd.map(|v| v.0),
                        };
                        (model, limits)
                    })
                    .collect(),
                proxy: account.proxy.map(|p| p.0),
            });
        }

        let mut groups: Vec<String> = Vec::new();
        for (g, name) in raw.groups.into_iter().enumerate() {
            let name = name.0;
            let used = accounts
                .iter()
                .any(|a: &AccountConfig| a.keys.iter().any(|k| k.group == name));
            if !used {
                return Err(invalid(
                    format!("groups[{g}]"),
                    format!("no key is in group `{name}`"),
                ));
            }
            if groups.contains(&name) {
                return Err(invalid(
                    format!("groups[{g}]"),
                    format!("group `{name}` is listed twice"),
                ));
            }
            groups.push(name);
        }
        for key in accounts.iter().flat_map(|a| &a.keys) {
            if !groups.contains(&key.group) {
                groups.push(key.group.clone());
            }
        }

        let mut models = BTreeMap::new();
        for (alias, route) in raw.models {
            let provider = route.provider;
            if !accounts.iter().any(|a| a.provider == provider) {
                return Err(invalid(
                    format!("models.{}.provider", alias.0),
                    format!(
                        "no account has provider {}",
                        serde_yaml::to_string(&provider)
                            .unwrap_or_default()
                            .trim_end()
                    ),
                ));
            }
            let name = route.name.0;
            models.insert(alias.0, ModelRoute { provider, name });
        }

        let concurrency = raw.concurrency.map_or(DEFAULT_CONCURRENCY, |c| c.0);
        if concurrency > MAX_CONCURRENCY {
            return Err(invalid(
                "concurrency".to_owned(),
                format!("{concurrency} is more than the maximum, {MAX_CONCURRENCY}"),
            ));
        }

        let mut prices = PriceTable::built_in();
        for (model, p) in raw.prices {
            prices.set(PriceEntry {
                model,
                price: Price {
                    input: p.input.0,
                    output: p.output.0,
                    cached_input: p.cached_input.map_or(p.input.0, |c| c.0),
                    long: p.long.map(|l| Long {
                        above_tokens: l.above_tokens.0,
                        input: l.input.0,
                        output: l.output.0,
                        cached_input: l.cached_input.map_or(l.input.0, |c| c.0),
                    }),
                },
                source: "config".to_owned(),
                date: origin.display().to_string(),
            });
        }
        let max_cost_per_item = raw.max_cost_per_item.map(|c| c.0);
        if max_cost_per_item == Some(0.0) {
            return Err(invalid(
                "max_cost_per_item".to_owned(),
                "must be greater than 0".to_owned(),
            ));
        }

        let state = match raw.state.as_deref().map(|t| env::expand(t, &env)) {
            None => None,
            Some(Ok(state)) => Some(StateSetting(state)),
            Some(Err(env::ExpandError::Missing(var))) => {
                return Err(invalid(
                    "state".to_owned(),
                    format!("environment variable {var} is not set"),
                ))
            }
            Some(Err(env::ExpandError::Syntax(reason))) => {
                return Err(invalid("state".to_owned(), reason.to_owned()))
            }
        };
        let defaults = MediaConfig::default();
        let media = MediaConfig {
            inline_max_bytes: raw
                .media
                .inline_max_bytes
                .unwrap_or(defaults.inline_max_bytes),
            poll: raw.media.poll.map_or(defaults.poll, |d| d.0),
            keep_uploads: raw.media.keep_uploads.unwrap_or(defaults.keep_uploads),
            on_unavailable: raw.media.on_unavailable.unwrap_or(defaults.on_unavailable),
            upload_concurrency: raw
                .media
                .upload_concurrency
                .map_or(defaults.upload_concurrency, |n| n.0),
        };
        Ok(Config {
            state,
            media,
            prices,
            expected_output_tokens: raw.expected_output_tokens.map(|n| n.0),
            max_cost_per_item,
            groups,
            providers,
            accounts,
            model: raw.model.map_or_else(|| DEFAULT_MODEL.to_owned(), |m| m.0),
            concurrency,
            timeout: raw.timeout.map_or(DEFAULT_TIMEOUT, |t| t.0),
            max_retries: raw.max_retries.unwrap_or(DEFAULT_MAX_RETRIES),
            item_deadline: raw.item_deadline.map(|d| d.0),
            strategy: raw.strategy.unwrap_or_default(),
            default_max_output_tokens: raw
                .default_max_output_tokens
                .map_or(crate::provider::DEFAULT_MAX_OUTPUT_TOKENS, |n| n.0),
            models,
        })
    }

    /// The provider that serves `model` and the name it is sent as: the
    /// `models` map's entry, else the provider its name implies among those
    /// with accounts ([`ProviderKind::serving`]), under its own name. `None`
    /// when no account can serve it.
    pub fn route<'a>(&'a self, model: &'a str) -> Option<(ProviderKind, &'a str)> {
        route(&self.models, model, |p| {
            self.accounts.iter().any(|a| a.provider == p)
        })
    }
}

/// [`Config::route`] over a `models` map and which providers have accounts
/// (`configured`), for whoever keeps the map apart from the config.
pub fn route<'a>(
    models: &'a BTreeMap<String, ModelRoute>,
    model: &'a str,
    configured: impl Fn(ProviderKind) -> bool,
) -> Option<(ProviderKind, &'a str)> {
    match models.get(model) {
        Some(route) => Some((route.provider, route.name.as_str())),
        None => ProviderKind::serving(model, configured).map(|p| (p, model)),
    }
}

/// Says whether the key was empty as written or became empty through a
/// variable, which is the case worth pointing at (`export KEY=` in a cron
/// environment).
fn empty_key_reason(template: &str) -> String {
    if template.contains("${") {
        "key is empty after expanding environment variables".to_owned()
    } else {
        "key is empty".to_owned()
    }
}

/// What in a key would make every request fail: a header value takes
/// visible ASCII only. Names the kind of character, never the key.
fn unsendable(secret: &str) -> Option<&'static str> {
    secret.chars().find_map(|c| match c {
        '\n' | '\r' => Some("a line break"),
        ' ' | '\t' => Some("a space"),
        c if c.is_ascii_control() => Some("a control character"),
        c if !c.is_ascii() => Some("a non-ASCII character"),
        _ => None,
    })
}

/// Replaces every `string "…"` in a serde message (serde's wording for an
/// unexpected string value) with `a string`. A key pasted where a list or a
/// number was expected would otherwise end up in the error, and errors end up
/// in cron mail and CI logs.
fn redact_strings(message: &str) -> String {
    const MARK: &str = "string \"";
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find(MARK) {
        out.push_str(&rest[..start]);
        out.push_str("a string");
        // serde quotes with `{:?}`, so the value ends at the first `"` that
        // is not escaped.
        let value = &rest[start + MARK.len()..];
        let mut escaped = false;
        let end = value
            .char_indices()
            .find(|&(_, c)| {
                let closes = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                closes
            })
            .map_or(value.len(), |(i, _)| i + 1);
        rest = &value[end..];
    }
    out.push_str(rest);
    out
}
