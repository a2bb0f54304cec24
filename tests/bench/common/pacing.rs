//! The quota-pacing scenarios (see `tests/bench/quota.rs` for the setup and
//! the ideal time): the simulator's and keyfan's configs, the prompts and
//! the ideal. Shared by the `quota` bench (real time, over a socket, the
//! figure of record) and the paused-time tests in `tests/it/pacing.rs`
//! (which include this file by path).
#![allow(dead_code)]

use keyfan::sim::{FaultConfig, LatencyConfig, ModelLimits, ProjectConfig, SimConfig, Stats};
use keyfan::types::ApiKey;
use std::collections::BTreeMap;
use std::time::Duration;

/// The one model every item asks for.
pub const MODEL: &str = "gemini-2.5-flash";
/// Each project's requests per minute for [`MODEL`].
pub const RPM: u32 = 120;
/// The simulator's rolling window, in seconds.
pub const WINDOW_S: f64 = 60.0;
/// The simulator's latency is uniform in 0 ..= this many ms.
pub const LATENCY_MAX_MS: u64 = 50;
/// Requests keyfan keeps in flight.
pub const CONCURRENCY: usize = 32;
/// The projects (accounts) and their keys.
pub const PROJECTS: [(&str, [&str; 2]); 2] = [
    ("proj-a", ["bench-key-a1", "bench-key-a2"]),
    ("proj-b", ["bench-key-b1", "bench-key-b2"]),
];
/// Known to keyfan's config only: the simulator answers 400 API_KEY_INVALID.
pub const INVALID_KEY: &str = "bench-key-not-known-to-the-server";

/// One of the bench's scenarios (see `tests/bench/quota.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Limits configured: no 429 expected.
    Configured,
    /// No limits configured: keyfan learns them from the first 429s.
    Learned,
    /// Limits configured, and the simulator injects faults.
    Faults,
}

impl Scenario {
    /// As `KEYFAN_BENCH_SCENARIOS` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Configured => "configured",
            Scenario::Learned => "learned",
            Scenario::Faults => "faults",
        }
    }

    /// The item counts `cargo bench` runs it with.
    pub fn default_items(self) -> Vec<u64> {
        match self {
            Scenario::Configured | Scenario::Learned => vec![480, 960],
            Scenario::Faults => vec![480],
        }
    }

    /// The ratio goal, if the scenario has one.
    pub fn ratio_goal(self) -> Option<f64> {
        match self {
            Scenario::Configured => Some(0.95),
            Scenario::Learned => Some(0.85),
            Scenario::Faults => None,
        }
    }
}

/// The schedule of a perfect client (see `tests/bench/quota.rs`).
pub fn ideal(items: u64) -> Duration {
    let per_window = PROJECTS.len() as u64 * u64::from(RPM);
    let batches = items.div_ceil(per_window).max(1);
    Duration::from_secs_f64((batches - 1) as f64 * WINDOW_S) + Duration::from_millis(LATENCY_MAX_MS)
}

/// The prompt of item `i`: all different, a third of them in Chinese (so
/// token estimates differ too).
pub fn prompt(i: u64) -> String {
    if i.is_multiple_of(3) {
        format!("问题 {i}：用一句话解释为什么天空是蓝色的。")
    } else {
        format!("question {i}: in one sentence, why is the sky blue?")
    }
}

/// The simulator: [`PROJECTS`] at [`RPM`], seeded, with faults in
/// [`Scenario::Faults`].
pub fn sim_config(scenario: Scenario) -> SimConfig {
    let limits: BTreeMap<String, ModelLimits> = [(
        MODEL.to_owned(),
        ModelLimits {
            rpm: Some(RPM),
            tpm: None,
            otpm: None,
            rpd: None,
        },
    )]
    .into();
    SimConfig {
        seed: 3,
        latency: LatencyConfig {
            min_ms: 0,
            max_ms: LATENCY_MAX_MS,
        },
        models: None,
        projects: PROJECTS
            .iter()
            .map(|(name, keys)| ProjectConfig {
                name: (*name).to_owned(),
                keys: keys.iter().map(|k| ApiKey::new(*k)).collect(),
                limits: limits.clone(),
            })
            .collect(),
        disabled_keys: Vec::new(),
        files: Default::default(),
        batches: Default::default(),
        faults: match scenario {
            Scenario::Faults => FaultConfig {
                error_503: 0.05,
                error_500: 0.02,
                hang: 0.01,
                hang_ms: 30_000,
                truncate: 0.01,
                bursts: Vec::new(),
            },
            _ => FaultConfig::default(),
        },
    }
}

/// keyfan's config, as a user would write it.
pub fn keyfan_config(scenario: Scenario, base_url: &str) -> String {
    let (timeout, retries) = match scenario {
        Scenario::Faults => ("3s", 8),
        _ => ("30s", 5),
    };
    let mut yaml = format!(
        "providers:\n  gemini:\n    base_url: {base_url}\nmodel: {MODEL}\n\
         concurrency: {CONCURRENCY}\ntimeout: {timeout}\nmax_retries: {retries}\naccounts:\n"
    );
    for (index, (name, keys)) in PROJECTS.iter().enumerate() {
        yaml.push_str(&format!("  - name: {name}\n    keys:\n"));
        for key in keys {
            yaml.push_str(&format!("      - \"{key}\"\n"));
        }
        if scenario == Scenario::Faults && index == 0 {
            yaml.push_str(&format!("      - \"{INVALID_KEY}\"\n"));
        }
        if scenario != Scenario::Learned {
            yaml.push_str(&format!("    limits:\n      {MODEL}: {{ rpm: {RPM} }}\n"));
        }
    }
    yaml
}

/// The most requests each project's simulator admitted in any 60 s, by
/// project name.
pub fn max_in_60s(stats: &Stats) -> Vec<(String, u64)> {
    PROJECTS
        .iter()
        .map(|(name, _)| {
            let max = stats
                .projects
                .get(*name)
                .and_then(|p| p.models.get(MODEL))
                .map_or(0, |m| m.max_requests_in_60s);
            ((*name).to_owned(), max)
        })
        .collect()
}
