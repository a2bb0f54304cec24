//! The HTTP server: routes, the request pipeline shared by both wire formats
//! (key → body → model → quota → fault → latency → answer), counters, and
//! start/shutdown.

use super::anthropic::{self, Anthropic};
use super::batch::Batches;
use super::config::{FaultConfig, LatencyConfig, ModelLimits, SimConfig};
use super::files::Files;
use super::gemini::{self, Gemini};
use super::openai::{self, OpenAi};
use super::quota::{Clock, ProjectState};
use super::reply::{self, Prompt};
use super::stats::{KeyStats, Stats};
use super::wire::{Answer, Turn, Wire};
use crate::types::ApiKey;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Largest request body accepted: Gemini's inline-data limit (100 MB since
/// 2026-01) plus room for the JSON around it.
const MAX_BODY_BYTES: usize = 110 * 1024 * 1024;

/// Where unknown-key requests with no key at all are counted.
const NO_KEY: &str = "(none)";

/// The simulator without a socket: its state and its routes. [`SimServer`]
/// serves it on a socket; [`Simulator::router`] hands the same routes to an
/// in-memory client ([`crate::provider::Client::in_memory`]), so that a test
/// can run under tokio's paused time: the rolling windows, latency and hangs
/// run on tokio's clock, and the Pacific day follows it. Cheap to clone (one
/// shared state).
#[derive(Clone)]
pub struct Simulator {
    shared: Arc<Shared>,
}

impl Simulator {
    /// A simulator for `config`, serving nothing yet. Its clock starts now.
    /// Fails with `InvalidInput` if `config` contradicts itself (see
    /// [`SimConfig::load`]).
    pub fn new(config: &SimConfig) -> std::io::Result<Simulator> {
        config
            .validate()
            .map_err(|message| std::io::Error::new(std::io::ErrorKind::InvalidInput, message))?;
        Ok(Simulator {
            shared: Arc::new(Shared::new(config)),
        })
    }

    /// The routes (see the module docs), bound to this simulator's state.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1beta/models", get(gemini_list))
            .route("/v1beta/models/{target}", post(gemini_models))
            .route("/v1/chat/completions", post(chat_completions))
            .route("/v1/messages", post(messages))
            .route("/v1/models", get(list_models))
            .route("/v1beta/openai/chat/completions", post(chat_completions))
            .route("/upload/v1beta/files", post(upload_file))
            .route("/v1beta/files/{id}", get(file).delete(file))
            .route("/v1beta/batches", get(gemini_batches))
            .route(
                "/v1beta/batches/{target}",
                get(gemini_batch).post(gemini_batch_cancel),
            )
            .route("/download/v1beta/files/{target}", get(gemini_results))
            .route("/v1/files", post(openai_upload))
            .route("/v1/files/{id}/content", get(openai_content))
            .route("/v1/batches", post(openai_create).get(openai_batches))
            .route("/v1/batches/{id}", get(openai_batch))
            .route("/v1/batches/{id}/cancel", post(openai_cancel))
            .route(
                "/v1/messages/batches",
                post(anthropic_create).get(anthropic_batches),
            )
            .route("/v1/messages/batches/{id}", get(anthropic_batch))
            .route("/v1/messages/batches/{id}/cancel", post(anthropic_cancel))
            .route("/v1/messages/batches/{id}/results", get(anthropic_results))
            .route("/__stats", get(stats))
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(Arc::clone(&self.shared))
    }

    /// The counters, as `GET /__stats` serves them.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Moves the simulator's clock forward by `by`, as if that much time had
    /// passed: rolling windows empty and the Pacific day turns. Lets tests
    /// (and rehearsals that want to skip a wait) see quotas recover without
    /// sleeping. Latency and hangs still take tokio's time.
    pub fn advance_clock(&self, by: Duration) {
        self.shared.clock.advance(by);
    }
}

/// Shows nothing: the shared state holds exposed keys.
impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator").finish_non_exhaustive()
    }
}

/// A running simulator on a socket. Dropping it stops serving (gracefully,
/// in the background); [`SimServer::shutdown`] waits for that.
pub struct SimServer {
    addr: SocketAddr,
    sim: Simulator,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl SimServer {
    /// Binds `addr` (port 0 = an ephemeral port) and starts serving in a
    /// spawned task. Fails with `InvalidInput` if `config` contradicts
    /// itself (see [`SimConfig::load`]).
    pub async fn start(config: SimConfig, addr: SocketAddr) -> std::io::Result<SimServer> {
        let sim = Simulator::new(&config)?;
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        // Small JSON answers on keep-alive connections: without NODELAY,
        // Nagle's algorithm adds delayed-ACK stalls of tens of ms.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let app = sim.router();
        let stop = sim.shared.shutdown.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        });
        Ok(SimServer {
            addr,
            sim,
            task: Some(task),
        })
    }

    /// `http://127.0.0.1:PORT` (the loopback address when bound to all
    /// interfaces), the base URL to give a provider.
    pub fn base_url(&self) -> String {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{addr}")
    }

    /// The counters, as `GET /__stats` serves them.
    pub fn stats(&self) -> Stats {
        self.sim.stats()
    }

    /// Moves the simulator's clock forward by `by` (see
    /// [`Simulator::advance_clock`]).
    pub fn advance_clock(&self, by: Duration) {
        self.sim.advance_clock(by);
    }

    /// Stops accepting, lets requests in flight finish, aborts the ones
    /// that hang or wait on latency (their connections close without a
    /// complete answer), and waits until every connection is closed.
    pub async fn shutdown(mut self) {
        self.sim.shared.shutdown.cancel();
        if let Some(task) = self.task.take() {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("keyfan: simulator stopped with an error: {e}"),
                Err(e) => eprintln!("keyfan: simulator task failed: {e}"),
            }
        }
    }
}

/// Shows the address only: the shared state holds exposed keys.
impl std::fmt::Debug for SimServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        self.sim.shared.shutdown.cancel();
    }
}

/// A key the simulator knows.
#[derive(Debug)]
struct KeyEntry {
    fingerprint: String,
    /// Index into `Shared::projects`; `None` for a disabled key.
    project: Option<usize>,
    stats: Mutex<KeyStats>,
}

#[derive(Debug)]
struct Project {
    name: String,
    limits: HashMap<String, ModelLimits>,
    state: Mutex<ProjectState>,
}

/// What every request handler sees. Immutable after start except for the
/// counters and the per-project state, each behind its own short lock.
/// Deliberately not `Debug`: `keys` is indexed by the exposed secrets.
struct Shared {
    seed: u64,
    latency: LatencyConfig,
    faults: FaultConfig,
    models: HashSet<String>,
    /// By exposed key string.
    keys: HashMap<String, KeyEntry>,
    /// Requests with keys the simulator does not know, by fingerprint.
    unknown_keys: Mutex<BTreeMap<String, KeyStats>>,
    projects: Vec<Project>,
    /// Generate requests so far; each gets the next number.
    requests: AtomicU64,
    /// Model list requests so far (`GET /v1beta/models`, `GET /v1/models`).
    model_lists: AtomicU64,
    /// Answers so far to each user text carrying `[[sim:badjson:N]]`.
    bad_answers: Mutex<HashMap<String, u32>>,
    clock: Clock,
    shutdown: CancellationToken,
    /// The Files API's uploads and files.
    files: Files,
    /// The Batch APIs' batches.
    batches: Batches,
}

/// Who sent a request.
enum Caller<'a> {
    Valid(&'a KeyEntry, &'a Project),
    Disabled(&'a KeyEntry),
    Unknown,
}

/// An injected failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Status(StatusCode),
    Hang,
    Truncate,
}

/// A poisoned lock only means another request panicked mid-update; the
/// counters are still usable, so keep serving.
/// A mutex's guard, poisoned or not: the simulator's state stays usable.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn new(config: &SimConfig) -> Shared {
        let mut keys = HashMap::new();
        let entry = |key: &ApiKey, project| KeyEntry {
            fingerprint: key.fingerprint().to_owned(),
            project,
            stats: Mutex::default(),
        };
        for (index, project) in config.projects.iter().enumerate() {
            for key in &project.keys {
                keys.insert(key.expose().to_owned(), entry(key, Some(index)));
            }
        }
        // Inserted last: disabled wins over a project listing the same key.
        for key in &config.disabled_keys {
            keys.insert(key.expose().to_owned(), entry(key, None));
        }
        let projects = config
            .projects
            .iter()
            .map(|p| Project {
                name: p.name.clone(),
                limits: p.limits.iter().map(|(m, l)| (m.clone(), *l)).collect(),
                state: Mutex::default(),
            })
            .collect();
        Shared {
            seed: config.seed,
            latency: config.latency,
            faults: config.faults.clone(),
            models: config.model_set(),
            keys,
            unknown_keys: Mutex::default(),
            projects,
            requests: AtomicU64::new(0),
            model_lists: AtomicU64::new(0),
            bad_answers: Mutex::default(),
            clock: Clock::new(),
            shutdown: CancellationToken::new(),
            files: Files::new(config.files),
            batches: Batches::new(config.batches, config.seed),
        }
    }

    fn caller(&self, key: Option<&str>) -> Caller<'_> {
        match key.and_then(|key| self.keys.get(key)) {
            Some(entry) => match entry.project {
                Some(index) => Caller::Valid(entry, &self.projects[index]),
                None => Caller::Disabled(entry),
            },
            None => Caller::Unknown,
        }
    }

    fn record(&self, caller: &Caller, key: Option<&str>, status: StatusCode, ok: bool) {
        match caller {
            Caller::Valid(entry, _) | Caller::Disabled(entry) => {
                lock(&entry.stats).record(status.as_u16(), ok)
            }
            Caller::Unknown => {
                let name = key.map_or_else(
                    || NO_KEY.to_owned(),
                    |k| ApiKey::new(k).fingerprint().to_owned(),
                );
                lock(&self.unknown_keys)
                    .entry(name)
                    .or_default()
                    .record(status.as_u16(), ok);
            }
        }
    }

    fn stats(&self) -> Stats {
        let mut keys = lock(&self.unknown_keys).clone();
        keys.extend(
            self.keys
                .values()
                .map(|entry| (entry.fingerprint.clone(), lock(&entry.stats).clone())),
        );
        Stats {
            requests: self.requests.load(Ordering::Relaxed),
            model_lists: self.model_lists.load(Ordering::Relaxed),
            keys,
            projects: self
                .projects
                .iter()
                .map(|p| (p.name.clone(), lock(&p.state).stats()))
                .collect(),
            uploads: self.files.stats(|i| self.projects[i].name.clone()),
            uploads_in_progress_max: self.files.in_progress_max(),
        }
    }

    /// Bursts first (deterministic), then one roll against the
    /// probabilities, in a fixed order so a seed replays.
    fn fault(&self, request: u64, roll: f64) -> Option<Fault> {
        let f = &self.faults;
        if let Some(burst) = f
            .bursts
            .iter()
            .find(|b| request > b.after && request - b.after <= b.count)
        {
            // Validated at start to be 400..=599.
            let status =
                StatusCode::from_u16(burst.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return Some(Fault::Status(status));
        }
        let odds = [
            (
                f.error_500,
                Fault::Status(StatusCode::INTERNAL_SERVER_ERROR),
            ),
            (f.error_503, Fault::Status(StatusCode::SERVICE_UNAVAILABLE)),
            (f.hang, Fault::Hang),
            (f.truncate, Fault::Truncate),
        ];
        let mut edge = 0.0;
        odds.into_iter().find_map(|(p, fault)| {
            edge += p;
            (roll < edge).then_some(fault)
        })
    }

    /// Waits `d`, unless the server shuts down first (returns false).
    async fn wait(&self, d: Duration) -> bool {
        if d.is_zero() {
            return true;
        }
        tokio::select! {
            () = tokio::time::sleep(d) => true,
            () = self.shutdown.cancelled() => false,
        }
    }

    /// The pipeline of a generate request in format `W`: number it, check
    /// the key, parse the body, check the model, then [`Shared::admitted`].
    async fn generate<W: Wire>(
        &self,
        key: Option<&str>,
        parse: impl FnOnce() -> Result<Prompt, String>,
    ) -> Response {
        let request = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let caller = self.caller(key);
        let (response, ok) = match caller {
            Caller::Unknown => (W::invalid_key(key), false),
            Caller::Disabled(_) => (W::disabled_key(), false),
            Caller::Valid(_, project) => match parse() {
                Err(message) => (W::bad_request(&message), false),
                Ok(prompt) if !self.models.contains(&prompt.model) => {
                    (W::model_not_found(&prompt.model), false)
                }
                Ok(prompt) => self.admitted::<W>(request, project, &prompt).await,
            },
        };
        self.record(&caller, key, response.status(), ok);
        response
    }

    /// Quota (RPD → RPM → TPM), then faults and latency, then the answer.
    /// Faults count against quota, as a real server counts a 500 it
    /// returns. Returns the response and whether it is a complete 200.
    async fn admitted<W: Wire>(
        &self,
        request: u64,
        project: &Project,
        prompt: &Prompt,
    ) -> (Response, bool) {
        let limits = project
            .limits
            .get(&prompt.model)
            .copied()
            .unwrap_or_default();
        let (now, wall) = (self.clock.now(), self.clock.wall());
        let cost = (prompt.input_tokens, prompt.output_cap().unwrap_or(0));
        let verdict = lock(&project.state).admit(&prompt.model, limits, cost, now, wall);
        let (headroom, ticket) = match verdict {
            Ok(admitted) => admitted,
            Err(rejection) => return (W::rate_limited(&prompt.model, &rejection), false),
        };
        // Seeded per request number, so concurrency cannot reorder draws.
        let mut rng = SmallRng::seed_from_u64(self.seed ^ request);
        let fault = self.fault(request, rng.gen());
        let latency = rng.gen_range(self.latency.min_ms..=self.latency.max_ms);
        let bad_json = prompt.bad_json().is_some_and(|times| {
            times.is_none_or(|n| {
                let mut answers = lock(&self.bad_answers);
                let seen = answers.entry(prompt.user_text.clone()).or_default();
                *seen += 1;
                *seen <= n
            })
        });
        let turn = Turn {
            prompt,
            id: reply::response_id(self.seed, request),
            created: wall.timestamp(),
            headroom,
            bad_json,
        };
        let (response, output_tokens) = if !self.wait(Duration::from_millis(latency)).await {
            (abort::<W>(W::answer(&turn)), None)
        } else {
            match fault {
                Some(Fault::Status(status)) => (W::fault(status, request), None),
                Some(Fault::Truncate) => {
                    let answer = W::answer(&turn);
                    let half = answer.body.len() / 2;
                    (cut_off::<W>(answer, half), None)
                }
                Some(Fault::Hang) => {
                    let answer = W::answer(&turn);
                    if self.wait(Duration::from_millis(self.faults.hang_ms)).await {
                        let tokens = answer.output_tokens;
                        (complete::<W>(answer), Some(tokens))
                    } else {
                        (abort::<W>(answer), None)
                    }
                }
                None => {
                    let answer = W::answer(&turn);
                    let tokens = answer.output_tokens;
                    (complete::<W>(answer), Some(tokens))
                }
            }
        };
        let ok = output_tokens.is_some();
        lock(&project.state).settle(
            &prompt.model,
            ticket,
            ok,
            prompt.input_tokens,
            output_tokens.unwrap_or(0),
        );
        (response, ok)
    }
}

/// A 200 with the whole answer.
fn complete<W: Wire>(answer: Answer) -> Response {
    let mut response = W::json(StatusCode::OK, answer.body);
    response.headers_mut().extend(answer.headers);
    response
}

/// A 200 that announces the whole answer's `Content-Length`, sends its first
/// `keep` bytes and then fails the body, which makes hyper close the
/// connection: the client sees a truncated body.
fn cut_off<W: Wire>(answer: Answer, keep: usize) -> Response {
    let full = answer.body.len();
    let head: Bytes = answer.body.slice(..keep);
    let chunks = futures_util::stream::unfold(0u8, move |step| {
        let head = head.clone();
        async move {
            match step {
                0 => Some((Ok(head), 1)),
                1 => {
                    // Pending once, so hyper flushes the status line and the
                    // first bytes before the failure closes the connection.
                    tokio::task::yield_now().await;
                    let cut = std::io::Error::new(
                        std::io::ErrorKind::ConnectionAborted,
                        "simulated truncated body",
                    );
                    Some((Err(cut), 2))
                }
                _ => None,
            }
        }
    });
    let mut response = W::json(StatusCode::OK, Body::from_stream(chunks));
    response.headers_mut().extend(answer.headers);
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(full));
    response
}

/// An answer aborted by shutdown: at most the status line goes out, then
/// the connection closes with none of the body.
fn abort<W: Wire>(answer: Answer) -> Response {
    cut_off::<W>(answer, 0)
}

/// The key of a Gemini request: header `x-goog-api-key`, else `?key=`.
#[derive(Deserialize)]
struct KeyQuery {
    key: Option<String>,
}

/// `POST /v1beta/models/{model}:{method}`: axum routes on whole segments,
/// so the `:method` suffix is split here.
async fn gemini_models(
    State(shared): State<Arc<Shared>>,
    Path(target): Path<String>,
    Query(query): Query<KeyQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let key = google_key(&headers, query.key.as_deref());
    let (model, method) = target.rsplit_once(':').unwrap_or((target.as_str(), ""));
    match method {
        "generateContent" => {
            let media = match shared.caller(key) {
                Caller::Valid(entry, project) => {
                    let index = shared.project_index(project);
                    match shared.files.media(index, &body) {
                        Ok(media) => media,
                        Err(refusal) => {
                            lock(&entry.stats).record(refusal.status().as_u16(), false);
                            return *refusal;
                        }
                    }
                }
                _ => Vec::new(),
            };
            shared
                .generate::<Gemini>(key, || {
                    gemini::parse_generate(model, &body).map(|p| Prompt { media, ..p })
                })
                .await
        }
        "countTokens" => count_tokens(&shared, key, model, &body),
        "batchGenerateContent" if !shared.models.contains(model) => {
            gemini::model_not_found_for(model, method)
        }
        "batchGenerateContent" => shared.file_request::<Gemini>(key, |project| {
            shared
                .batches
                .gemini_create(&shared.clock, &shared.files, project, model, &body)
        }),
        _ => gemini::model_not_found_for(model, method),
    }
}

/// `countTokens` is free: no quota, no faults, no latency, not numbered. A
/// file it names that the key's project cannot see (or that is still
/// processing) is refused as `generateContent` refuses it.
fn count_tokens(shared: &Shared, key: Option<&str>, model: &str, body: &[u8]) -> Response {
    let caller = shared.caller(key);
    let response = match caller {
        Caller::Unknown => Gemini::invalid_key(key),
        Caller::Disabled(_) => Gemini::disabled_key(),
        Caller::Valid(..) if !shared.models.contains(model) => {
            gemini::model_not_found_for(model, "countTokens")
        }
        // The files it names are checked as for `generateContent`.
        Caller::Valid(_, project) => {
            match shared.files.media(shared.project_index(project), body) {
                Ok(_) => gemini::count_tokens(body),
                Err(refusal) => *refusal,
            }
        }
    };
    let status = response.status();
    shared.record(&caller, key, status, status == StatusCode::OK);
    response
}

/// The key of an OpenAI request: `Authorization: Bearer KEY`.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// `POST /v1/chat/completions`.
async fn chat_completions(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared
        .generate::<OpenAi>(bearer(&headers), || openai::parse_chat(&body))
        .await
}

/// The key of an Anthropic request: `x-api-key`.
fn x_api_key(headers: &HeaderMap) -> Option<&str> {
    headers.get("x-api-key").and_then(|v| v.to_str().ok())
}

/// `POST /v1/messages`: Anthropic's Messages API.
async fn messages(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let version = headers
        .get("anthropic-version")
        .and_then(|v| v.to_str().ok());
    shared
        .generate::<Anthropic>(x_api_key(&headers), || {
            anthropic::parse_messages(version, &body)
        })
        .await
}

/// `GET /v1/models`: free like `countTokens` (no quota, no faults, not
/// numbered); OpenAI's and Anthropic's cheapest way to check a key. An
/// `x-api-key` header makes it Anthropic's list, else it is OpenAI's.
async fn list_models(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    match x_api_key(&headers) {
        Some(key) => shared.list::<Anthropic>(Some(key), || anthropic::model_list(&shared.models)),
        None => shared.list::<OpenAi>(bearer(&headers), || openai::model_list(&shared.models)),
    }
}

/// `GET /v1beta/models?pageSize=N&pageToken=T`'s query (`key` too).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    key: Option<String>,
    page_size: Option<usize>,
    page_token: Option<String>,
}

/// `GET /v1beta/models`: Gemini's paginated model list, free like
/// `countTokens`.
async fn gemini_list(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<ListQuery>,
    headers: HeaderMap,
) -> Response {
    let key = google_key(&headers, query.key.as_deref());
    shared.list::<Gemini>(key, || {
        gemini::model_page(&shared.models, query.page_size, query.page_token.as_deref())
    })
}

impl Shared {
    /// A model list request, answered by `page` for a valid key. Counted in
    /// `model_lists` only, not per key: the per-key counts stay those of
    /// what a run sends for its items.
    fn list<W: Wire>(&self, key: Option<&str>, page: impl FnOnce() -> Response) -> Response {
        self.model_lists.fetch_add(1, Ordering::Relaxed);
        match self.caller(key) {
            Caller::Unknown => W::invalid_key(key),
            Caller::Disabled(_) => W::disabled_key(),
            Caller::Valid(..) => page(),
        }
    }
}

/// A Files API request's query: `key`, and the session of a chunk.
#[derive(Debug, Deserialize)]
struct FileQuery {
    key: Option<String>,
    upload_id: Option<String>,
}

/// `POST /upload/v1beta/files`: an upload's start or one of its chunks.
async fn upload_file(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<FileQuery>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let key = google_key(&headers, query.key.as_deref());
    let host = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| headers.get(header::HOST)?.to_str().ok().map(str::to_owned))
        .unwrap_or_default();
    let origin = format!("http://{host}");
    if query.upload_id.is_some() {
        tokio::time::sleep(shared.files.chunk_delay()).await;
    }
    shared.file_request::<Gemini>(key, |project| {
        shared.files.upload(
            project,
            query.upload_id.as_deref(),
            &origin,
            &headers,
            &body,
        )
    })
}

/// `GET /v1beta/files/{id}` (its description) or `DELETE` (it is gone).
async fn file(
    State(shared): State<Arc<Shared>>,
    method: Method,
    Path(id): Path<String>,
    Query(query): Query<FileQuery>,
    headers: HeaderMap,
) -> Response {
    let key = google_key(&headers, query.key.as_deref());
    shared.file_request::<Gemini>(key, |project| match method {
        Method::DELETE => shared.files.delete(project, &id),
        _ => shared.files.get(project, &id),
    })
}

/// A Gemini key: header `x-goog-api-key`, else `?key=`.
fn google_key<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
    headers
        .get("x-goog-api-key")
        .and_then(|v| v.to_str().ok())
        .or(query)
}

impl Shared {
    /// The index of `project` in `projects`.
    fn project_index(&self, project: &Project) -> usize {
        self.projects
            .iter()
            .position(|p| std::ptr::eq(p, project))
            .unwrap_or_default()
    }

    /// A Files or Batch API request in format `W`: free (no quota, no
    /// faults), answered by `serve` for a valid key's project, and counted
    /// for its key.
    fn file_request<W: Wire>(
        &self,
        key: Option<&str>,
        serve: impl FnOnce(usize) -> Response,
    ) -> Response {
        let caller = self.caller(key);
        let response = match caller {
            Caller::Unknown => W::invalid_key(key),
            Caller::Disabled(_) => W::disabled_key(),
            Caller::Valid(_, project) => serve(self.project_index(project)),
        };
        let status = response.status();
        self.record(&caller, key, status, status == StatusCode::OK);
        response
    }
}

/// `GET /v1beta/batches?pageSize=&pageToken=`: the key's project's batches.
async fn gemini_batches(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<ListQuery>,
    headers: HeaderMap,
) -> Response {
    let key = google_key(&headers, query.key.as_deref());
    shared.file_request::<Gemini>(key, |project| {
        shared.batches.gemini_list(
            &shared.clock,
            project,
            query.page_size,
            query.page_token.as_deref(),
        )
    })
}

/// `GET /v1beta/batches/{id}`.
async fn gemini_batch(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    Query(query): Query<KeyQuery>,
    headers: HeaderMap,
) -> Response {
    let key = google_key(&headers, query.key.as_deref());
    shared.file_request::<Gemini>(key, |project| {
        shared.batches.gemini_get(&shared.clock, project, &id)
    })
}

/// `POST /v1beta/batches/{id}:cancel`.
async fn gemini_batch_cancel(
    State(shared): State<Arc<Shared>>,
    Path(target): Path<String>,
    Query(query): Query<KeyQuery>,
    headers: HeaderMap,
) -> Response {
    let key = google_key(&headers, query.key.as_deref());
    let Some(id) = target.strip_suffix(":cancel") else {
        return gemini::model_not_found_for(&target, "");
    };
    shared.file_request::<Gemini>(key, |project| {
        shared.batches.gemini_cancel(&shared.clock, project, id)
    })
}

/// `GET /download/v1beta/files/batch-{id}:download?alt=media`.
async fn gemini_results(
    State(shared): State<Arc<Shared>>,
    Path(target): Path<String>,
    Query(query): Query<KeyQuery>,
    headers: HeaderMap,
) -> Response {
    let key = google_key(&headers, query.key.as_deref());
    shared.file_request::<Gemini>(key, |project| {
        shared
            .batches
            .gemini_download(&shared.clock, project, &target)
    })
}

/// `POST /v1/files`: a multipart upload (`purpose=batch`).
async fn openai_upload(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    shared.file_request::<OpenAi>(bearer(&headers), |project| {
        shared
            .batches
            .openai_upload(&shared.clock, project, content_type, &body)
    })
}

/// `GET /v1/files/{id}/content`.
async fn openai_content(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    shared.file_request::<OpenAi>(bearer(&headers), |project| {
        shared.batches.openai_content(&shared.clock, project, &id)
    })
}

/// `POST /v1/batches`.
async fn openai_create(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared.file_request::<OpenAi>(bearer(&headers), |project| {
        shared.batches.openai_create(&shared.clock, project, &body)
    })
}

/// `GET /v1/batches?limit=&after=`'s query.
#[derive(Debug, Deserialize)]
struct BatchListQuery {
    limit: Option<usize>,
    after: Option<String>,
}

/// `GET /v1/batches`.
async fn openai_batches(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<BatchListQuery>,
    headers: HeaderMap,
) -> Response {
    shared.file_request::<OpenAi>(bearer(&headers), |project| {
        shared
            .batches
            .openai_list(&shared.clock, project, query.limit, query.after.as_deref())
    })
}

/// `GET /v1/batches/{id}`.
async fn openai_batch(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    shared.file_request::<OpenAi>(bearer(&headers), |project| {
        shared.batches.openai_get(&shared.clock, project, &id)
    })
}

/// `POST /v1/batches/{id}/cancel`.
async fn openai_cancel(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    shared.file_request::<OpenAi>(bearer(&headers), |project| {
        shared.batches.openai_cancel(&shared.clock, project, &id)
    })
}

/// `POST /v1/messages/batches`.
async fn anthropic_create(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared.file_request::<Anthropic>(x_api_key(&headers), |project| {
        shared
            .batches
            .anthropic_create(&shared.clock, project, &body)
    })
}

/// `GET /v1/messages/batches?limit=&after_id=`'s query.
#[derive(Debug, Deserialize)]
struct AnthropicListQuery {
    limit: Option<usize>,
    after_id: Option<String>,
}

/// `GET /v1/messages/batches`.
async fn anthropic_batches(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<AnthropicListQuery>,
    headers: HeaderMap,
) -> Response {
    shared.file_request::<Anthropic>(x_api_key(&headers), |project| {
        shared.batches.anthropic_list(
            &shared.clock,
            project,
            query.limit,
            query.after_id.as_deref(),
        )
    })
}

/// `GET /v1/messages/batches/{id}`.
async fn anthropic_batch(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    shared.file_request::<Anthropic>(x_api_key(&headers), |project| {
        shared.batches.anthropic_get(&shared.clock, project, &id)
    })
}

/// `POST /v1/messages/batches/{id}/cancel`.
async fn anthropic_cancel(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    shared.file_request::<Anthropic>(x_api_key(&headers), |project| {
        shared.batches.anthropic_cancel(&shared.clock, project, &id)
    })
}

/// `GET /v1/messages/batches/{id}/results`.
async fn anthropic_results(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    shared.file_request::<Anthropic>(x_api_key(&headers), |project| {
        shared
            .batches
            .anthropic_results_file(&shared.clock, project, &id)
    })
}

/// `GET /__stats`.
async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.stats()).into_response()
}
