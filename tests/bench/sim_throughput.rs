//! `cargo bench --bench sim_throughput`: how many `generateContent` requests
//! per second the simulator serves, against a goal of 5,000 req/s.
//!
//! The simulator runs in-process on 127.0.0.1 (ephemeral port) with latency
//! 0, one project, two keys and no limits, so only its HTTP and bookkeeping
//! path is measured. A pool of tasks sharing one `reqwest::Client` keeps
//! `KEYFAN_BENCH_CONCURRENCY` (default 64) requests in flight until
//! `KEYFAN_BENCH_REQUESTS` (default 200,000) have been answered; every answer
//! must be a 200 whose text carries the digest of its own prompt. The client
//! shares the machine's cores with the server, so the figure is a lower bound
//! on what the server alone sustains.
//!
//! Without `--bench` (`cargo test --benches`) it runs 2,000 requests as a
//! smoke test and does not judge the rate.

mod common;

use common::{bench_mode, cores, digest, env_u64, runtime};
use keyfan::sim::{ProjectConfig, SimConfig, SimServer};
use keyfan::types::ApiKey;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const GOAL_RPS: f64 = 5_000.0;
const MODEL: &str = "gemini-2.5-flash";
const KEYS: [&str; 2] = ["bench-throughput-key-1", "bench-throughput-key-2"];
/// Requests sent before timing starts: opens the connections and warms caches.
const WARM_UP: u64 = 1_000;

fn main() -> ExitCode {
    let bench = bench_mode();
    let requests = env_u64("KEYFAN_BENCH_REQUESTS", if bench { 200_000 } else { 2_000 }).max(1);
    let concurrency = env_u64("KEYFAN_BENCH_CONCURRENCY", 64).max(1);
    runtime().block_on(run(bench, requests, concurrency))
}

/// What the client tasks saw.
#[derive(Default)]
struct Tally {
    ok: u64,
    bad: u64,
    first_bad: Option<String>,
    latencies_us: Vec<u32>,
}

async fn run(bench: bool, requests: u64, concurrency: u64) -> ExitCode {
    let config = SimConfig {
        seed: 1,
        projects: vec![ProjectConfig {
            name: "bench-project".to_owned(),
            keys: KEYS.iter().map(|k| ApiKey::new(*k)).collect(),
            limits: Default::default(),
        }],
        ..SimConfig::default()
    };
    let server = SimServer::start(config, ([127, 0, 0, 1], 0).into())
        .await
        .expect("simulator starts");
    let url = format!(
        "{}/v1beta/models/{MODEL}:generateContent",
        server.base_url()
    );
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(usize::MAX)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client");

    println!(
        "sim_throughput: {} requests, {concurrency} in flight, {} cores shared by client and server{}",
        requests,
        cores(),
        if bench {
            ""
        } else {
            " (smoke mode: run `cargo bench --bench sim_throughput` to measure)"
        }
    );

    let warm = drive(&client, &url, WARM_UP.min(requests), concurrency, 0).await;
    let started = Instant::now();
    let tally = drive(&client, &url, requests, concurrency, WARM_UP).await;
    let elapsed = started.elapsed();
    let stats = server.stats();
    server.shutdown().await;

    let rps = requests as f64 / elapsed.as_secs_f64();
    let ratio = rps / GOAL_RPS;
    let mut latencies = tally.latencies_us;
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |&us| f64::from(us) / 1000.0)
    };
    let sent = WARM_UP.min(requests) + requests;
    let project = stats.projects.get("bench-project");
    let server_ok = project.map_or(0, |p| p.ok);

    println!("  elapsed        {:.3} s", elapsed.as_secs_f64());
    println!("  throughput     {rps:.0} req/s");
    println!(
        "  latency        p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(0.50),
        pct(0.99),
        pct(1.0)
    );
    println!(
        "  answers        {} ok, {} not ok (server counted {} requests, {} ok)",
        tally.ok + warm.ok,
        tally.bad + warm.bad,
        stats.requests,
        server_ok
    );
    println!(
        "  ratio          {ratio:.2} (achieved / goal of {GOAL_RPS:.0} req/s); a lower bound: \
         the client shares the {} cores with the server",
        cores()
    );

    let mut failed = false;
    let mut goal = |name: &str, pass: bool| {
        println!("  {} {name}", if pass { "PASS" } else { "FAIL" });
        failed |= !pass;
    };
    let all_ok = tally.bad + warm.bad == 0 && stats.requests == sent && server_ok == sent;
    goal("every request answered 200 with its own digest", all_ok);
    if let Some(first) = tally.first_bad.or(warm.first_bad) {
        println!("    first bad answer: {first}");
    }
    if bench {
        goal(&format!("throughput >= {GOAL_RPS:.0} req/s"), ratio >= 1.0);
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Sends `requests` requests numbered from `first`, `concurrency` at a time,
/// each task taking the next number until none is left.
async fn drive(
    client: &reqwest::Client,
    url: &str,
    requests: u64,
    concurrency: u64,
    first: u64,
) -> Tally {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.min(requests) {
        let (client, url, next) = (client.clone(), url.to_owned(), Arc::clone(&next));
        tasks.spawn(async move {
            let mut tally = Tally::default();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= requests {
                    break tally;
                }
                let i = first + n;
                let prompt = format!("ping {i}");
                let body = serde_json::json!({
                    "contents": [{"role": "user", "parts": [{"text": prompt}]}]
                });
                let sent = Instant::now();
                let verdict = async {
                    let response = client
                        .post(&url)
                        .header("x-goog-api-key", KEYS[(i % 2) as usize])
                        .json(&body)
                        .send()
                        .await
                        .map_err(|e| format!("request {i}: {e}"))?;
                    let status = response.status();
                    let text = response
                        .text()
                        .await
                        .map_err(|e| format!("request {i}: body: {e}"))?;
                    if status != 200 {
                        return Err(format!("request {i}: status {status}: {text}"));
                    }
                    if !text.contains(&digest(&prompt)) {
                        return Err(format!("request {i}: wrong digest: {text}"));
                    }
                    Ok(())
                }
                .await;
                let us = sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                tally.latencies_us.push(us);
                match verdict {
                    Ok(()) => tally.ok += 1,
                    Err(e) => {
                        tally.bad += 1;
                        tally.first_bad.get_or_insert(e);
                    }
                }
            }
        });
    }
    let mut total = Tally::default();
    while let Some(done) = tasks.join_next().await {
        let t = done.expect("client task does not panic");
        total.ok += t.ok;
        total.bad += t.bad;
        if total.first_bad.is_none() {
            total.first_bad = t.first_bad;
        }
        total.latencies_us.extend(t.latencies_us);
    }
    total
}
