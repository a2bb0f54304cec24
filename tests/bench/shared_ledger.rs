//! `cargo bench --bench shared_ledger`: issue 14's reservation cost. How
//! many requests per second two hosts admit through the shared ledger in
//! PostgreSQL (`KEYFAN_TEST_PG_URL`, e.g. from `.ci/with-postgres`; on
//! loopback): each request is one day-ledger reservation (one conditional
//! upsert), and every 10th request takes a minute slice of 10 (the
//! per-minute window's share). Goal: ≥ 2,000 requests admitted per second.
//!
//! Without `--bench` (`cargo test --benches`) it admits 2,000 and checks the
//! counts only. Without `KEYFAN_TEST_PG_URL` it says it is skipped.

mod common;

use keyfan::store::postgres::{PgState, PgUrl};
use keyfan::store::{QuotaLedger, Reservation, Reserved};
use keyfan::types::Limits;
use std::time::{Duration, Instant};

const GOAL_PER_S: f64 = 2_000.0;
const HOSTS: u64 = 2;
const SLICE: u64 = 10;

fn main() {
    let Ok(server) = std::env::var("KEYFAN_TEST_PG_URL") else {
        println!("shared_ledger: skipped: set KEYFAN_TEST_PG_URL (see README, PostgreSQL tests)");
        return;
    };
    let requests = common::items(40_000, 2_000);
    let db = format!("kf_bench_ledger_{}", std::process::id());
    let mut admin = postgres::Client::connect(&server, postgres::NoTls)
        .unwrap_or_else(|e| common::fail(&format!("KEYFAN_TEST_PG_URL: {e}")));
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .expect("create the bench database");
    let (base, _) = server.rsplit_once('/').expect("a URL with a database");
    let url = PgUrl::parse(&format!("{base}/{db}")).expect("a postgres URL");
    PgState::connect(&url, "migrate").expect("migrate");

    let per_host = requests / HOSTS;
    let limits = Limits {
        rpm: Some(u32::MAX),
        ..Limits::default()
    };
    let started = Instant::now();
    let admitted: u64 = std::thread::scope(|scope| {
        let hosts: Vec<_> = (0..HOSTS)
            .map(|h| {
                let url = &url;
                scope.spawn(move || {
                    let mut state = PgState::connect(url, &format!("bench{h}")).expect("connect");
                    let reservation = Reservation {
                        account: format!("proj-{}", h % 2),
                        model: "gemini-2.5-flash".to_owned(),
                        day: "2026-11-29".parse().unwrap(),
                        limit: Some(u64::MAX / 2),
                    };
                    let mut admitted = 0;
                    let mut left_in_slice = 0;
                    for _ in 0..per_host {
                        if left_in_slice == 0 {
                            let slice = state
                                .take_slice(
                                    &reservation.account,
                                    &reservation.model,
                                    limits,
                                    SLICE,
                                    0,
                                    Duration::from_secs(5),
                                )
                                .expect("slice")
                                .expect("room in an unlimited minute");
                            left_in_slice = slice.requests;
                        }
                        left_in_slice -= 1;
                        let verdict = state
                            .reserve(std::slice::from_ref(&reservation))
                            .expect("reserve");
                        admitted += u64::from(verdict[0] == Reserved::Reserved);
                    }
                    admitted
                })
            })
            .collect();
        hosts.into_iter().map(|h| h.join().expect("host")).sum()
    });
    let elapsed = started.elapsed().as_secs_f64();
    if admitted != per_host * HOSTS {
        common::fail(&format!("admitted {admitted} of {}", per_host * HOSTS));
    }
    let rate = admitted as f64 / elapsed;
    drop(admin.batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)")));
    println!("| what | figure | goal | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| requests admitted per second through the shared ledger ({HOSTS} hosts, {admitted} requests) | {rate:.0} | ≥ {GOAL_PER_S:.0} | {:.2} |",
        rate / GOAL_PER_S
    );
    if common::bench_mode() {
        println!("(ratio ≥ 1 meets the goal)");
        if rate < GOAL_PER_S {
            std::process::exit(1);
        }
    } else {
        println!("(smoke mode: correctness only; `cargo bench --bench shared_ledger` measures)");
    }
}
