//! The providers' own batch files as jobs: a JSONL job whose first line has
//! the shape of an OpenAI Batch API input line (`{"custom_id", "method",
//! "url", "body"}`) or of a Gemini batch input line (`{"key", "request"}`)
//! is such a file, with no flag and no conversion. Every later line must
//! have the same shape.
//!
//! Each line becomes an [`Item`] whose id is its `custom_id` / `key` and
//! whose [`Item::raw`] is its `body` / `request`, sent as it is (see
//! [`RawBody`]). The item's `prompt` holds the body's texts, for the token
//! estimates (quotas, costs); its `model` is the body's (OpenAI) or the
//! request's optional `model`, `models/` prefix removed (Gemini: a batch
//! file's lines name none, the batch's create call does, so it is
//! otherwise the config's `model`); its `max_output_tokens` is the body's cap.
//!
//! Owns: recognising a batch file's shape and turning each of its lines into
//! an item, or a problem naming the line and field. Never: the wire types
//! (in [`crate::provider::batchline`]), nor sending or rewriting a body.

use super::fields::{kind, Problem};
use super::{Item, SKIPPED_ID_PREFIX};
use crate::provider::batchline::OPENAI_CHAT_URL;
use crate::provider::{check_model_name, ProviderKind, RawBody};
use serde_json::{Map, Value};
use std::sync::Arc;

/// The shape of a JSONL job line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    /// keyfan's own fields (`id`, `prompt`, …).
    Keyfan,
    /// An OpenAI Batch API input line.
    OpenAi,
    /// A Gemini batch input line.
    Gemini,
}

/// The fields of an OpenAI Batch API input line.
const OPENAI_FIELDS: [&str; 4] = ["custom_id", "method", "url", "body"];

/// The fields of a Gemini batch input line.
const GEMINI_FIELDS: [&str; 2] = ["key", "request"];

impl Shape {
    /// The shape of a line by its top-level names: any field of an OpenAI
    /// batch line makes it one, else any of a Gemini batch line (keyfan's
    /// own fields share no name with either).
    pub(super) fn of(object: &Map<String, Value>) -> Shape {
        let has = |fields: &[&str]| fields.iter().any(|f| object.contains_key(*f));
        if has(&OPENAI_FIELDS) {
            Shape::OpenAi
        } else if has(&GEMINI_FIELDS) {
            Shape::Gemini
        } else {
            Shape::Keyfan
        }
    }

    /// The provider whose batch file this shape is a line of.
    pub(super) fn batch(self) -> Option<ProviderKind> {
        match self {
            Shape::Keyfan => None,
            Shape::OpenAi => Some(ProviderKind::Openai),
            Shape::Gemini => Some(ProviderKind::Gemini),
        }
    }

    /// What a line of this shape is called in messages.
    pub(super) fn name(self) -> &'static str {
        match self {
            Shape::Keyfan => "a keyfan job line (`id`, `prompt`, …)",
            Shape::OpenAi => "an OpenAI Batch API line (`custom_id`, `method`, `url`, `body`)",
            Shape::Gemini => "a Gemini batch line (`key`, `request`)",
        }
    }
}

/// The item of an OpenAI Batch API input line, numbered `line`.
pub(super) fn openai(mut object: Map<String, Value>, line: u64) -> Result<Item, Problem> {
    known_fields(&object, &OPENAI_FIELDS, Shape::OpenAi)?;
    let id = id(&object, "custom_id")?;
    match object.get("method") {
        Some(Value::String(method)) if method == "POST" => {}
        Some(Value::String(method)) => {
            return Err(Problem::field(
                "method",
                format!("expected `POST`, found `{method}`"),
            ))
        }
        other => return Err(expected("method", "the string `POST`", other)),
    }
    match object.get("url") {
        Some(Value::String(url)) if url == OPENAI_CHAT_URL => {}
        Some(Value::String(url)) => {
            return Err(Problem::field(
                "url",
                format!(
                    "`{url}` is not supported: keyfan sends chat completions only \
                     (`{OPENAI_CHAT_URL}`)"
                ),
            ))
        }
        other => return Err(expected("url", &format!("`{OPENAI_CHAT_URL}`"), other)),
    }
    let body = body(&mut object, "body")?;
    let model = match body.get("model") {
        Some(Value::String(model)) => {
            check_model_name(model).map_err(|reason| Problem::field("body.model", reason))?;
            model.clone()
        }
        other => return Err(expected("body.model", "a model name", other)),
    };
    if body.get("stream").is_some_and(|s| s != &Value::Bool(false)) {
        return Err(Problem::field(
            "body.stream",
            "a batch request is answered whole: leave `stream` out or false",
        ));
    }
    let messages = match body.get("messages") {
        Some(Value::Array(messages)) if !messages.is_empty() => messages,
        other => return Err(expected("body.messages", "a non-empty array", other)),
    };
    let mut prompt = String::new();
    for message in messages {
        match message.get("content") {
            Some(Value::String(text)) => push(&mut prompt, text),
            Some(Value::Array(parts)) => texts(&mut prompt, parts),
            _ => {}
        }
    }
    let cap = match body.get("max_completion_tokens") {
        Some(cap) => Some(output_cap("body.max_completion_tokens", cap)?),
        None => body
            .get("max_tokens")
            .map(|cap| output_cap("body.max_tokens", cap))
            .transpose()?,
    };
    Ok(raw_item(
        id,
        line,
        prompt,
        Some(model),
        cap,
        ProviderKind::Openai,
        body,
    ))
}

/// The item of a Gemini batch input line, numbered `line`.
pub(super) fn gemini(mut object: Map<String, Value>, line: u64) -> Result<Item, Problem> {
    known_fields(&object, &GEMINI_FIELDS, Shape::Gemini)?;
    let id = id(&object, "key")?;
    let request = body(&mut object, "request")?;
    let model = match request.get("model") {
        None => None,
        Some(Value::String(model)) => {
            check_model_name(model).map_err(|reason| Problem::field("request.model", reason))?;
            // `models/{model}`, as the API names it, routes as `{model}`.
            Some(model.strip_prefix("models/").unwrap_or(model).to_owned())
        }
        other => return Err(expected("request.model", "a model name", other)),
    };
    let contents = match request.get("contents") {
        Some(Value::Array(contents)) if !contents.is_empty() => contents,
        other => return Err(expected("request.contents", "a non-empty array", other)),
    };
    let mut prompt = String::new();
    let system = ["systemInstruction", "system_instruction"]
        .iter()
        .filter_map(|name| request.get(*name));
    for content in system.chain(contents) {
        if let Some(Value::Array(parts)) = content.get("parts") {
            texts(&mut prompt, parts);
        }
    }
    let config = ["generationConfig", "generation_config"]
        .iter()
        .find_map(|name| request.get(*name));
    let cap = [
        (
            "maxOutputTokens",
            "request.generationConfig.maxOutputTokens",
        ),
        (
            "max_output_tokens",
            "request.generation_config.max_output_tokens",
        ),
    ]
    .iter()
    .find_map(|(name, path)| Some((config?.get(*name)?, *path)))
    .map(|(cap, path)| output_cap(path, cap))
    .transpose()?;
    Ok(raw_item(
        id,
        line,
        prompt,
        model,
        cap,
        ProviderKind::Gemini,
        request,
    ))
}

/// The item of a batch line: its body goes as it is.
fn raw_item(
    id: String,
    line: u64,
    prompt: String,
    model: Option<String>,
    max_output_tokens: Option<u32>,
    kind: ProviderKind,
    body: Map<String, Value>,
) -> Item {
    Item {
        id,
        line,
        prompt,
        model,
        max_output_tokens,
        raw: Some(RawBody {
            kind,
            body: Arc::new(body),
        }),
        ..Item::default()
    }
}

/// An error for the first field that is not one of `fields`.
fn known_fields(object: &Map<String, Value>, fields: &[&str], shape: Shape) -> Result<(), Problem> {
    match object.keys().find(|name| !fields.contains(&name.as_str())) {
        Some(name) => Err(Problem::field(
            name,
            format!(
                "unknown field: the file's first line makes it a batch file, whose lines are \
                 {}",
                shape.name()
            ),
        )),
        None => Ok(()),
    }
}

/// The line's id from its field `name`: a non-empty string.
fn id(object: &Map<String, Value>, name: &str) -> Result<String, Problem> {
    match object.get(name) {
        Some(Value::String(id)) if id.starts_with(SKIPPED_ID_PREFIX) => Err(Problem::field(
            name,
            format!("ids starting with `{SKIPPED_ID_PREFIX}` are reserved for the rows of skipped lines"),
        )),
        Some(Value::String(id)) if !id.trim().is_empty() => Ok(id.clone()),
        other => Err(expected(name, "a non-empty string", other)),
    }
}

/// The object in field `name`, taken out of the line.
fn body(object: &mut Map<String, Value>, name: &str) -> Result<Map<String, Value>, Problem> {
    match object.remove(name) {
        Some(Value::Object(body)) => Ok(body),
        other => Err(expected(name, "an object", other.as_ref())),
    }
}

/// An output cap: an integer from 1 to `u32::MAX`.
fn output_cap(name: &str, value: &Value) -> Result<u32, Problem> {
    value
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .filter(|&n| n >= 1)
        .ok_or_else(|| Problem::field(name, format!("expected an integer >= 1, found {value}")))
}

/// "is required" for an absent field, else "expected …, found …".
fn expected(name: &str, what: &str, found: Option<&Value>) -> Problem {
    match found {
        None => Problem::field(name, "is required"),
        Some(value) => Problem::field(name, format!("expected {what}, found {}", kind(value))),
    }
}

/// Appends the `text` of every part that has one (OpenAI's content parts,
/// Gemini's parts) to `prompt`.
fn texts(prompt: &mut String, parts: &[Value]) {
    for text in parts.iter().filter_map(|p| p.get("text")?.as_str()) {
        push(prompt, text);
    }
}

/// Appends `text` to `prompt`, a line apart from what is there.
fn push(prompt: &mut String, text: &str) {
    if !prompt.is_empty() {
        prompt.push('\n');
    }
    prompt.push_str(text);
}

#[cfg(test)]
mod tests {
    use super::super::{validate, JobReader};
    use super::*;
    use std::path::Path;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/batch/");

    fn read(path: &Path) -> Vec<Result<Item, super::super::ItemError>> {
        JobReader::open(path).unwrap().collect()
    }

    fn job(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("batch.jsonl");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    /// The errors of a job, as `line: field: reason`.
    fn errors(text: &str) -> Vec<String> {
        let (_dir, path) = job(text);
        read(&path)
            .into_iter()
            .filter_map(Result::err)
            .map(|e| format!("{}: {}: {}", e.line, e.field.unwrap_or_default(), e.reason))
            .collect()
    }

    #[test]
    fn an_openai_batch_file_is_read_by_its_shape() {
        let path = Path::new(FIXTURES).join("openai_batch_input.jsonl");
        let items: Vec<Item> = read(&path).into_iter().map(Result::unwrap).collect();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].id, "request-1");
        assert_eq!(items[0].model.as_deref(), Some("gpt-4o-mini"));
        assert_eq!(items[0].max_output_tokens, Some(1000));
        assert_eq!(
            items[0].prompt,
            "You are a helpful assistant.\nHello world!"
        );
        assert_eq!(items[1].prompt, "Name three \nprimary colours.");
        let raw = items[1].raw.as_ref().unwrap();
        assert_eq!(raw.kind, ProviderKind::Openai);
        let line: Value = serde_json::from_str(
            std::fs::read_to_string(&path)
                .unwrap()
                .lines()
                .nth(1)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            Value::Object((*raw.body).clone()),
            line["body"],
            "sent as written"
        );
        assert_eq!(validate(&path).unwrap().batch, Some(ProviderKind::Openai));
    }

    #[test]
    fn a_gemini_batch_file_is_read_by_its_shape() {
        let path = Path::new(FIXTURES).join("gemini_batch_input.jsonl");
        let items: Vec<Item> = read(&path).into_iter().map(Result::unwrap).collect();
        assert_eq!(
            items.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
            ["request-1", "request-2"]
        );
        assert_eq!(items[0].model, None, "the batch's model is the config's");
        assert_eq!(items[0].prompt, "...");
        assert_eq!(items[0].raw.as_ref().unwrap().kind, ProviderKind::Gemini);
        assert_eq!(validate(&path).unwrap().batch, Some(ProviderKind::Gemini));
        // A request may name its model and cap, in either casing.
        let (_dir, path) = job(concat!(
            r#"{"key": "a", "request": {"model": "models/gemini-2.5-pro", "systemInstruction": {"parts": [{"text": "Be terse."}]}, "contents": [{"role": "user", "parts": [{"text": "Hi"}]}], "generationConfig": {"maxOutputTokens": 64}}}"#,
            "\n",
            r#"{"key": "b", "request": {"contents": [{"parts": [{"text": "Yo"}]}], "generation_config": {"max_output_tokens": 32}}}"#,
        ));
        let items: Vec<Item> = read(&path).into_iter().map(Result::unwrap).collect();
        assert_eq!(items[0].model.as_deref(), Some("gemini-2.5-pro"));
        assert_eq!(items[0].prompt, "Be terse.\nHi");
        assert_eq!(
            (items[0].max_output_tokens, items[1].max_output_tokens),
            (Some(64), Some(32))
        );
    }

    #[test]
    fn every_line_must_have_the_first_lines_shape() {
        let openai = r#"{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}}"#;
        let gemini = r#"{"key": "b", "request": {"contents": [{"parts": [{"text": "hi"}]}]}}"#;
        let keyfan = r#"{"id": "c", "prompt": "hi"}"#;
        let found = errors(&format!("{openai}\n\n{gemini}\n{keyfan}\n"));
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].starts_with("3: : this line is a Gemini batch line")
                && found[0].contains("but line 1 is an OpenAI Batch API line"),
            "{found:?}"
        );
        assert!(
            found[1].starts_with("4: : this line is a keyfan job line"),
            "{found:?}"
        );
        // A keyfan job stays one.
        let found = errors(&format!("{keyfan}\n{openai}\n"));
        assert!(
            found[0].starts_with("2: : this line is an OpenAI Batch API line"),
            "{found:?}"
        );
    }

    #[test]
    fn a_bad_batch_line_is_refused_with_its_line_and_field() {
        let line = |fields: &str| {
            format!(
                r#"{{{fields}"body": {{"model": "gpt-4o-mini", "messages": [{{"role": "user", "content": "hi"}}]}}}}"#
            )
        };
        let ok = r#""custom_id": "ok", "method": "POST", "url": "/v1/chat/completions", "#;
        let cases = [
            (
                line(r#""custom_id": "a", "method": "POST", "url": "/v1/embeddings", "#),
                "url: `/v1/embeddings` is not supported",
            ),
            (
                line(r#""method": "POST", "url": "/v1/chat/completions", "#),
                "custom_id: is required",
            ),
            (
                line(r#""custom_id": "a", "method": "GET", "url": "/v1/chat/completions", "#),
                "method: expected `POST`, found `GET`",
            ),
            (
                line(&format!(r#"{ok}"metadata": {{}}, "#)).replace("\"ok\"", "\"b\""),
                "metadata: unknown field",
            ),
            (
                line(r##""custom_id": "#line:3", "method": "POST", "url": "/v1/chat/completions", "##),
                "custom_id: ids starting with `#line:` are reserved",
            ),
            (
                format!(r#"{{{ok}"body": {{"messages": []}}}}"#).replace("\"ok\"", "\"c\""),
                "body.model: is required",
            ),
            (
                format!(r#"{{{ok}"body": {{"model": "m", "messages": [{{"role": "user", "content": "x"}}], "stream": true}}}}"#)
                    .replace("\"ok\"", "\"d\""),
                "body.stream: a batch request is answered whole",
            ),
            (
                format!(r#"{{{ok}"body": {{"model": "m", "messages": [{{"role": "user", "content": "x"}}], "max_tokens": 0}}}}"#)
                    .replace("\"ok\"", "\"e\""),
                "body.max_tokens: expected an integer >= 1, found 0",
            ),
            (line(ok), "custom_id: duplicate id `ok`, first used on line 1"),
        ];
        let text: String = std::iter::once(line(ok))
            .chain(cases.iter().map(|(l, _)| l.clone()))
            .map(|l| l + "\n")
            .collect();
        let found = errors(&text);
        assert_eq!(found.len(), cases.len(), "{found:?}");
        for (i, ((_, says), error)) in cases.iter().zip(&found).enumerate() {
            let expected = format!("{}: {says}", i + 2);
            assert!(error.starts_with(&expected), "{error} is not {expected}");
        }
    }

    #[test]
    fn a_bad_gemini_line_is_refused_with_its_line_and_field() {
        let found = errors(concat!(
            r#"{"key": "a", "request": {"contents": []}}"#,
            "\n",
            r#"{"key": 7, "request": {"contents": [{"parts": [{"text": "hi"}]}]}}"#,
            "\n",
            r#"{"request": {"contents": [{"parts": [{"text": "hi"}]}]}}"#,
            "\n",
            r#"{"key": "d", "request": "hi"}"#,
            "\n",
        ));
        assert_eq!(
            found,
            [
                "1: request.contents: expected a non-empty array, found an array",
                "2: key: expected a non-empty string, found a number",
                "3: key: is required",
                "4: request: expected an object, found a string",
            ]
        );
    }
}
