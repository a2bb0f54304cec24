//! Pool behaviour on paused time: admission, failover, health, groups.

use super::*;
use crate::config::{Config, MissingEnv};
use crate::provider::{ApiError, ErrorClass, QuotaScope};
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
    assert_eq!(until, crate::types::QuotaDay::today().reset());
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
    // The rest is over: exactly one probe goes to key 0, however many leases
    // are taken while it is out.
    let mut held = Vec::new();
    for _ in 0..6 {
        held.push(pool.lease(MODEL, 10, None).await.unwrap());
    }
    let probes = held.iter().filter(|lease| lease.key_id() == 0).count();
    assert_eq!(probes, 1, "one probe while the circuit is half open");
    // Its success closes the circuit.
    for lease in held {
        pool.settle(lease, None, None);
    }
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

fn per_minute_429(retry_after: Duration) -> ErrorClass {
    ErrorClass::RateLimited {
        scope: QuotaScope::MinuteRequests,
        retry_after: Some(retry_after),
        limit: None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_huge_retry_delay_defers_instead_of_panicking_or_stalling() {
    for delay in [Duration::MAX, Duration::from_secs(999_999_999)] {
        let pool = pool("  - name: a\n    keys: [k1]\n", Strategy::RoundRobin, None);
        use_once(&pool, Some(per_minute_429(delay))).await;
        let err = pool.lease(MODEL, 10, None).await.unwrap_err();
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
    use_once(&pool, Some(per_minute_429(MAX_WAIT))).await;
    let start = Instant::now();
    use_once(&pool, None).await;
    assert_eq!(Instant::now() - start, MAX_WAIT);
    use_once(&pool, Some(per_minute_429(MAX_WAIT * 2))).await;
    assert!(pool.lease(MODEL, 10, None).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn a_wait_past_the_items_deadline_fails_at_once() {
    let pool = pool("  - name: a\n    keys: [k1]\n", Strategy::RoundRobin, None);
    use_once(&pool, Some(per_minute_429(Duration::from_secs(30)))).await;
    let start = Instant::now();
    let deadline = Some(start + Duration::from_secs(10));
    let err = pool
        .lease_before(MODEL, 10, None, deadline)
        .await
        .unwrap_err();
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
    use_once(&pool, None).await;
    let wall = chrono::Utc::now();
    assert!(now_or_never(pool.lease(MODEL, 10, None)).is_none());
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
    use_once(&pool, None).await;
    assert_eq!(pool.waiting(), None);
}

/// A request that always fails with `class`, counting its calls.
fn failing(
    calls: &std::sync::atomic::AtomicU32,
    class: ErrorClass,
) -> impl FnMut(Slot) -> std::future::Ready<Result<crate::provider::Reply, ApiError>> + '_ {
    move |_| {
        calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::future::ready(Err(ApiError {
            class: class.clone(),
            status: Some(400),
            message: "API key not valid. Please pass a valid API key.".into(),
        }))
    }
}

#[tokio::test(start_paused = true)]
async fn a_stopped_call_sends_nothing_more_and_ends_its_backoff_at_once() {
    let pool = pool(
        "  - name: a\n    keys: [k1, k2]\n",
        Strategy::RoundRobin,
        None,
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let calls = std::sync::atomic::AtomicU32::new(0);
    let policy = RetryPolicy {
        backoff_base: Duration::from_secs(3600),
        backoff_cap: Duration::from_secs(3600),
        ..RetryPolicy::default()
    };
    let call = pool.call(
        MODEL,
        10,
        &policy,
        &stop,
        failing(&calls, ErrorClass::Transient),
        |_, _| {},
    );
    let mut call = std::pin::pin!(call);
    assert!(now_or_never(call.as_mut()).is_none(), "in its backoff");
    let start = Instant::now();
    stop.cancel();
    assert_eq!(call.await.unwrap_err(), CallError::Stopped);
    assert_eq!(Instant::now(), start, "the backoff ended at once");
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    // A call started after the stop sends nothing.
    let err = pool
        .call(
            MODEL,
            10,
            &policy,
            &stop,
            failing(&calls, ErrorClass::Transient),
            |_, _| {},
        )
        .await
        .unwrap_err();
    assert_eq!(err, CallError::Stopped);
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn when_the_last_key_is_refused_the_apis_message_is_the_error() {
    let pool = pool("  - name: a\n    keys: [k1]\n", Strategy::RoundRobin, None);
    let calls = std::sync::atomic::AtomicU32::new(0);
    let refused = ErrorClass::KeyInvalid {
        reason: "API_KEY_INVALID".into(),
    };
    let err = pool
        .call(
            MODEL,
            10,
            &RetryPolicy::default(),
            &tokio_util::sync::CancellationToken::new(),
            failing(&calls, refused),
            |_, _| {},
        )
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("API key not valid"), "{err}");
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
