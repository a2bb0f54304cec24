//! PostgreSQL as the shared state of several hosts: the day's ledger, the
//! minute slices, learned limits, the run row and the work queue.
//!
//! These tests need a PostgreSQL server: `KEYFAN_TEST_PG_URL` names it
//! (`.ci/with-postgres` starts a throwaway one and sets it). Without it each
//! test says it is skipped and passes, unless `KEYFAN_REQUIRE_PG=1` (as in
//! CI), when it fails. Each test works in its own database, so they run in
//! parallel.

use keyfan::store::postgres::{Claim, JoinError, PgState, PgUrl, SliceRefused};
use keyfan::store::{QuotaLedger, Reservation, Reserved};
use keyfan::types::Limits;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A database of its own for one test, on the server the environment names;
/// `None` (the test is skipped) when none is named and none is required.
pub fn test_db(name: &str) -> Option<PgUrl> {
    let Ok(server) = std::env::var("KEYFAN_TEST_PG_URL") else {
        assert!(
            std::env::var("KEYFAN_REQUIRE_PG").as_deref() != Ok("1"),
            "KEYFAN_REQUIRE_PG=1 but KEYFAN_TEST_PG_URL is not set"
        );
        eprintln!("{name}: skipped: set KEYFAN_TEST_PG_URL (see README, PostgreSQL tests)");
        return None;
    };
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let db = format!(
        "kf_{name}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let mut admin = postgres::Client::connect(&server, postgres::NoTls)
        .unwrap_or_else(|e| panic!("KEYFAN_TEST_PG_URL {server} cannot be reached: {e}"));
    for statement in [
        format!("DROP DATABASE IF EXISTS {db}"),
        format!("CREATE DATABASE {db}"),
    ] {
        admin
            .batch_execute(&statement)
            .expect("create the test's database");
    }
    let (base, _) = server.rsplit_once('/').expect("a URL with a database");
    Some(PgUrl::parse(&format!("{base}/{db}")).expect("a postgres URL"))
}

/// Runs `f` on a thread of its own: the synchronous client must not run on
/// a thread that drives the test's async runtime.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| scope.spawn(f).join().expect("no panic"))
}

fn connect(url: &PgUrl, host: &str) -> PgState {
    PgState::connect(url, host).expect("connect to the test database")
}

fn request(account: &str, limit: Option<u64>) -> Reservation {
    Reservation {
        account: account.to_owned(),
        model: "gemini-2.5-flash".to_owned(),
        day: "2026-11-28".parse().unwrap(),
        limit,
    }
}

#[test]
fn two_hosts_never_pass_a_daily_limit_together() {
    let Some(url) = test_db("daily") else { return };
    let limit = 150;
    let counted: usize = std::thread::scope(|scope| {
        let hosts: Vec<_> = (0..2)
            .map(|h| {
                let url = &url;
                scope.spawn(move || {
                    let mut state = connect(url, &format!("host{h}"));
                    (0..100)
                        .map(|_| {
                            let verdicts = state.reserve(&[request("a", Some(limit))]).unwrap();
                            usize::from(verdicts[0] == Reserved::Reserved)
                        })
                        .sum::<usize>()
                })
            })
            .collect();
        hosts.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(counted, limit as usize);
    let mut state = connect(&url, "check");
    assert_eq!(
        state
            .day_count("a", "gemini-2.5-flash", "2026-11-28")
            .unwrap(),
        limit
    );
    // Refused: the reset is the quota day's end; a release gives one back.
    let verdict = state.reserve(&[request("a", Some(limit))]).unwrap()[0];
    let reset = "2026-11-28"
        .parse::<keyfan::types::QuotaDay>()
        .unwrap()
        .reset();
    assert_eq!(verdict, Reserved::Exhausted { reset });
    state.release(&[request("a", Some(limit))]).unwrap();
    assert_eq!(
        state.reserve(&[request("a", Some(limit))]).unwrap()[0],
        Reserved::Reserved
    );
    // Requests that arrive together are counted together when they all
    // fit, and one by one up to the limit when they do not.
    let together = |verdicts: Vec<Reserved>| {
        verdicts
            .iter()
            .filter(|v| **v == Reserved::Reserved)
            .count()
    };
    assert_eq!(
        together(state.reserve(&vec![request("e", Some(10)); 6]).unwrap()),
        6
    );
    assert_eq!(
        together(state.reserve(&vec![request("e", Some(10)); 6]).unwrap()),
        4
    );
    assert_eq!(
        state
            .day_count("e", "gemini-2.5-flash", "2026-11-28")
            .unwrap(),
        10
    );
    // Another account is not held back; a zero limit refuses at once.
    assert_eq!(
        state.reserve(&[request("b", Some(limit))]).unwrap()[0],
        Reserved::Reserved
    );
    assert!(matches!(
        state.reserve(&[request("c", Some(0))]).unwrap()[0],
        Reserved::Exhausted { .. }
    ));
}

#[test]
fn minute_slices_of_two_hosts_stay_within_the_limit_and_come_back() {
    let Some(url) = test_db("slices") else { return };
    let limits = Limits {
        rpm: Some(30),
        tpm: Some(10_000),
        ..Limits::default()
    };
    let model = "gemini-2.5-flash";
    // Two hosts race for slices of 4 requests: together they get exactly
    // the minute's 30, never more.
    let granted: u64 = std::thread::scope(|scope| {
        let hosts: Vec<_> = (0..2)
            .map(|h| {
                let url = &url;
                scope.spawn(move || {
                    let mut state = connect(url, &format!("host{h}"));
                    let mut granted = 0;
                    while let Ok(slice) = state
                        .take_slice("proj-a", model, limits, 4, 100, Duration::from_secs(5))
                        .unwrap()
                    {
                        granted += slice.requests;
                    }
                    granted
                })
            })
            .collect();
        hosts.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(granted, 30, "the hosts' slices add up to the limit");
    let mut a = connect(&url, "a");
    let refused = a
        .take_slice("proj-a", model, limits, 1, 0, Duration::from_secs(5))
        .unwrap()
        .unwrap_err();
    assert!(
        refused.retry_in <= Duration::from_secs(5),
        "the open slices may come back when they end: {refused:?}"
    );
    // Another account, and the token limit: a slice is cut to the tokens left.
    let slice = a
        .take_slice("proj-b", model, limits, 10, 9_000, Duration::from_secs(5))
        .unwrap()
        .unwrap();
    assert_eq!((slice.requests, slice.tokens), (10, 9_000));
    let cut = a
        .take_slice("proj-b", model, limits, 10, 5_000, Duration::from_secs(5))
        .unwrap()
        .unwrap();
    assert_eq!((cut.requests, cut.tokens), (10, 1_000));
    // Giving back what was not used frees it for every host at once.
    a.give_back(slice.id, 2, 100).unwrap();
    let mut b = connect(&url, "b");
    let freed = b
        .take_slice("proj-b", model, limits, 20, 8_000, Duration::from_secs(5))
        .unwrap()
        .unwrap();
    assert_eq!((freed.requests, freed.tokens), (18, 8_000));
    assert!(matches!(
        b.take_slice("proj-b", model, limits, 1, 0, Duration::from_secs(5))
            .unwrap(),
        Err(SliceRefused { .. })
    ));
}

#[test]
fn limits_learned_by_one_host_are_seen_by_the_other() {
    let Some(url) = test_db("learned") else {
        return;
    };
    let mut a = connect(&url, "a");
    let mut b = connect(&url, "b");
    assert!(b.learned().unwrap().is_empty());
    let rpm = Limits {
        rpm: Some(10),
        ..Limits::default()
    };
    a.learn("proj-a", "gemini-2.5-flash", rpm).unwrap();
    let rpd = Limits {
        rpd: Some(250),
        ..Limits::default()
    };
    a.learn("proj-a", "gemini-2.5-flash", rpd).unwrap();
    let learned = b.learned().unwrap();
    assert_eq!(
        learned,
        vec![(
            "proj-a".to_owned(),
            "gemini-2.5-flash".to_owned(),
            Limits {
                rpm: Some(10),
                rpd: Some(250),
                ..Limits::default()
            }
        )]
    );
}

fn items(n: u64) -> Vec<(u64, String)> {
    (1..=n).map(|line| (line, format!("q{line}"))).collect()
}

#[test]
fn hosts_claim_each_item_once_and_a_dead_hosts_claims_come_back() {
    let Some(url) = test_db("queue") else { return };
    let stale = Duration::from_secs(30);
    let lease = Duration::from_millis(800);
    let mut first = connect(&url, "first:1");
    let run = first
        .open_run("job.jsonl", "hash1", items(100), false, stale)
        .unwrap();
    assert!(matches!(run, Claim::Started(_)));
    let run = run.run();
    // A second plain run is refused, naming who holds the run.
    let mut second = connect(&url, "second:2");
    let held = second
        .open_run("job.jsonl", "hash1", items(100), false, stale)
        .unwrap_err();
    assert!(matches!(held, JoinError::Held { .. }), "{held}");
    let message = held.to_string();
    assert!(
        message.contains("first:1") && message.contains("--join"),
        "{message}"
    );
    assert_eq!(
        second
            .open_run("job.jsonl", "hash1", items(100), true, stale)
            .unwrap(),
        Claim::Joined(run)
    );

    // Both claim in chunks at once: no item is claimed twice.
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let claimed = Instant::now();
    for _ in 0..5 {
        a.extend(first.claim(run, 10, lease).unwrap());
        b.extend(second.claim(run, 10, lease).unwrap());
    }
    let lines: HashSet<u64> = a.iter().chain(&b).map(|c| c.line).collect();
    assert_eq!(lines.len(), 100, "every item claimed once");
    assert!(first.claim(run, 10, lease).unwrap().is_empty());

    // The first host finishes its items; the second dies holding its own.
    for item in &a {
        assert!(first
            .finish(run, item.line, &format!("{{\"id\":\"{}\"}}", item.id), "ok")
            .unwrap());
    }
    assert_eq!(first.open_items(run).unwrap(), 50);
    assert!(
        !first.close_run(run).unwrap(),
        "open items keep the run open"
    );
    // Before the lease runs out nothing is claimable; a live host renews.
    assert!(first.claim(run, 100, lease).unwrap().is_empty());
    let mut taken = Vec::new();
    while taken.len() < 50 {
        assert!(
            claimed.elapsed() < Duration::from_secs(10),
            "the dead host's claims never came back"
        );
        std::thread::sleep(Duration::from_millis(50));
        let back = first.claim(run, 100, lease).unwrap();
        assert!(
            back.is_empty() || claimed.elapsed() >= lease,
            "claims came back before their lease ran out"
        );
        taken.extend(back);
    }
    assert_eq!(taken.len(), 50);
    // The dead host, back from the dead, cannot finish what it lost.
    assert!(!second.finish(run, b[0].line, "{}", "ok").unwrap());
    for item in &taken {
        assert!(first
            .finish(run, item.line, &format!("{{\"id\":\"{}\"}}", item.id), "ok")
            .unwrap());
    }
    assert!(first.close_run(run).unwrap());
    let mut out = Vec::new();
    assert_eq!(first.results(run, &mut out).unwrap(), 100);
    let text = String::from_utf8(out).unwrap();
    let ids: Vec<&str> = text.lines().collect();
    assert_eq!(ids[0], "{\"id\":\"q1\"}");
    assert_eq!(ids[99], "{\"id\":\"q100\"}");
}

#[test]
fn a_renewed_claim_is_kept_and_an_unreachable_database_is_a_clear_error() {
    let Some(url) = test_db("renew") else { return };
    let lease = Duration::from_millis(600);
    let mut host = connect(&url, "live:1");
    let run = host
        .open_run(
            "job.jsonl",
            "hash2",
            items(3),
            false,
            Duration::from_secs(30),
        )
        .unwrap()
        .run();
    assert_eq!(host.claim(run, 3, lease).unwrap().len(), 3);
    let mut other = connect(&url, "other:2");
    let until = Instant::now() + lease * 3;
    while Instant::now() < until {
        assert_eq!(host.heartbeat(run, lease).unwrap(), 3);
        assert!(
            other.claim(run, 3, lease).unwrap().is_empty(),
            "a renewed claim was taken"
        );
        std::thread::sleep(lease / 4);
    }
    assert_eq!(host.unclaim(run).unwrap(), 3);
    assert_eq!(other.claim(run, 3, lease).unwrap().len(), 3);

    // Nothing listens on port 1: a clear, prompt error without the password.
    let dead = PgUrl::parse("postgres://kf:s3cr3t@127.0.0.1:1/keyfan").unwrap();
    let started = Instant::now();
    let error = PgState::connect(&dead, "x").unwrap_err().to_string();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        error.contains("postgres://kf@127.0.0.1:1/keyfan"),
        "{error}"
    );
    assert!(!error.contains("s3cr3t"), "{error}");
}

// ---- keyfan processes on one PostgreSQL, against the simulator ----

use crate::support::{explain, run_args, simulator, stats, wait_until, Workdir};
use keyfan::sim::SimServer;

const MODEL: &str = "gemini-2.5-flash";

/// The simulator's 2 projects × 2 keys, each project held to `limits`
/// (YAML flow map, e.g. `rpm: 30`) for the model.
fn sim_yaml(limits: &str) -> String {
    format!(
        "seed: 3\nlatency: {{ min_ms: 5, max_ms: 20 }}\nprojects:\n  - name: proj-a\n    keys: [pg-key-a1, pg-key-a2]\n    limits: {{ {MODEL}: {{ {limits} }} }}\n  - name: proj-b\n    keys: [pg-key-b1, pg-key-b2]\n    limits: {{ {MODEL}: {{ {limits} }} }}\n"
    )
}

/// A host: a work directory with `job` and a config for the same accounts
/// and `limits`.
fn host(sim: &SimServer, job: &str, limits: &str) -> Workdir {
    let work = Workdir::new();
    work.write("job.jsonl", job);
    let mut yaml = format!(
        "providers:\n  gemini:\n    base_url: {}\nmodel: {MODEL}\nconcurrency: 8\ntimeout: 5s\naccounts:\n",
        sim.base_url()
    );
    for project in ["a", "b"] {
        yaml.push_str(&format!(
            "  - name: proj-{project}\n    limits: {{ {MODEL}: {{ {limits} }} }}\n    keys: [pg-key-{project}1, pg-key-{project}2]\n"
        ));
    }
    work.write("config.yaml", &yaml);
    work
}

/// A job of `n` items; `variant` makes its content (and so its run) its own.
fn job(n: usize, variant: &str) -> String {
    crate::support::jsonl_job_with(n, |_| serde_json::json!({ "system": variant }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_with_separate_jobs_share_the_days_quota() {
    let Some(url) = off_runtime(|| test_db("day_e2e")) else {
        return;
    };
    let sim = simulator(&sim_yaml("rpd: 10")).await;
    let (one, two) = (
        host(&sim, &job(15, "one"), "rpd: 10"),
        host(&sim, &job(15, "two"), "rpd: 10"),
    );
    let state = url.to_string();
    let args = run_args(&state, &[]);
    let (a, b) = tokio::join!(one.keyfan(&args, &[]), two.keyfan(&args, &[]));
    // 30 items, a shared day of 20: what one host took, the other cannot,
    // and it defers the rest (exit 4).
    let mut codes = [a.status.code(), b.status.code()];
    codes.sort();
    assert!(
        codes == [Some(0), Some(4)] || codes == [Some(4), Some(4)],
        "{}\n{}",
        explain(&a),
        explain(&b)
    );
    let stats = stats(&sim).await;
    for (name, project) in &stats.projects {
        assert_eq!(
            project.requests, 10,
            "{name} got more than its day: {stats:?}"
        );
        assert_eq!(project.rate_limited, 0, "{name}: {stats:?}");
    }
    let day = keyfan::types::QuotaDay::today().to_string();
    let counts = off_runtime(|| {
        let mut state = connect(&url, "check");
        ["proj-a", "proj-b"].map(|p| state.day_count(p, MODEL, &day).unwrap())
    });
    assert_eq!(
        counts,
        [10, 10],
        "the shared ledger counted each project's day"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_with_separate_jobs_share_each_minute() {
    let Some(url) = off_runtime(|| test_db("minute_e2e")) else {
        return;
    };
    let sim = simulator(&sim_yaml("rpm: 30")).await;
    let (one, two) = (
        host(&sim, &job(40, "one"), "rpm: 30"),
        host(&sim, &job(40, "two"), "rpm: 30"),
    );
    let url = url.to_string();
    let args = run_args(&url, &[]);
    let mut hosts = [one.spawn(&args), two.spawn(&args)];
    // 80 items, a minute's room for 60: both hosts fill it, then wait.
    let sent = async || {
        let stats = stats(&sim).await;
        stats.projects.values().map(|p| p.requests).sum::<u64>()
    };
    wait_until(
        "the hosts fill the minute",
        Duration::from_secs(30),
        async || sent().await >= 60,
    )
    .await;
    // Whatever either host sends past the minute's room shows within a
    // second or so: watch for it before stopping them.
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_millis(1500) {
        assert!(
            sent().await <= 60,
            "the hosts together passed the minute's limit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for host in &mut hosts {
        host.kill().expect("kill keyfan");
        host.wait().expect("reap keyfan");
    }
    let stats = stats(&sim).await;
    for (name, project) in &stats.projects {
        assert_eq!(project.rate_limited, 0, "{name}: {stats:?}");
        let max = project.models[MODEL].max_requests_in_60s;
        assert!(max <= 30, "{name}: {max} requests in 60 s: {stats:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_sends_nothing_and_hides_its_password() {
    let sim = simulator(&sim_yaml("rpm: 30")).await;
    let work = host(&sim, &job(5, "x"), "rpm: 30");
    let args = run_args("postgres://kf:s3cr3t-pw@127.0.0.1:1/keyfan", &[]);
    let out = work.keyfan(&args, &[]).await;
    let said = explain(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("postgres://kf@127.0.0.1:1/keyfan"), "{said}");
    assert!(said.contains("nothing was sent"), "{said}");
    assert!(!said.contains("s3cr3t"), "{said}");
    assert_eq!(stats(&sim).await.requests, 0);
    // The same from the config's `state:`, its password from the environment.
    let config = work.read("config.yaml");
    work.write(
        "config.yaml",
        &format!("state: \"postgres://kf:${{KF_TEST_PG_PW}}@127.0.0.1:1/keyfan\"\n{config}"),
    );
    let out = work
        .keyfan(&args[..4], &[("KF_TEST_PG_PW", "s3cr3t-pw")])
        .await;
    let said = explain(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("postgres://kf@127.0.0.1:1/keyfan"), "{said}");
    assert!(!said.contains("s3cr3t"), "{said}");
    assert_eq!(stats(&sim).await.requests, 0);
    work.write("config.yaml", &config);
    // --join means nothing without a shared state.
    let out = work.keyfan(&[&args[..4], &["--join"]].concat(), &[]).await;
    assert_eq!(out.status.code(), Some(2), "{}", explain(&out));
}

/// The finished items of the newest run in the shared state.
fn done_items(url: &PgUrl) -> i64 {
    let mut client = postgres::Client::connect(&url.to_string(), postgres::NoTls).expect("connect");
    client
        .query_one(
            "SELECT count(*) FROM keyfan.items WHERE status = 'done'
               AND run_id = (SELECT max(id) FROM keyfan.runs)",
            &[],
        )
        .map_or(0, |row| row.get(0))
}

/// Whether the shared state has a run yet.
fn has_run(url: &PgUrl) -> bool {
    postgres::Client::connect(&url.to_string(), postgres::NoTls)
        .and_then(|mut c| c.query_one("SELECT count(*) FROM keyfan.runs", &[]))
        .is_ok_and(|row| row.get::<_, i64>(0) > 0)
}

/// Waits until the newest run has `n` finished items.
async fn wait_for_done(url: &PgUrl, n: i64, what: &str) {
    wait_until(what, Duration::from_secs(20), async || {
        off_runtime(|| done_items(url)) >= n
    })
    .await;
}

/// `keyfan results` writes every one of the job's `n` items once, each
/// with its own prompt's digest.
async fn assert_whole_results(work: &Workdir, state: &str, n: usize) {
    let out = work
        .keyfan(&["results", "--state", state, "--out", "all.jsonl"], &[])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    crate::support::assert_each_item_once_with_its_reply(&work.path("all.jsonl"), n);
}

/// The Hosts section of a report's JSON: `(host name, items it ended,
/// items it holds)` per host, and the run's pending items.
fn hosts_of(report: &serde_json::Value) -> (Vec<(String, u64, u64)>, u64) {
    let hosts = &report["hosts"];
    let rows = hosts["hosts"].as_array().expect("a Hosts section").iter();
    let rows = rows.map(|h| {
        let ended = h["ended"].as_object().expect("ended").values();
        let ended = ended.map(|n| n.as_u64().expect("a count")).sum();
        (
            h["host"].as_str().expect("a host").to_owned(),
            ended,
            h["claimed"].as_u64().expect("claimed"),
        )
    });
    (rows.collect(), hosts["pending"].as_u64().expect("pending"))
}

/// Each host's report covers both hosts of a joined run: `last` (the first
/// host, pid `pid`, out last, having written `last_results`) and `joined`
/// (which wrote `joined_results`). Each host's row counts the items it
/// ended, its report's items sum to the job's, and the last host's report,
/// its Markdown and `keyfan results --report` show the whole run ended.
async fn assert_hosts_sections(
    (last, pid, last_results): (&Workdir, u32, &[serde_json::Value]),
    (joined, joined_results): (&Workdir, &[serde_json::Value]),
    state: &str,
) {
    let n = (last_results.len() + joined_results.len()) as u64;
    let mine = format!(":{pid}");
    for (work, own, first_is_own) in [(last, last_results, true), (joined, joined_results, false)] {
        let report: serde_json::Value =
            serde_json::from_str(&work.read("job.report.json")).expect("the report's JSON");
        let (hosts, pending) = hosts_of(&report);
        assert_eq!(hosts.len(), 2, "{hosts:?}");
        let sum: u64 = hosts.iter().map(|(_, ended, held)| ended + held).sum();
        assert_eq!(sum + pending, n, "{hosts:?}");
        // A host's report counts every item it ended itself.
        let (own_row, _) = hosts
            .iter()
            .partition::<Vec<_>, _>(|(host, ..)| host.ends_with(&mine) == first_is_own);
        assert_eq!(own_row.len(), 1, "{hosts:?}");
        assert_eq!(own_row[0].1, own.len() as u64, "{hosts:?}");
    }
    let report: serde_json::Value =
        serde_json::from_str(&last.read("job.report.json")).expect("the report's JSON");
    let whole = &report["hosts"];
    assert_eq!(whole["status"], "done", "{whole}");
    assert_eq!(whole["totals"]["ended"]["ok"], n, "{whole}");
    let tokens: u64 = last_results
        .iter()
        .chain(joined_results)
        .map(|r| r["input_tokens"].as_u64().expect("input_tokens"))
        .sum();
    assert_eq!(whole["totals"]["input_tokens"], tokens, "{whole}");
    let md = last.read("job.report.md");
    let (hosts, _) = hosts_of(&report);
    assert!(
        md.contains("## Hosts")
            && hosts
                .iter()
                .all(|(host, ..)| md.contains(&format!("| {host} |")))
            && md.contains(&format!("| all hosts | {n} | 0 | 0 | 0 |")),
        "{md}"
    );
    let html = last.read("job.report.html");
    assert!(html.contains("<h2>Hosts</h2>") && html.contains("<td>all hosts</td>"));
    // The same section from the shared state alone.
    let out = last
        .keyfan(
            &[
                "results",
                "--state",
                state,
                "--out",
                "all.jsonl",
                "--report",
                "hosts.json",
            ],
            &[],
        )
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let alone: serde_json::Value =
        serde_json::from_str(&last.read("hosts.json")).expect("the hosts JSON");
    assert_eq!(&alone, whole);
}

/// Two hosts with the same 40-item job and config, `limits` on the
/// simulator and in the config, and answers slow enough (200–400 ms) that
/// both work it.
async fn joined_hosts(limits: &str) -> (SimServer, Workdir, Workdir) {
    let sim =
        simulator(&sim_yaml(limits).replace("min_ms: 5, max_ms: 20", "min_ms: 200, max_ms: 400"))
            .await;
    let job = crate::support::jsonl_job(40);
    let (one, two) = (host(&sim, &job, limits), host(&sim, &job, limits));
    (sim, one, two)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_joined_on_one_job_end_each_item_once_within_the_limits() {
    let Some(url) = off_runtime(|| test_db("join_e2e")) else {
        return;
    };
    let (sim, one, two) = joined_hosts("rpm: 30").await;
    let state = url.to_string();
    let args = run_args(&state, &[]);
    let mut first = one.spawn_piped(&args);
    wait_until(
        "the first host opens the run",
        Duration::from_secs(20),
        async || off_runtime(|| has_run(&url)),
    )
    .await;
    // A second plain run is refused, naming the host and pid holding it.
    let refused = two.keyfan(&args, &[]).await;
    let said = explain(&refused);
    assert_eq!(refused.status.code(), Some(75), "{said}");
    assert!(
        said.contains(&format!("pid {}", first.id())) && said.contains("--join"),
        "{said}"
    );
    let joined = two.keyfan(&[&args[..], &["--join"]].concat(), &[]).await;
    assert_eq!(joined.status.code(), Some(0), "{}", explain(&joined));
    let status = crate::support::exit_within(&mut first, Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0));

    // Each host wrote what it did; together, every item once.
    let (a, b) = (
        crate::support::results(&one.path("job.results.jsonl")),
        crate::support::results(&two.path("job.results.jsonl")),
    );
    assert!(
        !a.is_empty() && !b.is_empty(),
        "both hosts worked: {} and {}",
        a.len(),
        b.len()
    );
    assert_eq!(a.len() + b.len(), 40);
    // The whole run's results, from the shared state.
    assert_whole_results(&one, &state, 40).await;
    assert_hosts_sections((&one, first.id(), &a), (&two, &b), &state).await;
    let stats = stats(&sim).await;
    assert_eq!(stats.requests, 40, "{stats:?}");
    for (name, project) in &stats.projects {
        assert_eq!(project.rate_limited, 0, "{name}: {stats:?}");
        assert!(
            project.models[MODEL].max_requests_in_60s <= 30,
            "{name}: {stats:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_hosts_items_are_finished_by_the_other_after_the_lease() {
    let Some(url) = off_runtime(|| test_db("kill_e2e")) else {
        return;
    };
    // Room enough that the slices the dead host held (counted for a minute)
    // do not hold up the other.
    let (sim, one, two) = joined_hosts("rpm: 120").await;
    let state = url.to_string();
    let args = run_args(&state, &["--lease", "1"]);
    let mut first = one.spawn(&args);
    wait_for_done(&url, 5, "the first host finishes a few items").await;
    let mut second = two.spawn(&[&args[..], &["--join"]].concat());
    wait_until(
        "the second host joins",
        Duration::from_secs(20),
        async || {
            stats(&sim).await.requests > off_runtime(|| done_items(&url)) as u64 + 8
                || off_runtime(|| done_items(&url)) >= 12
        },
    )
    .await;
    first.kill().expect("SIGKILL the first host");
    first.wait().expect("reap it");
    let status = crate::support::exit_within(&mut second, Duration::from_secs(40)).await;
    assert_eq!(status.code(), Some(0), "the second host finishes the run");
    assert_whole_results(&two, &state, 40).await;
    let stats = stats(&sim).await;
    for (name, project) in &stats.projects {
        assert_eq!(project.rate_limited, 0, "{name}: {stats:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_lost_mid_run_stops_dispatch_and_the_next_start_reconciles() {
    let Some(url) = off_runtime(|| test_db("lost_e2e")) else {
        return;
    };
    let (sim, one, _) = joined_hosts("rpm: 120").await;
    let state = url.to_string();
    let args = run_args(&state, &["--lease", "1"]);
    let mut host = one.spawn_piped(&args);
    wait_for_done(&url, 5, "the host finishes a few items").await;
    // The database drops keyfan's connection: as good as lost.
    off_runtime(|| {
        let mut admin = postgres::Client::connect(&state, postgres::NoTls).expect("connect");
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = current_database() AND application_name = 'keyfan'",
                &[],
            )
            .expect("terminate keyfan's connection");
    });
    let status = crate::support::exit_within(&mut host, Duration::from_secs(30)).await;
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut host.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the shared state was lost"), "{stderr}");
    // Nothing went out that the shared ledger had not counted.
    let day = keyfan::types::QuotaDay::today().to_string();
    let counted: u64 = off_runtime(|| {
        let mut state = connect(&url, "check");
        ["proj-a", "proj-b"]
            .map(|p| state.day_count(p, MODEL, &day).unwrap())
            .iter()
            .sum()
    });
    let sent = stats(&sim).await.requests;
    assert!(sent <= counted, "{sent} sent, {counted} reserved");
    assert!(sent < 40, "dispatch went on after the loss");

    // The next start settles what the host finished locally after the loss,
    // then sends only the rest.
    let again = one.keyfan(&[&args[..], &["--join"]].concat(), &[]).await;
    assert_eq!(again.status.code(), Some(0), "{}", explain(&again));
    assert_whole_results(&one, &state, 40).await;
    assert_eq!(stats(&sim).await.requests, 40, "an item was sent twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_one_host_learns_from_a_429_is_shared_and_adopted() {
    let Some(url) = off_runtime(|| test_db("learn_e2e")) else {
        return;
    };
    // The simulator holds each project to 5 a minute; the config says
    // nothing, so the host learns it from the first 429.
    let sim = simulator(&sim_yaml("rpm: 5")).await;
    let work = host(&sim, &job(14, "learn"), "rpm: 5");
    let config = work.read("config.yaml");
    work.write(
        "config.yaml",
        &config.replace(&format!("    limits: {{ {MODEL}: {{ rpm: 5 }} }}\n"), ""),
    );
    let state = url.to_string();
    let mut learner = work.spawn(&run_args(&state, &[]));
    let learned = async || {
        off_runtime(|| connect(&url, "check").learned().unwrap())
            .iter()
            .filter(|(_, model, limits)| model == MODEL && limits.rpm == Some(5))
            .count()
    };
    wait_until(
        "both 429s' limits reach the shared state",
        Duration::from_secs(30),
        async || learned().await == 2,
    )
    .await;
    learner.kill().expect("stop the learner");
    learner.wait().expect("reap it");
    assert!(stats(&sim)
        .await
        .projects
        .values()
        .any(|p| p.rate_limited > 0));

    // Another host's pool takes the shared limits as its own.
    let mut config = keyfan::config::Config::parse(
        &work.read("config.yaml"),
        std::path::Path::new("config.yaml"),
        |_| None,
        keyfan::config::MissingEnv::Placeholder,
    )
    .unwrap();
    config.model = MODEL.to_owned();
    let pool = keyfan::pool::Pool::new(&config, keyfan::pool::Strategy::Hybrid, None).unwrap();
    assert_eq!(pool.requests_per_minute(MODEL), None, "nothing known yet");
    for (account, model, limits) in off_runtime(|| connect(&url, "other").learned().unwrap()) {
        pool.adopt(&account, &model, limits);
    }
    assert_eq!(
        pool.requests_per_minute(MODEL),
        Some(10),
        "5 + 5, learned elsewhere"
    );
}
