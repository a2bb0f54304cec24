//! The fields of an item and their checks, shared by every format: a format
//! reader hands over `(field, value)` pairs and gets an [`Item`] or the first
//! problem, so JSONL and CSV accept and refuse exactly the same things.

use super::media::{self, Media, MediaKind};
use super::{Item, ItemError};
use serde_json::Value;
use std::path::Path;

/// A known field of a job item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Field {
    Id,
    Prompt,
    Model,
    System,
    MaxOutputTokens,
    Temperature,
    Video,
    Image,
    Audio,
    Document,
}

impl Field {
    /// Every field, in the order messages list them.
    pub(super) const ALL: [Field; 10] = [
        Field::Id,
        Field::Prompt,
        Field::Model,
        Field::System,
        Field::MaxOutputTokens,
        Field::Temperature,
        Field::Video,
        Field::Image,
        Field::Audio,
        Field::Document,
    ];

    /// The media fields, with what they hold.
    const MEDIA: [(Field, MediaKind); 4] = [
        (Field::Video, MediaKind::Video),
        (Field::Image, MediaKind::Image),
        (Field::Audio, MediaKind::Audio),
        (Field::Document, MediaKind::Document),
    ];

    /// The name users write (JSON key or CSV column).
    pub(super) fn name(self) -> &'static str {
        match self {
            Field::Id => "id",
            Field::Prompt => "prompt",
            Field::Model => "model",
            Field::System => "system",
            Field::MaxOutputTokens => "max_output_tokens",
            Field::Temperature => "temperature",
            Field::Video => "video",
            Field::Image => "image",
            Field::Audio => "audio",
            Field::Document => "document",
        }
    }

    /// The field called `name`, or a problem naming it and listing the
    /// known ones (catches `promt`). `what` is "field" or "column".
    pub(super) fn parse(name: &str, what: &str) -> Result<Field, Problem> {
        Field::ALL
            .into_iter()
            .find(|f| f.name() == name)
            .ok_or_else(|| {
                let known: Vec<&str> = Field::ALL.iter().map(|f| f.name()).collect();
                Problem::field(
                    name,
                    format!("unknown {what}; expected one of: {}", known.join(", ")),
                )
            })
    }

    /// Fields an item cannot do without.
    pub(super) fn is_required(self) -> bool {
        matches!(self, Field::Id | Field::Prompt)
    }
}

/// A value as a format gives it: typed JSON, or CSV text.
#[derive(Debug, Clone, Copy)]
pub(super) enum Raw<'a> {
    Json(&'a Value),
    Text(&'a str),
}

/// What is wrong with a record, before the path and line are attached.
#[derive(Debug)]
pub(super) struct Problem {
    field: Option<String>,
    reason: String,
}

impl Problem {
    /// A problem with the record as a whole (malformed JSON, bad UTF-8).
    pub(super) fn record(reason: impl Into<String>) -> Self {
        Problem {
            field: None,
            reason: reason.into(),
        }
    }

    /// A problem with one field.
    pub(super) fn field(name: &str, reason: impl Into<String>) -> Self {
        Problem {
            field: Some(name.to_owned()),
            reason: reason.into(),
        }
    }

    /// Places the problem in the file.
    pub(super) fn at(self, path: &Path, line: u64) -> ItemError {
        ItemError {
            path: path.to_owned(),
            line,
            field: self.field,
            reason: self.reason,
        }
    }
}

/// The values of one record, by field; `None` is absent.
#[derive(Debug, Default)]
pub(super) struct Values<'a>([Option<Raw<'a>>; Field::ALL.len()]);

impl<'a> Values<'a> {
    /// Sets `field`. JSON `null` and empty CSV cells count as absent, so an
    /// export with empty optional columns needs no cleaning.
    pub(super) fn set(&mut self, field: Field, raw: Raw<'a>) {
        let absent = match raw {
            Raw::Json(v) => v.is_null(),
            Raw::Text(t) => t.is_empty(),
        };
        self.0[field as usize] = (!absent).then_some(raw);
    }

    fn get(&self, field: Field) -> Option<Raw<'a>> {
        self.0[field as usize]
    }

    fn required(&self, field: Field) -> Result<Raw<'a>, Problem> {
        self.get(field)
            .ok_or_else(|| Problem::field(field.name(), "is required"))
    }

    /// Checks every field and builds the item found on `line` of the job
    /// file `job` (media paths are relative to its folder).
    pub(super) fn into_item(self, line: u64, job: &Path) -> Result<Item, Problem> {
        let id = id(self.required(Field::Id)?)?;
        let prompt = non_empty(Field::Prompt, self.required(Field::Prompt)?)?;
        let model = self.get(Field::Model).map(model).transpose()?;
        // An empty system instruction is no instruction (Gemini refuses an
        // empty one), whatever the format.
        let system = self
            .get(Field::System)
            .map(|raw| string(Field::System, raw))
            .transpose()?
            .filter(|s| !s.trim().is_empty());
        let max_output_tokens = self
            .get(Field::MaxOutputTokens)
            .map(max_output_tokens)
            .transpose()?;
        let temperature = self.get(Field::Temperature).map(temperature).transpose()?;
        let media = self.media(job.parent().unwrap_or(Path::new("")))?;
        Ok(Item {
            id,
            line,
            prompt,
            model,
            system,
            max_output_tokens,
            temperature,
            media,
        })
    }

    /// Checks every file of the media fields; all their problems are told
    /// at once, under the first field that has one.
    fn media(&self, dir: &Path) -> Result<Vec<Media>, Problem> {
        let mut found = Vec::new();
        let mut problems: Vec<String> = Vec::new();
        let mut first_bad = None;
        for (field, what) in Field::MEDIA {
            let Some(raw) = self.get(field) else {
                continue;
            };
            let values: Vec<String> = match raw {
                Raw::Text(t) => t.split('|').map(str::to_owned).collect(),
                Raw::Json(Value::String(s)) => vec![s.clone()],
                Raw::Json(Value::Array(items)) => items
                    .iter()
                    .map(|v| match v {
                        Value::String(s) => Ok(s.clone()),
                        v => Err(Problem::field(
                            field.name(),
                            format!("expected a list of paths, found {} in it", kind(v)),
                        )),
                    })
                    .collect::<Result<_, _>>()?,
                Raw::Json(v) => {
                    return Err(Problem::field(
                        field.name(),
                        format!("expected a path or a list of paths, found {}", kind(v)),
                    ))
                }
            };
            for value in values.iter().filter(|v| !v.trim().is_empty()) {
                match media::check(what, value, dir) {
                    Ok(media) => found.push(media),
                    Err(problem) => {
                        first_bad.get_or_insert(field);
                        problems.push(problem);
                    }
                }
            }
        }
        match first_bad {
            Some(field) => Err(Problem::field(field.name(), problems.join("; "))),
            None => Ok(found),
        }
    }
}

/// The reason for bytes that are not UTF-8 (a file saved as GBK or Latin-1),
/// with the position of the first bad byte to find it by.
pub(super) fn invalid_utf8(err: &std::str::Utf8Error) -> String {
    format!(
        "invalid UTF-8 at byte {} (save the file as UTF-8)",
        err.valid_up_to() + 1
    )
}

/// How a JSON value is called in "found …".
pub(super) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn string(field: Field, raw: Raw) -> Result<String, Problem> {
    match raw {
        Raw::Text(t) => Ok(t.to_owned()),
        Raw::Json(Value::String(s)) => Ok(s.clone()),
        Raw::Json(v) => Err(Problem::field(
            field.name(),
            format!("expected a string, found {}", kind(v)),
        )),
    }
}

fn non_empty(field: Field, raw: Raw) -> Result<String, Problem> {
    let s = string(field, raw)?;
    if s.trim().is_empty() {
        return Err(Problem::field(field.name(), "must not be empty"));
    }
    Ok(s)
}

/// A model name as the providers spell them: it goes into URLs.
fn model(raw: Raw) -> Result<String, Problem> {
    let name = non_empty(Field::Model, raw)?;
    crate::provider::check_model_name(&name)
        .map_err(|reason| Problem::field(Field::Model.name(), reason))?;
    Ok(name)
}

/// An id is a string, or an integer taken as its decimal text (spreadsheet
/// row numbers exported to JSON).
///
/// Ids starting with [`super::SKIPPED_ID_PREFIX`] are refused: that
/// namespace names the rows of skipped lines, so none can collide with an
/// item's.
fn id(raw: Raw) -> Result<String, Problem> {
    let id = match raw {
        Raw::Json(Value::Number(n)) if n.is_i64() || n.is_u64() => return Ok(n.to_string()),
        Raw::Json(Value::String(_)) | Raw::Text(_) => non_empty(Field::Id, raw)?,
        Raw::Json(v) => {
            return Err(Problem::field(
                Field::Id.name(),
                format!("expected a string or an integer, found {}", kind(v)),
            ))
        }
    };
    if id.starts_with(super::SKIPPED_ID_PREFIX) {
        return Err(Problem::field(
            Field::Id.name(),
            format!(
                "ids starting with `{}` are reserved for the rows of skipped lines",
                super::SKIPPED_ID_PREFIX
            ),
        ));
    }
    Ok(id)
}

fn max_output_tokens(raw: Raw) -> Result<u32, Problem> {
    let expected = |found: String| {
        Problem::field(
            Field::MaxOutputTokens.name(),
            format!("expected an integer >= 1, found {found}"),
        )
    };
    let n = match raw {
        Raw::Json(Value::Number(n)) => n.as_u64().ok_or_else(|| expected(n.to_string()))?,
        Raw::Json(v) => return Err(expected(kind(v).to_owned())),
        Raw::Text(t) => t.trim().parse().map_err(|_| expected(format!("`{t}`")))?,
    };
    match u32::try_from(n) {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(expected(n.to_string())),
    }
}

fn temperature(raw: Raw) -> Result<f32, Problem> {
    let field = Field::Temperature.name();
    let t = match raw {
        Raw::Json(Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
        Raw::Json(v) => {
            return Err(Problem::field(
                field,
                format!("expected a number, found {}", kind(v)),
            ))
        }
        Raw::Text(t) => t
            .trim()
            .parse()
            .map_err(|_| Problem::field(field, format!("expected a number, found `{t}`")))?,
    };
    // `contains` is false for NaN, so "nan" in a CSV cell is refused too.
    if !(0.0..=2.0).contains(&t) {
        return Err(Problem::field(
            field,
            format!("must be between 0.0 and 2.0, found {t}"),
        ));
    }
    Ok(t as f32)
}
