use crate::support::*;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_video_items_over_six_files_upload_each_once_per_project_and_see_no_403() {
    let sim = simulator(
        "seed: 7\nfiles: { processing_ms: 30 }\nprojects:\n  - name: proj-a\n    keys: [test-key-a1, test-key-a2]\n  - name: proj-b\n    keys: [test-key-b1, test-key-b2]\n",
    )
    .await;
    let work = Workdir::new();
    let videos: Vec<Vec<u8>> = (0..6).map(|i| mp4(10 + i, i as u8)).collect();
    for (i, bytes) in videos.iter().enumerate() {
        std::fs::write(work.path(&format!("clip{i}.mp4")), bytes).unwrap();
    }
    let job: String = (0..30)
        .map(|i| {
            serde_json::json!({"id": format!("v{i}"), "prompt": format!("Describe clip {i}."),
                "video": format!("clip{}.mp4", i % 6)})
            .to_string()
                + "\n"
        })
        .collect();
    work.write("job.jsonl", &job);
    work.write(
        "config.yaml",
        &config(
            &sim.base_url(),
            &[
                ("proj-a", &["test-key-a1", "test-key-a2"]),
                ("proj-b", &["test-key-b1", "test-key-b2"]),
            ],
            "media: { inline_max_bytes: 0, poll: 10ms }\n",
        ),
    );
    let out = work.keyfan(&run_args("state.db", &[]), &[]).await;
    assert!(out.status.success(), "{}", explain(&out));

    let rows = results(&work.path("job.results.jsonl"));
    assert_eq!(rows.len(), 30);
    for row in &rows {
        let i: usize = row["id"].as_str().unwrap()[1..].parse().unwrap();
        assert_eq!(row["status"], "ok", "{row}");
        let output = row["output"].as_str().unwrap();
        assert!(
            output.contains(&format!("media:{} ", media_digest(&videos[i % 6]))),
            "v{i} did not get clip{}'s bytes: {output}",
            i % 6
        );
        assert!(
            output.contains(&digest(&format!("Describe clip {i}."))),
            "{output}"
        );
    }
    let stats = stats(&sim).await;
    // Exactly one upload per (file, project) that used it.
    let mut uploads: HashMap<(String, String), u32> = HashMap::new();
    for upload in &stats.uploads {
        *uploads
            .entry((upload.sha256.clone(), upload.project.clone()))
            .or_default() += 1;
    }
    assert!(uploads.values().all(|&n| n == 1), "{uploads:?}");
    let expected: BTreeMap<String, ()> = videos
        .iter()
        .map(|v| (hex::encode(Sha256::digest(v)), ()))
        .collect();
    for (sha, _) in uploads.keys() {
        assert!(expected.contains_key(sha), "an unknown file was uploaded");
    }
    for sha in expected.keys() {
        assert!(
            uploads.keys().any(|(s, _)| s == sha),
            "a file was never uploaded"
        );
    }
    let forbidden: u64 = stats
        .keys
        .values()
        .map(|k| k.statuses.get(&403).copied().unwrap_or(0))
        .sum();
    assert_eq!(forbidden, 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_files_go_inline_and_bad_files_are_told_against_their_lines() {
    let (sim, work) = scenario(&two_projects(0, 0), 0, one_account).await;
    let clip = mp4(3, 9);
    std::fs::write(work.path("a.mp4"), &clip).unwrap();
    std::fs::write(work.path("fake.mp4"), b"not a video at all").unwrap();
    work.write(
        "job.jsonl",
        "{\"id\": 1, \"prompt\": \"What happens?\", \"video\": \"a.mp4\"}\n",
    );
    let out = work.keyfan(&run_args("state.db", &[]), &[]).await;
    assert!(out.status.success(), "{}", explain(&out));
    let rows = results(&work.path("job.results.jsonl"));
    let output = rows[0]["output"].as_str().unwrap();
    assert!(
        output.contains(&format!("media:{} ", media_digest(&clip))),
        "{output}"
    );
    assert!(
        stats(&sim).await.uploads.is_empty(),
        "a small file went inline"
    );

    work.write(
        "job2.jsonl",
        "{\"id\": 1, \"prompt\": \"p\", \"video\": [\"missing.mp4\", \"fake.mp4\"]}\n{\"id\": 2, \"prompt\": \"p\", \"image\": \"a.txt\"}\n",
    );
    let out = work
        .keyfan(
            &run_job("job2.jsonl", "config.yaml", &["--state", "s2.db"]),
            &[],
        )
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", explain(&out));
    assert!(
        stderr.contains("job2.jsonl:1: field `video`: `missing.mp4`: cannot be read"),
        "{stderr}"
    );
    assert!(
        stderr.contains("`fake.mp4`: its first bytes are not those of a video/mp4 file"),
        "{stderr}"
    );
    assert!(
        stderr.contains("job2.jsonl:2: field `image`: `a.txt`: unsupported image type `.txt`"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_files_api_uploads_in_chunks_and_keeps_each_file_to_its_project() {
    use keyfan::provider::{Client, ErrorClass, MediaPart, ProviderKind, Request, Upload};
    use keyfan::types::ApiKey;
    use std::time::Duration;
    let sim = simulator(
        "files: { processing_ms: 1000 }\nprojects:\n  - name: proj-a\n    keys: [test-key-a1]\n  - name: proj-b\n    keys: [test-key-b1]\n",
    )
    .await;
    let work = Workdir::new();
    let clip = mp4(5, 3);
    let path = work.path("clip.mp4");
    std::fs::write(&path, &clip).unwrap();
    let client = Client::new(
        ProviderKind::Gemini,
        &sim.base_url(),
        Duration::from_secs(5),
        None,
    )
    .unwrap();
    let (a, b) = (ApiKey::new("test-key-a1"), ApiKey::new("test-key-b1"));
    let upload = |display_name| Upload {
        path: &path,
        mime: "video/mp4",
        size: clip.len() as u64,
        display_name,
        chunk_bytes: 1000,
    };
    // Several chunks at their offsets, then finalize: still processing.
    let file = client
        .upload(&a, upload("clip.mp4"))
        .await
        .expect("uploaded");
    assert_eq!(file.state.as_deref(), Some("PROCESSING"));
    assert_eq!(
        stats(&sim).await.uploads[0].sha256,
        hex::encode(Sha256::digest(&clip))
    );
    let parts = [MediaPart::File {
        mime: Some("video/mp4".into()),
        uri: file.uri.clone(),
    }];
    let request = Request {
        model: "gemini-2.5-flash",
        prompt: "What happens?",
        system: None,
        max_output_tokens: None,
        temperature: None,
        turns: &[],
        generation: keyfan::provider::Generation::none(),
        media: &parts,
    };
    let early = client
        .generate(&a, &request)
        .await
        .expect_err("still processing");
    assert_eq!(early.status, Some(400));
    assert!(
        early.message.contains("not in an ACTIVE state"),
        "{early:?}"
    );
    // Another project's key cannot see it: the real 403.
    let foreign = client
        .file(&b, &file.name)
        .await
        .expect_err("another project");
    assert_eq!(foreign.status, Some(403));
    assert!(foreign
        .message
        .contains("You do not have permission to access the File"));
    let foreign = client
        .generate(&b, &request)
        .await
        .expect_err("another project");
    assert_eq!(foreign.status, Some(403));
    // So does a count naming it.
    let foreign = client
        .count_tokens(&b, &request)
        .await
        .expect_err("another project");
    assert_eq!(foreign.status, Some(403));

    let active = client
        .wait_active(&a, file, Duration::from_millis(20))
        .await
        .expect("active");
    assert_eq!(active.state.as_deref(), Some("ACTIVE"));
    let reply = client.generate(&a, &request).await.expect("answered");
    // The count of the same request is what the answer is charged.
    let counted = client.count_tokens(&a, &request).await.expect("counted");
    assert_eq!(counted, reply.usage.input_tokens);
    assert!(
        reply
            .text
            .contains(&format!("media:{} ", media_digest(&clip))),
        "{}",
        reply.text
    );

    // A file that fails processing fails with the API's reason.
    let failing = client
        .upload(&a, upload("clip [[sim:file_failed]]"))
        .await
        .expect("uploaded");
    let failed = client
        .wait_active(&a, failing, Duration::from_millis(20))
        .await
        .expect_err("failed");
    assert_eq!(failed.class, ErrorClass::ItemInvalid);
    assert!(
        failed
            .message
            .contains("failed processing: The simulator was asked"),
        "{failed:?}"
    );
}
