//! CSV: a header row naming the columns, then one item per record (RFC 4180
//! quoting; a quoted field may span lines). One record is in memory at a
//! time.

use super::fields::{invalid_utf8, Field, Problem, Raw, Values};
use super::{Item, ItemError};
use std::io::{self, Read};
use std::path::Path;

/// Reads items record by record.
pub(super) struct Rows<R> {
    reader: ::csv::Reader<Quotes<R>>,
    header: Header,
    /// The current record, reused across records.
    record: ::csv::ByteRecord,
}

/// Where reading the header stands.
enum Header {
    Unread,
    /// The field of each column.
    Accepted(Vec<Field>),
    /// Empty file, or a header that was refused: no rows can be read.
    Ended,
}

impl<R: Read> Rows<R> {
    pub(super) fn new(reader: R) -> Self {
        Rows {
            // Not flexible: a row with a different number of cells than the
            // header is a quoting mistake, reported on its line.
            reader: ::csv::ReaderBuilder::new()
                .has_headers(true)
                .from_reader(Quotes::new(reader)),
            header: Header::Unread,
            record: ::csv::ByteRecord::new(),
        }
    }

    /// The underlying reader.
    pub(super) fn get_ref(&self) -> &R {
        &self.reader.get_ref().inner
    }

    /// The line where a quote opened that the file never closes, if the
    /// reader has reached the end of the file and the record just read is
    /// the one that swallowed the rest of the file.
    fn unterminated(&self) -> Option<u64> {
        let quotes = self.reader.get_ref();
        let at_end = quotes.ended && self.reader.position().byte() == quotes.bytes;
        let open = matches!(quotes.state, Quoting::Quoted);
        quotes.open.filter(|_| at_end && open)
    }

    /// The line the reader has reached, for placing a read failure.
    pub(super) fn line(&self) -> u64 {
        self.reader.position().line()
    }

    /// The next record as an item or an item error; `None` at the end. A bad
    /// header is reported once, on its line, and ends the file: no row can be
    /// read without knowing its columns.
    pub(super) fn next(&mut self, path: &Path) -> io::Result<Option<Result<Item, ItemError>>> {
        if let Header::Unread = self.header {
            let header = self.reader.byte_headers()?;
            let line = header.position().map_or(1, |p| p.line());
            let empty = header.is_empty();
            let columns = columns(header);
            self.header = Header::Ended;
            if empty {
                return Ok(None);
            }
            if let Some(line) = self.unterminated() {
                return Ok(Some(Err(unterminated().at(path, line))));
            }
            match columns {
                Ok(columns) => self.header = Header::Accepted(columns),
                Err(problem) => return Ok(Some(Err(problem.at(path, line)))),
            }
        }
        let Header::Accepted(columns) = &self.header else {
            return Ok(None);
        };
        match self.reader.read_byte_record(&mut self.record) {
            Ok(false) => Ok(None),
            Ok(true) => {
                if let Some(line) = self.unterminated() {
                    return Ok(Some(Err(unterminated().at(path, line))));
                }
                // `position` is where the record starts, which is the line
                // to show even when a quoted cell spans several lines.
                let line = self.record.position().map_or(0, |p| p.line());
                Ok(Some(
                    row(columns, &self.record, line, path).map_err(|p| p.at(path, line)),
                ))
            }
            Err(err) => match err.kind() {
                ::csv::ErrorKind::UnequalLengths {
                    pos,
                    expected_len,
                    len,
                } => {
                    let line = pos.as_ref().map_or(0, |p| p.line());
                    let reason = format!("row has {len} cells, the header has {expected_len}");
                    Ok(Some(Err(Problem::record(reason).at(path, line))))
                }
                _ => Err(err.into()),
            },
        }
    }
}

/// The problem of a quoted cell that the file never closes.
fn unterminated() -> Problem {
    Problem::record(
        "a quote opened on this line is never closed: the rest of the file would be one cell",
    )
}

/// Passes reads through to the CSV parser and follows its quoting, byte by
/// byte, to find a quoted cell still open at the end of the file: the csv
/// crate takes the rest of the file into that cell without complaint.
///
/// The states are those of the csv crate's parser with its defaults (`,`
/// delimiter, `"` quote, doubled quotes as escapes): a quote opens a cell
/// only at its start; inside a quoted cell a doubled quote is a literal
/// quote and a single one closes it; after that, text up to the next comma
/// or line end belongs to the cell unquoted.
struct Quotes<R> {
    inner: R,
    /// Bytes passed through.
    bytes: u64,
    /// 1-based line of the next byte.
    line: u64,
    state: Quoting,
    /// The line where the last quoted cell opened.
    open: Option<u64>,
    /// Whether the inner reader has reported the end of the file.
    ended: bool,
}

#[derive(Clone, Copy)]
enum Quoting {
    /// At the start of a cell.
    Start,
    /// In an unquoted cell (or after a quoted cell's closing quote).
    Unquoted,
    /// In a quoted cell.
    Quoted,
    /// In a quoted cell, just after a quote: it closes the cell unless the
    /// next byte is a quote too.
    QuoteInQuoted,
}

impl<R> Quotes<R> {
    fn new(inner: R) -> Self {
        Quotes {
            inner,
            bytes: 0,
            line: 1,
            state: Quoting::Start,
            open: None,
            ended: false,
        }
    }

    fn push(&mut self, byte: u8) {
        let ends_cell = matches!(byte, b',' | b'\n' | b'\r');
        self.state = match (self.state, byte) {
            (Quoting::Start, b'"') => {
                self.open = Some(self.line);
                Quoting::Quoted
            }
            (Quoting::Quoted, b'"') => Quoting::QuoteInQuoted,
            (Quoting::Quoted, _) => Quoting::Quoted,
            (Quoting::QuoteInQuoted, b'"') => Quoting::Quoted,
            (_, _) if ends_cell => Quoting::Start,
            _ => Quoting::Unquoted,
        };
        if byte == b'\n' {
            self.line += 1;
        }
    }
}

impl<R: Read> Read for Quotes<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.ended |= n == 0 && !buf.is_empty();
        self.bytes += n as u64;
        for &byte in &buf[..n] {
            self.push(byte);
        }
        Ok(n)
    }
}

/// Maps header cells to fields: every column known, none twice, the
/// required ones present. Surrounding spaces in names are ignored.
fn columns(header: &::csv::ByteRecord) -> Result<Vec<Field>, Problem> {
    let mut columns = Vec::with_capacity(header.len());
    for cell in header {
        let name = std::str::from_utf8(cell)
            .map_err(|_| Problem::record("invalid UTF-8 in the header"))?
            .trim();
        let field = Field::parse(name, "column")?;
        if columns.contains(&field) {
            return Err(Problem::field(name, "column appears twice in the header"));
        }
        columns.push(field);
    }
    let asks = columns.contains(&Field::Prompt) || columns.contains(&Field::Messages);
    let missing = [
        (Field::Id, columns.contains(&Field::Id)),
        (Field::Prompt, asks),
    ];
    if let Some((missing, _)) = missing.iter().find(|(_, present)| !present) {
        return Err(Problem::field(
            missing.name(),
            "required column is missing from the header",
        ));
    }
    Ok(columns)
}

/// Builds the item of one record.
fn row(
    columns: &[Field],
    record: &::csv::ByteRecord,
    line: u64,
    path: &Path,
) -> Result<Item, Problem> {
    let mut values = Values::default();
    for (&field, cell) in columns.iter().zip(record) {
        let text = std::str::from_utf8(cell)
            .map_err(|e| Problem::field(field.name(), invalid_utf8(&e)))?;
        values.set(field, Raw::Text(text));
    }
    values.into_item(line, path)
}
