//! keyfan's integration tests: one binary, each module a theme. Every test
//! starts its own simulator on 127.0.0.1:0 and drives the real `keyfan`
//! binary (or `keyfan::run`, in-process) against it over loopback, except the
//! pacing scenarios, which run the library against an in-process simulator
//! under paused time.

mod support;

/// Anthropic's Messages API, a mixed-provider job, OTPM pacing.
mod anthropic;
/// `run --batch`: the providers' Batch APIs, submit and collect.
mod batch;
/// `run --batch` with Anthropic's Message Batches.
mod batch_anthropic;
/// The providers' own batch files as jobs, and results in their output shape.
mod batchfile;
/// The command line: outputs, standard input, completions, version.
mod cli;
/// The README's demo.
mod demo;
/// Dependencies between items: held back, answers passed on, skipped.
mod depends;
/// Crashes, resumes, locks, daily quotas.
mod durable;
/// The engine under stress: huge delays, closed outputs, dead endpoints,
/// signals, quota waits, and bookkeeping across resumes.
mod engine;
/// `keyfan estimate`: figures, prices, nothing sent.
mod estimate;
/// Failover: invalid keys, 503 bursts, quotas.
mod failover;
/// A scripted server that answers what no real API does.
mod hostile;
/// Hostile answers: absurd waits, redirects, absurd usage, empty answers.
mod hostile_answers;
/// `keys check`, `keys status`, `runs`, `report`.
mod keys;
/// `keyfan::run` called in-process, as a program embedding keyfan would.
mod library;
/// Media items: inline, the Files API, account affinity.
mod media;
/// `estimate --count-tokens` on media: uploads reused by the run.
mod media_count;
/// Media estimates from video headers; media settings on the wire.
mod media_estimate;
/// Uploads across runs: reuse, deletion, expiry, failure, `on_unavailable`, kills.
mod media_lifecycle;
/// Money: usage billed item by item, the budget, `--sample`.
mod money;
/// The quota bench's pacing scenarios under paused time, in process.
mod pacing;
/// PostgreSQL as the state of several hosts (needs KEYFAN_TEST_PG_URL).
mod postgres;
/// `keyfan report` in every format; the HTML report.
mod report;
/// A whole job, end to end: results, report, digests.
mod run;
/// No key ever appears in any output.
mod secrets;
/// YAML job specs: templates over data, settings, structured output.
mod spec;
/// Validation of job and config files: nothing is sent when they are wrong.
mod validation;
