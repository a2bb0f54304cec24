//! One HTTP exchange: POST a JSON body (or GET) with the key in a header,
//! hand back the body of a 2xx, classify anything else. Transport failures
//! become [`ErrorClass::Transient`] with a message that names no URL.

use super::common::api_error;
use super::{ApiError, Client, ErrorClass};
use reqwest::header::{HeaderMap, HeaderValue};
use serde::Serialize;

/// Posts `body` as JSON to `url` with the auth header `auth_name: auth_value`.
/// A 2xx returns the body bytes; any other status goes to `classify` with its
/// headers and body.
pub(super) async fn post_json(
    client: &Client,
    url: &str,
    auth_name: &'static str,
    auth_value: &str,
    body: &impl Serialize,
    classify: impl FnOnce(u16, &HeaderMap, &[u8]) -> ApiError,
) -> Result<Vec<u8>, ApiError> {
    let request = client.http.post(url).json(body);
    send(client, request, auth_name, auth_value, classify).await
}

/// Gets `url` with the auth header, as [`post_json`] does.
pub(super) async fn get(
    client: &Client,
    url: &str,
    auth_name: &'static str,
    auth_value: &str,
    classify: impl FnOnce(u16, &HeaderMap, &[u8]) -> ApiError,
) -> Result<Vec<u8>, ApiError> {
    let request = client.http.get(url);
    send(client, request, auth_name, auth_value, classify).await
}

async fn send(
    client: &Client,
    request: reqwest::RequestBuilder,
    auth_name: &'static str,
    auth_value: &str,
    classify: impl FnOnce(u16, &HeaderMap, &[u8]) -> ApiError,
) -> Result<Vec<u8>, ApiError> {
    let mut auth = HeaderValue::from_str(auth_value).map_err(|_| {
        api_error(
            ErrorClass::KeyInvalid {
                reason: "malformed_key".into(),
            },
            None,
            "the API key contains characters that cannot go in an HTTP header",
        )
    })?;
    // Keeps the key out of any Debug output of the request.
    auth.set_sensitive(true);
    let response = request
        .header(auth_name, auth)
        .send()
        .await
        .map_err(|e| transport_error(client, e))?;
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| transport_error(client, e))?;
    if status.is_success() {
        // `Bytes` → `Vec` reuses the buffer; no direct `bytes` dependency needed.
        Ok(bytes.into())
    } else {
        Err(classify(status.as_u16(), &headers, &bytes))
    }
}

/// Classifies a `reqwest` failure. Every one is worth retrying elsewhere,
/// except a request that could not even be built (a bad `base_url`), which
/// fails the same way every time.
fn transport_error(client: &Client, error: reqwest::Error) -> ApiError {
    let (class, message) = if error.is_timeout() {
        (
            ErrorClass::Transient,
            format!("request timed out after {:?}", client.timeout),
        )
    } else if error.is_connect() {
        (
            ErrorClass::Transient,
            format!("connection failed: {}", describe(error)),
        )
    } else if error.is_body() || error.is_decode() {
        (
            ErrorClass::Transient,
            format!("response body truncated: {}", describe(error)),
        )
    } else if error.is_builder() {
        (
            ErrorClass::ItemInvalid,
            format!("could not build the request: {}", describe(error)),
        )
    } else {
        (
            ErrorClass::Transient,
            format!("request failed: {}", describe(error)),
        )
    };
    api_error(class, None, message)
}

/// The error and its chain of causes on one line, without the URL (which
/// `reqwest` puts in its messages, and which may carry a query string).
fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(&error);
    while let Some(inner) = cause {
        let inner_text = inner.to_string();
        // hyper and reqwest often repeat their cause's text in their own.
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        cause = inner.source();
    }
    text
}
