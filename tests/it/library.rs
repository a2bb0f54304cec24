use crate::support::*;
use keyfan::config::{Config, MissingEnv};
use keyfan::run::{
    exit, Job, Notice, Observer, Outputs, Progress, Resume, RunError, RunOutcome, Settings,
    StartError,
};
use keyfan::store::{ItemRow, ItemStatus, RunStatus};
use std::sync::{Arc, Mutex};

/// What an observer was told, kept for the test to read.
#[derive(Debug, Default)]
struct Told {
    finished: u64,
    progress: u64,
    notices: Vec<Notice>,
    done: Vec<RunOutcome>,
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Told>>);

impl Observer for Recorder {
    fn finished(&mut self, _: &ItemRow) {
        self.0.lock().unwrap().finished += 1;
    }
    fn progress(&mut self, _: &Progress) {
        self.0.lock().unwrap().progress += 1;
    }
    fn notice(&mut self, notice: &Notice) {
        self.0.lock().unwrap().notices.push(notice.clone());
    }
    fn done(&mut self, outcome: &RunOutcome) {
        self.0.lock().unwrap().done.push(outcome.clone());
    }
}

/// The settings of `job.jsonl` in `work` with its defaults, as a program
/// embedding keyfan would build them.
fn settings(work: &Workdir) -> Settings {
    let config_path = work.path("config.yaml");
    let config = Config::load(&config_path, |_| None, MissingEnv::Error).expect("a valid config");
    let job = Job::open(&work.path("job.jsonl")).expect("the job");
    let outputs = Outputs::pick(&job, None, None, None, false);
    Settings {
        job,
        strategy: config.strategy,
        concurrency: config.concurrency,
        config,
        config_path,
        outputs,
        simulate: false,
        offline: true,
        skip_invalid: false,
        resume: Resume::Continue,
        group: None,
        max_cost: None,
        sample: None,
        stop_on_signals: false,
        batch: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_runs_a_job_in_process_and_gets_its_outcome_and_events() {
    let (sim, work) = scenario(&two_projects(0, 2), 5, one_account).await;
    let told = Recorder::default();
    let outcome = keyfan::run(settings(&work), told.clone())
        .await
        .expect("the run");
    assert_eq!(outcome.status, RunStatus::Done);
    assert_eq!(outcome.items, [(ItemStatus::Ok, 5)]);
    assert_eq!(outcome.exit_code(), exit::OK);
    assert_each_item_once_with_its_reply(&work.path("job.results.jsonl"), 5);
    assert!(work.path("job.report.json").exists());
    {
        let told = told.0.lock().unwrap();
        assert_eq!(told.finished, 5);
        assert!(told.progress > 0);
        assert!(told.notices.is_empty(), "{:?}", told.notices);
        assert_eq!(told.done.len(), 1, "the end is told once");
        assert_eq!(told.done[0].run, outcome.run);
    }

    // Again: the run is resumed, and says so, and nothing is sent.
    let again = keyfan::run(settings(&work), told.clone()).await.unwrap();
    assert_eq!(again.run, outcome.run);
    let notices = std::mem::take(&mut told.0.lock().unwrap().notices);
    assert!(
        matches!(
            notices[..],
            [Notice::Resuming {
                done: 5,
                to_do: 0,
                ..
            }]
        ),
        "{notices:?}"
    );
    assert_eq!(stats(&sim).await.requests, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_with_invalid_lines_is_refused_with_the_usage_code_and_the_lines_told() {
    let (sim, work) = scenario(&two_projects(0, 2), 2, one_account).await;
    work.write("job.jsonl", &(jsonl_job(2) + "{\"id\": \"x\"}\n"));
    let told = Recorder::default();
    let error = keyfan::run(settings(&work), told.clone())
        .await
        .expect_err("refused");
    assert!(
        matches!(
            error,
            RunError::Start(StartError::InvalidLines { count: 1, .. })
        ),
        "{error:?}"
    );
    assert_eq!(error.exit_code(), exit::USAGE);
    {
        let told = told.0.lock().unwrap();
        assert!(
            matches!(&told.notices[..], [Notice::InvalidLines { shown, hidden: 0 }] if shown.len() == 1),
            "{:?}",
            told.notices
        );
        assert!(told.done.is_empty());
    }
    assert_eq!(stats(&sim).await.requests, 0, "nothing was sent");
}
