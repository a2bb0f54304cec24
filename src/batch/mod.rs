//! `keyfan run JOB --batch`: the job goes to the providers' Batch APIs at
//! half the online price instead of being sent item by item. One
//! invocation first collects what earlier ones submitted, then submits
//! what is left; run it from cron until it exits 0.
//!
//! - **Collect.** Each open batch of the run is polled. A batch recorded
//!   but never confirmed (`creating`: the process died, or the create's
//!   answer was lost) is looked for by its display name among the
//!   account's batches and adopted, or, when no such batch exists, its
//!   items go back to pending. Anthropic batches have no name: one is
//!   looked for by its creation time and request count instead, and its
//!   custom ids (run scope + item id hash) tell a wrong match at collect. An ended batch's results are downloaded to
//!   disk and read line by line: each line is matched to its item by key,
//!   its usage is recorded in the ledger at the batch price, and its result
//!   goes to the results file; a request that failed inside the batch is
//!   `failed` with the API's message. Lines whose key names no item of the
//!   batch are counted and named in the report. Items a batch did not
//!   finish (expired, failed, cancelled, or missing from its results) go
//!   back to pending.
//! - **Submit.** The items neither finished nor in a batch are spread
//!   evenly over the accounts serving their model, one batch per account
//!   and limit unit (requests, bytes and estimated tokens per batch). Each
//!   batch and its items are recorded (`creating`, items `submitted`)
//!   before its create is sent: an item is never in two batches, and a
//!   batch is never created twice. An item of a provider's own batch file
//!   goes in as its line's body, as written but for the model.
//! - **Online fallback.** Under `--retry-failed --online-fallback`, the
//!   items that failed inside a batch are not batched again but sent
//!   online by the run's engine, after the submit.
//!
//! Owns: the batches table and the batch workflow. Never: the wire formats
//! ([`crate::provider::batch`]) or the results format ([`crate::sink`]).

pub mod store;

pub use store::{BatchRow, Stage};

use crate::config::Config;
use crate::job::{id_hash, Item, JobReader};
use crate::pool::Pool;
use crate::provider::batch::{anthropic_custom_id, BatchInput, BatchJob, BatchOutcome};
use crate::provider::{ApiError, Client, ErrorClass, ProviderKind, RawRequest, Request, Usage};
use crate::run::{
    Clients, Notice, Options, Recording, Resume, RunError, StartError, Stop, Summary,
};
use crate::store::{AttemptClass, AttemptRow, Batch, ItemRow, ItemStatus, RunStatus, Store};
use crate::types::{AccountId, ApiKey, QuotaDay};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Gemini: the input file may hold 2 GB ("The maximum allowed file size
/// for an input file is 2GB", <https://ai.google.dev/gemini-api/docs/batch-api>).
pub const GEMINI_MAX_BYTES: u64 = 2_000_000_000;
/// Gemini documents no request count per batch: keyfan's own default, so
/// that one lost batch costs at most this many items' wait.
pub const GEMINI_MAX_REQUESTS: u64 = 100_000;
/// OpenAI: "up to 50,000 requests" per batch
/// (<https://platform.openai.com/docs/guides/batch>).
pub const OPENAI_MAX_REQUESTS: u64 = 50_000;
/// OpenAI: "The Batch API only supports `.jsonl` files up to 200 MB"
/// (openai-python `resources/files.py`).
pub const OPENAI_MAX_BYTES: u64 = 200_000_000;

/// Anthropic: "A Message Batch is limited to either 100,000 Message
/// requests or 256 MB in size, whichever is reached first"
/// (<https://platform.claude.com/docs/en/build-with-claude/batch-processing>).
pub const ANTHROPIC_MAX_REQUESTS: u64 = 100_000;
/// Anthropic: 256 MB per batch, less a margin for the create's envelope
/// (same source).
pub const ANTHROPIC_MAX_BYTES: u64 = 255_000_000;

/// How far before and after its recording an Anthropic batch that was
/// created but not recorded may have been created (clock skew, then the
/// create's own time).
const UNNAMED_BEFORE: chrono::Duration = chrono::Duration::minutes(5);
const UNNAMED_AFTER: chrono::Duration = chrono::Duration::minutes(30);

/// Result rows committed (and written) together while collecting.
const COMMIT_EVERY: usize = 1000;

/// Unknown result keys named in the report, per batch.
const UNKNOWN_SHOWN: usize = 5;

/// How `--batch` submits: how big one batch may be (what is not given
/// comes from the provider's documented limit), and whether items that
/// failed in a batch go online instead.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchSettings {
    /// Requests per batch.
    pub max_requests: Option<u64>,
    /// Bytes of input file per batch.
    pub max_bytes: Option<u64>,
    /// Estimated input tokens per batch (the providers' enqueued-token
    /// limits per model and tier: Gemini Tier 1 gemini-2.5-flash
    /// 3,000,000; OpenAI's are shown per organisation). None by default.
    pub max_tokens: Option<u64>,
    /// `--online-fallback`: with `--retry-failed`, items that failed inside
    /// a batch are sent online instead of batched again.
    pub online_fallback: bool,
}

impl BatchSettings {
    /// The limits for a batch to `kind`'s API.
    fn unit(&self, kind: ProviderKind) -> Unit {
        let (requests, bytes) = match kind {
            ProviderKind::Gemini => (GEMINI_MAX_REQUESTS, GEMINI_MAX_BYTES),
            ProviderKind::Anthropic => (ANTHROPIC_MAX_REQUESTS, ANTHROPIC_MAX_BYTES),
            _ => (OPENAI_MAX_REQUESTS, OPENAI_MAX_BYTES),
        };
        Unit {
            requests: self.max_requests.unwrap_or(requests).max(1),
            bytes: self.max_bytes.unwrap_or(bytes).max(1),
            tokens: self.max_tokens.unwrap_or(u64::MAX).max(1),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Unit {
    requests: u64,
    bytes: u64,
    tokens: u64,
}

/// What a batch invocation needs besides its recording.
pub struct Batcher<'a> {
    /// The run's config.
    pub config: &'a Config,
    /// One client per account.
    pub clients: &'a Clients,
    /// The pool, for the names the config gives models.
    pub pool: &'a Pool,
    /// The provider of each model the job names, by the name it is sent
    /// as (a name of the config's `models` map resolved).
    pub providers: HashMap<String, ProviderKind>,
    /// The job file.
    pub job: &'a Path,
    /// The job's content hash.
    pub job_hash: &'a str,
    /// The size limits and the online fallback.
    pub limits: BatchSettings,
    /// Whether failed items are sent again.
    pub resume: Resume,
    /// Where input and results files are kept while in use.
    pub dir: PathBuf,
    /// Whether the batches go to the run's own simulator (`--simulate`),
    /// which ends with the run: what it submitted is collected at once.
    pub simulated: bool,
    /// How to send items online (`--online-fallback`).
    pub online: Online<'a>,
}

/// What sending items online takes: the online run's options, pool,
/// clients and stop signal.
pub struct Online<'a> {
    /// The options of an online run of the job.
    pub options: &'a Options,
    /// The pool.
    pub pool: Arc<Pool>,
    /// One client per account.
    pub clients: Arc<Clients>,
    /// How the run is stopped early.
    pub stop: &'a Stop,
}

/// One account's part of the job for one model, being written.
struct Chunk {
    account: usize,
    model: String,
    path: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    items: Vec<(String, u64)>,
    bytes: u64,
    tokens: u64,
}

impl Batcher<'_> {
    /// Collects what is ready, then submits what is left. Returns the
    /// invocation's summary (status [`RunStatus::Batched`] while batches are
    /// open) and the store.
    pub async fn run(self, mut recording: Recording) -> Result<(Summary, Store), RunError> {
        let started = std::time::Instant::now();
        std::fs::create_dir_all(&self.dir)
            .map_err(StartError::io(format!("create {}", self.dir.display())))?;
        let mut errors = Vec::new();
        let failed_now = self.collect(&mut recording, &mut errors).await?;
        let online = self.online_items(&recording, &failed_now)?;
        let mut skip = failed_now;
        skip.extend(&online);
        self.submit(&mut recording, skip, &mut errors).await?;
        if self.simulated {
            self.collect(&mut recording, &mut errors).await?;
        }
        let open = store::open(&recording.store, Some(recording.run))?.len();
        let (sent, store) = self.send_online(recording, online).await?;
        let mut keys_refused = Vec::new();
        let mut online_status = RunStatus::Done;
        if let Some(sent) = sent {
            errors.extend(sent.errors);
            keys_refused = sent.keys_refused;
            online_status = sent.status;
        }
        // A refused create leaves its items pending: not done, and no batch
        // holds them (the next run submits them again).
        let status = if !errors.is_empty() {
            RunStatus::Failed
        } else if online_status != RunStatus::Done {
            online_status
        } else if open > 0 {
            RunStatus::Batched
        } else {
            RunStatus::Done
        };
        Ok((
            Summary {
                status,
                errors,
                keys_refused,
                elapsed: started.elapsed(),
            },
            store,
        ))
    }

    /// Under `--retry-failed --online-fallback`, the items (by id hash)
    /// that failed inside a batch in an earlier invocation: sent online
    /// instead of batched again. Empty otherwise.
    fn online_items(
        &self,
        recording: &Recording,
        failed_now: &HashSet<u64>,
    ) -> Result<HashSet<u64>, RunError> {
        if !self.limits.online_fallback || self.resume != Resume::RetryFailed {
            return Ok(HashSet::new());
        }
        Ok(store::failed_in_batches(&recording.store, recording.run)?
            .iter()
            .map(|id| id_hash(id))
            .filter(|hash| !failed_now.contains(hash))
            .collect())
    }

    /// Sends `items` online, as a run without `--batch` would, and returns
    /// its summary (none when there was nothing to send) and the store.
    async fn send_online(
        &self,
        mut recording: Recording,
        items: HashSet<u64>,
    ) -> Result<(Option<Summary>, Store), RunError> {
        if items.is_empty() {
            return Ok((None, recording.store));
        }
        Self::tell(
            &mut recording,
            format!(
                "sending {} item(s) that failed inside a batch online (--online-fallback)",
                items.len()
            ),
        );
        let online = &self.online;
        let mut options = online.options.clone();
        options.total = items.len() as u64;
        options.concurrency = options.concurrency.min(items.len()).max(1);
        options.only = Some(Arc::new(items));
        let (summary, store) = crate::run::execute_with(
            &options,
            Arc::clone(&online.pool),
            Arc::clone(&online.clients),
            recording,
            online.stop,
            None,
        )
        .await?;
        Ok((Some(summary), store))
    }

    fn tell(recording: &mut Recording, message: String) {
        let mut message = message;
        recording.scrubber.clean(&mut message);
        recording.observer.notice(&Notice::Batch(message));
    }

    /// The account named `name`, its client and a key to use with it (the
    /// one of fingerprint `fingerprint` if it is still configured).
    fn account(&self, name: &str, fingerprint: &str) -> Option<(&Client, &ApiKey)> {
        let index = self.config.accounts.iter().position(|a| a.name == name)?;
        let keys = &self.config.accounts[index].keys;
        let key = keys
            .iter()
            .find(|k| k.key.fingerprint() == fingerprint)
            .or(keys.first())?;
        Some((self.clients.get(AccountId(index)), &key.key))
    }

    // -----------------------------------------------------------------------
    // Collect

    /// Polls every open batch of the run and collects the ended ones.
    /// Returns the items that failed now (by id hash): not submitted again
    /// in this invocation, even under `--retry-failed`.
    async fn collect(
        &self,
        recording: &mut Recording,
        errors: &mut Vec<String>,
    ) -> Result<HashSet<u64>, RunError> {
        let mut failed = HashSet::new();
        // Each account's batches, listed once, for the unconfirmed ones.
        let mut listed: HashMap<String, Vec<BatchJob>> = HashMap::new();
        for batch in store::open(&recording.store, Some(recording.run))? {
            let Some((client, key)) = self.account(&batch.account, &batch.key) else {
                errors.push(format!(
                    "batch {} went to account {}, which the config no longer has: it is left \
                     as it is",
                    batch.display_name, batch.account
                ));
                continue;
            };
            let job = match (&batch.name, batch.stage) {
                (None, _) | (_, Stage::Creating) if self.unnamed(&batch.account) => {
                    match self.adopt_unnamed(recording, &batch, client, key).await? {
                        Some(job) => job,
                        None => continue,
                    }
                }
                (None, _) | (_, Stage::Creating) => {
                    if !listed.contains_key(&batch.account) {
                        match client.list_batches(key).await {
                            Ok(jobs) => {
                                listed.insert(batch.account.clone(), jobs);
                            }
                            Err(e) => {
                                unlisted(recording, &batch, &e);
                                continue;
                            }
                        }
                    }
                    let found = listed[&batch.account]
                        .iter()
                        .find(|j| j.display_name == batch.display_name);
                    match found {
                        Some(job) => {
                            Self::tell(
                                recording,
                                format!(
                                    "adopted batch {} ({}) of account {}: it was created but not \
                                     recorded",
                                    batch.display_name, job.name, batch.account
                                ),
                            );
                            job.clone()
                        }
                        None => {
                            never_created(recording, &batch, "no batch of this name was created")?;
                            continue;
                        }
                    }
                }
                (Some(name), _) => match client.get_batch(key, name).await {
                    Ok(job) => job,
                    Err(e) => {
                        Self::tell(
                            recording,
                            format!("could not poll batch {}: {e}", batch.display_name),
                        );
                        continue;
                    }
                },
            };
            store::update(
                &recording.store,
                batch.id,
                &job.name,
                job.state,
                job.error.as_deref(),
            )?;
            if job.state.is_terminal() {
                self.collect_one(recording, &batch, &job, client, key, &mut failed)
                    .await?;
            }
        }
        Ok(failed)
    }

    /// Collects the ended batch `job` (recorded as `batch`): its results,
    /// then its unfinished items back to pending.
    async fn collect_one(
        &self,
        recording: &mut Recording,
        batch: &BatchRow,
        job: &BatchJob,
        client: &Client,
        key: &ApiKey,
        failed: &mut HashSet<u64>,
    ) -> Result<(), RunError> {
        let mut found = store::Collected::default();
        let mut results = 0u64;
        if !job.results.is_empty() {
            let path = self
                .dir
                .join(format!("{}.results.jsonl", batch.display_name));
            if let Err(e) = client.download_batch_results(key, job, &path).await {
                Self::tell(
                    recording,
                    format!(
                        "could not download the results of batch {}: {e} (tried again next run)",
                        batch.display_name
                    ),
                );
                return Ok(());
            }
            let read = self.read_results(recording, batch, client, &path, failed, &mut found);
            let _ = std::fs::remove_file(&path);
            results = read?;
        }
        let stage = Stage::Collected;
        let back = store::close(&recording.store, batch, stage, job.error.as_deref(), &found)?;
        let state = store::Stage::Provider(job.state);
        let mut message = format!(
            "collected batch {} ({state}): {results} result(s)",
            batch.display_name
        );
        if back > 0 {
            message.push_str(&format!(", {back} item(s) pending again"));
        }
        if let Some(error) = &job.error {
            message.push_str(&format!(" ({error})"));
        }
        if found.unknown > 0 {
            message.push_str(&format!(
                ", {} line(s) with unknown keys ({})",
                found.unknown,
                found.unknown_first.join(", ")
            ));
        }
        Self::tell(recording, message);
        Ok(())
    }

    /// Reads a results file line by line: each line's item is committed
    /// and written, [`COMMIT_EVERY`] at a time. Returns the results taken.
    fn read_results(
        &self,
        recording: &mut Recording,
        batch: &BatchRow,
        client: &Client,
        path: &Path,
        failed: &mut HashSet<u64>,
        found: &mut store::Collected,
    ) -> Result<u64, RunError> {
        let file = std::fs::File::open(path)
            .map_err(StartError::io(format!("read {}", path.display())))?;
        let online = self.config.prices.price(&batch.model);
        let price = online.map(|p| p.batch());
        let day = QuotaDay::today().to_string();
        let latency_ms = (batch.duration_s() * 1000.0) as u64;
        let mut pending = Batch::default();
        let mut in_pending = HashSet::new();
        let mut taken = 0;
        let custom_ids = self.custom_ids(recording, batch)?;
        for line in std::io::BufReader::new(file).split(b'\n') {
            let line = line.map_err(StartError::io(format!("read {}", path.display())))?;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let mut result = match client.parse_batch_line(&line) {
                Ok(result) => result,
                Err(e) => {
                    found.unknown += 1;
                    if found.unknown_first.len() < UNKNOWN_SHOWN {
                        found.unknown_first.push(format!("(unreadable line: {e})"));
                    }
                    continue;
                }
            };
            if let Some(id) = custom_ids.as_ref().and_then(|ids| ids.get(&result.key)) {
                result.key = id.clone();
            }
            let member = match store::member(&recording.store, batch, &result.key)? {
                Some(member) if member.waiting => member,
                // Collected before (a rerun after a crash midway): once only.
                Some(_) => continue,
                None => {
                    found.unknown += 1;
                    if found.unknown_first.len() < UNKNOWN_SHOWN {
                        found.unknown_first.push(result.key);
                    }
                    continue;
                }
            };
            if !in_pending.insert(result.key.clone()) {
                continue;
            }
            let (usage, status, output, error, reason, http) = match result.outcome {
                BatchOutcome::Unfinished => continue,
                BatchOutcome::Reply(reply) => (
                    reply.usage,
                    ItemStatus::Ok,
                    Some(reply.text),
                    None,
                    reply.finish_reason,
                    Some(200),
                ),
                BatchOutcome::Failed(e) => {
                    let status = match e.class {
                        ErrorClass::Blocked { .. } => ItemStatus::Blocked,
                        _ => ItemStatus::Failed,
                    };
                    let usage = e.billed.as_deref().map(|b| b.usage).unwrap_or_default();
                    (
                        usage,
                        status,
                        None,
                        Some(clean(recording, &e)),
                        None,
                        e.status,
                    )
                }
            };
            let cost = price.map(|p| p.cost(&usage));
            found.cost_usd += cost.unwrap_or(0.0);
            found.online_usd += online.map_or(0.0, |p| p.cost(&usage));
            pending.attempts.push(AttemptRow {
                item_id: result.key.clone(),
                attempt: member.attempt,
                key: batch.key.clone(),
                account: batch.account.clone(),
                model: batch.model.clone(),
                class: match status {
                    ItemStatus::Ok => AttemptClass::Ok,
                    ItemStatus::Blocked => AttemptClass::Blocked,
                    _ => AttemptClass::ItemInvalid,
                },
                http_status: http,
                latency_ms,
                input_tokens: usage.input_tokens,
                output_tokens: usage.output_tokens,
                cost_usd: cost,
                error: error.clone(),
                at: crate::store::now(),
                day: day.clone(),
            });
            if status == ItemStatus::Failed {
                failed.insert(id_hash(&result.key));
            }
            pending.items.push(item_row(
                result.key, member, status, output, error, reason, &usage, cost, batch,
            ));
            taken += 1;
            if pending.items.len() >= COMMIT_EVERY {
                flush(recording, &mut pending)?;
                in_pending.clear();
            }
        }
        flush(recording, &mut pending)?;
        Ok(taken)
    }

    /// Whether `account`'s batches carry no name (Anthropic's): one
    /// created but not recorded is told by its creation time and size.
    fn unnamed(&self, account: &str) -> bool {
        self.config
            .accounts
            .iter()
            .any(|a| a.name == account && a.provider == ProviderKind::Anthropic)
    }

    /// The run scope in every Anthropic custom id of this run: the job's
    /// tag and the run's number.
    fn scope(&self, recording: &Recording) -> String {
        let tag = self.job_hash.get(..8).unwrap_or(self.job_hash);
        format!("{tag}r{}", recording.run.0)
    }

    /// For an Anthropic batch, its custom ids mapped to its item ids; for
    /// other providers the custom id is the item id (`None`).
    fn custom_ids(
        &self,
        recording: &Recording,
        batch: &BatchRow,
    ) -> Result<Option<HashMap<String, String>>, RunError> {
        if !self.unnamed(&batch.account) {
            return Ok(None);
        }
        let scope = self.scope(recording);
        let ids = store::member_ids(&recording.store, batch)?
            .into_iter()
            .map(|id| (anthropic_custom_id(&scope, &id), id))
            .collect();
        Ok(Some(ids))
    }

    /// Finds the Anthropic batch `batch` recorded but never confirmed: the
    /// account's one created within minutes of its recording, holding as
    /// many requests, and recorded by no other row of the state file (the
    /// oldest such). Adopted, its results are matched by custom id, which
    /// holds this run's scope: a wrong match leaves its lines unknown and
    /// the items pending, never collected twice. None found: its items are
    /// pending again. `None` means: nothing to poll now.
    async fn adopt_unnamed(
        &self,
        recording: &mut Recording,
        batch: &BatchRow,
        client: &Client,
        key: &ApiKey,
    ) -> Result<Option<BatchJob>, RunError> {
        let at = chrono::DateTime::parse_from_rfc3339(&batch.submitted_at)
            .map(|at| at.with_timezone(&chrono::Utc))
            .unwrap_or_else(|_| chrono::Utc::now());
        let candidates = match client
            .anthropic_batches_created(key, at - UNNAMED_BEFORE, at + UNNAMED_AFTER)
            .await
        {
            Ok(jobs) => jobs,
            Err(e) => {
                unlisted(recording, batch, &e);
                return Ok(None);
            }
        };
        let recorded: HashSet<String> = store::all(&recording.store, None)?
            .into_iter()
            .filter_map(|b| b.name)
            .collect();
        let found = candidates
            .into_iter()
            .rev()
            .find(|j| j.total == batch.items && !recorded.contains(&j.name));
        match found {
            Some(job) => {
                Self::tell(
                    recording,
                    format!(
                        "adopted batch {} ({}) of account {}: it was created but not recorded \
                         (found by its creation time and size)",
                        batch.display_name, job.name, batch.account
                    ),
                );
                Ok(Some(job))
            }
            None => {
                never_created(
                    recording,
                    batch,
                    "no batch of this size was created at that time",
                )?;
                Ok(None)
            }
        }
    }

    // -----------------------------------------------------------------------
    // Submit

    /// Submits every item that is neither finished nor in a batch.
    async fn submit(
        &self,
        recording: &mut Recording,
        failed_now: HashSet<u64>,
        errors: &mut Vec<String>,
    ) -> Result<(), RunError> {
        let orphans = store::orphans_to_pending(&recording.store, recording.run)?;
        if orphans > 0 {
            Self::tell(
                recording,
                format!("{orphans} submitted item(s) were in no open batch: pending again"),
            );
        }
        let mut skip = failed_now;
        let retry_failed = self.resume == Resume::RetryFailed;
        recording
            .store
            .for_each_item(recording.run, |row| {
                let again = row.status == ItemStatus::Deferred
                    || (row.status == ItemStatus::Failed && retry_failed);
                if !again {
                    skip.insert(id_hash(&row.id));
                }
                Ok::<(), std::convert::Infallible>(())
            })?
            .unwrap_or_else(|never| match never {});
        let chunks = self.write_chunks(recording, &skip)?;
        if chunks.is_empty() {
            return Ok(());
        }
        let tag = self.job_hash.get(..8).unwrap_or(self.job_hash).to_owned();
        for chunk in chunks {
            let account = &self.config.accounts[chunk.account];
            let Some(key) = account.keys.first() else {
                continue;
            };
            let (id, display) = store::record(
                &recording.store,
                &store::Intent {
                    run: recording.run,
                    account: &account.name,
                    key: key.key.fingerprint(),
                    model: &chunk.model,
                    tag: &tag,
                    items: &chunk.items,
                },
            )?;
            let client = self.clients.get(AccountId(chunk.account));
            let input = BatchInput {
                path: &chunk.path,
                size: chunk.bytes,
                model: &chunk.model,
                display_name: &display,
            };
            let created = client.create_batch(&key.key, input).await;
            let _ = std::fs::remove_file(&chunk.path);
            match created {
                Ok(job) => {
                    store::update(&recording.store, id, &job.name, job.state, None)?;
                    Self::tell(
                        recording,
                        format!(
                            "submitted batch {display} ({}) to account {}: {} item(s) of {}",
                            job.name,
                            account.name,
                            chunk.items.len(),
                            chunk.model
                        ),
                    );
                }
                Err(e) if refused(&e) => {
                    let message = clean(recording, &e);
                    let row = store::all(&recording.store, Some(recording.run))?
                        .into_iter()
                        .find(|b| b.id == id);
                    if let Some(row) = row {
                        store::close(
                            &recording.store,
                            &row,
                            Stage::Abandoned,
                            Some(&message),
                            &store::Collected::default(),
                        )?;
                    }
                    let text = format!(
                        "account {} refused batch {display}: {message}; its {} item(s) stay pending",
                        account.name,
                        chunk.items.len()
                    );
                    Self::tell(recording, text.clone());
                    errors.push(text);
                }
                Err(e) => Self::tell(
                    recording,
                    format!(
                        "creating batch {display} on account {} failed ({}): the next run looks \
                         for it by name before submitting its items again",
                        account.name,
                        clean(recording, &e)
                    ),
                ),
            }
        }
        Ok(())
    }

    /// Writes the items to submit into input files, one per account and
    /// limit unit, spreading each model's items evenly over its accounts.
    /// Items with media cannot go in a batch: they fail here.
    fn write_chunks(
        &self,
        recording: &mut Recording,
        skip: &HashSet<u64>,
    ) -> Result<Vec<Chunk>, RunError> {
        let mut open: HashMap<(String, usize), Chunk> = HashMap::new();
        let mut done = Vec::new();
        let mut next_account: HashMap<String, usize> = HashMap::new();
        let mut refused = Batch::default();
        let mut serial = 0u64;
        let scope = self.scope(recording);
        for item in JobReader::open(self.job)? {
            // Invalid lines were refused or skipped before.
            let Ok(item) = item else { continue };
            if skip.contains(&id_hash(&item.id)) {
                continue;
            }
            let model = item.model.as_deref().unwrap_or(&self.config.model);
            let wire = self.pool.model_name(model).to_owned();
            let kind = self.providers.get(&wire).copied();
            let accounts: Vec<usize> = self
                .config
                .accounts
                .iter()
                .enumerate()
                .filter(|(_, a)| Some(a.provider) == kind && !a.keys.is_empty())
                .map(|(i, _)| i)
                .collect();
            let why = if !item.media.is_empty() {
                Some("media items cannot go in a batch: run them without --batch")
            } else if kind.is_none() || accounts.is_empty() {
                Some("no account with a key serves this model's provider: run it without --batch")
            } else {
                None
            };
            if let Some(why) = why {
                refused.items.push(unsent(&item, &wire, why));
                continue;
            }
            let turn = next_account.entry(wire.clone()).or_default();
            let account = accounts[*turn % accounts.len()];
            *turn += 1;
            let kind = kind.unwrap_or(ProviderKind::Gemini);
            let unit = self.limits.unit(kind);
            let mut line = Vec::new();
            let client = self.clients.get(AccountId(account));
            let key = match kind {
                ProviderKind::Anthropic => anthropic_custom_id(&scope, &item.id),
                _ => item.id.clone(),
            };
            // A batch file's body goes as it is, but for the model.
            let written = match &item.raw {
                Some(body) => {
                    let request = RawRequest {
                        model: &wire,
                        body,
                        max_output_tokens: item.max_output_tokens,
                    };
                    client.write_raw_batch_line(&key, &request, &mut line)
                }
                None => {
                    let request = Request {
                        model: &wire,
                        prompt: &item.prompt,
                        turns: &item.turns,
                        system: item.system.as_deref(),
                        max_output_tokens: item.max_output_tokens,
                        temperature: item.temperature,
                        generation: &item.generation,
                        media: &[],
                    };
                    client.write_batch_line(&key, &request, &mut line)
                }
            };
            written.map_err(StartError::io("write a batch input line".to_owned()))?;
            let tokens = crate::estimate::item_tokens(&item, &wire);
            let slot = (wire.clone(), account);
            let full = open.get(&slot).is_some_and(|c| {
                c.items.len() as u64 + 1 > unit.requests
                    || c.bytes + line.len() as u64 > unit.bytes
                    || c.tokens.saturating_add(tokens) > unit.tokens
            });
            if full {
                if let Some(chunk) = open.remove(&slot) {
                    done.push(finish(chunk)?);
                }
            }
            let chunk = match open.entry(slot) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    serial += 1;
                    let path = self
                        .dir
                        .join(format!("input-{}-{serial}.jsonl", std::process::id()));
                    let file = std::fs::File::create(&path)
                        .map_err(StartError::io(format!("create {}", path.display())))?;
                    v.insert(Chunk {
                        account,
                        model: wire.clone(),
                        path,
                        file: std::io::BufWriter::new(file),
                        items: Vec::new(),
                        bytes: 0,
                        tokens: 0,
                    })
                }
            };
            chunk
                .file
                .write_all(&line)
                .map_err(StartError::io(format!("write {}", chunk.path.display())))?;
            chunk.items.push((item.id, item.line));
            chunk.bytes += line.len() as u64;
            chunk.tokens = chunk.tokens.saturating_add(tokens);
        }
        flush(recording, &mut refused)?;
        for (_, chunk) in open {
            done.push(finish(chunk)?);
        }
        done.sort_by(|a, b| (&a.model, a.account).cmp(&(&b.model, b.account)));
        Ok(done)
    }
}

/// Says that the batches of `batch`'s account could not be listed to find
/// it.
fn unlisted(recording: &mut Recording, batch: &BatchRow, error: &ApiError) {
    Batcher::tell(
        recording,
        format!(
            "could not list the batches of account {} to find {}: {error}",
            batch.account, batch.display_name
        ),
    );
}

/// Closes `batch`, which was never created: its items are pending again.
fn never_created(recording: &mut Recording, batch: &BatchRow, why: &str) -> Result<(), RunError> {
    let back = store::close(
        &recording.store,
        batch,
        Stage::Abandoned,
        Some(why),
        &store::Collected::default(),
    )?;
    Batcher::tell(
        recording,
        format!(
            "batch {} was never created: its {back} item(s) are pending again",
            batch.display_name
        ),
    );
    Ok(())
}

/// Closes a chunk's input file.
fn finish(mut chunk: Chunk) -> Result<Chunk, RunError> {
    chunk
        .file
        .flush()
        .map_err(StartError::io(format!("write {}", chunk.path.display())))?;
    Ok(chunk)
}

/// Whether a create was refused, so that no batch exists: a 4xx answer.
fn refused(error: &ApiError) -> bool {
    error.status.is_some_and(|s| (400..500).contains(&s))
}

/// The error's message, every configured key scrubbed from it.
fn clean(recording: &Recording, error: &ApiError) -> String {
    let mut message = error.message.clone();
    recording.scrubber.clean(&mut message);
    message
}

/// Commits `batch` and writes its items to the results file.
fn flush(recording: &mut Recording, batch: &mut Batch) -> Result<(), RunError> {
    if batch.items.is_empty() && batch.attempts.is_empty() {
        return Ok(());
    }
    recording.store.commit(recording.run, batch)?;
    for item in &batch.items {
        recording.sink.write(item).map_err(RunError::Sink)?;
        recording.observer.finished(item);
    }
    recording.sink.flush().map_err(RunError::Sink)?;
    *batch = Batch::default();
    Ok(())
}

/// The row of an item that could not go in a batch.
fn unsent(item: &Item, model: &str, why: &str) -> ItemRow {
    ItemRow {
        error: Some(why.to_owned()),
        ..ItemRow::unsent(item.id.clone(), item.line, ItemStatus::Failed, Some(model))
    }
}

/// The row of an item collected from `batch`.
#[allow(clippy::too_many_arguments)]
fn item_row(
    id: String,
    member: store::Member,
    status: ItemStatus,
    output: Option<String>,
    error: Option<String>,
    finish_reason: Option<String>,
    usage: &Usage,
    cost: Option<f64>,
    batch: &BatchRow,
) -> ItemRow {
    ItemRow {
        id,
        line: member.line,
        status,
        output,
        model: Some(batch.model.clone()),
        input_tokens: usage.input_tokens,
        output_tokens: usage.output_tokens,
        latency_ms: (batch.duration_s() * 1000.0) as u64,
        attempts: member.attempt,
        key: Some(batch.key.clone()),
        account: Some(batch.account.clone()),
        error,
        thinking_tokens: usage.thinking_tokens,
        cached_tokens: usage.cached_tokens,
        finish_reason,
        cost,
        output_json: None,
    }
}

/// Asks the provider to cancel `batch`; its items come back to pending
/// when a later run collects it.
pub async fn cancel(config: &Config, clients: &Clients, batch: &BatchRow) -> Result<(), String> {
    let Some(name) = &batch.name else {
        return Err(format!(
            "batch {} is not confirmed yet: run the job again first",
            batch.display_name
        ));
    };
    let index = config
        .accounts
        .iter()
        .position(|a| a.name == batch.account)
        .ok_or_else(|| format!("the config has no account {}", batch.account))?;
    let keys = &config.accounts[index].keys;
    let key = keys
        .iter()
        .find(|k| k.key.fingerprint() == batch.key)
        .or(keys.first())
        .ok_or_else(|| format!("account {} has no key", batch.account))?;
    clients
        .get(AccountId(index))
        .cancel_batch(&key.key, name)
        .await
        .map_err(|e| e.message)
}

/// Where a state file's batch files go while in use: beside it.
pub fn work_dir(state: &Path) -> PathBuf {
    let mut name = state.file_name().unwrap_or_default().to_os_string();
    name.push(".batches");
    state.with_file_name(name)
}
