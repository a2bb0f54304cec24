//! The rows the store reads and writes: the vocabulary shared by the
//! scheduler (which produces them) and the report (which reads them).

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::Row;
use serde::Serialize;

/// A run's id in the state file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct RunId(pub i64);

/// A stored state's text that this keyfan does not know: written by a
/// newer keyfan, or edited by hand. Never read as some default.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("table {table}, column {column} holds `{value}`, which this keyfan does not know")]
pub struct UnknownValue {
    /// The table.
    pub table: &'static str,
    /// The column.
    pub column: &'static str,
    /// The text found.
    pub value: String,
}

/// Gives a state enum its stored text: `as_str`, a `parse` that refuses
/// unknown text, `Display`, `Serialize` as the text, and SQLite conversions
/// (reading an unknown text fails with [`UnknownValue`]).
macro_rules! stored_as_text {
    ($ty:ident in $table:literal . $column:literal { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            /// The state as stored and shown.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $text,)+
                }
            }

            /// The state of its stored text; an unknown text is an error.
            pub fn parse(text: &str) -> Result<$ty, UnknownValue> {
                match text {
                    $($text => Ok($ty::$variant),)+
                    _ => Err(UnknownValue {
                        table: $table,
                        column: $column,
                        value: text.to_owned(),
                    }),
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl ToSql for $ty {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }

        impl FromSql for $ty {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<$ty> {
                $ty::parse(value.as_str()?).map_err(|e| FromSqlError::Other(Box::new(e)))
            }
        }
    };
}

pub(super) use stored_as_text;

/// How an item ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ItemStatus {
    /// The API answered with output.
    Ok,
    /// It failed for good (invalid request, retries used up, no key left).
    Failed,
    /// The API refused the prompt or its output on safety grounds.
    Blocked,
    /// Its job line was invalid and `--skip-invalid` skipped it.
    Skipped,
    /// Every account's daily quota was spent: left for a later run.
    Deferred,
    /// In a provider's batch (`run --batch`): collected by a later run.
    Submitted,
}

stored_as_text!(ItemStatus in "items"."status" {
    Ok => "ok",
    Failed => "failed",
    Blocked => "blocked",
    Skipped => "skipped",
    Deferred => "deferred",
    Submitted => "submitted",
});

/// Where a run stands, as `keyfan runs` and the report show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunStatus {
    /// An invocation is under way (or died without finishing it).
    Running,
    /// Every item is finished.
    Done,
    /// Ctrl-C or SIGTERM stopped it.
    Interrupted,
    /// Its results output was closed (a broken pipe): it stopped sending,
    /// and the outcomes not written are in the state file.
    OutputClosed,
    /// `--max-cost` stopped it.
    BudgetReached,
    /// keyfan itself failed (a worker's panic, no endpoint reachable).
    Failed,
    /// Every key for some model was refused: dispatch stopped, the rest of
    /// the items stay pending.
    KeysRefused,
    /// `--sample` sent its items: the rest stay pending for the next run.
    Sampled,
    /// `--batch` left items in the providers' batches: a later run
    /// collects them.
    Batched,
}

stored_as_text!(RunStatus in "runs"."status" {
    Running => "running",
    Done => "done",
    Interrupted => "interrupted",
    OutputClosed => "output closed",
    BudgetReached => "stopped at --max-cost",
    Failed => "failed",
    KeysRefused => "keys refused",
    Sampled => "sampled",
    Batched => "waiting for batches",
});

/// A key's last known state, kept across runs for `keys status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyState {
    /// It was answered.
    Ok,
    /// The API refused it (invalid, revoked, no access).
    Disabled,
}

stored_as_text!(KeyState in "keys"."state" {
    Ok => "ok",
    Disabled => "disabled",
});

/// How one attempt (one HTTP request) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttemptClass {
    /// Output received.
    Ok,
    /// 429.
    RateLimited,
    /// The key was refused.
    KeyInvalid,
    /// 5xx, timeout, transport failure, empty 200.
    Transient,
    /// The request was refused as invalid.
    ItemInvalid,
    /// Safety block.
    Blocked,
    /// Answered, but the answer is not JSON that fits the item's
    /// `response_schema`.
    SchemaMismatch,
}

stored_as_text!(AttemptClass in "attempts"."class" {
    Ok => "ok",
    RateLimited => "rate_limited",
    KeyInvalid => "key_invalid",
    Transient => "transient",
    ItemInvalid => "item_invalid",
    Blocked => "blocked",
    SchemaMismatch => "schema_mismatch",
});

/// One attempt: one request sent with one key.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttemptRow {
    /// The item's id.
    pub item_id: String,
    /// 1-based attempt number within the item.
    pub attempt: u32,
    /// The key's fingerprint (never the key).
    pub key: String,
    /// The key's account.
    pub account: String,
    /// The model asked for.
    pub model: String,
    /// How it ended.
    pub class: AttemptClass,
    /// HTTP status, if a response came.
    pub http_status: Option<u16>,
    /// Wall time of the request.
    pub latency_ms: u64,
    /// Input tokens billed.
    pub input_tokens: u64,
    /// Output tokens billed (thinking included).
    pub output_tokens: u64,
    /// Cost of the attempt; `None` when it went to a model whose price is
    /// unknown (never 0).
    pub cost_usd: Option<f64>,
    /// The API's message, when it failed.
    pub error: Option<String>,
    /// When it finished (RFC 3339 UTC).
    pub at: String,
    /// The Pacific quota day it counts against (`YYYY-MM-DD`).
    pub day: String,
}

impl AttemptRow {
    pub(super) fn from_row(row: &Row<'_>) -> rusqlite::Result<AttemptRow> {
        Ok(AttemptRow {
            item_id: row.get(0)?,
            attempt: small_count(row, 1)?,
            key: row.get(2)?,
            account: row.get(3)?,
            model: row.get(4)?,
            class: row.get(5)?,
            http_status: match row.get_ref(6)? {
                ValueRef::Integer(n) => u16::try_from(n).ok(),
                _ => None,
            },
            latency_ms: count(row, 7)?,
            input_tokens: count(row, 8)?,
            output_tokens: count(row, 9)?,
            cost_usd: known_amount(row, 10, 14)?,
            error: row.get(11)?,
            at: row.get(12)?,
            day: row.get(13)?,
        })
    }
}

/// What the report reads of one attempt, borrowed from its row.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptUsage<'a> {
    /// The key's fingerprint (never the key).
    pub key: &'a str,
    /// The key's account.
    pub account: &'a str,
    /// The model asked for.
    pub model: &'a str,
    /// How it ended.
    pub class: AttemptClass,
    /// Wall time of the request.
    pub latency_ms: u64,
    /// Input tokens billed.
    pub input_tokens: u64,
    /// Output tokens billed (thinking included).
    pub output_tokens: u64,
    /// Cost of the attempt; `None` when it went to a model whose price is
    /// unknown (never 0).
    pub cost_usd: Option<f64>,
    /// When it finished (RFC 3339 UTC).
    pub at: &'a str,
}

impl<'a> AttemptUsage<'a> {
    pub(super) fn from_row(row: &'a Row<'_>) -> rusqlite::Result<AttemptUsage<'a>> {
        let text = |index| -> rusqlite::Result<&'a str> {
            row.get_ref(index)?.as_str().map_err(Into::into)
        };
        Ok(AttemptUsage {
            key: text(0)?,
            account: text(1)?,
            model: text(2)?,
            class: row.get(3)?,
            latency_ms: count(row, 4)?,
            input_tokens: count(row, 5)?,
            output_tokens: count(row, 6)?,
            cost_usd: known_amount(row, 7, 8)?,
            at: text(9)?,
        })
    }
}

/// A finished item, as it goes to the results file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ItemRow {
    /// The item's id from the job.
    pub id: String,
    /// Its line in the job file.
    #[serde(skip)]
    pub line: u64,
    /// How it ended.
    pub status: ItemStatus,
    /// The model's text, for `ok` items.
    pub output: Option<String>,
    /// The model asked for.
    pub model: Option<String>,
    /// Input tokens of the final attempt, cached ones included.
    pub input_tokens: u64,
    /// Output tokens of the final attempt: visible output and thinking,
    /// both billed as output.
    pub output_tokens: u64,
    /// Wall time of the final attempt.
    pub latency_ms: u64,
    /// Requests sent for the item.
    pub attempts: u32,
    /// Fingerprint of the key of the final attempt.
    pub key: Option<String>,
    /// Account of the final attempt.
    #[serde(skip)]
    pub account: Option<String>,
    /// The API's own message (or keyfan's, when no request could be sent).
    pub error: Option<String>,
    /// Of `output_tokens`, the thinking (reasoning) tokens.
    pub thinking_tokens: u64,
    /// Of `input_tokens`, those served from a cache.
    pub cached_tokens: u64,
    /// Why the final answer's output ended, as the API spells it (`STOP`,
    /// `MAX_TOKENS`, `SAFETY`; OpenAI `stop`, `length`), when it said.
    pub finish_reason: Option<String>,
    /// Cost in USD of all the item's attempts, answers that were not `ok`
    /// included (the APIs bill them); `None` when a request went to a model
    /// whose price is unknown.
    #[serde(serialize_with = "serialize_usd")]
    pub cost: Option<f64>,
    /// The answer parsed as JSON, for items with a `response_schema` whose
    /// answer fits it: JSON text, written to results as JSON.
    #[serde(serialize_with = "as_json")]
    pub output_json: Option<String>,
}

/// An amount in USD as results show it: rounded to 12 decimals (a
/// millionth of a micro-dollar), so that float noise in a sum does not show.
pub fn round_usd(usd: f64) -> f64 {
    (usd * 1e12).round() / 1e12
}

fn serialize_usd<S: serde::Serializer>(cost: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    cost.map(round_usd).serialize(s)
}

impl ItemRow {
    /// The row of an item for which nothing was sent (yet): no tokens, no
    /// attempts, no cost; callers fill in what they know.
    pub fn unsent(id: String, line: u64, status: ItemStatus, model: Option<&str>) -> ItemRow {
        ItemRow {
            id,
            line,
            status,
            output: None,
            model: model.map(str::to_owned),
            input_tokens: 0,
            output_tokens: 0,
            latency_ms: 0,
            attempts: 0,
            key: None,
            account: None,
            error: None,
            thinking_tokens: 0,
            cached_tokens: 0,
            finish_reason: None,
            cost: Some(0.0),
            output_json: None,
        }
    }

    pub(super) fn from_row(row: &Row<'_>) -> rusqlite::Result<ItemRow> {
        Ok(ItemRow {
            id: row.get(0)?,
            line: count(row, 1)?,
            status: row.get(2)?,
            model: row.get(3)?,
            output: row.get(4)?,
            input_tokens: count(row, 5)?,
            output_tokens: count(row, 6)?,
            latency_ms: count(row, 7)?,
            attempts: small_count(row, 8)?,
            key: row.get(9)?,
            account: row.get(10)?,
            error: row.get(11)?,
            thinking_tokens: count(row, 13)?,
            cached_tokens: count(row, 14)?,
            finish_reason: row.get(15)?,
            cost: known_amount(row, 12, 16)?,
            output_json: row.get(17)?,
        })
    }
}

/// Writes JSON text as the JSON it holds (as a string if it holds none).
fn as_json<S: serde::Serializer>(text: &Option<String>, to: S) -> Result<S::Ok, S::Error> {
    use serde::Serialize;
    match text
        .as_deref()
        .map(|t| serde_json::from_str::<serde_json::Value>(t).map_err(|_| t))
    {
        None => to.serialize_none(),
        Some(Ok(value)) => value.serialize(to),
        Some(Err(text)) => text.serialize(to),
    }
}

/// A run's record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRow {
    /// Its id.
    pub id: RunId,
    /// The job file as given.
    pub job_path: String,
    /// sha256 of the job file's bytes.
    pub job_hash: String,
    /// Whether it ran against the simulator.
    pub simulated: bool,
    /// Start (RFC 3339 UTC).
    pub started_at: String,
    /// End, once finished.
    pub finished_at: Option<String>,
    /// Where it stands.
    pub status: RunStatus,
    /// Time spent running, over all its invocations up to the last one
    /// that finished.
    pub active_ms: u64,
    /// Start of the invocation under way, while it runs (RFC 3339 UTC).
    pub resumed_at: Option<String>,
}

impl RunRow {
    pub(super) fn from_row(row: &Row<'_>) -> rusqlite::Result<RunRow> {
        Ok(RunRow {
            id: RunId(row.get(0)?),
            job_path: row.get(1)?,
            job_hash: row.get(2)?,
            simulated: row.get(3)?,
            started_at: row.get(4)?,
            finished_at: row.get(5)?,
            status: row.get(6)?,
            active_ms: row.get(7)?,
            resumed_at: row.get(8)?,
        })
    }

    /// The run's elapsed time in seconds: its active time (the sum of its
    /// invocations' durations, the one under way included), not the wall
    /// time since it started. Runs recorded before keyfan kept active time
    /// fall back to their wall time.
    pub fn elapsed_s(&self) -> f64 {
        let parse = |s: &str| {
            chrono::DateTime::parse_from_rfc3339(s)
                .ok()
                .map(|t| t.with_timezone(&chrono::Utc))
        };
        let since = |start: Option<chrono::DateTime<chrono::Utc>>,
                     end: chrono::DateTime<chrono::Utc>| {
            start.map_or(0, |s| (end - s).num_milliseconds().max(0) as u64)
        };
        let now = chrono::Utc::now();
        let ms = match (&self.resumed_at, self.active_ms) {
            (Some(resumed), active) => active.saturating_add(since(parse(resumed), now)),
            (None, 0) => since(
                parse(&self.started_at),
                self.finished_at.as_deref().and_then(parse).unwrap_or(now),
            ),
            (None, active) => active,
        };
        ms as f64 / 1000.0
    }
}

/// One (account, model, day) of the quota ledger.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LedgerRow {
    /// The account.
    pub account: String,
    /// The model.
    pub model: String,
    /// The Pacific day.
    pub day: String,
    /// Requests counted against the quota.
    pub requests: u64,
    /// Of which answered with output.
    pub ok: u64,
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cost; `None` when some of the requests went to a model whose price
    /// is unknown (never 0).
    pub cost_usd: Option<f64>,
}

impl LedgerRow {
    pub(super) fn from_row(row: &Row<'_>) -> rusqlite::Result<LedgerRow> {
        Ok(LedgerRow {
            account: row.get(0)?,
            model: row.get(1)?,
            day: row.get(2)?,
            requests: count(row, 3)?,
            ok: count(row, 4)?,
            input_tokens: count(row, 5)?,
            output_tokens: count(row, 6)?,
            cost_usd: match count(row, 8)? {
                0 => Some(amount(row, 7)?),
                _ => None,
            },
        })
    }
}

/// One model's estimate, as stored for a run before it sent anything.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EstimateRow {
    /// The model.
    pub model: String,
    /// Items of the job for it.
    pub items: u64,
    /// Estimated input tokens.
    pub input_tokens: u64,
    /// Output tokens with the expected output per item.
    pub output_tokens_expected: u64,
    /// Output tokens with every item's cap used up.
    pub output_tokens_worst: u64,
    /// Cost in USD with the expected output; `None` when the price was
    /// unknown.
    pub cost_expected_usd: Option<f64>,
    /// Cost in USD with every item's cap used up; `None` when the price
    /// was unknown.
    pub cost_worst_usd: Option<f64>,
}

impl EstimateRow {
    pub(super) fn from_row(row: &Row<'_>) -> rusqlite::Result<EstimateRow> {
        let cost = |index| -> rusqlite::Result<Option<f64>> {
            Ok(match row.get_ref(index)? {
                ValueRef::Null => None,
                _ => Some(amount(row, index)?),
            })
        };
        Ok(EstimateRow {
            model: row.get(0)?,
            items: count(row, 1)?,
            input_tokens: count(row, 2)?,
            output_tokens_expected: count(row, 3)?,
            output_tokens_worst: count(row, 4)?,
            cost_expected_usd: cost(5)?,
            cost_worst_usd: cost(6)?,
        })
    }
}

/// The last known state of a key, kept across runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyRow {
    /// The key's fingerprint.
    pub key: String,
    /// Its account.
    pub account: String,
    /// Whether the API refused it last time.
    pub state: KeyState,
    /// The API's reason, for a disabled key.
    pub reason: Option<String>,
    /// When this was last seen.
    pub updated_at: String,
}

impl KeyRow {
    pub(super) fn from_row(row: &Row<'_>) -> rusqlite::Result<KeyRow> {
        Ok(KeyRow {
            key: row.get(0)?,
            account: row.get(1)?,
            state: row.get(2)?,
            reason: row.get(3)?,
            updated_at: row.get(4)?,
        })
    }
}

/// What one transaction commits.
#[derive(Debug, Default)]
pub struct Batch {
    /// Reserved requests the server did not count, given back.
    pub releases: Vec<super::Reservation>,
    /// Requests about to be sent, and how many of each: counted against the
    /// day as far as its limit allows.
    pub reservations: Vec<(super::Reservation, u64)>,
    /// Requests answered or failed (each settles an earlier reservation).
    pub attempts: Vec<AttemptRow>,
    /// Items finished.
    pub items: Vec<ItemRow>,
    /// Uploads that became usable, or are gone.
    pub uploads: Vec<super::UploadChange>,
    /// What the run did with uploads, for the report.
    pub upload_events: Vec<super::UploadEvent>,
}

// Counts and amounts are read defensively: a state file written by an older
// keyfan (whose ledger sums could overflow into REAL), or edited by hand, must
// not make `run`, `report` or `keys status` fail. What cannot be a count
// reads as the nearest one.

/// A non-negative integer column as a `u64`: negatives read as 0, a REAL is
/// truncated and clamped to `0..=i64::MAX`, and NULL, text or a blob as 0.
fn count(row: &Row<'_>, index: usize) -> rusqlite::Result<u64> {
    clamped(row, index, i64::MAX).map(|n| n.unsigned_abs())
}

/// [`count`] for a column read as a `u32`, clamped to `u32::MAX`.
fn small_count(row: &Row<'_>, index: usize) -> rusqlite::Result<u32> {
    clamped(row, index, i64::from(u32::MAX)).map(|n| u32::try_from(n).unwrap_or(u32::MAX))
}

fn clamped(row: &Row<'_>, index: usize, max: i64) -> rusqlite::Result<i64> {
    Ok(match row.get_ref(index)? {
        ValueRef::Integer(n) => n.clamp(0, max),
        // `as` saturates, and reads NaN as 0.
        ValueRef::Real(x) => (x as i64).clamp(0, max),
        ValueRef::Null | ValueRef::Text(_) | ValueRef::Blob(_) => 0,
    })
}

/// A money column: a number reads as itself, NULL, text or a blob as 0.
fn amount(row: &Row<'_>, index: usize) -> rusqlite::Result<f64> {
    Ok(match row.get_ref(index)? {
        ValueRef::Integer(n) => n as f64,
        ValueRef::Real(x) => x,
        ValueRef::Null | ValueRef::Text(_) | ValueRef::Blob(_) => 0.0,
    })
}

/// The amount in column `index`, or `None` when the flag in column `known`
/// is 0: the cost was unknown (the price was), and the stored 0 is no cost.
fn known_amount(row: &Row<'_>, index: usize, known: usize) -> rusqlite::Result<Option<f64>> {
    Ok(match row.get_ref(known)? {
        ValueRef::Integer(0) => None,
        _ => Some(amount(row, index)?),
    })
}
