//! JSONL / NDJSON: one JSON object per line, blank lines skipped. One line
//! is in memory at a time.

use super::fields::{invalid_utf8, kind, Field, Problem, Raw, Values};
use super::{Item, ItemError};
use serde_json::{Map, Value};
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

/// Reads items line by line.
pub(super) struct Lines<R> {
    reader: BufReader<R>,
    /// The current line's bytes, reused across lines.
    buf: Vec<u8>,
    /// 1-based number of the line in `buf`.
    line: u64,
}

impl<R: Read> Lines<R> {
    pub(super) fn new(reader: R) -> Self {
        Lines {
            reader: BufReader::new(reader),
            buf: Vec::new(),
            line: 0,
        }
    }

    /// The underlying reader.
    pub(super) fn get_ref(&self) -> &R {
        self.reader.get_ref()
    }

    /// The line last read, for placing a read failure.
    pub(super) fn line(&self) -> u64 {
        self.line
    }

    /// The next non-blank line as an item or an item error; `None` at the end.
    pub(super) fn next(&mut self, path: &Path) -> io::Result<Option<Result<Item, ItemError>>> {
        loop {
            self.buf.clear();
            if self.reader.read_until(b'\n', &mut self.buf)? == 0 {
                return Ok(None);
            }
            self.line += 1;
            let mut bytes = self.buf.as_slice();
            if self.line == 1 {
                // Windows editors save "UTF-8" with a byte-order mark.
                bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
            }
            if bytes.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let item = parse(bytes, self.line, path).map_err(|p| p.at(path, self.line));
            return Ok(Some(item));
        }
    }
}

/// Parses the line numbered `line`.
fn parse(bytes: &[u8], line: u64, path: &Path) -> Result<Item, Problem> {
    let object = object(bytes)?;
    let mut values = Values::default();
    for (name, raw) in &object {
        values.set(Field::parse(name, "field")?, Raw::Json(raw));
    }
    values.into_item(line, path)
}

/// Parses one line as a JSON object.
pub(super) fn object(bytes: &[u8]) -> Result<Map<String, Value>, Problem> {
    let text = std::str::from_utf8(bytes).map_err(|e| Problem::record(invalid_utf8(&e)))?;
    let value: Value = serde_json::from_str(text).map_err(|e| {
        // serde_json ends its message with "at line 1 column N"; the line is
        // ours to give, the column is worth keeping.
        let message = e.to_string();
        let message = message
            .rsplit_once(" at line ")
            .map_or(message.as_str(), |(m, _)| m);
        Problem::record(format!("invalid JSON: {message} at column {}", e.column()))
    })?;
    match value {
        Value::Object(object) => Ok(object),
        other => Err(Problem::record(format!(
            "expected a JSON object, found {}",
            kind(&other)
        ))),
    }
}
