//! Anthropic's Message Batches (see the parent module for the endpoints and
//! sources). Facts it relies on: the requests go inline in one JSON create
//! (`{"requests": [{"custom_id", "params"}]}`, at most 100,000 requests or
//! 256 MB); `custom_id` is 1 to 64 of `[A-Za-z0-9_-]`, so keyfan sends a
//! short stable id per item ([`anthropic_custom_id`]) and maps it back; a
//! batch has no name and no metadata, so a batch whose create answer was
//! lost can only be told by when it was created and how many requests it
//! holds ([`created_between`]); `processing_status` is `in_progress`,
//! `canceling` or `ended`; each result line is `succeeded`, `errored`,
//! `canceled` or `expired`, in no particular order; the results are read
//! from `results_url` once the batch has ended.

use super::super::anthropic::{classify, parse_message, MessagesBody, HEADERS};
use super::super::common::api_error;
use super::super::transport::{self, get_to_file_with, post_bytes};
use super::super::{ApiError, Client, ErrorClass, Request};
use super::{
    checked, undecodable, BatchInput, BatchJob, BatchOutcome, BatchResult, BatchState, CursorPage,
};
use crate::types::ApiKey;
use chrono::{DateTime, Utc};
use reqwest::header::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Batches listed per page (the API's largest page).
const PAGE_LIMIT: u32 = 1000;

/// Characters of the run scope kept in a custom id.
const SCOPE_CHARS: usize = 24;

/// One request of an Anthropic batch, a line of keyfan's input file (the
/// create sends the lines as its `requests` array).
#[derive(Debug, Serialize)]
pub(super) struct AnthropicBatchLine<'a> {
    /// Unique in its batch, `^[a-zA-Z0-9_-]{1,64}$`.
    custom_id: &'a str,
    /// The Messages body, `model` included.
    params: MessagesBody<'a>,
}

impl<'a> AnthropicBatchLine<'a> {
    /// The line for `req`, keyed `key`; `default_cap` when it names no
    /// output cap.
    pub(super) fn new(key: &'a str, req: &Request<'a>, default_cap: u32) -> AnthropicBatchLine<'a> {
        AnthropicBatchLine {
            custom_id: key,
            params: MessagesBody::new(req, default_cap),
        }
    }
}

/// The custom id of item `item` in a batch of the run `scope`: `kf-`, the
/// scope's first letters and digits, `-`, and 16 hex digits of the item
/// id's SHA-256. At most 44 characters of `[A-Za-z0-9-]`, the same for the
/// same item on every run and keyfan version.
pub fn anthropic_custom_id(scope: &str, item: &str) -> String {
    let scope: String = scope
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(SCOPE_CHARS)
        .collect();
    let digest = Sha256::digest(item.as_bytes());
    format!("kf-{scope}-{}", hex::encode(&digest[..8]))
}

/// A Message Batch, only what keyfan reads.
#[derive(Debug, Deserialize)]
struct Batch {
    id: String,
    processing_status: String,
    #[serde(default)]
    request_counts: Counts,
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    cancel_initiated_at: Option<Value>,
    #[serde(default)]
    results_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Counts {
    #[serde(default)]
    processing: u64,
    #[serde(default)]
    succeeded: u64,
    #[serde(default)]
    errored: u64,
    #[serde(default)]
    canceled: u64,
    #[serde(default)]
    expired: u64,
}

/// One results line.
#[derive(Debug, Deserialize)]
struct ResultLine {
    custom_id: String,
    result: Outcome,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Outcome {
    Succeeded { message: Value },
    Errored { error: Value },
    Canceled,
    Expired,
}

impl Batch {
    /// When it was created (RFC 3339, `Z` or `+00:00`).
    fn created(&self) -> Option<DateTime<Utc>> {
        let at = self.created_at.as_deref()?;
        Some(DateTime::parse_from_rfc3339(at).ok()?.with_timezone(&Utc))
    }

    fn describe(self) -> BatchJob {
        let c = &self.request_counts;
        let cancelled = self.cancel_initiated_at.as_ref().is_some_and(|v| {
            // A round trip may turn the null into `{}`, as recorded.
            !v.is_null() && v.as_object().is_none_or(|o| !o.is_empty())
        });
        let state = match self.processing_status.as_str() {
            "ended" if cancelled => BatchState::Cancelled,
            "ended" if c.expired > 0 => BatchState::Expired,
            "ended" => BatchState::Succeeded,
            _ => BatchState::Running,
        };
        let error = (state == BatchState::Expired).then(|| {
            format!(
                "{} request(s) expired: not processed within 24 hours",
                c.expired
            )
        });
        BatchJob {
            total: c.processing + c.succeeded + c.errored + c.canceled + c.expired,
            succeeded: c.succeeded,
            failed: c.errored,
            name: self.id,
            display_name: String::new(),
            state,
            results: self.results_url.into_iter().collect(),
            error,
        }
    }
}

fn job(body: &[u8]) -> Result<BatchJob, ApiError> {
    let batch: Batch = serde_json::from_slice(body).map_err(|e| undecodable("batch", &e))?;
    Ok(batch.describe())
}

/// `id`, checked to be a batch id (`msgbatch_…`).
fn id(id: &str) -> Result<&str, ApiError> {
    checked(id, "an Anthropic batch id")?;
    Ok(id)
}

fn batches_url(client: &Client) -> String {
    format!("{}/v1/messages/batches", client.base_url)
}

fn auth(key: &ApiKey) -> (&'static str, &str) {
    ("x-api-key", key.expose())
}

pub(super) async fn create(
    client: &Client,
    key: &ApiKey,
    input: BatchInput<'_>,
) -> Result<BatchJob, ApiError> {
    let lines = tokio::fs::read(input.path).await.map_err(|e| {
        api_error(
            ErrorClass::ItemInvalid,
            None,
            format!("could not read {}: {e}", input.path.display()),
        )
    })?;
    let mut body = Vec::with_capacity(lines.len() + 16);
    body.extend_from_slice(b"{\"requests\":[");
    let requests = lines
        .split(|&b| b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace));
    for (n, request) in requests.enumerate() {
        if n > 0 {
            body.push(b',');
        }
        body.extend_from_slice(request);
    }
    drop(lines);
    body.extend_from_slice(b"]}");
    let (answer, _) = post_bytes(
        client,
        &batches_url(client),
        auth(key),
        &HEADERS,
        ("application/json", body),
        classify,
    )
    .await?;
    job(&answer)
}

pub(super) async fn get(client: &Client, key: &ApiKey, name: &str) -> Result<BatchJob, ApiError> {
    let url = format!("{}/{}", batches_url(client), id(name)?);
    let body = transport::get_with(client, &url, auth(key), &HEADERS, classify).await?;
    job(&body)
}

pub(super) async fn cancel(client: &Client, key: &ApiKey, name: &str) -> Result<(), ApiError> {
    let url = format!("{}/{}/cancel", batches_url(client), id(name)?);
    post_bytes(
        client,
        &url,
        auth(key),
        &HEADERS,
        ("application/json", Vec::new()),
        classify,
    )
    .await?;
    Ok(())
}

/// Pages through the list, newest first, giving each batch to `keep`, and
/// stops after the page on which `keep` first answers false.
async fn pages(
    client: &Client,
    key: &ApiKey,
    mut keep: impl FnMut(Batch) -> bool,
) -> Result<(), ApiError> {
    let mut after: Option<String> = None;
    loop {
        let mut url = format!("{}?limit={PAGE_LIMIT}", batches_url(client));
        if let Some(after) = &after {
            url.push_str(&format!("&after_id={}", id(after)?));
        }
        let body = transport::get_with(client, &url, auth(key), &HEADERS, classify).await?;
        let page: CursorPage<Batch> =
            serde_json::from_slice(&body).map_err(|e| undecodable("batch list", &e))?;
        let mut more = true;
        for batch in page.data {
            more &= keep(batch);
        }
        match (more && page.has_more, page.last_id) {
            (true, Some(last)) => after = Some(last),
            _ => return Ok(()),
        }
    }
}

pub(super) async fn list(client: &Client, key: &ApiKey) -> Result<Vec<BatchJob>, ApiError> {
    let mut jobs = Vec::new();
    pages(client, key, |batch| {
        jobs.push(batch.describe());
        true
    })
    .await?;
    Ok(jobs)
}

/// The account's batches created from `from` to `to`, newest first; the
/// listing stops at the first batch created before `from`.
pub(super) async fn created_between(
    client: &Client,
    key: &ApiKey,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<BatchJob>, ApiError> {
    let mut jobs = Vec::new();
    pages(client, key, |batch| match batch.created() {
        Some(at) if at < from => false,
        Some(at) if at <= to => {
            jobs.push(batch.describe());
            true
        }
        _ => true,
    })
    .await?;
    Ok(jobs)
}

/// Downloads the results of batch `name` from `results_url`, streamed. A
/// `results_url` outside the client's base URL is not followed (the key
/// would go with it): the documented path under the base URL is used.
pub(super) async fn download(
    client: &Client,
    key: &ApiKey,
    name: &str,
    results_url: &str,
    out: &mut tokio::fs::File,
) -> Result<u64, ApiError> {
    let base = format!("{}/", client.base_url);
    let url = if results_url.starts_with(&base) {
        results_url.to_owned()
    } else {
        format!("{}/{}/results", batches_url(client), id(name)?)
    };
    get_to_file_with(client, &url, auth(key), &HEADERS, out, classify).await
}

/// The HTTP status Anthropic answers an error `kind` with (FACTS: the
/// Messages API's error types).
fn status_of(kind: &str) -> u16 {
    match kind {
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "billing_error" => 402,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        "rate_limit_error" => 429,
        "overloaded_error" => 529,
        _ => 500,
    }
}

pub(super) fn parse_line(line: &[u8]) -> Result<BatchResult, ApiError> {
    let line: ResultLine =
        serde_json::from_slice(line).map_err(|e| undecodable("results line", &e))?;
    let outcome = match line.result {
        Outcome::Succeeded { message } => {
            let body = serde_json::to_vec(&message).unwrap_or_default();
            match parse_message(&body) {
                Ok(reply) => BatchOutcome::Reply(reply),
                Err(e) => BatchOutcome::Failed(e),
            }
        }
        Outcome::Errored { error } => {
            // An ErrorResponse: the type is at `error.type`.
            let kind = error["error"]["type"].as_str().unwrap_or("api_error");
            let body = serde_json::to_vec(&error).unwrap_or_default();
            BatchOutcome::Failed(classify(status_of(kind), &HeaderMap::new(), &body))
        }
        Outcome::Canceled | Outcome::Expired => BatchOutcome::Unfinished,
    };
    Ok(BatchResult {
        key: line.custom_id,
        outcome,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recorded result lines (a third-party integration report's live
    /// captures of claude-haiku-4-5 batches, 2026-09; ids elided there).
    const SUCCEEDED: &str = r#"{"custom_id":"ok-1","result":{"type":"succeeded","message":{"id":"msg_x","type":"message","role":"assistant","model":"claude-haiku-4-5-20251001","content":[{"type":"text","text":"1"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":16,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"cache_creation":{"ephemeral_5m_input_tokens":0,"ephemeral_1h_input_tokens":0},"output_tokens":5,"service_tier":"batch","inference_geo":"not_available"}}}}"#;
    const ERRORED: &str = r#"{"custom_id":"bad-model","result":{"type":"errored","error":{"type":"error","error":{"details":{"error_visibility":"user_facing"},"type":"not_found_error","message":"model: claude-does-not-exist-9"},"request_id":null}}}"#;
    const CANCELED: &str = r#"{"custom_id":"c-1","result":{"type":"canceled"}}"#;

    /// A recorded ended batch (tidyverse/ellmer's fixture, 2026-08-02).
    const ENDED: &str = r#"{"id": "msgbatch_01XPZPiH1ni3dsLAD9cBDeew", "type": "message_batch", "processing_status": "ended",
 "request_counts": {"processing": 0, "succeeded": 4, "errored": 0, "canceled": 0, "expired": 0},
 "ended_at": "2026-08-02T17:48:04.374913+00:00", "created_at": "2026-08-02T17:47:08.039741+00:00",
 "expires_at": "2026-08-03T17:47:08.039741+00:00", "archived_at": {}, "cancel_initiated_at": {},
 "results_url": "https://api.anthropic.com/v1/messages/batches/msgbatch_01XPZPiH1ni3dsLAD9cBDeew/results"}"#;

    #[test]
    fn recorded_result_lines_parse_to_a_reply_an_api_error_and_an_unfinished_request() {
        let ok = parse_line(SUCCEEDED.as_bytes()).expect("a line");
        assert_eq!(ok.key, "ok-1");
        let BatchOutcome::Reply(reply) = ok.outcome else {
            panic!("{:?}", ok.outcome)
        };
        assert_eq!(reply.text, "1");
        assert_eq!(
            (reply.usage.input_tokens, reply.usage.output_tokens),
            (16, 5)
        );
        let bad = parse_line(ERRORED.as_bytes()).expect("a line");
        let BatchOutcome::Failed(error) = bad.outcome else {
            panic!("{:?}", bad.outcome)
        };
        assert!(
            error.message.contains("model: claude-does-not-exist-9"),
            "{}",
            error.message
        );
        assert_eq!(error.status, Some(404));
        let canceled = parse_line(CANCELED.as_bytes()).expect("a line");
        assert_eq!(canceled.outcome, BatchOutcome::Unfinished);
    }

    #[test]
    fn a_recorded_ended_batch_is_succeeded_with_its_results_url_and_creation_time() {
        let batch: Batch = serde_json::from_str(ENDED).expect("a batch");
        assert_eq!(
            batch.created().map(|at| at.timestamp()),
            Some(1_785_692_828)
        );
        let job = batch.describe();
        assert_eq!(job.state, BatchState::Succeeded);
        assert_eq!((job.total, job.succeeded, job.failed), (4, 4, 0));
        assert_eq!(job.results.len(), 1);
    }

    #[test]
    fn custom_ids_are_short_stable_and_of_the_allowed_characters() {
        let long = "an id/with spaces:and more".repeat(10);
        let id = anthropic_custom_id("0123abcdr42", &long);
        assert_eq!(id, anthropic_custom_id("0123abcdr42", &long));
        assert_ne!(id, anthropic_custom_id("0123abcdr42", "other"));
        assert_ne!(id, anthropic_custom_id("0123abcdr43", &long));
        assert!(id.len() <= 64, "{id}");
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    }
}
