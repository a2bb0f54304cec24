//! A job's models, checked before anything is sent.
//!
//! 1. [`route`]: each model must have an account to serve it, routed as the
//!    README documents ([`ProviderKind::serving`]): a model no account can serve
//!    is a validation error.
//! 2. [`check_listed`]: each model must be in its provider's model list
//!    (one free request per provider the job uses, with one of its keys,
//!    kept in the state file for [`crate::store::MODEL_LIST_MAX_AGE`]). An unknown model
//!    is refused with the nearest listed name. A list that cannot be had
//!    (network, 5xx, a refused key) only warns: the check never blocks a run
//!    that could go.

use crate::config::Config;
use crate::job::{ItemError, ModelUse, SettingUse};
use crate::provider::{self, Client, ErrorClass, ProviderKind};
use crate::store::{Store, StoreError};
use std::collections::{BTreeMap, HashSet};
use std::fmt;

/// A model the job asks for, and where it first does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// The model id.
    pub model: String,
    /// 1-based line of the first item asking for it.
    pub line: u64,
    /// Whether it is the config's default model (the item named none).
    pub default: bool,
}

impl fmt::Display for Wanted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.default {
            write!(
                f,
                "`{}` (the config's `model`, line {})",
                self.model, self.line
            )
        } else {
            write!(f, "`{}` (line {})", self.model, self.line)
        }
    }
}

/// A model the run cannot use: nothing is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// No configured account serves it.
    #[error(
        "model {0} has no account to serve it: only models named gemini*/gemma* go to gemini \
         accounts and claude* to anthropic accounts; others need an openai account \
         (`provider: openai`), and the config has none"
    )]
    NoAccount(Wanted),
    /// The job is a provider's own batch file, and the model goes to
    /// accounts of another provider, whose API cannot take its bodies.
    #[error(
        "model {wanted} is served by {} accounts, but the job is {} file, whose request \
         bodies go as they are to {} accounts only (the config's `models` map can route the \
         model to one)",
        provider_name(*served), batch_name(*batch), provider_name(*batch)
    )]
    NotBatchProvider {
        /// The model.
        wanted: Wanted,
        /// The provider whose accounts serve it.
        served: ProviderKind,
        /// The provider whose batch file the job is.
        batch: ProviderKind,
    },
    /// Its provider does not list it.
    #[error("unknown model {wanted}{} (not in the {list}; --offline skips this check)",
        .suggestion.as_ref().map(|s| format!("; did you mean `{s}`?")).unwrap_or_default())]
    Unknown {
        /// The model.
        wanted: Wanted,
        /// The list that lacks it, e.g. `gemini model list of https://…`.
        list: String,
        /// The nearest listed name, when one is near.
        suggestion: Option<String>,
    },
}

/// The job's models by the provider that serves them.
pub type Routes = BTreeMap<ProviderKind, Vec<Wanted>>;

/// Routes each model of `uses` (`None`: the config's default) to the
/// provider whose accounts serve it; the models none serves are errors.
pub fn route(config: &Config, uses: &[ModelUse]) -> Result<Routes, Vec<ModelError>> {
    let mut routes = Routes::new();
    let mut errors = Vec::new();
    // An item naming the default model and one naming none ask for one model.
    let mut seen = HashSet::new();
    for used in uses {
        let wanted = Wanted {
            model: used.model.clone().unwrap_or_else(|| config.model.clone()),
            line: used.line,
            default: used.model.is_none(),
        };
        if !seen.insert(wanted.model.clone()) {
            continue;
        }
        match config.route(&wanted.model) {
            // A name of the config's `models` map is checked as the model
            // it names.
            Some((provider, name)) => routes.entry(provider).or_default().push(Wanted {
                model: name.to_owned(),
                ..wanted
            }),
            None => errors.push(ModelError::NoAccount(wanted)),
        }
    }
    if errors.is_empty() {
        Ok(routes)
    } else {
        Err(errors)
    }
}

/// The models of `routes` that go to another provider than `batch`, the
/// provider whose own batch file the job is: its bodies can go only to
/// accounts of that provider.
pub fn batch_routes(routes: &Routes, batch: ProviderKind) -> Result<(), Vec<ModelError>> {
    let errors: Vec<ModelError> = routes
        .iter()
        .filter(|(&served, _)| served != batch)
        .flat_map(|(&served, wanted)| {
            wanted
                .iter()
                .map(move |wanted| ModelError::NotBatchProvider {
                    wanted: wanted.clone(),
                    served,
                    batch,
                })
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// How the job is named in [`ModelError::NotBatchProvider`].
fn batch_name(batch: ProviderKind) -> &'static str {
    match batch {
        ProviderKind::Gemini => "a Gemini batch",
        _ => "an OpenAI Batch API",
    }
}

/// The settings of `uses` that the API of their model's provider does not
/// have, each an error naming the item's file, line and field: a setting
/// is never silently dropped. Models no account serves are [`route`]'s to
/// report.
pub fn unsupported_settings(config: &Config, uses: &[SettingUse]) -> Vec<ItemError> {
    uses.iter()
        .filter_map(|used| {
            let model = used.model.as_deref().unwrap_or(&config.model);
            let provider =
                ProviderKind::serving(model, |p| config.accounts.iter().any(|a| a.provider == p))?;
            (!provider::supports(provider, used.setting)).then(|| ItemError {
                path: used.path.clone(),
                line: used.line,
                field: Some(used.setting.to_owned()),
                reason: format!(
                    "model `{model}` is served by {} accounts, whose API has no `{}`",
                    provider_name(provider),
                    used.setting
                ),
            })
        })
        .collect()
}

/// What [`check_listed`] found.
#[derive(Debug, Default)]
pub struct Checked {
    /// Models the lists lack: the run must not start.
    pub errors: Vec<ModelError>,
    /// Lists that could not be had: the run goes on unchecked for them.
    pub warnings: Vec<String>,
}

/// Checks every routed model against its provider's model list, from the
/// state file when it holds one fresh enough that names them all, else
/// fetched (and kept).
pub async fn check_listed(
    config: &Config,
    routes: &Routes,
    store: &Store,
) -> Result<Checked, StoreError> {
    let mut checked = Checked::default();
    for (&provider, wanted) in routes {
        let name = provider_name(provider);
        let base_url = &config.providers[&provider].base_url;
        let cached = store.model_list(name, base_url)?;
        let missing = |list: &[String]| {
            let listed: HashSet<&str> = list.iter().map(String::as_str).collect();
            wanted
                .iter()
                .filter(|w| !listed.contains(w.model.as_str()))
                .cloned()
                .collect::<Vec<_>>()
        };
        let list = match cached {
            Some(list) if missing(&list).is_empty() => continue,
            // A model added since the list was kept is not refused for it.
            _ => match fetch(config, provider).await {
                Ok(list) => {
                    store.save_model_list(name, base_url, &list)?;
                    list
                }
                Err(warning) => {
                    checked.warnings.push(warning);
                    continue;
                }
            },
        };
        for w in missing(&list) {
            checked.errors.push(ModelError::Unknown {
                suggestion: nearest(&w.model, &list).map(str::to_owned),
                wanted: w,
                list: format!("{name} model list of {base_url}"),
            });
        }
    }
    Ok(checked)
}

fn provider_name(provider: ProviderKind) -> &'static str {
    match provider {
        ProviderKind::Gemini => "gemini",
        ProviderKind::Openai => "openai",
        ProviderKind::Anthropic => "anthropic",
    }
}

/// The model list of `provider`, asked with the first key of its first
/// account; `Err` is the warning to show when it cannot be had.
async fn fetch(config: &Config, provider: ProviderKind) -> Result<Vec<String>, String> {
    let name = provider_name(provider);
    let base_url = &config.providers[&provider].base_url;
    let Some((account, key)) = config
        .accounts
        .iter()
        .filter(|a| a.provider == provider)
        .find_map(|a| a.keys.first().map(|k| (a, &k.key)))
    else {
        return Err(format!("no {name} key to list the models with"));
    };
    let cannot = |why: String| {
        format!("could not check the job's models against the {name} model list of {base_url}: {why}; going on unchecked")
    };
    let client = Client::new(provider, base_url, config.timeout, account.proxy.as_deref())
        .map_err(|e| cannot(e.to_string()))?;
    client.list_models(key).await.map_err(|e| match e.class {
        ErrorClass::KeyInvalid { .. } => cannot(format!(
            "key {} ({}) was refused: {}",
            key.fingerprint(),
            account.name,
            e.message
        )),
        _ => cannot(e.message),
    })
}

/// Longest model name compared: longer ones are no model a user meant.
const MAX_NAME: usize = 200;

/// The listed name nearest to `model` by edit distance, when it is near
/// enough to be a typo: at most a third of the name's length, and 3 edits.
fn nearest<'a>(model: &str, list: &'a [String]) -> Option<&'a str> {
    let allowed = (model.chars().count() / 3).clamp(1, 3);
    list.iter()
        .filter(|name| name.len() <= MAX_NAME && model.len() <= MAX_NAME)
        .map(|name| (edit_distance(model, name), name))
        .filter(|&(d, _)| d <= allowed)
        .min_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)))
        .map(|(_, name)| name.as_str())
}

/// Levenshtein distance over characters: insertions, deletions and
/// substitutions each cost 1.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MissingEnv;
    use std::path::Path;

    #[test]
    fn edit_distance_counts_single_character_edits() {
        assert_eq!(edit_distance("gemini-2.5-flsh", "gemini-2.5-flash"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("模型", "模型"), 0);
    }

    #[test]
    fn the_nearest_name_is_suggested_only_when_near() {
        let list: Vec<String> = ["gemini-2.5-flash", "gemini-2.5-pro", "gemini-2.0-flash"]
            .map(String::from)
            .to_vec();
        assert_eq!(nearest("gemini-2.5-flsh", &list), Some("gemini-2.5-flash"));
        assert_eq!(nearest("gemini-25-pro", &list), Some("gemini-2.5-pro"));
        assert_eq!(nearest("gpt-4o", &list), None);
    }

    fn config(accounts: &str) -> Config {
        let yaml = format!("model: gemini-2.5-flash\naccounts:\n{accounts}");
        Config::parse(&yaml, Path::new("c.yaml"), |_| None, MissingEnv::Error).unwrap()
    }

    fn uses(models: &[(Option<&str>, u64)]) -> Vec<ModelUse> {
        models
            .iter()
            .map(|&(model, line)| ModelUse {
                model: model.map(str::to_owned),
                line,
            })
            .collect()
    }

    #[test]
    fn a_model_no_account_serves_is_named_with_its_line() {
        let gemini_only = config("  - name: a\n    keys: [k1]\n");
        let errors = route(
            &gemini_only,
            &uses(&[(None, 1), (Some("gpt-4o"), 3), (Some("gpt-4o"), 4)]),
        )
        .unwrap_err();
        assert_eq!(
            errors,
            [ModelError::NoAccount(Wanted {
                model: "gpt-4o".into(),
                line: 3,
                default: false
            })]
        );
        assert!(errors[0]
            .to_string()
            .starts_with("model `gpt-4o` (line 3) has no account"));
    }

    #[test]
    fn the_default_model_and_the_same_model_named_are_one() {
        let both = config(
            "  - name: a\n    keys: [k1]\n  - name: o\n    provider: openai\n    keys: [k2]\n",
        );
        let routes = route(
            &both,
            &uses(&[
                (None, 1),
                (Some("gemini-2.5-flash"), 2),
                (Some("gpt-4o"), 3),
            ]),
        )
        .unwrap();
        assert_eq!(routes[&ProviderKind::Gemini].len(), 1);
        assert!(routes[&ProviderKind::Gemini][0].default);
        assert_eq!(routes[&ProviderKind::Openai][0].model, "gpt-4o");
    }
}
