//! Anthropic as a third provider: the client against the simulator's
//! Messages API, a job mixing all three providers end to end, `keys check`,
//! and pacing by output tokens per minute (configured, and learned from the
//! `anthropic-ratelimit-*` headers) under paused time.

use super::pacing::{drive, Sent};
use crate::support::*;
use keyfan::config::{Config, MissingEnv};
use keyfan::provider::{Client, ErrorClass, ProviderKind, QuotaScope, Request};
use keyfan::sim::{LatencyConfig, ModelLimits, ProjectConfig, SimConfig, Simulator};
use keyfan::types::{ApiKey, Limits};
use std::path::Path;
use std::time::Duration;
use tokio::time::Instant;

const HAIKU: &str = "claude-haiku-4-5";

fn request(prompt: &str, max_output_tokens: Option<u32>) -> Request<'_> {
    Request {
        model: HAIKU,
        prompt,
        system: Some("One sentence."),
        max_output_tokens,
        temperature: None,
        turns: &[],
        generation: keyfan::provider::Generation::none(),
        media: &[],
    }
}

#[tokio::test]
async fn the_client_speaks_the_messages_api_and_hears_its_limits_and_errors() {
    let sim = simulator(&format!(
        "projects:\n  - name: org-a\n    keys: [sk-ant-a1]\n    \
         limits: {{ {HAIKU}: {{ rpm: 50, tpm: 20000, otpm: 150 }} }}\n\
         disabled_keys: [sk-ant-off]\nfaults:\n  bursts: [{{ after: 2, count: 1, status: 529 }}]\n"
    ))
    .await;
    let client = Client::new(
        ProviderKind::Anthropic,
        &sim.base_url(),
        Duration::from_secs(5),
        None,
    )
    .unwrap()
    .with_default_max_output_tokens(100);
    let key = ApiKey::new("sk-ant-a1");

    // No cap on the item: the client's default goes out as max_tokens.
    let reply = client
        .generate(&key, &request("Why is the sky blue?", None))
        .await
        .unwrap();
    assert!(
        reply.text.contains(&digest("Why is the sky blue?")),
        "{}",
        reply.text
    );
    assert_eq!(reply.usage.output_tokens, reply.quota.output_tokens);
    assert_eq!(
        reply.quota.stated,
        Limits {
            rpm: Some(50),
            tpm: Some(20_000),
            otpm: Some(150),
            rpd: None
        }
    );
    // The first answer settled at its real output: 100 more do not fit.
    let refused = client
        .generate(&key, &request("again", Some(140)))
        .await
        .unwrap_err();
    match refused.class {
        ErrorClass::RateLimited {
            scope,
            retry_after,
            limit,
        } => {
            assert_eq!(scope, QuotaScope::MinuteOutputTokens);
            assert_eq!(limit, Some(150));
            assert_eq!(retry_after, Some(Duration::from_secs(60)));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(refused.stated.expect("limits stated").otpm, Some(150));
    let overloaded = client
        .generate(&key, &request("x", Some(5)))
        .await
        .unwrap_err();
    assert_eq!(
        (
            overloaded.class,
            overloaded.status,
            overloaded.message.as_str()
        ),
        (
            ErrorClass::Overloaded { retry_after: None },
            Some(529),
            "Overloaded"
        )
    );
    let invalid = client
        .generate(&ApiKey::new("sk-ant-nope"), &request("x", Some(5)))
        .await
        .unwrap_err();
    assert_eq!(
        invalid.class,
        ErrorClass::KeyInvalid {
            reason: "authentication_error".into()
        }
    );
    // Checking and listing are free.
    let before = sim.stats().requests;
    client.check(&key, "unused").await.unwrap();
    let refused = client.check(&ApiKey::new("sk-ant-off"), "unused").await;
    assert!(
        matches!(&refused, Err(e) if e.class == ErrorClass::KeyInvalid { reason: "permission_error".into() }),
        "{refused:?}"
    );
    assert!(client
        .list_models(&key)
        .await
        .unwrap()
        .contains(&HAIKU.to_owned()));
    assert_eq!(sim.stats().requests, before);
    sim.shutdown().await;
}

const MIXED_SIM: &str = "
seed: 5
latency: { min_ms: 0, max_ms: 20 }
projects:
  - name: proj-g
    keys: [test-key-g1]
  - name: org-o
    keys: [test-key-o1]
  - name: org-a
    keys: [sk-ant-a1, sk-ant-a2]
    limits: { claude-haiku-4-5: { rpm: 100, tpm: 100000, otpm: 3000 } }
";

/// Item `i` of the mixed job: its model, cycling through the providers (and
/// the config's alias for an Anthropic model).
fn mixed_model(i: usize) -> &'static str {
    ["gemini-2.5-flash", "gpt-4o-mini", HAIKU, "quick"][i % 4]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_mixing_gemini_openai_and_anthropic_runs_end_to_end() {
    const ITEMS: usize = 40;
    let sim = simulator(MIXED_SIM).await;
    let work = Workdir::new();
    let url = sim.base_url();
    work.write(
        "config.yaml",
        &format!(
            "providers:\n  gemini: {{ base_url: {url} }}\n  openai: {{ base_url: {url} }}\n  \
             anthropic: {{ base_url: {url} }}\nconcurrency: 8\ntimeout: 5s\n\
             default_max_output_tokens: 300\n\
             models:\n  quick: {{ provider: anthropic, name: {HAIKU} }}\n\
             accounts:\n  - name: proj-g\n    keys: [test-key-g1]\n  \
             - name: org-o\n    provider: openai\n    keys: [test-key-o1]\n  \
             - name: org-a\n    provider: anthropic\n    keys: [sk-ant-a1, sk-ant-a2]\n    \
             limits: {{ {HAIKU}: {{ otpm: 3000 }} }}\n"
        ),
    );
    let job = jsonl_job_with(ITEMS, |i| serde_json::json!({ "model": mixed_model(i) }));
    work.write("job.jsonl", &job);
    let out = work
        .keyfan(&run_args("s.db", &["--out", "out.jsonl"]), &[])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert_each_item_once_with_its_reply(&work.path("out.jsonl"), ITEMS);
    for row in results(&work.path("out.jsonl")) {
        let i: usize = row["id"].as_str().unwrap()[5..].parse().unwrap();
        let output = row["output"].as_str().unwrap();
        // The alias went out as the model it names.
        let sent = mixed_model(i).replace("quick", HAIKU);
        assert!(
            output.starts_with(&format!("[simulated {sent}]")),
            "{output}"
        );
    }
    let stats = stats(&sim).await;
    let served = |project: &str| stats.projects[project].ok;
    assert_eq!(
        (served("proj-g"), served("org-o"), served("org-a")),
        (10, 10, 20)
    );
    assert_eq!(stats.projects["org-a"].rate_limited, 0);
    // Half the Anthropic items named no cap: each was admitted at the
    // config's default, never more than the org's 3,000 at once.
    assert!(stats.projects["org-a"].models[HAIKU].max_output_in_60s <= 3000);

    let check = work
        .keyfan(&["keys", "check", "--config", "config.yaml", "--json"], &[])
        .await;
    assert_eq!(check.status.code(), Some(0), "{}", explain(&check));
    let rows: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 4);
    assert!(
        rows.as_array().unwrap().iter().all(|r| r["status"] == "ok"),
        "{rows}"
    );
    sim.shutdown().await;
}

/// Each organisation's output tokens per minute.
const OTPM: u64 = 8_000;
/// The organisations and their keys.
const ORGS: [(&str, [&str; 2]); 2] = [
    ("org-a", ["sk-ant-a1", "sk-ant-a2"]),
    ("org-b", ["sk-ant-b1", "sk-ant-b2"]),
];
/// Every item's output cap.
const CAP: u32 = 400;
/// The simulator's latency is uniform in 0 ..= this many ms.
const LATENCY_MAX_MS: u64 = 50;

/// Item `i`: an answer of 50 to 150 tokens, about 100 on average, under a
/// cap of [`CAP`].
fn otpm_item(i: u64) -> Sent {
    Sent {
        model: HAIKU,
        prompt: format!("item {i}: [[sim:tokens={}]]", 50 + i % 101),
        max_output_tokens: Some(CAP),
    }
}

/// The simulator: [`ORGS`] at [`OTPM`] each, generous RPM and ITPM.
fn otpm_sim() -> SimConfig {
    let limits = ModelLimits {
        rpm: Some(4_000),
        tpm: Some(400_000),
        otpm: Some(OTPM),
        rpd: None,
    };
    SimConfig {
        seed: 11,
        latency: LatencyConfig {
            min_ms: 0,
            max_ms: LATENCY_MAX_MS,
        },
        projects: ORGS
            .iter()
            .map(|(name, keys)| ProjectConfig {
                name: (*name).to_owned(),
                keys: keys.iter().map(|k| ApiKey::new(*k)).collect(),
                limits: [(HAIKU.to_owned(), limits)].into(),
            })
            .collect(),
        ..SimConfig::default()
    }
}

/// keyfan's config: the organisations, with their OTPM when `configured`.
fn otpm_config(configured: bool) -> Config {
    let mut yaml = "concurrency: 32\ntimeout: 30s\naccounts:\n".to_owned();
    for (name, keys) in ORGS {
        yaml.push_str(&format!(
            "  - name: {name}\n    provider: anthropic\n    keys: [{}]\n",
            keys.join(", ")
        ));
        if configured {
            yaml.push_str(&format!("    limits: {{ {HAIKU}: {{ otpm: {OTPM} }} }}\n"));
        }
    }
    Config::parse(&yaml, Path::new("otpm.yaml"), |_| None, MissingEnv::Error).unwrap()
}

/// Runs 600 items against [`otpm_sim`] under paused time; returns the
/// ratio of the ideal time to the time taken, and the 429s.
async fn run_600(configured: bool) -> (f64, u64) {
    const ITEMS: u64 = 600;
    let sim = Simulator::new(&otpm_sim()).unwrap();
    let started = Instant::now();
    let results = drive(&otpm_config(configured), &sim, ITEMS, otpm_item).await;
    let took = started.elapsed();
    for (i, result) in (0..ITEMS).zip(&results) {
        let reply = result.as_ref().unwrap_or_else(|e| panic!("item {i}: {e}"));
        assert!(
            reply.text.contains(&digest(&otpm_item(i).prompt)),
            "item {i}"
        );
    }
    let stats = sim.stats();
    let output: u64 = stats
        .projects
        .values()
        .map(|p| p.models[HAIKU].output_tokens)
        .sum();
    for (name, project) in &stats.projects {
        let max = project.models[HAIKU].max_output_in_60s;
        assert!(max <= OTPM, "{name} counted {max} output tokens in 60 s");
    }
    // A perfect client that knew each answer's length would fill every
    // organisation's minute with real output: all but the last minute's
    // worth, then one more answer's latency.
    let per_minute = ORGS.len() as u64 * OTPM;
    let minutes = output.div_ceil(per_minute).max(1) - 1;
    let ideal = Duration::from_secs(60 * minutes) + Duration::from_millis(LATENCY_MAX_MS);
    let ratio = ideal.as_secs_f64() / took.as_secs_f64();
    let rate_limited = stats.projects.values().map(|p| p.rate_limited).sum();
    eprintln!(
        "otpm (configured: {configured}): {output} output tokens in {took:?}, ideal {ideal:?}, \
         ratio {ratio:.3}, {rate_limited} 429s of {} requests",
        stats.requests
    );
    assert!(ratio <= 1.0, "faster than the ideal: the clocks differ");
    (ratio, rate_limited)
}

#[tokio::test(start_paused = true)]
async fn with_otpm_the_tightest_limit_600_items_see_no_429_and_near_ideal_time() {
    let (ratio, rate_limited) = run_600(true).await;
    assert_eq!(rate_limited, 0);
    assert!(ratio >= 0.9, "ratio {ratio:.3}");
}

#[tokio::test(start_paused = true)]
async fn with_no_limits_configured_the_headers_pace_the_run() {
    let (ratio, rate_limited) = run_600(false).await;
    assert!(rate_limited <= 600 * 2 / 100, "{rate_limited} 429s");
    // Learned from the first answers, not from a 429 (whose cool-down would
    // cost a whole minute).
    assert!(ratio >= 0.9, "ratio {ratio:.3}");
}
