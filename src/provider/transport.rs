//! One HTTP exchange: POST a JSON body (or GET) with the key in a header,
//! hand back the body of a 2xx, classify anything else. Transport failures
//! become [`ErrorClass::Transient`] with a message that names no URL.
//!
//! The exchange goes over `reqwest`, or in process to an axum `Router`
//! ([`Client::in_memory`]); the adapters cannot tell which: both answer
//! through the same redirect check and `classify`, under the same timeout.

use super::common::api_error;
use super::{ApiError, Client, ErrorClass};
use axum::body::{Body, Bytes};
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

/// How a [`Client`] reaches its server.
#[derive(Debug, Clone)]
pub(super) enum Transport {
    /// HTTP(S) through `reqwest`: the real APIs, or a server on a socket.
    Http(reqwest::Client),
    /// In process: each request is handed to an axum `Router` (the
    /// simulator's) with no socket in between, so that a whole run can go
    /// under tokio's paused time (an idle runtime would jump a paused clock
    /// while a socket read is pending).
    Memory(axum::Router),
}

/// A request's URL: text that `reqwest` parses (and refuses, if it does
/// not parse, as the request's error), or a URL parsed before
/// ([`Client::endpoint_url`]), which saves parsing it again per request.
pub(super) trait Target {
    /// The URL as text.
    fn text(&self) -> &str;

    /// A `reqwest` request of `method` to the URL.
    fn request(&self, http: &reqwest::Client, method: Method) -> reqwest::RequestBuilder;
}

impl Target for str {
    fn text(&self) -> &str {
        self
    }

    fn request(&self, http: &reqwest::Client, method: Method) -> reqwest::RequestBuilder {
        http.request(method, self)
    }
}

impl Target for String {
    fn text(&self) -> &str {
        self
    }

    fn request(&self, http: &reqwest::Client, method: Method) -> reqwest::RequestBuilder {
        http.request(method, self.as_str())
    }
}

impl Target for Url {
    fn text(&self) -> &str {
        self.as_str()
    }

    fn request(&self, http: &reqwest::Client, method: Method) -> reqwest::RequestBuilder {
        http.request(method, self.clone())
    }
}

/// A URL parsed once and shared ([`Client::endpoint_url`]), or the text of
/// one that does not parse (its request fails with `reqwest`'s own error).
#[derive(Debug, Clone)]
pub(super) enum Parsed {
    /// Parsed.
    Url(Arc<Url>),
    /// Not a URL.
    Text(String),
}

impl Target for Parsed {
    fn text(&self) -> &str {
        match self {
            Parsed::Url(url) => url.text(),
            Parsed::Text(text) => text,
        }
    }

    fn request(&self, http: &reqwest::Client, method: Method) -> reqwest::RequestBuilder {
        match self {
            Parsed::Url(url) => url.request(http, method),
            Parsed::Text(text) => text.request(http, method),
        }
    }
}

/// A response's status, headers and whole body.
struct Exchange {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

/// Posts `body` as JSON to `url` with the auth header `auth_name: auth_value`.
/// A 2xx returns the body bytes; any other status goes to `classify` with its
/// headers and body.
pub(super) async fn post_json(
    client: &Client,
    url: &(impl Target + ?Sized),
    auth_name: &'static str,
    auth_value: &str,
    body: &impl Serialize,
    classify: impl FnOnce(u16, &HeaderMap, &[u8]) -> ApiError,
) -> Result<Vec<u8>, ApiError> {
    let auth = (auth_name, auth_value);
    let (body, _) = post_json_with(client, url, auth, &[], body, classify).await?;
    Ok(body)
}

/// [`post_json`] with `extra` headers besides the auth header, returning the
/// 2xx answer's headers with its body.
pub(super) async fn post_json_with(
    client: &Client,
    url: &(impl Target + ?Sized),
    auth: (&'static str, &str),
    extra: &[(&'static str, &'static str)],
    body: &impl Serialize,
    classify: impl FnOnce(u16, &HeaderMap, &[u8]) -> ApiError,
) -> Result<(Vec<u8>, HeaderMap), ApiError> {
    let body = serde_json::to_vec(body).map_err(|e| unbuildable(&e))?;
    let body = Some(("application/json", body));
    send(client, Method::POST, url, body, auth, extra, classify).await
}

/// Posts raw `body` bytes of `content_type` to `url` with the auth header
/// and `extra` headers, returning the 2xx answer's headers with its body
/// (the Files API's upload protocol speaks in headers).
pub(super) async fn post_bytes(
    client: &Client,
    url: &str,
    auth: (&'static str, &str),
    extra: &[(&str, &str)],
    (content_type, body): (&str, Vec<u8>),
    classify: impl FnOnce(u16, &HeaderMap, &[u8]) -> ApiError,
) -> Result<(Vec<u8>, HeaderMap), ApiError> {
    let body = Some((content_type, body));
    send(client, Method::POST, url, body, auth, extra, classify).await
}

/// Gets `url` with the auth header, as [`post_json`] does.
pub(super) async fn get(
    client: &Client,
    url: &str,
    auth_name: &'static str,
    auth_value: &str,
    classify: impl FnOnce(u16, &HeaderMap, &[u8]) -> ApiError,
) -> Result<Vec<u8>, ApiError> {
    get_with(client, url, (auth_name, auth_value), &[], classify).await
}

/// [`get`] with `extra` headers besides the auth header.
pub(super) async fn get_with(
    client: &Client,
    url: &str,
    auth: (&'static str, &str),
    extra: &[(&'static str, &'static str)],
    classify: impl FnOnce(u16, &HeaderMap, &[u8]) -> ApiError,
) -> Result<Vec<u8>, ApiError> {
    let (body, _) = send(client, Method::GET, url, None, auth, extra, classify).await?;
    Ok(body)
}

/// Deletes `url` with the auth header, as [`get`] gets it.
pub(super) async fn delete(
    client: &Client,
    url: &str,
    auth: (&'static str, &str),
    classify: impl FnOnce(u16, &HeaderMap, &[u8]) -> ApiError,
) -> Result<Vec<u8>, ApiError> {
    let (body, _) = send(client, Method::DELETE, url, None, auth, &[], classify).await?;
    Ok(body)
}

/// One exchange over the client's transport; both transports answer alike
/// (a redirect is an error, a 2xx gives the body, anything else goes to
/// `classify`).
async fn send(
    client: &Client,
    method: Method,
    url: &(impl Target + ?Sized),
    body: Option<(&str, Vec<u8>)>,
    (auth_name, auth_value): (&'static str, &str),
    extra: &[(&str, &str)],
    classify: impl FnOnce(u16, &HeaderMap, &[u8]) -> ApiError,
) -> Result<(Vec<u8>, HeaderMap), ApiError> {
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
    let exchange = match &client.transport {
        Transport::Http(http) => {
            let mut request = url.request(http, method).header(auth_name, auth);
            for &(name, value) in extra {
                request = request.header(name, value);
            }
            if let Some((content_type, body)) = body {
                request = request.header(CONTENT_TYPE, content_type).body(body);
            }
            over_http(client, request).await?
        }
        Transport::Memory(router) => {
            let mut request = axum::http::Request::builder()
                .method(method)
                .uri(url.text())
                .header(auth_name, auth);
            for &(name, value) in extra {
                request = request.header(name, value);
            }
            let bytes = match body {
                Some((content_type, body)) => {
                    request = request.header(CONTENT_TYPE, content_type);
                    body
                }
                None => Vec::new(),
            };
            let request = request
                .body(Body::from(bytes))
                .map_err(|e| unbuildable(&e))?;
            in_memory(router, request, client.timeout).await?
        }
    };
    let Exchange {
        status,
        headers,
        body,
    } = exchange;
    if status.is_redirection() {
        Err(redirect_error(status.as_u16(), &headers, url.text()))
    } else if status.is_success() {
        Ok((body, headers))
    } else {
        Err(classify(status.as_u16(), &headers, &body))
    }
}

/// How long one download of a results file may take in all: a file of
/// millions of lines outlasts the per-request timeout of a prompt.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(3600);

/// Gets `url` with the auth header and appends its 2xx body to `out` as it
/// arrives, never holding it whole (a batch's results file). Returns the
/// bytes written; any other status goes to `classify`, as [`get`].
pub(super) async fn get_to_file(
    client: &Client,
    url: &str,
    auth: (&'static str, &str),
    out: &mut tokio::fs::File,
    classify: impl FnOnce(u16, &HeaderMap, &[u8]) -> ApiError,
) -> Result<u64, ApiError> {
    get_to_file_with(client, url, auth, &[], out, classify).await
}

/// [`get_to_file`] with `extra` headers besides the auth header.
pub(super) async fn get_to_file_with(
    client: &Client,
    url: &str,
    (auth_name, auth_value): (&'static str, &str),
    extra: &[(&'static str, &'static str)],
    out: &mut tokio::fs::File,
    classify: impl FnOnce(u16, &HeaderMap, &[u8]) -> ApiError,
) -> Result<u64, ApiError> {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    let mut auth =
        HeaderValue::from_str(auth_value).map_err(|_| unbuildable(&"a malformed key"))?;
    auth.set_sensitive(true);
    let failed = |e: std::io::Error| {
        api_error(
            ErrorClass::ItemInvalid,
            None,
            format!("could not write the downloaded results: {e}"),
        )
    };
    let mut written = 0u64;
    let download = async {
        let (status, headers, mut chunks) = match &client.transport {
            Transport::Http(http) => {
                let mut request = http.get(url).header(auth_name, auth);
                for (name, value) in extra {
                    request = request.header(*name, *value);
                }
                let response = request
                    .timeout(DOWNLOAD_TIMEOUT)
                    .send()
                    .await
                    .map_err(|e| transport_error(client, e))?;
                let (status, headers) = (response.status(), response.headers().clone());
                let stream = futures_util::stream::unfold(Some(response), |response| async {
                    let mut response = response?;
                    match response.chunk().await {
                        Ok(Some(chunk)) => Some((Ok(chunk), Some(response))),
                        Ok(None) => None,
                        Err(e) => Some((Err(transport_error(client, e)), None)),
                    }
                })
                .boxed();
                (status, headers, stream)
            }
            Transport::Memory(router) => {
                let mut request = axum::http::Request::builder()
                    .method(Method::GET)
                    .uri(url)
                    .header(auth_name, auth);
                for (name, value) in extra {
                    request = request.header(*name, *value);
                }
                let request = request.body(Body::empty()).map_err(|e| unbuildable(&e))?;
                let Ok(response) = router.clone().oneshot(request).await;
                let (parts, body) = response.into_parts();
                let stream = body
                    .into_data_stream()
                    .map(|chunk| {
                        chunk.map_err(|e| {
                            api_error(
                                ErrorClass::Transient,
                                None,
                                format!("response body truncated: {e}"),
                            )
                        })
                    })
                    .boxed();
                (parts.status, parts.headers, stream)
            }
        };
        if status.is_redirection() {
            return Err(redirect_error(status.as_u16(), &headers, url));
        }
        if !status.is_success() {
            let mut body = Vec::new();
            while let Some(chunk) = chunks.next().await {
                let chunk: Bytes = chunk?;
                body.extend_from_slice(&chunk);
            }
            return Err(classify(status.as_u16(), &headers, &body));
        }
        while let Some(chunk) = chunks.next().await {
            let chunk: Bytes = chunk?;
            out.write_all(&chunk).await.map_err(failed)?;
            written += chunk.len() as u64;
        }
        out.flush().await.map_err(failed)?;
        Ok(written)
    };
    tokio::time::timeout(DOWNLOAD_TIMEOUT, download)
        .await
        .unwrap_or_else(|_| Err(timed_out(DOWNLOAD_TIMEOUT)))
}

/// Sends `request` with `reqwest` (which enforces the client's timeout).
async fn over_http(
    client: &Client,
    request: reqwest::RequestBuilder,
) -> Result<Exchange, ApiError> {
    let mut response = request
        .send()
        .await
        .map_err(|e| transport_error(client, e))?;
    let status = response.status();
    // Taken, not cloned: reading the body needs none of them.
    let headers = std::mem::take(response.headers_mut());
    let body = response
        .bytes()
        .await
        .map_err(|e| transport_error(client, e))?;
    // `Bytes` → `Vec` reuses the buffer; no direct `bytes` dependency needed.
    Ok(Exchange {
        status,
        headers,
        body: body.into(),
    })
}

/// Hands `request` to `router` and reads the whole answer, within `timeout`
/// (on tokio's clock, so paused time drives it). A body that fails midway
/// is a truncated body, as on a socket.
async fn in_memory(
    router: &axum::Router,
    request: axum::http::Request<Body>,
    timeout: Duration,
) -> Result<Exchange, ApiError> {
    let exchange = async {
        let Ok(response) = router.clone().oneshot(request).await;
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX).await.map_err(|e| {
            api_error(
                ErrorClass::Transient,
                None,
                format!("response body truncated: {e}"),
            )
        })?;
        Ok(Exchange {
            status: parts.status,
            headers: parts.headers,
            body: body.into(),
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| Err(timed_out(timeout)))
}

/// The request could not be built: it would fail the same way every time.
fn unbuildable(error: &dyn std::fmt::Display) -> ApiError {
    api_error(
        ErrorClass::ItemInvalid,
        None,
        format!("could not build the request: {error}"),
    )
}

/// No complete answer within `timeout`: worth retrying elsewhere.
fn timed_out(timeout: Duration) -> ApiError {
    api_error(
        ErrorClass::Transient,
        None,
        format!("request timed out after {timeout:?}"),
    )
}

/// A 3xx: the APIs do not redirect, and the client follows no redirect (it
/// would carry the key to wherever the `Location` points), so the request
/// failed. It fails the same way every time, hence [`ErrorClass::ItemInvalid`].
/// The message names the target's host and port, never its path or query.
fn redirect_error(status: u16, headers: &HeaderMap, url: &str) -> ApiError {
    let target = headers
        .get(reqwest::header::LOCATION)
        .and_then(|location| location.to_str().ok())
        .and_then(|location| Url::parse(url).ok()?.join(location).ok());
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
    if error.is_timeout() {
        return timed_out(client.timeout);
    }
    if error.is_builder() {
        return unbuildable(&describe(error));
    }
    let message = if error.is_connect() {
        format!("connection failed: {}", describe(error))
    } else if error.is_body() || error.is_decode() {
        format!("response body truncated: {}", describe(error))
    } else {
        format!("request failed: {}", describe(error))
    };
    api_error(ErrorClass::Transient, None, message)
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

#[cfg(test)]
mod tests {
    use super::super::{Client, ErrorClass, Generation, ProviderKind, Request};
    use crate::sim::{FaultConfig, ModelLimits, ProjectConfig, SimConfig, SimServer, Simulator};
    use crate::types::ApiKey;
    use axum::http::{header, StatusCode};
    use std::fmt::Debug;
    use std::time::Duration;

    const FLASH: &str = "gemini-2.5-flash";
    const MINI: &str = "gpt-4o-mini";
    const TIMEOUT: Duration = Duration::from_secs(3);

    /// One project with key `mem-key-a1`, one request a minute per model,
    /// and a disabled key `mem-key-off`.
    fn config(faults: FaultConfig) -> SimConfig {
        let rpm = ModelLimits {
            rpm: Some(1),
            tpm: None,
            otpm: None,
            rpd: None,
        };
        SimConfig {
            projects: vec![ProjectConfig {
                name: "proj-a".to_owned(),
                keys: vec![ApiKey::new("mem-key-a1")],
                limits: [(FLASH.to_owned(), rpm), (MINI.to_owned(), rpm)].into(),
            }],
            disabled_keys: vec![ApiKey::new("mem-key-off")],
            faults,
            ..SimConfig::default()
        }
    }

    fn request(model: &str) -> Request<'_> {
        Request {
            model,
            prompt: "Why is the sky blue?",
            system: Some("One sentence."),
            max_output_tokens: Some(64),
            temperature: None,
            turns: &[],
            generation: Generation::none(),
            media: &[],
        }
    }

    /// An outcome as text; a 429 without its wait, which depends on when
    /// each simulator started.
    fn show<T: Debug>(result: Result<T, super::ApiError>) -> String {
        match result {
            Err(e) => match e.class {
                ErrorClass::RateLimited { scope, limit, .. } => {
                    format!("429 {:?} {scope:?} {limit:?}", e.status)
                }
                _ => format!("{e:?}"),
            },
            Ok(value) => format!("{value:?}"),
        }
    }

    /// Every kind of answer both adapters get: replies, a 429, invalid,
    /// disabled and unknown-model errors, key checks, a model list.
    async fn script(gemini: &Client, openai: &Client) -> Vec<String> {
        let ok = ApiKey::new("mem-key-a1");
        let off = ApiKey::new("mem-key-off");
        let unknown = ApiKey::new("mem-key-unknown");
        vec![
            show(gemini.generate(&ok, &request(FLASH)).await),
            show(gemini.generate(&ok, &request(FLASH)).await),
            show(gemini.generate(&unknown, &request(FLASH)).await),
            show(gemini.generate(&off, &request(FLASH)).await),
            show(gemini.generate(&ok, &request("gemini-0-none")).await),
            show(gemini.check(&ok, FLASH).await),
            show(gemini.list_models(&ok).await),
            show(openai.generate(&ok, &request(MINI)).await),
            show(openai.generate(&ok, &request(MINI)).await),
            show(openai.generate(&unknown, &request(MINI)).await),
            show(openai.check(&off, MINI).await),
            show(openai.list_models(&ok).await),
        ]
    }

    #[tokio::test]
    async fn both_adapters_get_the_same_answers_in_memory_as_over_http() {
        let server = SimServer::start(config(FaultConfig::default()), ([127, 0, 0, 1], 0).into())
            .await
            .unwrap();
        let over_http = |kind| Client::new(kind, &server.base_url(), TIMEOUT, None).unwrap();
        let expected = script(
            &over_http(ProviderKind::Gemini),
            &over_http(ProviderKind::Openai),
        )
        .await;
        server.shutdown().await;

        let sim = Simulator::new(&config(FaultConfig::default())).unwrap();
        let in_memory = |kind| Client::in_memory(kind, sim.router(), TIMEOUT);
        let got = script(
            &in_memory(ProviderKind::Gemini),
            &in_memory(ProviderKind::Openai),
        )
        .await;
        assert_eq!(got, expected);
        // The script covers what it claims: both replies and a 429 each.
        assert!(got[0].starts_with("Reply") && got[7].starts_with("Reply"));
        assert!(got[1].starts_with("429") && got[8].starts_with("429"));
        let stats = sim.stats();
        assert_eq!((stats.projects["proj-a"].ok, stats.requests), (2, 8));
    }

    #[tokio::test(start_paused = true)]
    async fn in_memory_requests_time_out_on_tokios_clock() {
        let sim = Simulator::new(&config(FaultConfig {
            hang: 1.0,
            hang_ms: 60_000,
            ..FaultConfig::default()
        }))
        .unwrap();
        let client = Client::in_memory(ProviderKind::Gemini, sim.router(), TIMEOUT);
        let started = tokio::time::Instant::now();
        let error = client
            .generate(&ApiKey::new("mem-key-a1"), &request(FLASH))
            .await
            .unwrap_err();
        assert_eq!(error.class, ErrorClass::Transient);
        assert_eq!(error.message, "request timed out after 3s");
        assert_eq!(started.elapsed(), TIMEOUT);
    }

    #[tokio::test]
    async fn in_memory_truncated_bodies_are_transient() {
        let sim = Simulator::new(&config(FaultConfig {
            truncate: 1.0,
            ..FaultConfig::default()
        }))
        .unwrap();
        let client = Client::in_memory(ProviderKind::Openai, sim.router(), TIMEOUT);
        let error = client
            .generate(&ApiKey::new("mem-key-a1"), &request(MINI))
            .await
            .unwrap_err();
        assert_eq!(error.class, ErrorClass::Transient);
        assert!(
            error.message.starts_with("response body truncated: "),
            "{}",
            error.message
        );
    }

    #[tokio::test]
    async fn a_base_url_that_is_no_url_fails_each_request_as_unbuildable() {
        let client =
            Client::new(ProviderKind::Gemini, "http://no such host", TIMEOUT, None).unwrap();
        for _ in 0..2 {
            let error = client
                .generate(&ApiKey::new("mem-key-a1"), &request(FLASH))
                .await
                .unwrap_err();
            assert_eq!((error.class, error.status), (ErrorClass::ItemInvalid, None));
            assert!(
                error
                    .message
                    .starts_with("could not build the request: builder error"),
                "{}",
                error.message
            );
        }
    }

    #[tokio::test]
    async fn in_memory_redirects_are_not_followed() {
        let router = axum::Router::new().fallback(|| async {
            (
                StatusCode::TEMPORARY_REDIRECT,
                [(
                    header::LOCATION,
                    "https://elsewhere.example:8443/steal?key=1",
                )],
            )
        });
        let client = Client::in_memory(ProviderKind::Gemini, router, TIMEOUT);
        let error = client
            .generate(&ApiKey::new("mem-key-a1"), &request(FLASH))
            .await
            .unwrap_err();
        assert_eq!(
            (error.class, error.status),
            (ErrorClass::ItemInvalid, Some(307))
        );
        assert!(
            error
                .message
                .contains("a redirect to elsewhere.example:8443,"),
            "{}",
            error.message
        );
    }
}
