//! The providers' Batch APIs, on the wire: one JSONL input line per request,
//! create (input uploaded through the Files API), get, list, cancel, the
//! results downloaded to disk as they arrive, and each results line parsed
//! into its key and its reply or error. Half the online price, results
//! within 24 hours (Gemini: 48 h before `EXPIRED`).
//!
//! - `gemini`: `models/{m}:batchGenerateContent` with a JSONL file uploaded
//!   through the resumable Files API (`{"key", "request"}` lines, field names
//!   in snake_case as the batch parser wants them), `batches/{id}`, `:cancel`,
//!   the list, and `download/v1beta/{responsesFile}:download?alt=media`.
//!   Sources: <https://ai.google.dev/gemini-api/docs/batch-api>,
//!   <https://ai.google.dev/api/batch-api>.
//! - `openai`: `POST /v1/files` (multipart, `purpose=batch`), `/v1/batches`
//!   create, get, list and cancel, and `/v1/files/{id}/content` of the
//!   output and error files. Source:
//!   <https://platform.openai.com/docs/guides/batch>.
//! - `anthropic`: Message Batches, `POST /v1/messages/batches` with the
//!   requests inline (`{"custom_id", "params"}` each), get, list, cancel and
//!   the `results_url` download. Sources:
//!   <https://platform.claude.com/docs/en/build-with-claude/batch-processing>,
//!   anthropic-sdk-python `resources/messages/batches.py`.
//!
//! The lines themselves are the shared wire types of
//! [`super::batchline`]: this module builds a request's input line and
//! reads a results line into a [`BatchResult`].
//!
//! Creates are not idempotent ("If you send the same creation request
//! twice, two separate batch jobs will be created", Gemini's guide): the
//! caller names each batch (Gemini's display name, OpenAI's metadata) so
//! that a batch whose create answer was lost can be found by listing.
//! Anthropic's batches carry no name: see
//! [`Client::anthropic_batches_created`].

mod anthropic;
mod gemini;
mod openai;

pub use anthropic::anthropic_custom_id;

use super::batchline::{GeminiBatchInputLine, OpenAiBatchInputLine};
use super::{ApiError, Client, ProviderKind, RawRequest, Reply, Request};
use crate::types::ApiKey;
use std::path::Path;

/// Where a batch stands, across providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BatchState {
    /// Accepted, not started (Gemini `PENDING`, OpenAI `validating`).
    Pending,
    /// Being processed (`RUNNING`, `in_progress`, `finalizing`,
    /// `cancelling`).
    Running,
    /// Ended with results (`SUCCEEDED`, `completed`).
    Succeeded,
    /// Ended without results (`FAILED`, `failed`).
    Failed,
    /// Cancelled (`CANCELLED`, `cancelled`).
    Cancelled,
    /// Not done within its window (`EXPIRED`, `expired`): Gemini returns
    /// nothing, OpenAI what was done.
    Expired,
}

impl BatchState {
    /// Whether the batch will not change any more.
    pub fn is_terminal(self) -> bool {
        !matches!(self, BatchState::Pending | BatchState::Running)
    }
}

/// A batch as the provider describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchJob {
    /// The provider's id: `batches/…` (Gemini), `batch_…` (OpenAI).
    pub name: String,
    /// The name keyfan gave it (Gemini `displayName`, OpenAI
    /// `metadata.keyfan_name`); empty when none.
    pub display_name: String,
    /// Where it stands.
    pub state: BatchState,
    /// Requests in it.
    pub total: u64,
    /// Requests that succeeded, once known.
    pub succeeded: u64,
    /// Requests that failed, once known.
    pub failed: u64,
    /// The files to download for its results, in order (Gemini's responses
    /// file; OpenAI's output file, then its error file).
    pub results: Vec<String>,
    /// Why it failed, expired or was cancelled, in the API's words.
    pub error: Option<String>,
}

/// A batch's input, written to disk beforehand.
#[derive(Debug, Clone, Copy)]
pub struct BatchInput<'a> {
    /// The JSONL file ([`Client::write_batch_line`] lines).
    pub path: &'a Path,
    /// Its size in bytes.
    pub size: u64,
    /// The model every line asks for.
    pub model: &'a str,
    /// The name to find it by again.
    pub display_name: &'a str,
}

/// One line of a batch's results.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchResult {
    /// The key (custom id) of the request it answers.
    pub key: String,
    /// What became of the request.
    pub outcome: BatchOutcome,
}

/// What became of one request of a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchOutcome {
    /// Answered.
    Reply(Reply),
    /// Failed inside the batch (or answered with no usable output), with
    /// the API's message and class.
    Failed(ApiError),
    /// Not carried out before the batch ended (OpenAI `batch_expired`):
    /// worth submitting again.
    Unfinished,
}

/// Checks that `id` (a batch's or a file's id, from the API or the state
/// file) is letters, digits, `-` and `_` only, before it goes into a URL.
fn checked(id: &str, what: &str) -> Result<(), ApiError> {
    let fine = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    if id.is_empty() || !id.bytes().all(fine) {
        return Err(super::common::api_error(
            super::ErrorClass::ItemInvalid,
            None,
            format!("`{id}` is not {what}"),
        ));
    }
    Ok(())
}

/// One page of a list in OpenAI's and Anthropic's shape: the items, whether
/// more follow, and the id to list after.
#[derive(Debug, serde::Deserialize)]
struct CursorPage<T> {
    #[serde(default = "Vec::new")]
    data: Vec<T>,
    #[serde(default)]
    has_more: bool,
    #[serde(default)]
    last_id: Option<String>,
}

/// An answer that is not what the Batch API sends: worth asking again.
fn undecodable(what: &str, e: &serde_json::Error) -> ApiError {
    super::common::api_error(
        super::ErrorClass::Transient,
        None,
        format!("the {what} answer is not what the Batch API sends: {e}"),
    )
}

/// Writes a serialized input line and its newline.
fn write_line(
    line: serde_json::Result<Vec<u8>>,
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    out.write_all(&line.map_err(std::io::Error::other)?)?;
    out.write_all(b"\n")
}

impl Client {
    /// Writes `req`, keyed `key`, as one line (newline included) of this
    /// provider's batch input file.
    pub fn write_batch_line(
        &self,
        key: &str,
        req: &Request<'_>,
        out: &mut impl std::io::Write,
    ) -> std::io::Result<()> {
        let line = match self.kind {
            ProviderKind::Gemini => serde_json::to_vec(&GeminiBatchInputLine::new(key, req)),
            ProviderKind::Anthropic => serde_json::to_vec(&anthropic::AnthropicBatchLine::new(
                key,
                req,
                self.default_max_output_tokens,
            )),
            _ => serde_json::to_vec(&OpenAiBatchInputLine::new(key, req)),
        };
        write_line(line, out)
    }

    /// Writes `req`, a body written elsewhere (a line of a provider's own
    /// batch file), keyed `key`, as one line (newline included) of this
    /// provider's batch input file: the body [`Client::generate_raw`] would
    /// send. A body written for another API than this client's is an
    /// [`std::io::ErrorKind::InvalidInput`] error.
    pub fn write_raw_batch_line(
        &self,
        key: &str,
        req: &RawRequest<'_>,
        out: &mut impl std::io::Write,
    ) -> std::io::Result<()> {
        let line = match (self.kind, req.body.kind) {
            (ProviderKind::Gemini, ProviderKind::Gemini) => {
                serde_json::to_vec(&GeminiBatchInputLine::raw(key, req))
            }
            (ProviderKind::Openai, ProviderKind::Openai) => {
                serde_json::to_vec(&OpenAiBatchInputLine::raw(key, req))
            }
            (client, body) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{body:?} request bodies cannot go in a {client:?} batch")
                        .to_lowercase(),
                ))
            }
        };
        write_line(line, out)
    }

    /// Uploads `input` and creates a batch of it. A failure after the
    /// create was sent may hide a batch that exists: find it by its display
    /// name ([`Client::list_batches`]) before creating another.
    pub async fn create_batch(
        &self,
        key: &ApiKey,
        input: BatchInput<'_>,
    ) -> Result<BatchJob, ApiError> {
        let result = match self.kind {
            ProviderKind::Gemini => gemini::create(self, key, input).await,
            ProviderKind::Anthropic => anthropic::create(self, key, input).await,
            _ => openai::create(self, key, input).await,
        };
        super::without_key(result, key)
    }

    /// The batch `name` as it stands.
    pub async fn get_batch(&self, key: &ApiKey, name: &str) -> Result<BatchJob, ApiError> {
        let result = match self.kind {
            ProviderKind::Gemini => gemini::get(self, key, name).await,
            ProviderKind::Anthropic => anthropic::get(self, key, name).await,
            _ => openai::get(self, key, name).await,
        };
        super::without_key(result, key)
    }

    /// Asks for the batch `name` to be cancelled; it ends `Cancelled` (or
    /// with what it finished) a little later.
    pub async fn cancel_batch(&self, key: &ApiKey, name: &str) -> Result<(), ApiError> {
        let result = match self.kind {
            ProviderKind::Gemini => gemini::cancel(self, key, name).await,
            ProviderKind::Anthropic => anthropic::cancel(self, key, name).await,
            _ => openai::cancel(self, key, name).await,
        };
        super::without_key(result, key)
    }

    /// Every batch the key's account (project) has, newest first, all pages.
    pub async fn list_batches(&self, key: &ApiKey) -> Result<Vec<BatchJob>, ApiError> {
        let result = match self.kind {
            ProviderKind::Gemini => gemini::list(self, key).await,
            ProviderKind::Anthropic => anthropic::list(self, key).await,
            _ => openai::list(self, key).await,
        };
        super::without_key(result, key)
    }

    /// Downloads `batch`'s results files to `dest` (created or truncated),
    /// streamed: never whole in memory. Returns the bytes written.
    pub async fn download_batch_results(
        &self,
        key: &ApiKey,
        batch: &BatchJob,
        dest: &Path,
    ) -> Result<u64, ApiError> {
        let result = async {
            let mut out = tokio::fs::File::create(dest).await.map_err(|e| {
                super::common::api_error(
                    super::ErrorClass::ItemInvalid,
                    None,
                    format!("could not create {}: {e}", dest.display()),
                )
            })?;
            let mut written = 0;
            for file in &batch.results {
                written += match self.kind {
                    ProviderKind::Gemini => gemini::download(self, key, file, &mut out).await?,
                    ProviderKind::Anthropic => {
                        anthropic::download(self, key, &batch.name, file, &mut out).await?
                    }
                    _ => openai::download(self, key, file, &mut out).await?,
                };
            }
            Ok(written)
        }
        .await;
        super::without_key(result, key)
    }

    /// An Anthropic account's batches created from `from` to `to`, newest
    /// first. Anthropic batches carry no name nor metadata: a batch whose
    /// create answer was lost can only be told by when it was created and
    /// how many requests it holds (and, once ended, by the run scope in its
    /// custom ids). Other providers: their whole list.
    pub async fn anthropic_batches_created(
        &self,
        key: &ApiKey,
        from: chrono::DateTime<chrono::Utc>,
        to: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<BatchJob>, ApiError> {
        let result = match self.kind {
            ProviderKind::Anthropic => anthropic::created_between(self, key, from, to).await,
            _ => self.list_batches(key).await,
        };
        super::without_key(result, key)
    }

    /// Parses one line of this provider's batch results.
    pub fn parse_batch_line(&self, line: &[u8]) -> Result<BatchResult, ApiError> {
        match self.kind {
            ProviderKind::Gemini => gemini::parse_line(line),
            ProviderKind::Anthropic => anthropic::parse_line(line),
            _ => openai::parse_line(line),
        }
    }
}

#[cfg(test)]
mod tests;
