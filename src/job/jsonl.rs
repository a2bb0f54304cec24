//! JSONL / NDJSON: one JSON object per line, blank lines skipped. One line
//! is in memory at a time. The first line that is a JSON object sets the
//! file's shape ([`Shape`]): keyfan's fields, or a provider's batch file
//! (`batchfile`); every other line must have the same.

use super::batchfile::{self, Shape};
use super::fields::{invalid_utf8, kind, Field, Problem, Raw, Values};
use super::{Item, ItemError};
use crate::provider::ProviderKind;
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
    /// The file's shape and the line that set it, once a line has.
    shape: Option<(Shape, u64)>,
}

impl<R: Read> Lines<R> {
    pub(super) fn new(reader: R) -> Self {
        Lines {
            reader: BufReader::new(reader),
            buf: Vec::new(),
            line: 0,
            shape: None,
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

    /// The provider whose own batch file this is, when its first line has
    /// the shape of one.
    pub(super) fn batch(&self) -> Option<ProviderKind> {
        self.shape.and_then(|(shape, _)| shape.batch())
    }

    /// The next non-blank line as an item or an item error; `None` at the
    /// end. Once the file's shape is set, lines for which `skip` holds are
    /// passed over unparsed.
    pub(super) fn next(
        &mut self,
        path: &Path,
        skip: impl Fn(u64) -> bool,
    ) -> io::Result<Option<Result<Item, ItemError>>> {
        loop {
            self.buf.clear();
            if self.reader.read_until(b'\n', &mut self.buf)? == 0 {
                return Ok(None);
            }
            self.line += 1;
            // Windows editors save "UTF-8" with a byte-order mark.
            let start = match self.line == 1 && self.buf.starts_with(b"\xEF\xBB\xBF") {
                true => 3,
                false => 0,
            };
            if self.shape.is_some() && skip(self.line)
                || self.buf[start..].iter().all(u8::is_ascii_whitespace)
            {
                continue;
            }
            let item = self.parse(start, path).map_err(|p| p.at(path, self.line));
            return Ok(Some(item));
        }
    }

    /// Parses the line in `buf` from byte `start`, as a line of the file's
    /// shape.
    fn parse(&mut self, start: usize, path: &Path) -> Result<Item, Problem> {
        let object = object(&self.buf[start..])?;
        let this = Shape::of(&object);
        let (shape, first) = *self.shape.get_or_insert((this, self.line));
        if this != shape {
            return Err(Problem::record(format!(
                "this line is {}, but line {first} is {}: every line of a job must have the \
                 shape of its first",
                this.name(),
                shape.name()
            )));
        }
        match shape {
            Shape::Keyfan => parse(object, self.line, path),
            Shape::OpenAi => batchfile::openai(object, self.line),
            Shape::Gemini => batchfile::gemini(object, self.line),
        }
    }
}

/// Builds the item of keyfan's fields on the line numbered `line`.
fn parse(object: Map<String, Value>, line: u64, path: &Path) -> Result<Item, Problem> {
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
