//! Issue 12's benchmark: `keyfan run --batch` collecting one batch of
//! 1,000,000 results, measuring keyfan's peak RSS (goal < 150 MB: the
//! results file is streamed to disk and read line by line, never held
//! whole) and the lines collected per second.
//!
//! The Batch API is a minimal stand-in served from this process (the
//! simulator renders its answers in memory, which would measure it, not
//! keyfan): it takes the upload and the create, says the batch succeeded,
//! and streams a results file written beforehand from disk, one recorded
//! line shape (`{"response": GenerateContentResponse, "key"}`) per item, in
//! reverse order.
//!
//! `cargo bench --bench batch_collect` (`KEYFAN_BENCH_ITEMS` for another
//! size). Without `--bench` (`cargo test --benches`) it runs a 2,000-item
//! smoke version that checks correctness.

mod common;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::io::AsyncReadExt;

const GOAL_RSS_MB: f64 = 150.0;

/// What the stand-in remembers: the batch's display name, and the results
/// file it serves.
struct Fake {
    display_name: Mutex<String>,
    results: PathBuf,
}

/// `run --batch` with every item in one batch, no model-list check.
const BATCH: [&str; 4] = ["--batch", "--batch-size", "100000000", "--offline"];

fn main() {
    let items = common::items(1_000_000, 2_000);
    let runtime = common::runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    common::write_job(&dir.path().join("job.jsonl"), items);
    let results = dir.path().join("served-results.jsonl");
    write_results(&results, items);
    let fake = Arc::new(Fake {
        display_name: Mutex::default(),
        results,
    });
    let base_url = runtime.block_on(serve(Arc::clone(&fake)));
    std::fs::write(
        dir.path().join("config.yaml"),
        format!(
            "providers:\n  gemini: {{ base_url: \"{base_url}\" }}\naccounts:\n  - name: p\n    keys: [bench-k1]\n"
        ),
    )
    .expect("config");

    // 1. Submit: one batch of every item.
    let status = common::spawn_run(dir.path(), "state.db", &BATCH)
        .wait()
        .expect("the submitting run");
    assert_eq!(status.code(), Some(10), "the first run submits: {status}");

    // 2. Collect it, sampling keyfan's peak RSS.
    let started = Instant::now();
    let mut child = common::spawn_run(dir.path(), "state.db", &BATCH);
    let peak_kb = common::watch_peak_rss(&mut child);
    let wall = started.elapsed().as_secs_f64();
    let rss_mb = peak_kb as f64 / 1024.0;
    let out = std::fs::read_to_string(dir.path().join("job.results.jsonl")).expect("results");
    let mut lines = 0u64;
    for (i, line) in out.lines().enumerate() {
        lines += 1;
        // The results follow the served (reversed) order; each is its own.
        let id = items - 1 - i as u64;
        assert!(
            line.contains(&format!("\"id\":\"item-{id}\""))
                && line.contains(&format!("answer to item-{id}.")),
            "line {i} is not item-{id}'s result: {line}"
        );
    }
    assert_eq!(lines, items, "every item collected exactly once");

    println!("batch_collect benchmark: one batch of {items} results, collected by keyfan");
    println!("| measure | value | goal | ratio |\n|---|---:|---:|---:|");
    println!(
        "| peak RSS while collecting | {rss_mb:.0} MB | < {GOAL_RSS_MB:.0} MB | {:.2} |",
        GOAL_RSS_MB / rss_mb
    );
    println!(
        "| results collected per second | {:.0} | - | - |",
        items as f64 / wall
    );
    if common::bench_mode() {
        println!("(ratio ≥ 1 meets the goal)");
    } else {
        println!("(smoke mode: correctness only; `cargo bench --bench batch_collect` measures)");
    }
}

/// The results file, last item first, in the shape of the recorded line
/// (google-gemini/cookbook `quickstarts/Batch_mode.ipynb`).
fn write_results(path: &Path, items: u64) {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("results file"));
    for i in (0..items).rev() {
        writeln!(
            out,
            "{{\"response\": {{\"responseId\": \"r{i}\", \"usageMetadata\": {{\"totalTokenCount\": 31, \
             \"promptTokenCount\": 16, \"candidatesTokenCount\": 15}}, \"candidates\": [{{\"content\": \
             {{\"role\": \"model\", \"parts\": [{{\"text\": \"The answer to item-{i}.\"}}]}}, \
             \"finishReason\": \"STOP\", \"index\": 0}}], \"modelVersion\": \"gemini-2.5-flash\"}}, \
             \"key\": \"item-{i}\"}}"
        )
        .expect("write results");
    }
    out.flush().expect("flush results");
}

/// Starts the stand-in on a loopback port; returns its base URL.
async fn serve(fake: Arc<Fake>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let base = format!("http://{}", listener.local_addr().expect("an address"));
    let app = Router::new()
        .route("/upload/v1beta/files", post(upload))
        .route("/v1beta/models/{target}", post(create))
        .route("/v1beta/batches/{id}", get(batch))
        .route("/download/v1beta/files/{target}", get(download))
        .layer(DefaultBodyLimit::disable())
        .with_state((fake, base.clone()));
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

type Shared = State<(Arc<Fake>, String)>;

/// The resumable upload: the start gives the URL, the last chunk the file.
/// Each chunk is read whole (and dropped): an unread body breaks the
/// connection under the sender.
async fn upload(
    State((_, base)): Shared,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    _chunk: Bytes,
) -> Response {
    let mut response = StatusCode::OK.into_response();
    let set = |response: &mut Response, name: &'static str, value: &str| {
        let value = HeaderValue::from_str(value).expect("a header value");
        response.headers_mut().insert(name, value);
    };
    if !query.contains_key("upload_id") {
        set(&mut response, "x-goog-upload-status", "active");
        set(
            &mut response,
            "x-goog-upload-url",
            &format!("{base}/upload/v1beta/files?upload_id=1"),
        );
        return response;
    }
    let command = headers
        .get("x-goog-upload-command")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !command.contains("finalize") {
        set(&mut response, "x-goog-upload-status", "active");
        return response;
    }
    let mut response = axum::Json(serde_json::json!({"file": {
        "name": "files/input1", "uri": format!("{base}/v1beta/files/input1"),
        "mimeType": "application/jsonl", "state": "ACTIVE"
    }}))
    .into_response();
    set(&mut response, "x-goog-upload-status", "final");
    response
}

fn operation(fake: &Fake, state: &str) -> serde_json::Value {
    let name = fake.display_name.lock().expect("lock").clone();
    let mut op = serde_json::json!({"name": "batches/bench1", "metadata": {
        "displayName": name, "state": state, "batchStats": {}
    }});
    if state == "BATCH_STATE_SUCCEEDED" {
        op["done"] = true.into();
        op["response"] = serde_json::json!({"responsesFile": "files/batch-bench1"});
    }
    op
}

async fn create(State((fake, _)): Shared, body: Bytes) -> Response {
    let body: serde_json::Value = serde_json::from_slice(&body).expect("a create body");
    let name = body["batch"]["display_name"].as_str().unwrap_or_default();
    *fake.display_name.lock().expect("lock") = name.to_owned();
    axum::Json(operation(&fake, "BATCH_STATE_PENDING")).into_response()
}

async fn batch(State((fake, _)): Shared, UrlPath(_): UrlPath<String>) -> Response {
    axum::Json(operation(&fake, "BATCH_STATE_SUCCEEDED")).into_response()
}

/// The results file, streamed from disk in 1 MiB chunks.
async fn download(State((fake, _)): Shared, UrlPath(_): UrlPath<String>) -> Response {
    let file = tokio::fs::File::open(&fake.results)
        .await
        .expect("the results file");
    let chunks = futures_util::stream::unfold(file, |mut file| async move {
        let mut buf = vec![0; 1 << 20];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(buf)), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    });
    Response::new(Body::from_stream(chunks))
}
