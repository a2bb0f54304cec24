//! OpenAI's Batch API (see the parent module for the endpoints and source).
//! Recorded facts it relies on: a request succeeded when its
//! `response.status_code` is 200, not when `error` is null (an HTTP failure
//! has `error: null` and the error in `response.body`); requests that the
//! window closed on are `{"error": {"code": "batch_expired"}}` lines in the
//! error file; output order does not follow the input (matched by
//! `custom_id`); `error_file_id` may be null, missing or empty.

use super::super::batchline::{OpenAiBatchInputLine, OpenAiBatchOutputLine, OPENAI_CHAT_URL};
use super::super::common::api_error;
use super::super::openai::{api_url, classify, parse_chat, raw_body, ChatBody};
use super::super::transport::{self, get_to_file, post_bytes, post_json};
use super::super::{ApiError, Client, ErrorClass, RawRequest, Request};
use super::{
    checked, undecodable, BatchInput, BatchJob, BatchOutcome, BatchResult, BatchState, CursorPage,
};
use crate::types::ApiKey;
use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// The metadata key that holds the name keyfan gave a batch.
const NAME_KEY: &str = "keyfan_name";

impl OpenAiBatchInputLine {
    /// The line for `req`, keyed `key`: the online request body.
    pub fn new(key: &str, req: &Request<'_>) -> OpenAiBatchInputLine {
        let body = match serde_json::to_value(ChatBody::new(req)) {
            Ok(Value::Object(body)) => body,
            _ => Map::new(),
        };
        OpenAiBatchInputLine {
            custom_id: key.to_owned(),
            method: "POST".to_owned(),
            url: OPENAI_CHAT_URL.to_owned(),
            body,
        }
    }

    /// The line for a body written elsewhere, keyed `key`: the body that
    /// would be sent online ([`RawRequest`]: as written, the model the
    /// wire's).
    pub fn raw(key: &str, req: &RawRequest<'_>) -> OpenAiBatchInputLine {
        OpenAiBatchInputLine {
            custom_id: key.to_owned(),
            method: "POST".to_owned(),
            url: OPENAI_CHAT_URL.to_owned(),
            body: raw_body(req),
        }
    }
}

/// A Batch object, only what keyfan reads.
#[derive(Debug, Deserialize)]
struct Batch {
    id: String,
    status: String,
    #[serde(default)]
    output_file_id: Option<String>,
    #[serde(default)]
    error_file_id: Option<String>,
    #[serde(default)]
    request_counts: Option<Counts>,
    #[serde(default)]
    errors: Option<Errors>,
    #[serde(default)]
    metadata: Option<serde_json::Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
struct Counts {
    #[serde(default)]
    total: u64,
    #[serde(default)]
    completed: u64,
    #[serde(default)]
    failed: u64,
}

#[derive(Debug, Deserialize)]
struct Errors {
    #[serde(default)]
    data: Vec<BatchError>,
}

#[derive(Debug, Deserialize)]
struct BatchError {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: String,
    #[serde(default)]
    line: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct FileObject {
    id: String,
}

fn describe(batch: Batch) -> BatchJob {
    let state = match batch.status.as_str() {
        "validating" => BatchState::Pending,
        "completed" => BatchState::Succeeded,
        "failed" => BatchState::Failed,
        "expired" => BatchState::Expired,
        "cancelled" => BatchState::Cancelled,
        _ => BatchState::Running,
    };
    let counts = batch.request_counts.unwrap_or(Counts {
        total: 0,
        completed: 0,
        failed: 0,
    });
    let error = batch.errors.map(|errors| {
        errors
            .data
            .iter()
            .map(|e| {
                let line = e
                    .line
                    .map(|l| format!(" (input line {l})"))
                    .unwrap_or_default();
                let code = e.code.as_deref().unwrap_or("error");
                format!("{code}: {}{line}", e.message)
            })
            .collect::<Vec<_>>()
            .join("; ")
    });
    let display_name = batch
        .metadata
        .as_ref()
        .and_then(|m| m.get(NAME_KEY))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    BatchJob {
        name: batch.id,
        display_name,
        state,
        total: counts.total,
        succeeded: counts.completed,
        failed: counts.failed,
        results: [batch.output_file_id, batch.error_file_id]
            .into_iter()
            .flatten()
            .filter(|f| !f.is_empty())
            .collect(),
        error: error.filter(|e| !e.is_empty()),
    }
}

fn job(body: &[u8]) -> Result<BatchJob, ApiError> {
    let batch: Batch = serde_json::from_slice(body).map_err(|e| undecodable("batch", &e))?;
    Ok(describe(batch))
}

/// `id`, checked to be an OpenAI id (`batch_…`, `file-…`) of `what`.
fn id<'a>(id: &'a str, what: &str) -> Result<&'a str, ApiError> {
    checked(id, &format!("an OpenAI {what} id"))?;
    Ok(id)
}

fn bearer(key: &ApiKey) -> String {
    format!("Bearer {}", key.expose())
}

pub(super) async fn create(
    client: &Client,
    key: &ApiKey,
    input: BatchInput<'_>,
) -> Result<BatchJob, ApiError> {
    let bytes = tokio::fs::read(input.path).await.map_err(|e| {
        api_error(
            ErrorClass::ItemInvalid,
            None,
            format!("could not read {}: {e}", input.path.display()),
        )
    })?;
    let boundary = format!(
        "keyfan-{:016x}",
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
    );
    let mut form = Vec::with_capacity(bytes.len() + 512);
    form.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; \
             filename=\"{}.jsonl\"\r\nContent-Type: application/jsonl\r\n\r\n",
            input.display_name
        )
        .as_bytes(),
    );
    form.extend_from_slice(&bytes);
    drop(bytes);
    form.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let auth = bearer(key);
    let (answer, _) = post_bytes(
        client,
        &api_url(&client.base_url, "files"),
        ("authorization", &auth),
        &[],
        (&content_type, form),
        classify,
    )
    .await?;
    let file: FileObject =
        serde_json::from_slice(&answer).map_err(|e| undecodable("file upload", &e))?;
    let body = json!({
        "input_file_id": file.id,
        "endpoint": OPENAI_CHAT_URL,
        "completion_window": "24h",
        "metadata": {NAME_KEY: input.display_name},
    });
    let answer = post_json(
        client,
        &api_url(&client.base_url, "batches"),
        "authorization",
        &auth,
        &body,
        classify,
    )
    .await?;
    job(&answer)
}

pub(super) async fn get(client: &Client, key: &ApiKey, name: &str) -> Result<BatchJob, ApiError> {
    let url = api_url(&client.base_url, &format!("batches/{}", id(name, "batch")?));
    let body = transport::get(client, &url, "authorization", &bearer(key), classify).await?;
    job(&body)
}

pub(super) async fn cancel(client: &Client, key: &ApiKey, name: &str) -> Result<(), ApiError> {
    let url = api_url(
        &client.base_url,
        &format!("batches/{}/cancel", id(name, "batch")?),
    );
    post_json(
        client,
        &url,
        "authorization",
        &bearer(key),
        &json!({}),
        classify,
    )
    .await?;
    Ok(())
}

pub(super) async fn list(client: &Client, key: &ApiKey) -> Result<Vec<BatchJob>, ApiError> {
    let mut jobs = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = "batches?limit=100".to_owned();
        if let Some(after) = &after {
            path.push_str(&format!("&after={}", id(after, "batch")?));
        }
        let url = api_url(&client.base_url, &path);
        let body = transport::get(client, &url, "authorization", &bearer(key), classify).await?;
        let page: CursorPage<Batch> =
            serde_json::from_slice(&body).map_err(|e| undecodable("batch list", &e))?;
        jobs.extend(page.data.into_iter().map(describe));
        match (page.has_more, page.last_id) {
            (true, Some(last)) => after = Some(last),
            _ => return Ok(jobs),
        }
    }
}

pub(super) async fn download(
    client: &Client,
    key: &ApiKey,
    file: &str,
    out: &mut tokio::fs::File,
) -> Result<u64, ApiError> {
    let url = api_url(
        &client.base_url,
        &format!("files/{}/content", id(file, "file")?),
    );
    get_to_file(client, &url, ("authorization", &bearer(key)), out, classify).await
}

pub(super) fn parse_line(line: &[u8]) -> Result<BatchResult, ApiError> {
    let line: OpenAiBatchOutputLine =
        serde_json::from_slice(line).map_err(|e| undecodable("results line", &e))?;
    let outcome = match (line.response, line.error) {
        (Some(response), _) if response.status_code == 200 => {
            let body = serde_json::to_vec(&response.body).unwrap_or_default();
            match parse_chat(&body) {
                Ok(reply) => BatchOutcome::Reply(reply),
                Err(e) => BatchOutcome::Failed(e),
            }
        }
        (Some(response), _) => {
            let body = serde_json::to_vec(&response.body).unwrap_or_default();
            BatchOutcome::Failed(classify(response.status_code, &HeaderMap::new(), &body))
        }
        (None, Some(error)) if error.code == "batch_expired" => BatchOutcome::Unfinished,
        (None, Some(error)) => BatchOutcome::Failed(api_error(
            ErrorClass::ItemInvalid,
            None,
            format!(
                "{}: {}",
                if error.code.is_empty() {
                    "error"
                } else {
                    &error.code
                },
                error.message
            ),
        )),
        (None, None) => BatchOutcome::Failed(api_error(
            ErrorClass::ItemInvalid,
            None,
            "the results line has neither a response nor an error",
        )),
    };
    Ok(BatchResult {
        key: line.custom_id,
        outcome,
    })
}
