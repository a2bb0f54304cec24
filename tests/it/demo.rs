use crate::support::*;
use keyfan::config::{Config, MissingEnv};
use std::path::Path;

/// The README's first command, on copies of the repository's demo job and
/// example config: the demo must show the fan-out the README promises.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_fans_out_over_every_key_of_both_projects_within_their_quotas() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let work = Workdir::new();
    std::fs::create_dir(work.path("jobs")).unwrap();
    let copy = |name: &str| std::fs::copy(repo.join(name), work.path(name)).unwrap();
    copy("jobs/demo.jsonl");
    copy("config.example.yaml");
    let args = run_job("jobs/demo.jsonl", "config.example.yaml", &["--simulate"]);
    let out = work.keyfan(&args, &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));

    let config = Config::load(
        &work.path("config.example.yaml"),
        |_| None,
        MissingEnv::Placeholder,
    )
    .unwrap();
    let report: serde_json::Value =
        serde_json::from_str(&work.read("jobs/demo.report.json")).unwrap();
    let rows = |section: &str| report[section].as_array().unwrap().clone();
    let requests = |row: &serde_json::Value| row["requests"].as_u64().unwrap();
    for account in &config.accounts {
        let row = rows("accounts")
            .into_iter()
            .find(|a| a["name"] == account.name.as_str())
            .unwrap_or_else(|| panic!("{} is not in the report: {report}", account.name));
        assert!(requests(&row) > 0, "{} sent nothing: {row}", account.name);
        assert_eq!(row["rate_limited"], 0, "{row}");
        for limits in account.limits.values() {
            let cap = limits.rpm.into_iter().chain(limits.rpd).min().unwrap();
            assert!(requests(&row) <= u64::from(cap), "{row} over {limits:?}");
        }
    }
    let keys = config.accounts.iter().map(|a| a.keys.len()).sum::<usize>();
    let used = rows("keys").iter().filter(|k| requests(k) > 0).count();
    assert_eq!(used, keys, "every key takes part: {}", report["keys"]);
}
