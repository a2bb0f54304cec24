//! The quota bench's pacing scenarios (`cargo bench --bench quota`) as
//! ordinary tests: the same simulator, config and prompts, 2 projects at
//! rpm 120, limits configured or learned from 429s, 480 and 960 items. They
//! run under tokio's paused time, with the provider clients on the in-memory
//! transport (paused time cannot drive sockets), so three minutes of the
//! simulator's windows pass in a few seconds of real time. The bench, on real
//! time and real sockets, stays the figure of record.

#[path = "../bench/common/pacing.rs"]
mod setup;

use super::support::digest;
use keyfan::config::{Config, MissingEnv};
use keyfan::pool::{Need, Pool};
use keyfan::provider::{Client, Generation, Reply, Request};
use keyfan::run::{CallError, Caller, Clients, RetryPolicy};
use keyfan::sim::Simulator;
use setup::{ideal, keyfan_config, max_in_60s, prompt, sim_config, Scenario, MODEL, RPM};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Never resolved: the requests go to the simulator's router in process.
const BASE_URL: &str = "http://in-memory.invalid";

/// One item as [`drive`] sends it.
pub(super) struct Sent {
    /// The model it asks for.
    pub model: &'static str,
    /// Its prompt.
    pub prompt: String,
    /// Its output cap, also what an OTPM limit admits it with.
    pub max_output_tokens: Option<u32>,
}

/// Sends items `0..items` (each as `item` makes it) through keyfan's
/// library face ([`Caller::call`]) with `config.concurrency` workers, on the
/// in-memory clients of the accounts. Returns each item's result, in item
/// order. The one place the library face is called.
pub(super) async fn drive(
    config: &Config,
    sim: &Simulator,
    items: u64,
    item: fn(u64) -> Sent,
) -> Vec<Result<Reply, CallError>> {
    let pool = Arc::new(Pool::new(config, config.strategy, None).expect("pool"));
    let clients = config
        .accounts
        .iter()
        .map(|a| Client::in_memory(a.provider, sim.router(), config.timeout))
        .collect();
    let policy = RetryPolicy {
        max_retries: config.max_retries,
        seed: Some(7),
        ..RetryPolicy::default()
    };
    let caller = Arc::new(Caller::with_clients(
        pool,
        Clients::from_clients(clients),
        policy,
    ));
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..config.concurrency {
        let (caller, next, make) = (caller.clone(), next.clone(), item);
        workers.spawn(async move {
            let stop = CancellationToken::new();
            let mut done = Vec::new();
            loop {
                let item = next.fetch_add(1, Ordering::Relaxed);
                if item >= items {
                    return done;
                }
                let sent = make(item);
                let request = Request {
                    model: sent.model,
                    prompt: &sent.prompt,
                    system: None,
                    max_output_tokens: sent.max_output_tokens,
                    temperature: None,
                    turns: &[],
                    generation: Generation::none(),
                    media: &[],
                };
                // No input-token limit is set: the estimate plays no part.
                let need = Need::new(sent.model, 1).with_output_cap(sent.max_output_tokens);
                let result = caller
                    .call(
                        need,
                        &stop,
                        |client, key| {
                            let request = request.clone();
                            async move { client.generate(&key, &request).await }
                        },
                        |_, _| {},
                    )
                    .await;
                done.push((item, result));
            }
        });
    }
    let mut results: Vec<(u64, Result<Reply, CallError>)> =
        workers.join_all().await.into_iter().flatten().collect();
    results.sort_by_key(|(item, _)| *item);
    results.into_iter().map(|(_, result)| result).collect()
}

/// Runs `items` items of `scenario` on tokio's clock and checks what the
/// bench checks: every item ok with its own prompt's digest, no project over
/// its RPM in any 60 s, the ratio to the ideal time at least `min_ratio`
/// (the bench's goal for learned limits, the README's figure when they are
/// configured), and at most `max_429s` 429s.
async fn pace(scenario: Scenario, items: u64, min_ratio: f64, max_429s: u64) {
    let sim = Simulator::new(&sim_config(scenario)).expect("simulator");
    let config = Config::parse(
        &keyfan_config(scenario, BASE_URL),
        Path::new("pacing.yaml"),
        |_| None,
        MissingEnv::Error,
    )
    .expect("valid keyfan config");

    let started = Instant::now();
    let results = drive(&config, &sim, items, |i| Sent {
        model: MODEL,
        prompt: prompt(i),
        max_output_tokens: None,
    })
    .await;
    let achieved = started.elapsed();

    for (item, result) in (0..items).zip(&results) {
        let reply = result
            .as_ref()
            .unwrap_or_else(|e| panic!("item {item} failed: {e}"));
        assert!(
            reply.text.contains(&digest(&prompt(item))),
            "item {item} got another prompt's reply: {}",
            reply.text
        );
    }
    let stats = sim.stats();
    let rate_limited: u64 = stats.projects.values().map(|p| p.rate_limited).sum();
    let ratio = ideal(items).as_secs_f64() / achieved.as_secs_f64();
    let what = format!(
        "{} N={items}: {achieved:?} for an ideal of {:?}, ratio {ratio:.3}; \
         {} requests, {rate_limited} 429s",
        scenario.name(),
        ideal(items),
        stats.requests,
    );
    for (project, max) in max_in_60s(&stats) {
        assert!(
            max <= u64::from(RPM),
            "{what}: {project} admitted {max} in 60 s"
        );
    }
    assert!(ratio >= min_ratio, "{what}: ratio below {min_ratio}");
    // No client can beat the ideal: a ratio above 1 means the pool and the
    // simulator did not share one clock.
    assert!(ratio <= 1.0, "{what}: faster than the ideal");
    assert!(
        rate_limited <= max_429s,
        "{what}: more than {max_429s} 429s"
    );
}

#[tokio::test(start_paused = true)]
async fn configured_limits_480_items_fill_two_windows_without_a_429() {
    pace(Scenario::Configured, 480, 0.99, 0).await;
}

#[tokio::test(start_paused = true)]
async fn configured_limits_960_items_fill_four_windows_without_a_429() {
    pace(Scenario::Configured, 960, 0.99, 0).await;
}

#[tokio::test(start_paused = true)]
async fn learned_limits_480_items_cost_only_the_first_429s() {
    pace(Scenario::Learned, 480, 0.85, 48).await;
}

#[tokio::test(start_paused = true)]
async fn learned_limits_960_items_cost_only_the_first_429s() {
    pace(Scenario::Learned, 960, 0.85, 96).await;
}
