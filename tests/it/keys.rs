use crate::support::*;
use keyfan::sim::Stats;
use std::process::Output;

const SIM: &str = "
projects:
  - name: proj-a
    keys: [test-key-a1, test-key-a2]
disabled_keys: [test-key-off]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_check_tells_working_invalid_and_disabled_keys_apart() {
    let (sim, work) = scenario(SIM, 0, |url| {
        config(
            url,
            &[("proj-a", &["test-key-a1", "test-key-bogus", "test-key-off"])],
            "",
        )
    })
    .await;
    let out = work
        .keyfan(&["keys", "check", "--config", "config.yaml", "--json"], &[])
        .await;
    assert_eq!(out.status.code(), Some(3), "{}", explain(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let status = |key: &str| row_of(&rows, key)["status"].as_str().unwrap().to_owned();
    assert_eq!(status("test-key-a1"), "ok");
    assert_eq!(status("test-key-bogus"), "invalid");
    assert_eq!(status("test-key-off"), "no access");
    assert_eq!(
        stats(&sim).await.requests,
        0,
        "countTokens is free: no generate request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_status_shows_todays_use_and_why_a_key_was_disabled() {
    let (_sim, work) = scenario(SIM, 6, |url| {
        with_rpd_500(config(
            url,
            &[("proj-a", &["test-key-a1", "test-key-bogus"])],
            "",
        ))
    })
    .await;
    let run = work.keyfan(&run_args("s.db", &[]), &[]).await;
    assert_eq!(run.status.code(), Some(0), "{}", explain(&run));
    let status = keys_status(&work, &[], &[]).await;
    let usage = &status["usage"][0];
    assert_eq!(usage["account"], "proj-a");
    assert_eq!(usage["requests"], 6, "the refused request is not counted");
    assert_eq!(usage["rpd"], 500);
    let key = row_of(&status["keys"], "test-key-bogus");
    assert_eq!(key["state"], "disabled");
    assert!(
        key["reason"]
            .as_str()
            .unwrap()
            .contains("API key not valid"),
        "{key}"
    );

    let runs = work.keyfan(&["runs", "--state", "s.db"], &[]).await;
    assert!(
        String::from_utf8_lossy(&runs.stdout).contains("6 ok"),
        "{}",
        explain(&runs)
    );
    let report = work
        .keyfan(&["report", "--state", "s.db", "--json"], &[])
        .await;
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(report["totals"]["status"]["ok"], 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_check_help_documents_its_exit_codes() {
    let out = Workdir::new()
        .keyfan(&["keys", "check", "--help"], &[])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let help = String::from_utf8_lossy(&out.stdout);
    for line in [
        "0    every key answered ok",
        "2    invalid",
        "3    some key is not ok",
    ] {
        assert!(help.contains(line), "`{line}` missing from:\n{help}");
    }
}

/// `keys status --state S --json` (and `extra`), with `env` set.
async fn keys_status(work: &Workdir, extra: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let mut args = vec![
        "keys",
        "status",
        "--config",
        "config.yaml",
        "--state",
        "s.db",
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = work.keyfan(&args, env).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The row of `key` (listed by fingerprint) in `rows`, a JSON array.
fn row_of<'a>(rows: &'a serde_json::Value, key: &str) -> &'a serde_json::Value {
    let fp = keyfan::types::ApiKey::new(key);
    rows.as_array()
        .unwrap()
        .iter()
        .find(|row| row["key"] == fp.fingerprint())
        .unwrap_or_else(|| panic!("{} not listed: {rows}", fp.fingerprint()))
}

/// `config` with a limit of 500 requests a day for its accounts.
fn with_rpd_500(config: String) -> String {
    config.replace(
        "    keys:\n",
        "    limits: { gemini-2.5-flash: { rpd: 500 } }\n    keys:\n",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_status_reads_the_state_file_without_the_keys_in_the_environment() {
    let (_sim, work) = scenario(SIM, 4, |url| {
        with_rpd_500(config(url, &[("proj-a", &["${KEY_A1}"])], ""))
    })
    .await;
    let run = work
        .keyfan(&run_args("s.db", &[]), &[("KEY_A1", "test-key-a1")])
        .await;
    assert_eq!(run.status.code(), Some(0), "{}", explain(&run));

    // No KEY_A1 now: the state file alone tells the key and its use.
    let status = keys_status(&work, &[], &[]).await;
    let usage = &status["usage"][0];
    assert_eq!(usage["account"], "proj-a");
    assert_eq!(usage["requests"], 4);
    assert_eq!(usage["rpd"], 500, "limits still come from the config");
    assert_eq!(row_of(&status["keys"], "test-key-a1")["state"], "ok");
    assert_eq!(status["keys"][0]["account"], "proj-a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_status_simulate_shows_a_simulated_runs_keys_as_used() {
    let work = Workdir::new();
    work.write("job.jsonl", &jsonl_job(6));
    work.write(
        "config.yaml",
        "accounts:\n  - name: proj-a\n    keys: [\"${UNSET_KEY_1}\", \"${UNSET_KEY_2}\"]\n",
    );
    let run = work
        .keyfan(&run_args("s.db", &["--simulate", "-j", "1"]), &[])
        .await;
    assert_eq!(run.status.code(), Some(0), "{}", explain(&run));
    let status = keys_status(&work, &["--simulate"], &[]).await;
    let states: Vec<&str> = status["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["state"].as_str().unwrap())
        .collect();
    assert_eq!(states.len(), 2, "{status}");
    assert!(states.contains(&"ok"), "{status}");
    // The placeholder keys of the run: `sim-<account>-<n>`.
    row_of(&status["keys"], "sim-proj-a-1");
}

/// A job of one item per model in `models` (`None`: no `model` field).
fn job_of_models(models: &[Option<&str>]) -> String {
    jsonl_job_with(models.len(), |i| match models[i] {
        Some(model) => serde_json::json!({ "model": model }),
        None => serde_json::Value::Null,
    })
}

/// Runs a [`job_of_models`] of `models` with one account against the
/// simulator, then `extra`; returns the output and the simulator's counters.
async fn run_models(models: &[Option<&str>], extra: &[&str]) -> (Output, Stats) {
    let (sim, work) = scenario(SIM, 0, one_account).await;
    work.write("job.jsonl", &job_of_models(models));
    let out = work.keyfan(&run_args("s.db", extra), &[]).await;
    (out, stats(&sim).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mistyped_model_is_refused_with_the_nearest_name_before_anything_is_sent() {
    let models = [None, Some("gemini-2.5-flsh"), Some("gemini-2.5-flsh")];
    let (out, stats) = run_models(&models, &[]).await;
    assert_exit_saying(
        &out,
        2,
        "unknown model `gemini-2.5-flsh` (line 2); did you mean `gemini-2.5-flash`?",
    );
    assert_eq!(stats.requests, 0, "nothing was sent");
    assert_eq!(stats.model_lists, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_list_is_fetched_once_and_kept_in_the_state_file() {
    let (sim, work) = scenario(SIM, 3, one_account).await;
    for extra in [&[][..], &["--new-run"][..]] {
        let out = work.keyfan(&run_args("s.db", extra), &[]).await;
        assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    }
    let stats = stats(&sim).await;
    assert_eq!(stats.model_lists, 1, "the second run used the kept list");
    assert_eq!(stats.requests, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_skips_the_model_list() {
    let (out, stats) = run_models(&[Some("gemini-2.5-flsh")], &["--offline"]).await;
    // Sent, and refused by the API itself.
    assert_eq!(out.status.code(), Some(3), "{}", explain(&out));
    assert_eq!(stats.model_lists, 0);
    assert_eq!(stats.requests, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_no_account_serves_is_a_validation_error() {
    // Even offline: routing needs no list.
    let (out, stats) = run_models(&[None, None, Some("gpt-4o-mini")], &["--offline"]).await;
    assert_exit_saying(
        &out,
        2,
        "model `gpt-4o-mini` (line 3) has no account to serve it",
    );
    assert_eq!(stats.requests, 0, "nothing was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_key_for_the_model_list_is_named_and_the_run_goes_on() {
    let (sim, work) = scenario(SIM, 3, |url| {
        config(url, &[("proj-a", &["test-key-bogus", "test-key-a1"])], "")
    })
    .await;
    let out = work.keyfan(&run_args("s.db", &[]), &[]).await;
    let bogus = keyfan::types::ApiKey::new("test-key-bogus");
    assert_exit_saying(
        &out,
        0,
        &format!("key {} (proj-a) was refused", bogus.fingerprint()),
    );
    assert_eq!(stats(&sim).await.model_lists, 1);
}
