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
    if status.is_redirection() {
        return Err(redirect_error(status.as_u16(), &response));
    }
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

/// A 3xx: the APIs do not redirect, and the client follows no redirect (it
/// would carry the key to wherever the `Location` points), so the request
/// failed. It fails the same way every time, hence [`ErrorClass::ItemInvalid`].
/// The message names the target's host and port, never its path or query.
fn redirect_error(status: u16, response: &reqwest::Response) -> ApiError {
    let target = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|location| location.to_str().ok())
        .and_then(|location| response.url().join(location).ok());
    let to = match target.as_ref().and_then(|url| Some((url.host_str()?, url))) {
        Some((host, url)) => match url.port() {
            Some(port) => format!("a redirect to {host}:{port}"),
            None => format!("a redirect to {host}"),
        },
        None => "a redirect without a usable Location".to_owned(),
    };
    api_error(
        ErrorClass::ItemInvalid,
        Some(status),
        format!(
            "HTTP {status}: the server answered with {to}, which keyfan does not follow \
             (API calls never follow redirects, so the key is not sent elsewhere); check base_url"
        ),
    )
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
