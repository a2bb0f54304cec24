//! The state file: one transaction per batch, the ledger, resume lookups.

use super::*;

fn attempt(item: &str, n: u32, class: AttemptClass) -> AttemptRow {
    AttemptRow {
        item_id: item.to_owned(),
        attempt: n,
        key: "#0badf00d".to_owned(),
        account: "proj-a".to_owned(),
        model: "gemini-2.5-flash".to_owned(),
        class,
        http_status: Some(if class == AttemptClass::Ok { 200 } else { 503 }),
        latency_ms: 10,
        input_tokens: if class == AttemptClass::Ok { 5 } else { 0 },
        output_tokens: if class == AttemptClass::Ok { 7 } else { 0 },
        cost_usd: Some(0.001),
        error: (class != AttemptClass::Ok).then(|| "overloaded".to_owned()),
        at: "2026-11-21T10:00:00.000Z".to_owned(),
        day: "2026-11-21".to_owned(),
    }
}

fn item(id: &str, line: u64, status: ItemStatus) -> ItemRow {
    ItemRow {
        id: id.to_owned(),
        line,
        status,
        output: (status == ItemStatus::Ok).then(|| format!("reply to {id}")),
        model: Some("gemini-2.5-flash".to_owned()),
        input_tokens: 5,
        output_tokens: 7,
        latency_ms: 10,
        attempts: 1,
        key: Some("#0badf00d".to_owned()),
        account: Some("proj-a".to_owned()),
        error: None,
        thinking_tokens: 3,
        cached_tokens: 2,
        finish_reason: Some("STOP".to_owned()),
        cost: Some(0.001),
        output_json: (status == ItemStatus::Ok).then(|| "{\"n\": 1}".to_owned()),
    }
}

fn reservation(a: &AttemptRow) -> Reservation {
    Reservation {
        account: a.account.clone(),
        model: a.model.clone(),
        day: day(&a.day),
        limit: None,
    }
}

/// A batch of finished items alone.
fn items(rows: Vec<ItemRow>) -> Batch {
    Batch {
        items: rows,
        ..Batch::default()
    }
}

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.db")).unwrap();
    (dir, store)
}

#[test]
fn a_batch_commits_items_attempts_ledger_and_key_states_together() {
    let (_dir, mut store) = open();
    let run = store.create_run("job.jsonl", "abc", false).unwrap();
    let attempts = vec![
        attempt("b", 1, AttemptClass::Transient),
        attempt("b", 2, AttemptClass::Ok),
        attempt("a", 1, AttemptClass::RateLimited),
        attempt("a", 2, AttemptClass::Ok),
    ];
    let reserved: Vec<Reservation> = attempts.iter().map(reservation).collect();
    let verdicts = store.reserve(&reserved).unwrap();
    assert!(verdicts.iter().all(|v| *v == Reserved::Reserved));
    // The 429 is given back, as the run does for what the server refused.
    store.release(&reserved[2..3]).unwrap();
    store
        .commit(
            run,
            &Batch {
                attempts,
                items: vec![item("b", 2, ItemStatus::Ok), item("a", 1, ItemStatus::Ok)],
                ..Batch::default()
            },
        )
        .unwrap();
    let mut ids = Vec::new();
    store
        .for_each_item(run, |row| {
            ids.push(row.id);
            Ok::<_, ()>(())
        })
        .unwrap()
        .unwrap();
    assert_eq!(ids, ["a", "b"], "in job-file order");
    let ledger = store.ledger(day("2026-11-21")).unwrap();
    assert_eq!(ledger.len(), 1);
    // The 429 is not counted against the quota; the 503 is.
    assert_eq!((ledger[0].requests, ledger[0].ok), (3, 2));
    assert_eq!(ledger[0].input_tokens, 10);
    let keys = store.keys().unwrap();
    assert_eq!(keys[0].state, KeyState::Ok);
    let mut classes = Vec::new();
    store
        .for_each_attempt(run, |a| classes.push(a.class))
        .unwrap();
    assert_eq!(classes.len(), 4);
    assert_eq!(store.status_counts(run).unwrap(), [(ItemStatus::Ok, 2)]);
}

#[test]
fn items_keep_their_usage_and_an_unknown_cost_and_retries_cost_what_preceded_the_final_attempt() {
    let (_dir, mut store) = open();
    let run = store.create_run("job.jsonl", "abc", false).unwrap();
    let attempts = vec![
        attempt("a", 1, AttemptClass::Transient),
        attempt("a", 2, AttemptClass::Ok),
        attempt("b", 1, AttemptClass::ItemInvalid),
    ];
    let a = ItemRow {
        attempts: 2,
        cost: Some(0.002),
        ..item("a", 1, ItemStatus::Ok)
    };
    let b = ItemRow {
        finish_reason: Some("MAX_TOKENS".to_owned()),
        cost: None,
        ..item("b", 2, ItemStatus::Failed)
    };
    let batch = Batch {
        attempts,
        items: vec![a.clone(), b.clone()],
        ..Batch::default()
    };
    store.commit(run, &batch).unwrap();
    let mut rows = Vec::new();
    store
        .for_each_item(run, |row| {
            rows.push(row);
            Ok::<_, ()>(())
        })
        .unwrap()
        .unwrap();
    assert_eq!(rows, [a, b]);
    // Only a's first attempt came before its item's final one.
    assert_eq!(store.retries_cost(run).unwrap(), Some(0.001));
    // A hand-edited attempt numbered below 1 precedes even a one-attempt
    // item's final one.
    store
        .conn
        .execute_batch("UPDATE attempts SET attempt = 0 WHERE item_id = 'b'")
        .unwrap();
    assert_eq!(store.retries_cost(run).unwrap(), Some(0.002));
}

#[test]
fn a_later_outcome_of_an_item_replaces_the_earlier_one() {
    let (_dir, mut store) = open();
    let run = store.create_run("job.jsonl", "abc", false).unwrap();
    store
        .commit(run, &items(vec![item("a", 1, ItemStatus::Deferred)]))
        .unwrap();
    store
        .commit(run, &items(vec![item("a", 1, ItemStatus::Ok)]))
        .unwrap();
    assert_eq!(store.status_counts(run).unwrap(), [(ItemStatus::Ok, 1)]);
}

#[test]
fn a_refused_key_is_remembered_with_the_apis_reason() {
    let (_dir, mut store) = open();
    let run = store.create_run("job.jsonl", "abc", false).unwrap();
    let mut refused = attempt("a", 1, AttemptClass::KeyInvalid);
    refused.error = Some("API key not valid. Please pass a valid API key.".to_owned());
    let reserved = reservation(&refused);
    let _ = store.reserve(std::slice::from_ref(&reserved)).unwrap();
    assert_eq!(
        store.ledger(day("2026-11-21")).unwrap()[0].requests,
        1,
        "reserved before sending"
    );
    store
        .commit(
            run,
            &Batch {
                attempts: vec![refused],
                ..Batch::default()
            },
        )
        .unwrap();
    store.release(&[reserved]).unwrap();
    let keys = store.keys().unwrap();
    assert_eq!(keys[0].state, KeyState::Disabled);
    assert_eq!(
        keys[0].reason.as_deref(),
        Some("API key not valid. Please pass a valid API key.")
    );
    assert_eq!(
        store.ledger(day("2026-11-21")).unwrap()[0].requests,
        0,
        "a refused key uses no quota"
    );
}

#[test]
fn runs_are_recorded_finished_and_kept() {
    let (dir, store) = open();
    let first = store.create_run("job.jsonl", "abc", false).unwrap();
    let second = store.create_run("job.jsonl", "abc", false).unwrap();
    store.create_run("job.jsonl", "def", false).unwrap();
    assert_ne!(first, second, "a run of the same job is a new run");
    store.finish_run(first, RunStatus::Done).unwrap();
    assert_eq!(store.run(first).unwrap().unwrap().status, RunStatus::Done);
    assert_eq!(store.runs().unwrap().len(), 3);
    drop(store);
    // Reopening migrates nothing and keeps everything.
    let store = Store::open(&dir.path().join("state.db")).unwrap();
    assert_eq!(store.runs().unwrap().len(), 3);
}

#[test]
fn a_state_file_from_a_newer_keyfan_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let err = Store::open(&path).unwrap_err().to_string();
    assert!(
        err.contains("schema version 99") && err.contains("upgrade keyfan"),
        "{err}"
    );
}

#[test]
fn a_model_list_is_kept_for_a_day_per_provider_and_endpoint() {
    let (_dir, store) = open();
    let models = vec!["gemini-2.5-flash".to_owned()];
    assert_eq!(store.model_list("gemini", "http://a").unwrap(), None);
    store
        .save_model_list("gemini", "http://a", &models)
        .unwrap();
    assert_eq!(
        store.model_list("gemini", "http://a").unwrap(),
        Some(models)
    );
    assert_eq!(store.model_list("gemini", "http://b").unwrap(), None);
    assert_eq!(store.model_list("openai", "http://a").unwrap(), None);
    // A day later it is stale, and the next save forgets it.
    let old = stored(chrono::Utc::now() - MODEL_LIST_MAX_AGE - chrono::TimeDelta::seconds(1));
    store
        .conn
        .execute("UPDATE model_lists SET fetched_at = ?1", [&old])
        .unwrap();
    assert_eq!(store.model_list("gemini", "http://a").unwrap(), None);
    store.save_model_list("openai", "http://a", &[]).unwrap();
    let rows: i64 = store
        .conn
        .query_row("SELECT COUNT(*) FROM model_lists", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 1);
}

#[test]
fn ledger_token_sums_saturate_instead_of_turning_real() {
    let (_dir, mut store) = open();
    let run = store.create_run("job.jsonl", "abc", false).unwrap();
    let huge = AttemptRow {
        input_tokens: i64::MAX as u64,
        output_tokens: i64::MAX as u64 - 1,
        ..attempt("a", 1, AttemptClass::Ok)
    };
    for _ in 0..2 {
        let _ = store.reserve(&[reservation(&huge)]).unwrap();
        store
            .commit(
                run,
                &Batch {
                    attempts: vec![huge.clone()],
                    ..Batch::default()
                },
            )
            .unwrap();
    }
    let kinds: (String, String) = store
        .conn
        .query_row(
            "SELECT typeof(input_tokens), typeof(output_tokens) FROM ledger",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    assert_eq!(kinds, ("integer".to_owned(), "integer".to_owned()));
    let ledger = store.ledger(day(&huge.day)).unwrap();
    assert_eq!(ledger[0].input_tokens, i64::MAX as u64);
    assert_eq!(ledger[0].output_tokens, i64::MAX as u64);
    assert_eq!(ledger[0].requests, 2);
}

/// A store holding one run of one item answered `ok` by its one attempt.
fn one_item_run() -> (tempfile::TempDir, Store, RunId, AttemptRow) {
    let (dir, mut store) = open();
    let run = store.create_run("job.jsonl", "abc", false).unwrap();
    let a = attempt("a", 1, AttemptClass::Ok);
    store
        .commit(
            run,
            &Batch {
                attempts: vec![a.clone()],
                items: vec![item("a", 1, ItemStatus::Ok)],
                ..Batch::default()
            },
        )
        .unwrap();
    (dir, store, run, a)
}

#[test]
fn odd_stored_numbers_read_as_the_nearest_count() {
    let (_dir, store, run, a) = one_item_run();
    // What an older keyfan's overflowed sums, or a hand edit, leave behind.
    store
        .conn
        .execute_batch(
            "UPDATE ledger SET requests = -3, ok = 1.5e30, input_tokens = 9.3e18,
                 output_tokens = 'lots', cost_usd = 'free';
             UPDATE items SET line = 2.5, input_tokens = -1, output_tokens = 1e300,
                 latency_ms = 'slow', attempts = 99999999999, cost_usd = x'00';
             UPDATE attempts SET attempt = -7, http_status = 99999, latency_ms = 'slow',
                 input_tokens = 1.8e19, output_tokens = -2.5, cost_usd = 3;",
        )
        .unwrap();
    let ledger = store.ledger(day(&a.day)).unwrap();
    assert_eq!(
        (
            ledger[0].requests,
            ledger[0].ok,
            ledger[0].input_tokens,
            ledger[0].output_tokens,
            ledger[0].cost_usd
        ),
        (0, i64::MAX as u64, i64::MAX as u64, 0, Some(0.0))
    );
    let mut items = Vec::new();
    store
        .for_each_item(run, |row| {
            items.push(row);
            Ok::<_, ()>(())
        })
        .unwrap()
        .unwrap();
    let i = &items[0];
    assert_eq!(
        (
            i.line,
            i.input_tokens,
            i.output_tokens,
            i.latency_ms,
            i.attempts,
            i.cost
        ),
        (2, 0, i64::MAX as u64, 0, u32::MAX, Some(0.0))
    );
    let mut attempts = Vec::new();
    store
        .for_each_attempt(run, |row| attempts.push(row))
        .unwrap();
    let t = &attempts[0];
    assert_eq!(
        (
            t.attempt,
            t.http_status,
            t.latency_ms,
            t.input_tokens,
            t.output_tokens,
            t.cost_usd
        ),
        (0, None, 0, i64::MAX as u64, 0, Some(3.0))
    );
    // What `report` reads: it builds, whatever the rows hold.
    crate::report::Report::build(&store, run).unwrap();
}

#[test]
fn an_unknown_state_is_an_error_naming_its_table_column_and_value() {
    let (_dir, store, run, _) = one_item_run();
    let unknown = |result: Result<(), StoreError>| match result {
        Err(StoreError::UnknownValue { source, .. }) => source,
        other => panic!("{other:?}"),
    };
    let expect = |table, column, value: &str| UnknownValue {
        table,
        column,
        value: value.to_owned(),
    };
    let sql = |sql: &str| store.conn.execute_batch(sql).unwrap();

    sql("UPDATE items SET status = 'lost'");
    let found = unknown(store.for_each_item(run, |_| Ok::<_, ()>(())).map(drop));
    assert_eq!(found, expect("items", "status", "lost"));
    let found = unknown(store.status_counts(run).map(drop));
    assert_eq!(found, expect("items", "status", "lost"));

    sql("UPDATE attempts SET class = 'teapot'");
    let found = unknown(store.for_each_attempt(run, drop));
    assert_eq!(found, expect("attempts", "class", "teapot"));

    sql("UPDATE runs SET status = 'paused'");
    let found = unknown(store.runs().map(drop));
    assert_eq!(found, expect("runs", "status", "paused"));
    let error = store.run(run).unwrap_err().to_string();
    assert!(
        error.contains("table runs, column status holds `paused`"),
        "{error}"
    );

    sql("UPDATE keys SET state = 'asleep'");
    let found = unknown(store.keys().map(drop));
    assert_eq!(found, expect("keys", "state", "asleep"));
}

#[test]
fn every_state_reads_back_as_written() {
    for status in [
        RunStatus::Running,
        RunStatus::Done,
        RunStatus::Interrupted,
        RunStatus::OutputClosed,
        RunStatus::BudgetReached,
        RunStatus::Failed,
        RunStatus::KeysRefused,
        RunStatus::Sampled,
    ] {
        assert_eq!(RunStatus::parse(status.as_str()), Ok(status));
    }
    for state in [KeyState::Ok, KeyState::Disabled] {
        assert_eq!(KeyState::parse(state.as_str()), Ok(state));
    }
    for status in [
        ItemStatus::Ok,
        ItemStatus::Failed,
        ItemStatus::Blocked,
        ItemStatus::Skipped,
        ItemStatus::Deferred,
    ] {
        assert_eq!(ItemStatus::parse(status.as_str()), Ok(status));
    }
    for class in [
        AttemptClass::Ok,
        AttemptClass::RateLimited,
        AttemptClass::KeyInvalid,
        AttemptClass::Transient,
        AttemptClass::ItemInvalid,
        AttemptClass::Blocked,
        AttemptClass::SchemaMismatch,
    ] {
        assert_eq!(AttemptClass::parse(class.as_str()), Ok(class));
    }
    // What earlier keyfans wrote reads as before.
    assert_eq!(
        RunStatus::parse("stopped at --max-cost"),
        Ok(RunStatus::BudgetReached)
    );
}

fn day(text: &str) -> crate::types::QuotaDay {
    text.parse().expect("a YYYY-MM-DD day")
}

#[test]
fn item_counts_count_statuses_and_models_and_keep_the_first_skipped_children_by_line() {
    let (_dir, mut store) = open();
    let run = store.create_run("job.jsonl", "abc", false).unwrap();
    let skipped = |id: &str, line: u64| ItemRow {
        error: Some(format!("depends on `{id}`'s parent, which failed")),
        ..item(id, line, ItemStatus::Skipped)
    };
    let rows = vec![
        skipped("d", 9),
        skipped("#line:2", 2),
        item("a", 1, ItemStatus::Ok),
        skipped("c", 7),
        ItemRow {
            model: None,
            ..skipped("b", 4)
        },
        skipped("e", 5),
    ];
    store.commit(run, &items(rows)).unwrap();
    let counts = store.item_counts(run, 2).unwrap();
    assert_eq!(
        counts.statuses,
        [(ItemStatus::Ok, 1), (ItemStatus::Skipped, 5)]
    );
    assert_eq!(counts.models.len(), 1);
    assert_eq!(counts.models["gemini-2.5-flash"], 5);
    let children: Vec<(&str, u64)> = counts
        .skipped_children
        .iter()
        .map(|(id, line, _)| (id.as_str(), *line))
        .collect();
    assert_eq!(children, [("b", 4), ("e", 5)]);
    assert_eq!(
        counts.skipped_children[0].2,
        "depends on `b`'s parent, which failed"
    );
    assert!(store
        .item_counts(run, 0)
        .unwrap()
        .skipped_children
        .is_empty());
}
