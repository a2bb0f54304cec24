//! Job files: JSONL (one object per line) or CSV (a header row), read as a
//! stream of [`Item`]s. Every problem names the file, the line and the field.

use std::path::PathBuf;

/// One prompt to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// The user's id for the item, unique within the job.
    pub id: String,
    /// 1-based line of the item in the job file (CSV: the record's line).
    pub line: u64,
    /// The user text.
    pub prompt: String,
    /// Model override; the config's default model when `None`.
    pub model: Option<String>,
    /// Optional system instruction.
    pub system: Option<String>,
    /// Optional output cap.
    pub max_output_tokens: Option<u32>,
    /// Optional sampling temperature.
    pub temperature: Option<f32>,
}

/// A problem with one item of a job file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}:{line}: {}{reason}", field.as_ref().map(|f| format!("field `{f}`: ")).unwrap_or_default())]
pub struct ItemError {
    /// The job file.
    pub path: PathBuf,
    /// 1-based line number.
    pub line: u64,
    /// The offending field, when one is to blame.
    pub field: Option<String>,
    /// What is wrong, as a lowercase fragment.
    pub reason: String,
}
