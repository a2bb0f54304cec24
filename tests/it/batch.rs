//! `keyfan run --batch` against the simulator's Batch APIs: submit, reruns
//! that change nothing, collection exactly once at half the price, expired
//! batches resubmitted, a batch created but not recorded adopted.

use crate::support::*;
use keyfan::batch::store::all as batches_of;
use keyfan::batch::{BatchRow, Stage};
use keyfan::price::PriceTable;
use keyfan::provider::batch::BatchState;
use keyfan::provider::{Client, ProviderKind, Usage};
use keyfan::sim::SimServer;
use keyfan::store::Store;
use keyfan::types::{ApiKey, QuotaDay};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// The exit code of `run --batch` while batches are open.
const SUBMITTED: i32 = keyfan::run::exit::SUBMITTED as i32;

/// Longer than a simulated batch's wait and run (2 × 60 s).
const PAST_THE_END: Duration = Duration::from_secs(180);

/// Two projects of two keys each, batches pending 60 s and running 60 s on
/// the simulator's clock, then ending as `end` says, the first `lose`
/// creates' replies lost.
fn sim_yaml(end: &str, lose: u32) -> String {
    format!(
        "seed: 7\nprojects:\n  - name: proj-a\n    keys: [test-key-a1, test-key-a2]\n  - name: proj-b\n    keys: [test-key-b1, test-key-b2]\nbatches: {{ pending_ms: 60000, running_ms: 60000, end: {end}, lose_create_replies: {lose} }}\n"
    )
}

fn accounts(base_url: &str) -> String {
    config(
        base_url,
        &[
            ("proj-a", &["test-key-a1", "test-key-a2"]),
            ("proj-b", &["test-key-b1", "test-key-b2"]),
        ],
        "",
    )
}

/// The projects of [`sim_yaml`], each with a key that lists its batches.
const PROJECTS: [(&str, &str); 2] = [("proj-a", "test-key-a1"), ("proj-b", "test-key-b1")];

/// The batches each account of `accounts` (name, key) holds on the
/// simulator at `base_url`, listed through the `kind` provider's API.
pub async fn batches_held(
    kind: ProviderKind,
    base_url: &str,
    accounts: &[(&'static str, &str)],
) -> HashMap<&'static str, usize> {
    let client = Client::new(kind, base_url, Duration::from_secs(5), None).expect("a client");
    let mut counts = HashMap::new();
    for &(account, key) in accounts {
        let listed = client
            .list_batches(&ApiKey::new(key))
            .await
            .expect("the list");
        counts.insert(account, listed.len());
    }
    counts
}

/// The batches each project holds on the simulator, by the provider.
async fn server_batches(base_url: &str) -> HashMap<&'static str, usize> {
    batches_held(ProviderKind::Gemini, base_url, &PROJECTS).await
}

/// The next `run` (`args`) collects the ended batches and gives their
/// items back: it submits them anew, and each account of `accounts` then
/// holds two batches on the simulator (see [`batches_held`]).
pub async fn assert_rerun_submits_again(
    work: &Workdir,
    args: &[&str],
    kind: ProviderKind,
    base_url: &str,
    accounts: &[(&'static str, &str)],
) {
    let out = work.keyfan(args, &[]).await;
    assert_exit_saying(&out, SUBMITTED, "pending again");
    let twice: HashMap<_, _> = accounts.iter().map(|&(account, _)| (account, 2)).collect();
    assert_eq!(batches_held(kind, base_url, accounts).await, twice);
}

/// Past the end of the open batches, the next `run` (`args`) collects
/// them, its stderr saying `says`: each of the `n` items once, with its reply.
async fn collected_once_each(sim: &SimServer, work: &Workdir, args: &[&str], says: &str, n: usize) {
    sim.advance_clock(PAST_THE_END);
    let out = work.keyfan(args, &[]).await;
    assert_exit_saying(&out, 0, says);
    assert_each_item_once_with_its_reply(&work.path("job.results.jsonl"), n);
}

/// `work`'s recorded batches split into the two that ended with an error
/// saying `why`, now collected, and the new ones.
pub fn ended_and_new(work: &Workdir, why: &str) -> (Vec<BatchRow>, Vec<BatchRow>) {
    let rows = recorded(work);
    let (old, new): (Vec<_>, Vec<_>) = rows
        .iter()
        .cloned()
        .partition(|b| b.stage == Stage::Collected);
    assert_eq!(old.len(), 2, "{rows:?}");
    assert!(
        old.iter()
            .all(|b| b.error.as_deref().is_some_and(|e| e.contains(why))),
        "{rows:?}"
    );
    (old, new)
}

/// `run job.jsonl --batch` on state file `s.db`.
fn batch_run() -> Vec<&'static str> {
    run_args("s.db", &["--batch"])
}

/// A simulator of [`sim_yaml`]`(end, lose)`, a job of `n` items for both
/// accounts, and its first `run --batch`, which submits it (its stderr
/// saying `says`).
async fn submitted(end: &str, lose: u32, n: usize, says: &str) -> (SimServer, Workdir) {
    let (sim, work) = scenario(&sim_yaml(end, lose), n, accounts).await;
    let out = work.keyfan(&batch_run(), &[]).await;
    assert_exit_saying(&out, SUBMITTED, says);
    (sim, work)
}

pub fn recorded(work: &Workdir) -> Vec<BatchRow> {
    let store = Store::open(&work.path("s.db")).expect("the state file");
    batches_of(&store, None).expect("the batches")
}

/// The ledger of `work`'s state file holds half what the usage in its
/// results file costs online at `model`'s price. Returns both (ledger,
/// online).
pub fn assert_ledger_is_half_the_online_cost(work: &Workdir, model: &str) -> (f64, f64) {
    let price = PriceTable::built_in().price(model).expect("a price");
    let online: f64 = results(&work.path("job.results.jsonl"))
        .iter()
        .map(|row| {
            price.cost(&Usage {
                input_tokens: row["input_tokens"].as_u64().expect("input tokens"),
                output_tokens: row["output_tokens"].as_u64().expect("output tokens"),
                ..Usage::default()
            })
        })
        .sum();
    let store = Store::open(&work.path("s.db")).expect("the state file");
    let ledger: f64 = store
        .ledger(QuotaDay::today())
        .expect("the ledger")
        .iter()
        .map(|row| row.cost_usd.expect("a known cost"))
        .sum();
    assert!(online > 0.0);
    assert!(
        (ledger - online / 2.0).abs() < 1e-9 * online,
        "ledger {ledger} vs online {online}"
    );
    (ledger, online)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_job_is_submitted_once_and_collected_once_at_half_price() {
    let n = 10_000;
    let (sim, work) = scenario(&sim_yaml("succeeded", 0), n, accounts).await;
    let args = run_args("s.db", &["--batch", "--batch-size", "2000"]);

    let out = work.keyfan(&args, &[]).await;
    assert_exit_saying(&out, SUBMITTED, "submitted batch");
    // 5000 items per account, 2000 per batch: 3 batches per account.
    let per_account = server_batches(&sim.base_url()).await;
    assert_eq!(per_account, HashMap::from([("proj-a", 3), ("proj-b", 3)]));
    let rows = recorded(&work);
    assert_eq!(rows.len(), 6);
    assert_eq!(rows.iter().map(|b| b.items).sum::<u64>(), n as u64);
    assert!(rows
        .iter()
        .all(|b| b.stage == Stage::Provider(BatchState::Pending)));

    // While the batches run, a rerun changes nothing and submits nothing.
    sim.advance_clock(Duration::from_secs(70));
    let out = work.keyfan(&args, &[]).await;
    assert_exit_saying(&out, SUBMITTED, "");
    assert_eq!(server_batches(&sim.base_url()).await, per_account);
    assert!(results(&work.path("job.results.jsonl")).is_empty());
    let rows = recorded(&work);
    assert!(rows
        .iter()
        .all(|b| b.stage == Stage::Provider(BatchState::Running)));

    // After the delay one run collects every item once, with its digest.
    collected_once_each(&sim, &work, &args, "collected batch", n).await;
    assert!(recorded(&work).iter().all(|b| b.stage == Stage::Collected));
    assert_eq!(server_batches(&sim.base_url()).await, per_account);

    // The ledger holds the batch price: half the online cost of the usage.
    let (ledger, online) = assert_ledger_is_half_the_online_cost(&work, "gemini-2.5-flash");

    // The report says what the batch price saved, and each batch's duration.
    let report = work
        .command(&["report", "--state", "s.db", "--json"])
        .output()
        .expect("keyfan report");
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).expect("JSON");
    let batches = report["batches"].as_array().expect("the batches");
    assert_eq!(batches.len(), 6);
    let sum = |field: &str| -> f64 {
        batches
            .iter()
            .map(|b| b[field].as_f64().expect("usd"))
            .sum()
    };
    // (The JSON report rounds costs to 6 decimals.)
    assert!(
        (sum("online_usd") - online).abs() < 1e-4 * online,
        "{report}"
    );
    assert!((sum("cost_usd") - ledger).abs() < 1e-4 * online, "{report}");
    let md = work
        .command(&["report", "--state", "s.db"])
        .output()
        .expect("keyfan report");
    let md = String::from_utf8_lossy(&md.stdout);
    assert!(
        md.contains("## Batches") && md.contains("The batch price saved $"),
        "{md}"
    );

    // Nothing left: a further run sends nothing and ends ok.
    let out = work.keyfan(&args, &[]).await;
    assert_exit_saying(&out, 0, "");
    assert_eq!(server_batches(&sim.base_url()).await, per_account);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_batch_gives_its_items_back_and_they_are_submitted_again() {
    let n = 40;
    let (sim, work) = submitted("expired", 0, n, "").await;
    let args = batch_run();
    assert_eq!(
        server_batches(&sim.base_url()).await,
        HashMap::from([("proj-a", 1), ("proj-b", 1)])
    );
    sim.advance_clock(PAST_THE_END);
    let base_url = sim.base_url();
    assert_rerun_submits_again(&work, &args, ProviderKind::Gemini, &base_url, &PROJECTS).await;
    let (_, new) = ended_and_new(&work, "48 hours");
    assert_eq!(new.iter().map(|b| b.items).sum::<u64>(), n as u64);
    assert!(results(&work.path("job.results.jsonl")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_created_but_not_recorded_is_adopted_not_duplicated() {
    let n = 40;
    // The first create is carried out, but its answer is lost: keyfan
    // cannot know the batch exists.
    let (sim, work) = submitted("succeeded", 1, n, "looks for it by name").await;
    let args = batch_run();
    let both = HashMap::from([("proj-a", 1), ("proj-b", 1)]);
    assert_eq!(server_batches(&sim.base_url()).await, both);
    let rows = recorded(&work);
    assert_eq!(
        rows.iter().filter(|b| b.stage == Stage::Creating).count(),
        1,
        "{rows:?}"
    );

    // The next run finds it by its name and adopts it: no second batch.
    let out = work.keyfan(&args, &[]).await;
    assert_exit_saying(&out, SUBMITTED, "adopted batch");
    assert_eq!(server_batches(&sim.base_url()).await, both);
    assert!(recorded(&work).iter().all(|b| b.name.is_some()));

    collected_once_each(&sim, &work, &args, "", n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_submission_a_rerun_puts_no_item_in_two_batches_and_loses_none() {
    let n = 60;
    // Each upload of a batch's input waits 1.5 s: the kill lands after the
    // batch is recorded and before (or while) it is created.
    let yaml = sim_yaml("succeeded", 0) + "files: { chunk_ms: 1500 }\n";
    let (sim, work) = scenario(&yaml, n, accounts).await;
    let args = batch_run();
    let mut child = work.spawn(&args);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let recorded_batches = || -> i64 {
        rusqlite::Connection::open(work.path("s.db"))
            .and_then(|db| db.query_row("SELECT count(*) FROM batches", [], |r| r.get(0)))
            .unwrap_or(0)
    };
    while recorded_batches() == 0 {
        assert!(
            child.try_wait().expect("wait").is_none(),
            "keyfan ended before recording a batch"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "no batch recorded in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    let before = server_batches(&sim.base_url()).await;
    assert!(
        before.values().sum::<usize>() < 2,
        "the kill came after both creates: {before:?}"
    );

    // The rerun adopts what was created and submits the rest, once.
    let out = work.keyfan(&args, &[]).await;
    assert_exit_saying(&out, SUBMITTED, "");
    let both = HashMap::from([("proj-a", 1), ("proj-b", 1)]);
    assert_eq!(server_batches(&sim.base_url()).await, both);
    let store = rusqlite::Connection::open(work.path("s.db")).expect("the state file");
    let in_two: i64 = store
        .query_row(
            "SELECT count(*) FROM (SELECT item_id FROM batch_items i JOIN batches b \
             ON b.id = i.batch_id WHERE b.name IS NOT NULL GROUP BY item_id HAVING count(*) > 1)",
            [],
            |r| r.get(0),
        )
        .expect("the batch items");
    assert_eq!(in_two, 0, "an item is in two live batches");

    collected_once_each(&sim, &work, &args, "", n).await;
    assert_eq!(server_batches(&sim.base_url()).await, both);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_batches_fail_a_bad_request_with_the_api_message_and_keep_the_rest() {
    let sim = simulator(&sim_yaml("succeeded", 0)).await;
    let work = Workdir::new();
    let n = 12;
    let job = jsonl_job_with(n, |i| {
        let mut item = serde_json::json!({ "model": "gpt-4o-mini" });
        if i == 5 {
            item["prompt"] = serde_json::json!("this one breaks [[sim:batch_error]]");
        }
        item
    });
    work.write("job.jsonl", &job);
    let base = sim.base_url();
    work.write(
        "config.yaml",
        &format!(
            "providers:\n  openai: {{ base_url: \"{base}\" }}\nmodel: gpt-4o-mini\naccounts:\n  - name: proj-a\n    provider: openai\n    keys: [test-key-a1]\n  - name: proj-b\n    provider: openai\n    keys: [test-key-b1]\n"
        ),
    );
    let args = run_args("s.db", &["--batch", "--offline"]);
    let out = work.keyfan(&args, &[]).await;
    assert_exit_saying(&out, SUBMITTED, "submitted batch");
    sim.advance_clock(PAST_THE_END);
    let out = work.keyfan(&args, &[]).await;
    assert_exit_saying(&out, 3, "collected batch");
    let rows = results(&work.path("job.results.jsonl"));
    assert_eq!(rows.len(), n);
    let ids: HashSet<&str> = rows.iter().map(|r| r["id"].as_str().expect("id")).collect();
    assert_eq!(ids.len(), n);
    for row in &rows {
        if row["id"] == "item-5" {
            assert_eq!(row["status"], "failed", "{row}");
            let error = row["error"].as_str().expect("an error");
            assert!(error.contains("invalid argument"), "{error}");
        } else {
            assert_eq!(row["status"], "ok", "{row}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_listed_polled_and_cancelled_from_the_command_line() {
    let n = 40;
    let (sim, work) = submitted("succeeded", 0, n, "").await;
    let args = batch_run();
    let json = |args: &[&str]| {
        let out = work.command(args).output().expect("keyfan batches");
        assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("JSON")
    };
    let listed = json(&["batches", "list", "--state", "s.db", "--json"]);
    let listed = listed.as_array().expect("a list");
    assert_eq!(listed.len(), 2);
    assert!(listed
        .iter()
        .all(|b| b["stage"] == "pending" && b["items"] == 20));
    let first = listed[0]["display_name"]
        .as_str()
        .expect("a name")
        .to_owned();
    let seen = json(&["batches", "status", "--state", "s.db", "--json"]);
    let states: Vec<&str> = seen
        .as_array()
        .expect("a list")
        .iter()
        .map(|s| s["provider"]["state"].as_str().expect("a state"))
        .collect();
    assert_eq!(states, ["pending", "pending"]);

    let out = work
        .command(&["batches", "cancel", &first, "--state", "s.db"])
        .output()
        .expect("keyfan batches cancel");
    assert_exit_saying(&out, 0, "cancel");
    let seen = json(&["batches", "status", "--state", "s.db", "--json"]);
    assert_eq!(seen[0]["provider"]["state"], "cancelled", "{seen}");

    // The next run collects the cancelled batch: its items go back to
    // pending and into new batches, spread over both accounts.
    let base_url = sim.base_url();
    assert_rerun_submits_again(&work, &args, ProviderKind::Gemini, &base_url, &PROJECTS).await;
    collected_once_each(&sim, &work, &args, "", n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_whose_key_names_no_item_is_reported_not_dropped() {
    let n = 10;
    let (sim, work) = scenario(&sim_yaml("succeeded", 0), n, one_account).await;
    let args = batch_run();
    let out = work.keyfan(&args, &[]).await;
    assert_exit_saying(&out, SUBMITTED, "");
    // The state file forgets that item-3 is in the batch: its result line
    // then names no item of it.
    let db = rusqlite::Connection::open(work.path("s.db")).expect("the state file");
    db.execute("DELETE FROM batch_items WHERE item_id = 'item-3'", [])
        .expect("forget item-3");
    drop(db);
    sim.advance_clock(PAST_THE_END);
    let out = work.keyfan(&args, &[]).await;
    let said = assert_exit_saying(&out, SUBMITTED, "1 line(s) with unknown keys (item-3)");
    assert!(
        said.contains("1 submitted item(s) were in no open batch"),
        "{said}"
    );
    let rows = recorded(&work);
    assert_eq!(rows[0].unknown_keys, 1);
    assert_eq!(rows[0].unknown_first.as_deref(), Some("item-3"));
    let md = work
        .command(&["report", "--state", "s.db"])
        .output()
        .expect("keyfan report");
    let md = String::from_utf8_lossy(&md.stdout);
    assert!(
        md.contains("1 result line(s) whose key names no item of the batch: item-3"),
        "{md}"
    );
    let html = work.read("job.report.html");
    assert!(html.contains("<h2>Batches</h2>"), "{html}");
    assert!(
        html.contains("names no item of the batch: item-3"),
        "{html}"
    );
    // The item itself was not lost: it went into a new batch.
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].items, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_batch_run_collects_what_it_submitted_before_its_simulator_ends() {
    let work = Workdir::new();
    work.write("job.jsonl", &jsonl_job(30));
    work.write("config.yaml", &accounts("http://unused.invalid"));
    let out = work
        .keyfan(&run_args("s.db", &["--batch", "--simulate"]), &[])
        .await;
    let said = assert_exit_saying(&out, 0, "submitted batch");
    assert!(said.contains("collected batch"), "{said}");
    assert_each_item_once_with_its_reply(&work.path("job.results.jsonl"), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_create_leaves_its_items_pending_and_the_run_failed() {
    let yaml = format!("{}disabled_keys: [test-key-b1]\n", sim_yaml("succeeded", 0));
    let (_sim, work) = scenario(&yaml, 10, accounts).await;
    let out = work
        .keyfan(&run_args("s.db", &["--batch", "--offline"]), &[])
        .await;
    let said = assert_exit_saying(&out, 1, "account proj-b refused batch");
    assert!(said.contains("5 item(s) stay pending"), "{said}");
    let rows = recorded(&work);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].stage, Stage::Abandoned);
    let store = Store::open(&work.path("s.db")).expect("the state file");
    let run = store.runs().expect("runs")[0].id;
    let counts = store.status_counts(run).expect("counts");
    assert_eq!(counts, [(keyfan::store::ItemStatus::Submitted, 5)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_combinations_keyfan_cannot_keep_are_refused_before_anything_is_sent() {
    let (sim, work) = scenario(&sim_yaml("succeeded", 0), 2, accounts).await;
    let refused = |out: &std::process::Output, says: &str| {
        assert_exit_saying(out, 2, says);
    };
    // A shared state: checked before connecting (port 1 has no database).
    let shared = ["--batch", "--state", "postgres://keyfan@127.0.0.1:1/none"];
    let out = work
        .keyfan(&run_job("job.jsonl", "config.yaml", &shared), &[])
        .await;
    refused(
        &out,
        "--batch on a shared state (--state postgres://…) is not supported yet: nothing was sent",
    );
    // Children need their parents' answers before they can be batched.
    work.write(
        "job.jsonl",
        "{\"id\": \"A\", \"prompt\": \"A\"}\n{\"id\": \"B\", \"prompt\": \"B {{outputs.A}}\", \"depends_on\": \"A\"}\n",
    );
    let out = work.keyfan(&batch_run(), &[]).await;
    refused(&out, "depends_on under --batch is not supported yet");
    assert_eq!(stats(&sim).await.requests, 0);
    assert!(server_batches(&sim.base_url())
        .await
        .values()
        .all(|&n| n == 0));
}

/// The `(custom_id, body)` of every request in the OpenAI batches the
/// simulator holds, read back from their input files as the API serves them.
async fn openai_batch_bodies(base_url: &str) -> HashMap<String, serde_json::Value> {
    let http = reqwest::Client::new();
    let get = |path: String, key: &'static str| {
        let request = http.get(format!("{base_url}/v1/{path}")).bearer_auth(key);
        async move {
            let reply = request.send().await.expect("an answer");
            assert!(reply.status().is_success(), "{}", reply.status());
            reply.bytes().await.expect("a body")
        }
    };
    let mut bodies = HashMap::new();
    for key in ["test-key-a1", "test-key-b1"] {
        let listed: serde_json::Value =
            serde_json::from_slice(&get("batches".into(), key).await).expect("JSON");
        for batch in listed["data"].as_array().expect("batches") {
            let file = batch["input_file_id"].as_str().expect("an input file");
            let text = get(format!("files/{file}/content"), key).await;
            for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                let line: serde_json::Value = serde_json::from_slice(line).expect("a line");
                let id = line["custom_id"].as_str().expect("an id").to_owned();
                assert!(bodies.insert(id, line["body"].clone()).is_none());
            }
        }
    }
    bodies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_providers_own_batch_file_goes_in_a_batch_as_written_but_for_the_model() {
    let n = 30;
    let sim = simulator(&sim_yaml("succeeded", 0)).await;
    let base = sim.base_url();
    let args = run_args("s.db", &["--batch", "--offline"]);

    // OpenAI: `cheap` names the wire model; all else goes as written.
    let work = Workdir::new();
    let body = |i: usize| {
        serde_json::json!({"model": "cheap", "temperature": 0.2, "max_tokens": 100, "user": "u-1",
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": prompt(i)}]})
    };
    let file: String = (0..n)
        .map(|i| {
            let line = serde_json::json!({"custom_id": format!("item-{i}"), "method": "POST",
                                          "url": "/v1/chat/completions", "body": body(i)});
            format!("{line}\n")
        })
        .collect();
    work.write("job.jsonl", &file);
    work.write(
        "config.yaml",
        &format!(
            "providers:\n  openai: {{ base_url: \"{base}\" }}\nmodel: gpt-4o-mini\nmodels:\n  cheap: {{ provider: openai, name: gpt-4o-mini }}\naccounts:\n  - name: proj-a\n    provider: openai\n    keys: [test-key-a1]\n  - name: proj-b\n    provider: openai\n    keys: [test-key-b1]\n"
        ),
    );
    let out = work.keyfan(&args, &[]).await;
    assert_exit_saying(&out, SUBMITTED, "submitted batch");
    assert_eq!(recorded(&work).len(), 2, "one batch per account");
    let sent = openai_batch_bodies(&base).await;
    assert_eq!(sent.len(), n);
    for i in 0..n {
        let mut expected = body(i);
        expected["model"] = "gpt-4o-mini".into();
        assert_eq!(sent[&format!("item-{i}")], expected);
    }
    collected_once_each(&sim, &work, &args, "collected batch", n).await;

    // Gemini: the batch names the model, so the request's own goes; its
    // snake_case settings reach the model (a schema-shaped answer).
    let work = Workdir::new();
    let schema = serde_json::json!({"type": "object", "properties": {"answer": {"type": "string"}},
                                    "required": ["answer"]});
    let file: String = (0..n)
        .map(|i| {
            let request = serde_json::json!({"model": "models/gemini-2.5-flash",
                "contents": [{"role": "user", "parts": [{"text": prompt(i)}]}],
                "system_instruction": {"parts": [{"text": "be brief"}]},
                "generation_config": {"response_mime_type": "application/json",
                                      "response_json_schema": schema}});
            format!(
                "{}\n",
                serde_json::json!({"key": format!("item-{i}"), "request": request})
            )
        })
        .collect();
    work.write("job.jsonl", &file);
    work.write("config.yaml", &accounts(&base));
    let out = work.keyfan(&args, &[]).await;
    assert_exit_saying(&out, SUBMITTED, "submitted batch");
    assert_eq!(recorded(&work).len(), 2, "one batch per account");
    sim.advance_clock(PAST_THE_END);
    let out = work.keyfan(&args, &[]).await;
    assert_exit_saying(&out, 0, "collected batch");
    let path = work.path("job.results.jsonl");
    assert_each_item_once_with_its_reply(&path, n);
    for row in results(&path) {
        let output = row["output"].as_str().expect("an output");
        let answer: serde_json::Value = serde_json::from_str(output).expect("JSON, as asked");
        assert!(answer["answer"].is_string(), "{output}");
    }
}
