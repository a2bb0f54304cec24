//! `keyfan estimate --count-tokens` on media items: the API counts them as
//! the run sends them (files too large to go inline uploaded first), and
//! the run that follows reuses those uploads.

use crate::support::*;
use keyfan::sim::SimServer;

/// Two projects, `proj-a` (keys a1, a2) and `proj-b` (key b1).
async fn sim() -> SimServer {
    simulator(
        "seed: 5\nfiles: { processing_ms: 10 }\nprojects:\n  - name: proj-a\n    keys: [test-key-a1, test-key-a2]\n  - name: proj-b\n    keys: [test-key-b1]\n",
    )
    .await
}

/// `estimate job.jsonl --config config.yaml --count-tokens`, then `extra`;
/// its standard output.
async fn count(work: &Workdir, extra: &[&str]) -> String {
    let args = [
        &[
            "estimate",
            "job.jsonl",
            "--config",
            "config.yaml",
            "--count-tokens",
        ],
        extra,
    ]
    .concat();
    let out = work.keyfan(&args, &[]).await;
    assert!(out.status.success(), "{}", explain(&out));
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counted_media_tokens_equal_what_the_run_is_charged_and_the_run_uploads_nothing_new() {
    let sim = sim().await;
    let work = Workdir::new();
    // Over the inline limit: uploaded. `small.mp4` alone goes inline.
    let (one, two, small) = (mp4_with(0, 1000, 10_000, 6000, 1), mp4(20, 2), mp4(3, 3));
    let two = [two, vec![0; 6000]].concat();
    std::fs::write(work.path("one.mp4"), &one).unwrap();
    std::fs::write(work.path("two.mp4"), &two).unwrap();
    std::fs::write(work.path("small.mp4"), &small).unwrap();
    work.write(
        "job.jsonl",
        r#"{"id":"v1","prompt":"What happens?","video":"one.mp4"}
{"id":"v2","prompt":"Who is there?","video":"one.mp4"}
{"id":"v3","prompt":"Compare the two.","video":["two.mp4","small.mp4"]}
{"id":"i1","prompt":"Is it short?","video":"small.mp4"}
{"id":"t1","prompt":"Only words here."}
"#,
    );
    work.write(
        "config.yaml",
        &two_accounts(
            &sim.base_url(),
            "media: { inline_max_bytes: 5000, poll: 10ms }\n",
        )
        .replace("concurrency: 8\n", "concurrency: 1\n"),
    );
    let rule = {
        let out = work
            .keyfan(
                &["estimate", "job.jsonl", "--config", "config.yaml", "--json"],
                &[],
            )
            .await;
        assert!(out.status.success(), "{}", explain(&out));
        let e: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        e["total"]["input_tokens"].as_u64().unwrap()
    };

    // The first count uploads one.mp4, two.mp4 and small.mp4 (v3's files
    // go through the Files API together) and says so.
    let table = count(&work, &[]).await;
    assert!(
        table.contains(
            "Media counted by the API (4 item(s)): counting media uploads their files first"
        ),
        "{table}"
    );
    assert!(table.contains("3 file(s)"), "{table}");
    let uploaded = stats(&sim).await;
    assert_eq!(uploaded.requests, 0, "nothing generated");
    assert_eq!(uploaded.uploads.len(), 3, "{:?}", uploaded.uploads);

    // A second count reuses them.
    let e: serde_json::Value = serde_json::from_str(&count(&work, &["--json"]).await).unwrap();
    let media = &e["media_counted"];
    assert_eq!(
        (
            media["items"].as_u64(),
            media["files"].as_u64(),
            media["reused"].as_u64()
        ),
        (Some(4), Some(0), Some(3)),
        "{e}"
    );
    assert_eq!(stats(&sim).await.uploads.len(), 3);
    let counted = e["total"]["input_tokens"].as_u64().unwrap();
    assert_ne!(counted, rule, "the count replaced the rule's estimate");

    // The run is charged exactly what was counted, and uploads nothing.
    let out = work
        .keyfan(&run_job("job.jsonl", "config.yaml", &["-q"]), &[])
        .await;
    assert!(out.status.success(), "{}", explain(&out));
    let rows = results(&work.path("job.results.jsonl"));
    assert_eq!(rows.len(), 5);
    let charged: u64 = rows
        .iter()
        .map(|r| r["input_tokens"].as_u64().unwrap())
        .sum();
    assert_eq!(charged, counted);
    let output = |id: &str| {
        rows.iter().find(|r| r["id"] == id).unwrap()["output"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(output("v2").contains(&format!("media:{} ", media_digest(&one))));
    assert!(
        output("v3").contains(&format!(
            "media:{},{} ",
            media_digest(&two),
            media_digest(&small)
        )),
        "{}",
        output("v3")
    );
    let after = stats(&sim).await;
    assert_eq!(
        after.uploads.len(),
        3,
        "the run uploaded again: {:?}",
        after.uploads
    );
    assert!(
        after.uploads.iter().all(|u| u.deleted),
        "deleted after the run"
    );
    assert_eq!(after.requests, 5);
}
