//! What the simulated model "says": deterministic text carrying a digest of
//! the prompt (so a test can prove each result belongs to its item), token
//! estimates, response ids, and the test directives. Shared by both wire
//! formats.

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// Tokens a non-text part (inline data, file) counts: one small image
/// (≤384 px) on Gemini 2.x, so media-heavy rehearsals still feel TPM.
pub(crate) const MEDIA_PART_TOKENS: u64 = 258;

/// Words the reply is made of, picked by the digest.
const WORDS: [&str; 32] = [
    "amber", "basalt", "cedar", "delta", "ember", "fjord", "garnet", "harbor", "indigo", "juniper",
    "kestrel", "lagoon", "meadow", "nectar", "orchid", "pebble", "quartz", "river", "saffron",
    "tundra", "umber", "violet", "willow", "xenon", "yarrow", "zephyr", "aurora", "boulder",
    "canyon", "dune", "estuary", "fern",
];

/// A prompt, as the wire formats parse it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Prompt {
    /// Model id, without `models/`.
    pub model: String,
    /// Text of the last user turn: what the digest is taken of.
    pub user_text: String,
    /// Estimated input tokens, system instruction included; at least 1.
    pub input_tokens: u64,
    /// The request's cap on output tokens, if any (0 counts as none).
    pub max_output_tokens: Option<u32>,
    /// The JSON Schema the answer must follow (Gemini `responseJsonSchema`,
    /// OpenAI `response_format.json_schema.schema`), if any.
    pub schema: Option<Arc<Value>>,
    /// The digests of its media parts' bytes (16 hex characters each), in
    /// order.
    pub media: Vec<String>,
}

/// The tag of the bad-JSON directive: `[[sim:badjson]]` (every answer) or
/// `[[sim:badjson:N]]` (the first N answers to the same user text).
const BAD_JSON: &str = "[[sim:badjson";

/// A test directive in a prompt's user text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Directive {
    /// `[[sim:block]]`: the prompt is blocked (no candidates).
    Block,
    /// `[[sim:safety]]`: the candidate stops with SAFETY.
    Safety,
    /// `[[sim:other]]`: the candidate stops with OTHER and no content.
    Other,
    /// `[[sim:max_tokens]]`: thinking spends the whole output budget.
    MaxTokens,
}

impl Prompt {
    /// The directive in the user text, if any.
    pub(crate) fn directive(&self) -> Option<Directive> {
        const TAGS: [(&str, Directive); 4] = [
            ("[[sim:block]]", Directive::Block),
            ("[[sim:safety]]", Directive::Safety),
            ("[[sim:other]]", Directive::Other),
            ("[[sim:max_tokens]]", Directive::MaxTokens),
        ];
        // Most prompts carry none: one scan rules them out.
        if !self.user_text.contains("[[sim:") {
            return None;
        }
        TAGS.iter()
            .find(|(tag, _)| self.user_text.contains(tag))
            .map(|&(_, directive)| directive)
    }

    /// The answer length asked for by `[[sim:tokens=N]]`, if any.
    pub(crate) fn answer_tokens(&self) -> Option<u64> {
        const TAG: &str = "[[sim:tokens=";
        let start = self.user_text.find(TAG)? + TAG.len();
        let rest = &self.user_text[start..];
        rest[..rest.find("]]")?].parse().ok()
    }

    /// `Some` when the user text asks for answers that do not fit the
    /// schema: `Some(None)` for all of them, `Some(Some(n))` for the first
    /// `n` to the same text.
    pub(crate) fn bad_json(&self) -> Option<Option<u32>> {
        let at = self.user_text.find(BAD_JSON)?;
        let rest = &self.user_text[at + BAD_JSON.len()..];
        let (inside, _) = rest.split_once("]]")?;
        match inside.strip_prefix(':') {
            None if inside.is_empty() => Some(None),
            Some(n) => n.parse().ok().map(Some),
            None => None,
        }
    }

    /// The output cap, treating 0 as unset.
    pub(crate) fn output_cap(&self) -> Option<u64> {
        self.max_output_tokens.filter(|&cap| cap > 0).map(u64::from)
    }
}

/// Estimated tokens of a text: one per 4 characters, rounded up.
pub(crate) fn text_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// A reply, possibly cut at the output cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Composed {
    /// The visible text.
    pub text: String,
    /// Its token count.
    pub tokens: u64,
    /// Whether the output cap cut it (MAX_TOKENS / `length`).
    pub cut: bool,
}

/// The deterministic reply of `model` to `prompt`:
/// `[simulated MODEL] digest:HEX — word word word`, where HEX is the first 16
/// hex characters of the SHA-256 of the user text; a prompt with media has
/// ` media:HEX,HEX` after it, the digests of its media parts.
pub(crate) fn compose(prompt: &Prompt) -> Composed {
    let hash = Sha256::digest(prompt.user_text.as_bytes());
    let digest = hex::encode(&hash[..8]);
    let count = 3 + usize::from(hash[8] % 6);
    let words: Vec<&str> = hash[9..9 + count]
        .iter()
        .map(|&b| WORDS[usize::from(b) % WORDS.len()])
        .collect();
    let media = match prompt.media.is_empty() {
        true => String::new(),
        false => format!(" media:{}", prompt.media.join(",")),
    };
    let mut text = format!(
        "[simulated {}] digest:{digest}{media} — {}",
        prompt.model,
        words.join(" ")
    );
    // `[[sim:tokens=N]]`: more words, from the digest, up to N tokens.
    if let Some(wanted) = prompt.answer_tokens() {
        let mut more = hash.iter().cycle();
        while text_tokens(&text) < wanted {
            let word = more
                .next()
                .map_or(WORDS[0], |&b| WORDS[usize::from(b) % WORDS.len()]);
            text.push(' ');
            text.push_str(word);
        }
    }
    let tokens = text_tokens(&text);
    match prompt.output_cap() {
        Some(cap) if cap < tokens => Composed {
            // Keep cap tokens' worth of characters (4 per token).
            text: text.chars().take((cap * 4) as usize).collect(),
            tokens: cap,
            cut: true,
        },
        _ => Composed {
            text,
            tokens,
            cut: false,
        },
    }
}

/// The reply to a prompt: [`compose`]'s, or for a prompt with a schema,
/// JSON that fits it (carrying the digest in its first free string), or
/// when `bad` JSON that does not: a required property left out, or when
/// the schema requires none, JSON cut short.
pub(crate) fn answer(prompt: &Prompt, bad: bool) -> Composed {
    let plain = compose(prompt);
    let Some(schema) = &prompt.schema else {
        return plain;
    };
    let digest = plain.text.split(' ').nth(2).unwrap_or("digest");
    let mut value = fitting(schema, digest);
    let dropped = bad
        && value
            .as_object_mut()
            .is_some_and(|o| dropped_required(schema, o));
    let mut text = value.to_string();
    if bad && !dropped {
        text = text.chars().take(text.chars().count() / 2).collect();
    }
    Composed {
        tokens: text_tokens(&text),
        text,
        cut: false,
    }
}

/// Takes a required property out of `object`; whether there was one.
fn dropped_required(schema: &Value, object: &mut Map<String, Value>) -> bool {
    let required = schema.get("required").and_then(Value::as_array);
    let first = required.and_then(|r| r.iter().find_map(Value::as_str));
    first.is_some_and(|name| object.remove(name).is_some())
}

/// A value that fits `schema` (the subset `keyfan::schema` checks): the
/// first option, type and enum value; every property; the fewest items
/// allowed (at least one); numbers at their minimum (or 1); strings are
/// `text`, cut or padded to their length bounds.
fn fitting(schema: &Value, text: &str) -> Value {
    if let Some(first) = schema
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return first.clone();
    }
    if let Some(first) = schema
        .get("anyOf")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
    {
        return fitting(first, text);
    }
    let kind = match schema.get("type") {
        Some(Value::String(name)) => name.as_str(),
        Some(Value::Array(names)) => names
            .iter()
            .filter_map(Value::as_str)
            .find(|n| *n != "null")
            .unwrap_or("null"),
        _ if schema.get("properties").is_some() => "object",
        _ => "string",
    };
    let bound = |name: &str| schema.get(name).and_then(Value::as_u64);
    match kind {
        "object" => {
            let properties = schema.get("properties").and_then(Value::as_object);
            Value::Object(
                properties
                    .into_iter()
                    .flatten()
                    .map(|(name, sub)| (name.clone(), fitting(sub, text)))
                    .collect(),
            )
        }
        "array" => {
            let n = bound("minItems")
                .unwrap_or(1)
                .max(1)
                .min(bound("maxItems").unwrap_or(u64::MAX));
            let item = schema.get("items").cloned().unwrap_or(Value::Null);
            Value::Array((0..n).map(|_| fitting(&item, text)).collect())
        }
        "integer" | "number" => {
            let low = schema.get("minimum").and_then(Value::as_f64).unwrap_or(1.0);
            let n = schema
                .get("maximum")
                .and_then(Value::as_f64)
                .map_or(low, |high| low.min(high));
            json!(n.ceil() as i64)
        }
        "boolean" => Value::Bool(true),
        "null" => Value::Null,
        _ => {
            let mut s: String = text
                .chars()
                .take(bound("maxLength").unwrap_or(u64::MAX) as usize)
                .collect();
            while (s.chars().count() as u64) < bound("minLength").unwrap_or(0) {
                s.push('x');
            }
            Value::String(s)
        }
    }
}

/// A response id shaped like Google's (22 characters of base64url),
/// deterministic per seed and request number.
pub(crate) fn response_id(seed: u64, request: u64) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut hasher = Sha256::new();
    hasher.update(seed.to_le_bytes());
    hasher.update(request.to_le_bytes());
    hasher.finalize()[..22]
        .iter()
        .map(|&b| char::from(ALPHABET[usize::from(b % 64)]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(text: &str, cap: Option<u32>) -> Prompt {
        Prompt {
            model: "gemini-2.5-flash".into(),
            user_text: text.into(),
            input_tokens: 1,
            max_output_tokens: cap,
            schema: None,
            media: Vec::new(),
        }
    }

    #[test]
    fn the_reply_is_deterministic_and_carries_the_digest() {
        let a = compose(&prompt("Summarise Hamlet", None));
        assert_eq!(a, compose(&prompt("Summarise Hamlet", None)));
        assert!(a.text.starts_with("[simulated gemini-2.5-flash] digest:"));
        let digest = hex::encode(&Sha256::digest(b"Summarise Hamlet")[..8]);
        assert!(a.text.contains(&format!("digest:{digest} ")));
        assert_eq!(a.tokens, text_tokens(&a.text));
        assert!(!a.cut);
        assert_ne!(a.text, compose(&prompt("Summarise Macbeth", None)).text);
    }

    #[test]
    fn a_tokens_directive_lengthens_the_reply_and_the_cap_still_cuts_it() {
        let long = compose(&prompt("x [[sim:tokens=100]]", None));
        assert!((100..=103).contains(&long.tokens), "{}", long.tokens);
        assert!(long.text.contains("digest:"));
        let cut = compose(&prompt("x [[sim:tokens=100]]", Some(40)));
        assert_eq!((cut.tokens, cut.cut), (40, true));
        assert_eq!(prompt("[[sim:tokens=x]]", None).answer_tokens(), None);
    }

    #[test]
    fn a_small_cap_cuts_the_reply() {
        let cut = compose(&prompt("x", Some(3)));
        assert!(cut.cut);
        assert_eq!((cut.tokens, cut.text.chars().count()), (3, 12));
        assert!(!compose(&prompt("x", Some(0))).cut);
    }

    #[test]
    fn structured_answers_fit_their_schema_unless_told_not_to() {
        let schema = json!({
            "type": "object",
            "properties": {
                "label": {"type": "string", "enum": ["spam", "ham"]},
                "why": {"type": "string", "maxLength": 8},
                "score": {"type": "number", "minimum": 0.5, "maximum": 1},
                "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
                "note": {"anyOf": [{"type": "null"}, {"type": "string"}]}
            },
            "required": ["label", "score"],
            "additionalProperties": false
        });
        crate::schema::check_schema(&schema).unwrap();
        let prompt = Prompt {
            schema: Some(Arc::new(schema.clone())),
            ..prompt("classify [[sim:badjson:1]]", None)
        };
        let good = answer(&prompt, false).text;
        crate::schema::parse_answer(&schema, &good).unwrap();
        let bad = answer(&prompt, true).text;
        let error = crate::schema::parse_answer(&schema, &bad).unwrap_err();
        assert_eq!(error.reason, "required property `label` is missing");
        let open = json!({"type": "array", "items": {"type": "integer"}});
        let cut = answer(
            &Prompt {
                schema: Some(Arc::new(open.clone())),
                ..prompt.clone()
            },
            true,
        );
        assert!(
            crate::schema::parse_answer(&open, &cut.text).is_err(),
            "{}",
            cut.text
        );
        assert_eq!(prompt.bad_json(), Some(Some(1)));
        assert_eq!(self::prompt("[[sim:badjson]]", None).bad_json(), Some(None));
        assert_eq!(self::prompt("[[sim:badjsonx]]", None).bad_json(), None);
    }

    #[test]
    fn directives_and_ids() {
        assert_eq!(
            prompt("a [[sim:safety]] b", None).directive(),
            Some(Directive::Safety)
        );
        assert_eq!(prompt("[[sim:nope]]", None).directive(), None);
        assert_eq!(text_tokens("用一句话"), 1);
        assert_eq!(text_tokens(""), 0);
        let id = response_id(1, 2);
        assert_eq!(id.len(), 22);
        assert_eq!(id, response_id(1, 2));
        assert_ne!(id, response_id(1, 3));
    }
}
