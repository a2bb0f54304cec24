//! What a wire format (Gemini, OpenAI, Anthropic) must render, and the
//! helpers they all use to serve real fixture bodies: parse once, patch a few
//! fields, so every error body stays the one the real API sent. Also the one
//! reading of a message's content that OpenAI's and Anthropic's requests
//! share ([`Content`]). Never: a format's own request fields or checks.

use super::quota::{Headroom, Rejection};
use super::reply::{self, Prompt, MEDIA_PART_TOKENS};
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One admitted request about to be answered.
#[derive(Debug)]
pub(crate) struct Turn<'a> {
    /// The parsed prompt.
    pub prompt: &'a Prompt,
    /// Response id (deterministic per seed and request number).
    pub id: String,
    /// Unix seconds now, for OpenAI's `created`.
    pub created: i64,
    /// Per-minute quota use after admission.
    pub headroom: Headroom,
    /// Whether a structured answer is to miss its schema (`[[sim:badjson]]`).
    pub bad_json: bool,
}

/// A successful answer, rendered but not sent yet: the server may still send
/// it whole, cut it off (fault `truncate`) or abort it (shutdown).
#[derive(Debug)]
pub(crate) struct Answer {
    /// Extra headers (OpenAI's `x-ratelimit-*`).
    pub headers: HeaderMap,
    /// The full JSON body.
    pub body: Bytes,
    /// Output tokens billed for it (visible and thinking).
    pub output_tokens: u64,
}

/// One API's way of saying things. Implemented by unit types so that the
/// server's pipeline is written once, generic over the format.
pub(crate) trait Wire {
    /// `Content-Type` of every body.
    const CONTENT_TYPE: &'static str;
    /// The key is missing or unknown.
    fn invalid_key(key: Option<&str>) -> Response;
    /// The key's project cannot use the API.
    fn disabled_key() -> Response;
    /// The model does not exist.
    fn model_not_found(model: &str) -> Response;
    /// The body is malformed; `message` says how, in this API's words.
    fn bad_request(message: &str) -> Response;
    /// A quota refused the request.
    fn rate_limited(model: &str, rejection: &Rejection) -> Response;
    /// An injected failure with `status`; `request` is the request number
    /// (picks among equivalent real bodies).
    fn fault(status: StatusCode, request: u64) -> Response;
    /// The answer to an admitted request.
    fn answer(turn: &Turn) -> Answer;

    /// A JSON response in this format.
    fn json(status: StatusCode, body: impl Into<Body>) -> Response {
        json_response(status, Self::CONTENT_TYPE, body.into())
    }
}

/// A response with `body` as JSON of `content_type`.
pub(crate) fn json_response(
    status: StatusCode,
    content_type: &'static str,
    body: Body,
) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The text of `tests/fixtures/NAME`, embedded at compile time: the bodies
/// the simulator serves are the real APIs' recorded ones.
macro_rules! fixture_text {
    ($name:literal) => {
        include_str!(concat!("../../tests/fixtures/", $name))
    };
}

/// A fixture parsed once, on first use, to be served patched.
macro_rules! fixture_json {
    ($name:literal) => {
        std::sync::LazyLock::new(|| $crate::sim::wire::fixture(fixture_text!($name)))
    };
}

pub(crate) use {fixture_json, fixture_text};

/// Parses a fixture embedded with `include_str!`. Fixtures are compile-time
/// constants checked by the tests, so a failure here is a build defect, never
/// something a request can cause.
pub(crate) fn fixture(text: &'static str) -> Value {
    serde_json::from_str(text).expect("embedded fixture is valid JSON")
}

/// Sets the value at a JSON pointer, inserting the last segment into its
/// parent object when missing. A pointer whose parent is absent is skipped:
/// the body stays the fixture's.
pub(crate) fn put(body: &mut Value, pointer: &str, value: impl Into<Value>) {
    let value = value.into();
    if let Some(slot) = body.pointer_mut(pointer) {
        *slot = value;
    } else if let Some((parent, key)) = pointer.rsplit_once('/') {
        if let Some(object) = body.pointer_mut(parent).and_then(Value::as_object_mut) {
            object.insert(key.to_owned(), value);
        }
    }
}

/// Serializes a body. Our values have string keys only, so this cannot fail.
pub(crate) fn encode<T: Serialize>(value: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

/// A message's content as OpenAI's chat completions and Anthropic's Messages
/// both send it: a string, or a list of typed parts (`text`, `image_url`,
/// `image`, `document`, …) of which only `text` is read.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum Content {
    /// A plain string.
    Text(String),
    /// Typed parts.
    Parts(Vec<ContentPart>),
}

/// One typed part; any part without `text` counts as media.
#[derive(Deserialize)]
pub(crate) struct ContentPart {
    #[serde(default)]
    text: Option<String>,
}

impl Content {
    /// The text parts, joined.
    pub(crate) fn text(&self) -> String {
        match self {
            Content::Text(text) => text.clone(),
            Content::Parts(parts) => parts.iter().filter_map(|p| p.text.as_deref()).collect(),
        }
    }

    /// Input tokens: each text part by its length, each other part as
    /// [`MEDIA_PART_TOKENS`].
    pub(crate) fn tokens(&self) -> u64 {
        match self {
            Content::Text(text) => reply::text_tokens(text),
            Content::Parts(parts) => parts
                .iter()
                .map(|p| {
                    p.text
                        .as_deref()
                        .map_or(MEDIA_PART_TOKENS, reply::text_tokens)
                })
                .sum(),
        }
    }
}

/// The text of the last message whose role is `user` (empty when there is
/// none, or it has no content), from `(role, content)` in order.
pub(crate) fn last_user_text<'a>(
    messages: impl DoubleEndedIterator<Item = (&'a str, Option<&'a Content>)>,
) -> String {
    messages
        .rev()
        .find(|(role, _)| *role == "user")
        .and_then(|(_, content)| content)
        .map(Content::text)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn put_replaces_inserts_and_skips() {
        let mut body = json!({"a": {"b": 1}});
        put(&mut body, "/a/b", 2);
        put(&mut body, "/a/c", "x");
        put(&mut body, "/missing/c", 3);
        assert_eq!(body, json!({"a": {"b": 2, "c": "x"}}));
    }
}
