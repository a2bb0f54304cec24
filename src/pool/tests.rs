//! Pool behaviour on paused time: admission, failover, health, groups.

use super::*;
use crate::config::{Config, MissingEnv};
use crate::provider::{ErrorClass, QuotaScope};
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

/// Leases one key and settles it with `error`, returning the key's id.
async fn use_once(pool: &Pool, error: Option<ErrorClass>) -> KeyId {
    let lease = pool.lease(MODEL, 10, None).await.expect("a key");
    let id = lease.key_id();
    pool.settle(lease, error.as_ref(), None);
    id
}

fn now_or_never<F: std::future::Future>(f: F) -> Option<F::Output> {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
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
    assert!(now_or_never(pool.lease(MODEL, 10, None)).is_none());
    let lease = pool.lease(MODEL, 10, None).await.unwrap();
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
    assert_eq!(use_once(&pool, None).await, 0);
    for _ in 0..5 {
        assert_eq!(use_once(&pool, None).await, 1, "a is full for a minute");
    }
}

#[tokio::test(start_paused = true)]
async fn an_invalid_key_is_never_leased_again() {
    let pool = pool(
        "  - name: a\n    keys: [k1, k2]\n",
        Strategy::RoundRobin,
        None,
    );
    let invalid = ErrorClass::KeyInvalid {
        reason: "API_KEY_INVALID".into(),
    };
    assert_eq!(use_once(&pool, Some(invalid.clone())).await, 0);
    for _ in 0..4 {
        assert_eq!(use_once(&pool, None).await, 1);
    }
    assert_eq!(use_once(&pool, Some(invalid)).await, 1);
    let err = pool.lease(MODEL, 10, None).await.unwrap_err();
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
    let limited = ErrorClass::RateLimited {
        scope: QuotaScope::MinuteRequests,
        retry_after: Some(Duration::from_secs(7)),
        limit: Some(100),
    };
    use_once(&pool, Some(limited)).await;
    // Both keys belong to the cooled account: the next lease waits 7 s.
    use_once(&pool, None).await;
    assert_eq!((Instant::now() - start).as_secs(), 7);
}

#[tokio::test(start_paused = true)]
async fn a_per_day_429_exhausts_the_account_until_pacific_midnight() {
    let pool = pool(
        "  - name: a\n    keys: [k1]\n  - name: b\n    keys: [k2]\n",
        Strategy::RoundRobin,
        None,
    );
    let day = |_| ErrorClass::RateLimited {
        scope: QuotaScope::Day,
        // Real per-day 429s carry a short delay that must not be trusted.
        retry_after: Some(Duration::from_secs(22)),
        limit: Some(250),
    };
    use_once(&pool, Some(day(()))).await;
    advance(Duration::from_secs(60)).await;
    assert_eq!(
        use_once(&pool, None).await,
        1,
        "a stays exhausted past the delay"
    );
    use_once(&pool, Some(day(()))).await;
    let err = pool.lease(MODEL, 10, None).await.unwrap_err();
    let Unavailable::DayExhausted { until, .. } = err else {
        panic!("expected day exhaustion, got {err}");
    };
    assert_eq!(until, next_reset(chrono::Utc::now()));
}

#[tokio::test(start_paused = true)]
async fn a_configured_rpd_is_enforced_and_seeded_from_the_ledger() {
    let pool = pool(
        "  - name: a\n    keys: [k1]\n    limits: { gemini-2.5-flash: { rpd: 5 } }\n",
        Strategy::RoundRobin,
        None,
    );
    pool.seed_day_usage([("a", MODEL, 3)]);
    use_once(&pool, None).await;
    use_once(&pool, None).await;
    let err = pool.lease(MODEL, 10, None).await.unwrap_err();
    assert!(matches!(err, Unavailable::DayExhausted { .. }), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_request_larger_than_every_tpm_never_fits() {
    let pool = pool(
        "  - name: a\n    keys: [k1]\n    limits: { gemini-2.5-flash: { tpm: 1000 } }\n",
        Strategy::RoundRobin,
        None,
    );
    let err = pool.lease(MODEL, 1001, None).await.unwrap_err();
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
        let lease = pool.lease(MODEL, 10, None).await.unwrap();
        let error = (lease.key_id() == 0).then_some(ErrorClass::Transient);
        failures += usize::from(error.is_some());
        pool.settle(lease, error.as_ref(), None);
    }
    for _ in 0..10 {
        assert_eq!(use_once(&pool, None).await, 1, "key 0 rests");
    }
    advance(Duration::from_secs(16)).await;
    // The rest is over: one probe to key 0, and its success closes it.
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(use_once(&pool, None).await);
    }
    assert!(seen.contains(&0), "{seen:?}");
}

#[tokio::test(start_paused = true)]
async fn groups_fall_over_in_priority_order() {
    let accounts = "  - name: a\n    keys: [{key: k1, group: main}]\n    limits: { gemini-2.5-flash: { rpm: 2 } }\n  - name: b\n    keys: [{key: k2, group: backup}]\n";
    let pool = pool(accounts, Strategy::Hybrid, Some("main"));
    let used = use_times(&pool, 4).await;
    assert_eq!(used, [0, 0, 1, 1], "main until full, then backup");
    let pool = self::pool(accounts, Strategy::Hybrid, Some("backup"));
    assert_eq!(
        use_once(&pool, None).await,
        1,
        "--group backup puts backup first"
    );
}

async fn use_times(pool: &Pool, n: usize) -> Vec<KeyId> {
    let mut used = Vec::new();
    for _ in 0..n {
        used.push(use_once(pool, None).await);
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
    let lease = pool.lease(MODEL, 10, None).await.unwrap();
    assert_eq!(pool.in_flight(), 1);
    drop(lease);
    assert_eq!(pool.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_refused_request_gives_its_room_back() {
    let pool = pool(
        "  - name: a\n    keys: [k1, k2]\n    limits: { gemini-2.5-flash: { rpm: 2, rpd: 2 } }\n",
        Strategy::RoundRobin,
        None,
    );
    let start = Instant::now();
    let refused = ErrorClass::RateLimited {
        scope: QuotaScope::MinuteRequests,
        retry_after: Some(Duration::ZERO),
        limit: Some(2),
    };
    use_once(&pool, Some(refused)).await;
    use_once(&pool, Some(ErrorClass::KeyInvalid { reason: "x".into() })).await;
    // Neither counted: the whole minute and day are still there.
    use_once(&pool, None).await;
    use_once(&pool, None).await;
    assert_eq!(Instant::now(), start, "no wait");
    assert!(matches!(
        pool.lease(MODEL, 10, None).await.unwrap_err(),
        Unavailable::DayExhausted { .. }
    ));
}

#[tokio::test(start_paused = true)]
async fn the_window_counts_the_tokens_the_server_reported() {
    let pool = pool(
        "  - name: a\n    keys: [k1]\n    limits: { gemini-2.5-flash: { tpm: 100 } }\n",
        Strategy::RoundRobin,
        None,
    );
    // Estimated 10, but the server counted 90: only 10 are left this minute.
    let lease = pool.lease(MODEL, 10, None).await.unwrap();
    pool.settle(lease, None, Some(90));
    assert!(now_or_never(pool.lease(MODEL, 20, None)).is_none());
    let lease = now_or_never(pool.lease(MODEL, 10, None))
        .expect("10 fit")
        .unwrap();
    drop(lease);
}

#[tokio::test(start_paused = true)]
async fn a_group_does_not_fall_over_while_its_key_awaits_its_first_answer() {
    let accounts = "  - name: a\n    keys: [{key: k1, group: main}]\n  - name: b\n    keys: [{key: k2, group: backup}]\n";
    let pool = pool(accounts, Strategy::Hybrid, Some("main"));
    let first = pool.lease(MODEL, 10, None).await.unwrap();
    assert_eq!(first.key_id(), 0);
    // k1 has never answered: one request at a time, and backup waits too.
    assert!(now_or_never(pool.lease(MODEL, 10, None)).is_none());
    pool.settle(first, None, None);
    let second = now_or_never(pool.lease(MODEL, 10, None))
        .expect("main again")
        .unwrap();
    assert_eq!(second.key_id(), 0);
    let third = now_or_never(pool.lease(MODEL, 10, None))
        .expect("proven: concurrent")
        .unwrap();
    assert_eq!(third.key_id(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_model_only_another_provider_serves_is_never_leased_to_a_gemini_key() {
    let pool = pool("  - name: a\n    keys: [k1]\n", Strategy::RoundRobin, None);
    let err = pool.lease("gpt-4o-mini", 10, None).await.unwrap_err();
    assert!(matches!(err, Unavailable::NoKey { .. }), "{err}");
}

#[test]
fn models_are_routed_as_the_readme_documents() {
    use crate::provider::ProviderKind::{self, Gemini, Openai};
    let route =
        |model, configured: &[ProviderKind]| serving_provider(model, |p| configured.contains(&p));
    assert_eq!(route("gemini-2.5-flash", &[Gemini, Openai]), Some(Gemini));
    assert_eq!(route("gemma-3-27b-it", &[Gemini]), Some(Gemini));
    assert_eq!(route("gpt-4o-mini", &[Gemini, Openai]), Some(Openai));
    // Gemini's OpenAI-compatible endpoint (or a gateway) serves Gemini models.
    assert_eq!(route("gemini-2.5-flash", &[Openai]), Some(Openai));
    // The Gemini API serves no other model.
    assert_eq!(route("gpt-4o-mini", &[Gemini]), None);
}
