//! The fields of an item and their checks, shared by every format: a format
//! reader hands over `(field, value)` pairs and gets an [`Item`] or the first
//! problem, so JSONL and CSV accept and refuse exactly the same things.

use super::media::{self, Media, MediaKind};
use super::{Item, ItemError};
use crate::provider::{MediaResolution, Role, Turn};
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A known field of a job item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Field {
    Id,
    Prompt,
    Messages,
    Model,
    System,
    MaxOutputTokens,
    Temperature,
    TopP,
    TopK,
    Stop,
    Seed,
    ThinkingBudget,
    ThinkingLevel,
    ReasoningEffort,
    ResponseMimeType,
    ResponseSchema,
    SchemaRetries,
    MediaResolution,
    StartOffset,
    EndOffset,
    Fps,
    Video,
    Image,
    Audio,
    Document,
    DependsOn,
}

/// The most answers an item may send again for not fitting its schema.
const MAX_SCHEMA_RETRIES: i64 = 10;

/// The values `thinking_level` and `reasoning_effort` take.
const LEVELS: [&str; 4] = ["minimal", "low", "medium", "high"];

/// The largest `fps`: "The valid range is (0.0, 24.0]" (googleapis/python-genai
/// `types.py`, `class VideoMetadata`).
const MAX_FPS: f64 = 24.0;

/// The values `response_mime_type` takes.
const MIME_TYPES: [&str; 2] = ["application/json", "text/plain"];

impl Field {
    /// Every field, in the order messages list them.
    pub(super) const ALL: [Field; 26] = [
        Field::Id,
        Field::Prompt,
        Field::Messages,
        Field::Model,
        Field::System,
        Field::MaxOutputTokens,
        Field::Temperature,
        Field::TopP,
        Field::TopK,
        Field::Stop,
        Field::Seed,
        Field::ThinkingBudget,
        Field::ThinkingLevel,
        Field::ReasoningEffort,
        Field::ResponseMimeType,
        Field::ResponseSchema,
        Field::SchemaRetries,
        Field::MediaResolution,
        Field::StartOffset,
        Field::EndOffset,
        Field::Fps,
        Field::Video,
        Field::Image,
        Field::Audio,
        Field::Document,
        Field::DependsOn,
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
            Field::Messages => "messages",
            Field::Model => "model",
            Field::System => "system",
            Field::MaxOutputTokens => "max_output_tokens",
            Field::Temperature => "temperature",
            Field::TopP => "top_p",
            Field::TopK => "top_k",
            Field::Stop => "stop",
            Field::Seed => "seed",
            Field::ThinkingBudget => "thinking_budget",
            Field::ThinkingLevel => "thinking_level",
            Field::ReasoningEffort => "reasoning_effort",
            Field::ResponseMimeType => "response_mime_type",
            Field::ResponseSchema => "response_schema",
            Field::SchemaRetries => "schema_retries",
            Field::MediaResolution => "media_resolution",
            Field::StartOffset => "start_offset",
            Field::EndOffset => "end_offset",
            Field::Fps => "fps",
            Field::Video => "video",
            Field::Image => "image",
            Field::Audio => "audio",
            Field::Document => "document",
            Field::DependsOn => "depends_on",
        }
    }

    /// The field called `name`, or a problem naming it and listing the
    /// known ones (catches `promt`). `what` is "field" or "column".
    pub(super) fn parse(name: &str, what: &str) -> Result<Field, Problem> {
        Field::named(name).ok_or_else(|| {
            let known: Vec<&str> = Field::ALL.iter().map(|f| f.name()).collect();
            Problem::field(
                name,
                format!("unknown {what}; expected one of: {}", known.join(", ")),
            )
        })
    }

    /// The field called `name`, if it is one.
    pub(super) fn named(name: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Fields that say what an item is (its id and what it asks), as
    /// opposed to how it is sent: a spec's defaults and per-row overrides
    /// may set only the others.
    pub(super) fn is_content(self) -> bool {
        matches!(
            self,
            Field::Id
                | Field::Prompt
                | Field::Messages
                | Field::Video
                | Field::Image
                | Field::Audio
                | Field::Document
        )
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
        let mut item = Item {
            id,
            line,
            ..Item::default()
        };
        // What the item asks: a prompt, or a conversation.
        match (self.get(Field::Prompt), self.get(Field::Messages)) {
            (Some(_), Some(_)) => {
                return Err(Problem::field(
                    Field::Messages.name(),
                    "give `prompt` or `messages`, not both",
                ))
            }
            (None, Some(raw)) => set(&mut item, Field::Messages, raw)?,
            _ => set(&mut item, Field::Prompt, self.required(Field::Prompt)?)?,
        }
        for field in Field::ALL.into_iter().filter(|f| !f.is_content()) {
            if let Some(raw) = self.get(field) {
                set(&mut item, field, raw)?;
            }
        }
        item.media = self.media(job.parent().unwrap_or(Path::new("")))?;
        Ok(item)
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

/// Checks `raw` as the value of `field` and sets it on `item`: the one
/// place each field's rules live, for whole records and for the defaults
/// and per-row overrides of a spec alike.
pub(super) fn set(item: &mut Item, field: Field, raw: Raw) -> Result<(), Problem> {
    match field {
        Field::Id => item.id = id(raw)?,
        Field::Prompt => item.prompt = non_empty(field, raw)?,
        Field::Messages => (item.turns, item.prompt) = messages(raw)?,
        Field::Model => item.model = Some(model(raw)?),
        // An empty system instruction is no instruction (Gemini refuses an
        // empty one), whatever the format.
        Field::System => item.system = Some(string(field, raw)?).filter(|s| !s.trim().is_empty()),
        Field::MaxOutputTokens => item.max_output_tokens = Some(max_output_tokens(raw)?),
        Field::Temperature => item.temperature = Some(temperature(raw)?),
        Field::TopP => {
            let p = number(field, raw)?;
            if !(0.0..=1.0).contains(&p) {
                return Err(Problem::field(
                    field.name(),
                    format!("must be between 0.0 and 1.0, found {p}"),
                ));
            }
            item.generation.top_p = Some(p as f32);
        }
        Field::TopK => {
            item.generation.top_k = Some(integer(field, raw, 1, u32::MAX.into())? as u32)
        }
        Field::Stop => item.generation.stop = stop(raw)?,
        Field::Seed => item.generation.seed = Some(integer(field, raw, i64::MIN, i64::MAX)?),
        Field::ThinkingBudget => {
            item.generation.thinking_budget = Some(integer(field, raw, -1, i32::MAX.into())? as i32)
        }
        Field::ThinkingLevel => item.generation.thinking_level = Some(one_of(field, raw, &LEVELS)?),
        Field::ReasoningEffort => {
            item.generation.reasoning_effort = Some(one_of(field, raw, &LEVELS)?)
        }
        Field::ResponseMimeType => {
            item.generation.response_mime_type = Some(one_of(field, raw, &MIME_TYPES)?)
        }
        Field::ResponseSchema => item.generation.response_schema = Some(Arc::new(schema(raw)?)),
        Field::SchemaRetries => {
            item.schema_retries = Some(integer(field, raw, 0, MAX_SCHEMA_RETRIES)? as u32)
        }
        Field::DependsOn => item.depends_on = depends_on(raw)?,
        Field::MediaResolution => {
            let levels = MediaResolution::ALL.map(|(name, _)| name);
            let name = one_of(field, raw, &levels)?;
            item.generation.media_resolution = MediaResolution::ALL
                .into_iter()
                .find_map(|(n, level)| (n == name).then_some(level));
        }
        Field::StartOffset | Field::EndOffset => {
            let at = offset(field, raw)?;
            let clip = &mut item.generation.clip;
            let (start, end) = match field {
                Field::StartOffset => (Some(at), clip.end),
                _ => (clip.start, Some(at)),
            };
            if let (Some(start), Some(end)) = (start, end) {
                if end <= start {
                    return Err(Problem::field(
                        field.name(),
                        format!(
                            "end_offset ({}s) must be after start_offset ({}s)",
                            end.as_secs_f64(),
                            start.as_secs_f64()
                        ),
                    ));
                }
            }
            (clip.start, clip.end) = (start, end);
        }
        Field::Fps => {
            let fps = number(field, raw)?;
            if !(fps > 0.0 && fps <= MAX_FPS) {
                return Err(Problem::field(
                    field.name(),
                    format!("must be above 0 and at most {MAX_FPS} frames per second, found {fps}"),
                ));
            }
            item.generation.clip.fps = Some(fps);
        }
        // A file is checked where its item is read (its paths are relative
        // to the job's folder): it is not a setting a spec's defaults give.
        Field::Video | Field::Image | Field::Audio | Field::Document => {
            return Err(Problem::field(
                field.name(),
                "media are given per item (a job line or a spec's data row), not as a default",
            ))
        }
    }
    Ok(())
}

/// A video offset: seconds (a number, or its text), or a duration like
/// `90s`, `1.5s`, `1m30s` or `1h2m3s`.
fn offset(field: Field, raw: Raw) -> Result<Duration, Problem> {
    let bad = |found: String| {
        Problem::field(
            field.name(),
            format!("expected seconds (e.g. 90) or a duration like `1m30s`, found {found}"),
        )
    };
    let seconds = match raw {
        Raw::Json(Value::Number(n)) => n.as_f64().ok_or_else(|| bad(n.to_string()))?,
        Raw::Json(Value::String(s)) => duration_seconds(s).ok_or_else(|| bad(format!("`{s}`")))?,
        Raw::Text(s) => duration_seconds(s).ok_or_else(|| bad(format!("`{s}`")))?,
        Raw::Json(v) => return Err(bad(kind(v).to_owned())),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| bad(seconds.to_string()))
}

/// The seconds of `90`, `90s`, `1.5s`, `1m30s`, `2h`, `1h2m3.5s`: hours,
/// minutes and seconds in that order, each at most once; only the seconds
/// may have a fraction; a bare number is seconds.
pub(super) fn duration_seconds(text: &str) -> Option<f64> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        return Some(seconds);
    }
    let mut units: &[(char, f64)] = &[('h', 3600.0), ('m', 60.0), ('s', 1.0)];
    let (mut total, mut rest) = (0.0, text);
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (number, tail) = rest.split_at(end);
        let unit = tail.chars().next()?;
        let at = units.iter().position(|&(u, _)| u == unit)?;
        let scale = units[at].1;
        units = &units[at + 1..];
        if number.is_empty() || (unit != 's' && number.contains('.')) {
            return None;
        }
        total += number.parse::<f64>().ok()? * scale;
        rest = &tail[1..];
    }
    Some(total)
}

/// A conversation: a list (or, in a CSV cell, its JSON text) of
/// `{"role", "text"}`, roles `user` and `assistant` (or `model`), ending
/// with the user's turn. Returns the earlier turns and the last text.
fn messages(raw: Raw) -> Result<(Vec<Turn>, String), Problem> {
    let bad = |reason: String| Problem::field(Field::Messages.name(), reason);
    let parsed;
    let list = match raw {
        Raw::Json(Value::Array(list)) => list,
        Raw::Text(text) => {
            parsed = serde_json::from_str::<Value>(text)
                .map_err(|e| bad(format!("expected a JSON list of messages: {e}")))?;
            parsed
                .as_array()
                .ok_or_else(|| bad("expected a list of messages".to_owned()))?
        }
        Raw::Json(v) => return Err(bad(format!("expected a list, found {}", kind(v)))),
    };
    let mut turns = Vec::with_capacity(list.len());
    for (i, message) in list.iter().enumerate() {
        let field = |name: &str| message.get(name).and_then(Value::as_str);
        let role = field("role").and_then(role).ok_or_else(|| {
            bad(format!(
                "message {}: `role` must be user or assistant",
                i + 1
            ))
        })?;
        let text = field("text")
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| {
                bad(format!(
                    "message {}: `text` must be a non-empty string",
                    i + 1
                ))
            })?;
        if message.as_object().is_some_and(|m| m.len() > 2) {
            return Err(bad(format!(
                "message {}: only `role` and `text` are allowed",
                i + 1
            )));
        }
        turns.push(Turn {
            role,
            text: text.to_owned(),
        });
    }
    match turns.pop() {
        Some(last) if last.role == Role::User => Ok((turns, last.text)),
        _ => Err(bad("the last message must be the user's".to_owned())),
    }
}

/// A role as jobs name it.
pub(super) fn role(name: &str) -> Option<Role> {
    match name {
        "user" => Some(Role::User),
        "assistant" | "model" => Some(Role::Model),
        _ => None,
    }
}

/// A JSON Schema: a JSON object, or its JSON text (a CSV cell), using only
/// what [`crate::schema`] can check.
fn schema(raw: Raw) -> Result<Value, Problem> {
    let problem = |reason: String| Problem::field(Field::ResponseSchema.name(), reason);
    let text = match raw {
        Raw::Json(Value::String(text)) => text.as_str(),
        Raw::Text(text) => text,
        Raw::Json(value) => {
            crate::schema::check_schema(value).map_err(|e| problem(e.to_string()))?;
            return Ok(value.clone());
        }
    };
    let value: Value = serde_json::from_str(text).map_err(|e| {
        problem(format!(
            "expected a JSON Schema object, found invalid JSON: {e}"
        ))
    })?;
    crate::schema::check_schema(&value).map_err(|e| problem(e.to_string()))?;
    Ok(value)
}

/// The ids of an item's parents: a list of ids (strings or integers), one
/// id, or in a CSV cell ids separated by `|`. Each is kept once.
fn depends_on(raw: Raw) -> Result<Vec<String>, Problem> {
    let field = Field::DependsOn.name();
    let ids: Vec<String> = match raw {
        Raw::Text(text) => text
            .split('|')
            .map(str::trim)
            .filter(|id| !id.is_empty())
            .map(|id| id.to_owned())
            .collect(),
        Raw::Json(Value::Array(values)) => values
            .iter()
            .map(|value| {
                id(Raw::Json(value))
                    .map_err(|p| Problem::field(field, format!("in the list: {}", p.reason)))
            })
            .collect::<Result<_, _>>()?,
        Raw::Json(value) => {
            vec![id(Raw::Json(value)).map_err(|p| Problem::field(field, p.reason))?]
        }
    };
    let mut unique = Vec::with_capacity(ids.len());
    for id in ids {
        if !unique.contains(&id) {
            unique.push(id);
        }
    }
    Ok(unique)
}

/// A number, JSON or text.
fn number(field: Field, raw: Raw) -> Result<f64, Problem> {
    let found =
        |what: String| Problem::field(field.name(), format!("expected a number, found {what}"));
    match raw {
        Raw::Json(Value::Number(n)) => n.as_f64().ok_or_else(|| found(n.to_string())),
        Raw::Json(v) => Err(found(kind(v).to_owned())),
        Raw::Text(t) => t.trim().parse().map_err(|_| found(format!("`{t}`"))),
    }
}

/// An integer in `min..=max`, JSON or text.
fn integer(field: Field, raw: Raw, min: i64, max: i64) -> Result<i64, Problem> {
    let expected = |found: String| {
        Problem::field(
            field.name(),
            format!("expected an integer from {min} to {max}, found {found}"),
        )
    };
    let n = match raw {
        Raw::Json(Value::Number(n)) => n.as_i64().ok_or_else(|| expected(n.to_string()))?,
        Raw::Json(v) => return Err(expected(kind(v).to_owned())),
        Raw::Text(t) => t.trim().parse().map_err(|_| expected(format!("`{t}`")))?,
    };
    if (min..=max).contains(&n) {
        Ok(n)
    } else {
        Err(expected(n.to_string()))
    }
}

/// One of `values` (case-insensitive), as written there.
fn one_of(field: Field, raw: Raw, values: &[&str]) -> Result<String, Problem> {
    let s = string(field, raw)?;
    values
        .iter()
        .find(|v| v.eq_ignore_ascii_case(s.trim()))
        .map(|v| (*v).to_owned())
        .ok_or_else(|| {
            Problem::field(
                field.name(),
                format!("expected one of {}, found `{s}`", values.join(", ")),
            )
        })
}

/// Stop sequences: one string (a CSV cell) or a list of non-empty strings.
fn stop(raw: Raw) -> Result<Vec<String>, Problem> {
    let bad = |what: &str| {
        Problem::field(
            Field::Stop.name(),
            format!("expected a string or a list of non-empty strings, found {what}"),
        )
    };
    let list = match raw {
        Raw::Json(Value::Array(values)) => values
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(|| bad(kind(v))))
            .collect::<Result<Vec<_>, _>>()?,
        other => vec![string(Field::Stop, other)?],
    };
    if list.iter().any(String::is_empty) {
        return Err(bad("an empty string"));
    }
    Ok(list)
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
