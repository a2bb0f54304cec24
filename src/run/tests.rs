//! The scheduler against the in-process simulator.

use super::*;
use crate::config::{Config, MissingEnv};
use crate::pool::Strategy;
use crate::sim::{SimConfig, SimServer};
use crate::sink::Target;
use std::path::Path;

/// An observer that shows nothing.
struct Silent;

impl Observer for Silent {}

/// What [`execute`] made of a job, run with one worker against the
/// in-process simulator.
struct Ran {
    summary: Summary,
    statuses: Vec<(ItemStatus, u64)>,
    written: String,
}

/// Runs the JSONL `job` as if it had been validated with `validated_hash`
/// (its own hash when `None`).
async fn run_job(job: &str, validated_hash: Option<&str>) -> Ran {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.jsonl");
    std::fs::write(&path, job).unwrap();
    let yaml = "accounts:\n  - name: proj-a\n    keys: [\"${KEY}\"]\n";
    let mut config = Config::parse(
        yaml,
        Path::new("test.yaml"),
        |_| None,
        MissingEnv::Placeholder,
    )
    .unwrap();
    let sim = SimServer::start(SimConfig::rehearsal(&config), ([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    for provider in config.providers.values_mut() {
        provider.base_url = sim.base_url();
    }
    let pool = Arc::new(Pool::new(&config, Strategy::RoundRobin, None).unwrap());
    let clients = Arc::new(Clients::new(&config).unwrap());
    let store = Store::open(&dir.path().join("state.db")).unwrap();
    let run = store.create_run("job.jsonl", "hash", true).unwrap();
    let results = dir.path().join("results.jsonl");
    let sink = Sink::create(&Target::File(results.clone())).unwrap();
    let job_hash = match validated_hash {
        Some(hash) => hash.to_owned(),
        None => crate::job::validate(&path).unwrap().content_hash,
    };
    let options = Options {
        job: path,
        job_hash,
        total: 3,
        // One worker: it must go on with the next item after a panic.
        concurrency: 1,
        policy: RetryPolicy::default(),
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
        run,
        sink,
        observer: Box::new(Silent),
        scrubber: crate::provider::Scrubber::default(),
    };
    let (summary, store) = execute(&options, pool, clients, recording, &Stop::default())
        .await
        .unwrap();
    sim.shutdown().await;
    Ran {
        summary,
        statuses: store.status_counts(run).unwrap(),
        written: std::fs::read_to_string(results).unwrap(),
    }
}

const THREE: &str = "{\"id\": \"a\", \"prompt\": \"one\"}\n{\"id\": \"b\", \"prompt\": \"two\"}\n{\"id\": \"c\", \"prompt\": \"three\"}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_worker_leaves_its_item_pending_and_the_run_says_so() {
    let ran = run_job(&THREE.replace("two", "[[test:panic]]"), None).await;
    assert_eq!(
        ran.summary.errors,
        ["internal error: worker panicked on item b: a test asked for a panic"]
    );
    assert_eq!(ran.statuses, [(ItemStatus::Ok, 2)]);
    assert!(!ran.written.contains("\"b\""), "{}", ran.written);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_file_that_is_not_the_one_validated_fails_the_run() {
    let ran = run_job(THREE, Some("0123456789abcdef")).await;
    let [error] = ran.summary.errors.as_slice() else {
        panic!("one error: {:?}", ran.summary.errors);
    };
    assert!(
        error.contains("changed while the run was reading it (sha256 0123456789ab"),
        "{error}"
    );
    // What was read was sent: its outcomes are kept.
    assert_eq!(ran.statuses, [(ItemStatus::Ok, 3)]);
    assert!(run_job(THREE, None).await.summary.errors.is_empty());
}
