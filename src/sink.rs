//! Results files: one row per finished item, JSONL or CSV, appended from
//! rows the store has already committed and flushed after every batch.
//!
//! Owns: the results formats and where they go (a file or standard output).
//! Never: deciding an outcome, or writing a row the store has not committed.

use crate::provider::batchline::{Answered, GeminiBatchOutputLine, OpenAiBatchOutputLine};
use crate::provider::{ProviderKind, Usage};
use crate::store::{round_usd, ItemRow, ItemStatus};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// Where results go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A file; `.csv` selects CSV, anything else JSONL.
    File(PathBuf),
    /// Standard output, JSONL, for pipes.
    Stdout,
}

impl Target {
    /// `-` is standard output, anything else a file path.
    pub fn parse(s: &str) -> Target {
        if s == "-" {
            Target::Stdout
        } else {
            Target::File(PathBuf::from(s))
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::File(path) => write!(f, "{}", path.display()),
            Target::Stdout => f.write_str("standard output"),
        }
    }
}

/// The columns of a results row, in order (CSV header and JSON keys).
pub const COLUMNS: [&str; 15] = [
    "id",
    "status",
    "output",
    "model",
    "input_tokens",
    "output_tokens",
    "latency_ms",
    "attempts",
    "key",
    "error",
    "thinking_tokens",
    "cached_tokens",
    "finish_reason",
    "cost",
    "output_json",
];

/// The shape of the results rows (`--out-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutFormat {
    /// keyfan's rows ([`COLUMNS`]): JSONL, or CSV for a `.csv` file.
    #[default]
    Keyfan,
    /// The output lines of the batch API whose own batch file the job is
    /// (OpenAI's or Gemini's), JSONL, one per item (see [`Sink::create_batch`]).
    Batch,
}

enum Format {
    Jsonl(Box<dyn Write + Send>),
    Csv(Box<csv::Writer<Box<dyn Write + Send>>>),
    Batch(Box<dyn Write + Send>, ProviderKind),
}

/// An open results writer.
pub struct Sink {
    format: Format,
    /// A JSONL row is serialized here first and written in one call: the
    /// writer behind `format` is dynamic, and serde_json writes each token
    /// apart.
    line: Vec<u8>,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sink")
    }
}

impl Sink {
    /// Creates (truncating) the results file, or wraps standard output.
    pub fn create(target: &Target) -> io::Result<Sink> {
        let (out, csv): (Box<dyn Write + Send>, bool) = match target {
            Target::Stdout => (Box::new(io::stdout()), false),
            Target::File(path) => (Box::new(BufWriter::new(File::create(path)?)), is_csv(path)),
        };
        let format = if csv {
            let mut writer = csv::Writer::from_writer(out);
            writer.write_record(COLUMNS)?;
            Format::Csv(Box::new(writer))
        } else {
            Format::Jsonl(out)
        };
        Ok(Sink {
            format,
            line: Vec::new(),
        })
    }

    /// Creates (truncating) the results file, or wraps standard output, for
    /// rows shaped as the output lines of `batch`'s batch API, JSONL
    /// whatever the file's extension. An `ok` item is an answer rebuilt
    /// from its row: OpenAI a 200 whose body is a `chat.completion`, Gemini
    /// a `GenerateContentResponse`, each with the item's text, finish
    /// reason, usage and model. Any other item is an error: OpenAI
    /// `{"code": STATUS, "message"}` (`failed`, `blocked`, `skipped` or
    /// `deferred`), Gemini `{"code", "message", "status"}` (`failed` 500
    /// `UNKNOWN`, `blocked` 400 `FAILED_PRECONDITION`, `skipped` 400
    /// `INVALID_ARGUMENT`, `deferred` 429 `RESOURCE_EXHAUSTED`). Ids are
    /// stable hashes of the item's id.
    pub fn create_batch(target: &Target, batch: ProviderKind) -> io::Result<Sink> {
        let out: Box<dyn Write + Send> = match target {
            Target::Stdout => Box::new(io::stdout()),
            Target::File(path) => Box::new(BufWriter::new(File::create(path)?)),
        };
        Ok(Sink {
            format: Format::Batch(out, batch),
            line: Vec::new(),
        })
    }

    /// Appends one row (buffered until [`Sink::flush`]).
    pub fn write(&mut self, row: &ItemRow) -> io::Result<()> {
        match &mut self.format {
            Format::Jsonl(out) => {
                self.line.clear();
                serde_json::to_writer(&mut self.line, row)?;
                self.line.push(b'\n');
                out.write_all(&self.line)
            }
            Format::Csv(writer) => {
                let num = |n: u64| n.to_string();
                writer.write_record([
                    row.id.as_str(),
                    row.status.as_str(),
                    row.output.as_deref().unwrap_or(""),
                    row.model.as_deref().unwrap_or(""),
                    &num(row.input_tokens),
                    &num(row.output_tokens),
                    &num(row.latency_ms),
                    &num(u64::from(row.attempts)),
                    row.key.as_deref().unwrap_or(""),
                    row.error.as_deref().unwrap_or(""),
                    &num(row.thinking_tokens),
                    &num(row.cached_tokens),
                    row.finish_reason.as_deref().unwrap_or(""),
                    // Unknown is empty, never 0.
                    &row.cost
                        .map_or_else(String::new, |usd| round_usd(usd).to_string()),
                    row.output_json.as_deref().unwrap_or(""),
                ])?;
                Ok(())
            }
            Format::Batch(out, batch) => {
                write_batch_line(&mut *out, row, *batch)?;
                out.write_all(b"\n")
            }
        }
    }

    /// Pushes everything written so far to the file.
    pub fn flush(&mut self) -> io::Result<()> {
        match &mut self.format {
            Format::Jsonl(out) => out.flush(),
            Format::Csv(writer) => writer.flush(),
            Format::Batch(out, _) => out.flush(),
        }
    }
}

/// Writes `row` as an output line of `batch`'s batch API (see
/// [`Sink::create_batch`]).
fn write_batch_line(out: impl Write, row: &ItemRow, batch: ProviderKind) -> io::Result<()> {
    let answer = (row.status == ItemStatus::Ok).then(|| Answered {
        text: row.output.as_deref().unwrap_or(""),
        model: row.model.as_deref().unwrap_or(""),
        finish_reason: row.finish_reason.as_deref(),
        usage: Usage {
            input_tokens: row.input_tokens,
            cached_tokens: row.cached_tokens,
            output_tokens: row.output_tokens,
            thinking_tokens: row.thinking_tokens,
            cache_write_tokens: 0,
        },
        created: chrono::Utc::now().timestamp(),
    });
    let message = row.error.as_deref().unwrap_or(row.status.as_str());
    match (batch, answer) {
        (ProviderKind::Gemini, Some(answer)) => {
            serde_json::to_writer(out, &GeminiBatchOutputLine::answered(&row.id, &answer))
        }
        (ProviderKind::Gemini, None) => {
            let (code, status) = gemini_error(row.status);
            let line = GeminiBatchOutputLine::failed(&row.id, code, status, message);
            serde_json::to_writer(out, &line)
        }
        (_, Some(answer)) => {
            serde_json::to_writer(out, &OpenAiBatchOutputLine::answered(&row.id, &answer))
        }
        (_, None) => {
            let line = OpenAiBatchOutputLine::failed(&row.id, row.status.as_str(), message);
            serde_json::to_writer(out, &line)
        }
    }
    .map_err(io::Error::from)
}

/// The HTTP-like code and the `google.rpc` status name of a Gemini error
/// line for an item that ended `status` (not `ok`). A failed item's is
/// `UNKNOWN`: its row keeps the API's message, not its status.
fn gemini_error(status: ItemStatus) -> (i32, &'static str) {
    match status {
        ItemStatus::Blocked => (400, "FAILED_PRECONDITION"),
        ItemStatus::Skipped => (400, "INVALID_ARGUMENT"),
        ItemStatus::Deferred | ItemStatus::Submitted => (429, "RESOURCE_EXHAUSTED"),
        ItemStatus::Ok | ItemStatus::Failed => (500, "UNKNOWN"),
    }
}

fn is_csv(path: &Path) -> bool {
    path.extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("csv"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ItemStatus;

    fn row() -> ItemRow {
        ItemRow {
            id: "q1".into(),
            line: 1,
            status: ItemStatus::Ok,
            output: Some("line one,\n\"two\"".into()),
            model: Some("gemini-2.5-flash".into()),
            input_tokens: 3,
            output_tokens: 5,
            latency_ms: 12,
            attempts: 1,
            key: Some("#1a2b3c4d".into()),
            account: Some("proj-a".into()),
            error: None,
            thinking_tokens: 2,
            cached_tokens: 1,
            finish_reason: Some("STOP".into()),
            cost: Some(0.1 + 0.2),
            output_json: Some("{\"a\": [1]}".into()),
        }
    }

    #[test]
    fn jsonl_rows_carry_exactly_the_documented_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        let mut sink = Sink::create(&Target::File(path.clone())).unwrap();
        sink.write(&row()).unwrap();
        sink.flush().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let value: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        let keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        let mut expected = COLUMNS.to_vec();
        expected.sort();
        let mut keys_sorted = keys.clone();
        keys_sorted.sort();
        assert_eq!(keys_sorted, expected);
        assert_eq!(value["output"], "line one,\n\"two\"");
        assert_eq!(value["cost"], 0.3, "rounded past float noise");
        assert_eq!(value["output_json"], serde_json::json!({"a": [1]}));
    }

    #[test]
    fn csv_rows_quote_commas_quotes_and_newlines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.CSV");
        let mut sink = Sink::create(&Target::File(path.clone())).unwrap();
        sink.write(&row()).unwrap();
        sink.flush().unwrap();
        let mut reader = csv::Reader::from_path(&path).unwrap();
        assert_eq!(reader.headers().unwrap(), COLUMNS.as_slice());
        let record = reader.records().next().unwrap().unwrap();
        assert_eq!(&record[2], "line one,\n\"two\"");
        assert_eq!(&record[8], "#1a2b3c4d");
        assert_eq!(&record[10], "2");
        assert_eq!(&record[12], "STOP");
        assert_eq!(&record[13], "0.3", "rounded past float noise");
    }

    #[test]
    fn batch_rows_are_the_providers_output_lines() {
        use crate::provider::batchline::{GeminiBatchOutputLine, OpenAiBatchOutputLine};
        let dir = tempfile::tempdir().unwrap();
        let failed = ItemRow {
            id: "q2".into(),
            status: ItemStatus::Deferred,
            output: None,
            error: Some("daily quota spent".into()),
            ..row()
        };
        let write = |batch| {
            let path = dir.path().join(format!("{batch:?}.csv"));
            let mut sink = Sink::create_batch(&Target::File(path.clone()), batch).unwrap();
            sink.write(&row()).unwrap();
            sink.write(&failed).unwrap();
            sink.flush().unwrap();
            std::fs::read_to_string(path).unwrap()
        };
        fn parse<T: serde::de::DeserializeOwned>(text: &str) -> Vec<T> {
            text.lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        }
        let lines: Vec<OpenAiBatchOutputLine> = parse(&write(ProviderKind::Openai));
        let ok = lines[0].response.as_ref().unwrap();
        assert_eq!((lines[0].custom_id.as_str(), ok.status_code), ("q1", 200));
        assert_eq!(
            ok.body["choices"][0]["message"]["content"],
            "line one,\n\"two\""
        );
        assert_eq!(ok.body["usage"]["prompt_tokens"], 3);
        let error = lines[1].error.as_ref().unwrap();
        assert_eq!(
            (error.code.as_str(), error.message.as_str()),
            ("deferred", "daily quota spent")
        );
        assert!(lines[1].response.is_none());
        let lines: Vec<GeminiBatchOutputLine> = parse(&write(ProviderKind::Gemini));
        let ok = lines[0].response.as_ref().unwrap();
        assert_eq!(ok["candidates"][0]["finishReason"], "STOP");
        let error = lines[1].error.as_ref().unwrap();
        assert_eq!((lines[1].key.as_str(), error.code), ("q2", 429));
        assert_eq!(error.status.as_deref(), Some("RESOURCE_EXHAUSTED"));
    }

    #[test]
    fn an_unknown_cost_is_null_or_empty_never_zero() {
        let dir = tempfile::tempdir().unwrap();
        let unknown = ItemRow {
            cost: None,
            ..row()
        };
        for name in ["r.jsonl", "r.csv"] {
            let path = dir.path().join(name);
            let mut sink = Sink::create(&Target::File(path.clone())).unwrap();
            sink.write(&unknown).unwrap();
            sink.flush().unwrap();
            let text = std::fs::read_to_string(&path).unwrap();
            if name.ends_with(".csv") {
                let mut reader = csv::Reader::from_path(&path).unwrap();
                let record = reader.records().next().unwrap().unwrap();
                assert_eq!(&record[13], "", "{text}");
            } else {
                let value: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
                assert_eq!(value["cost"], serde_json::Value::Null, "{text}");
                assert_eq!(value["thinking_tokens"], 2, "{text}");
            }
        }
    }
}
