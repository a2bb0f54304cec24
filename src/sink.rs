//! Results files: one row per finished item, JSONL or CSV, appended from
//! rows the store has already committed and flushed after every batch.
//!
//! Owns: the results formats and where they go (a file or standard output).
//! Never: deciding an outcome, or writing a row the store has not committed.

use crate::store::{round_usd, ItemRow};
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

enum Format {
    Jsonl(Box<dyn Write + Send>),
    Csv(Box<csv::Writer<Box<dyn Write + Send>>>),
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
        }
    }

    /// Pushes everything written so far to the file.
    pub fn flush(&mut self) -> io::Result<()> {
        match &mut self.format {
            Format::Jsonl(out) => out.flush(),
            Format::Csv(writer) => writer.flush(),
        }
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
