//! The cost and quota report of a run, built from the state file alone, and
//! its Markdown, JSON, CSV and HTML renderings.
//!
//! Owns: the report's figures and their renderings. Never: the network, a
//! run's in-memory state (everything comes from the store), or writing files
//! (its caller does).

mod csv;
mod html;
mod markdown;

use crate::config::AccountConfig;
use crate::store::postgres::{HostRow, RunHosts};
use crate::store::{
    AttemptClass, AttemptUsage, EstimateRow, ItemStatus, LedgerRow, RunId, RunRow, Store,
    StoreError, UploadCount,
};
use crate::types::{Limits, QuotaDay};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// A run's report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Whether the run went to the simulator rather than a real API.
    pub simulated: bool,
    /// The run.
    pub run: RunRow,
    /// Wall time of the run in seconds (to now if it is unfinished).
    pub elapsed_s: f64,
    /// Totals over all items and attempts.
    pub totals: Totals,
    /// One row per key (by fingerprint), in order of first use.
    pub keys: Vec<Usage>,
    /// One row per account.
    pub accounts: Vec<Usage>,
    /// One row per model (the name is the model).
    pub models: Vec<Usage>,
    /// One row per account and model (the name is the model).
    pub account_models: Vec<Usage>,
    /// Per model, the estimate made before the run against what it used
    /// (empty when no estimate was stored: a run of an older keyfan).
    pub estimate_vs_actual: Vec<Versus>,
    /// The limits each account had for each model during the run.
    pub limits: Vec<LimitRow>,
    /// Requests sent per minute by each account, from the attempts'
    /// timestamps.
    pub per_minute: PerMinute,
    /// How many requests took how long.
    pub latency_histogram: Vec<LatencyBucket>,
    /// Today's quota ledger (all runs of the state file).
    pub ledger: Vec<LedgerRow>,
    /// When some items are deferred: when the daily quotas reset (the next
    /// midnight US/Pacific, RFC 3339 UTC), so the next run can be planned.
    pub quota_resets_at: Option<String>,
    /// What the run did with Files API uploads, per account (empty when it
    /// uploaded nothing).
    pub uploads: Vec<UploadCount>,
    /// The provider batches of a `run --batch`, oldest first (empty for a
    /// run that sent online).
    pub batches: Vec<crate::batch::BatchRow>,
    /// On a shared state (`--state postgres://…`): the whole run, host by
    /// host, from the shared queue (left out of the JSON otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hosts: Option<RunHosts>,
}

/// One model's estimate against what the run used.
#[derive(Debug, Clone, Serialize)]
pub struct Versus {
    /// The model.
    pub model: String,
    /// What was estimated before the run (online prices, the config's
    /// expected output per item).
    pub estimated: EstimateRow,
    /// What the run used.
    pub actual: Actual,
}

/// What a run used for one model, beside its estimate.
#[derive(Debug, Clone, Serialize)]
pub struct Actual {
    /// Items finished (whatever their status).
    pub items: u64,
    /// Input tokens billed, over all attempts.
    pub input_tokens: u64,
    /// Output tokens billed (thinking included), over all attempts.
    pub output_tokens: u64,
    /// Cost in USD; `None` when the price is unknown.
    pub cost_usd: Option<f64>,
}

/// The columns of the uploads tables (after the account).
const UPLOAD_COLUMNS: [&str; 5] = [
    "uploads",
    "re-uploads",
    "reused",
    "bytes uploaded",
    "deleted",
];

/// An account's row of the uploads tables.
fn upload_cells(u: &UploadCount) -> [String; 5] {
    [u.uploads, u.reuploads, u.reused, u.bytes, u.deleted].map(|n| n.to_string())
}

/// What `media.on_unavailable` did in the run, one sentence per decision.
fn upload_policy(r: &Report) -> Vec<String> {
    let mut lines = Vec::new();
    for u in &r.uploads {
        if u.repins > 0 {
            lines.push(format!(
                "media.on_unavailable: reupload: {} could not serve; its items went to another account.",
                u.account
            ));
        }
        if u.waits > 0 {
            lines.push(format!(
                "media.on_unavailable: wait: {} item(s) wait for {} (deferred).",
                u.waits, u.account
            ));
        }
    }
    lines
}

/// The columns of the hosts tables (after the host).
const HOST_COLUMNS: [&str; 7] = [
    "ok",
    "failed",
    "other ended",
    "claimed",
    "input tokens",
    "output tokens",
    "cost (USD)",
];

/// A host's cells under [`HOST_COLUMNS`].
fn host_cells(h: &HostRow) -> [String; 7] {
    let ended = |outcome: &str| h.ended.get(outcome).copied().unwrap_or(0);
    let (ok, failed) = (ended("ok"), ended("failed"));
    let n = |n: u64| n.to_string();
    [
        n(ok),
        n(failed),
        n(h.ended_total() - ok - failed),
        n(h.claimed),
        n(h.input_tokens),
        n(h.output_tokens),
        usd(h.cost_usd, 4),
    ]
}

/// The sentence above the hosts tables.
fn hosts_note(hosts: &RunHosts) -> String {
    format!(
        "Run {} in the shared state ({}), every host's part, as it stood when this report was \
         written: {} item(s) ended, {} claimed, {} pending. Tokens and cost are those of the \
         items each host ended.",
        hosts.run,
        hosts.status,
        hosts.totals.ended_total(),
        hosts.totals.claimed,
        hosts.pending
    )
}

/// The rows of the hosts tables: each host, then the whole run.
fn host_rows(hosts: &RunHosts) -> impl Iterator<Item = (&str, [String; 7])> {
    hosts
        .hosts
        .iter()
        .map(|h| (h.host.as_str(), host_cells(h)))
        .chain([("all hosts", host_cells(&hosts.totals))])
}

/// The columns of the batches tables (the batch's display name first).
const BATCH_COLUMNS: [&str; 8] = [
    "account",
    "model",
    "stage",
    "items",
    "duration",
    "cost (USD)",
    "online (USD)",
    "saved (USD)",
];

/// A batch's cells under [`BATCH_COLUMNS`].
fn batch_cells(b: &crate::batch::BatchRow) -> [String; 8] {
    [
        b.account.clone(),
        b.model.clone(),
        b.stage.to_string(),
        b.items.to_string(),
        format!("{:.0} s", b.duration_s()),
        format!("{:.4}", b.cost_usd),
        format!("{:.4}", b.online_usd),
        format!("{:.4}", b.online_usd - b.cost_usd),
    ]
}

impl Report {
    /// The sentence that says what the batch price saved, and the notes on
    /// batches (their errors, their unknown result keys).
    fn batch_notes(&self) -> (String, Vec<String>) {
        let cost: f64 = self.batches.iter().map(|b| b.cost_usd).sum();
        let online: f64 = self.batches.iter().map(|b| b.online_usd).sum();
        let saving = format!(
            "The batch price saved ${:.4}: the results collected cost ${cost:.4}, the same \
             usage online ${online:.4}. Duration: from submission to the end keyfan saw (or to \
             now).",
            online - cost
        );
        let mut notes = Vec::new();
        for b in &self.batches {
            if let Some(error) = &b.error {
                notes.push(format!("{}: {error}", b.display_name));
            }
            if b.unknown_keys > 0 {
                notes.push(format!(
                    "{}: {} result line(s) whose key names no item of the batch: {}",
                    b.display_name,
                    b.unknown_keys,
                    b.unknown_first.as_deref().unwrap_or_default()
                ));
            }
        }
        (saving, notes)
    }
}

/// The columns of the estimate-against-actual tables.
const VERSUS_COLUMNS: [&str; 10] = [
    "items est.",
    "items done",
    "input est.",
    "input actual",
    "output exp.",
    "output worst",
    "output actual",
    "cost exp. (USD)",
    "cost worst (USD)",
    "cost actual (USD)",
];

impl Versus {
    /// The row's cells under [`VERSUS_COLUMNS`].
    fn cells(&self) -> [String; 10] {
        let (e, a) = (&self.estimated, &self.actual);
        [
            e.items.to_string(),
            a.items.to_string(),
            e.input_tokens.to_string(),
            a.input_tokens.to_string(),
            e.output_tokens_expected.to_string(),
            e.output_tokens_worst.to_string(),
            a.output_tokens.to_string(),
            usd(e.cost_expected_usd, 4),
            usd(e.cost_worst_usd, 4),
            usd(a.cost_usd, 4),
        ]
    }
}

/// Each estimated model with what the run used of it.
fn versus(
    estimate: Vec<EstimateRow>,
    models: &[Usage],
    items: &HashMap<String, u64>,
) -> Vec<Versus> {
    estimate
        .into_iter()
        .map(|estimated| {
            let used = models.iter().find(|m| m.name == estimated.model);
            Versus {
                model: estimated.model.clone(),
                actual: Actual {
                    items: items.get(&estimated.model).copied().unwrap_or(0),
                    input_tokens: used.map_or(0, |u| u.input_tokens),
                    output_tokens: used.map_or(0, |u| u.output_tokens),
                    cost_usd: used.map_or(Some(0.0), |u| u.cost_usd),
                },
                estimated,
            }
        })
        .collect()
}

/// An account's configured limits for a model.
#[derive(Debug, Clone, Serialize)]
pub struct LimitRow {
    /// The account.
    pub account: String,
    /// The model.
    pub model: String,
    /// Its limits (`None`: not configured).
    #[serde(flatten)]
    pub limits: Limits,
}

/// Requests per minute of wall time, per account.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PerMinute {
    /// The first minute with a request (RFC 3339 UTC), if any.
    pub start: Option<String>,
    /// Per account, in order of first use: requests in each minute from
    /// `start` on (minutes without any are 0).
    pub accounts: Vec<(String, Vec<u64>)>,
}

/// Requests whose latency was below `below_ms` (and at least the previous
/// bucket's bound); the last bucket has no bound.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyBucket {
    /// The bucket's upper bound, exclusive; `None` for the last.
    pub below_ms: Option<u64>,
    /// Requests in it.
    pub requests: u64,
}

/// Upper bounds of the latency histogram's buckets, in ms.
const LATENCY_BOUNDS: [u64; 9] = [50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000];

/// Item totals of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    /// Items recorded.
    pub items: u64,
    /// Items per status.
    pub status: BTreeMap<&'static str, u64>,
    /// Requests, ok ones, 429s, tokens, cost and latency over all attempts.
    #[serde(flatten)]
    pub usage: Usage,
    /// Of the cost, what attempts that were not their item's final one
    /// cost (billed answers tried again), in USD to 6 decimals; `None`
    /// (JSON `null`) when one of them went to a model whose price is unknown.
    pub wasted_on_retries_usd: Option<f64>,
    /// The first [`SHOWN_SKIPPED_CHILDREN`] items skipped because a parent
    /// (`depends_on`) did not end ok, each naming it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped_children: Vec<SkippedChild>,
}

impl Totals {
    /// The items of each status that has any, in the order of their stored
    /// names: [`Store::status_counts`], without counting them again.
    pub fn status_counts(&self) -> Vec<(ItemStatus, u64)> {
        self.status
            .iter()
            .filter(|&(_, &n)| n > 0)
            .map(|(&name, &n)| {
                let status = ItemStatus::parse(name).expect("the statuses are stored names");
                (status, n)
            })
            .collect()
    }
}

/// How many items skipped for their parents a report lists.
pub const SHOWN_SKIPPED_CHILDREN: u32 = 20;

/// An item skipped because a parent of it did not end ok.
#[derive(Debug, Clone, Serialize)]
pub struct SkippedChild {
    /// Its id.
    pub id: String,
    /// Its line in the job.
    pub line: u64,
    /// Why, naming the parent (``depends on `B`, which failed``).
    pub error: String,
}

/// What one key, one account or the whole run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Usage {
    /// The key's fingerprint or the account's name (empty for totals, and
    /// then left out of the JSON).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The key's account (keys only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Requests sent.
    pub requests: u64,
    /// Requests answered with output.
    pub ok: u64,
    /// Requests that failed (any class but ok).
    pub failed: u64,
    /// Of the failed, 429s.
    pub rate_limited: u64,
    /// Of the failed, refusals of the key itself.
    pub key_invalid: u64,
    /// Of the failed, answers that did not fit their item's
    /// `response_schema` (each asked for again up to `schema_retries`).
    pub schema_failures: u64,
    /// Input tokens billed.
    pub input_tokens: u64,
    /// Output tokens billed (thinking included).
    pub output_tokens: u64,
    /// Cost in USD; `None` (JSON `null`, `?` in tables) when any of the
    /// requests went to a model whose price is unknown: a sum with an
    /// unknown part is unknown, never shown as a smaller known figure.
    pub cost_usd: Option<f64>,
    /// Median request latency.
    pub latency_p50_ms: u64,
    /// 95th-percentile request latency.
    pub latency_p95_ms: u64,
    /// Successful requests per minute of run time.
    pub ok_per_minute: f64,
}

/// The columns of a [`Usage`] row in the Markdown and HTML tables.
const USAGE_COLUMNS: [&str; 10] = [
    "requests",
    "ok",
    "failed",
    "429s",
    "input tokens",
    "output tokens",
    "cost (USD)",
    "p50 ms",
    "p95 ms",
    "ok/min",
];

impl Usage {
    /// The row's cells under [`USAGE_COLUMNS`].
    fn cells(&self) -> [String; 10] {
        [
            self.requests.to_string(),
            self.ok.to_string(),
            self.failed.to_string(),
            self.rate_limited.to_string(),
            self.input_tokens.to_string(),
            self.output_tokens.to_string(),
            usd(self.cost_usd, 4),
            self.latency_p50_ms.to_string(),
            self.latency_p95_ms.to_string(),
            format!("{:.1}", self.ok_per_minute),
        ]
    }
}

impl Report {
    /// Builds the report of `run` from the store, streaming its attempts
    /// (only their latencies are held, for the percentiles).
    pub fn build(store: &Store, run: RunId) -> Result<Report, StoreError> {
        let run_row = store.run(run)?.expect("the run exists in its own store");
        let elapsed_s = run_row.elapsed_s();
        let mut totals = Totals::default();
        for status in [ItemStatus::Ok, ItemStatus::Failed] {
            totals.status.insert(status.as_str(), 0);
        }
        let items = store.item_counts(run, SHOWN_SKIPPED_CHILDREN)?;
        for &(status, n) in &items.statuses {
            totals.items += n;
            *totals.status.entry(status.as_str()).or_default() += n;
        }
        let mut tallies = Tallies::default();
        store.for_each_attempt_usage(run, |a| tallies.push(a))?;
        let now = chrono::Utc::now();
        let today = QuotaDay::of(now);
        let deferred = totals.status.get(ItemStatus::Deferred.as_str()).copied();
        let Finished {
            all,
            latency_histogram,
            keys,
            accounts,
            models,
            account_models,
            per_minute,
        } = tallies.finish(elapsed_s);
        Ok(Report {
            batches: crate::batch::store::all(store, Some(run))?,
            estimate_vs_actual: versus(store.estimate(run)?, &models, &items.models),
            quota_resets_at: deferred.filter(|&n| n > 0).map(|_| {
                today
                    .reset()
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            }),
            simulated: run_row.simulated,
            run: run_row,
            elapsed_s,
            totals: Totals {
                usage: all,
                wasted_on_retries_usd: store.retries_cost(run)?.map(round6),
                skipped_children: items
                    .skipped_children
                    .into_iter()
                    .map(|(id, line, error)| SkippedChild { id, line, error })
                    .collect(),
                ..totals
            },
            keys,
            accounts,
            models,
            account_models,
            limits: store
                .limits(run)?
                .into_iter()
                .map(|(account, model, limits)| LimitRow {
                    account,
                    model,
                    limits,
                })
                .collect(),
            per_minute,
            latency_histogram,
            ledger: store.ledger(today)?,
            uploads: store.upload_counts(run)?,
            hosts: None,
        })
    }

    /// The report as Markdown.
    pub fn to_markdown(&self) -> String {
        markdown::render(self)
    }

    /// The report as CSV: one row per account and model.
    pub fn to_csv(&self) -> String {
        csv::render(self)
    }

    /// The report as one self-contained HTML page (inline SVG charts, no
    /// script, nothing fetched).
    pub fn to_html(&self) -> String {
        html::render(self)
    }

    /// The report as pretty JSON, costs rounded to 6 decimals (a
    /// millionth of a dollar; sums of floats carry noise beyond that).
    pub fn to_json(&self) -> String {
        let mut value = serde_json::to_value(self).expect("the report serialises");
        round_costs(&mut value);
        serde_json::to_string_pretty(&value).expect("the report serialises")
    }
}

/// The Hosts section alone, as Markdown (`keyfan results --report`).
pub fn hosts_markdown(hosts: &RunHosts) -> String {
    let mut md = String::new();
    markdown::section_hosts(&mut md, hosts);
    md
}

/// The Hosts section alone, as pretty JSON, costs rounded as in
/// [`Report::to_json`].
pub fn hosts_json(hosts: &RunHosts) -> String {
    let mut value = serde_json::to_value(hosts).expect("the hosts serialise");
    round_costs(&mut value);
    serde_json::to_string_pretty(&value).expect("the hosts serialise")
}

/// A cost in USD as the tables show it: `decimals` places, or `?` when it
/// is unknown (a model with no known price), never 0.
pub fn usd(cost: Option<f64>, decimals: usize) -> String {
    cost.map_or_else(|| "?".to_owned(), |c| format!("{c:.decimals$}"))
}

/// Running sums of one key, account or run (its latencies are kept by
/// its [`Cell`]s).
#[derive(Debug, Default)]
struct Tally {
    usage: Usage,
    /// The known part of the cost.
    cost: f64,
    /// Whether some request's cost is unknown.
    cost_unknown: bool,
}

impl Tally {
    fn push(&mut self, a: &AttemptUsage<'_>) {
        let u = &mut self.usage;
        u.requests += 1;
        match a.class {
            AttemptClass::Ok => u.ok += 1,
            AttemptClass::RateLimited => u.rate_limited += 1,
            AttemptClass::KeyInvalid => u.key_invalid += 1,
            AttemptClass::SchemaMismatch => u.schema_failures += 1,
            _ => {}
        }
        // Saturating: a state file may hold absurd counts from an older keyfan.
        u.input_tokens = u.input_tokens.saturating_add(a.input_tokens);
        u.output_tokens = u.output_tokens.saturating_add(a.output_tokens);
        match a.cost_usd {
            Some(cost) => self.cost += cost,
            None => self.cost_unknown = true,
        }
    }

    /// The usage, with the percentiles of `latencies` (sorted here).
    fn finish(
        self,
        name: String,
        account: Option<String>,
        latencies: &mut [u64],
        elapsed_s: f64,
    ) -> Usage {
        latencies.sort_unstable();
        let u = self.usage;
        Usage {
            name,
            account,
            failed: u.requests - u.ok,
            cost_usd: (!self.cost_unknown).then_some(self.cost),
            latency_p50_ms: percentile(latencies, 0.50),
            latency_p95_ms: percentile(latencies, 0.95),
            ok_per_minute: if elapsed_s > 0.0 {
                u.ok as f64 * 60.0 / elapsed_s
            } else {
                0.0
            },
            ..u
        }
    }
}

/// Tallies by name, in order of first appearance.
#[derive(Debug, Default)]
struct Groups {
    index: HashMap<String, usize>,
    tallies: Vec<(String, Option<String>, Tally)>,
}

impl Groups {
    /// The index of the tally of `key`, shown as `name` (of `account`).
    fn get(&mut self, key: &str, name: &str, account: Option<&str>) -> usize {
        if let Some(&at) = self.index.get(key) {
            return at;
        }
        self.tallies.push((
            name.to_owned(),
            account.map(str::to_owned),
            Tally::default(),
        ));
        self.index.insert(key.to_owned(), self.tallies.len() - 1);
        self.tallies.len() - 1
    }

    /// The usage of each tally, with the latencies of the cells `group`
    /// puts in it.
    fn finish(self, cells: &[Cell], group: fn(&Cell) -> usize, elapsed_s: f64) -> Vec<Usage> {
        self.tallies
            .into_iter()
            .enumerate()
            .map(|(at, (name, account, tally))| {
                let mut latencies = latencies(cells.iter().filter(|c| group(c) == at));
                tally.finish(name, account, &mut latencies, elapsed_s)
            })
            .collect()
    }
}

/// The attempts of one key, account and model: the finest grouping, of
/// which every table's rows are unions. Holds their latencies (once,
/// rather than once per table) and which row of each table they add to.
#[derive(Debug)]
struct Cell {
    key: usize,
    account: usize,
    model: usize,
    account_model: usize,
    latencies: Vec<u64>,
}

/// The latencies of `cells`, together.
fn latencies<'a>(cells: impl Iterator<Item = &'a Cell>) -> Vec<u64> {
    cells.flat_map(|c| &c.latencies).copied().collect()
}

/// A run's attempts added up, as they stream by.
#[derive(Debug, Default)]
struct Tallies {
    all: Tally,
    keys: Groups,
    accounts: Groups,
    models: Groups,
    account_models: Groups,
    cells: Vec<Cell>,
    /// Per key fingerprint, its cells: (account, model, index in `cells`).
    by_key: HashMap<String, Vec<(String, String, usize)>>,
    minutes: Minutes,
}

/// What [`Tallies::finish`] makes of a run's attempts.
struct Finished {
    all: Usage,
    latency_histogram: Vec<LatencyBucket>,
    keys: Vec<Usage>,
    accounts: Vec<Usage>,
    models: Vec<Usage>,
    account_models: Vec<Usage>,
    per_minute: PerMinute,
}

impl Tallies {
    fn push(&mut self, a: &AttemptUsage<'_>) {
        let at = self.cell(a);
        let cell = &mut self.cells[at];
        cell.latencies.push(a.latency_ms);
        self.all.push(a);
        self.keys.tallies[cell.key].2.push(a);
        self.accounts.tallies[cell.account].2.push(a);
        self.models.tallies[cell.model].2.push(a);
        self.account_models.tallies[cell.account_model].2.push(a);
        self.minutes.push(a.at, cell.account);
    }

    /// The index of the cell of `a`'s key, account and model, made (with
    /// the rows it adds to) on its first attempt.
    fn cell(&mut self, a: &AttemptUsage<'_>) -> usize {
        let found = self.by_key.get(a.key).and_then(|cells| {
            cells
                .iter()
                .find(|(account, model, _)| account == a.account && model == a.model)
        });
        if let Some(&(_, _, at)) = found {
            return at;
        }
        self.cells.push(Cell {
            key: self.keys.get(a.key, a.key, Some(a.account)),
            account: self.accounts.get(a.account, a.account, None),
            model: self.models.get(a.model, a.model, None),
            account_model: self.account_models.get(
                &format!("{}\n{}", a.account, a.model),
                a.model,
                Some(a.account),
            ),
            latencies: Vec::new(),
        });
        let at = self.cells.len() - 1;
        self.by_key.entry(a.key.to_owned()).or_default().push((
            a.account.to_owned(),
            a.model.to_owned(),
            at,
        ));
        at
    }

    fn finish(self, elapsed_s: f64) -> Finished {
        let cells = &self.cells;
        let mut all = latencies(cells.iter());
        Finished {
            per_minute: self.minutes.finish(&self.accounts),
            latency_histogram: histogram(&all),
            all: self.all.finish(String::new(), None, &mut all, elapsed_s),
            keys: self.keys.finish(cells, |c| c.key, elapsed_s),
            accounts: self.accounts.finish(cells, |c| c.account, elapsed_s),
            models: self.models.finish(cells, |c| c.model, elapsed_s),
            account_models: self
                .account_models
                .finish(cells, |c| c.account_model, elapsed_s),
        }
    }
}

/// Requests per account per minute (Unix minutes), as they stream by.
#[derive(Debug, Default)]
struct Minutes {
    first: Option<i64>,
    last: i64,
    /// Per account (by its index in the accounts' [`Groups`]), in order of
    /// first use: its requests per minute.
    accounts: Vec<(usize, BTreeMap<i64, u64>)>,
    /// Per account's index, its place in `accounts`.
    slots: Vec<Option<usize>>,
    /// The last time read: its text up to the seconds, and its minute.
    last_read: Option<(String, i64)>,
}

impl Minutes {
    /// Counts a request of `account` (an index in the accounts' groups)
    /// that finished `at`; one whose time does not read is left out.
    fn push(&mut self, at: &str, account: usize) {
        let Some(minute) = self.minute(at) else {
            return;
        };
        self.first = Some(self.first.map_or(minute, |f| f.min(minute)));
        self.last = self.last.max(minute);
        if self.slots.len() <= account {
            self.slots.resize(account + 1, None);
        }
        let slot = *self.slots[account].get_or_insert_with(|| {
            self.accounts.push((account, BTreeMap::new()));
            self.accounts.len() - 1
        });
        *self.accounts[slot].1.entry(minute).or_default() += 1;
    }

    /// The Unix minute of an RFC 3339 time. Parsed once per minute: a
    /// time as the store writes it (`2026-11-29T10:05:37.684Z`) whose text
    /// up to the seconds is the last one parsed is in its minute.
    fn minute(&mut self, at: &str) -> Option<i64> {
        let (head, seconds) = at.split_at_checked(17)?;
        let stored = seconds.len() == 7
            && seconds.ends_with('Z')
            && seconds.as_bytes()[2] == b'.'
            && matches!(seconds.as_bytes()[0], b'0'..=b'5')
            && seconds.as_bytes()[1].is_ascii_digit()
            && seconds.as_bytes()[3..6].iter().all(u8::is_ascii_digit);
        match &self.last_read {
            Some((last, minute)) if stored && last == head => Some(*minute),
            _ => {
                let minute = chrono::DateTime::parse_from_rfc3339(at)
                    .ok()?
                    .timestamp()
                    .div_euclid(60);
                if stored {
                    self.last_read = Some((head.to_owned(), minute));
                }
                Some(minute)
            }
        }
    }

    fn finish(self, accounts: &Groups) -> PerMinute {
        let Some(first) = self.first else {
            return PerMinute::default();
        };
        let span = (self.last - first + 1) as usize;
        PerMinute {
            start: chrono::DateTime::from_timestamp(first * 60, 0)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            accounts: self
                .accounts
                .into_iter()
                .map(|(account, counts)| {
                    let mut series = vec![0; span];
                    for (minute, n) in counts {
                        series[(minute - first) as usize] = n;
                    }
                    (accounts.tallies[account].0.clone(), series)
                })
                .collect(),
        }
    }
}

/// The latency histogram of `latencies` (ms).
fn histogram(latencies: &[u64]) -> Vec<LatencyBucket> {
    let mut buckets: Vec<LatencyBucket> = LATENCY_BOUNDS
        .iter()
        .map(|&b| Some(b))
        .chain([None])
        .map(|below_ms| LatencyBucket {
            below_ms,
            requests: 0,
        })
        .collect();
    for &ms in latencies {
        let at = LATENCY_BOUNDS
            .iter()
            .position(|&b| ms < b)
            .unwrap_or(LATENCY_BOUNDS.len());
        buckets[at].requests += 1;
    }
    buckets
}

/// Rounds every cost (a field named `cost_usd` or `cost_*_usd`) in `value`
/// to 6 decimals (an unknown one stays `null`).
fn round_costs(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            for (name, field) in map.iter_mut() {
                let cost =
                    name == "cost_usd" || name.starts_with("cost_") && name.ends_with("_usd");
                match field.as_f64() {
                    Some(usd) if cost => {
                        *field = Value::from(round6(usd));
                    }
                    _ => round_costs(field),
                }
            }
        }
        Value::Array(values) => values.iter_mut().for_each(round_costs),
        _ => {}
    }
}

/// Nearest-rank percentile of sorted values (0 when there are none).
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// An account's use of a model today, against its configured day limit
/// (`keys status`).
#[derive(Debug, Serialize)]
pub struct ModelUsage {
    /// The account.
    pub account: String,
    /// The model.
    pub model: String,
    /// Requests the ledger counts today.
    pub requests: u64,
    /// The configured requests-per-day limit, if any.
    pub rpd: Option<u32>,
    /// Input tokens today.
    pub input_tokens: u64,
    /// `None` (`null`, `?`) when some request went to a model whose price
    /// is unknown.
    pub cost_usd: Option<f64>,
}

/// Today's use per account and model: every row of the day's `ledger`,
/// then every configured limit of `accounts` nothing used today, sorted.
pub fn quota_usage(ledger: &[LedgerRow], accounts: &[AccountConfig]) -> Vec<ModelUsage> {
    // The ledger's rows, then the configured limits nothing used today.
    let mut pairs: Vec<(&str, &str)> = ledger
        .iter()
        .map(|l| (l.account.as_str(), l.model.as_str()))
        .collect();
    for account in accounts {
        for model in account.limits.keys() {
            if !pairs.contains(&(account.name.as_str(), model.as_str())) {
                pairs.push((&account.name, model));
            }
        }
    }
    pairs.sort_unstable();
    pairs
        .into_iter()
        .map(|(account, model)| {
            let used = ledger
                .iter()
                .find(|l| l.account == account && l.model == model);
            let limits = accounts
                .iter()
                .find(|a| a.name == account)
                .and_then(|a| a.limits.get(model));
            ModelUsage {
                account: account.to_owned(),
                model: model.to_owned(),
                requests: used.map_or(0, |l| l.requests),
                rpd: limits.and_then(|l| l.rpd),
                input_tokens: used.map_or(0, |l| l.input_tokens),
                cost_usd: used.map_or(Some(0.0), |l| l.cost_usd),
            }
        })
        .collect()
}

/// An amount in USD as the JSON report gives it: to 6 decimals.
fn round6(usd: f64) -> f64 {
    (usd * 1e6).round() / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_costs_have_six_decimals_and_totals_no_name() {
        let mut value = serde_json::json!({
            "totals": {"cost_usd": 0.1 + 0.2, "requests": 3},
            "keys": [{"name": "#1a2b3c4d", "cost_usd": 0.000_000_4}],
            "ledger": [{"cost_usd": 1.234_567_5}],
        });
        round_costs(&mut value);
        assert_eq!(
            value.to_string(),
            r##"{"keys":[{"cost_usd":0.0,"name":"#1a2b3c4d"}],"ledger":[{"cost_usd":1.234568}],"totals":{"cost_usd":0.3,"requests":3}}"##
        );
        let totals = serde_json::to_value(Totals::default()).unwrap();
        assert!(totals.get("name").is_none(), "{totals}");
    }

    /// An attempt of `item` (its `n`th) with key `key` of `account`, to
    /// `model`, that took `latency_ms` and finished `at`.
    #[allow(clippy::too_many_arguments)]
    fn attempt(
        item: &str,
        n: u32,
        (key, account, model): (&str, &str, &str),
        class: AttemptClass,
        latency_ms: u64,
        cost_usd: f64,
        at: &str,
    ) -> crate::store::AttemptRow {
        crate::store::AttemptRow {
            item_id: item.to_owned(),
            attempt: n,
            key: key.to_owned(),
            account: account.to_owned(),
            model: model.to_owned(),
            class,
            http_status: Some(200),
            latency_ms,
            input_tokens: 1,
            output_tokens: 2,
            cost_usd: Some(cost_usd),
            error: None,
            at: at.to_owned(),
            day: "2026-11-21".to_owned(),
        }
    }

    /// Item `id`, ended `status` with `model` after `attempts` requests.
    fn item(
        id: &str,
        line: u64,
        status: ItemStatus,
        model: &str,
        attempts: u32,
    ) -> crate::store::ItemRow {
        crate::store::ItemRow {
            attempts,
            ..crate::store::ItemRow::unsent(id.to_owned(), line, status, Some(model))
        }
    }

    /// A row's name, account, requests, ok, 429s, p50 and p95.
    type Figures<'a> = (&'a str, Option<&'a str>, u64, u64, u64, u64, u64);

    /// Each row's [`Figures`].
    fn figures(rows: &[Usage]) -> Vec<Figures<'_>> {
        rows.iter()
            .map(|u| {
                (
                    u.name.as_str(),
                    u.account.as_deref(),
                    u.requests,
                    u.ok,
                    u.rate_limited,
                    u.latency_p50_ms,
                    u.latency_p95_ms,
                )
            })
            .collect()
    }

    #[test]
    fn every_table_adds_up_its_own_attempts_of_the_run_in_order_of_first_use() {
        use crate::store::Batch;
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("state.db")).unwrap();
        let (run, other) = (
            store.create_run("a.jsonl", "a", false).unwrap(),
            store.create_run("b.jsonl", "b", false).unwrap(),
        );
        let (k1, k2, k3) = (("#k1", "p", "m1"), ("#k2", "q", "m1"), ("#k3", "q", "m2"));
        let k1_m2 = ("#k1", "p", "m2");
        let (ok, limited) = (AttemptClass::Ok, AttemptClass::RateLimited);
        let first = Batch {
            attempts: vec![
                attempt("a", 1, k1, ok, 10, 0.001, "2026-11-21T10:00:05.000Z"),
                attempt("b", 2, k2, ok, 30, 0.001, "2026-11-21T10:00:59.999Z"),
                attempt("c", 1, k1_m2, limited, 20, 0.0, "2026-11-21T10:01:00.000Z"),
            ],
            items: vec![
                item("a", 1, ItemStatus::Ok, "m1", 1),
                item("c", 3, ItemStatus::Failed, "m2", 1),
            ],
            ..Batch::default()
        };
        // Another run's rows between this run's: none of them counts.
        let between = Batch {
            attempts: vec![
                attempt("b", 1, ("#k9", "r", "m9"), ok, 9_000, 100.0, "bad"),
                attempt("b", 2, ("#k9", "r", "m9"), ok, 9_000, 1.0, "bad"),
            ],
            items: vec![item("b", 1, ItemStatus::Ok, "m9", 2)],
            ..Batch::default()
        };
        let last = Batch {
            attempts: vec![
                attempt("d", 1, k3, ok, 40, 0.001, "2026-11-21T11:02:00.000+01:00"),
                attempt("b", 1, k2, AttemptClass::Transient, 50, 0.25, "no time"),
                attempt("e", 1, k1, ok, 60, 0.001, "2026-11-21T10:00:30.500Z"),
            ],
            items: vec![
                item("b", 2, ItemStatus::Ok, "m1", 2),
                item("d", 4, ItemStatus::Ok, "m2", 1),
                item("e", 5, ItemStatus::Ok, "m1", 1),
            ],
            ..Batch::default()
        };
        store.commit(run, &first).unwrap();
        store.commit(other, &between).unwrap();
        store.commit(run, &last).unwrap();

        let report = Report::build(&store, run).unwrap();
        assert_eq!(
            figures(&report.keys),
            [
                ("#k1", Some("p"), 3, 2, 1, 20, 60),
                ("#k2", Some("q"), 2, 1, 0, 30, 50),
                ("#k3", Some("q"), 1, 1, 0, 40, 40),
            ]
        );
        assert_eq!(
            figures(&report.accounts),
            [("p", None, 3, 2, 1, 20, 60), ("q", None, 3, 2, 0, 40, 50)]
        );
        assert_eq!(
            figures(&report.models),
            [("m1", None, 4, 3, 0, 30, 60), ("m2", None, 2, 1, 1, 20, 40)]
        );
        assert_eq!(
            figures(&report.account_models),
            [
                ("m1", Some("p"), 2, 2, 0, 10, 60),
                ("m1", Some("q"), 2, 1, 0, 30, 50),
                ("m2", Some("p"), 1, 0, 1, 20, 20),
                ("m2", Some("q"), 1, 1, 0, 40, 40),
            ]
        );
        let totals = &report.totals;
        assert_eq!(
            figures(std::slice::from_ref(&totals.usage)),
            [("", None, 6, 4, 1, 30, 60)]
        );
        assert_eq!(totals.items, 5);
        assert_eq!((totals.status["ok"], totals.status["failed"]), (4, 1));
        assert_eq!(totals.status_counts(), store.status_counts(run).unwrap());
        assert_eq!(totals.wasted_on_retries_usd, Some(0.25));
        let counts = store.item_counts(run, 0).unwrap().models;
        assert_eq!((counts["m1"], counts["m2"], counts.len()), (3, 2, 2));
        let buckets: Vec<u64> = report
            .latency_histogram
            .iter()
            .map(|b| b.requests)
            .collect();
        assert_eq!(buckets, [4, 2, 0, 0, 0, 0, 0, 0, 0, 0]);
        // The time that does not read is left out; the one with an offset
        // is in its UTC minute.
        let per_minute = &report.per_minute;
        assert_eq!(per_minute.start.as_deref(), Some("2026-11-21T10:00:00Z"));
        assert_eq!(
            per_minute.accounts,
            [
                ("p".to_owned(), vec![2, 1, 0]),
                ("q".to_owned(), vec![1, 0, 1])
            ]
        );
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 50);
        assert_eq!(percentile(&v, 0.95), 95);
        assert_eq!(percentile(&[7], 0.95), 7);
        assert_eq!(percentile(&[], 0.5), 0);
    }
}
