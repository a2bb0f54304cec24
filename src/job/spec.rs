//! YAML job specs (`.yaml` / `.yml`): one prompt template over a data table
//! (CSV or JSONL, streamed) or over inline `items`, with defaults for every
//! item and per-row overrides.
//!
//! ```yaml
//! defaults: { model: gemini-2.5-flash, temperature: 0.2 }
//! template: "Translate into {{lang}}: {{text}}"   # or `messages: [{role, text}]`
//! id: "{{key}}-{{lang}}"        # optional; default: the row number
//! data: rows.csv                # or `items: [{key: a, text: …, lang: fr}]`
//! ```
//!
//! A row's values fill the placeholders; a column (or item key) named like
//! an item field (`model`, `temperature`, …) overrides that field for the
//! row. `{{file:path}}` is replaced, when the spec is read, by the text of
//! that file (relative to the spec). Everything that can be checked before
//! the first row is checked at [`open`], and all of it is reported at once
//! ([`JobError::Spec`]); a row's problem is an item error on its line.
//!
//! The content hash covers the spec, every included file and the data
//! file, so an edit to any of them is a changed job.

use super::fields::{set, Field, Problem, Raw};
use super::template::Template;
use super::{Hashing, Item, ItemError, JobError};
use crate::provider::{Role, Turn};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

/// The spec as written: unknown top-level fields are errors.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    #[serde(default)]
    defaults: Map<String, Value>,
    template: Option<String>,
    messages: Option<Vec<Message>>,
    id: Option<String>,
    data: Option<PathBuf>,
    items: Option<Vec<Map<String, Value>>>,
}

/// One turn of a conversation template.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Message {
    role: String,
    text: String,
}

/// What each row asks: one prompt, or a conversation whose last turn is
/// the user's.
enum Body {
    Prompt(Template),
    Messages(Vec<(Role, Template)>),
}

/// The field whose string value in a spec names a file.
const SCHEMA: &str = "response_schema";

/// The items of a spec, row by row.
pub(super) struct Rows {
    /// The spec file.
    path: PathBuf,
    /// Every placeholder name the templates use, in order of first use.
    names: Vec<String>,
    body: Body,
    /// The id template; `None`: the row number.
    id: Option<Template>,
    /// The defaults' system instruction, a template too.
    system: Option<Template>,
    /// The defaults, as an item without id and prompt.
    defaults: Item,
    source: Source,
    /// Rows read so far.
    rows: u64,
    /// The line of the row being built.
    at: u64,
}

/// Where the rows come from.
enum Source {
    /// `items` in the spec, with the line each starts on.
    Inline {
        items: std::vec::IntoIter<(u64, Map<String, Value>)>,
        hasher: Sha256,
        line: u64,
    },
    Csv(Box<CsvData>),
    Jsonl {
        path: PathBuf,
        reader: BufReader<Hashing<File>>,
        buf: Vec<u8>,
        line: u64,
    },
}

/// A row just read.
enum Found {
    /// A JSON object (inline item or JSONL line), its line and what its
    /// names are called.
    Object(u64, Result<Map<String, Value>, Problem>, &'static str),
    /// A CSV record, now in [`CsvData::record`], and its line.
    Csv(u64),
}

/// A CSV data file, its header read.
struct CsvData {
    path: PathBuf,
    reader: ::csv::Reader<Hashing<File>>,
    record: ::csv::ByteRecord,
    /// The column of each placeholder name.
    columns: Vec<usize>,
    /// Columns that override an item field.
    overrides: Vec<(usize, Field)>,
}

/// Reads and checks the spec at `path` and opens its data file. Every
/// problem found before the first row is in the one [`JobError::Spec`].
pub(super) fn open(path: &Path) -> Result<Rows, JobError> {
    let text = std::fs::read_to_string(path).map_err(|source| JobError::Open {
        path: path.to_owned(),
        source,
    })?;
    let at = |line: u64, field: Option<&str>, reason: String| ItemError {
        path: path.to_owned(),
        line,
        field: field.map(str::to_owned),
        reason,
    };
    let mut document: Document = serde_yaml::from_str(&text).map_err(|e| {
        let line = e.location().map_or(1, |l| l.line() as u64);
        let message = e.to_string();
        let message = message.split(" at line ").next().unwrap_or(&message);
        // serde names an unknown field between backticks.
        let field = message
            .strip_prefix("unknown field `")
            .and_then(|m| m.split('`').next());
        spec_error(vec![at(line, field, message.to_owned())])
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut hasher = Sha256::new();
    frame(&mut hasher, path, text.as_bytes());
    let mut errors = Vec::new();
    let mut names = Vec::new();
    let mut include = |file: &str| {
        let included = dir.join(file);
        let bytes = std::fs::read(&included)
            .map_err(|e| format!("cannot read the included file {}: {e}", included.display()))?;
        frame(&mut hasher, &included, &bytes);
        String::from_utf8(bytes)
            .map_err(|_| format!("the included file {} is not UTF-8", included.display()))
    };
    let mut template = |key: &str, source: &str, names: &mut Vec<String>| {
        Template::parse(source, names, &mut include)
            .map_err(|reason| at(key_line(&text, &[key]), Some(key), reason))
    };
    let body = match (&document.template, &document.messages) {
        (Some(source), None) => template("template", source, &mut names)
            .map_err(|e| errors.push(e))
            .ok()
            .map(Body::Prompt),
        (None, Some(messages)) => {
            let line = key_line(&text, &["messages"]);
            let mut turns = Vec::new();
            for message in messages {
                let Some(role) = super::fields::role(&message.role) else {
                    errors.push(at(
                        line,
                        Some("messages"),
                        format!("role `{}`: expected user or assistant", message.role),
                    ));
                    continue;
                };
                if let Ok(text) =
                    template("messages", &message.text, &mut names).map_err(|e| errors.push(e))
                {
                    turns.push((role, text));
                }
            }
            if turns.last().is_none_or(|(role, _)| *role != Role::User) {
                errors.push(at(
                    line,
                    Some("messages"),
                    "the last message must be the user's".to_owned(),
                ));
            }
            Some(Body::Messages(turns))
        }
        (Some(_), Some(_)) => {
            errors.push(at(
                key_line(&text, &["messages"]),
                Some("messages"),
                "give `template` or `messages`, not both".to_owned(),
            ));
            None
        }
        (None, None) => {
            errors.push(at(
                1,
                Some("template"),
                "is required (or `messages`)".to_owned(),
            ));
            None
        }
    };
    let id = document.id.as_ref().and_then(|source| {
        template("id", source, &mut names)
            .map_err(|e| errors.push(e))
            .ok()
    });
    // A schema given as a string is a file beside the spec: read (and
    // hashed) here, like an included file.
    let lines = item_lines(&text, document.items.as_ref().map_or(0, Vec::len));
    let objects = std::iter::once((
        key_line(&text, &["defaults", SCHEMA]),
        &mut document.defaults,
    ))
    .chain(
        lines
            .iter()
            .copied()
            .zip(document.items.iter_mut().flatten()),
    );
    for (line, object) in objects {
        if let Some(Value::String(file)) = object.get(SCHEMA) {
            let read = include(file).and_then(|text| {
                serde_json::from_str(&text).map_err(|e| format!("{file} is not JSON: {e}"))
            });
            match read {
                Ok(schema) => _ = object.insert(SCHEMA.to_owned(), schema),
                Err(reason) => errors.push(at(line, Some(SCHEMA), reason)),
            }
        }
    }
    let mut defaults = Item::default();
    let mut system = None;
    for (name, value) in &document.defaults {
        let line = key_line(&text, &["defaults", name]);
        match (Field::named(name), value) {
            (Some(Field::System), Value::String(source)) => {
                system = Template::parse(source, &mut names, &mut include)
                    .map_err(|reason| errors.push(at(line, Some(name), reason)))
                    .ok();
            }
            (Some(field), _) if !field.is_content() => {
                if let Err(problem) = set(&mut defaults, field, Raw::Json(value)) {
                    errors.push(problem.at(path, line));
                }
            }
            _ => errors.push(at(
                line,
                Some(name),
                format!("unknown default; expected one of: {}", setting_names()),
            )),
        }
    }
    let source = match (document.data, document.items) {
        (Some(_), Some(_)) => Err(at(
            key_line(&text, &["items"]),
            Some("items"),
            "give `data` or `items`, not both".to_owned(),
        )),
        (None, None) => Err(at(
            1,
            Some("data"),
            "`data` or `items` is required".to_owned(),
        )),
        (None, Some(items)) => Ok(Source::Inline {
            items: lines.into_iter().zip(items).collect::<Vec<_>>().into_iter(),
            hasher,
            line: 0,
        }),
        (Some(data), None) => {
            let line = key_line(&text, &["data"]);
            let data = dir.join(data);
            open_data(&data, hasher, &names).map_err(|e| match e {
                DataError::Open(source) => at(
                    line,
                    Some("data"),
                    format!("cannot open {}: {source}", data.display()),
                ),
                DataError::Problem(problem) => problem.at(path, line),
            })
        }
    };
    let source = source.map_err(|e| errors.push(e)).ok();
    match (body, source) {
        (Some(body), Some(source)) if errors.is_empty() => Ok(Rows {
            path: path.to_owned(),
            names,
            body,
            id,
            system,
            defaults,
            source,
            rows: 0,
            at: 0,
        }),
        _ => Err(spec_error(errors)),
    }
}

fn spec_error(mut errors: Vec<ItemError>) -> JobError {
    errors.sort_by_key(|e| e.line);
    JobError::Spec { errors }
}

/// The fields a default or a row may set.
fn setting_names() -> String {
    let names: Vec<&str> = Field::ALL
        .iter()
        .filter(|f| !f.is_content())
        .map(|f| f.name())
        .collect();
    names.join(", ")
}

/// Adds one file to the content hash: its path, its length and its bytes,
/// so no two sets of files hash alike.
fn frame(hasher: &mut Sha256, path: &Path, bytes: &[u8]) {
    let name = path.display().to_string();
    for part in [name.as_bytes(), bytes] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
}

enum DataError {
    Open(io::Error),
    Problem(Problem),
}

/// Opens the data file (CSV by `.csv`, else JSONL), hashing its bytes after
/// `hasher`'s; a CSV header must have a column for every placeholder.
fn open_data(path: &Path, hasher: Sha256, names: &[String]) -> Result<Source, DataError> {
    let file = File::open(path).map_err(DataError::Open)?;
    let file = Hashing {
        inner: file,
        hasher,
    };
    let csv = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    if !csv {
        return Ok(Source::Jsonl {
            path: path.to_owned(),
            reader: BufReader::new(file),
            buf: Vec::new(),
            line: 0,
        });
    }
    let mut reader = ::csv::ReaderBuilder::new().from_reader(file);
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| {
            DataError::Problem(Problem::field("data", format!("{}: {e}", path.display())))
        })?
        .iter()
        .map(|h| h.trim().to_owned())
        .collect();
    let columns = names
        .iter()
        .map(|name| {
            header.iter().position(|h| h == name).ok_or_else(|| {
                DataError::Problem(Problem::field(
                    "data",
                    format!(
                        "{} has no column `{name}` for the placeholder `{{{{{name}}}}}` (its \
                         columns: {})",
                        path.display(),
                        header.join(", ")
                    ),
                ))
            })
        })
        .collect::<Result<_, _>>()?;
    let overrides = header
        .iter()
        .enumerate()
        .filter_map(|(i, h)| Field::named(h).filter(|f| !f.is_content()).map(|f| (i, f)))
        .collect();
    Ok(Source::Csv(Box::new(CsvData {
        path: path.to_owned(),
        reader,
        record: ::csv::ByteRecord::new(),
        columns,
        overrides,
    })))
}

impl Rows {
    /// The sha256 of the spec, its included files and what was read of the
    /// data file so far.
    pub(super) fn hasher(&self) -> &Sha256 {
        match &self.source {
            Source::Inline { hasher, .. } => hasher,
            Source::Csv(data) => &data.reader.get_ref().hasher,
            Source::Jsonl { reader, .. } => &reader.get_ref().hasher,
        }
    }

    /// The file the items' lines are in: the data file, or the spec.
    pub(super) fn items_path(&self) -> &Path {
        match &self.source {
            Source::Inline { .. } => &self.path,
            Source::Csv(data) => &data.path,
            Source::Jsonl { path, .. } => path,
        }
    }

    /// The line last read, for placing a read failure.
    pub(super) fn line(&self) -> u64 {
        match &self.source {
            Source::Inline { line, .. } | Source::Jsonl { line, .. } => *line,
            Source::Csv(data) => data.reader.position().line(),
        }
    }

    /// The next row's item or what is wrong with it; `None` at the end.
    pub(super) fn next(&mut self) -> io::Result<Option<Result<Item, ItemError>>> {
        let found = match &mut self.source {
            Source::Inline { items, line, .. } => items.next().map(|(at, object)| {
                *line = at;
                Found::Object(at, Ok(object), "key")
            }),
            Source::Csv(data) => match data.reader.read_byte_record(&mut data.record)? {
                true => Some(Found::Csv(data.record.position().map_or(0, |p| p.line()))),
                false => None,
            },
            Source::Jsonl {
                reader, buf, line, ..
            } => loop {
                buf.clear();
                if reader.read_until(b'\n', buf)? == 0 {
                    break None;
                }
                *line += 1;
                let mut bytes = buf.as_slice();
                if *line == 1 {
                    bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
                }
                if !bytes.iter().all(u8::is_ascii_whitespace) {
                    break Some(Found::Object(*line, super::jsonl::object(bytes), "field"));
                }
            },
        };
        let Some(found) = found else {
            return Ok(None);
        };
        self.rows += 1;
        self.at = match &found {
            Found::Object(at, ..) | Found::Csv(at) => *at,
        };
        let (line, item) = match (found, &self.source) {
            (Found::Object(at, object, what), _) => {
                (at, object.and_then(|o| self.object_item(&o, what)))
            }
            (Found::Csv(at), Source::Csv(data)) => (at, self.csv_item(data)),
            (Found::Csv(at), _) => unreachable!("CSV rows come from CSV data, line {at}"),
        };
        let path = self.items_path();
        Ok(Some(item.map_err(|p| p.at(path, line))))
    }

    /// The item of a JSON object row (a JSONL line or an inline item).
    /// Inline items (`what` = "key") may hold only placeholder values and
    /// item fields; a JSONL row's other fields are data left unused.
    fn object_item(&self, object: &Map<String, Value>, what: &str) -> Result<Item, Problem> {
        let row: Vec<_> = self
            .names
            .iter()
            .map(|name| object.get(name).and_then(text))
            .collect();
        let mut overrides = Vec::new();
        for (name, value) in object {
            match Field::named(name).filter(|f| !f.is_content()) {
                Some(field) => overrides.push((field, Raw::Json(value))),
                None if what == "key" && !self.names.contains(name) => {
                    return Err(Problem::field(
                        name,
                        format!(
                            "unknown key: no placeholder uses it and it is no item field ({})",
                            setting_names()
                        ),
                    ))
                }
                None => {}
            }
        }
        self.item(&row, overrides, what)
    }

    fn csv_item(&self, data: &CsvData) -> Result<Item, Problem> {
        let cell = |i: usize| {
            data.record
                .get(i)
                .map(|bytes| std::str::from_utf8(bytes).map_err(|e| (i, e)))
                .transpose()
        };
        let mut row = Vec::with_capacity(data.columns.len());
        for &column in &data.columns {
            let value = cell(column).map_err(|(_, e)| {
                Problem::field(&self.names[row.len()], super::fields::invalid_utf8(&e))
            })?;
            row.push(value.map(Cow::Borrowed));
        }
        let mut overrides = Vec::new();
        for &(column, field) in &data.overrides {
            let value = cell(column)
                .map_err(|(_, e)| Problem::field(field.name(), super::fields::invalid_utf8(&e)))?;
            if let Some(value) = value {
                overrides.push((field, Raw::Text(value)));
            }
        }
        self.item(&row, overrides, "column")
    }

    /// Builds the item of the current row from the defaults, the filled
    /// templates and the row's overrides, each checked as a job file's.
    fn item(
        &self,
        row: &[Option<Cow<'_, str>>],
        overrides: Vec<(Field, Raw<'_>)>,
        what: &str,
    ) -> Result<Item, Problem> {
        let missing = |index: usize| {
            let name = &self.names[index];
            Problem::field(
                name,
                format!("no {what} `{name}` for the placeholder `{{{{{name}}}}}`"),
            )
        };
        let mut item = self.defaults.clone();
        item.line = self.at;
        match &self.body {
            Body::Prompt(template) => {
                let prompt = template.fill(row).map_err(missing)?;
                set(&mut item, Field::Prompt, Raw::Text(&prompt))?;
            }
            Body::Messages(turns) => {
                let mut filled = Vec::with_capacity(turns.len());
                for (role, template) in turns {
                    let text = template.fill(row).map_err(missing)?;
                    filled.push(Turn { role: *role, text });
                }
                let last = filled.pop().map(|t| t.text).unwrap_or_default();
                set(&mut item, Field::Prompt, Raw::Text(&last))?;
                item.turns = filled;
            }
        }
        let id = match &self.id {
            Some(id) => id.fill(row).map_err(missing)?,
            None => self.rows.to_string(),
        };
        set(&mut item, Field::Id, Raw::Text(&id))?;
        if let Some(system) = &self.system {
            set(
                &mut item,
                Field::System,
                Raw::Text(&system.fill(row).map_err(missing)?),
            )?;
        }
        for (field, raw) in overrides {
            // Like a job file's, a null or empty value is absent.
            if !matches!(raw, Raw::Json(Value::Null) | Raw::Text("")) {
                set(&mut item, field, raw)?;
            }
        }
        Ok(item)
    }
}

/// A value as placeholder text: strings as they are, numbers and booleans
/// as written, arrays and objects as JSON; `null` is no value.
fn text(value: &Value) -> Option<Cow<'_, str>> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(Cow::Borrowed(s)),
        other => Some(Cow::Owned(other.to_string())),
    }
}

/// Leading spaces of a line.
fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// Whether a line holds nothing (blank or a comment).
fn is_blank(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#')
}

/// The 1-based line of the key at `keys` (a top-level key, then keys
/// nested under it), as far as it is found; line 1 when none is. A plain
/// scan of block-style YAML: serde_yaml tells no line for a value that
/// parsed.
fn key_line(text: &str, keys: &[&str]) -> u64 {
    let mut found = 1;
    let mut parent: Option<usize> = None;
    let mut keys = keys.iter();
    let Some(mut key) = keys.next() else {
        return found;
    };
    for (n, line) in text.lines().enumerate() {
        if is_blank(line) {
            continue;
        }
        let depth = indent(line);
        if parent.is_some_and(|p| depth <= p) {
            break;
        }
        let wanted = match parent {
            None => depth == 0,
            Some(_) => true,
        };
        let body = line.trim_start().trim_start_matches("- ");
        if wanted
            && body
                .strip_prefix(*key)
                .is_some_and(|r| r.trim_start().starts_with(':'))
        {
            found = n as u64 + 1;
            parent = Some(depth);
            match keys.next() {
                Some(next) => key = next,
                None => break,
            }
        }
    }
    found
}

/// The line each of the `count` inline items starts on: the `- ` entries
/// under the top-level `items:`. When they cannot be told apart (flow
/// style), every item gets the line of `items:`.
fn item_lines(text: &str, count: usize) -> Vec<u64> {
    let start = key_line(text, &["items"]);
    let mut lines = Vec::new();
    let mut dash = None;
    for (n, line) in text.lines().enumerate().skip(start as usize) {
        if is_blank(line) {
            continue;
        }
        let depth = indent(line);
        let is_entry = line.trim_start().starts_with('-');
        match dash {
            None if is_entry => dash = Some(depth),
            None => break,
            Some(d) if depth < d || (depth == d && !is_entry) => break,
            Some(_) => {}
        }
        if is_entry && Some(depth) == dash {
            lines.push(n as u64 + 1);
        }
    }
    if lines.len() != count {
        lines = vec![start; count];
    }
    lines
}
