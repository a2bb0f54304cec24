//! The scheduler against the in-process simulator.

use super::*;
use crate::config::{Config, MissingEnv};
use crate::pool::Strategy;
use crate::sim::{SimConfig, SimServer};
use crate::sink::Target;
use std::path::Path;

/// An observer that shows nothing.
struct Silent;

impl Observer for Silent {
    fn attempt(&mut self, _: &AttemptRow) {}
    fn finished(&mut self, _: &ItemRow) {}
    fn progress(&mut self, _: &Progress) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_worker_leaves_its_item_pending_and_the_run_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job.jsonl");
    std::fs::write(
        &job,
        "{\"id\": \"a\", \"prompt\": \"one\"}\n{\"id\": \"b\", \"prompt\": \"[[test:panic]]\"}\n{\"id\": \"c\", \"prompt\": \"three\"}\n",
    )
    .unwrap();
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
    let store = Store::open(&dir.path().join("state.db")).unwrap();
    let run = store.create_run("job.jsonl", "hash", true).unwrap();
    let results = dir.path().join("results.jsonl");
    let sink = Sink::create(&Target::File(results.clone())).unwrap();
    let options = Options {
        job,
        total: 3,
        // One worker: it must go on with the next item after the panic.
        concurrency: 1,
        policy: RetryPolicy::default(),
        default_model: config.model.clone(),
        done: Arc::default(),
        prior_attempts: Arc::default(),
        budget: None,
        budget_output_cap: 0,
    };
    let recording = Recording {
        store,
        run,
        sink,
        observer: Box::new(Silent),
        scrubber: crate::provider::Scrubber::default(),
    };
    let (summary, store) = execute(&options, pool, recording, &Stop::default())
        .await
        .unwrap();
    sim.shutdown().await;
    assert_eq!(
        summary.errors,
        ["internal error: worker panicked on item b: a test asked for a panic"]
    );
    assert_eq!(store.status_counts(run).unwrap(), [(ItemStatus::Ok, 2)]);
    let written = std::fs::read_to_string(results).unwrap();
    assert!(!written.contains("\"b\""), "{written}");
}
