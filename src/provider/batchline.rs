//! The line shapes of the providers' own batch files: what one line of an
//! OpenAI Batch API input or output file, or of a Gemini batch input or
//! results file, holds. Pure wire types (serde), shared by whatever reads
//! or writes such files: a batch file run as a job, results written in the
//! batch output shape, a client of the batch endpoints (`provider::batch`,
//! whose input lines and results parsing use these types) and the
//! simulator's batch endpoints.
//!
//! - OpenAI (<https://platform.openai.com/docs/guides/batch>; openai-openapi
//!   `BatchRequestInput` / `BatchRequestOutput`): input
//!   `{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}`;
//!   output `{"id": "batch_req_…", "custom_id", "response": {"status_code",
//!   "request_id", "body"} | null, "error": {"code", "message"} | null}`. An
//!   HTTP-level failure is a `response` whose `status_code` is not 200 (with
//!   `body.error`); `error` is for failures without an HTTP answer (e.g.
//!   `batch_expired`). Output lines are keyed by `custom_id`, in any order.
//! - Gemini (<https://ai.google.dev/gemini-api/docs/batch-api>): input
//!   `{"key", "request": GenerateContentRequest}`; results
//!   `{"response": GenerateContentResponse, "key"}` (the key written last, as
//!   in the recorded results of google-gemini/cookbook
//!   `quickstarts/Batch_mode.ipynb`), or `{"error": Status, "key"}` for a
//!   failed request (read also under the name `status`, which some readers
//!   of the results accept).
//!
//! Read leniently: a field a reader can do without (an output line's `id`,
//! a response's `request_id`, an error's `code`) is empty when missing.
//!
//! Owns: these line types and the constants they name. Never: reading or
//! writing a file, checking a line against a job, or sending anything (the
//! lines of a keyfan request are built beside its online body, in
//! `provider::batch`).

use super::Usage;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// The one `url` (and batch `endpoint`) of an OpenAI batch line that keyfan
/// sends: chat completions.
pub const OPENAI_CHAT_URL: &str = "/v1/chat/completions";

/// One line of an OpenAI Batch API input file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenAiBatchInputLine {
    /// The caller's id of the request, unique in the file.
    pub custom_id: String,
    /// The HTTP method: only `POST`.
    pub method: String,
    /// The endpoint, e.g. [`OPENAI_CHAT_URL`].
    pub url: String,
    /// The endpoint's request body, its `model` included.
    pub body: Map<String, Value>,
}

/// One line of an OpenAI Batch API output (or error) file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenAiBatchOutputLine {
    /// The request's id in the batch (`batch_req_…`).
    #[serde(default)]
    pub id: String,
    /// The `custom_id` of the input line.
    pub custom_id: String,
    /// The HTTP answer, when there was one (a failed one included).
    pub response: Option<OpenAiBatchResponse>,
    /// Why there was no HTTP answer.
    pub error: Option<OpenAiBatchError>,
}

/// The HTTP answer of an [`OpenAiBatchOutputLine`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenAiBatchResponse {
    /// The HTTP status: 200 for an answer.
    pub status_code: u16,
    /// The API's id of the request.
    #[serde(default)]
    pub request_id: String,
    /// The endpoint's answer (a `chat.completion`), or its error envelope.
    #[serde(default)]
    pub body: Value,
}

/// The error of an [`OpenAiBatchOutputLine`] without an HTTP answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenAiBatchError {
    /// A machine-readable code, e.g. `batch_expired`.
    #[serde(default)]
    pub code: String,
    /// What happened.
    #[serde(default)]
    pub message: String,
}

/// One line of a Gemini batch input file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeminiBatchInputLine {
    /// The caller's key of the request.
    pub key: String,
    /// A `GenerateContentRequest` (its model is the batch's).
    pub request: Map<String, Value>,
}

/// One line of a Gemini batch results file: a response or an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeminiBatchOutputLine {
    /// The `GenerateContentResponse`, for a request that was answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<Value>,
    /// Why the request was not answered.
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "status")]
    pub error: Option<GeminiBatchStatus>,
    /// The `key` of the input line.
    pub key: String,
}

/// A `google.rpc.Status` as a failed line of a Gemini results file carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeminiBatchStatus {
    /// An HTTP-like code, e.g. 400 (0 when missing).
    #[serde(default)]
    pub code: i32,
    /// What happened.
    #[serde(default)]
    pub message: String,
    /// The status's name, e.g. `INVALID_ARGUMENT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Further details (`google.rpc` detail messages), kept as they came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

/// What an answered request said, to be written as a provider's answer body.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Answered<'a> {
    /// The visible text.
    pub text: &'a str,
    /// The model.
    pub model: &'a str,
    /// Why the output ended, as the API spelled it.
    pub finish_reason: Option<&'a str>,
    /// What the API billed.
    pub usage: Usage,
    /// When the answer is written, in Unix seconds.
    pub created: i64,
}

/// 32 hex digits of the SHA-256 of `id`: the stable request id the output
/// lines give a request (the same on every rewrite of the results).
fn request_hex(id: &str) -> String {
    hex::encode(&Sha256::digest(id.as_bytes())[..16])
}

impl OpenAiBatchOutputLine {
    /// The line of the request `custom_id` answered with `answer`: a 200
    /// whose body is a `chat.completion` carrying its text and usage.
    pub fn answered(custom_id: &str, answer: &Answered<'_>) -> Self {
        let hex = request_hex(custom_id);
        let usage = answer.usage;
        let body = json!({
            "id": format!("chatcmpl-{hex}"),
            "object": "chat.completion",
            "created": answer.created,
            "model": answer.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": answer.text, "refusal": null},
                "logprobs": null,
                "finish_reason": answer.finish_reason,
            }],
            "usage": {
                "prompt_tokens": usage.input_tokens,
                "completion_tokens": usage.output_tokens,
                "total_tokens": usage.input_tokens + usage.output_tokens,
                "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
                "completion_tokens_details": {"reasoning_tokens": usage.thinking_tokens},
            },
        });
        OpenAiBatchOutputLine {
            id: format!("batch_req_{hex}"),
            custom_id: custom_id.to_owned(),
            response: Some(OpenAiBatchResponse {
                status_code: 200,
                request_id: hex,
                body,
            }),
            error: None,
        }
    }

    /// The line of the request `custom_id` that got no answer.
    pub fn failed(custom_id: &str, code: &str, message: &str) -> Self {
        OpenAiBatchOutputLine {
            id: format!("batch_req_{}", request_hex(custom_id)),
            custom_id: custom_id.to_owned(),
            response: None,
            error: Some(OpenAiBatchError {
                code: code.to_owned(),
                message: message.to_owned(),
            }),
        }
    }
}

impl GeminiBatchOutputLine {
    /// The line of the request `key` answered with `answer`: a
    /// `GenerateContentResponse` carrying its text and usage.
    pub fn answered(key: &str, answer: &Answered<'_>) -> Self {
        let usage = answer.usage;
        let mut metadata = json!({
            "promptTokenCount": usage.input_tokens,
            "candidatesTokenCount": usage.output_tokens.saturating_sub(usage.thinking_tokens),
            "totalTokenCount": usage.input_tokens + usage.output_tokens,
        });
        // Gemini leaves out the counts that are zero.
        for (name, count) in [
            ("thoughtsTokenCount", usage.thinking_tokens),
            ("cachedContentTokenCount", usage.cached_tokens),
        ] {
            if count > 0 {
                metadata[name] = count.into();
            }
        }
        let mut candidate = json!({
            "content": {"parts": [{"text": answer.text}], "role": "model"},
            "index": 0,
        });
        if let Some(reason) = answer.finish_reason {
            candidate["finishReason"] = reason.into();
        }
        let response = json!({
            "candidates": [candidate],
            "usageMetadata": metadata,
            "modelVersion": answer.model,
            "responseId": request_hex(key),
        });
        GeminiBatchOutputLine {
            response: Some(response),
            error: None,
            key: key.to_owned(),
        }
    }

    /// The line of the request `key` that got no answer.
    pub fn failed(key: &str, code: i32, status: &str, message: &str) -> Self {
        GeminiBatchOutputLine {
            response: None,
            error: Some(GeminiBatchStatus {
                code,
                message: message.to_owned(),
                status: Some(status.to_owned()),
                details: None,
            }),
            key: key.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The recorded lines of the providers' documentation and recordings
    /// (see `tests/fixtures/batch/README.md`) read into these types and
    /// back without losing a field.
    #[test]
    fn recorded_lines_round_trip() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/batch/");
        let read = |name: &str| std::fs::read_to_string(format!("{dir}{name}")).unwrap();
        fn same<T: serde::de::DeserializeOwned + Serialize>(text: &str) -> usize {
            let mut n = 0;
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let value: Value = serde_json::from_str(line).unwrap();
                let typed: T = serde_json::from_value(value.clone()).unwrap();
                assert_eq!(serde_json::to_value(&typed).unwrap(), value, "{line}");
                n += 1;
            }
            n
        }
        assert!(same::<OpenAiBatchInputLine>(&read("openai_batch_input.jsonl")) >= 2);
        assert!(same::<OpenAiBatchOutputLine>(&read("openai_batch_output.jsonl")) >= 3);
        assert!(same::<GeminiBatchInputLine>(&read("gemini_batch_input.jsonl")) >= 2);
        assert!(same::<GeminiBatchOutputLine>(&read("gemini_batch_output.jsonl")) >= 1);
    }

    #[test]
    fn a_gemini_error_line_reads_under_either_name() {
        for name in ["error", "status"] {
            let line = format!(
                r#"{{"key":"k","{name}":{{"code":400,"message":"bad","status":"INVALID_ARGUMENT"}}}}"#
            );
            let parsed: GeminiBatchOutputLine = serde_json::from_str(&line).unwrap();
            assert_eq!(
                parsed,
                GeminiBatchOutputLine::failed("k", 400, "INVALID_ARGUMENT", "bad")
            );
        }
    }

    #[test]
    fn answered_lines_carry_the_usage_in_each_providers_names() {
        let answer = Answered {
            text: "hi",
            model: "m",
            finish_reason: Some("stop"),
            usage: Usage {
                input_tokens: 10,
                cached_tokens: 4,
                output_tokens: 7,
                thinking_tokens: 5,
                cache_write_tokens: 0,
            },
            created: 1_700_000_000,
        };
        let openai = serde_json::to_value(OpenAiBatchOutputLine::answered("c1", &answer)).unwrap();
        let response = &openai["response"];
        assert_eq!(response["status_code"], 200);
        assert_eq!(response["body"]["choices"][0]["message"]["content"], "hi");
        assert_eq!(response["body"]["usage"]["total_tokens"], 17);
        assert_eq!(
            response["body"]["usage"]["completion_tokens_details"]["reasoning_tokens"],
            5
        );
        assert_eq!(openai["error"], Value::Null);
        assert!(openai["id"].as_str().unwrap().starts_with("batch_req_"));
        let gemini = serde_json::to_value(GeminiBatchOutputLine::answered("k1", &answer)).unwrap();
        let metadata = &gemini["response"]["usageMetadata"];
        assert_eq!(
            metadata["candidatesTokenCount"], 2,
            "thinking is counted apart"
        );
        assert_eq!(metadata["thoughtsTokenCount"], 5);
        assert_eq!(metadata["cachedContentTokenCount"], 4);
        assert_eq!(
            gemini["response"]["candidates"][0]["content"]["parts"][0]["text"],
            "hi"
        );
        assert!(gemini.get("error").is_none());
    }
}
