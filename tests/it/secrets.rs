use crate::support::*;

/// Keys long enough to be fingerprinted like real ones (the dots keep
/// secret scanners from taking them for real keys): if any output holds one of these strings,
/// or even its distinctive middle, a key leaked.
const KEYS: [&str; 3] = [
    "AIza.test.0000.leakcheck.00000000000aaa",
    "AIza.test.1111.leakcheck.11111111111bbb",
    "AIza.test.2222.leakcheck.22222222222ccc",
];
const REVOKED: &str = "AIza.test.9999.leakcheck.99999999999zzz";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_appears_in_any_output_log_result_report_or_database() {
    let (_sim, work) = scenario(
        &format!(
            "
projects:
  - name: proj-a
    keys: [{}, {}]
  - name: proj-b
    keys: [{}]
faults:
  bursts: [{{ after: 2, count: 3, status: 503 }}]
",
            KEYS[0], KEYS[1], KEYS[2]
        ),
        25,
        |url| {
            config(
                url,
                &[
                    ("proj-a", &["${K0}", "${K1}", "${REVOKED}"]),
                    ("proj-b", &["${K2}"]),
                ],
                "",
            )
        },
    )
    .await;
    let env = [
        ("K0", KEYS[0]),
        ("K1", KEYS[1]),
        ("K2", KEYS[2]),
        ("REVOKED", REVOKED),
    ];
    let out = work
        .keyfan(&run_args("state.db", &["-v", "--json"]), &env)
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));

    let mut haystacks = vec![
        ("stdout", out.stdout.clone()),
        ("stderr", out.stderr.clone()),
    ];
    for file in [
        "job.results.jsonl",
        "job.report.md",
        "job.report.json",
        "state.db",
    ] {
        haystacks.push((file, std::fs::read(work.path(file)).unwrap()));
    }
    for wal in ["state.db-wal", "state.db-shm"] {
        if let Ok(bytes) = std::fs::read(work.path(wal)) {
            haystacks.push((wal, bytes));
        }
    }
    for (name, bytes) in &haystacks {
        let text = String::from_utf8_lossy(bytes);
        for key in KEYS.iter().chain([&REVOKED]) {
            // The middle of a key is what no fingerprint shows.
            assert!(!text.contains(&key[4..key.len() - 4]), "{name} leaks a key");
        }
    }
    // The logs did mention the keys, by fingerprint.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("AIza…"), "{stderr}");
}
