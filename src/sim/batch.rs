//! The simulated Batch APIs, project-scoped like files, advancing on the
//! simulator's clock (pending for `batches.pending_ms`, running for
//! `batches.running_ms`, then ended as `batches.end` says).
//!
//! - Gemini: `POST models/{m}:batchGenerateContent` with inline requests
//!   (`inputConfig.requests.requests[]`, each `{request, metadata: {key}}`)
//!   or a JSONL file of the Files API (`inputConfig.fileName`, each line
//!   `{"key", "request"}`), snake_case or camelCase; `GET batches` (the
//!   list, `operations` and `nextPageToken`), `GET batches/{id}`, `POST
//!   batches/{id}:cancel`, and `GET download/v1beta/files/batch-{id}:download`
//!   (the results file: one `{"response", "key"}` or `{"error", "key"}` per
//!   line, in input order). Operations carry `metadata.state`
//!   (`BATCH_STATE_*`), `batchStats` as int64 strings with zero counters
//!   omitted, no `done` key until done, and the output twice (`metadata.output`
//!   and `response`), as the recorded bodies do.
//! - OpenAI: `POST /v1/files` (multipart, `purpose=batch`), `POST /v1/batches`,
//!   `GET /v1/batches` (`limit`, `after`), `GET /v1/batches/{id}`, `POST
//!   /v1/batches/{id}/cancel` (answers `cancelling`, `cancelled` after), and
//!   `GET /v1/files/{id}/content` (the input, or the output and error files:
//!   `{"id", "custom_id", "response": {"status_code", "request_id", "body"},
//!   "error"}` lines, output in reverse input order: the API does not keep
//!   it). An expired OpenAI batch returns its first half done and the rest
//!   as `batch_expired` errors.
//!
//! - Anthropic: `POST /v1/messages/batches` (the requests inline,
//!   `{"custom_id", "params"}` each), `GET /v1/messages/batches` (`limit`,
//!   `after_id`, newest first), `GET /v1/messages/batches/{id}`, `POST
//!   /v1/messages/batches/{id}/cancel` (answers `canceling`, `ended` after)
//!   and `GET /v1/messages/batches/{id}/results` (404 until `ended`, then
//!   one `{"custom_id", "result"}` line per request, in reverse input
//!   order). `processing_status` is `in_progress` until the end; the
//!   counters other than `processing` stay 0 until then. An expired batch
//!   ends with its first half done and the rest `expired`; a failed one
//!   (Anthropic has no failed batch) with every request `errored`
//!   (`api_error`); a cancelled one with every request `canceled`.
//!
//! Faults: a user text holding `[[sim:batch_error]]` fails its request
//! inside the batch (Gemini `{"error": Status}` line, OpenAI status 400 in
//! the error file); a display name (OpenAI: a metadata value) holding
//! `[[sim:batch_expired]]` or `[[sim:batch_failed]]` ends that batch so
//! (Anthropic batches have no name: a request's text holding it does);
//! `batches.lose_create_replies` answers the first creates with a 503 after
//! carrying them out.
//!
//! The answers are the online ones (same text, digest and usage), rendered
//! once per batch when first needed.

use super::anthropic::{self, Anthropic};
use super::config::{BatchEnd, BatchesConfig};
use super::files::{envelope, Files};
use super::gemini::{self, Gemini};
use super::openai::{self, OpenAi};
use super::quota::{Clock, Headroom};
use super::reply::{self, Prompt};
use super::server::lock;
use super::wire::{encode, Turn, Wire};
use crate::provider::batchline::{
    GeminiBatchOutputLine, OpenAiBatchOutputLine, OpenAiBatchResponse,
};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// In a user text: the request fails inside its batch.
const ERROR_DIRECTIVE: &str = "[[sim:batch_error]]";
/// In a display name or metadata value: the batch expires.
const EXPIRED_DIRECTIVE: &str = "[[sim:batch_expired]]";
/// In a display name or metadata value: the batch fails.
const FAILED_DIRECTIVE: &str = "[[sim:batch_failed]]";

/// The `@type` of a Gemini batch's metadata (note `v1main`, as recorded).
const BATCH_TYPE: &str =
    "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch";
/// The `@type` of a Gemini batch's output.
const OUTPUT_TYPE: &str =
    "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput";

/// The `anthropic-version` a batch's requests are read with.
const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Anthropic: the most requests one batch may hold ("maxItems: 100000").
const ANTHROPIC_MAX_REQUESTS: usize = 100_000;

/// The endpoints an OpenAI batch may name (`batch_create_params.py`).
const OPENAI_ENDPOINTS: [&str; 8] = [
    "/v1/responses",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/videos",
];

/// Which API a batch was created through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Gemini,
    OpenAi,
    Anthropic,
}

/// Where a batch stands now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Pending,
    Running,
    Ended(BatchEnd),
    Cancelled,
}

/// One request of a batch: its key (custom id) and its request body.
struct Line {
    key: String,
    body: Vec<u8>,
}

/// One request's outcome: the API's answer with its tokens, or an error.
enum Outcome {
    Answer {
        body: Value,
        input_tokens: u64,
        output_tokens: u64,
    },
    Error(Value),
}

/// A batch.
struct Job {
    api: Api,
    project: usize,
    number: u64,
    id: String,
    display_name: String,
    model: String,
    created: (Instant, DateTime<Utc>),
    cancelled: Option<(Instant, DateTime<Utc>)>,
    end: BatchEnd,
    lines: Vec<Line>,
    /// Gemini: the input file's name, `None` for inline requests.
    input_file: Option<String>,
    /// OpenAI: why the input failed validation (`BatchError`s).
    invalid: Vec<Value>,
    /// OpenAI: the endpoint, the input file's id and the metadata.
    endpoint: String,
    metadata: Value,
    outcomes: Option<Arc<Vec<Outcome>>>,
}

/// An OpenAI file uploaded with `purpose=batch`.
struct Upload {
    project: usize,
    bytes: Arc<[u8]>,
    filename: String,
    created: i64,
}

/// Every batch and OpenAI batch file.
pub(crate) struct Batches {
    config: BatchesConfig,
    seed: u64,
    next: AtomicU64,
    creates: AtomicU64,
    jobs: Mutex<Vec<Job>>,
    uploads: Mutex<HashMap<String, Upload>>,
}

impl Batches {
    /// No batches yet.
    pub(crate) fn new(config: BatchesConfig, seed: u64) -> Batches {
        Batches {
            config,
            seed,
            next: AtomicU64::new(0),
            creates: AtomicU64::new(0),
            jobs: Mutex::default(),
            uploads: Mutex::default(),
        }
    }

    /// Stores a new batch and answers its create with `describe`, or with a
    /// 503 while `lose_create_replies` lasts.
    fn create(
        &self,
        clock: &Clock,
        mut job: Job,
        error: impl FnOnce() -> Response,
        describe: impl FnOnce(&Batches, &mut Job, &Clock) -> Value,
        json: impl FnOnce(Value) -> Response,
    ) -> Response {
        let metadata = job.metadata.to_string();
        if let Some(end) = directed_end(&[job.display_name.as_bytes(), metadata.as_bytes()]) {
            job.end = end;
        }
        let body = describe(self, &mut job, clock);
        lock(&self.jobs).push(job);
        let number = self.creates.fetch_add(1, Ordering::Relaxed);
        if number < u64::from(self.config.lose_create_replies) {
            return error();
        }
        json(body)
    }

    /// A new job of `api` for `project`, created now.
    fn job(&self, api: Api, project: usize, clock: &Clock, model: &str, lines: Vec<Line>) -> Job {
        let number = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let id = reply::response_id(self.seed ^ 0xba7c, number)
            .to_ascii_lowercase()
            .replace(['-', '_'], "0");
        Job {
            api,
            project,
            number,
            id,
            display_name: String::new(),
            model: model.to_owned(),
            created: (clock.now(), clock.wall()),
            cancelled: None,
            end: self.config.end,
            lines,
            input_file: None,
            invalid: Vec::new(),
            endpoint: String::new(),
            metadata: Value::Null,
            outcomes: None,
        }
    }

    fn phase(&self, job: &Job, now: Instant) -> Phase {
        if job.cancelled.is_some() {
            return Phase::Cancelled;
        }
        let pending = Duration::from_millis(self.config.pending_ms);
        let running = Duration::from_millis(self.config.running_ms);
        let age = now.saturating_duration_since(job.created.0);
        if age < pending {
            Phase::Pending
        } else if !job.invalid.is_empty() {
            Phase::Ended(BatchEnd::Failed)
        } else if age < pending + running {
            Phase::Running
        } else {
            Phase::Ended(job.end)
        }
    }

    /// When `job` reached its phase (its end, or cancellation).
    fn ended_at(&self, job: &Job) -> DateTime<Utc> {
        if let Some((_, at)) = job.cancelled {
            return at;
        }
        let ms = self.config.pending_ms
            + if job.invalid.is_empty() {
                self.config.running_ms
            } else {
                0
            };
        job.created.1 + chrono::Duration::milliseconds(i64::try_from(ms).unwrap_or(i64::MAX))
    }

    /// The outcome of every request of `job`, rendered once.
    fn outcomes(&self, job: &mut Job) -> Arc<Vec<Outcome>> {
        if let Some(done) = &job.outcomes {
            return Arc::clone(done);
        }
        let outcomes: Vec<Outcome> = job
            .lines
            .iter()
            .enumerate()
            .map(|(n, line)| self.answer(job, n, line))
            .collect();
        let outcomes = Arc::new(outcomes);
        job.outcomes = Some(Arc::clone(&outcomes));
        outcomes
    }

    /// The online answer to one request of `job`, or its error.
    fn answer(&self, job: &Job, n: usize, line: &Line) -> Outcome {
        let parsed = match job.api {
            Api::Gemini => gemini::parse_generate(&job.model, &line.body),
            Api::OpenAi => openai::parse_chat(&line.body),
            Api::Anthropic => anthropic::parse_messages(Some(ANTHROPIC_VERSION), &line.body),
        };
        let error = |message: &str| match job.api {
            Api::Gemini => Outcome::Error(
                json!({"code": 400, "message": message, "status": "INVALID_ARGUMENT"}),
            ),
            Api::OpenAi => Outcome::Error(json!({
                "message": message, "type": "invalid_request_error", "param": null, "code": null
            })),
            Api::Anthropic => Outcome::Error(anthropic_error("invalid_request_error", message)),
        };
        let prompt: Prompt = match parsed {
            Ok(prompt) => prompt,
            Err(message) => return error(&message),
        };
        if prompt.user_text.contains(ERROR_DIRECTIVE) {
            return error("[simulated] Request contains an invalid argument.");
        }
        let wall = job.created.1;
        let turn = Turn {
            prompt: &prompt,
            id: reply::response_id(self.seed, (job.number << 32) | n as u64),
            created: wall.timestamp(),
            headroom: Headroom {
                requests: None,
                tokens: None,
                output: None,
                at: wall,
            },
            bad_json: false,
        };
        let answer = match job.api {
            Api::Gemini => Gemini::answer(&turn),
            Api::OpenAi => OpenAi::answer(&turn),
            Api::Anthropic => Anthropic::answer(&turn),
        };
        let mut body: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        if job.api == Api::Anthropic {
            // As recorded: a batch's message says which tier served it.
            body["usage"]["service_tier"] = json!("batch");
        }
        Outcome::Answer {
            body,
            input_tokens: prompt.input_tokens,
            output_tokens: answer.output_tokens,
        }
    }

    /// Runs `f` on `project`'s batch of `api` with id `id`, if any.
    fn with_job<T>(
        &self,
        api: Api,
        project: usize,
        id: &str,
        f: impl FnOnce(&mut Job) -> T,
    ) -> Option<T> {
        let mut jobs = lock(&self.jobs);
        let job = jobs
            .iter_mut()
            .find(|j| j.api == api && j.project == project && j.id == id)?;
        Some(f(job))
    }

    /// Cancels `project`'s batch `id` of `api` unless it has ended, then
    /// answers `f(job, cancelled)`, `cancelled` telling whether this call
    /// cancelled it. `None`: no such batch.
    fn cancel<T>(
        &self,
        api: Api,
        project: usize,
        id: &str,
        clock: &Clock,
        f: impl FnOnce(&mut Job, bool) -> T,
    ) -> Option<T> {
        let now = (clock.now(), clock.wall());
        self.with_job(api, project, id, |job| {
            let open = matches!(self.phase(job, now.0), Phase::Pending | Phase::Running);
            if open {
                job.cancelled = Some(now);
            }
            f(job, open)
        })
    }

    /// One page of `project`'s batches of `api`, newest first, as OpenAI
    /// and Anthropic list them: `limit` after the batch `after`, each
    /// described by `describe`, with `first_id`, `last_id` and `has_more`.
    fn page(
        &self,
        api: Api,
        project: usize,
        limit: usize,
        after: Option<&str>,
        mut describe: impl FnMut(&mut Job) -> Value,
    ) -> Value {
        let mut jobs = lock(&self.jobs);
        let mine: Vec<&mut Job> = jobs
            .iter_mut()
            .rev()
            .filter(|j| j.api == api && j.project == project)
            .collect();
        let skip = after
            .and_then(|after| mine.iter().position(|j| j.id == after).map(|p| p + 1))
            .unwrap_or(0);
        let total = mine.len();
        let data: Vec<Value> = mine
            .into_iter()
            .skip(skip)
            .take(limit)
            .map(&mut describe)
            .collect();
        json!({
            "first_id": data.first().map(|b| b["id"].clone()),
            "last_id": data.last().map(|b| b["id"].clone()),
            "has_more": skip + limit < total,
            "data": data,
        })
    }

    // -----------------------------------------------------------------------
    // Gemini

    /// `POST models/{model}:batchGenerateContent` from `project`.
    pub(crate) fn gemini_create(
        &self,
        clock: &Clock,
        files: &Files,
        project: usize,
        model: &str,
        body: &[u8],
    ) -> Response {
        let Ok(body) = serde_json::from_slice::<Value>(body) else {
            return gemini_error(StatusCode::BAD_REQUEST, "Invalid JSON payload received.");
        };
        let batch = &body["batch"];
        let display = either(batch, "displayName", "display_name")
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let input = either(batch, "inputConfig", "input_config");
        let file = either(input, "fileName", "file_name").as_str();
        let lines = match file {
            Some(name) => {
                let id = name.strip_prefix("files/").unwrap_or(name);
                let Some(bytes) = files.jsonl(project, id) else {
                    return envelope(
                        StatusCode::FORBIDDEN,
                        "PERMISSION_DENIED",
                        &format!(
                            "You do not have permission to access the File {id} or it may not exist."
                        ),
                    );
                };
                match gemini_file_lines(&bytes) {
                    Ok(lines) => lines,
                    Err(message) => return gemini_error(StatusCode::BAD_REQUEST, &message),
                }
            }
            None => match inline_lines(input) {
                Ok(lines) => lines,
                Err(message) => return gemini_error(StatusCode::BAD_REQUEST, &message),
            },
        };
        if lines.is_empty() {
            return gemini_error(StatusCode::BAD_REQUEST, "The batch has no requests.");
        }
        let mut job = self.job(Api::Gemini, project, clock, model, lines);
        job.display_name = display;
        job.input_file = file.map(str::to_owned);
        self.create(
            clock,
            job,
            || {
                envelope(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "UNAVAILABLE",
                    "The service is currently unavailable.",
                )
            },
            |batches, job, clock| batches.gemini_operation(job, clock),
            |body| Gemini::json(StatusCode::OK, encode(&body)),
        )
    }

    /// `GET batches/{id}` from `project`.
    pub(crate) fn gemini_get(&self, clock: &Clock, project: usize, id: &str) -> Response {
        match self.with_job(Api::Gemini, project, id, |job| {
            self.gemini_operation(job, clock)
        }) {
            Some(body) => Gemini::json(StatusCode::OK, encode(&body)),
            None => gemini_not_found(id),
        }
    }

    /// `POST batches/{id}:cancel` from `project`: `{}`, or 400 once ended.
    pub(crate) fn gemini_cancel(&self, clock: &Clock, project: usize, id: &str) -> Response {
        let done = self.cancel(Api::Gemini, project, id, clock, |_, cancelled| cancelled);
        match done {
            Some(true) => Gemini::json(StatusCode::OK, "{}"),
            Some(false) => envelope(
                StatusCode::BAD_REQUEST,
                "FAILED_PRECONDITION",
                &format!("Batch batches/{id} has already ended."),
            ),
            None => gemini_not_found(id),
        }
    }

    /// `GET batches?pageSize=&pageToken=` from `project`: newest first.
    pub(crate) fn gemini_list(
        &self,
        clock: &Clock,
        project: usize,
        page_size: Option<usize>,
        page_token: Option<&str>,
    ) -> Response {
        let size = page_size.unwrap_or(50).clamp(1, 1000);
        let start: usize = page_token.and_then(|t| t.parse().ok()).unwrap_or(0);
        let mut jobs = lock(&self.jobs);
        let mine: Vec<&mut Job> = jobs
            .iter_mut()
            .rev()
            .filter(|j| j.api == Api::Gemini && j.project == project)
            .collect();
        let total = mine.len();
        let operations: Vec<Value> = mine
            .into_iter()
            .skip(start)
            .take(size)
            .map(|job| {
                let mut op = self.gemini_operation(job, clock);
                // The list does not return inlined responses (cookbook).
                if let Some(meta) = op["metadata"].as_object_mut() {
                    meta.remove("output");
                }
                if let Some(op) = op.as_object_mut() {
                    op.remove("response");
                }
                op
            })
            .collect();
        let mut body = json!({ "operations": operations });
        if start + size < total {
            body["nextPageToken"] = json!((start + size).to_string());
        }
        Gemini::json(StatusCode::OK, encode(&body))
    }

    /// `GET download/v1beta/files/batch-{id}:download?alt=media` from
    /// `project`: a succeeded file batch's results, one line per request.
    pub(crate) fn gemini_download(&self, clock: &Clock, project: usize, target: &str) -> Response {
        let name = target.strip_suffix(":download").unwrap_or(target);
        let Some(id) = name.strip_prefix("batch-") else {
            return gemini_not_found(name);
        };
        let now = clock.now();
        let lines = self.with_job(Api::Gemini, project, id, |job| {
            let ready = self.phase(job, now) == Phase::Ended(BatchEnd::Succeeded)
                && job.input_file.is_some();
            if !ready {
                return None;
            }
            let outcomes = self.outcomes(job);
            let results = job
                .lines
                .iter()
                .zip(outcomes.iter())
                .map(|(line, outcome)| {
                    let (response, error) = match outcome {
                        Outcome::Answer { body, .. } => (Some(body.clone()), None),
                        Outcome::Error(error) => (None, serde_json::from_value(error.clone()).ok()),
                    };
                    GeminiBatchOutputLine {
                        response,
                        error,
                        key: line.key.clone(),
                    }
                });
            Some(jsonl(results))
        });
        match lines.flatten() {
            Some(text) => Gemini::json(StatusCode::OK, text),
            None => gemini_not_found(name),
        }
    }

    /// A Gemini batch as its Operation.
    fn gemini_operation(&self, job: &mut Job, clock: &Clock) -> Value {
        let phase = self.phase(job, clock.now());
        let name = format!("batches/{}", job.id);
        let created = rfc3339(job.created.1);
        let state = match phase {
            Phase::Pending => "BATCH_STATE_PENDING",
            Phase::Running => "BATCH_STATE_RUNNING",
            Phase::Ended(BatchEnd::Succeeded) => "BATCH_STATE_SUCCEEDED",
            Phase::Ended(BatchEnd::Failed) => "BATCH_STATE_FAILED",
            Phase::Ended(BatchEnd::Expired) => "BATCH_STATE_EXPIRED",
            Phase::Cancelled => "BATCH_STATE_CANCELLED",
        };
        let total = job.lines.len();
        let mut stats = Map::new();
        stats.insert("requestCount".into(), json!(total.to_string()));
        let mut metadata = json!({
            "@type": BATCH_TYPE,
            "model": format!("models/{}", job.model),
            "displayName": job.display_name,
            "createTime": created,
            "updateTime": created,
            "state": state,
            "name": name,
        });
        if let Some(file) = &job.input_file {
            metadata["inputConfig"] = json!({"fileName": file});
        }
        let mut op = json!({"name": name});
        match phase {
            Phase::Pending | Phase::Running => {
                stats.insert("pendingRequestCount".into(), json!(total.to_string()));
            }
            Phase::Ended(end) => {
                let ended = rfc3339(self.ended_at(job));
                metadata["endTime"] = json!(ended);
                metadata["updateTime"] = json!(ended);
                op["done"] = json!(true);
                match end {
                    BatchEnd::Succeeded => {
                        let outcomes = self.outcomes(job);
                        let failed = outcomes
                            .iter()
                            .filter(|o| matches!(o, Outcome::Error(_)))
                            .count();
                        for (field, n) in [
                            ("successfulRequestCount", total - failed),
                            ("failedRequestCount", failed),
                        ] {
                            if n > 0 {
                                stats.insert(field.into(), json!(n.to_string()));
                            }
                        }
                        let output = match &job.input_file {
                            Some(_) => json!({"responsesFile": format!("files/batch-{}", job.id)}),
                            None => {
                                let inlined: Vec<Value> = job
                                    .lines
                                    .iter()
                                    .zip(outcomes.iter())
                                    .map(|(line, outcome)| {
                                        let metadata = json!({"key": line.key});
                                        match outcome {
                                            Outcome::Answer { body, .. } => {
                                                json!({"response": body, "metadata": metadata})
                                            }
                                            Outcome::Error(error) => {
                                                json!({"error": error, "metadata": metadata})
                                            }
                                        }
                                    })
                                    .collect();
                                json!({"inlinedResponses": {"inlinedResponses": inlined}})
                            }
                        };
                        metadata["output"] = output.clone();
                        let mut response = output;
                        response["@type"] = json!(OUTPUT_TYPE);
                        op["response"] = response;
                    }
                    BatchEnd::Failed => {
                        op["error"] =
                            json!({"code": 13, "message": "[simulated] The batch failed."});
                    }
                    BatchEnd::Expired => {
                        op["error"] = json!({
                            "code": 4,
                            "message": "[simulated] The batch was running or pending for more than 48 hours."
                        });
                    }
                }
            }
            Phase::Cancelled => {
                let at = rfc3339(self.ended_at(job));
                metadata["endTime"] = json!(at);
                metadata["updateTime"] = json!(at);
                op["done"] = json!(true);
                op["error"] = json!({"code": 1, "message": "CANCELLED"});
            }
        }
        metadata["batchStats"] = Value::Object(stats);
        op["metadata"] = metadata;
        op
    }

    // -----------------------------------------------------------------------
    // OpenAI

    /// `POST /v1/files` from `project`: a multipart upload with
    /// `purpose=batch`.
    pub(crate) fn openai_upload(
        &self,
        clock: &Clock,
        project: usize,
        content_type: &str,
        body: &[u8],
    ) -> Response {
        let Some(form) = multipart(content_type, body) else {
            return openai_error(
                StatusCode::BAD_REQUEST,
                "The request is not multipart/form-data.",
            );
        };
        let purpose = form.iter().find(|f| f.name == "purpose");
        if purpose.map(|f| f.data) != Some(b"batch".as_slice()) {
            return openai_error(
                StatusCode::BAD_REQUEST,
                "The simulator only takes files with purpose 'batch'.",
            );
        }
        let Some(file) = form.iter().find(|f| f.name == "file") else {
            return openai_error(StatusCode::BAD_REQUEST, "'file' is a required property");
        };
        let number = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let id = format!("file-sim{number:06}");
        let upload = Upload {
            project,
            bytes: Arc::from(file.data),
            filename: file
                .filename
                .clone()
                .unwrap_or_else(|| "upload.jsonl".into()),
            created: clock.wall().timestamp(),
        };
        let body = file_object(&id, &upload, "batch", upload.bytes.len());
        lock(&self.uploads).insert(id, upload);
        OpenAi::json(StatusCode::OK, encode(&body))
    }

    /// `POST /v1/batches` from `project`.
    pub(crate) fn openai_create(&self, clock: &Clock, project: usize, body: &[u8]) -> Response {
        let Ok(body) = serde_json::from_slice::<Value>(body) else {
            return openai_error(
                StatusCode::BAD_REQUEST,
                "We could not parse the JSON body of your request.",
            );
        };
        let endpoint = body["endpoint"].as_str().unwrap_or_default();
        if !OPENAI_ENDPOINTS.contains(&endpoint) {
            return openai_error(
                StatusCode::BAD_REQUEST,
                &format!("Invalid 'endpoint': '{endpoint}'."),
            );
        }
        if body["completion_window"].as_str() != Some("24h") {
            return openai_error(
                StatusCode::BAD_REQUEST,
                "Invalid 'completion_window': only '24h' is supported.",
            );
        }
        let file_id = body["input_file_id"].as_str().unwrap_or_default();
        let bytes = {
            let uploads = lock(&self.uploads);
            match uploads.get(file_id).filter(|u| u.project == project) {
                Some(upload) => Arc::clone(&upload.bytes),
                None => {
                    return openai_error(
                        StatusCode::NOT_FOUND,
                        &format!("No such File object: {file_id}"),
                    )
                }
            }
        };
        let (lines, invalid, model) = openai_lines(&bytes, endpoint);
        let mut job = self.job(Api::OpenAi, project, clock, &model, lines);
        job.invalid = invalid;
        job.endpoint = endpoint.to_owned();
        job.input_file = Some(file_id.to_owned());
        job.metadata = body.get("metadata").cloned().unwrap_or(Value::Null);
        self.create(
            clock,
            job,
            || {
                openai_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The server is overloaded or not ready yet.",
                )
            },
            |batches, job, clock| batches.openai_batch(job, clock),
            |body| OpenAi::json(StatusCode::OK, encode(&body)),
        )
    }

    /// `GET /v1/batches/{id}` from `project`.
    pub(crate) fn openai_get(&self, clock: &Clock, project: usize, id: &str) -> Response {
        match self.with_job(Api::OpenAi, project, id, |job| {
            self.openai_batch(job, clock)
        }) {
            Some(body) => OpenAi::json(StatusCode::OK, encode(&body)),
            None => openai_error(
                StatusCode::NOT_FOUND,
                &format!("No batch found with id '{id}'."),
            ),
        }
    }

    /// `POST /v1/batches/{id}/cancel` from `project`: the batch, `cancelling`.
    pub(crate) fn openai_cancel(&self, clock: &Clock, project: usize, id: &str) -> Response {
        let body = self.cancel(Api::OpenAi, project, id, clock, |job, cancelled| {
            cancelled.then(|| {
                let mut body = self.openai_batch(job, clock);
                body["status"] = json!("cancelling");
                body["cancelled_at"] = Value::Null;
                body
            })
        });
        match body {
            Some(Some(body)) => OpenAi::json(StatusCode::OK, encode(&body)),
            Some(None) => openai_error(
                StatusCode::CONFLICT,
                &format!("Cannot cancel a batch that has already ended: {id}."),
            ),
            None => openai_error(
                StatusCode::NOT_FOUND,
                &format!("No batch found with id '{id}'."),
            ),
        }
    }

    /// `GET /v1/batches?limit=&after=` from `project`: newest first.
    pub(crate) fn openai_list(
        &self,
        clock: &Clock,
        project: usize,
        limit: Option<usize>,
        after: Option<&str>,
    ) -> Response {
        let limit = limit.unwrap_or(20).clamp(1, 100);
        let mut body = self.page(Api::OpenAi, project, limit, after, |job| {
            self.openai_batch(job, clock)
        });
        body["object"] = json!("list");
        OpenAi::json(StatusCode::OK, encode(&body))
    }

    /// `GET /v1/files/{id}/content` from `project`: an uploaded file, or a
    /// batch's output or error file.
    pub(crate) fn openai_content(&self, clock: &Clock, project: usize, id: &str) -> Response {
        if let Some(upload) = lock(&self.uploads).get(id).filter(|u| u.project == project) {
            return OpenAi::json(StatusCode::OK, upload.bytes.to_vec());
        }
        let found = id
            .strip_prefix("file-out-")
            .map(|batch| (batch, true))
            .or_else(|| id.strip_prefix("file-err-").map(|batch| (batch, false)));
        let now = clock.now();
        let text = found.and_then(|(batch, output)| {
            self.with_job(Api::OpenAi, project, batch, |job| {
                let phase = self.phase(job, now);
                let lines = self.openai_results(job, phase)?;
                let mine = lines
                    .into_iter()
                    .filter(|(is_output, _)| *is_output == output);
                Some(jsonl(mine.map(|(_, line)| line)))
            })
            .flatten()
        });
        match text {
            Some(text) => OpenAi::json(StatusCode::OK, text),
            None => openai_error(StatusCode::NOT_FOUND, &format!("No such File object: {id}")),
        }
    }

    /// The result lines of an ended OpenAI batch, each with whether it goes
    /// to the output file (else the error file); `None` before the end or
    /// for a batch without results.
    fn openai_results(
        &self,
        job: &mut Job,
        phase: Phase,
    ) -> Option<Vec<(bool, OpenAiBatchOutputLine)>> {
        let done = match phase {
            Phase::Ended(BatchEnd::Succeeded) => job.lines.len(),
            Phase::Ended(BatchEnd::Expired) => job.lines.len() / 2,
            _ => return None,
        };
        let outcomes = self.outcomes(job);
        let mut lines = Vec::new();
        // The API does not keep the input order: the simulator reverses it.
        for (n, (line, outcome)) in job.lines.iter().zip(outcomes.iter()).enumerate().rev() {
            let id = format!("batch_req_{}_{n}", job.id);
            let request_id = reply::response_id(self.seed ^ 0x7e9, (job.number << 32) | n as u64);
            if n >= done {
                let expired = OpenAiBatchOutputLine::failed(
                    &line.key,
                    "batch_expired",
                    "This request could not be executed before the completion window expired.",
                );
                lines.push((false, OpenAiBatchOutputLine { id, ..expired }));
                continue;
            }
            let (ok, status_code, body) = match outcome {
                Outcome::Answer { body, .. } => (true, 200, body.clone()),
                Outcome::Error(error) => (false, 400, json!({ "error": error })),
            };
            let response = OpenAiBatchResponse {
                status_code,
                request_id,
                body,
            };
            lines.push((
                ok,
                OpenAiBatchOutputLine {
                    id,
                    custom_id: line.key.clone(),
                    response: Some(response),
                    error: None,
                },
            ));
        }
        Some(lines)
    }

    /// An OpenAI batch object.
    fn openai_batch(&self, job: &mut Job, clock: &Clock) -> Value {
        let phase = self.phase(job, clock.now());
        let created = job.created.1.timestamp();
        let pending_end = created + i64::try_from(self.config.pending_ms / 1000).unwrap_or(0);
        let ended = self.ended_at(job).timestamp();
        let status = match phase {
            Phase::Pending => "validating",
            Phase::Running => "in_progress",
            Phase::Ended(BatchEnd::Succeeded) => "completed",
            Phase::Ended(BatchEnd::Failed) => "failed",
            Phase::Ended(BatchEnd::Expired) => "expired",
            Phase::Cancelled => "cancelled",
        };
        let total = job.lines.len();
        let mut body = json!({
            "id": job.id,
            "object": "batch",
            "endpoint": job.endpoint,
            "model": job.model,
            "errors": null,
            "input_file_id": job.input_file,
            "completion_window": "24h",
            "status": status,
            "output_file_id": null,
            "error_file_id": null,
            "created_at": created,
            "in_progress_at": null,
            "expires_at": created + 86_400,
            "finalizing_at": null,
            "completed_at": null,
            "failed_at": null,
            "expired_at": null,
            "cancelling_at": null,
            "cancelled_at": null,
            "request_counts": {"total": total, "completed": 0, "failed": 0},
            "usage": null,
            "metadata": job.metadata,
        });
        if !matches!(phase, Phase::Pending) && job.invalid.is_empty() {
            body["in_progress_at"] = json!(pending_end);
        }
        match phase {
            Phase::Pending | Phase::Running => {}
            Phase::Cancelled => {
                let at = job.cancelled.map_or(ended, |(_, at)| at.timestamp());
                body["cancelling_at"] = json!(at);
                body["cancelled_at"] = json!(at);
            }
            Phase::Ended(BatchEnd::Failed) => {
                body["failed_at"] = json!(ended);
                let data = if job.invalid.is_empty() {
                    vec![
                        json!({"code": "batch_failed", "message": "[simulated] The batch failed.", "param": null, "line": null}),
                    ]
                } else {
                    job.invalid.clone()
                };
                body["errors"] = json!({"object": "list", "data": data});
            }
            Phase::Ended(end) => {
                let field = if end == BatchEnd::Expired {
                    "expired_at"
                } else {
                    "completed_at"
                };
                body["finalizing_at"] = json!(ended);
                body[field] = json!(ended);
                let lines = self.openai_results(job, phase).unwrap_or_default();
                let outcomes = self.outcomes(job);
                let ok = lines.iter().filter(|(ok, _)| *ok).count();
                let failed = lines.len() - ok;
                if ok > 0 {
                    body["output_file_id"] = json!(format!("file-out-{}", job.id));
                }
                if failed > 0 {
                    body["error_file_id"] = json!(format!("file-err-{}", job.id));
                }
                body["request_counts"] = json!({"total": total, "completed": ok, "failed": failed});
                let done = if end == BatchEnd::Expired {
                    total / 2
                } else {
                    total
                };
                let (input, output) =
                    outcomes
                        .iter()
                        .take(done)
                        .fold((0, 0), |(i, o), outcome| match outcome {
                            Outcome::Answer {
                                input_tokens,
                                output_tokens,
                                ..
                            } => (i + input_tokens, o + output_tokens),
                            Outcome::Error(_) => (i, o),
                        });
                body["usage"] = json!({
                    "input_tokens": input,
                    "input_tokens_details": {"cached_tokens": 0},
                    "output_tokens": output,
                    "output_tokens_details": {"reasoning_tokens": 0},
                    "total_tokens": input + output,
                });
            }
        }
        body
    }
}

// ---------------------------------------------------------------------------
// Anthropic

impl Batches {
    /// `POST /v1/messages/batches` from `project`.
    pub(crate) fn anthropic_create(&self, clock: &Clock, project: usize, body: &[u8]) -> Response {
        let Ok(body) = serde_json::from_slice::<Value>(body) else {
            return Anthropic::bad_request("invalid request body: not JSON");
        };
        let lines = match anthropic_lines(&body) {
            Ok(lines) => lines,
            Err(message) => return Anthropic::bad_request(&message),
        };
        let model = serde_json::from_slice::<Value>(&lines[0].body)
            .ok()
            .and_then(|p| p["model"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let bodies: Vec<&[u8]> = lines.iter().map(|l| &l.body[..]).collect();
        let end = directed_end(&bodies);
        let mut job = self.job(Api::Anthropic, project, clock, &model, lines);
        job.id = format!("msgbatch_{}", job.id);
        if let Some(end) = end {
            job.end = end;
        }
        self.create(
            clock,
            job,
            || Anthropic::fault(StatusCode::SERVICE_UNAVAILABLE, 0),
            |batches, job, clock| batches.anthropic_batch(job, clock),
            |body| Anthropic::json(StatusCode::OK, encode(&body)),
        )
    }

    /// `GET /v1/messages/batches/{id}` from `project`.
    pub(crate) fn anthropic_get(&self, clock: &Clock, project: usize, id: &str) -> Response {
        match self.with_job(Api::Anthropic, project, id, |job| {
            self.anthropic_batch(job, clock)
        }) {
            Some(body) => Anthropic::json(StatusCode::OK, encode(&body)),
            None => anthropic_not_found(id),
        }
    }

    /// `POST /v1/messages/batches/{id}/cancel` from `project`: the batch,
    /// `canceling` (an ended batch is answered as it is).
    pub(crate) fn anthropic_cancel(&self, clock: &Clock, project: usize, id: &str) -> Response {
        let body = self.cancel(Api::Anthropic, project, id, clock, |job, cancelled| {
            let mut body = self.anthropic_batch(job, clock);
            if cancelled {
                body["processing_status"] = json!("canceling");
                body["ended_at"] = Value::Null;
                body["results_url"] = Value::Null;
                body["request_counts"] = json!({"processing": job.lines.len(),
                    "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0});
            }
            body
        });
        match body {
            Some(body) => Anthropic::json(StatusCode::OK, encode(&body)),
            None => anthropic_not_found(id),
        }
    }

    /// `GET /v1/messages/batches?limit=&after_id=` from `project`: newest
    /// first.
    pub(crate) fn anthropic_list(
        &self,
        clock: &Clock,
        project: usize,
        limit: Option<usize>,
        after: Option<&str>,
    ) -> Response {
        let limit = limit.unwrap_or(20).clamp(1, 1000);
        let body = self.page(Api::Anthropic, project, limit, after, |job| {
            self.anthropic_batch(job, clock)
        });
        Anthropic::json(StatusCode::OK, encode(&body))
    }

    /// `GET /v1/messages/batches/{id}/results` from `project`: JSONL once
    /// the batch has ended, 404 before.
    pub(crate) fn anthropic_results_file(
        &self,
        clock: &Clock,
        project: usize,
        id: &str,
    ) -> Response {
        let now = clock.now();
        let text = self
            .with_job(Api::Anthropic, project, id, |job| {
                let phase = self.phase(job, now);
                Some(jsonl(self.anthropic_results(job, phase)?))
            })
            .flatten();
        match text {
            Some(text) => {
                let mut response = Anthropic::json(StatusCode::OK, text);
                response.headers_mut().insert(
                    axum::http::header::CONTENT_TYPE,
                    axum::http::HeaderValue::from_static("application/x-jsonl"),
                );
                response
            }
            None => anthropic_not_found(id),
        }
    }

    /// The result lines of an ended Anthropic batch, in reverse input order;
    /// `None` before the end.
    fn anthropic_results(&self, job: &mut Job, phase: Phase) -> Option<Vec<Value>> {
        let (done, rest) = match phase {
            Phase::Pending | Phase::Running => return None,
            Phase::Cancelled => (0, "canceled"),
            Phase::Ended(BatchEnd::Expired) => (job.lines.len() / 2, "expired"),
            Phase::Ended(_) => (job.lines.len(), "expired"),
        };
        let failed = phase == Phase::Ended(BatchEnd::Failed);
        let outcomes = self.outcomes(job);
        let lines = job
            .lines
            .iter()
            .zip(outcomes.iter())
            .enumerate()
            .rev()
            .map(|(n, (line, outcome))| {
                let result = match outcome {
                    _ if n >= done => json!({ "type": rest }),
                    _ if failed => json!({"type": "errored", "error":
                        anthropic_error("api_error", "[simulated] Internal server error")}),
                    Outcome::Answer { body, .. } => json!({"type": "succeeded", "message": body}),
                    Outcome::Error(error) => json!({"type": "errored", "error": error}),
                };
                json!({"custom_id": line.key, "result": result})
            })
            .collect();
        Some(lines)
    }

    /// An Anthropic Message Batch object.
    fn anthropic_batch(&self, job: &mut Job, clock: &Clock) -> Value {
        let phase = self.phase(job, clock.now());
        let created = job.created.1;
        let total = job.lines.len();
        let mut body = json!({
            "id": job.id,
            "type": "message_batch",
            "processing_status": "in_progress",
            "request_counts": {"processing": total, "succeeded": 0, "errored": 0,
                "canceled": 0, "expired": 0},
            "ended_at": null,
            "created_at": rfc3339(created),
            "expires_at": rfc3339(created + chrono::Duration::hours(24)),
            "archived_at": null,
            "cancel_initiated_at": job.cancelled.map(|(_, at)| rfc3339(at)),
            "results_url": null,
        });
        let Some(lines) = self.anthropic_results(job, phase) else {
            return body;
        };
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for line in &lines {
            let kind = line["result"]["type"].as_str().unwrap_or_default();
            *counts.entry(kind).or_default() += 1;
        }
        let count = |kind: &str| counts.get(kind).copied().unwrap_or(0);
        body["processing_status"] = json!("ended");
        body["ended_at"] = json!(rfc3339(self.ended_at(job)));
        body["request_counts"] = json!({"processing": 0, "succeeded": count("succeeded"),
            "errored": count("errored"), "canceled": count("canceled"),
            "expired": count("expired")});
        body["results_url"] = json!(format!(
            "https://api.anthropic.com/v1/messages/batches/{}/results",
            job.id
        ));
        body
    }
}

/// The requests of an Anthropic create body, checked as the API checks them
/// at create time (the params themselves only when the batch runs).
fn anthropic_lines(body: &Value) -> Result<Vec<Line>, String> {
    let Some(requests) = body["requests"].as_array() else {
        return Err("requests: Field required".to_owned());
    };
    if requests.is_empty() {
        return Err("requests: List should have at least 1 item after validation, not 0".into());
    }
    if requests.len() > ANTHROPIC_MAX_REQUESTS {
        return Err(format!(
            "requests: List should have at most {ANTHROPIC_MAX_REQUESTS} items after validation, not {}",
            requests.len()
        ));
    }
    let fine = |id: &str| {
        (1..=64).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let mut seen = HashSet::new();
    let mut lines = Vec::with_capacity(requests.len());
    for (n, request) in requests.iter().enumerate() {
        let Some(id) = request["custom_id"].as_str() else {
            return Err(format!("requests.{n}.custom_id: Field required"));
        };
        if !fine(id) {
            return Err(format!(
                "requests.{n}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
            ));
        }
        if !seen.insert(id) {
            return Err(format!(
                "Duplicate custom_id: {id}. Each request in a batch must have a unique custom_id."
            ));
        }
        if !request["params"].is_object() {
            return Err(format!("requests.{n}.params: Field required"));
        }
        lines.push(Line {
            key: id.to_owned(),
            body: encode(&request["params"]).to_vec(),
        });
    }
    Ok(lines)
}

/// An Anthropic `ErrorResponse`, as a batch's errored result holds it.
fn anthropic_error(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": null})
}

fn anthropic_not_found(id: &str) -> Response {
    anthropic::error(
        StatusCode::NOT_FOUND,
        "not_found_error",
        &format!("Message batch not found: {id}"),
    )
}

/// `value[camel]`, else `value[snake]` (the API takes either spelling).
fn either<'a>(value: &'a Value, camel: &str, snake: &str) -> &'a Value {
    match value.get(camel) {
        Some(v) if !v.is_null() => v,
        _ => &value[snake],
    }
}

/// The requests of a Gemini JSONL input file: `{"key", "request"}` per line.
fn gemini_file_lines(bytes: &[u8]) -> Result<Vec<Line>, String> {
    let mut lines = Vec::new();
    for (n, text) in bytes.split(|&b| b == b'\n').enumerate() {
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let value: Value = serde_json::from_slice(text)
            .map_err(|e| format!("Invalid JSON in the input file at line {}: {e}", n + 1))?;
        let key = value["key"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("Line {} of the input file has no string \"key\".", n + 1))?;
        if !value["request"].is_object() {
            return Err(format!(
                "Line {} of the input file has no \"request\".",
                n + 1
            ));
        }
        lines.push(Line {
            key,
            body: encode(&value["request"]).to_vec(),
        });
    }
    Ok(lines)
}

/// The inline requests of a Gemini create: `requests.requests[]`, each
/// `{request, metadata: {key}}`; a request without a key is keyed by its
/// position.
fn inline_lines(input: &Value) -> Result<Vec<Line>, String> {
    let Some(requests) = input["requests"]["requests"].as_array() else {
        return Err(
            "* BatchGenerateContentRequest.batch.input_config: input_config is not specified"
                .into(),
        );
    };
    Ok(requests
        .iter()
        .enumerate()
        .map(|(n, r)| Line {
            key: r["metadata"]["key"]
                .as_str()
                .map_or_else(|| n.to_string(), str::to_owned),
            body: encode(&r["request"]).to_vec(),
        })
        .collect())
}

/// The requests of an OpenAI input file, the validation errors
/// (`BatchError`s with their line) and the model of its first request.
fn openai_lines(bytes: &[u8], endpoint: &str) -> (Vec<Line>, Vec<Value>, String) {
    let mut lines = Vec::new();
    let mut invalid = Vec::new();
    let mut model: Option<String> = None;
    let mut seen = HashSet::new();
    let fail = |invalid: &mut Vec<Value>, code: &str, message: String, line: usize| {
        invalid.push(json!({"code": code, "message": message, "param": null, "line": line}));
    };
    for (n, text) in bytes.split(|&b| b == b'\n').enumerate() {
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Ok(value) = serde_json::from_slice::<Value>(text) else {
            fail(
                &mut invalid,
                "invalid_json_line",
                "This line is not parseable as valid JSON.".into(),
                n + 1,
            );
            continue;
        };
        let Some(key) = value["custom_id"].as_str() else {
            fail(
                &mut invalid,
                "invalid_request",
                "Missing required parameter: 'custom_id'.".into(),
                n + 1,
            );
            continue;
        };
        if value["url"].as_str() != Some(endpoint) {
            fail(&mut invalid, "invalid_url",
                format!("The URL provided for this request does not match the batch endpoint {endpoint}."),
                n + 1,
            );
            continue;
        }
        if !seen.insert(key.to_owned()) {
            fail(
                &mut invalid,
                "duplicate_custom_id",
                format!("The custom_id for this request is a duplicate of another request: {key}"),
                n + 1,
            );
            continue;
        }
        let this = value["body"]["model"].as_str().unwrap_or_default();
        match &model {
            None => model = Some(this.to_owned()),
            Some(first) if first != this => {
                fail(
                    &mut invalid,
                    "model_mismatch",
                    format!(
                        "The model of this request ({this}) does not match the batch's ({first})."
                    ),
                    n + 1,
                );
                continue;
            }
            Some(_) => {}
        }
        lines.push(Line {
            key: key.to_owned(),
            body: encode(&value["body"]).to_vec(),
        });
    }
    if lines.is_empty() && invalid.is_empty() {
        fail(
            &mut invalid,
            "empty_file",
            "The input file is empty.".into(),
            0,
        );
    }
    (lines, invalid, model.unwrap_or_default())
}

/// One field of a multipart form.
struct Field<'a> {
    name: String,
    filename: Option<String>,
    data: &'a [u8],
}

/// The fields of a `multipart/form-data` body, or `None` if it is not one.
fn multipart<'a>(content_type: &str, body: &'a [u8]) -> Option<Vec<Field<'a>>> {
    let boundary = content_type
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))?
        .trim_matches('"');
    let delimiter = format!("--{boundary}");
    let mut fields = Vec::new();
    let mut rest = body;
    loop {
        let at = find(rest, delimiter.as_bytes())?;
        rest = &rest[at + delimiter.len()..];
        if rest.starts_with(b"--") {
            return Some(fields);
        }
        rest = rest.strip_prefix(b"\r\n")?;
        let head_end = find(rest, b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&rest[..head_end]).into_owned();
        rest = &rest[head_end + 4..];
        let end = find(rest, format!("\r\n{delimiter}").as_bytes())?;
        let data = &rest[..end];
        rest = &rest[end + 2..];
        let disposition = head
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("content-disposition"))?;
        let param = |name: &str| {
            disposition.split(';').find_map(|p| {
                p.trim()
                    .strip_prefix(name)
                    .and_then(|v| v.strip_prefix('='))
                    .map(|v| v.trim_matches('"').to_owned())
            })
        };
        fields.push(Field {
            name: param("name")?,
            filename: param("filename"),
            data,
        });
    }
}

/// The end that `texts` ask for: `[[sim:batch_expired]]` before
/// `[[sim:batch_failed]]`; `None` if neither.
fn directed_end(texts: &[&[u8]]) -> Option<BatchEnd> {
    let said = |directive: &str| {
        texts
            .iter()
            .any(|t| find(t, directive.as_bytes()).is_some())
    };
    if said(EXPIRED_DIRECTIVE) {
        Some(BatchEnd::Expired)
    } else if said(FAILED_DIRECTIVE) {
        Some(BatchEnd::Failed)
    } else {
        None
    }
}

/// `values` as JSON Lines: one encoded value and a newline each.
fn jsonl<T: Serialize>(values: impl IntoIterator<Item = T>) -> Vec<u8> {
    let mut text = Vec::new();
    for value in values {
        text.extend_from_slice(&encode(&value));
        text.push(b'\n');
    }
    text
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// An OpenAI File object.
fn file_object(id: &str, upload: &Upload, purpose: &str, bytes: usize) -> Value {
    json!({
        "id": id, "object": "file", "bytes": bytes, "created_at": upload.created,
        "expires_at": upload.created + 30 * 86_400, "filename": upload.filename,
        "purpose": purpose, "status": "processed", "status_details": null
    })
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

fn gemini_error(status: StatusCode, message: &str) -> Response {
    envelope(status, "INVALID_ARGUMENT", message)
}

fn gemini_not_found(name: &str) -> Response {
    envelope(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        &format!("Requested entity was not found: {name}"),
    )
}

fn openai_error(status: StatusCode, message: &str) -> Response {
    openai::error(status, message, "invalid_request_error", None)
}

#[cfg(test)]
mod tests {
    use crate::sim::{BatchesConfig, ProjectConfig, SimConfig, Simulator};
    use crate::types::ApiKey;
    use axum::body::Body;
    use axum::http::Request;
    use serde_json::{json, Value};
    use std::time::Duration;
    use tower::ServiceExt;

    async fn call(sim: &Simulator, method: &str, path: &str, body: Option<Value>) -> Value {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("x-goog-api-key", "key-p")
            .header("content-type", "application/json")
            .body(Body::from(body.map(|b| b.to_string()).unwrap_or_default()))
            .expect("a request");
        let Ok(response) = sim.router().oneshot(request).await;
        assert_eq!(response.status(), 200);
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("a body");
        serde_json::from_slice(&bytes).expect("JSON")
    }

    #[tokio::test]
    async fn an_inline_gemini_batch_answers_inline_in_the_recorded_shape() {
        let config = SimConfig {
            projects: vec![ProjectConfig {
                name: "p".into(),
                keys: vec![ApiKey::new("key-p")],
                limits: Default::default(),
            }],
            batches: BatchesConfig {
                pending_ms: 1000,
                running_ms: 1000,
                ..BatchesConfig::default()
            },
            ..SimConfig::default()
        };
        let sim = Simulator::new(&config).expect("a simulator");
        let request = |text: &str, key: &str| json!({"request": {"contents": [{"parts": [{"text": text}]}]}, "metadata": {"key": key}});
        let body = json!({"batch": {"display_name": "inline", "input_config": {"requests": {
            "requests": [request("one", "a"), request("two", "b")]}}}});
        let created = call(
            &sim,
            "POST",
            "/v1beta/models/gemini-2.5-flash:batchGenerateContent",
            Some(body),
        )
        .await;
        assert_eq!(created["metadata"]["state"], "BATCH_STATE_PENDING");
        assert!(
            created.get("done").is_none(),
            "no done key until done: {created}"
        );
        assert_eq!(
            created["metadata"]["batchStats"],
            json!({"requestCount": "2", "pendingRequestCount": "2"})
        );
        sim.advance_clock(Duration::from_secs(3));
        let name = created["name"].as_str().expect("a name");
        let done = call(&sim, "GET", &format!("/v1beta/{name}"), None).await;
        assert_eq!(done["done"], true);
        assert_eq!(done["metadata"]["state"], "BATCH_STATE_SUCCEEDED");
        assert_eq!(
            done["metadata"]["batchStats"],
            json!({"requestCount": "2", "successfulRequestCount": "2"})
        );
        let inlined = &done["response"]["inlinedResponses"]["inlinedResponses"];
        assert_eq!(inlined[1]["metadata"]["key"], "b");
        assert!(
            inlined[0]["response"]["candidates"][0]["content"]["parts"][0]["text"]
                .as_str()
                .is_some_and(|t| t.contains("digest:"))
        );
        assert_eq!(
            done["metadata"]["output"]["inlinedResponses"],
            done["response"]["inlinedResponses"]
        );
        let listed = call(&sim, "GET", "/v1beta/batches", None).await;
        assert_eq!(listed["operations"][0]["name"], name);
        assert!(listed["operations"][0].get("response").is_none());
    }
}
