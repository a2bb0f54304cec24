//! The life of an upload beyond one request: remembered in the state file
//! and reused by the next run, deleted after the run (or kept), uploaded
//! again once when it expired, a file that fails processing failing its
//! items once, `media.on_unavailable` when the account holding a file
//! cannot serve, and a kill during uploads.

use crate::support::*;
use keyfan::sim::SimServer;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::time::Duration;

/// Two projects: `proj-a` (keys a1, a2) and `proj-b` (key b1); files are
/// processed in `processing_ms`, then `files_extra` (YAML flow entries).
async fn sim(processing_ms: u64, files_extra: &str) -> SimServer {
    simulator(&format!(
        "seed: 3\nfiles: {{ processing_ms: {processing_ms}{files_extra} }}\nprojects:\n  - name: proj-a\n    keys: [test-key-a1, test-key-a2]\n  - name: proj-b\n    keys: [test-key-b1]\n"
    ))
    .await
}

/// A config for both projects whose items upload every file, then `media`
/// (YAML flow entries of the `media:` section) and `extra` YAML.
fn media_config(sim: &SimServer, media: &str, extra: &str) -> String {
    two_accounts(
        &sim.base_url(),
        &format!("media: {{ inline_max_bytes: 0, poll: 10ms{media} }}\n{extra}"),
    )
}

/// Writes `n` distinct small MP4 files `clip{i}.mp4`; returns their bytes.
fn clips(work: &Workdir, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let bytes = mp4(5 + i as u32, i as u8);
            std::fs::write(work.path(&format!("clip{i}.mp4")), &bytes).unwrap();
            bytes
        })
        .collect()
}

/// A job of `n` items, item `i` naming `clip{i % files}.mp4`.
fn video_job(n: usize, files: usize) -> String {
    jsonl_job_with(
        n,
        |i| serde_json::json!({ "video": format!("clip{}.mp4", i % files) }),
    )
}

/// Asserts every item of a [`video_job`] is in the results once, `ok`, with
/// its prompt's digest and its own file's bytes.
fn assert_items_saw_their_files(work: &Workdir, results: &str, clips: &[Vec<u8>], n: usize) {
    let path = work.path(results);
    assert_each_item_once_with_its_reply(&path, n);
    for row in crate::support::results(&path) {
        let i: usize = row["id"].as_str().unwrap()[5..].parse().unwrap();
        let output = row["output"].as_str().unwrap();
        let clip = &clips[i % clips.len()];
        assert!(
            output.contains(&format!("media:{} ", media_digest(clip))),
            "item-{i} did not get its file: {output}"
        );
    }
}

/// Uploads the simulator holds, per (content SHA-256, project), deleted
/// ones included.
async fn uploads_by_file(sim: &SimServer) -> HashMap<(String, String), u32> {
    let mut counts = HashMap::new();
    for upload in stats(sim).await.uploads {
        *counts.entry((upload.sha256, upload.project)).or_default() += 1;
    }
    counts
}

/// The uploads the state file remembers, as (content SHA-256, account):
/// read without writing, as a run may be writing it.
fn recorded_uploads(state: &std::path::Path) -> rusqlite::Result<Vec<(String, String)>> {
    let db =
        rusqlite::Connection::open_with_flags(state, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut query = db.prepare("SELECT sha256, account FROM uploads")?;
    let rows = query.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
    rows.collect()
}

/// The report JSON a run wrote next to `job`.
fn report(work: &Workdir, job: &str) -> serde_json::Value {
    let name = job.replace(".jsonl", ".report.json");
    serde_json::from_str(&work.read(&name)).unwrap()
}

/// The report's upload counter `field`, summed over accounts.
fn uploads_total(report: &serde_json::Value, field: &str) -> u64 {
    report["uploads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u[field].as_u64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_run_reuses_kept_uploads_and_deletes_them_after_it() {
    let sim = sim(20, "").await;
    let work = Workdir::new();
    let clips = clips(&work, 3);
    work.write("job.jsonl", &video_job(9, 3));
    work.write("keep.yaml", &media_config(&sim, ", keep_uploads: true", ""));
    let out = work
        .keyfan(
            &run_job("job.jsonl", "keep.yaml", &["--state", "state.db"]),
            &[],
        )
        .await;
    assert!(out.status.success(), "{}", explain(&out));
    assert_items_saw_their_files(&work, "job.results.jsonl", &clips, 9);
    let first = stats(&sim).await.uploads;
    assert!(first.len() >= 3, "each file uploaded: {first:?}");
    assert!(first.iter().all(|u| !u.deleted), "kept: {first:?}");
    let report1 = report(&work, "job.jsonl");
    assert_eq!(uploads_total(&report1, "uploads"), first.len() as u64);
    assert_eq!(
        uploads_total(&report1, "bytes"),
        first.iter().map(|u| u.bytes).sum::<u64>()
    );
    assert!(work.read("job.report.md").contains("## Uploads"));
    assert!(work.read("job.report.html").contains("<h2>Uploads</h2>"));

    // The next morning's job names the same files: nothing is uploaded,
    // and after the run its uploads are deleted.
    work.write(
        "next.jsonl",
        &video_job(6, 3).replace("item-", "next-item-"),
    );
    work.write("delete.yaml", &media_config(&sim, "", ""));
    let out = work
        .keyfan(
            &run_job("next.jsonl", "delete.yaml", &["--state", "state.db"]),
            &[],
        )
        .await;
    assert!(out.status.success(), "{}", explain(&out));
    let rows = results(&work.path("next.results.jsonl"));
    assert_eq!(rows.len(), 6);
    assert!(rows.iter().all(|r| r["status"] == "ok"), "{rows:?}");
    let second = stats(&sim).await.uploads;
    assert_eq!(second.len(), first.len(), "the second run uploads 0");
    let report2 = report(&work, "next.jsonl");
    assert_eq!(uploads_total(&report2, "uploads"), 0);
    let reused = uploads_total(&report2, "reused");
    assert!((3..=first.len() as u64).contains(&reused), "{report2}");
    assert_eq!(uploads_total(&report2, "deleted"), reused);
    assert_eq!(
        second.iter().filter(|u| u.deleted).count() as u64,
        reused,
        "every upload it used is deleted: {second:?}"
    );
    // Forgotten in the state file too.
    let live = recorded_uploads(&work.path("state.db")).unwrap();
    assert_eq!(live.len() as u64, first.len() as u64 - reused, "{live:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_expired_is_uploaded_again_once() {
    let sim = sim(10, ", expiry_ms: 1500").await;
    let work = Workdir::new();
    let clips = clips(&work, 1);
    work.write("job.jsonl", &video_job(2, 1));
    // One account, so the second run has the upload to reuse under it.
    work.write(
        "config.yaml",
        &config(
            &sim.base_url(),
            &[("proj-a", &["test-key-a1"])],
            "media: { inline_max_bytes: 0, poll: 10ms, keep_uploads: true }\n",
        ),
    );
    let out = work.keyfan(&run_args("state.db", &[]), &[]).await;
    assert!(out.status.success(), "{}", explain(&out));
    let name = stats(&sim).await.uploads[0].file.clone();
    // The simulator forgets it; the state file still holds it.
    let url = format!("{}/v1beta/{name}", sim.base_url());
    wait_until("the upload expires", Duration::from_secs(10), async || {
        let answer = reqwest::Client::new()
            .get(&url)
            .header("x-goog-api-key", "test-key-a1")
            .send()
            .await
            .unwrap();
        answer.status() == 403
    })
    .await;

    work.write("job2.jsonl", &video_job(4, 1));
    let out = work
        .keyfan(
            &run_job("job2.jsonl", "config.yaml", &["--state", "state.db"]),
            &[],
        )
        .await;
    assert!(out.status.success(), "{}", explain(&out));
    assert_items_saw_their_files(&work, "job2.results.jsonl", &clips, 4);
    assert_eq!(stats(&sim).await.uploads.len(), 2, "uploaded again once");
    let report = report(&work, "job2.jsonl");
    assert_eq!(uploads_total(&report, "reuploads"), 1, "{report}");
    assert_eq!(uploads_total(&report, "uploads"), 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_fails_processing_fails_its_items_once() {
    let sim = sim(10, "").await;
    let work = Workdir::new();
    let clips = clips(&work, 1);
    std::fs::write(work.path("bad [[sim:file_failed]].mp4"), mp4(4, 40)).unwrap();
    let job = jsonl_job_with(6, |i| {
        let video = match i % 2 {
            0 => "clip0.mp4",
            _ => "bad [[sim:file_failed]].mp4",
        };
        serde_json::json!({ "video": video })
    });
    work.write("job.jsonl", &job);
    // One account: its three items wait for the one upload.
    work.write(
        "config.yaml",
        &config(
            &sim.base_url(),
            &[("proj-a", &["test-key-a1", "test-key-a2"])],
            "media: { inline_max_bytes: 0, poll: 10ms }\n",
        ),
    );
    let out = work.keyfan(&run_args("state.db", &[]), &[]).await;
    assert!(!out.status.success(), "{}", explain(&out));
    let rows = results(&work.path("job.results.jsonl"));
    assert_eq!(rows.len(), 6);
    for row in &rows {
        let i: usize = row["id"].as_str().unwrap()[5..].parse().unwrap();
        if i.is_multiple_of(2) {
            assert_eq!(row["status"], "ok", "{row}");
            let output = row["output"].as_str().unwrap();
            assert!(output.contains(&media_digest(&clips[0])), "{output}");
        } else {
            assert_eq!(row["status"], "failed", "{row}");
            let error = row["error"].as_str().unwrap();
            assert!(
                error.contains("The simulator was asked to fail this file"),
                "{error}"
            );
        }
    }
    // Uploaded once, never sent with a request.
    let bad = uploads_by_file(&sim)
        .await
        .into_iter()
        .filter(|((sha, _), _)| *sha == hex::encode(Sha256::digest(mp4(4, 40))))
        .map(|(_, n)| n)
        .collect::<Vec<_>>();
    assert_eq!(bad, [1], "one upload of the failed file");
    assert_eq!(
        stats(&sim).await.requests,
        3,
        "only the good items were sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_project_storage_fails_the_upload_with_the_apis_reason() {
    // Room for one small file.
    let sim = sim(10, ", storage_bytes: 3000").await;
    let work = Workdir::new();
    clips(&work, 2);
    work.write("job.jsonl", &video_job(2, 2));
    work.write(
        "config.yaml",
        &config(
            &sim.base_url(),
            &[("proj-a", &["test-key-a1"])],
            "media: { inline_max_bytes: 0, poll: 10ms }\nconcurrency: 1\n",
        )
        .replace("concurrency: 8\n", ""),
    );
    let out = work.keyfan(&run_args("state.db", &[]), &[]).await;
    assert!(!out.status.success(), "{}", explain(&out));
    let rows = results(&work.path("job.results.jsonl"));
    let statuses: Vec<_> = rows.iter().map(|r| r["status"].clone()).collect();
    assert_eq!(statuses, ["ok", "failed"], "{rows:?}");
    let error = rows[1]["error"].as_str().unwrap();
    assert!(
        error.contains("Files API storage is full")
            && error.contains("file_storage_bytes, limit: 3000"),
        "{error}"
    );
}

/// A run of 8 items over one file whose first upload goes to `proj-a`
/// (round robin, one item at a time), whose day allows 3 requests; returns
/// the run's output.
async fn quota_spent_mid_run(
    sim: &SimServer,
    work: &Workdir,
    policy: &str,
) -> std::process::Output {
    work.write("job.jsonl", &video_job(8, 1));
    let config = media_config(
        sim,
        &format!(", on_unavailable: {policy}"),
        "strategy: round_robin\nconcurrency: 1\n",
    )
    .replace("concurrency: 8\n", "")
    .replace(
        "  - name: proj-a\n    keys:\n",
        "  - name: proj-a\n    limits: { gemini-2.5-flash: { rpd: 3 } }\n    keys:\n",
    );
    work.write("config.yaml", &config);
    work.keyfan(&run_args("state.db", &[]), &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_reupload_a_projects_spent_day_moves_its_items_to_another_project() {
    let sim = sim(10, "").await;
    let work = Workdir::new();
    let clips = clips(&work, 1);
    let out = quota_spent_mid_run(&sim, &work, "reupload").await;
    assert!(out.status.success(), "{}", explain(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("account proj-a cannot serve")
            && stderr.contains("media.on_unavailable: reupload"),
        "{stderr}"
    );
    assert_items_saw_their_files(&work, "job.results.jsonl", &clips, 8);
    let uploads = uploads_by_file(&sim).await;
    let projects: Vec<_> = {
        let mut p: Vec<_> = uploads.keys().map(|(_, p)| p.clone()).collect();
        p.sort();
        p
    };
    assert_eq!(
        projects,
        ["proj-a", "proj-b"],
        "uploaded again under proj-b"
    );
    assert!(uploads.values().all(|&n| n == 1), "{uploads:?}");
    let per_project = stats(&sim).await.projects;
    assert_eq!(per_project["proj-a"].requests, 3);
    assert_eq!(per_project["proj-b"].requests, 5);
    let report = report(&work, "job.jsonl");
    let a = &report["uploads"][0];
    assert_eq!(
        (a["account"].as_str(), a["repins"].as_u64()),
        (Some("proj-a"), Some(1))
    );
    assert!(work
        .read("job.report.md")
        .contains("media.on_unavailable: reupload: proj-a could not serve"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_wait_a_projects_spent_day_defers_its_items_and_keeps_the_upload() {
    let sim = sim(10, "").await;
    let work = Workdir::new();
    clips(&work, 1);
    let out = quota_spent_mid_run(&sim, &work, "wait").await;
    assert_eq!(out.status.code(), Some(4), "deferred: {}", explain(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("account proj-a cannot serve")
            && stderr.contains("media.on_unavailable: wait"),
        "{stderr}"
    );
    let rows = results(&work.path("job.results.jsonl"));
    let count = |s: &str| rows.iter().filter(|r| r["status"] == s).count();
    assert_eq!((count("ok"), count("deferred")), (3, 5), "{rows:?}");
    let uploads = stats(&sim).await.uploads;
    assert_eq!(uploads.len(), 1, "nothing uploaded elsewhere: {uploads:?}");
    assert!(!uploads[0].deleted, "kept for the items that wait");
    assert_eq!(stats(&sim).await.projects["proj-b"].requests, 0);
    let report = report(&work, "job.jsonl");
    assert_eq!(report["uploads"][0]["waits"], 5, "{report}");
    assert!(work
        .read("job.report.md")
        .contains("media.on_unavailable: wait: 5 item(s) wait for proj-a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_uploads_a_rerun_uploads_nothing_twice_and_ends_every_item_once() {
    // Slow processing: the run is still uploading when it is killed.
    let sim = sim(300, "").await;
    let work = Workdir::new();
    let clips = clips(&work, 6);
    work.write("job.jsonl", &video_job(18, 6));
    work.write(
        "config.yaml",
        &media_config(&sim, ", upload_concurrency: 2", ""),
    );
    let state = work.path("state.db");
    let args = run_args("state.db", &["-q"]);
    let mut child = work.spawn(&args);
    wait_until(
        "an upload is in the state file",
        Duration::from_secs(20),
        async || recorded_uploads(&state).is_ok_and(|live| !live.is_empty()),
    )
    .await;
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    let done_before = std::fs::read_to_string(work.path("job.results.jsonl"))
        .unwrap_or_default()
        .lines()
        .count();
    assert!(done_before < 18, "the kill landed mid-run");
    let recorded = recorded_uploads(&state).unwrap();

    let out = work.keyfan(&args, &[]).await;
    assert!(out.status.success(), "{}", explain(&out));
    assert_items_saw_their_files(&work, "job.results.jsonl", &clips, 18);
    let uploads = uploads_by_file(&sim).await;
    for key in &recorded {
        assert_eq!(
            uploads.get(key),
            Some(&1),
            "{key:?} uploaded twice: {uploads:?}"
        );
    }
}

/// The most uploads the simulator saw in progress at once, for 6 items over
/// 6 distinct files under `media.upload_concurrency: limit`, each chunk
/// answered after 200 ms.
async fn uploads_at_once(limit: usize) -> u64 {
    let sim = sim(0, ", chunk_ms: 200").await;
    let work = Workdir::new();
    let clips = clips(&work, 6);
    work.write("job.jsonl", &video_job(6, 6));
    work.write(
        "config.yaml",
        &media_config(&sim, &format!(", upload_concurrency: {limit}"), ""),
    );
    let out = work.keyfan(&run_args("state.db", &["-q"]), &[]).await;
    assert!(out.status.success(), "{}", explain(&out));
    assert_items_saw_their_files(&work, "job.results.jsonl", &clips, 6);
    stats(&sim).await.uploads_in_progress_max
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_concurrency_bounds_the_uploads_in_progress() {
    assert_eq!(uploads_at_once(2).await, 2);
    // Without the bound's effect the six uploads overlap: the check can fail.
    assert!(uploads_at_once(6).await > 2);
}
