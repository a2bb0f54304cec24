//! Gemini's Batch API (see the parent module for the endpoints and
//! sources). Recorded facts it relies on: `done` is absent (not `false`)
//! until the end; `batchStats` counters are int64 strings and omitted when
//! zero; states are `BATCH_STATE_*` on the wire and `JOB_STATE_*` in the
//! SDKs and the guide (both accepted); the API can report `SUCCEEDED`
//! before `responsesFile` is set (polled again until it is); results lines
//! are `{"response", "key"}` or `{"error", "key"}` and are matched by key.

use super::super::batchline::{GeminiBatchInputLine, GeminiBatchOutputLine};
use super::super::common::api_error;
use super::super::files::UPLOAD_CHUNK_BYTES;
use super::super::gemini::{
    classify, classify_answer, method_url, parse_generate, percent_encode, raw_body, GenerateBody,
};
use super::super::transport::{self, get_to_file, post_json};
use super::super::{ApiError, Client, ErrorClass, RawRequest, Request, Upload};
use super::{checked, undecodable, BatchInput, BatchJob, BatchOutcome, BatchResult, BatchState};
use crate::types::ApiKey;
use serde::Deserialize;
use serde_json::{json, Map, Value};

const AUTH: &str = "x-goog-api-key";

impl GeminiBatchInputLine {
    /// The line for `req`, keyed `key`: the online request body with its
    /// field names in snake_case (a response schema's own names kept): "the
    /// batch JSONL file parser requires protobuf field names"
    /// (tidyverse/ellmer `R/provider-google.R`; the guide's sample writes
    /// `generation_config`).
    pub fn new(key: &str, req: &Request<'_>) -> GeminiBatchInputLine {
        let body = serde_json::to_value(GenerateBody::new(req)).unwrap_or(Value::Null);
        let request = match snake_keys(body) {
            Value::Object(request) => request,
            _ => Map::new(),
        };
        GeminiBatchInputLine {
            key: key.to_owned(),
            request,
        }
    }

    /// The line for a `GenerateContentRequest` written elsewhere, keyed
    /// `key`: the body that would be sent online ([`RawRequest`]: as
    /// written, without a `model`; the batch names it), its casing kept.
    pub fn raw(key: &str, req: &RawRequest<'_>) -> GeminiBatchInputLine {
        GeminiBatchInputLine {
            key: key.to_owned(),
            request: raw_body(req),
        }
    }
}

/// Field names in snake_case, recursively, except inside a response
/// schema, whose property names are the user's.
fn snake_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(key, value)| {
                    let key = snake(&key);
                    let value = match key.as_str() {
                        "response_json_schema" | "response_schema" => value,
                        _ => snake_keys(value),
                    };
                    (key, value)
                })
                .collect::<Map<String, Value>>(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(snake_keys).collect()),
        other => other,
    }
}

fn snake(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// An Operation, only what keyfan reads.
#[derive(Debug, Deserialize)]
struct Operation {
    name: String,
    #[serde(default)]
    metadata: Metadata,
    #[serde(default)]
    error: Option<Status>,
    #[serde(default)]
    response: Option<Output>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Metadata {
    #[serde(default)]
    display_name: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    batch_stats: Stats,
    #[serde(default)]
    output: Option<Output>,
}

/// `batchStats`: int64 as strings, zero ones omitted.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Stats {
    #[serde(default)]
    request_count: Option<String>,
    #[serde(default)]
    successful_request_count: Option<String>,
    #[serde(default)]
    failed_request_count: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Output {
    #[serde(default)]
    responses_file: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Status {
    #[serde(default)]
    message: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Page {
    #[serde(default)]
    operations: Vec<Value>,
    #[serde(default)]
    next_page_token: Option<String>,
}

fn count(text: &Option<String>) -> u64 {
    text.as_deref().and_then(|t| t.parse().ok()).unwrap_or(0)
}

/// The batch an Operation describes.
fn job(body: &[u8]) -> Result<BatchJob, ApiError> {
    let op: Operation = serde_json::from_slice(body).map_err(|e| undecodable("batch", &e))?;
    Ok(describe(op))
}

fn describe(op: Operation) -> BatchJob {
    let meta = op.metadata;
    let file = op
        .response
        .and_then(|r| r.responses_file)
        .or_else(|| meta.output.and_then(|o| o.responses_file));
    let state = match meta
        .state
        .trim_start_matches("BATCH_STATE_")
        .trim_start_matches("JOB_STATE_")
    {
        // Reported before its file at times: polled again until it is there.
        "SUCCEEDED" if file.is_none() => BatchState::Running,
        "SUCCEEDED" => BatchState::Succeeded,
        "FAILED" => BatchState::Failed,
        "CANCELLED" => BatchState::Cancelled,
        "EXPIRED" => BatchState::Expired,
        "RUNNING" => BatchState::Running,
        _ => BatchState::Pending,
    };
    BatchJob {
        name: op.name,
        display_name: meta.display_name,
        state,
        total: count(&meta.batch_stats.request_count),
        succeeded: count(&meta.batch_stats.successful_request_count),
        failed: count(&meta.batch_stats.failed_request_count),
        results: file.into_iter().collect(),
        error: op.error.map(|e| e.message),
    }
}

/// Checks that `name` is a batch's name (`batches/ID`) before it goes into
/// a URL.
fn batch_path(name: &str) -> Result<&str, ApiError> {
    let id = name.strip_prefix("batches/").unwrap_or_default();
    checked(id, "a Gemini batch id (batches/ID)")?;
    Ok(name)
}

pub(super) async fn create(
    client: &Client,
    key: &ApiKey,
    input: BatchInput<'_>,
) -> Result<BatchJob, ApiError> {
    let file = client
        .upload(
            key,
            Upload {
                path: input.path,
                mime: "application/jsonl",
                size: input.size,
                display_name: input.display_name,
                chunk_bytes: UPLOAD_CHUNK_BYTES,
            },
        )
        .await?;
    let body = json!({"batch": {
        "display_name": input.display_name,
        "input_config": {"file_name": file.name},
    }});
    let url = method_url(&client.base_url, input.model, "batchGenerateContent");
    let answer = post_json(client, &url, AUTH, key.expose(), &body, classify_answer).await?;
    job(&answer)
}

pub(super) async fn get(client: &Client, key: &ApiKey, name: &str) -> Result<BatchJob, ApiError> {
    let url = format!("{}/v1beta/{}", client.base_url, batch_path(name)?);
    let body = transport::get(client, &url, AUTH, key.expose(), classify_answer).await?;
    job(&body)
}

pub(super) async fn cancel(client: &Client, key: &ApiKey, name: &str) -> Result<(), ApiError> {
    let url = format!("{}/v1beta/{}:cancel", client.base_url, batch_path(name)?);
    post_json(
        client,
        &url,
        AUTH,
        key.expose(),
        &json!({}),
        classify_answer,
    )
    .await?;
    Ok(())
}

pub(super) async fn list(client: &Client, key: &ApiKey) -> Result<Vec<BatchJob>, ApiError> {
    let mut jobs = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut url = format!("{}/v1beta/batches?pageSize=100", client.base_url);
        if let Some(token) = &token {
            url.push_str(&format!("&pageToken={}", percent_encode(token)));
        }
        let body = transport::get(client, &url, AUTH, key.expose(), classify_answer).await?;
        let page: Page =
            serde_json::from_slice(&body).map_err(|e| undecodable("batch list", &e))?;
        for op in page.operations {
            let op: Operation =
                serde_json::from_value(op).map_err(|e| undecodable("batch list", &e))?;
            jobs.push(describe(op));
        }
        match page.next_page_token.filter(|t| !t.is_empty()) {
            Some(next) => token = Some(next),
            None => return Ok(jobs),
        }
    }
}

pub(super) async fn download(
    client: &Client,
    key: &ApiKey,
    file: &str,
    out: &mut tokio::fs::File,
) -> Result<u64, ApiError> {
    let id = file.strip_prefix("files/").unwrap_or_default();
    checked(id, "a results file id (files/ID)")?;
    let url = format!(
        "{}/download/v1beta/{file}:download?alt=media",
        client.base_url
    );
    get_to_file(client, &url, (AUTH, key.expose()), out, classify_answer).await
}

pub(super) fn parse_line(line: &[u8]) -> Result<BatchResult, ApiError> {
    let line: GeminiBatchOutputLine =
        serde_json::from_slice(line).map_err(|e| undecodable("results line", &e))?;
    let outcome = match (line.response, line.error) {
        (Some(response), _) => {
            let body = serde_json::to_vec(&response).unwrap_or_default();
            match parse_generate(&body) {
                Ok(reply) => BatchOutcome::Reply(reply),
                Err(e) => BatchOutcome::Failed(e),
            }
        }
        (None, Some(error)) => {
            let status = u16::try_from(error.code)
                .ok()
                .filter(|c| (400..600).contains(c))
                .unwrap_or(400);
            let body = serde_json::to_vec(&json!({ "error": error })).unwrap_or_default();
            BatchOutcome::Failed(classify(status, &body))
        }
        (None, None) => BatchOutcome::Failed(api_error(
            ErrorClass::ItemInvalid,
            None,
            "the results line has neither a response nor an error",
        )),
    };
    Ok(BatchResult {
        key: line.key,
        outcome,
    })
}
