//! A hostile HTTP server for tests: every answer comes from a script (a
//! closure of the request), so a test can send what no real API and no
//! simulator fault sends (absurd waits, redirects, echoed keys, absurd token
//! counts). It records every request it receives, headers and body included.

use crate::support::{jsonl_job, run_args, Workdir};
use axum::body::{to_bytes, Body};
use axum::http::{Request, Response, StatusCode};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Output;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// One request the server received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// 0 for the first request the server received, then 1, 2, …
    pub number: usize,
    /// The path and query, e.g. `/v1beta/models/gemini-2.5-flash:generateContent`.
    pub path: String,
    /// Header names (lowercase) and values, in the order received.
    pub headers: Vec<(String, String)>,
    /// The request's body.
    pub body: Vec<u8>,
}

impl Seen {
    /// The value of header `name` (lowercase), if it was sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What the server answers to one request.
#[derive(Debug, Clone)]
pub struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    /// An answer with `status` and a JSON `body`.
    pub fn json(status: u16, body: impl Into<String>) -> Answer {
        Answer {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into().into_bytes(),
        }
    }

    /// The same answer with one more header.
    pub fn header(mut self, name: &str, value: &str) -> Answer {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// A running scripted server on 127.0.0.1; it stops when dropped.
pub struct Hostile {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: CancellationToken,
}

impl Hostile {
    /// Starts a server that answers each request with `script(&request)`.
    pub async fn start(script: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> Hostile {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(script);
        let handler = {
            let seen = Arc::clone(&seen);
            move |request: Request<Body>| {
                let seen = Arc::clone(&seen);
                let script = Arc::clone(&script);
                async move {
                    let (parts, body) = request.into_parts();
                    // Read to the end, as a real server does, before answering.
                    let body = to_bytes(body, usize::MAX).await.unwrap_or_default();
                    let request = {
                        let mut seen = seen.lock().unwrap();
                        let request = Seen {
                            number: seen.len(),
                            path: parts
                                .uri
                                .path_and_query()
                                .map_or_else(String::new, ToString::to_string),
                            headers: parts
                                .headers
                                .iter()
                                .map(|(n, v)| {
                                    (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into())
                                })
                                .collect(),
                            body: body.to_vec(),
                        };
                        seen.push(request.clone());
                        request
                    };
                    let answer = script(&request);
                    let mut response = Response::builder()
                        .status(StatusCode::from_u16(answer.status).expect("a valid status"));
                    for (name, value) in &answer.headers {
                        response = response.header(name, value);
                    }
                    response
                        .body(Body::from(answer.body))
                        .expect("a valid response")
                }
            }
        };
        let app = axum::Router::new().fallback(handler);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let stop = CancellationToken::new();
        let serving = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(serving.cancelled_owned())
                .await
        });
        Hostile { addr, seen, stop }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The text of `tests/fixtures/NAME`: real recorded API bodies.
pub fn fixture(name: &str) -> String {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests", "fixtures", name]
        .iter()
        .collect();
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A real Gemini 200 (`gemini_generateContent_basic_2.0-flash.json`) with
/// its text replaced by `text`.
pub fn gemini_reply(text: &str) -> serde_json::Value {
    let mut reply: serde_json::Value =
        serde_json::from_str(&fixture("gemini_generateContent_basic_2.0-flash.json"))
            .expect("fixture JSON");
    reply["candidates"][0]["content"]["parts"][0]["text"] = text.into();
    reply
}

/// A real Gemini 429 (`gemini_429_free_tier_input_tpm.json`, a per-minute
/// quota) whose `RetryInfo.retryDelay` is `delay`.
pub fn gemini_429(delay: &str) -> String {
    fixture("gemini_429_free_tier_input_tpm.json").replace("\"26s\"", &format!("\"{delay}\""))
}

/// A server whose first answer is a real Gemini 429 asking to wait 1.8e19
/// seconds (`RetryInfo.retryDelay`, beyond any `Instant`), and whose later
/// answers are 200s.
pub async fn huge_gemini_delay_then_ok() -> Hostile {
    let reply = gemini_reply("fine").to_string();
    Hostile::start(move |seen| match seen.number {
        0 => Answer::json(429, gemini_429("18000000000000000000s")),
        _ => Answer::json(200, reply.clone()),
    })
    .await
}

/// An OpenAI chat completion with `content`, `finish_reason` and
/// `completion_tokens`, shaped as openai-python's `ChatCompletion`.
pub fn openai_reply(content: &str, finish_reason: &str, completion_tokens: u64) -> String {
    serde_json::json!({
        "id": "chatcmpl-hostile", "object": "chat.completion", "created": 1_777_319_815,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "finish_reason": finish_reason,
            "message": {"role": "assistant", "content": content, "refusal": null}}],
        "usage": {"prompt_tokens": 12, "completion_tokens": completion_tokens,
            "total_tokens": 12 + completion_tokens}
    })
    .to_string()
}

/// A config whose accounts are `(name, provider, keys)`, every provider
/// pointed at `base_url`, then `extra` YAML.
pub fn hostile_config(base_url: &str, accounts: &[(&str, &str, &[&str])], extra: &str) -> String {
    let mut yaml = format!(
        "providers:\n  gemini: {{ base_url: \"{base_url}\" }}\n  openai: {{ base_url: \"{base_url}\" }}\ntimeout: 5s\n{extra}accounts:\n"
    );
    for (name, provider, keys) in accounts {
        yaml.push_str(&format!(
            "  - name: {name}\n    provider: {provider}\n    keys:\n"
        ));
        for key in *keys {
            yaml.push_str(&format!("      - \"{key}\"\n"));
        }
    }
    yaml
}

/// A work directory for a run against `server`: a [`jsonl_job`] of `items`
/// and a [`hostile_config`] of `accounts`, then `extra` YAML.
pub fn hostile_work(
    server: &Hostile,
    items: usize,
    accounts: &[(&str, &str, &[&str])],
    extra: &str,
) -> Workdir {
    let work = Workdir::new();
    work.write("job.jsonl", &jsonl_job(items));
    work.write(
        "config.yaml",
        &hostile_config(&server.base_url(), accounts, extra),
    );
    work
}

/// Runs the job in `work` with state `state.db`, `--offline` (the script
/// answers every request, a model list's included), then `extra`, with
/// `env` set.
pub async fn run_offline(work: &Workdir, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let args = run_args("state.db", &[&["--offline"], extra].concat());
    work.keyfan(&args, env).await
}
