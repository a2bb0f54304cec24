use crate::hostile::*;
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
    haystacks.extend(written(&work));
    // The middle of a key is what no fingerprint shows.
    let middles = KEYS.iter().chain([&REVOKED]).map(|k| &k[4..k.len() - 4]);
    assert_none_contains(&haystacks, middles);
    // The logs did mention the keys, by fingerprint.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("AIza…"), "{stderr}");
}

/// What a run in `work` wrote: the results, both reports and the state file
/// (which must all be there), and the state file's WAL and shared memory if
/// they are.
fn written(work: &Workdir) -> Vec<(&'static str, Vec<u8>)> {
    let mut files = Vec::new();
    for name in [
        "job.results.jsonl",
        "job.report.md",
        "job.report.json",
        "state.db",
    ] {
        let bytes = std::fs::read(work.path(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        files.push((name, bytes));
    }
    for name in ["state.db-wal", "state.db-shm"] {
        if let Ok(bytes) = std::fs::read(work.path(name)) {
            files.push((name, bytes));
        }
    }
    files
}

/// Asserts that no haystack (a name and bytes) holds any of `needles`.
fn assert_none_contains<'a>(
    haystacks: &[(&str, Vec<u8>)],
    needles: impl Iterator<Item = &'a str> + Clone,
) {
    for (name, bytes) in haystacks {
        let text = String::from_utf8_lossy(bytes);
        for needle in needles.clone() {
            assert!(!text.contains(needle), "{name} leaks {needle:?}:\n{text}");
        }
    }
}

/// Every fragment of 8 characters of `key`.
fn fragments(key: &str) -> Vec<&str> {
    (0..=key.len() - 8).map(|i| &key[i..i + 8]).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_fragment_of_a_key_is_written_even_when_the_server_echoes_it() {
    // Two keys without a fragment in common, so each fragment names its key.
    let [k1, k2] = [
        "AIza.fragment.Kq8dP2xZ7mW4vT9nA1",
        "sk-echo-test-Rj5cL0yF3hG6uE1sB2",
    ];
    // 12 characters of each key in errors; both keys whole in the answers.
    let error = |status: u16, code: &str| {
        let message = format!("rejected {} (and {})", &k1[10..22], &k2[14..26]);
        Answer::json(
            status,
            serde_json::json!({"error": {"code": status, "message": message, "status": code}})
                .to_string(),
        )
    };
    let echo = gemini_reply(&format!("your keys: {k1} and {k2}")).to_string();
    let server = Hostile::start(move |seen| {
        if seen.path.contains(":countTokens") {
            return error(400, "INVALID_ARGUMENT");
        }
        match seen.number {
            0 => error(400, "INVALID_ARGUMENT"),
            1 => error(503, "UNAVAILABLE"),
            _ => Answer::json(200, echo.clone()),
        }
    })
    .await;
    let work = hostile_work(
        &server,
        4,
        &[
            ("proj-a", "gemini", &["${K1}"]),
            ("proj-b", "gemini", &["${K2}"]),
        ],
        "concurrency: 1\n",
    );
    let env = [("K1", k1), ("K2", k2)];
    let run = run_offline(&work, &["-v", "--json"], &env).await;
    assert_eq!(run.status.code(), Some(3), "{}", explain(&run));
    let check = work
        .keyfan(&["keys", "check", "--config", "config.yaml"], &env)
        .await;
    assert_eq!(check.status.code(), Some(3), "{}", explain(&check));

    let mut haystacks = vec![
        ("run stdout", run.stdout),
        ("run stderr", run.stderr),
        ("check stdout", check.stdout),
        ("check stderr", check.stderr),
    ];
    haystacks.extend(written(&work));
    assert_none_contains(&haystacks, fragments(k1).into_iter().chain(fragments(k2)));
    // What was scrubbed is still there, by fingerprint.
    let [f1, f2] = [k1, k2].map(|k| keyfan::types::ApiKey::new(k).fingerprint().to_owned());
    let results = work.read("job.results.jsonl");
    assert!(
        results.contains(&format!("rejected {f1} (and {f2})")),
        "{results}"
    );
    assert!(
        results.contains(&format!("your keys: {f1} and {f2}")),
        "{results}"
    );
}
