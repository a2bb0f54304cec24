//! Structured output: the JSON Schema subset that Gemini's
//! `responseJsonSchema` and OpenAI's `json_schema` response format take,
//! checked by keyfan itself, both the schema (when the job is validated)
//! and each answer against it (when it arrives).
//!
//! Owns: which keywords are understood and what an answer must be. Never:
//! the network or retries (the worker retries an answer that does not fit).
//!
//! Checked: `type` (a name or a list of names, `integer` being a number
//! without a fraction), `properties`, `required`, `additionalProperties`
//! (`false` or a schema), `items`, `enum`, `anyOf`, `nullable`, `minimum`,
//! `maximum`, `minLength`, `maxLength`, `minItems`, `maxItems`. Annotations
//! are accepted and ignored: `description`, `title`, `format`, `$schema`,
//! `default`, `examples`, `propertyOrdering`. Any other keyword is refused
//! when the job is validated, so no constraint is silently left unchecked.
//! Written here, not taken from a crate: the subset is small, and a full
//! validator would accept keywords the providers do not.

use serde_json::{Map, Value};

/// Keywords that are checked.
const CHECKED: &[&str] = &[
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "anyOf",
    "nullable",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
];

/// Keywords that say nothing an answer could break.
const ANNOTATIONS: &[&str] = &[
    "description",
    "title",
    "format",
    "$schema",
    "default",
    "examples",
    "propertyOrdering",
];

/// The type names of JSON Schema.
const TYPES: &[&str] = &[
    "object", "array", "string", "number", "integer", "boolean", "null",
];

/// Where in a schema or an answer something is wrong: a JSON pointer
/// (`/items/0/name`; empty for the whole).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{reason}", if pointer.is_empty() { String::new() } else { format!("at {pointer}: ") })]
pub struct Mismatch {
    /// The JSON pointer of the offending part.
    pub pointer: String,
    /// What is wrong, as a lowercase fragment.
    pub reason: String,
}

fn mismatch(pointer: &str, reason: impl Into<String>) -> Mismatch {
    Mismatch {
        pointer: pointer.to_owned(),
        reason: reason.into(),
    }
}

/// Checks that `schema` uses only the keywords keyfan can check, with
/// values of the right shape.
pub fn check_schema(schema: &Value) -> Result<(), Mismatch> {
    check_at(schema, "")
}

fn check_at(schema: &Value, at: &str) -> Result<(), Mismatch> {
    let Value::Object(schema) = schema else {
        return Err(mismatch(at, "a schema must be a JSON object"));
    };
    for (keyword, value) in schema {
        let here = format!("{at}/{keyword}");
        if ANNOTATIONS.contains(&keyword.as_str()) {
            continue;
        }
        if !CHECKED.contains(&keyword.as_str()) {
            return Err(mismatch(
                &here,
                format!(
                    "keyfan cannot check `{keyword}`; it checks {}",
                    CHECKED.join(", ")
                ),
            ));
        }
        let shape_ok = match keyword.as_str() {
            "type" => type_names(value).is_some(),
            "properties" => match value {
                Value::Object(properties) => {
                    for (name, sub) in properties {
                        check_at(sub, &format!("{here}/{name}"))?;
                    }
                    true
                }
                _ => false,
            },
            "required" | "enum" => value.is_array(),
            "additionalProperties" => match value {
                Value::Bool(_) => true,
                sub => {
                    check_at(sub, &here)?;
                    true
                }
            },
            "items" => {
                check_at(value, &here)?;
                true
            }
            "anyOf" => match value {
                Value::Array(subs) if !subs.is_empty() => {
                    for (i, sub) in subs.iter().enumerate() {
                        check_at(sub, &format!("{here}/{i}"))?;
                    }
                    true
                }
                _ => false,
            },
            "nullable" => value.is_boolean(),
            "minimum" | "maximum" => value.is_number(),
            _ => value.is_u64(),
        };
        if !shape_ok {
            return Err(mismatch(&here, format!("`{keyword}` has the wrong shape")));
        }
    }
    Ok(())
}

/// The type names of a `type` value, if it is a known name or a list of
/// them.
fn type_names(value: &Value) -> Option<Vec<&str>> {
    let names = match value {
        Value::String(name) => vec![name.as_str()],
        Value::Array(names) => names.iter().map(Value::as_str).collect::<Option<_>>()?,
        _ => return None,
    };
    names.iter().all(|n| TYPES.contains(n)).then_some(names)
}

/// Parses `text` as JSON and checks it against `schema` (one that passed
/// [`check_schema`]); the value, or why it does not fit.
pub fn parse_answer(schema: &Value, text: &str) -> Result<Value, Mismatch> {
    // Models sometimes wrap JSON in a Markdown fence despite the format.
    let trimmed = text.trim();
    let unfenced = trimmed
        .strip_prefix("```json")
        .or_else(|| trimmed.strip_prefix("```"))
        .and_then(|t| t.strip_suffix("```"))
        .unwrap_or(trimmed);
    let value: Value = serde_json::from_str(unfenced)
        .map_err(|e| mismatch("", format!("the answer is not JSON: {e}")))?;
    validate(schema, &value)?;
    Ok(value)
}

/// Checks `value` against `schema` (one that passed [`check_schema`]).
pub fn validate(schema: &Value, value: &Value) -> Result<(), Mismatch> {
    validate_at(schema, value, "")
}

fn validate_at(schema: &Value, value: &Value, at: &str) -> Result<(), Mismatch> {
    let Value::Object(schema) = schema else {
        return Ok(());
    };
    if value.is_null() && schema.get("nullable") == Some(&Value::Bool(true)) {
        return Ok(());
    }
    if let Some(names) = schema.get("type").and_then(type_names) {
        if !names.iter().any(|name| is_type(value, name)) {
            return Err(mismatch(
                at,
                format!("expected {}, found {}", names.join(" or "), type_of(value)),
            ));
        }
    }
    if let Some(Value::Array(allowed)) = schema.get("enum") {
        if !allowed.contains(value) {
            return Err(mismatch(
                at,
                format!("{value} is not one of {}", Value::Array(allowed.clone())),
            ));
        }
    }
    if let Some(Value::Array(options)) = schema.get("anyOf") {
        if !options.iter().any(|o| validate_at(o, value, at).is_ok()) {
            return Err(mismatch(at, "matches none of `anyOf`"));
        }
    }
    match value {
        Value::Object(object) => validate_object(schema, object, at),
        Value::Array(items) => {
            bounds(schema, "minItems", "maxItems", items.len(), "items", at)?;
            if let Some(item) = schema.get("items") {
                for (i, value) in items.iter().enumerate() {
                    validate_at(item, value, &format!("{at}/{i}"))?;
                }
            }
            Ok(())
        }
        Value::String(s) => bounds(
            schema,
            "minLength",
            "maxLength",
            s.chars().count(),
            "characters",
            at,
        ),
        Value::Number(n) => {
            let n = n.as_f64().unwrap_or(f64::NAN);
            let low = schema.get("minimum").and_then(Value::as_f64);
            let high = schema.get("maximum").and_then(Value::as_f64);
            match (low, high) {
                (Some(low), _) if n < low => {
                    Err(mismatch(at, format!("{n} is below the minimum {low}")))
                }
                (_, Some(high)) if n > high => {
                    Err(mismatch(at, format!("{n} is above the maximum {high}")))
                }
                _ => Ok(()),
            }
        }
        _ => Ok(()),
    }
}

fn validate_object(
    schema: &Map<String, Value>,
    object: &Map<String, Value>,
    at: &str,
) -> Result<(), Mismatch> {
    let empty = Map::new();
    let properties = match schema.get("properties") {
        Some(Value::Object(properties)) => properties,
        _ => &empty,
    };
    if let Some(Value::Array(required)) = schema.get("required") {
        if let Some(missing) = required
            .iter()
            .filter_map(Value::as_str)
            .find(|name| !object.contains_key(*name))
        {
            return Err(mismatch(
                at,
                format!("required property `{missing}` is missing"),
            ));
        }
    }
    for (name, value) in object {
        let here = format!("{at}/{name}");
        match (properties.get(name), schema.get("additionalProperties")) {
            (Some(sub), _) => validate_at(sub, value, &here)?,
            (None, Some(Value::Bool(false))) => {
                return Err(mismatch(&here, "is not a property the schema allows"))
            }
            (None, Some(sub @ Value::Object(_))) => validate_at(sub, value, &here)?,
            (None, _) => {}
        }
    }
    Ok(())
}

/// Checks a length against the schema's `min` and `max` keywords.
fn bounds(
    schema: &Map<String, Value>,
    min: &str,
    max: &str,
    len: usize,
    unit: &str,
    at: &str,
) -> Result<(), Mismatch> {
    let len = len as u64;
    if let Some(min) = schema.get(min).and_then(Value::as_u64).filter(|&m| len < m) {
        return Err(mismatch(at, format!("{len} {unit}, fewer than {min}")));
    }
    if let Some(max) = schema.get(max).and_then(Value::as_u64).filter(|&m| len > m) {
        return Err(mismatch(at, format!("{len} {unit}, more than {max}")));
    }
    Ok(())
}

fn is_type(value: &Value, name: &str) -> bool {
    match name {
        "integer" => value.as_f64().is_some_and(|n| n.fract() == 0.0),
        other => type_of(value) == other,
    }
}

fn type_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn person() -> Value {
        json!({
            "type": "object",
            "description": "a person",
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "age": {"type": "integer", "minimum": 0},
                "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
                "nick": {"type": ["string", "null"]}
            },
            "required": ["name", "age"],
            "additionalProperties": false
        })
    }

    #[test]
    fn answers_that_fit_pass_and_others_say_where_they_do_not() {
        let schema = person();
        check_schema(&schema).unwrap();
        let ok = parse_answer(
            &schema,
            "```json\n{\"name\": \"Ada\", \"age\": 36, \"tags\": [\"a\"], \"nick\": null}\n```",
        );
        assert_eq!(ok.unwrap()["age"], 36);
        for (answer, error) in [
            ("{\"name\": \"Ada\"}", "required property `age` is missing"),
            (
                "{\"name\": \"Ada\", \"age\": 1.5}",
                "at /age: expected integer, found number",
            ),
            (
                "{\"name\": \"\", \"age\": 1}",
                "at /name: 0 characters, fewer than 1",
            ),
            (
                "{\"name\": \"A\", \"age\": -1}",
                "at /age: -1 is below the minimum 0",
            ),
            (
                "{\"name\": \"A\", \"age\": 1, \"tags\": [\"c\"]}",
                "at /tags/0: \"c\" is not one of [\"a\",\"b\"]",
            ),
            (
                "{\"name\": \"A\", \"age\": 1, \"x\": 1}",
                "at /x: is not a property the schema allows",
            ),
            ("[1]", "expected object, found array"),
        ] {
            assert_eq!(
                parse_answer(&schema, answer).unwrap_err().to_string(),
                error
            );
        }
        let not_json = parse_answer(&schema, "{\"name\": ")
            .unwrap_err()
            .to_string();
        assert!(not_json.starts_with("the answer is not JSON"), "{not_json}");
    }

    #[test]
    fn schemas_with_keywords_keyfan_cannot_check_are_refused() {
        let error = check_schema(&json!({"type": "object", "properties": {"a": {"pattern": "x"}}}));
        assert_eq!(error.unwrap_err().pointer, "/properties/a/pattern");
        assert!(check_schema(&json!({"type": "strin"})).is_err());
        assert!(check_schema(&json!({"anyOf": [{"type": "string"}, {"type": "null"}]})).is_ok());
        assert!(check_schema(&json!("object")).is_err());
    }
}
