//! The simulator's own config (`sim.yaml`): projects with their keys and
//! limits, the models that exist, latency and faults. Separate from the
//! user's `config.yaml` because it describes the *server* side (what Google
//! would enforce), which a rehearsal derives from the user's config
//! ([`SimConfig::rehearsal`]) and a test writes by hand.

use crate::types::ApiKey;
use serde::{Deserialize, Deserializer};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// Models that exist when the config names none (plus every model named in a
/// project's limits).
const BUILTIN_MODELS: [&str; 11] = [
    "gemini-2.5-flash",
    "gemini-2.5-pro",
    "gemini-2.5-flash-lite",
    "gemini-2.0-flash",
    "gemini-3-flash-preview",
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1-mini",
    "claude-sonnet-4-5",
    "claude-haiku-4-5",
    "claude-opus-4-1",
];

/// Everything the simulator enforces and injects. Every field is optional in
/// YAML; the defaults are a fault-free, zero-latency server with no projects.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    /// Seed of every random choice (latency, faults), so a run replays.
    pub seed: u64,
    /// Latency added to every admitted request.
    pub latency: LatencyConfig,
    /// Models that exist; `None` = the built-in list. Models named in a
    /// project's limits always exist too. Any other model gets a 404.
    pub models: Option<Vec<String>>,
    /// Google Cloud projects: each owns its quota, shared by its keys.
    pub projects: Vec<ProjectConfig>,
    /// Keys whose project has the API disabled (403 `SERVICE_DISABLED`);
    /// wins over a project listing the same key.
    #[serde(deserialize_with = "api_keys")]
    pub disabled_keys: Vec<ApiKey>,
    /// Injected failures.
    pub faults: FaultConfig,
    /// The Files API.
    pub files: FilesConfig,
    /// The Batch APIs (Gemini's and OpenAI's).
    pub batches: BatchesConfig,
}

/// The simulated Batch APIs: how long a batch waits and runs on the
/// simulator's clock, and how it ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchesConfig {
    /// How long a new batch stays pending (Gemini `BATCH_STATE_PENDING`,
    /// OpenAI `validating`).
    pub pending_ms: u64,
    /// How long it then runs (`BATCH_STATE_RUNNING`, `in_progress`) before
    /// it ends.
    pub running_ms: u64,
    /// How every batch ends (a display name or OpenAI metadata value holding
    /// `[[sim:batch_expired]]` or `[[sim:batch_failed]]` ends that batch so).
    pub end: BatchEnd,
    /// The first this many batch creates are carried out, but their reply is
    /// a 503, as when a connection drops after the server acted: the client
    /// cannot know the batch exists.
    pub lose_create_replies: u32,
}

/// How a simulated batch ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchEnd {
    /// Results for every request (Gemini `SUCCEEDED`, OpenAI `completed`).
    #[default]
    Succeeded,
    /// The batch failed as a whole, with no results (`FAILED`, `failed`).
    Failed,
    /// The window passed: Gemini `EXPIRED` with no results; OpenAI
    /// `expired` with the first half of the requests done and the rest in
    /// the error file as `batch_expired`.
    Expired,
}

/// The simulated Files API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesConfig {
    /// How long an uploaded file stays `PROCESSING` before it is `ACTIVE`.
    pub processing_ms: u64,
    /// How long a file lives after its upload (default 48 h, as the API
    /// keeps files); after it, using the file is the real 403.
    pub expiry_ms: Option<u64>,
    /// Bytes of live files a project may store (default 20 GiB, the API's
    /// `FileStorageBytesPerProject`); an upload past it is the real 429.
    pub storage_bytes: Option<u64>,
    /// How long each upload chunk waits before it is answered (default 0),
    /// so uploads stay in progress long enough to overlap.
    pub chunk_ms: u64,
}

/// Uniform latency in `[min_ms, max_ms]`, drawn per request from the seeded RNG.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LatencyConfig {
    /// Lower bound in milliseconds.
    pub min_ms: u64,
    /// Upper bound in milliseconds (inclusive).
    pub max_ms: u64,
}

/// One simulated Google Cloud project.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectConfig {
    /// Unique name, used in `/__stats`.
    pub name: String,
    /// The keys that authenticate as this project.
    #[serde(default, deserialize_with = "api_keys")]
    pub keys: Vec<ApiKey>,
    /// Per-model quota; a model not listed is unlimited.
    #[serde(default)]
    pub limits: BTreeMap<String, ModelLimits>,
}

/// Per-model quota of one project, as Google enforces it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelLimits {
    /// Requests per rolling 60 s.
    pub rpm: Option<u32>,
    /// Input tokens per rolling 60 s.
    pub tpm: Option<u64>,
    /// Output tokens per rolling 60 s, each request counted at its output
    /// cap until it is answered, then at its real output (Anthropic's OTPM).
    #[serde(default)]
    pub otpm: Option<u64>,
    /// Requests per Pacific day.
    pub rpd: Option<u32>,
}

impl From<crate::config::Limits> for ModelLimits {
    fn from(limits: crate::config::Limits) -> Self {
        ModelLimits {
            rpm: limits.rpm,
            tpm: limits.tpm,
            otpm: limits.otpm,
            rpd: limits.rpd,
        }
    }
}

/// Injected failures. Probabilities are per admitted request and exclusive
/// (one roll decides), so their sum must not exceed 1.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultConfig {
    /// Probability of a 500 INTERNAL.
    pub error_500: f64,
    /// Probability of a 503 UNAVAILABLE (overloaded).
    pub error_503: f64,
    /// Probability of holding the request `hang_ms` before answering.
    pub hang: f64,
    /// How long a hang lasts, in milliseconds.
    pub hang_ms: u64,
    /// Probability of a 200 whose body is cut off halfway.
    pub truncate: f64,
    /// Deterministic runs of one status, by request number.
    pub bursts: Vec<Burst>,
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig {
            error_500: 0.0,
            error_503: 0.0,
            hang: 0.0,
            hang_ms: 30_000,
            truncate: 0.0,
            bursts: Vec::new(),
        }
    }
}

/// Requests number `after + 1 ..= after + count` (counted across the server,
/// from 1) get `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Burst {
    /// Requests before the burst starts.
    pub after: u64,
    /// Requests in the burst.
    pub count: u64,
    /// HTTP status they get (400–599).
    pub status: u16,
}

/// Why a simulator config could not be loaded. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum SimConfigError {
    /// The file could not be read.
    #[error("cannot read simulator config {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not valid YAML for a [`SimConfig`] (the message carries
    /// serde_yaml's line and column).
    #[error("{}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The underlying error, with its position.
        source: serde_yaml::Error,
    },
    /// The file parses but contradicts itself (e.g. probabilities above 1).
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the field.
        message: String,
    },
}

impl SimConfig {
    /// Reads and validates a YAML simulator config.
    pub fn load(path: &Path) -> Result<SimConfig, SimConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| SimConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: SimConfig =
            serde_yaml::from_str(&text).map_err(|source| SimConfigError::Parse {
                path: path.to_owned(),
                source,
            })?;
        config
            .validate()
            .map_err(|message| SimConfigError::Invalid {
                path: path.to_owned(),
                message,
            })?;
        Ok(config)
    }

    /// A simulator mirroring a user's config: one project per account (same
    /// name), that account's keys (their exposed strings) as the valid keys,
    /// the account's limits enforced, small seeded latency.
    pub fn rehearsal(config: &crate::config::Config) -> SimConfig {
        let projects = config
            .accounts
            .iter()
            .map(|account| ProjectConfig {
                name: account.name.clone(),
                keys: account.keys.iter().map(|k| k.key.clone()).collect(),
                limits: account
                    .limits
                    .iter()
                    .map(|(model, limits)| (model.clone(), ModelLimits::from(*limits)))
                    .collect(),
            })
            .collect();
        SimConfig {
            seed: 42,
            // Small enough that a rehearsal's timing is dominated by the
            // quotas it is meant to show, large enough to exercise concurrency.
            latency: LatencyConfig {
                min_ms: 20,
                max_ms: 120,
            },
            models: None,
            projects,
            disabled_keys: Vec::new(),
            faults: FaultConfig::default(),
            files: FilesConfig::default(),
            batches: BatchesConfig::default(),
        }
    }

    /// Every model that exists: the configured or built-in list plus every
    /// model named in a project's limits.
    pub(crate) fn model_set(&self) -> HashSet<String> {
        let listed = match &self.models {
            Some(models) => models.clone(),
            None => BUILTIN_MODELS.iter().map(|m| m.to_string()).collect(),
        };
        let limited = self.projects.iter().flat_map(|p| p.limits.keys().cloned());
        listed.into_iter().chain(limited).collect()
    }

    /// Checks what serde cannot: ranges and uniqueness. The message names
    /// the field.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.latency.min_ms > self.latency.max_ms {
            return Err(format!(
                "latency.min_ms ({}) is greater than latency.max_ms ({})",
                self.latency.min_ms, self.latency.max_ms
            ));
        }
        let f = &self.faults;
        let probabilities = [
            ("error_500", f.error_500),
            ("error_503", f.error_503),
            ("hang", f.hang),
            ("truncate", f.truncate),
        ];
        if let Some((name, p)) = probabilities.iter().find(|(_, p)| !(0.0..=1.0).contains(p)) {
            return Err(format!(
                "faults.{name} = {p} is not a probability in [0, 1]"
            ));
        }
        let sum: f64 = probabilities.iter().map(|(_, p)| p).sum();
        if sum > 1.0 + 1e-9 {
            return Err(format!(
                "faults: error_500 + error_503 + hang + truncate = {sum}, more than 1"
            ));
        }
        if let Some((i, burst)) = f
            .bursts
            .iter()
            .enumerate()
            .find(|(_, b)| !(400..=599).contains(&b.status))
        {
            return Err(format!(
                "faults.bursts[{i}].status = {} is not an error status (400-599)",
                burst.status
            ));
        }
        let mut names = HashSet::new();
        let mut keys = HashSet::new();
        for (i, project) in self.projects.iter().enumerate() {
            if project.name.is_empty() || !names.insert(project.name.as_str()) {
                return Err(format!(
                    "projects[{i}].name {:?} is empty or not unique",
                    project.name
                ));
            }
            for (j, key) in project.keys.iter().enumerate() {
                if !keys.insert(key.expose()) {
                    return Err(format!(
                        "projects[{i}].keys[{j}] ({key}) already belongs to a project: \
                         a key authenticates as exactly one project"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Reads a list of key strings straight into [`ApiKey`]s, so that a config
/// printed with `{:?}` shows fingerprints, never secrets (a rehearsal holds
/// the user's real keys).
fn api_keys<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<ApiKey>, D::Error> {
    let keys = Vec::<String>::deserialize(deserializer)?;
    Ok(keys.into_iter().map(ApiKey::new).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(text.as_bytes()).expect("write");
        file
    }

    #[test]
    fn loads_the_documented_shape() {
        let file = write(
            "seed: 7\nlatency: { min_ms: 1, max_ms: 5 }\nprojects:\n  - name: proj-a\n    \
             keys: [sim-key-a1, sim-key-a2]\n    limits: { my-model: { rpm: 120, tpm: 1000000 } }\n\
             disabled_keys: [k]\nfaults:\n  error_503: 0.25\n  bursts: [{ after: 10, count: 5, status: 503 }]\n",
        );
        let config = SimConfig::load(file.path()).expect("loads");
        assert_eq!(config.seed, 7);
        assert_eq!(config.projects[0].keys[1].expose(), "sim-key-a2");
        assert_eq!(config.projects[0].limits["my-model"].rpm, Some(120));
        assert_eq!(config.projects[0].limits["my-model"].rpd, None);
        assert_eq!(config.faults.hang_ms, 30_000);
        assert_eq!(config.faults.bursts[0].status, 503);
        let models = config.model_set();
        assert!(models.contains("my-model") && models.contains("gemini-2.5-flash"));
        assert!(!format!("{config:?}").contains("sim-key-a1"));
    }

    #[test]
    fn errors_name_the_file_and_position() {
        let file = write("seed: 1\nfaults:\n  error_404: 0.5\n");
        let err = SimConfig::load(file.path()).expect_err("unknown field");
        let text = err.to_string();
        assert!(text.contains(&file.path().display().to_string()), "{text}");
        assert!(
            text.contains("error_404") && text.contains("line 3"),
            "{text}"
        );

        let file = write("faults: { error_500: 0.7, error_503: 0.7 }\n");
        let err = SimConfig::load(file.path()).expect_err("sum above 1");
        assert!(err.to_string().contains("more than 1"), "{err}");

        let err = SimConfig::load(Path::new("/nonexistent/sim.yaml")).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/sim.yaml"), "{err}");
    }

    #[test]
    fn a_key_belongs_to_one_project() {
        let file = write("projects:\n  - { name: a, keys: [k] }\n  - { name: b, keys: [k] }\n");
        let err = SimConfig::load(file.path()).expect_err("duplicate key");
        assert!(err.to_string().contains("projects[1].keys[0]"), "{err}");
        assert!(!err.to_string().contains(": k "), "{err}");
    }
}
