//! Pool behaviour on paused time: admission, failover, health, groups.

use super::*;
use crate::config::{Config, MissingEnv};
use crate::types::{AccountId, Limits, QuotaScope};
use futures_util::FutureExt;
use std::path::Path;
use std::time::Duration;
use tokio::time::{advance, Instant};

const MODEL: &str = "gemini-2.5-flash";

fn pool(accounts: &str, strategy: Strategy, group: Option<&str>) -> Pool {
    let yaml =
        format!("providers:\n  gemini: {{ base_url: http://127.0.0.1:9 }}\naccounts:\n{accounts}");
    let config = Config::parse(&yaml, Path::new("test.yaml"), |_| None, MissingEnv::Error)
        .expect("valid test config");
    Pool::new(&config, strategy, group).expect("pool builds")
}

/// What an answered request tells the pool.
const ANSWERED: Outcome = Outcome::Answered {
    input_tokens: None,
    output_tokens: None,
    stated: Limits {
        rpm: None,
        tpm: None,
        otpm: None,
        rpd: None,
    },
};

/// Leases one key and settles it with `outcome`, returning the key's index.
async fn use_once(pool: &Pool, outcome: Outcome) -> usize {
    let lease = pool.lease(Need::new(MODEL, 10)).await.expect("a key");
    let id = lease.key_id().0;
    pool.settle(lease, outcome);
    id
}

fn refused() -> Outcome {
    Outcome::Refused {
        reason: "API_KEY_INVALID".into(),
    }
}

#[tokio::test(start_paused = true)]
async fn keys_of_one_account_share_its_rpm_and_the_wait_is_exact() {
    let pool = pool(
        "  - name: a\n    keys: [k1, k2]\n    limits: { gemini-2.5-flash: { rpm: 3 } }\n",
        Strategy::RoundRobin,
        None,
    );
    let start = Instant::now();
    let used = use_times(&pool, 3).await;
    assert_eq!(used, [0, 1, 0], "round robin over the account's keys");
    // The fourth must wait for the first admission to leave the window.
    assert!(pool.lease(Need::new(MODEL, 10)).now_or_never().is_none());
    let lease = pool.lease(Need::new(MODEL, 10)).await.unwrap();
    let waited = Instant::now() - start;
    assert!(waited >= Duration::from_secs(60), "{waited:?}");
    assert!(
        waited < Duration::from_secs(61),
        "woke as soon as room came: {waited:?}"
    );
    drop(lease);
}

#[tokio::test(start_paused = true)]
async fn a_full_account_sends_its_work_to_another() {
    let pool = pool(
        "  - name: a\n    keys: [k1]\n    limits: { gemini-2.5-flash: { rpm: 1 } }\n  - name: b\n    keys: [k2]\n",
        Strategy::RoundRobin,
        None,
    );
    assert_eq!(use_once(&pool, ANSWERED).await, 0);
    for _ in 0..5 {
        assert_eq!(use_once(&pool, ANSWERED).await, 1, "a is full for a minute");
    }
}

#[tokio::test(start_paused = true)]
async fn an_invalid_key_is_never_leased_again() {
    let pool = pool(
        "  - name: a\n    keys: [k1, k2]\n",
        Strategy::RoundRobin,
        None,
    );
    assert_eq!(use_once(&pool, refused()).await, 0);
    for _ in 0..4 {
        assert_eq!(use_once(&pool, ANSWERED).await, 1);
    }
    assert_eq!(use_once(&pool, refused()).await, 1);
    let err = pool.lease(Need::new(MODEL, 10)).await.unwrap_err();
    assert!(matches!(err, Unavailable::NoKey { .. }), "{err}");
    assert_eq!(pool.disabled().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_per_minute_429_cools_the_account_for_the_retry_delay() {
    let pool = pool(
        "  - name: a\n    keys: [k1, k2]\n",
        Strategy::RoundRobin,
        None,
    );
    let start = Instant::now();
    let limited = Outcome::RateLimited {
        stated: Limits::default(),
        scope: QuotaScope::MinuteRequests,
        retry_after: Some(Duration::from_secs(7)),
        limit: Some(100),
    };
    use_once(&pool, limited).await;
    // Both keys belong to the cooled account: the next lease waits 7 s.
    use_once(&pool, ANSWERED).await;
    assert_eq!((Instant::now() - start).as_secs(), 7);
}

#[tokio::test(start_paused = true)]
async fn a_per_day_429_exhausts_the_account_until_pacific_midnight() {
    let pool = pool(
        "  - name: a\n    keys: [k1]\n  - name: b\n    keys: [k2]\n",
        Strategy::RoundRobin,
        None,
    );
    let day = |_| Outcome::RateLimited {
        stated: Limits::default(),
        scope: QuotaScope::Day,
        // Real per-day 429s carry a short delay that must not be trusted.
        retry_after: Some(Duration::from_secs(22)),
        limit: Some(250),
    };
    use_once(&pool, day(())).await;
    advance(Duration::from_secs(60)).await;
    assert_eq!(
        use_once(&pool, ANSWERED).await,
        1,
        "a stays exhausted past the delay"
    );
    use_once(&pool, day(())).await;
    let err = pool.lease(Need::new(MODEL, 10)).await.unwrap_err();
    let Unavailable::DayExhausted { until, .. } = err else {
        panic!("expected day exhaustion, got {err}");
    };
    assert_eq!(until, crate::types::QuotaDay::today().reset());
}

#[tokio::test(start_paused = true)]
async fn an_account_the_ledger_calls_spent_serves_nothing_until_the_reset() {
    let pool = pool(
        "  - name: a\n    keys: [k1]\n    limits: { gemini-2.5-flash: { rpd: 5 } }\n  - name: b\n    keys: [k2]\n",
        Strategy::RoundRobin,
        None,
    );
    let lease = pool.lease(Need::new(MODEL, 10)).await.unwrap();
    assert_eq!(lease.day_limit(), Some(5), "the ledger is told the limit");
    let reset = crate::types::QuotaDay::today().reset();
    pool.exhaust(lease.account(), MODEL, reset);
    pool.settle(lease, Outcome::NotSent);
    for _ in 0..3 {
        assert_eq!(use_once(&pool, ANSWERED).await, 1, "only b serves");
    }
    let pinned = pool.lease(Need::new(MODEL, 10).pinned(AccountId(0))).await;
    assert_eq!(
        pinned.unwrap_err(),
        Unavailable::DayExhausted {
            model: MODEL.into(),
            until: reset
        }
    );
}

#[tokio::test(start_paused = true)]
async fn a_pinned_lease_waits_for_its_account_and_never_takes_another() {
    let pool = pool(
        "  - name: a\n    keys: [k1, k2]\n    limits: { gemini-2.5-flash: { rpm: 1 } }\n  - name: b\n    keys: [k3]\n",
        Strategy::RoundRobin,
        None,
    );
    let start = Instant::now();
    let need = Need::new(MODEL, 10).pinned(AccountId(0));
    let first = pool.lease(need).await.unwrap();
    assert_eq!(first.account(), AccountId(0));
    pool.settle(first, ANSWERED);
    // b has room, but the need is pinned to a, whose minute is used.
    assert!(pool.lease(need).now_or_never().is_none());
    let second = pool.lease(need).await.unwrap();
    assert_eq!(second.account(), AccountId(0));
    assert_eq!(second.account_name(), "a");
    assert!(Instant::now() - start >= Duration::from_secs(60));
    pool.settle(second, ANSWERED);
    // Unpinned, the same need goes to b at once.
    let free = pool
        .lease(Need::new(MODEL, 10))
        .now_or_never()
        .expect("b has room")
        .unwrap();
    assert_eq!(free.account(), AccountId(1));
}

#[tokio::test(start_paused = true)]
async fn a_request_larger_than_every_tpm_never_fits() {
    let pool = pool(
        "  - name: a\n    keys: [k1]\n    limits: { gemini-2.5-flash: { tpm: 1000 } }\n",
        Strategy::RoundRobin,
        None,
    );
    let err = pool.lease(Need::new(MODEL, 1001)).await.unwrap_err();
    assert!(
        matches!(err, Unavailable::NeverFits { tokens: 1001, .. }),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn repeated_transient_failures_open_the_circuit_then_one_probe_decides() {
    let pool = pool(
        "  - name: a\n    keys: [k1, k2]\n",
        Strategy::LeastInFlight,
        None,
    );
    // Key 0 fails five times in a row (other successes go to key 1).
    let mut failures = 0;
    while failures < 5 {
        let lease = pool.lease(Need::new(MODEL, 10)).await.unwrap();
        let failed = lease.key_id().0 == 0;
        failures += usize::from(failed);
        pool.settle(lease, if failed { Outcome::Failed } else { ANSWERED });
    }
    for _ in 0..10 {
        assert_eq!(use_once(&pool, ANSWERED).await, 1, "key 0 rests");
    }
    advance(Duration::from_secs(16)).await;
    // The rest is over: exactly one probe goes to key 0 while it is out.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(pool.lease(Need::new(MODEL, 10)).await.unwrap());
    }
    let probes = held.iter().filter(|l| l.key_id().0 == 0).count();
    assert_eq!(probes, 1, "one probe, not one per waiting request");
    // Its success closes the circuit: key 0 takes concurrent requests again.
    for lease in held {
        pool.settle(lease, ANSWERED);
    }
    let again: Vec<_> = (0..4)
        .map(|_| {
            pool.lease(Need::new(MODEL, 10))
                .now_or_never()
                .unwrap()
                .unwrap()
        })
        .collect();
    assert!(again.iter().filter(|l| l.key_id().0 == 0).count() >= 2);
}

#[tokio::test(start_paused = true)]
async fn groups_fall_over_in_priority_order() {
    let accounts = "  - name: a\n    keys: [{key: k1, group: main}]\n    limits: { gemini-2.5-flash: { rpm: 2 } }\n  - name: b\n    keys: [{key: k2, group: backup}]\n";
    let pool = pool(accounts, Strategy::Hybrid, Some("main"));
    let used = use_times(&pool, 4).await;
    assert_eq!(used, [0, 0, 1, 1], "main until full, then backup");
    let pool = self::pool(accounts, Strategy::Hybrid, Some("backup"));
    assert_eq!(
        use_once(&pool, ANSWERED).await,
        1,
        "--group backup puts backup first"
    );
}

async fn use_times(pool: &Pool, n: usize) -> Vec<usize> {
    let mut used = Vec::new();
    for _ in 0..n {
        used.push(use_once(pool, ANSWERED).await);
    }
    used
}

#[test]
fn an_unknown_group_is_named() {
    let yaml = "accounts:\n  - name: a\n    keys: [{key: k1, group: main}]\n";
    let config = Config::parse(yaml, Path::new("t.yaml"), |_| None, MissingEnv::Error).unwrap();
    let err = Pool::new(&config, Strategy::Hybrid, Some("gold")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no key is in group `gold`; the config's groups are: main"
    );
}

#[tokio::test(start_paused = true)]
async fn in_flight_is_released_when_a_lease_is_dropped_unsettled() {
    let pool = pool("  - name: a\n    keys: [k1]\n", Strategy::Hybrid, None);
    let lease = pool.lease(Need::new(MODEL, 10)).await.unwrap();
    assert_eq!(pool.in_flight(), 1);
    drop(lease);
    assert_eq!(pool.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_refused_request_gives_its_room_back() {
    let pool = pool(
        "  - name: a\n    keys: [k1, k2]\n    limits: { gemini-2.5-flash: { rpm: 2 } }\n",
        Strategy::RoundRobin,
        None,
    );
    let start = Instant::now();
    let full = Outcome::RateLimited {
        stated: Limits::default(),
        scope: QuotaScope::MinuteRequests,
        retry_after: Some(Duration::ZERO),
        limit: Some(2),
    };
    use_once(&pool, full).await;
    use_once(&pool, refused()).await;
    let lease = pool.lease(Need::new(MODEL, 10)).await.unwrap();
    pool.settle(lease, Outcome::NotSent);
    // None counted: the whole minute is still there.
    use_once(&pool, ANSWERED).await;
    let lease = pool
        .lease(Need::new(MODEL, 10))
        .now_or_never()
        .expect("the second of two")
        .unwrap();
    assert_eq!(Instant::now(), start, "no wait");
    assert!(
        pool.lease(Need::new(MODEL, 10)).now_or_never().is_none(),
        "full"
    );
    drop(lease);
}

#[tokio::test(start_paused = true)]
async fn the_window_counts_the_tokens_the_server_reported() {
    let pool = pool(
        "  - name: a\n    keys: [k1]\n    limits: { gemini-2.5-flash: { tpm: 100 } }\n",
        Strategy::RoundRobin,
        None,
    );
    // Estimated 10, but the server counted 90: only 10 are left this minute.
    let lease = pool.lease(Need::new(MODEL, 10)).await.unwrap();
    pool.settle(
        lease,
        Outcome::Answered {
            input_tokens: Some(90),
            output_tokens: None,
            stated: Limits::default(),
        },
    );
    assert!(pool.lease(Need::new(MODEL, 20)).now_or_never().is_none());
    let lease = pool
        .lease(Need::new(MODEL, 10))
        .now_or_never()
        .expect("10 fit")
        .unwrap();
    drop(lease);
}

#[tokio::test(start_paused = true)]
async fn a_group_does_not_fall_over_while_its_key_awaits_its_first_answer() {
    let accounts = "  - name: a\n    keys: [{key: k1, group: main}]\n  - name: b\n    keys: [{key: k2, group: backup}]\n";
    let pool = pool(accounts, Strategy::Hybrid, Some("main"));
    let first = pool.lease(Need::new(MODEL, 10)).await.unwrap();
    assert_eq!(first.key_id().0, 0);
    // k1 has never answered: one request at a time, and backup waits too.
    assert!(pool.lease(Need::new(MODEL, 10)).now_or_never().is_none());
    pool.settle(first, ANSWERED);
    let second = pool
        .lease(Need::new(MODEL, 10))
        .now_or_never()
        .expect("main again")
        .unwrap();
    assert_eq!(second.key_id().0, 0);
    let third = pool
        .lease(Need::new(MODEL, 10))
        .now_or_never()
        .expect("proven: concurrent")
        .unwrap();
    assert_eq!(third.key_id().0, 0);
}

fn per_minute_429(retry_after: Duration) -> Outcome {
    Outcome::RateLimited {
        stated: Limits::default(),
        scope: QuotaScope::MinuteRequests,
        retry_after: Some(retry_after),
        limit: None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_huge_retry_delay_defers_instead_of_panicking_or_stalling() {
    for delay in [Duration::MAX, Duration::from_secs(999_999_999)] {
        let pool = pool("  - name: a\n    keys: [k1]\n", Strategy::RoundRobin, None);
        use_once(&pool, per_minute_429(delay)).await;
        let err = pool.lease(Need::new(MODEL, 10)).await.unwrap_err();
        assert!(matches!(err, Unavailable::ServerDelay { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with("the server asked to wait until "),
            "{err}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_wait_within_the_cap_is_sat_out_and_one_beyond_it_is_not() {
    let pool = pool("  - name: a\n    keys: [k1]\n", Strategy::RoundRobin, None);
    use_once(&pool, per_minute_429(MAX_WAIT)).await;
    let start = Instant::now();
    use_once(&pool, ANSWERED).await;
    assert_eq!(Instant::now() - start, MAX_WAIT);
    use_once(&pool, per_minute_429(MAX_WAIT * 2)).await;
    assert!(pool.lease(Need::new(MODEL, 10)).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn a_wait_past_the_items_deadline_fails_at_once() {
    let pool = pool("  - name: a\n    keys: [k1]\n", Strategy::RoundRobin, None);
    use_once(&pool, per_minute_429(Duration::from_secs(30))).await;
    let start = Instant::now();
    let deadline = Some(start + Duration::from_secs(10));
    let need = Need {
        deadline,
        ..Need::new(MODEL, 10)
    };
    let err = pool.lease(need).await.unwrap_err();
    assert!(matches!(err, Unavailable::PastDeadline { .. }), "{err}");
    assert!(err.to_string().contains("item_deadline"), "{err}");
    assert_eq!(Instant::now(), start, "failed without waiting");
}

#[tokio::test(start_paused = true)]
async fn the_pool_says_what_it_waits_for_and_until_when() {
    let pool = pool(
        "  - name: proj-a\n    keys: [k1]\n    limits: { gemini-2.5-flash: { rpm: 1 } }\n",
        Strategy::RoundRobin,
        None,
    );
    assert_eq!(pool.waiting(), None);
    use_once(&pool, ANSWERED).await;
    let wall = chrono::Utc::now();
    assert!(pool.lease(Need::new(MODEL, 10)).now_or_never().is_none());
    let waiting = pool.waiting().expect("waiting for room");
    assert_eq!(waiting.account, "proj-a");
    assert_eq!(waiting.limit, WaitFor::Rpm);
    let ahead = (waiting.until - wall).num_seconds();
    assert!((59..=61).contains(&ahead), "{ahead}");
    assert!(
        waiting
            .to_string()
            .starts_with("waiting for quota: proj-a gemini-2.5-flash RPM, next room at "),
        "{waiting}"
    );
    // Once the room came and was used, nothing is waited for.
    use_once(&pool, ANSWERED).await;
    assert_eq!(pool.waiting(), None);
}

#[test]
fn the_quotas_pace_is_the_serving_accounts_rpm_together() {
    let limited = "  - name: a\n    keys: [k1]\n    limits: { gemini-2.5-flash: { rpm: 120 } }\n  - name: b\n    keys: [k2]\n    limits: { gemini-2.5-flash: { rpm: 30 } }\n";
    let pool = pool(limited, Strategy::RoundRobin, None);
    assert_eq!(pool.requests_per_minute(MODEL), Some(150));
    // An account without a known RPM leaves the pace unknown.
    let pool = self::pool(
        &format!("{limited}  - name: c\n    keys: [k3]\n"),
        Strategy::RoundRobin,
        None,
    );
    assert_eq!(pool.requests_per_minute(MODEL), None);
}

#[tokio::test(start_paused = true)]
async fn a_model_only_another_provider_serves_is_never_leased_to_a_gemini_key() {
    let pool = pool("  - name: a\n    keys: [k1]\n", Strategy::RoundRobin, None);
    let err = pool.lease(Need::new("gpt-4o-mini", 10)).await.unwrap_err();
    assert!(matches!(err, Unavailable::NoKey { .. }), "{err}");
}

const HAIKU: &str = "claude-haiku-4-5";

/// One Anthropic organisation `org` with keys k1, k2 and `extra` lines.
fn anthropic_pool(extra: &str) -> Pool {
    pool(
        &format!("  - name: org\n    provider: anthropic\n    keys: [k1, k2]\n{extra}"),
        Strategy::RoundRobin,
        None,
    )
}

fn answered(output_tokens: u64, stated: Limits) -> Outcome {
    Outcome::Answered {
        input_tokens: Some(10),
        output_tokens: Some(output_tokens),
        stated,
    }
}

#[tokio::test(start_paused = true)]
async fn otpm_admits_the_output_cap_and_settles_the_real_output() {
    let pool = anthropic_pool("    limits: { claude-haiku-4-5: { otpm: 1000 } }\n");
    let need = Need::new(HAIKU, 10).with_output_cap(Some(400));
    // Both keys answer once (with no output), so neither waits to be proven.
    for _ in 0..2 {
        let lease = pool.lease(need).await.unwrap();
        pool.settle(lease, answered(0, Limits::default()));
    }
    let first = pool.lease(need).await.unwrap();
    let second = pool.lease(need).await.unwrap();
    // Two caps of 400 are out: a third does not fit the 1,000.
    assert!(pool.lease(need).now_or_never().is_none());
    assert_eq!(
        pool.waiting().map(|w| w.limit),
        Some(WaitFor::Otpm),
        "the wait names OTPM"
    );
    // The first used 100 of its 400: the rest frees up at once.
    pool.settle(first, answered(100, Limits::default()));
    let third = pool.lease(need).now_or_never().expect("room").unwrap();
    pool.settle(second, answered(100, Limits::default()));
    pool.settle(third, answered(100, Limits::default()));
    // A cap above the OTPM never fits; no cap is admitted at the default.
    let huge = Need::new(HAIKU, 10).with_output_cap(Some(1001));
    assert!(matches!(
        pool.lease(huge).await,
        Err(Unavailable::NeverFits { .. })
    ));
    let default = Need::new(HAIKU, 10);
    assert!(
        matches!(
            pool.lease(default).await,
            Err(Unavailable::NeverFits { .. })
        ),
        "4,096 by default, more than 1,000"
    );
}

#[tokio::test(start_paused = true)]
async fn limits_stated_by_any_answer_pace_the_account_where_the_config_gives_none() {
    let pool = anthropic_pool("");
    let need = Need::new(HAIKU, 10).with_output_cap(Some(400));
    let stated = Limits {
        rpm: Some(1000),
        otpm: Some(500),
        ..Limits::default()
    };
    // The first answer states the limits; the second request already fits them.
    let lease = pool.lease(need).await.unwrap();
    pool.settle(lease, answered(300, stated));
    assert!(
        pool.lease(need).now_or_never().is_none(),
        "300 + 400 is more than the stated 500"
    );
    let start = Instant::now();
    let lease = pool.lease(need).await.unwrap();
    assert!(Instant::now() - start >= Duration::from_secs(60));
    drop(lease);
    // The config wins over what an answer states.
    let pool = anthropic_pool("    limits: { claude-haiku-4-5: { otpm: 5000 } }\n");
    let lease = pool.lease(need).await.unwrap();
    pool.settle(lease, answered(300, stated));
    for _ in 0..5 {
        let lease = pool.lease(need).now_or_never().expect("room").unwrap();
        pool.settle(lease, answered(300, stated));
    }
}

#[tokio::test(start_paused = true)]
async fn a_name_of_the_models_map_is_served_by_its_provider_under_its_real_name() {
    let yaml = "providers:\n  gemini: { base_url: http://127.0.0.1:9 }\n\
                models:\n  quick: { provider: anthropic, name: claude-haiku-4-5 }\n\
                accounts:\n  - name: g\n    keys: [k1]\n  \
                - name: org\n    provider: anthropic\n    keys: [k2]\n    \
                limits: { claude-haiku-4-5: { rpm: 1 } }\n";
    let config = Config::parse(yaml, Path::new("t.yaml"), |_| None, MissingEnv::Error).unwrap();
    let pool = Pool::new(&config, Strategy::RoundRobin, None).unwrap();
    assert_eq!(pool.model_name("quick"), HAIKU);
    assert_eq!(pool.model_name(MODEL), MODEL);
    let lease = pool.lease(Need::new("quick", 10)).await.unwrap();
    assert_eq!((lease.account_name(), lease.model()), ("org", HAIKU));
    pool.settle(lease, ANSWERED);
    // The alias and the real name share the model's quota.
    assert!(pool.lease(Need::new(HAIKU, 10)).now_or_never().is_none());
}

#[tokio::test(start_paused = true)]
async fn a_request_counted_outside_a_lease_takes_its_accounts_room() {
    let pool = pool(
        "  - name: a\n    keys: [k1]\n    limits: { gemini-2.5-flash: { rpm: 1 } }\n  - name: b\n    keys: [k2]\n",
        Strategy::RoundRobin,
        None,
    );
    let a = pool.account_named("a").expect("account a");
    assert_eq!(pool.account_named("c"), None);
    assert_eq!(
        pool.usable_key(a).map(|k| k.expose().to_owned()),
        Some("k1".into())
    );
    // An upload under a's key: a has no room left this minute.
    pool.count_request(a, MODEL);
    let pinned = Need::new(MODEL, 10).pinned(a);
    assert!(pool.lease(pinned).now_or_never().is_none(), "a is full");
    let lease = pool.lease(Need::new(MODEL, 10)).await.unwrap();
    assert_eq!(lease.account_name(), "b", "the work goes to b");
    pool.settle(lease, ANSWERED);
    advance(Duration::from_secs(61)).await;
    let lease = pool.lease(pinned).await.unwrap();
    assert_eq!(lease.account_name(), "a", "a has room again");
    pool.settle(lease, refused());
    assert_eq!(pool.usable_key(a), None, "its one key is refused");
}
