//! What both adapters share to turn a response into an [`ApiError`]: the JSON
//! error envelope (Google's and OpenAI's share one outer shape), the fallback
//! by HTTP status, the duration and number hints that APIs put in their
//! messages, and the errors a 200 can still be.
//!
//! Google: `{"error":{"code":429,"message":..,"status":"RESOURCE_EXHAUSTED","details":[..]}}`,
//! sometimes wrapped in a one-element array (Gemini's OpenAI-compatible
//! endpoint, <https://github.com/n4ze3m/page-assist/issues/406>). OpenAI:
//! `{"error":{"message":..,"type":..,"param":..,"code":"..."}}`.

use super::{ApiError, ErrorClass, Usage};
use crate::types::QuotaUse;
use chrono::{DateTime, Utc};
use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;

/// The inner `error` object of either API. Every field is optional so that an
/// unexpected shape loses only that field, never the message.
#[derive(Debug, Default, Deserialize)]
pub(super) struct ErrorBody {
    /// The API's own human-readable message.
    #[serde(default)]
    pub message: Option<String>,
    /// Google: the HTTP status as a number. OpenAI: a string such as
    /// `invalid_api_key`, or `null`.
    #[serde(default)]
    pub code: Option<Value>,
    /// Google only: the `google.rpc.Code` name, e.g. `RESOURCE_EXHAUSTED`.
    #[serde(default)]
    pub status: Option<String>,
    /// OpenAI only: e.g. `invalid_request_error`, `insufficient_quota`, `tokens`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Google only: typed details (`ErrorInfo`, `QuotaFailure`, `RetryInfo`, ...).
    #[serde(default)]
    pub details: Vec<Detail>,
}

/// One `google.rpc` detail. Only the fields keyfan reads; `@type` says which
/// kind it is, and the order of details varies between API versions.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Detail {
    /// e.g. `type.googleapis.com/google.rpc.QuotaFailure`.
    #[serde(default, rename = "@type")]
    pub type_url: String,
    /// `ErrorInfo.reason`, e.g. `API_KEY_INVALID`, `SERVICE_DISABLED`.
    #[serde(default)]
    pub reason: Option<String>,
    /// `ErrorInfo.metadata` (values are strings on the wire; `Value` so an
    /// odd one cannot fail the whole envelope).
    #[serde(default)]
    pub metadata: HashMap<String, Value>,
    /// `QuotaFailure.violations`.
    #[serde(default)]
    pub violations: Vec<Violation>,
    /// `RetryInfo.retryDelay`, a protobuf Duration string such as `"26s"`.
    #[serde(default)]
    pub retry_delay: Option<String>,
}

/// One `QuotaFailure` violation.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Violation {
    /// e.g. `GenerateRequestsPerDayPerProjectPerModel-FreeTier`.
    #[serde(default)]
    pub quota_id: Option<String>,
    /// The quota's value, a string such as `"250000"`; sometimes absent.
    #[serde(default)]
    pub quota_value: Option<Value>,
}

impl ErrorBody {
    /// Whether this is a Google-style error (it carries a `google.rpc` status
    /// name or a numeric code), even when an OpenAI-style endpoint sent it.
    pub fn is_google(&self) -> bool {
        self.status.is_some() || matches!(self.code, Some(Value::Number(_)))
    }

    /// OpenAI's string `code`, e.g. `invalid_api_key`.
    pub fn code_str(&self) -> Option<&str> {
        self.code.as_ref().and_then(Value::as_str)
    }

    /// The details of one `google.rpc` kind, e.g. `"ErrorInfo"`.
    pub fn details_of<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Detail> + 'a {
        self.details
            .iter()
            .filter(move |d| d.type_url.rsplit('.').next() == Some(kind))
    }

    /// The first `ErrorInfo.reason`, e.g. `API_KEY_INVALID`.
    pub fn error_info_reason(&self) -> Option<&str> {
        self.details_of("ErrorInfo")
            .find_map(|d| d.reason.as_deref())
    }

    /// The message, or "" when the API sent none.
    pub fn message(&self) -> &str {
        self.message.as_deref().unwrap_or_default()
    }
}

/// Parses an error body of either API, plain or array-wrapped. `None` when the
/// body is not such an envelope (empty, HTML from a proxy, truncated).
pub(super) fn parse_error(body: &[u8]) -> Option<ErrorBody> {
    #[derive(Deserialize)]
    struct Envelope {
        error: ErrorBody,
    }
    // `List` must come first: serde also reads a struct from a sequence, so
    // `[{"error":{..}}]` would parse as `One` with an empty error.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Wire {
        List(Vec<Envelope>),
        One(Envelope),
    }
    match serde_json::from_slice::<Wire>(body).ok()? {
        Wire::List(list) => list.into_iter().next().map(|e| e.error),
        Wire::One(envelope) => Some(envelope.error),
    }
}

/// The message of a failed call: the API's own `error.message` when there is
/// one, else the status line and the start of whatever the body was.
pub(super) fn error_message(status: u16, body: &[u8], parsed: Option<&ErrorBody>) -> String {
    if let Some(message) = parsed.map(ErrorBody::message).filter(|m| !m.is_empty()) {
        return message.to_owned();
    }
    let reason = reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let text = String::from_utf8_lossy(body);
    // Collapse whitespace and keep a short prefix: proxies answer with whole
    // HTML pages, and a message is one line in a report.
    let snippet: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(200)
        .collect();
    if snippet.is_empty() {
        format!("HTTP {status} {reason}").trim_end().to_owned()
    } else {
        format!("HTTP {status} {reason}: {snippet}")
    }
}

/// The class of a status that no provider-specific rule claimed: request
/// timeout, conflict and server errors are worth retrying; any other 4xx
/// (400, 404 model, 413 too large, 422) is about the request and never will.
pub(super) fn class_by_status(status: u16) -> ErrorClass {
    match status {
        // The credential was not accepted, or has no access: the key.
        401 => ErrorClass::KeyInvalid {
            reason: "unauthorized".to_owned(),
        },
        403 => ErrorClass::KeyInvalid {
            reason: "forbidden".to_owned(),
        },
        408 | 409 => ErrorClass::Transient,
        400..=499 => ErrorClass::ItemInvalid,
        // 5xx (including Anthropic-style 529) and anything unexpected.
        _ => ErrorClass::Transient,
    }
}

/// Builds an [`ApiError`].
pub(super) fn api_error(
    class: ErrorClass,
    status: Option<u16>,
    message: impl Into<String>,
) -> ApiError {
    ApiError {
        class,
        status,
        message: message.into(),
        billed: None,
        stated: None,
    }
}

/// Parses a URL built from the configured base URL; a failure fails the
/// same way every time.
pub(super) fn url(text: &str) -> Result<reqwest::Url, ApiError> {
    reqwest::Url::parse(text).map_err(|e| {
        api_error(
            ErrorClass::ItemInvalid,
            None,
            format!("could not build the request: {e}"),
        )
    })
}

/// A 2xx body that is not the JSON expected: cut off mid-way, or garbage.
pub(super) fn undecodable(error: &serde_json::Error) -> ApiError {
    api_error(
        ErrorClass::Transient,
        Some(200),
        format!("response body truncated or not the expected JSON: {error}"),
    )
}

/// The largest token count a reply is believed: 10^12, a hundred thousand
/// times the largest context windows (about 10^7 tokens), and far below the
/// 2^63 where sums of counts would overflow the ledger's integers.
pub const MAX_TOKEN_COUNT: u64 = 1_000_000_000_000;

/// Checks a reply's token counts, `(field as the API names it, count)`: a
/// count above [`MAX_TOKEN_COUNT`] makes the reply malformed, never stored.
pub(super) fn believable_counts(counts: &[(&str, u64)]) -> Result<(), ApiError> {
    match counts.iter().find(|(_, n)| *n > MAX_TOKEN_COUNT) {
        Some((field, n)) => Err(api_error(
            ErrorClass::Transient,
            Some(200),
            format!(
                "malformed reply: usage {field} = {n} is not a believable token count \
                 (more than {MAX_TOKEN_COUNT})"
            ),
        )),
        None => Ok(()),
    }
}

/// What a provider that states nothing in headers counted against the
/// account's per-minute quota: all the input (cached included) and all the
/// output.
pub(super) fn counted(usage: &Usage) -> QuotaUse {
    QuotaUse {
        input_tokens: usage.input_tokens,
        output_tokens: usage.output_tokens,
        stated: crate::types::Limits::default(),
    }
}

/// A 200 whose prompt (`what` = "the prompt") or output was withheld on
/// policy grounds; `detail` is the API's explanation when it gives one.
pub(super) fn blocked(what: &str, reason: &str, detail: Option<&str>) -> ApiError {
    let message = match detail {
        Some(detail) => format!("{what} was blocked: {reason}: {detail}"),
        None => format!("{what} was blocked: {reason}"),
    };
    api_error(
        ErrorClass::Blocked {
            reason: reason.to_owned(),
        },
        Some(200),
        message,
    )
}

/// A 200 without usable output and without a reason that would make a retry
/// pointless: the APIs' own guidance is to retry.
pub(super) fn no_output(why: &str) -> ApiError {
    api_error(
        ErrorClass::EmptyAnswer,
        Some(200),
        format!("the API returned no output ({why})"),
    )
}

/// A 200 that stopped at the output cap (`cap`, the API's name for it) before
/// any visible text, because thinking used it up: the same request hits the
/// same cap again, so the item fails, with the counts to size a new cap.
pub(super) fn cap_used_up(cap: &str, usage: &Usage) -> ApiError {
    api_error(
        ErrorClass::ItemInvalid,
        Some(200),
        format!(
            "the output cap ({cap}) was used up before any visible text: \
             {} thinking + {} visible output tokens for a {}-token prompt; \
             raise max_output_tokens or lower the thinking budget",
            usage.thinking_tokens,
            usage.output_tokens.saturating_sub(usage.thinking_tokens),
            usage.input_tokens
        ),
    )
}

/// The longest wait a server may ask for. A larger one is taken as this: no
/// quota the APIs document lasts longer than a day (per-day quotas reset at
/// midnight US/Pacific), and an absurd value must not overflow the clock
/// arithmetic that schedules the retry.
pub const MAX_SERVER_DELAY: Duration = Duration::from_secs(24 * 60 * 60);

/// A wait of `seconds` sent by a server, at most [`MAX_SERVER_DELAY`]; `None`
/// when it is negative or not a number.
pub(super) fn server_delay(seconds: f64) -> Option<Duration> {
    if seconds.is_nan() || seconds < 0.0 {
        return None;
    }
    // Compared as floats first: `inf` and 1e30 do not fit a `Duration`.
    if seconds >= MAX_SERVER_DELAY.as_secs_f64() {
        return Some(MAX_SERVER_DELAY);
    }
    Duration::try_from_secs_f64(seconds).ok()
}

/// Parses a Go / protobuf style duration: `26s`, `0.847655010s`, `856.559356ms`,
/// `1m30.5s`, `6m0s`, at most [`MAX_SERVER_DELAY`]. `None` for anything else,
/// including an empty string.
pub(super) fn parse_duration(text: &str) -> Option<Duration> {
    let is_number = |c: char| c.is_ascii_digit() || c == '.';
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut seconds = 0.0;
    while !rest.is_empty() {
        let number_end = rest.find(|c| !is_number(c)).unwrap_or(rest.len());
        let value: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest.find(is_number).unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        seconds += value * scale;
        rest = &rest[unit_end..];
    }
    server_delay(seconds)
}

/// The server's wait: `retry-after-ms` (OpenAI's, fractional milliseconds),
/// else `retry-after` in seconds or as an HTTP date (relative to `now`), at
/// most [`MAX_SERVER_DELAY`]. Zero and negative values count as absent: Azure
/// sends `0` and `-1` to mean nothing
/// (<https://github.com/openai/openai-dotnet/issues/838>).
pub(super) fn retry_after_header(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let positive = |seconds: f64| server_delay(seconds).filter(|d| !d.is_zero());
    let from_ms = header(headers, "retry-after-ms")
        .and_then(|v| v.parse::<f64>().ok())
        .and_then(|ms| positive(ms / 1000.0));
    from_ms.or_else(|| {
        let value = header(headers, "retry-after")?;
        match value.parse::<f64>() {
            Ok(seconds) => positive(seconds),
            Err(_) => {
                let at = DateTime::parse_from_rfc2822(value).ok()?;
                wait_until(at.with_timezone(&Utc), now)
            }
        }
    })
}

/// The wait from `now` until the instant a server named, at most
/// [`MAX_SERVER_DELAY`]; `None` when it is past.
pub(super) fn wait_until(at: DateTime<Utc>, now: DateTime<Utc>) -> Option<Duration> {
    // Milliseconds cannot overflow: chrono's dates span less than i64::MAX
    // ms either way.
    server_delay(at.signed_duration_since(now).num_milliseconds() as f64 / 1000.0)
        .filter(|d| !d.is_zero())
}

/// A header's value as text, trimmed; `None` when absent or not text.
pub(super) fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name)?.to_str().ok().map(str::trim)
}

/// The wait hint in a message, e.g. `Please retry in 39.006833842s.` (Gemini)
/// or `Please try again in 18.642s.` (OpenAI): the token after `lead`.
pub(super) fn duration_after(message: &str, lead: &str) -> Option<Duration> {
    let start = message.find(lead)? + lead.len();
    let token = message[start..].split_whitespace().next()?;
    parse_duration(token.trim_end_matches(['.', ',']))
}

/// The integer right after the first of `leads` found in `message`, e.g. 20
/// in `..., limit: 20, model: ...`.
pub(super) fn number_after(message: &str, leads: &[&str]) -> Option<u64> {
    leads.iter().find_map(|lead| {
        let start = message.find(lead)? + lead.len();
        let digits: String = message[start..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_every_observed_spelling() {
        let cases = [
            ("26s", Duration::from_secs(26)),
            ("0.847655010s", Duration::from_nanos(847_655_010)),
            ("51820.638305887s", Duration::from_nanos(51_820_638_305_887)),
            ("856.559356ms", Duration::from_nanos(856_559_356)),
            ("1ms", Duration::from_millis(1)),
            ("6m0s", Duration::from_secs(360)),
            ("1m30.5s", Duration::from_millis(90_500)),
            ("2h", Duration::from_secs(7200)),
        ];
        for (text, want) in cases {
            let got = parse_duration(text).unwrap_or_else(|| panic!("{text} did not parse"));
            let diff = got.abs_diff(want);
            assert!(
                diff < Duration::from_micros(1),
                "{text}: {got:?} != {want:?}"
            );
        }
        for bad in ["", "s", "26", "26 s", "-1s", "1d", "abc"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn absurd_server_delays_are_clamped_to_a_day() {
        let day = MAX_SERVER_DELAY;
        for text in [
            "18000000000000000000s",
            "999999999s",
            "86400.000000001s",
            "99999999999999999999999999999999999999999h",
            &format!("{}s", "9".repeat(400)),
        ] {
            assert_eq!(parse_duration(text), Some(day), "{text}");
        }
        assert_eq!(parse_duration("86399s"), Some(Duration::from_secs(86_399)));
        assert_eq!(
            duration_after("Please retry in 18000000000000000000s.", "Please retry in "),
            Some(day)
        );
        assert_eq!(server_delay(f64::INFINITY), Some(day));
        assert_eq!(server_delay(f64::NAN), None);
        assert_eq!(server_delay(-1.0), None);
    }

    #[test]
    fn hints_and_limits_in_messages() {
        let gemini =
            "* Quota exceeded for metric: x, limit: 20, model: y\nPlease retry in 39.006833842s.";
        assert_eq!(
            duration_after(gemini, "Please retry in "),
            Some(Duration::from_nanos(39_006_833_842))
        );
        assert_eq!(number_after(gemini, &["limit: "]), Some(20));
        let openai =
            "on tokens per min (TPM): Limit 30000, Used 14567. Please try again in 18.642s. Visit";
        assert_eq!(
            duration_after(openai, "Please try again in "),
            Some(Duration::from_millis(18_642))
        );
        assert_eq!(number_after(openai, &["Limit: ", "Limit "]), Some(30000));
        assert_eq!(number_after("no numbers", &["Limit "]), None);
        assert_eq!(
            duration_after("Please retry in soon.", "Please retry in "),
            None
        );
    }

    #[test]
    fn non_envelope_bodies_keep_status_and_a_short_snippet() {
        let html = format!(
            "<html>\n  <body>Bad   gateway</body>{}</html>",
            "x".repeat(500)
        );
        let message = error_message(502, html.as_bytes(), parse_error(html.as_bytes()).as_ref());
        assert!(message.starts_with("HTTP 502 Bad Gateway: <html> <body>Bad gateway</body>"));
        assert!(message.chars().count() < 250);
        assert_eq!(error_message(504, b"", None), "HTTP 504 Gateway Timeout");
    }
}
