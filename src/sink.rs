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
use std::sync::{Arc, Mutex, PoisonError};

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

    /// Has `first` write its rows to this sink on a thread of its own, and
    /// returns the sink for the rows that follow, in the same format and
    /// to the same output, after them: until `first` is done, what is
    /// written to it is held in memory (and flushing it writes nothing),
    /// then it goes out. A failure of `first` fails the returned sink's
    /// next write or flush alike, and [`Behind::finish`] returns it.
    pub fn behind(
        self,
        first: impl FnOnce(&mut Sink) -> io::Result<()> + Send + 'static,
    ) -> io::Result<(Sink, Behind)> {
        let queue = Arc::new(Mutex::new(Queue::default()));
        // Buffered, so that the queue is locked once per batch of rows,
        // not once per piece of a row.
        let held: Box<dyn Write + Send> = Box::new(BufWriter::new(Queued(Arc::clone(&queue))));
        let format = match &self.format {
            Format::Jsonl(_) => Format::Jsonl(held),
            // The header is the first sink's.
            Format::Csv(_) => Format::Csv(Box::new(csv::Writer::from_writer(held))),
            Format::Batch(_, batch) => Format::Batch(held, *batch),
        };
        let mut sink = self;
        let thread = std::thread::Builder::new()
            .name("results".to_owned())
            .spawn(move || {
                let written = first(&mut sink).and_then(|()| sink.into_writer());
                let mut queue = queue.lock().unwrap_or_else(PoisonError::into_inner);
                let passed = written.and_then(|mut out| {
                    out.write_all(&std::mem::take(&mut queue.held))?;
                    out.flush()?;
                    queue.out = Some(out);
                    Ok(())
                });
                if let Err(error) = &passed {
                    queue.failed = Some((error.kind(), error.to_string()));
                }
                passed
            })?;
        let next = Sink {
            format,
            line: Vec::new(),
        };
        Ok((
            next,
            Behind {
                thread: Some(thread),
            },
        ))
    }

    /// The output, everything written to it flushed.
    fn into_writer(self) -> io::Result<Box<dyn Write + Send>> {
        let mut out = match self.format {
            Format::Jsonl(out) | Format::Batch(out, _) => out,
            Format::Csv(writer) => writer.into_inner().map_err(|e| e.into_error())?,
        };
        out.flush()?;
        Ok(out)
    }
}

/// The rows a [`Sink::behind`] has written first, on their thread.
#[derive(Debug)]
pub struct Behind {
    thread: Option<std::thread::JoinHandle<io::Result<()>>>,
}

impl Behind {
    /// Waits until they are written, with what was held behind them, and
    /// returns how that ended.
    pub fn finish(mut self) -> io::Result<()> {
        self.join()
    }

    fn join(&mut self) -> io::Result<()> {
        match self.thread.take().map(std::thread::JoinHandle::join) {
            None => Ok(()),
            Some(Ok(written)) => written,
            Some(Err(_)) => Err(io::Error::other("the thread writing results panicked")),
        }
    }
}

impl Drop for Behind {
    /// A run that stops before [`Behind::finish`] still leaves whole rows.
    fn drop(&mut self) {
        let _ = self.join();
    }
}

/// What the sink of [`Sink::behind`] writes to, shared with the thread
/// writing the first rows.
#[derive(Default)]
struct Queue {
    /// The output, once the first rows are in it.
    out: Option<Box<dyn Write + Send>>,
    /// What was written until then.
    held: Vec<u8>,
    /// How writing the first rows failed, if it did.
    failed: Option<(io::ErrorKind, String)>,
}

struct Queued(Arc<Mutex<Queue>>);

impl Queued {
    fn with<T>(&self, f: impl FnOnce(&mut Queue) -> io::Result<T>) -> io::Result<T> {
        let mut queue = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match &queue.failed {
            Some((kind, message)) => Err(io::Error::new(*kind, message.clone())),
            None => f(&mut queue),
        }
    }
}

impl Write for Queued {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.with(|queue| match &mut queue.out {
            Some(out) => out.write(buf),
            None => {
                queue.held.extend_from_slice(buf);
                Ok(buf.len())
            }
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        self.with(|queue| queue.out.as_mut().map_or(Ok(()), |out| out.flush()))
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

    fn with_id(id: &str) -> ItemRow {
        ItemRow {
            id: id.into(),
            ..row()
        }
    }

    #[test]
    fn the_rows_written_behind_come_after_the_first_ones_in_order() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["r.jsonl", "r.csv"] {
            let path = dir.path().join(name);
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let sink = Sink::create(&Target::File(path.clone())).unwrap();
            let (mut next, behind) = sink
                .behind(move |sink| {
                    sink.write(&with_id("old-1"))?;
                    // The rows behind are written meanwhile.
                    rx.recv().unwrap();
                    sink.write(&with_id("old-2"))
                })
                .unwrap();
            next.write(&with_id("new-1")).unwrap();
            next.flush().unwrap();
            tx.send(()).unwrap();
            next.write(&with_id("new-2")).unwrap();
            next.flush().unwrap();
            drop(next);
            behind.finish().unwrap();
            let ids: Vec<String> = if name.ends_with("csv") {
                let mut reader = csv::Reader::from_path(&path).unwrap();
                assert_eq!(reader.headers().unwrap(), COLUMNS.as_slice(), "one header");
                reader.records().map(|r| r.unwrap()[0].to_owned()).collect()
            } else {
                std::fs::read_to_string(&path)
                    .unwrap()
                    .lines()
                    .map(|l| {
                        serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].to_string()
                    })
                    .map(|id| id.trim_matches('"').to_owned())
                    .collect()
            };
            assert_eq!(ids, ["old-1", "old-2", "new-1", "new-2"], "{name}");
        }
    }

    #[test]
    fn a_failure_of_the_first_rows_fails_the_rows_behind_them() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Sink::create(&Target::File(dir.path().join("r.jsonl"))).unwrap();
        let (mut next, behind) = sink
            .behind(|_| Err(io::Error::new(io::ErrorKind::StorageFull, "disk full")))
            .unwrap();
        // Its thread may not have ended yet: then the row is held.
        let _ = next.write(&row());
        let error = behind.finish().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::StorageFull);
        let error = next.write(&row()).and_then(|()| next.flush()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::StorageFull, "{error}");
    }
}
