use crate::support::*;
use keyfan::sim::SimServer;
use serde_json::{json, Value};
use std::time::Duration;

/// A simulator with `latency_ms` of latency on every answer, and a work
/// directory holding `job.jsonl` (one JSON object per item) and a
/// `config.yaml` with one key for it.
async fn chain(latency_ms: u64, items: &[Value]) -> (SimServer, Workdir) {
    let sim = simulator(&two_projects(latency_ms, latency_ms)).await;
    let work = Workdir::new();
    work.write("config.yaml", &one_account(&sim.base_url()));
    let job: String = items.iter().map(|i| i.to_string() + "\n").collect();
    work.write("job.jsonl", &job);
    (sim, work)
}

/// The results of `job.jsonl`, by id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_middle_skips_its_descendants_naming_it_and_the_rest_runs() {
    let (sim, work) = chain(
        0,
        &[
            // The child comes before its parents: it waits for them.
            json!({"id": "C", "prompt": "C after {{outputs.B}}", "depends_on": ["B"]}),
            json!({"id": "A", "prompt": "A"}),
            json!({"id": "B", "prompt": "B [[sim:max_tokens]] {{outputs.A}}", "depends_on": "A"}),
            json!({"id": "E", "prompt": "E", "depends_on": ["C"]}),
            json!({"id": "D", "prompt": "D"}),
        ],
    )
    .await;
    let out = work.keyfan(&run_args("s.db", &["-q"]), &[]).await;
    assert_eq!(out.status.code(), Some(3), "{}", explain(&out));
    let rows = results_by_id(&work.path("job.results.jsonl"));
    assert_eq!(rows.len(), 5, "{rows:?}");
    let status = |id: &str| rows[id]["status"].as_str().unwrap().to_owned();
    assert_eq!(
        ["A", "B", "C", "D", "E"].map(status),
        ["ok", "failed", "skipped", "ok", "skipped"]
    );
    assert_eq!(rows["C"]["error"], "depends on `B`, which failed");
    assert_eq!(rows["E"]["error"], "depends on `C`, which was skipped");
    assert_eq!(rows["C"]["attempts"], 0);
    // A, D and B's attempts: C and E were never sent.
    let sent = 2 + rows["B"]["attempts"].as_u64().unwrap();
    assert_eq!(stats(&sim).await.requests, sent);
    let report: Value = serde_json::from_str(&work.read("job.report.json")).unwrap();
    assert_eq!(
        report["totals"]["skipped_children"],
        json!([
            {"id": "C", "line": 1, "error": "depends on `B`, which failed"},
            {"id": "E", "line": 4, "error": "depends on `C`, which was skipped"},
        ])
    );
    let markdown = work.read("job.report.md");
    assert!(
        markdown.contains("- `C` (line 1): depends on `B`, which failed"),
        "{markdown}"
    );

    // --retry-failed sends B again and, B failing again, skips C and E again.
    let out = work
        .keyfan(&run_args("s.db", &["-q", "--retry-failed"]), &[])
        .await;
    assert_eq!(out.status.code(), Some(3), "{}", explain(&out));
    let again = results_by_id(&work.path("job.results.jsonl"));
    assert_eq!(again["C"]["error"], "depends on `B`, which failed");
    assert!(again["B"]["attempts"].as_u64().unwrap() > rows["B"]["attempts"].as_u64().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_is_sent_with_its_parents_answers_in_its_prompt() {
    let (sim, work) = chain(
        5,
        &[
            json!({"id": "A", "prompt": "Outline the essay."}),
            json!({"id": "B", "prompt": "Draft from: {{outputs.A}}", "depends_on": ["A"]}),
            json!({"id": "C", "messages": [
                {"role": "user", "text": "Here is an outline."},
                {"role": "assistant", "text": "{{ outputs.A }}"},
                {"role": "user", "text": "Compare {{outputs.A}} with {{outputs.B}}"}
            ], "depends_on": ["B", "A"]}),
        ],
    )
    .await;
    // The estimate counts the children with their placeholders unfilled,
    // and says so.
    let out = work
        .keyfan(&["estimate", "job.jsonl", "--config", "config.yaml"], &[])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("Depending on other items: 2 item(s), estimated with their {{outputs.…}} placeholders unfilled"),
        "{table}"
    );
    let out = work.keyfan(&run_args("s.db", &["-q"]), &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let rows = results_by_id(&work.path("job.results.jsonl"));
    let (a, b) = (output_of(&rows, "A"), output_of(&rows, "B"));
    assert!(b.contains(&digest(&format!("Draft from: {a}"))), "{b}");
    let c = output_of(&rows, "C");
    assert!(c.contains(&digest(&format!("Compare {a} with {b}"))), "{c}");
    assert_eq!(stats(&sim).await.requests, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_structured_parents_fields_go_into_the_child_of_the_example_spec() {
    let sim = simulator(&two_projects(0, 0)).await;
    let work = Workdir::new();
    work.write("config.yaml", &one_account(&sim.base_url()));
    let spec = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/jobs/chain.yaml"))
        .expect("jobs/chain.yaml");
    work.write("chain.yaml", &spec);
    let args = run_job("chain.yaml", "config.yaml", &["--state", "s.db", "-q"]);
    let out = work.keyfan(&args, &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let rows = results_by_id(&work.path("chain.results.jsonl"));
    assert_eq!(rows.len(), 5);
    let facts = &rows["facts"]["output_json"];
    let (colour, scattering) = (
        facts["colour"].as_str().unwrap(),
        facts["scattering"].as_str().unwrap(),
    );
    let headline = output_of(&rows, "headline");
    let asked = format!("Write a headline: the sky is {colour} because of {scattering}.");
    assert!(headline.contains(&digest(&asked)), "{headline}");
    let critique = output_of(&rows, "critique");
    let asked = format!(
        "Critique this essay against its outline.\nOutline:\n{}\nEssay:\n{}",
        output_of(&rows, "outline"),
        output_of(&rows, "draft")
    );
    assert!(critique.contains(&digest(&asked)), "{critique}");
    assert_eq!(stats(&sim).await.requests, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_is_refused_naming_its_ids_and_nothing_is_sent() {
    let (sim, work) = chain(
        0,
        &[
            json!({"id": "free", "prompt": "free"}),
            json!({"id": "A", "prompt": "A", "depends_on": ["C"]}),
            json!({"id": "B", "prompt": "B", "depends_on": ["A", "free"]}),
            json!({"id": "C", "prompt": "C", "depends_on": ["B"]}),
            json!({"id": "after", "prompt": "after", "depends_on": ["C"]}),
        ],
    )
    .await;
    let out = work.keyfan(&run_args("s.db", &[]), &[]).await;
    let stderr = assert_exit_saying(&out, 2, "job.jsonl:2: field `depends_on`: a cycle of dependencies: `A` (line 2) → `C` (line 4) → `B` (line 3) → `A` (line 2)");
    assert!(
        stderr
            .contains("job.jsonl:5: field `depends_on`: depends on `C` (line 4), which cannot run"),
        "{stderr}"
    );
    assert_eq!(stats(&sim).await.requests, 0);

    // Under --skip-invalid the rest runs and the cycle is skipped.
    let out = work
        .keyfan(&run_args("s.db", &["-q", "--skip-invalid"]), &[])
        .await;
    assert_eq!(out.status.code(), Some(3), "{}", explain(&out));
    let rows = results_by_id(&work.path("job.results.jsonl"));
    assert_eq!(rows["free"]["status"], "ok");
    assert_eq!(rows.len(), 5, "{rows:?}");
    assert_eq!(stats(&sim).await.requests, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_parent_or_a_placeholder_outside_depends_on_is_refused() {
    let (sim, work) = chain(
        0,
        &[
            json!({"id": "A", "prompt": "A"}),
            json!({"id": "B", "prompt": "B", "depends_on": ["A", "nope"]}),
            json!({"id": "C", "prompt": "C {{outputs.A}}"}),
            json!({"id": "D", "prompt": "D {{outputs.A.json.x}}", "depends_on": ["A"]}),
        ],
    )
    .await;
    let out = work.keyfan(&run_args("s.db", &[]), &[]).await;
    let stderr = assert_exit_saying(
        &out,
        2,
        "job.jsonl:2: field `depends_on`: unknown id `nope`: no valid item of the job has it",
    );
    assert!(
        stderr.contains(
            "job.jsonl:3: field `prompt`: `{{outputs.A}}` names no item of `depends_on` (empty)"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "job.jsonl:4: field `prompt`: `{{outputs.A.json…}}`: `A` has no response_schema"
        ),
        "{stderr}"
    );
    assert_eq!(stats(&sim).await.requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_state_refuses_a_job_with_dependencies_before_connecting() {
    let (sim, work) = chain(
        0,
        &[
            json!({"id": "A", "prompt": "A"}),
            json!({"id": "B", "prompt": "B {{outputs.A}}", "depends_on": ["A"]}),
        ],
    )
    .await;
    // Port 1 has no database: the refusal comes before any connection.
    let out = work
        .keyfan(&run_args("postgres://keyfan@127.0.0.1:1/none", &[]), &[])
        .await;
    assert_exit_saying(
        &out,
        2,
        "job.jsonl: depends_on on a shared state (--state postgres://…) is not supported yet: \
         nothing was sent; run the job with a state file",
    );
    assert_eq!(stats(&sim).await.requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_resumed_after_a_kill_is_built_from_its_parents_stored_answer() {
    // Every answer takes 1.5 s: the child is in flight when run 1 is killed.
    let (sim, work) = chain(
        1500,
        &[
            json!({"id": "A", "prompt": "Outline the essay."}),
            json!({"id": "B", "prompt": "Draft from: {{outputs.A}}", "depends_on": ["A"]}),
        ],
    )
    .await;
    let args = run_args("s.db", &["-q"]);
    let mut child = work.spawn(&args);
    wait_until(
        "A's result is written",
        Duration::from_secs(20),
        async || {
            std::fs::read_to_string(work.path("job.results.jsonl"))
                .unwrap_or_default()
                .contains("\"A\"")
        },
    )
    .await;
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let first = results_by_id(&work.path("job.results.jsonl"));
    assert_eq!(first.len(), 1, "B must not have finished: {first:?}");
    let a = output_of(&first, "A").to_owned();

    let out = work.keyfan(&args, &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let rows = results_by_id(&work.path("job.results.jsonl"));
    assert_eq!(rows["A"]["attempts"], 1, "A is not sent again");
    let b = output_of(&rows, "B");
    assert!(b.contains(&digest(&format!("Draft from: {a}"))), "{b}");
    let sent = stats(&sim).await.requests;
    assert!((2..=3).contains(&sent), "A once, B once or twice: {sent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sample_chooses_only_items_whose_parents_are_finished() {
    let (sim, work) = chain(
        0,
        &[
            json!({"id": "A", "prompt": "A"}),
            json!({"id": "B", "prompt": "B {{outputs.A}}", "depends_on": ["A"]}),
            json!({"id": "C", "prompt": "C"}),
        ],
    )
    .await;
    let out = work
        .keyfan(&run_args("s.db", &["-q", "--sample", "3"]), &[])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let rows = results_by_id(&work.path("job.results.jsonl"));
    let mut sampled: Vec<&str> = rows.keys().map(String::as_str).collect();
    sampled.sort();
    assert_eq!(sampled, ["A", "C"], "B waits for A to be finished");
    let out = work.keyfan(&run_args("s.db", &["-q"]), &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let rows = results_by_id(&work.path("job.results.jsonl"));
    let a = output_of(&rows, "A");
    assert!(output_of(&rows, "B").contains(&digest(&format!("B {a}"))));
    assert_eq!(stats(&sim).await.requests, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupt_with_children_held_ends_at_once_and_a_rerun_finishes_the_chain() {
    // Every answer takes 1 s: B and C are held while A is in flight.
    let (sim, work) = chain(
        1000,
        &[
            json!({"id": "A", "prompt": "A"}),
            json!({"id": "B", "prompt": "B {{outputs.A}}", "depends_on": ["A"]}),
            json!({"id": "C", "prompt": "C {{outputs.B}}", "depends_on": ["B"]}),
        ],
    )
    .await;
    let args = run_args("s.db", &["-q"]);
    let mut child = work.spawn(&args);
    wait_until("A is sent", Duration::from_secs(20), async || {
        stats(&sim).await.requests >= 1
    })
    .await;
    sigterm(&child);
    let status = exit_within(&mut child, Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(130));
    let out = work.keyfan(&args, &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let rows = results_by_id(&work.path("job.results.jsonl"));
    let b = output_of(&rows, "B");
    assert!(output_of(&rows, "C").contains(&digest(&format!("C {b}"))));
    assert_eq!(rows["A"]["attempts"], 1, "A finished in run 1: {rows:?}");
}
