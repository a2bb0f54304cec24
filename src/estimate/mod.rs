//! `keyfan estimate`: what a job will cost and how long its quotas make it
//! take, worked out from the job file, the config and today's ledger. It
//! sends nothing.
//!
//! Owns: the input-token heuristic ([`estimate_tokens`]), the per-item
//! worst case ([`ItemCost`]) that `max_cost_per_item` checks, and the
//! estimate's figures. Never: the network, or writing the state file.
//!
//! The job is streamed once (a 1,000,000-item job is never held in
//! memory): per model, items, input tokens, output tokens (expected and
//! worst case) and costs are summed item by item, so a prompt above a
//! model's long-context threshold is priced at its own tier.

mod count;
mod media;
mod mp4;
mod tokens;
mod wall;

pub use count::{count_tokens, CountError, Counts, MediaCounted};
pub use media::{media_tokens, MediaTokens};
pub use tokens::{estimate_tokens, item_tokens, prompt_tokens};
pub use wall::{thousands, WallTime};

use crate::config::Config;
use crate::job::{Item, ItemError, JobError, JobReader};
use crate::price::{Price, PriceEntry, PriceTable};
use crate::provider::Usage;
use crate::store::{EstimateRow, LedgerRow};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The output cap assumed (and sent under `--max-cost` or
/// `max_cost_per_item`) for an item that sets no `max_output_tokens`.
pub const DEFAULT_OUTPUT_CAP: u32 = 8192;

/// Output tokens an item is expected to produce when neither
/// `--expect-output` nor the config's `expected_output_tokens` says.
pub const DEFAULT_EXPECTED_OUTPUT: u32 = 256;

/// The input heuristic as it is described beside the figures.
pub const HEURISTIC: &str = "estimated from the text: ASCII 4 characters per token, CJK \
     (hanzi, kana, hangul) 1 token per character, other scripts 2 characters per token";

/// The media rule as it is described beside the figures.
pub const MEDIA_RULE: &str = "video: seconds (from the MP4/MOV header, cut to \
     start_offset/end_offset) × fps (default 1) × tokens per frame (Gemini 2.x: 258, 66 at \
     low resolution; Gemini 3: 70, 280 at high) + 32 tokens per second of sound; audio: 32 \
     tokens per second; images: 258 per 768 px tile (one tile up to 384 px); PDF: 258 per page";

/// How many notes on guessed media figures an estimate keeps.
pub const MAX_NOTES: usize = 50;

/// The expected output per item, and where that figure comes from.
#[derive(Debug, Clone, Serialize)]
pub struct Expected {
    /// Output tokens per item (an item's own cap lowers it for that item).
    pub tokens_per_item: u32,
    /// `--expect-output`, `config expected_output_tokens` or `default`.
    pub from: String,
}

impl Expected {
    /// The flag's value over the config's over the default.
    pub fn pick(flag: Option<u32>, config: &Config) -> Expected {
        match (flag, config.expected_output_tokens) {
            (Some(n), _) => Expected {
                tokens_per_item: n,
                from: "--expect-output".to_owned(),
            },
            (None, Some(n)) => Expected {
                tokens_per_item: n,
                from: "config expected_output_tokens".to_owned(),
            },
            (None, None) => Expected {
                tokens_per_item: DEFAULT_EXPECTED_OUTPUT,
                from: "default".to_owned(),
            },
        }
    }
}

/// One item's tokens and its worst-case cost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ItemCost {
    /// Estimated input tokens.
    pub input_tokens: u64,
    /// Its output cap: `max_output_tokens`, else [`DEFAULT_OUTPUT_CAP`].
    pub worst_output: u64,
    /// The cost of input plus the whole cap, online, if the price is known.
    pub worst_usd: Option<f64>,
}

impl ItemCost {
    /// The figures of `item` for `model` at `prices`.
    pub fn of(item: &Item, model: &str, prices: &PriceTable) -> ItemCost {
        ItemCost::noted(item, model, prices).0
    }

    /// The figures of `item` for `model` at `prices`, with the notes on its
    /// media whose tokens had to be guessed ([`MediaTokens::notes`]).
    pub fn noted(item: &Item, model: &str, prices: &PriceTable) -> (ItemCost, Vec<String>) {
        ItemCost::priced(item, model, prices.price(model).as_ref())
    }

    /// [`ItemCost::noted`] with `model`'s price already looked up.
    fn priced(item: &Item, model: &str, price: Option<&Price>) -> (ItemCost, Vec<String>) {
        let media = media_tokens(item, model);
        let input_tokens = tokens::text_tokens(item) + media.tokens;
        let worst_output = u64::from(item.max_output_tokens.unwrap_or(DEFAULT_OUTPUT_CAP));
        let cost = ItemCost {
            input_tokens,
            worst_output,
            worst_usd: price.map(|p| p.cost(&usage(input_tokens, worst_output))),
        };
        (cost, media.notes)
    }
}

fn usage(input_tokens: u64, output_tokens: u64) -> Usage {
    Usage {
        input_tokens,
        output_tokens,
        ..Usage::default()
    }
}

/// Cost in USD, online and batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Costs {
    /// With the expected output, online.
    pub expected_usd: f64,
    /// With the expected output, in batch mode (half price).
    pub expected_batch_usd: f64,
    /// With every item's output cap used up, online.
    pub worst_usd: f64,
    /// With every item's output cap used up, in batch mode.
    pub worst_batch_usd: f64,
}

impl Costs {
    fn add(&mut self, other: &Costs) {
        self.expected_usd += other.expected_usd;
        self.expected_batch_usd += other.expected_batch_usd;
        self.worst_usd += other.worst_usd;
        self.worst_batch_usd += other.worst_batch_usd;
    }
}

/// The sums of some items.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Figures {
    /// Items.
    pub items: u64,
    /// Estimated input tokens.
    pub input_tokens: u64,
    /// Output tokens with the expected output per item.
    pub output_tokens_expected: u64,
    /// Output tokens with every item's cap used up.
    pub output_tokens_worst: u64,
    /// Cost, online and batch.
    pub cost: Costs,
}

/// The estimate of one model's items.
#[derive(Debug, Clone, Serialize)]
pub struct ModelEstimate {
    /// The model.
    pub model: String,
    /// Its sums.
    #[serde(flatten)]
    pub figures: Figures,
    /// The price used, with its source and date.
    pub price: PriceEntry,
    /// The wall time its quotas imply.
    pub wall_time: WallTime,
}

/// A job's estimate.
#[derive(Debug, Clone, Serialize)]
pub struct Estimate {
    /// The job file.
    pub job: String,
    /// The expected output per item.
    pub expected_output: Expected,
    /// The output assumed for items without `max_output_tokens` in the
    /// worst case.
    pub worst_output_default: u32,
    /// How input tokens are estimated.
    pub heuristic: &'static str,
    /// How media tokens are estimated.
    pub media_rule: &'static str,
    /// Items with media.
    pub media_items: u64,
    /// Where a media figure had to be guessed (a duration from the size, an
    /// uncounted YouTube video …): the first [`MAX_NOTES`], each
    /// `line N: \`file\`: what`.
    pub notes: Vec<String>,
    /// All such notes, also those beyond the list.
    pub note_count: u64,
    /// Items whose input tokens the API counted (`--count-tokens`) instead
    /// of the heuristic.
    pub input_counted: u64,
    /// Under `--count-tokens`: the items whose media the API counted, and
    /// the files uploaded (and earlier uploads reused) to count them.
    pub media_counted: Option<MediaCounted>,
    /// Items that depend on others (`depends_on`): their prompts are
    /// estimated with the `{{outputs.…}}` placeholders unfilled, so their
    /// input is larger than estimated by their parents' answers.
    pub with_outputs: u64,
    /// Per model, in order of first use.
    pub models: Vec<ModelEstimate>,
    /// The whole job.
    pub total: Figures,
    /// The longest of the models' wall times, in minutes (models have
    /// quotas of their own and run side by side).
    pub total_minutes: Option<f64>,
}

/// Why a job cannot be estimated.
#[derive(Debug, thiserror::Error)]
pub enum EstimateError {
    /// The job cannot be read.
    #[error(transparent)]
    Job(#[from] JobError),
    /// The job has invalid lines.
    #[error("{count} invalid line(s), the first: {first}")]
    Invalid {
        /// How many.
        count: u64,
        /// The first.
        first: Box<ItemError>,
    },
    /// Models with no known price: the cost cannot be estimated.
    #[error(
        "no price is known for {}: add it under `prices:` in the config \
         (e.g. `prices: {{ {}: {{ input: 0.10, output: 0.40 }} }}`, USD per 1M tokens)",
        .0.iter().map(|(m, line)| format!("model `{m}` (line {line})")).collect::<Vec<_>>().join(", "),
        .0[0].0
    )]
    UnknownPrices(Vec<(String, u64)>),
}

/// The items [`over_cap`] found.
#[derive(Debug, Default)]
pub struct OverCap {
    /// All of them.
    pub count: u64,
    /// The first few, in file order, each naming its line.
    pub first: Vec<ItemError>,
}

/// How many items [`OverCap`] keeps.
const SHOWN_OVER_CAP: usize = 20;

/// The items of the job at `path` whose worst case (estimated input plus
/// their output cap, else [`DEFAULT_OUTPUT_CAP`]) costs more than `cap`
/// USD, or whose model has no known price. Invalid lines are validation's
/// business and are passed over.
pub fn over_cap(path: &Path, config: &Config, cap: f64) -> Result<OverCap, JobError> {
    let mut found = OverCap::default();
    for item in JobReader::open(path)?.flatten() {
        let model = item.model.as_deref().unwrap_or(&config.model);
        let cost = ItemCost::of(&item, model, &config.prices);
        let (field, reason) = match cost.worst_usd {
            Some(worst) if worst <= cap => continue,
            Some(worst) => (
                "max_output_tokens",
                format!(
                    "the worst case ({} input + {} output tokens of {model}) costs ${worst:.6}, \
                     more than max_cost_per_item (${cap})",
                    cost.input_tokens, cost.worst_output
                ),
            ),
            None => (
                "model",
                format!(
                    "no price is known for model `{model}`, so max_cost_per_item cannot be \
                     checked: add it under `prices:` in the config"
                ),
            ),
        };
        found.count += 1;
        if found.first.len() < SHOWN_OVER_CAP {
            found.first.push(ItemError {
                path: path.to_owned(),
                line: item.line,
                field: Some(field.to_owned()),
                reason,
            });
        }
    }
    Ok(found)
}

/// Running sums of one model.
struct Tally {
    model: String,
    first_line: u64,
    price: Option<PriceEntry>,
    figures: Figures,
}

/// How many lines of a job were invalid, and the first.
type Invalid = (u64, Option<ItemError>);

/// What [`tally`] saw of the job's media and dependencies.
#[derive(Debug, Default)]
struct Seen {
    /// Items with media.
    items: u64,
    /// The first notes on media estimated by a rule of thumb.
    notes: Vec<String>,
    note_count: u64,
    /// Items whose prompts wait for other items' answers.
    with_outputs: u64,
}

/// Running sums of a job's valid items, per model in order of first use,
/// and what was seen of their media and dependencies.
struct Tallies<'a> {
    config: &'a Config,
    /// Expected output tokens per item (an item's cap lowers it).
    expected_output: u32,
    /// Input tokens the API counted, by line, if any were.
    counts: Option<&'a Counts>,
    tallies: Vec<Tally>,
    index: BTreeMap<String, usize>,
    seen: Seen,
}

impl<'a> Tallies<'a> {
    fn new(config: &'a Config, expected: &Expected, counts: Option<&'a Counts>) -> Tallies<'a> {
        Tallies {
            config,
            expected_output: expected.tokens_per_item,
            counts,
            tallies: Vec::new(),
            index: BTreeMap::new(),
            seen: Seen::default(),
        }
    }

    /// Adds the figures of one valid item.
    fn add(&mut self, item: &Item) {
        let (config, seen) = (self.config, &mut self.seen);
        seen.with_outputs += u64::from(!item.depends_on.is_empty());
        let model = item.model.as_deref().unwrap_or(&config.model);
        let at = match self.index.get(model) {
            Some(&at) => at,
            None => {
                let price = config.prices.lookup(model).cloned();
                self.tallies.push(Tally {
                    model: model.to_owned(),
                    first_line: item.line,
                    price,
                    figures: Figures::default(),
                });
                self.index.insert(model.to_owned(), self.tallies.len() - 1);
                self.tallies.len() - 1
            }
        };
        let tally = &mut self.tallies[at];
        // The model's price as its tally holds it: not looked up per item.
        let price = tally.price.as_ref().map(|entry| &entry.price);
        let (mut cost, notes) = ItemCost::priced(item, model, price);
        seen.items += u64::from(!item.media.is_empty());
        let counted = self.counts.and_then(|counts| counts.get(&item.line));
        // The API counted the media: nothing of them was guessed.
        let notes = match counted.is_some() && count::counts_media(item) {
            true => Vec::new(),
            false => notes,
        };
        seen.note_count += notes.len() as u64;
        for note in notes {
            if seen.notes.len() < MAX_NOTES {
                seen.notes.push(format!("line {}: {note}", item.line));
            }
        }
        if let Some(&counted) = counted {
            cost.input_tokens = counted;
        }
        let expected_output = u64::from(self.expected_output).min(cost.worst_output);
        let f = &mut tally.figures;
        f.items += 1;
        f.input_tokens += cost.input_tokens;
        f.output_tokens_expected += expected_output;
        f.output_tokens_worst += cost.worst_output;
        if let Some(PriceEntry { price, .. }) = &tally.price {
            let expected = usage(cost.input_tokens, expected_output);
            let worst = usage(cost.input_tokens, cost.worst_output);
            let batch = price.batch();
            f.cost.add(&Costs {
                expected_usd: price.cost(&expected),
                expected_batch_usd: batch.cost(&expected),
                worst_usd: price.cost(&worst),
                worst_batch_usd: batch.cost(&worst),
            });
        }
    }
}

/// Per model, in order of first use, the sums of the job's valid items at
/// `path` under `config` with `expected` output per item; how many lines
/// were invalid, with the first; and how many items depend on others.
fn tally(
    path: &Path,
    config: &Config,
    expected: &Expected,
    counts: &Counts,
) -> Result<(Vec<Tally>, Invalid, Seen), JobError> {
    let mut tallies = Tallies::new(config, expected, Some(counts));
    let mut invalid: Invalid = (0, None);
    for result in JobReader::open(path)? {
        match result {
            Ok(item) => tallies.add(&item),
            Err(error) => {
                invalid.0 += 1;
                invalid.1.get_or_insert(error);
            }
        }
    }
    Ok((tallies.tallies, invalid, tallies.seen))
}

/// What a run stores before it sends anything, so that its report can set
/// the estimate against what it used: per model, the figures of
/// [`estimate`] (online prices) over the job's valid items, with the
/// config's expected output. A model with no known price has no cost
/// (`None`) rather than failing, as a plain run only warns of it. Items
/// are [`Planner::add`]ed as validation reads them, so the job is not read
/// again for it.
pub struct Planner<'a> {
    tallies: Tallies<'a>,
}

impl<'a> Planner<'a> {
    /// A plan of no items yet, under `config`.
    pub fn new(config: &'a Config) -> Planner<'a> {
        Planner {
            tallies: Tallies::new(config, &Expected::pick(None, config), None),
        }
    }

    /// Adds a valid item (as [`JobReader`] yields it).
    pub fn add(&mut self, item: &Item) {
        self.tallies.add(item);
    }

    /// The plan's rows, one per model, in order of first use.
    pub fn rows(self) -> Vec<EstimateRow> {
        self.tallies
            .tallies
            .into_iter()
            .map(|t| {
                let known = t.price.is_some();
                let f = t.figures;
                EstimateRow {
                    model: t.model,
                    items: f.items,
                    input_tokens: f.input_tokens,
                    output_tokens_expected: f.output_tokens_expected,
                    output_tokens_worst: f.output_tokens_worst,
                    cost_expected_usd: known.then_some(f.cost.expected_usd),
                    cost_worst_usd: known.then_some(f.cost.worst_usd),
                }
            })
            .collect()
    }
}

/// Estimates the job at `path` under `config`, with `expected` output per
/// item and `ledger` the state file's rows of today (empty without one).
pub fn estimate(
    path: &Path,
    config: &Config,
    expected: Expected,
    ledger: &[LedgerRow],
    counts: &Counts,
) -> Result<Estimate, EstimateError> {
    let (tallies, invalid, seen) = tally(path, config, &expected, counts)?;
    if let (count, Some(first)) = invalid {
        return Err(EstimateError::Invalid {
            count,
            first: Box::new(first),
        });
    }
    let unknown: Vec<(String, u64)> = tallies
        .iter()
        .filter(|t| t.price.is_none())
        .map(|t| (t.model.clone(), t.first_line))
        .collect();
    if !unknown.is_empty() {
        return Err(EstimateError::UnknownPrices(unknown));
    }
    let mut total = Figures::default();
    let mut models = Vec::with_capacity(tallies.len());
    for tally in tallies {
        let f = &tally.figures;
        total.items += f.items;
        total.input_tokens += f.input_tokens;
        total.output_tokens_expected += f.output_tokens_expected;
        total.output_tokens_worst += f.output_tokens_worst;
        total.cost.add(&f.cost);
        let wall_time = WallTime::of(config, &tally.model, f, ledger);
        let price = tally.price.expect("unknown prices were refused");
        models.push(ModelEstimate {
            model: tally.model,
            figures: tally.figures,
            price,
            wall_time,
        });
    }
    let total_minutes = models
        .iter()
        .filter_map(|m| m.wall_time.minutes)
        .reduce(f64::max);
    Ok(Estimate {
        job: path.display().to_string(),
        expected_output: expected,
        worst_output_default: DEFAULT_OUTPUT_CAP,
        heuristic: HEURISTIC,
        media_rule: MEDIA_RULE,
        media_items: seen.items,
        notes: seen.notes,
        note_count: seen.note_count,
        input_counted: counts.len() as u64,
        media_counted: None,
        with_outputs: seen.with_outputs,
        models,
        total,
        total_minutes,
    })
}

#[cfg(test)]
mod tests;
