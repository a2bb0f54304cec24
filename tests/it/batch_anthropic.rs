//! `keyfan run --batch` against the simulator's Anthropic Message Batches:
//! submit, reruns that submit nothing, collection exactly once at half the
//! price with long and odd item ids mapped through short custom ids, an
//! errored request failed with the API's message, an expired batch's
//! unfinished items resubmitted, a batch created but not recorded adopted,
//! and `--online-fallback` sending failed items online.

use crate::batch::{
    assert_ledger_is_half_the_online_cost, assert_rerun_submits_again, batches_held, ended_and_new,
    recorded,
};
use crate::support::*;
use keyfan::batch::Stage;
use keyfan::provider::{Client, ProviderKind};
use keyfan::sim::SimServer;
use keyfan::store::Store;
use keyfan::types::ApiKey;
use std::collections::HashMap;
use std::time::Duration;

const SUBMITTED: i32 = keyfan::run::exit::SUBMITTED as i32;
const PAST_THE_END: Duration = Duration::from_secs(180);
const HAIKU: &str = "claude-haiku-4-5";

/// An item id no custom id may carry: too long, spaces, slashes, colons.
fn odd_id() -> String {
    format!("odd id/with:colons and spaces {}", "x".repeat(80))
}

/// Two organisations of one key each; batches pending and running 60 s
/// each, then ending as `end` says; the first `lose` create answers lost.
fn sim_yaml(end: &str, lose: u32) -> String {
    format!(
        "seed: 11\nprojects:\n  - name: org-a\n    keys: [sk-ant-a1]\n  - name: org-b\n    keys: [sk-ant-b1]\nbatches: {{ pending_ms: 60000, running_ms: 60000, end: {end}, lose_create_replies: {lose} }}\n"
    )
}

/// A simulator, a job of `n` Haiku items (item 1 with [`odd_id`], item 5
/// failing inside its batch when `error_at_5`) and a config of both
/// organisations.
async fn setup(end: &str, lose: u32, n: usize, error_at_5: bool) -> (SimServer, Workdir) {
    let sim = simulator(&sim_yaml(end, lose)).await;
    let work = Workdir::new();
    let job = jsonl_job_with(n, |i| {
        let mut item = serde_json::json!({});
        if i == 1 {
            item["id"] = serde_json::json!(odd_id());
        }
        if i == 5 && error_at_5 {
            item["prompt"] = serde_json::json!("this one breaks [[sim:batch_error]]");
        }
        item
    });
    work.write("job.jsonl", &job);
    let base = sim.base_url();
    work.write(
        "config.yaml",
        &format!(
            "providers:\n  anthropic: {{ base_url: \"{base}\" }}\nmodel: {HAIKU}\ntimeout: 5s\naccounts:\n  - name: org-a\n    provider: anthropic\n    keys: [sk-ant-a1]\n  - name: org-b\n    provider: anthropic\n    keys: [sk-ant-b1]\n"
        ),
    );
    (sim, work)
}

/// The organisations of [`sim_yaml`], each with a key that lists its
/// batches.
const ORGS: [(&str, &str); 2] = [("org-a", "sk-ant-a1"), ("org-b", "sk-ant-b1")];

/// The batches each organisation holds on the simulator.
async fn server_batches(base_url: &str) -> HashMap<&'static str, usize> {
    batches_held(ProviderKind::Anthropic, base_url, &ORGS).await
}

/// The job's item `i` id.
fn id_of(i: usize) -> String {
    if i == 1 {
        odd_id()
    } else {
        format!("item-{i}")
    }
}

/// Each row's id once; every id but `failed` ok with its prompt's digest.
fn assert_each_once(work: &Workdir, n: usize, failed: Option<usize>) -> Vec<serde_json::Value> {
    let rows = results(&work.path("job.results.jsonl"));
    let by_id: HashMap<String, &serde_json::Value> = rows
        .iter()
        .map(|r| (r["id"].as_str().expect("an id").to_owned(), r))
        .collect();
    assert_eq!(rows.len(), n, "{rows:?}");
    assert_eq!(by_id.len(), n, "an item twice: {rows:?}");
    for i in 0..n {
        let row = by_id[&id_of(i)];
        if Some(i) == failed {
            continue;
        }
        assert_eq!(row["status"], "ok", "{row}");
        let output = row["output"].as_str().expect("output");
        assert!(output.contains(&digest(&prompt(i))), "{row}");
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_batches_are_submitted_once_and_collected_once_at_half_price() {
    let n = 30;
    let (sim, work) = setup("succeeded", 0, n, true).await;
    let args = run_args("s.db", &["--batch"]);

    let out = work.keyfan(&args, &[]).await;
    assert_exit_saying(&out, SUBMITTED, "submitted batch");
    let per_org = HashMap::from([("org-a", 1), ("org-b", 1)]);
    assert_eq!(server_batches(&sim.base_url()).await, per_org);
    assert_eq!(
        recorded(&work).iter().map(|b| b.items).sum::<u64>(),
        n as u64
    );

    // While the batches run, a rerun submits nothing.
    sim.advance_clock(Duration::from_secs(70));
    let out = work.keyfan(&args, &[]).await;
    assert_exit_saying(&out, SUBMITTED, "");
    assert_eq!(server_batches(&sim.base_url()).await, per_org);
    assert!(results(&work.path("job.results.jsonl")).is_empty());

    // After the delay one run collects every item once; the errored
    // request is failed with the API's message (exit 3: items failed).
    sim.advance_clock(PAST_THE_END);
    let out = work.keyfan(&args, &[]).await;
    assert_exit_saying(&out, 3, "collected batch");
    let rows = assert_each_once(&work, n, Some(5));
    let broken = rows.iter().find(|r| r["id"] == "item-5").expect("item-5");
    assert_eq!(broken["status"], "failed", "{broken}");
    let error = broken["error"].as_str().expect("an error");
    assert!(error.contains("invalid argument"), "{error}");
    assert!(recorded(&work).iter().all(|b| b.stage == Stage::Collected));
    assert!(recorded(&work).iter().all(|b| b.unknown_keys == 0));
    assert_eq!(server_batches(&sim.base_url()).await, per_org);

    // The ledger holds the batch price: half the online cost of the usage.
    assert_ledger_is_half_the_online_cost(&work, HAIKU);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_anthropic_batch_keeps_what_it_did_and_resubmits_the_rest() {
    let n = 20;
    let (sim, work) = setup("expired", 0, n, false).await;
    let args = run_args("s.db", &["--batch"]);
    let out = work.keyfan(&args, &[]).await;
    assert_exit_saying(&out, SUBMITTED, "submitted batch");

    sim.advance_clock(PAST_THE_END);
    let base_url = sim.base_url();
    assert_rerun_submits_again(&work, &args, ProviderKind::Anthropic, &base_url, &ORGS).await;
    let (_, new) = ended_and_new(&work, "expired");
    // Each expired batch did its first half: those are collected, the rest
    // went into the new batches.
    let done = results(&work.path("job.results.jsonl")).len();
    assert_eq!(done, n / 2);
    assert_eq!(new.iter().map(|b| b.items).sum::<u64>(), (n - done) as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anthropic_batch_created_but_not_recorded_is_adopted_not_duplicated() {
    let n = 20;
    let (sim, work) = setup("succeeded", 1, n, false).await;
    let args = run_args("s.db", &["--batch"]);
    let out = work.keyfan(&args, &[]).await;
    assert_exit_saying(&out, SUBMITTED, "looks for it");
    let both = HashMap::from([("org-a", 1), ("org-b", 1)]);
    assert_eq!(server_batches(&sim.base_url()).await, both);

    let out = work.keyfan(&args, &[]).await;
    assert_exit_saying(&out, SUBMITTED, "found by its creation time and size");
    assert_eq!(server_batches(&sim.base_url()).await, both);
    assert!(recorded(&work).iter().all(|b| b.name.is_some()));

    sim.advance_clock(PAST_THE_END);
    let out = work.keyfan(&args, &[]).await;
    assert_exit_saying(&out, 0, "collected batch");
    assert_each_once(&work, n, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_fallback_sends_the_items_that_failed_in_a_batch_online_not_in_a_new_batch() {
    let n = 10;
    let (sim, work) = setup("succeeded", 0, n, true).await;
    let args = run_args("s.db", &["--batch"]);
    let out = work.keyfan(&args, &[]).await;
    assert_exit_saying(&out, SUBMITTED, "submitted batch");
    sim.advance_clock(PAST_THE_END);
    let out = work.keyfan(&args, &[]).await;
    assert_exit_saying(&out, 3, "collected batch");
    let per_org = HashMap::from([("org-a", 1), ("org-b", 1)]);
    assert_eq!(server_batches(&sim.base_url()).await, per_org);

    let fallback = run_args("s.db", &["--batch", "--retry-failed", "--online-fallback"]);
    let out = work.keyfan(&fallback, &[]).await;
    assert_exit_saying(
        &out,
        0,
        "sending 1 item(s) that failed inside a batch online",
    );
    // No new batch: item-5 went online, and its answer is its own.
    assert_eq!(server_batches(&sim.base_url()).await, per_org);
    let rows = results(&work.path("job.results.jsonl"));
    let last = rows
        .iter()
        .rev()
        .find(|r| r["id"] == "item-5")
        .expect("item-5");
    assert_eq!(last["status"], "ok", "{last}");
    let output = last["output"].as_str().expect("output");
    assert!(
        output.contains(&digest("this one breaks [[sim:batch_error]]")),
        "{output}"
    );
    let store = Store::open(&work.path("s.db")).expect("the state file");
    let counts = store
        .status_counts(recorded(&work)[0].run)
        .expect("the counts");
    assert_eq!(counts, [(keyfan::store::ItemStatus::Ok, n as u64)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_anthropic_batch_gives_its_items_back_and_they_are_collected_later() {
    let n = 20;
    let (sim, work) = setup("succeeded", 0, n, false).await;
    let args = run_args("s.db", &["--batch"]);
    let out = work.keyfan(&args, &[]).await;
    assert_exit_saying(&out, SUBMITTED, "submitted batch");
    let first = recorded(&work)[0].display_name.clone();
    let out = work
        .command(&["batches", "cancel", &first, "--state", "s.db"])
        .output()
        .expect("keyfan batches cancel");
    assert_exit_saying(&out, 0, "cancel");
    let out = work
        .command(&["batches", "status", "--state", "s.db", "--json"])
        .output()
        .expect("keyfan batches status");
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(seen[0]["provider"]["state"], "cancelled", "{seen}");

    // The next run collects it (every request `canceled`): its items are
    // pending again and go into new batches, spread over both accounts.
    let base_url = sim.base_url();
    assert_rerun_submits_again(&work, &args, ProviderKind::Anthropic, &base_url, &ORGS).await;
    sim.advance_clock(PAST_THE_END);
    let out = work.keyfan(&args, &[]).await;
    assert_exit_saying(&out, 0, "collected batch");
    assert_each_once(&work, n, None);
}

#[tokio::test]
async fn the_simulator_refuses_a_custom_id_the_api_would_refuse() {
    let sim = simulator(&sim_yaml("succeeded", 0)).await;
    let client = Client::new(
        ProviderKind::Anthropic,
        &sim.base_url(),
        Duration::from_secs(5),
        None,
    )
    .expect("a client");
    let work = Workdir::new();
    work.write(
        "in.jsonl",
        &format!(
            "{}\n",
            serde_json::json!({"custom_id": "has space", "params": {
                "model": HAIKU, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}})
        ),
    );
    let path = work.path("in.jsonl");
    let input = keyfan::provider::batch::BatchInput {
        path: &path,
        size: 0,
        model: HAIKU,
        display_name: "unused",
    };
    let error = client
        .create_batch(&ApiKey::new("sk-ant-a1"), input)
        .await
        .expect_err("refused");
    assert_eq!(error.status, Some(400));
    assert!(error.message.contains("custom_id"), "{}", error.message);
    assert_eq!(
        server_batches(&sim.base_url())
            .await
            .values()
            .sum::<usize>(),
        0
    );
}
