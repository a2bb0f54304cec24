//! `cargo bench --bench quota`: issue 3's acceptance benchmark. How close
//! keyfan's real scheduler (`run::execute` with a `Pool`, a `Store`, a
//! `Sink`) comes to the aggregate quota of its accounts without drawing 429s.
//!
//! # Setup
//! A fresh in-process simulator per run (so no rolling window carries over):
//! 2 projects with 2 keys each, `rpm: 120` each for `gemini-2.5-flash`,
//! latency uniform 0–50 ms. keyfan runs with concurrency 32 on a job of N
//! items whose prompts all differ; every result row must be `ok` and carry
//! the digest of its own prompt.
//!
//! # Scenarios (`KEYFAN_BENCH_SCENARIOS=configured,learned,faults`)
//! 1. `configured`: the config states `rpm: 120` per account. Goals: ratio
//!    ≥ 0.95, zero 429s.
//! 2. `learned`: the config states no limits; keyfan learns them from each
//!    account's first 429 (its body carries `quotaValue`). Goals: ratio ≥
//!    0.85, 429s ≤ 10% of requests.
//! 3. `faults`: limits configured; the simulator injects 5% 503, 2% 500, 1%
//!    hangs of 30 s, 1% truncated bodies; the config has one extra key the
//!    simulator does not know; `timeout: 3s`, `max_retries: 8`. Goals: every
//!    item ok, the invalid key sent at most one request, requests ≤ 1.15 ×
//!    items. (Its ratio is printed, not judged: failed requests count against
//!    quota, so more than N must be admitted.)
//!
//! In every scenario the simulator's `max_requests_in_60s` must stay ≤ 120
//! per project (the simulator refuses beyond it, so this checks the
//! bookkeeping rather than keyfan).
//!
//! # The ideal time
//! The simulator counts a rolling 60 s window per project. The fastest any
//! client can finish is to send each project's `rpm` requests at once at
//! t = 0, the next `rpm` exactly when the first leave the window at t = 60 s,
//! and so on. N items over P projects need B = ⌈N / (P·rpm)⌉ such batches,
//! and the last one ends one latency after it is sent:
//!
//! ```text
//! ideal = (⌈N / (P·rpm)⌉ − 1) · 60 s + L,   L = the latency's maximum (50 ms)
//! ```
//!
//! N = 480, P = 2, rpm = 120: B = 2, ideal = 60.05 s; N = 960: 180.05 s.
//! The formula ignores that 32 requests in flight need ⌈batch / 32⌉ rounds
//! of latency for the last batch (8 × 25 ms mean ≈ 0.2 s at N = 480), so it
//! is slightly strict; and when N ≤ P·rpm it is one latency, which no client
//! at concurrency 32 can approach, so the ratio goal is not judged then.
//! `ratio = ideal / achieved`, 1.0 being perfect.
//!
//! Item counts: N = 480 and 960 for `configured` and `learned`, 480 for
//! `faults`; `KEYFAN_BENCH_ITEMS=480,960,1440` replaces the list for every
//! scenario run. Each run of N ≥ 241 takes at least a minute of real time:
//! the window is real. Exits 1 if any goal fails.
//!
//! Without `--bench` (`cargo test --benches`) it runs each scenario once with
//! N = 200 (one window) as a smoke test of correctness; ratios are not judged.

mod common;

use common::pacing::{
    ideal, keyfan_config, max_in_60s, prompt, sim_config, Scenario, CONCURRENCY, INVALID_KEY,
    LATENCY_MAX_MS, MODEL, PROJECTS, RPM,
};
use common::{bench_mode, digest, env_list, fail, runtime};
use keyfan::config::{Config, MissingEnv};
use keyfan::pool::Pool;
use keyfan::provider::Scrubber;
use keyfan::run::RetryPolicy;
use keyfan::run::{self, Observer, Options, Recording, Stop};
use keyfan::sim::SimServer;
use keyfan::sink::{Sink, Target};
use keyfan::store::{AttemptClass, AttemptRow, Store};
use keyfan::types::ApiKey;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl Scenario {
    fn parse(s: &str) -> Scenario {
        match s {
            "configured" => Scenario::Configured,
            "learned" => Scenario::Learned,
            "faults" => Scenario::Faults,
            _ => fail(&format!(
                "KEYFAN_BENCH_SCENARIOS: unknown scenario {s:?} (configured, learned, faults)"
            )),
        }
    }
}

fn main() -> ExitCode {
    let bench = bench_mode();
    let scenarios: Vec<Scenario> = env_list("KEYFAN_BENCH_SCENARIOS")
        .map(|l| l.iter().map(|s| Scenario::parse(s)).collect())
        .unwrap_or_else(|| vec![Scenario::Configured, Scenario::Learned, Scenario::Faults]);
    let items: Option<Vec<u64>> = env_list("KEYFAN_BENCH_ITEMS").map(|l| {
        l.iter()
            .map(|s| match s.replace('_', "").parse::<u64>() {
                Ok(n) if n > 0 => n,
                _ => fail(&format!(
                    "KEYFAN_BENCH_ITEMS: {s:?} is not a positive integer"
                )),
            })
            .collect()
    });
    let plan: Vec<(Scenario, u64)> = scenarios
        .iter()
        .flat_map(|&s| {
            let ns = match (&items, bench) {
                (Some(ns), _) => ns.clone(),
                (None, true) => s.default_items(),
                (None, false) => vec![200],
            };
            ns.into_iter().map(move |n| (s, n))
        })
        .collect();

    let estimate: f64 = plan
        .iter()
        .map(|&(_, n)| ideal(n).as_secs_f64() * 1.1)
        .sum();
    println!(
        "quota: {} run(s): {}; 2 projects x rpm {RPM}, 4 keys, latency 0-{LATENCY_MAX_MS} ms, \
         concurrency {CONCURRENCY}; at least ~{:.0} min of real time{}",
        plan.len(),
        plan.iter()
            .map(|(s, n)| format!("{} N={n}", s.name()))
            .collect::<Vec<_>>()
            .join(", "),
        (estimate / 60.0).ceil(),
        if bench {
            ""
        } else {
            " (smoke mode: run `cargo bench --bench quota` to measure)"
        }
    );

    let rt = runtime();
    let mut outcomes = Vec::new();
    for &(scenario, n) in &plan {
        let outcome = rt.block_on(run_one(scenario, n, bench));
        outcome.print_detail();
        outcomes.push(outcome);
    }

    println!("\n## keyfan quota benchmark (`cargo bench --bench quota`)\n");
    println!(
        "| scenario | items | achieved | ideal | ratio (goal) | 429s | requests | max in 60 s (a / b) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for o in &outcomes {
        println!("{}", o.table_row());
    }
    println!("\n### Goals\n");
    let mut failed = 0;
    for o in &outcomes {
        for (goal, pass) in &o.goals {
            println!(
                "- {} {} N={}: {goal}",
                if *pass { "PASS" } else { "FAIL" },
                o.scenario.name(),
                o.items
            );
            failed += usize::from(!pass);
        }
    }
    if failed > 0 {
        println!("\n{failed} goal(s) FAILED");
        ExitCode::FAILURE
    } else {
        println!("\nall goals PASS");
        ExitCode::SUCCESS
    }
}

/// Sees nothing: the benchmark reads the store and the results afterwards.
struct NoDisplay;

impl Observer for NoDisplay {}

/// One run's figures and verdicts.
struct Outcome {
    scenario: Scenario,
    items: u64,
    achieved: Duration,
    ideal: Duration,
    ratio: f64,
    /// 429s the simulator sent.
    rate_limited: u64,
    /// Generate requests the simulator received (any key, any outcome).
    requests: u64,
    max_in_60s: Vec<(String, u64)>,
    /// Faults only: the requests the server counted against quota (items
    /// plus the failed attempts a perfect client would resend too), and the
    /// ratio to the ideal time for that many.
    counted_ratio: Option<(u64, f64)>,
    goals: Vec<(String, bool)>,
    detail: String,
}

impl Outcome {
    fn table_row(&self) -> String {
        let goal = match (self.scenario.ratio_goal(), &self.counted_ratio) {
            (Some(g), _) if self.items > PROJECTS.len() as u64 * u64::from(RPM) => {
                format!("(≥ {g:.2})")
            }
            (_, Some((counted, ratio))) => {
                format!("(no goal; {ratio:.3} for the {counted} requests counted)")
            }
            _ => "(no goal)".to_owned(),
        };
        format!(
            "| {} | {} | {:.2} s | {:.2} s | {:.3} {goal} | {} | {} | {} |",
            self.scenario.name(),
            self.items,
            self.achieved.as_secs_f64(),
            self.ideal.as_secs_f64(),
            self.ratio,
            self.rate_limited,
            self.requests,
            self.max_in_60s
                .iter()
                .map(|(_, m)| m.to_string())
                .collect::<Vec<_>>()
                .join(" / ")
        )
    }

    fn print_detail(&self) {
        print!("{}", self.detail);
        for (goal, pass) in &self.goals {
            println!("  {} {goal}", if *pass { "PASS" } else { "FAIL" });
        }
    }
}

async fn run_one(scenario: Scenario, items: u64, bench: bool) -> Outcome {
    let dir = tempfile::tempdir().expect("temp dir");
    let job = dir.path().join("job.jsonl");
    let mut text = String::new();
    for i in 0..items {
        text.push_str(&serde_json::json!({"id": format!("q{i}"), "prompt": prompt(i)}).to_string());
        text.push('\n');
    }
    std::fs::write(&job, text).expect("write job");

    let server = SimServer::start(sim_config(scenario), ([127, 0, 0, 1], 0).into())
        .await
        .expect("simulator starts");
    let config = Config::parse(
        &keyfan_config(scenario, &server.base_url()),
        Path::new("bench-config.yaml"),
        |_| None,
        MissingEnv::Error,
    )
    .expect("valid keyfan config");
    let pool = Arc::new(Pool::new(&config, config.strategy, None).expect("pool"));
    let clients = Arc::new(run::Clients::new(&config).expect("clients"));
    let store = Store::open(&dir.path().join("state.db")).expect("store");
    let run_id = store
        .create_run(&job.display().to_string(), "bench", true)
        .expect("run");
    let results = dir.path().join("results.jsonl");
    let sink = Sink::create(&Target::File(results.clone())).expect("results file");
    let options = Options {
        job_hash: keyfan::job::validate(&job).expect("valid job").content_hash,
        job: job.clone(),
        total: items,
        concurrency: config.concurrency,
        policy: RetryPolicy {
            max_retries: config.max_retries,
            ..RetryPolicy::default()
        },
        default_model: config.model.clone(),
        done: Arc::default(),
        first_lines: Arc::default(),
        prior_attempts: Arc::default(),
        only: None,
        budget: None,
        default_output_cap: None,
        prices: Default::default(),
        media: Default::default(),
        deps: Default::default(),
    };
    let recording = Recording {
        store,
        run: run_id,
        sink,
        observer: Box::new(NoDisplay),
        // The simulator's keys are no secrets.
        scrubber: Scrubber::default(),
    };

    println!(
        "\n== {} N={items}: ideal {:.2} s ...",
        scenario.name(),
        ideal(items).as_secs_f64()
    );
    let wall_start = chrono::Utc::now();
    let started = Instant::now();
    let (summary, store) = run::execute(&options, pool, clients, recording, &Stop::default())
        .await
        .expect("the run completes");
    let achieved = started.elapsed();
    let stats = server.stats();
    server.shutdown().await;

    // Results: one row per item, `ok`, with the digest of its own prompt.
    let prompts: HashMap<String, String> =
        (0..items).map(|i| (format!("q{i}"), prompt(i))).collect();
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&results)
        .expect("results file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON results line"))
        .collect();
    let mut seen = HashSet::new();
    let mut bad_rows = Vec::new();
    for row in &rows {
        let id = row["id"].as_str().unwrap_or_default().to_owned();
        let good = row["status"] == "ok"
            && prompts.get(&id).is_some_and(|p| {
                row["output"]
                    .as_str()
                    .is_some_and(|out| out.contains(&digest(p)))
            })
            && seen.insert(id.clone());
        if !good {
            bad_rows.push(row.to_string());
        }
    }
    let rows_ok = rows.len() as u64 == items && bad_rows.is_empty() && seen.len() as u64 == items;
    let counts: BTreeMap<String, u64> = store
        .status_counts(run_id)
        .expect("status counts")
        .into_iter()
        .map(|(status, n)| (status.as_str().to_owned(), n))
        .collect();

    // Attempts, from the store: what keyfan itself saw.
    let mut attempts: Vec<AttemptRow> = Vec::new();
    store
        .for_each_attempt(run_id, |a| attempts.push(a))
        .expect("attempts");
    let by_class = attempts.iter().fold(BTreeMap::new(), |mut m, a| {
        *m.entry(a.class.as_str()).or_insert(0u64) += 1;
        m
    });

    let rate_limited: u64 = stats.projects.values().map(|p| p.rate_limited).sum();
    let requests = stats.requests;
    let max_in_60s = max_in_60s(&stats);
    let invalid_requests = stats
        .keys
        .get(ApiKey::new(INVALID_KEY).fingerprint())
        .map_or(0, |k| k.requests);
    let ideal = ideal(items);
    let ratio = ideal.as_secs_f64() / achieved.as_secs_f64();

    let mut detail = String::new();
    let _ = writeln!(
        detail,
        "  achieved {:.2} s (run::execute says {:.2} s), ideal {:.2} s, ratio {ratio:.3}",
        achieved.as_secs_f64(),
        summary.elapsed.as_secs_f64(),
        ideal.as_secs_f64()
    );
    let _ = writeln!(
        detail,
        "  simulator: {requests} requests, {rate_limited} 429s; per project: {}",
        stats
            .projects
            .iter()
            .map(|(name, p)| format!(
                "{name} {} counted / {} ok / {} 429 / max {} in 60 s",
                p.requests - p.rate_limited,
                p.ok,
                p.rate_limited,
                p.models.get(MODEL).map_or(0, |m| m.max_requests_in_60s)
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let _ = writeln!(
        detail,
        "  keyfan's store: items {counts:?}; attempts {} {by_class:?}",
        attempts.len()
    );
    let _ = writeln!(
        detail,
        "  results: {} rows, {} not ok or without their own digest{}",
        rows.len(),
        bad_rows.len(),
        bad_rows
            .first()
            .map_or(String::new(), |r| format!(" (first: {r})"))
    );
    detail.push_str(&timeline(&attempts, wall_start));
    if rate_limited > 0 {
        detail.push_str(&diagnose_429s(&attempts, wall_start));
    }
    let mut counted_ratio = None;
    if scenario == Scenario::Faults {
        let counted: u64 = stats
            .projects
            .values()
            .map(|p| p.requests - p.rate_limited)
            .sum();
        counted_ratio = Some((
            counted,
            self::ideal(counted).as_secs_f64() / achieved.as_secs_f64(),
        ));
        let _ = writeln!(
            detail,
            "  faults: the invalid key sent {invalid_requests} request(s); requests / items = {:.3}; \
             the ideal for the {counted} requests the server counted against quota would be {:.2} s \
             (ratio {:.3})",
            requests as f64 / items as f64,
            self::ideal(counted).as_secs_f64(),
            self::ideal(counted).as_secs_f64() / achieved.as_secs_f64()
        );
    }

    let mut goals = vec![(
        format!("all {items} items ok, each with its own digest"),
        rows_ok,
    )];
    goals.push((
        format!(
            "max_requests_in_60s <= {RPM} per project ({})",
            max_in_60s
                .iter()
                .map(|(n, m)| format!("{n} {m}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        max_in_60s.iter().all(|(_, m)| *m <= u64::from(RPM)),
    ));
    let windowed = items > PROJECTS.len() as u64 * u64::from(RPM);
    if let Some(goal) = scenario.ratio_goal() {
        if bench && windowed {
            goals.push((format!("ratio {ratio:.3} >= {goal:.2}"), ratio >= goal));
        }
    }
    match scenario {
        Scenario::Configured => {
            goals.push((format!("zero 429s ({rate_limited})"), rate_limited == 0))
        }
        Scenario::Learned => goals.push((
            format!(
                "429s <= 10% of requests ({rate_limited} of {requests} = {:.1}%)",
                100.0 * rate_limited as f64 / requests.max(1) as f64
            ),
            rate_limited * 10 <= requests,
        )),
        Scenario::Faults => {
            goals.push((
                format!("the invalid key sent at most 1 request ({invalid_requests})"),
                invalid_requests <= 1,
            ));
            goals.push((
                format!(
                    "requests <= 1.15 x items ({requests} <= {:.0})",
                    1.15 * items as f64
                ),
                requests as f64 <= 1.15 * items as f64,
            ));
        }
    }
    Outcome {
        scenario,
        items,
        achieved,
        ideal,
        ratio,
        rate_limited,
        requests,
        max_in_60s,
        counted_ratio,
        goals,
        detail,
    }
}

/// Seconds from `start` at which an attempt was sent and answered (the
/// store keeps the answer's time to the millisecond and the latency).
fn times(a: &AttemptRow, start: chrono::DateTime<chrono::Utc>) -> (f64, f64) {
    let done = chrono::DateTime::parse_from_rfc3339(&a.at)
        .map(|t| (t.with_timezone(&chrono::Utc) - start).num_milliseconds() as f64 / 1000.0)
        .unwrap_or(f64::NAN);
    // Both figures are truncated to the millisecond: clamp the first
    // request's send time at the start.
    ((done - a.latency_ms as f64 / 1000.0).max(0.0), done)
}

/// Requests per account sent in each 10 s slice of the run: shows how each
/// window was used.
fn timeline(attempts: &[AttemptRow], start: chrono::DateTime<chrono::Utc>) -> String {
    let mut slices: BTreeMap<(String, i64), u64> = BTreeMap::new();
    for a in attempts {
        let (sent, _) = times(a, start);
        *slices
            .entry((a.account.clone(), (sent / 10.0).floor() as i64))
            .or_default() += 1;
    }
    let mut out = String::from("  requests sent per 10 s slice (from keyfan's store):\n");
    for (name, _) in PROJECTS {
        let line: Vec<String> = slices
            .iter()
            .filter(|((account, _), _)| account == name)
            .map(|((_, slice), n)| format!("{}s:{n}", slice * 10))
            .collect();
        let _ = writeln!(out, "    {name}: {}", line.join(" "));
    }
    out
}

/// Where the 429s came from: for each account, when its first 429 was
/// answered (the earliest the pool could learn), how many 429s were sent
/// before that (in flight) and after it, and when the account next got an
/// answer that was not a 429 (the cool-down it actually sat out).
fn diagnose_429s(attempts: &[AttemptRow], start: chrono::DateTime<chrono::Utc>) -> String {
    let mut out = String::from("  429 diagnosis:\n");
    for (name, _) in PROJECTS {
        let mine: Vec<(&AttemptRow, f64, f64)> = attempts
            .iter()
            .filter(|a| a.account == name)
            .map(|a| {
                let (sent, done) = times(a, start);
                (a, sent, done)
            })
            .collect();
        let limited: Vec<&(&AttemptRow, f64, f64)> = mine
            .iter()
            .filter(|(a, _, _)| a.class == AttemptClass::RateLimited)
            .collect();
        let Some(first) = limited
            .iter()
            .map(|(_, _, done)| *done)
            .min_by(f64::total_cmp)
        else {
            let _ = writeln!(out, "    {name}: no 429");
            continue;
        };
        let in_flight = limited.iter().filter(|(_, sent, _)| *sent <= first).count();
        let last = limited
            .iter()
            .map(|(_, _, done)| *done)
            .max_by(f64::total_cmp)
            .unwrap_or(first);
        let resumed = mine
            .iter()
            .filter(|(a, sent, _)| a.class != AttemptClass::RateLimited && *sent > last)
            .map(|(_, sent, _)| *sent)
            .min_by(f64::total_cmp);
        let _ = writeln!(
            out,
            "    {name}: {} 429s; first answered at {first:.3} s; {in_flight} of them sent before it \
             (in flight), {} after; last at {last:.3} s; next request sent at {}",
            limited.len(),
            limited.len() - in_flight,
            resumed.map_or("never".to_owned(), |t| format!(
                "{t:.3} s ({:.1} s after the last 429)",
                t - last
            ))
        );
    }
    out
}
