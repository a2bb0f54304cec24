//! Media estimates (video durations from MP4 headers, the clip, fps and
//! resolution), the quota gate counting them, and the media settings
//! reaching the simulator.

use crate::support::*;

/// The config of one Gemini account at `base_url` with `limits` YAML for
/// gemini-2.5-flash.
fn limited(base_url: &str, limits: &str) -> String {
    format!(
        "providers: {{ gemini: {{ base_url: {base_url} }} }}\nmodel: gemini-2.5-flash\n\
         accounts:\n  - name: proj-a\n    keys: [test-key-a1]\n    limits: {{ gemini-2.5-flash: {limits} }}\n"
    )
}

/// Writes the test videos: `ten.mp4` (10 s, `mvhd` version 0 at timescale
/// 1000), `long.mp4` (90.5 s, version 1 at timescale 90,000) and
/// `clip.webm` (250,000 bytes, no header keyfan reads).
fn videos(work: &Workdir) {
    std::fs::write(work.path("ten.mp4"), mp4(10, 1)).unwrap();
    let long = mp4_with(1, 90_000, 90_000 * 905 / 10, 4096, 2);
    std::fs::write(work.path("long.mp4"), long).unwrap();
    let mut webm = vec![0x1A, 0x45, 0xDF, 0xA3];
    webm.resize(250_000, 0);
    std::fs::write(work.path("clip.webm"), webm).unwrap();
}

#[tokio::test]
async fn the_estimate_of_videos_equals_the_hand_computed_tokens() {
    let work = Workdir::new();
    videos(&work);
    // One model per item, so each model's figures are one item's.
    work.write(
        "job.jsonl",
        r#"{"id":"a","prompt":"Describe.","video":"ten.mp4"}
{"id":"b","prompt":"Describe.","video":"long.mp4","model":"gemini-2.5-flash-lite","media_resolution":"low"}
{"id":"c","prompt":"Describe.","video":"ten.mp4","model":"gemini-2.0-flash","start_offset":"2s","end_offset":"1m","fps":0.5}
{"id":"d","prompt":"Describe.","video":"clip.webm","model":"gemini-2.5-pro"}
{"id":"e","prompt":"Describe.","video":"long.mp4","model":"gemini-3.1-pro-preview","media_resolution":"high","start_offset":80.5}
"#,
    );
    work.write(
        "config.yaml",
        &limited("http://127.0.0.1:9", "{ rpm: 60, rpd: 100 }"),
    );
    let args = ["estimate", "job.jsonl", "--config", "config.yaml"];
    let out = work.keyfan(&[&args[..], &["--json"]].concat(), &[]).await;
    assert!(out.status.success(), "{}", explain(&out));
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    // "Describe." is 9 ASCII characters: ⌈9 / 4⌉ = 3 tokens.
    let text = 3;
    let expected = [
        // 10 s at 1 fps, 258 per frame, 32 per second of sound.
        ("gemini-2.5-flash", 10 * 258 + 10 * 32 + text),
        // 90.5 s at low resolution: ⌈90.5⌉ = 91 frames × 66, ⌈90.5 × 32⌉ = 2,896.
        ("gemini-2.5-flash-lite", 91 * 66 + 2896 + text),
        // 2 s to 60 s of a 10 s video is 8 s; at 0.5 fps ⌈4⌉ frames × 258, 8 × 32.
        ("gemini-2.0-flash", 4 * 258 + 8 * 32 + text),
        // 250,000 bytes at 1 Mbit/s are 2 s: 2 × 258 + 2 × 32.
        ("gemini-2.5-pro", 2 * 258 + 2 * 32 + text),
        // Gemini 3 at high resolution, 80.5 s to 90.5 s: 10 × 280 + 10 × 32.
        ("gemini-3.1-pro-preview", 10 * 280 + 10 * 32 + text),
    ];
    for (i, (model, tokens)) in expected.iter().enumerate() {
        assert_eq!(e["models"][i]["model"], *model);
        assert_eq!(e["models"][i]["input_tokens"], *tokens, "{model}");
    }
    assert_eq!(e["media_items"], 5);
    assert_eq!(
        e["notes"],
        serde_json::json!([
            "line 4: `clip.webm`: duration unknown, estimated from size (1000 kbit/s assumed)"
        ])
    );
    let table = work.keyfan(&args, &[]).await;
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("Media tokens (5 item(s)): video: seconds (from the MP4/MOV header"),
        "{text}"
    );
    assert!(
        text.contains("line 4: `clip.webm`: duration unknown, estimated from size"),
        "{text}"
    );
}

#[tokio::test]
async fn the_run_s_quota_gate_counts_the_video() {
    let (sim, work) = scenario(&two_projects(0, 0), 0, |url| {
        limited(url, "{ rpm: 60, tpm: 2000, rpd: 100 }")
    })
    .await;
    videos(&work);
    // The video's 2,903 tokens can never fit a TPM of 2,000; the text can.
    work.write(
        "job.jsonl",
        "{\"id\":\"v\",\"prompt\":\"Describe.\",\"video\":\"ten.mp4\"}\n{\"id\":\"t\",\"prompt\":\"Describe.\"}\n",
    );
    let out = work.keyfan(&run_args("state.db", &[]), &[]).await;
    let rows = results_by_id(&work.path("job.results.jsonl"));
    assert_eq!(rows["t"]["status"], "ok", "{}", explain(&out));
    let video = &rows["v"];
    assert_ne!(video["status"], "ok");
    assert!(
        video["error"]
            .as_str()
            .unwrap_or_default()
            .contains("2903 input tokens"),
        "{video}"
    );
    assert_eq!(
        stats(&sim).await.requests,
        1,
        "the video item was never sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clip_fps_and_resolution_reach_the_simulator() {
    let sim = simulator(
        "seed: 7\nfiles: { processing_ms: 10 }\nprojects:\n  - name: proj-a\n    keys: [test-key-a1]\n",
    )
    .await;
    let work = Workdir::new();
    // `big.mp4` is over the inline limit and goes through the Files API;
    // `small.mp4` goes inline.
    let big = mp4_with(0, 1000, 120_000, 6000, 3);
    let small = mp4(3, 4);
    std::fs::write(work.path("big.mp4"), &big).unwrap();
    std::fs::write(work.path("small.mp4"), &small).unwrap();
    work.write(
        "job.jsonl",
        r#"{"id":"clip","prompt":"What happens?","video":"big.mp4","start_offset":"2s","end_offset":"1m30s","fps":0.5,"media_resolution":"low"}
{"id":"plain","prompt":"What happens?","video":"big.mp4"}
{"id":"inline","prompt":"What happens?","video":"small.mp4","start_offset":1.5}
"#,
    );
    work.write(
        "config.yaml",
        &config(
            &sim.base_url(),
            &[("proj-a", &["test-key-a1"])],
            "media: { inline_max_bytes: 5000, poll: 10ms }\n",
        ),
    );
    let out = work.keyfan(&run_args("state.db", &[]), &[]).await;
    assert!(out.status.success(), "{}", explain(&out));
    let rows = results_by_id(&work.path("job.results.jsonl"));
    let said = |id: &str| output_of(&rows, id);
    let (big, small) = (media_digest(&big), media_digest(&small));
    assert!(
        said("clip").contains(&format!("media:{big}@2s~90s/0.5fps ")),
        "{}",
        said("clip")
    );
    assert!(
        said("plain").contains(&format!("media:{big} ")),
        "{}",
        said("plain")
    );
    assert!(
        said("inline").contains(&format!("media:{small}@1.5s~-/-fps ")),
        "{}",
        said("inline")
    );
    // At low resolution the simulator counts the part at 66 tokens, not 258.
    let input = |id: &str| rows[id]["input_tokens"].as_u64().unwrap();
    assert_eq!(input("plain") - input("clip"), 258 - 66);
    assert_eq!(stats(&sim).await.uploads.len(), 1, "big.mp4 uploaded once");
}

#[tokio::test]
async fn bad_media_settings_are_told_by_file_line_and_field() {
    let (sim, work) = scenario(&two_projects(0, 0), 0, one_account).await;
    work.write(
        "job.jsonl",
        "{\"id\":1,\"prompt\":\"p\",\"media_resolution\":\"ultra\"}\n\
         {\"id\":2,\"prompt\":\"p\",\"start_offset\":\"90s\",\"end_offset\":\"1m\"}\n",
    );
    work.write("job.csv", "id,prompt,fps\n1,p,25\n");
    let out = work.keyfan(&run_args("state.db", &[]), &[]).await;
    let stderr = assert_exit_saying(
        &out,
        2,
        "job.jsonl:1: field `media_resolution`: expected one of low, medium, high, found `ultra`",
    );
    assert!(
        stderr.contains(
            "job.jsonl:2: field `end_offset`: end_offset (60s) must be after start_offset (90s)"
        ),
        "{stderr}"
    );
    let out = work
        .keyfan(
            &run_job("job.csv", "config.yaml", &["--state", "s2.db"]),
            &[],
        )
        .await;
    assert_exit_saying(
        &out,
        2,
        "job.csv:2: field `fps`: must be above 0 and at most 24 frames per second, found 25",
    );
    assert_eq!(stats(&sim).await.requests, 0);
}
