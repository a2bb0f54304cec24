//! The model price table: USD per 1M tokens, built in and overridable from
//! the config's `prices:`.
//!
//! Owns: the built-in prices with their sources and dates, the cost of a
//! reply's usage, online and batch. Never: I/O of any kind.
//!
//! Thinking tokens are billed as output ("Output price (including thinking
//! tokens)", <https://ai.google.dev/gemini-api/docs/pricing>); prompts above
//! a model's long-context threshold (200k tokens for Gemini 2.5 Pro) switch
//! the whole request to the higher tier. Batch requests cost half the
//! online price, cached input excepted ("Batch API usage is priced at 50% of
//! the standard interactive API cost", cache hits priced as online:
//! <https://ai.google.dev/gemini-api/docs/batch-mode>).

use crate::provider::{MediaResolution, Usage};
use serde::Serialize;

/// Prices of one model in USD per 1M tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Price {
    /// Uncached input.
    pub input: f64,
    /// Output, thinking included.
    pub output: f64,
    /// Cached input (context cache reads).
    pub cached_input: f64,
    /// Prompt size above which the `long` prices apply, with those prices.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub long: Option<Long>,
}

/// Prices for prompts above a model's long-context threshold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Long {
    /// Prompts of more input tokens than this are billed at these prices.
    pub above_tokens: u64,
    /// Uncached input.
    pub input: f64,
    /// Output, thinking included.
    pub output: f64,
    /// Cached input.
    pub cached_input: f64,
}

/// A model's price with where it comes from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PriceEntry {
    /// The model id, or the family prefix its dated and preview variants
    /// share (`gemini-2.5-flash` prices `gemini-2.5-flash-preview-09-2025`).
    pub model: String,
    /// The online (interactive) price.
    #[serde(flatten)]
    pub price: Price,
    /// Where the figures come from (a URL, or `config` for `prices:`).
    pub source: String,
    /// When the source was read (`YYYY-MM`), or the config's path.
    pub date: String,
}

const GEMINI: &str = "https://ai.google.dev/gemini-api/docs/pricing";
const OPENAI: &str =
    "https://developers.openai.com/api/docs/pricing (via deploybase.ai/articles/openai-pricing)";
const ANTHROPIC: &str = "https://docs.anthropic.com/en/docs/about-claude/pricing";
const ANTHROPIC_NEW: &str =
    "https://platform.claude.com/docs/en/about-claude/pricing (cache hits 0.1x input)";

/// Cache writes (`cache_creation_input_tokens`) cost this many times the
/// uncached input price: Anthropic's 5-minute cache write rate (its pricing
/// page above).
pub const CACHE_WRITE_FACTOR: f64 = 1.25;

/// One built-in row: model, input, output, cached input, the long tier
/// (threshold, input, output, cached input), source, date. Where no cached
/// price is published, cached input is billed at the input price (an
/// overestimate, never an underestimate).
type Row = (
    &'static str,
    f64,
    f64,
    f64,
    Option<(u64, f64, f64, f64)>,
    &'static str,
    &'static str,
);

#[rustfmt::skip]
const BUILT_IN: &[Row] = &[
    // Gemini, paid tier, Standard.
    ("gemini-2.5-pro", 1.25, 10.0, 0.125, Some((200_000, 2.5, 15.0, 0.25)), GEMINI, "2025-10"),
    ("gemini-2.5-flash", 0.30, 2.50, 0.03, None, GEMINI, "2025-10"),
    ("gemini-2.5-flash-lite", 0.10, 0.40, 0.01, None, GEMINI, "2025-10"),
    ("gemini-2.0-flash", 0.10, 0.40, 0.025, None, GEMINI, "2025-10"),
    ("gemini-3.1-pro-preview", 2.0, 12.0, 0.20, Some((200_000, 4.0, 18.0, 0.40)), GEMINI, "2026-03"),
    // OpenAI chat models.
    ("gpt-4o", 2.50, 10.0, 1.25, None, OPENAI, "2026-03"),
    ("gpt-4o-mini", 0.15, 0.60, 0.075, None, OPENAI, "2026-03"),
    ("gpt-4.1", 2.0, 8.0, 2.0, None, OPENAI, "2026-03"),
    ("gpt-4.1-mini", 0.40, 1.60, 0.40, None, OPENAI, "2026-03"),
    ("gpt-4.1-nano", 0.10, 0.40, 0.10, None, OPENAI, "2026-03"),
    ("gpt-5", 1.25, 10.0, 1.25, None, OPENAI, "2026-03"),
    ("gpt-5-mini", 0.25, 2.0, 0.25, None, OPENAI, "2026-03"),
    ("gpt-5-nano", 0.05, 0.40, 0.05, None, OPENAI, "2026-03"),
    ("o3", 2.0, 8.0, 2.0, None, OPENAI, "2026-03"),
    ("o4-mini", 1.10, 4.40, 1.10, None, OPENAI, "2026-03"),
    // Anthropic (served through OpenAI-compatible gateways).
    ("claude-opus-4", 15.0, 75.0, 1.50, None, ANTHROPIC, "2025-08"),
    ("claude-opus-4-1", 15.0, 75.0, 1.50, None, ANTHROPIC, "2025-08"),
    ("claude-sonnet-4", 3.0, 15.0, 0.30, Some((200_000, 6.0, 22.50, 0.60)), ANTHROPIC, "2025-08"),
    ("claude-3-7-sonnet", 3.0, 15.0, 0.30, None, ANTHROPIC, "2025-08"),
    ("claude-3-5-haiku", 0.80, 4.0, 0.08, None, ANTHROPIC, "2025-08"),
    ("claude-3-haiku", 0.25, 1.25, 0.03, None, ANTHROPIC, "2025-08"),
    ("claude-opus-4-5", 5.0, 25.0, 0.50, None, ANTHROPIC_NEW, "2026-03"),
    ("claude-opus-4-6", 5.0, 25.0, 0.50, None, ANTHROPIC_NEW, "2026-03"),
    ("claude-sonnet-4-5", 3.0, 15.0, 0.30, None, ANTHROPIC_NEW, "2026-03"),
    ("claude-haiku-4-5", 1.0, 5.0, 0.10, None, ANTHROPIC_NEW, "2026-03"),
];

/// The prices a run uses: the built-in table with the config's `prices:`
/// over it.
#[derive(Debug, Clone, PartialEq)]
pub struct PriceTable {
    entries: Vec<PriceEntry>,
}

impl Default for PriceTable {
    fn default() -> PriceTable {
        PriceTable::built_in()
    }
}

impl PriceTable {
    /// The built-in table.
    pub fn built_in() -> PriceTable {
        let entries = BUILT_IN
            .iter()
            .map(
                |&(model, input, output, cached_input, long, source, date)| PriceEntry {
                    model: model.to_owned(),
                    price: Price {
                        input,
                        output,
                        cached_input,
                        long: long.map(|(above_tokens, input, output, cached_input)| Long {
                            above_tokens,
                            input,
                            output,
                            cached_input,
                        }),
                    },
                    source: source.to_owned(),
                    date: date.to_owned(),
                },
            )
            .collect();
        PriceTable { entries }
    }

    /// Sets `entry`, replacing the entry of the same model if there is one.
    pub fn set(&mut self, entry: PriceEntry) {
        match self.entries.iter_mut().find(|e| e.model == entry.model) {
            Some(old) => *old = entry,
            None => self.entries.push(entry),
        }
    }

    /// Every entry, built-in ones first.
    pub fn entries(&self) -> &[PriceEntry] {
        &self.entries
    }

    /// The entry pricing `model`: the one named exactly, else the longest
    /// family prefix followed by a dated, numbered or preview suffix
    /// (`-001`, `-20250514`, `-preview-09-2025`, `-latest`, `-exp`). A
    /// leading `models/` is ignored. Other suffixes (`-image`, `.4`) are
    /// other models, whose price is unknown.
    pub fn lookup(&self, model: &str) -> Option<&PriceEntry> {
        let model = model.strip_prefix("models/").unwrap_or(model);
        self.entries
            .iter()
            .filter(|e| variant_of(model, &e.model))
            .max_by_key(|e| e.model.len())
    }

    /// The price of `model`, if known.
    pub fn price(&self, model: &str) -> Option<Price> {
        self.lookup(model).map(|e| e.price)
    }
}

/// Whether `model` is `family` or one of its dated or preview variants.
fn variant_of(model: &str, family: &str) -> bool {
    let Some(rest) = model.strip_prefix(family) else {
        return false;
    };
    let Some(suffix) = rest.strip_prefix('-') else {
        return rest.is_empty();
    };
    suffix.starts_with(|c: char| c.is_ascii_digit())
        || ["preview", "latest", "exp"]
            .iter()
            .any(|tag| suffix.starts_with(tag))
}

impl Price {
    /// The cost in USD of one call's usage, online.
    pub fn cost(&self, usage: &Usage) -> f64 {
        let (input, output, cached) = match self.long {
            Some(long) if usage.input_tokens > long.above_tokens => {
                (long.input, long.output, long.cached_input)
            }
            _ => (self.input, self.output, self.cached_input),
        };
        let uncached = usage
            .input_tokens
            .saturating_sub(usage.cached_tokens)
            .saturating_sub(usage.cache_write_tokens);
        (uncached as f64 * input
            + usage.cached_tokens as f64 * cached
            + usage.cache_write_tokens as f64 * input * CACHE_WRITE_FACTOR
            + usage.output_tokens as f64 * output)
            / 1_000_000.0
    }

    /// The price of the same model in batch mode: half the online price
    /// for input and output; cached input as online.
    pub fn batch(&self) -> Price {
        Price {
            input: self.input / 2.0,
            output: self.output / 2.0,
            cached_input: self.cached_input,
            long: self.long.map(|l| Long {
                input: l.input / 2.0,
                output: l.output / 2.0,
                ..l
            }),
        }
    }
}

/// The tokens Gemini counts for media, by model family and media
/// resolution. Sources:
///
/// - Video, Gemini 2.x and earlier: "videos are sampled at 1 frame per
///   second … If mediaResolution is set to low, frames are tokenized at 66
///   tokens per frame. Otherwise, frames are tokenized at 258 tokens per
///   frame. Audio: 32 tokens per second"
///   (<https://ai.google.dev/gemini-api/docs/video-understanding>).
/// - Video, Gemini 3: 70 tokens per frame by default, at `low` and
///   `medium`; 280 at `high` ("The default resolution for videos is 70
///   tokens per frame", the token counts of
///   <https://ai.google.dev/gemini-api/docs/media-resolution> and of the
///   Gemini 3 video docs of Google Cloud's Agent Platform);
///   audio as above (assumed: no other figure is published).
/// - Images (Gemini 2.0 and later): at most 384 px on both sides, 258
///   tokens; larger ones are cut into 768 × 768 tiles of 258 tokens each
///   (<https://ai.google.dev/gemini-api/docs/tokens>).
/// - PDF pages: no rule is published with the others; keyfan counts each
///   page as one image tile (258 tokens), an approximation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MediaRates {
    /// Tokens per video frame.
    pub frame: u64,
    /// Frames sampled per second when the item sets no `fps`.
    pub fps: f64,
    /// Tokens per second of audio (a video's sound track included).
    pub audio_per_second: u64,
    /// Tokens per image tile, or per small image.
    pub tile: u64,
    /// The side of an image tile, in pixels.
    pub tile_px: u32,
    /// An image at most this many pixels on both sides is one tile.
    pub small_px: u32,
    /// Tokens per PDF page (approximation).
    pub page: u64,
}

/// The [`MediaRates`] of `model` at `resolution` (`None`: the API's
/// default). Gemini 3 models (`gemini-3…`) have their own frame rates;
/// every other model is counted by the Gemini 2.x rules.
pub fn media_rates(model: &str, resolution: Option<MediaResolution>) -> MediaRates {
    let model = model.strip_prefix("models/").unwrap_or(model);
    let gemini_3 = model.starts_with("gemini-3");
    let frame = match (gemini_3, resolution) {
        (true, Some(MediaResolution::High)) => 280,
        (true, _) => 70,
        (false, Some(MediaResolution::Low)) => 66,
        (false, _) => 258,
    };
    MediaRates {
        frame,
        fps: 1.0,
        audio_per_second: 32,
        tile: 258,
        tile_px: 768,
        small_px: 384,
        page: 258,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(input: u64, cached: u64, output: u64) -> Usage {
        Usage {
            input_tokens: input,
            cached_tokens: cached,
            output_tokens: output,
            thinking_tokens: 0,
            cache_write_tokens: 0,
        }
    }

    fn input(model: &str) -> Option<f64> {
        PriceTable::built_in().price(model).map(|p| p.input)
    }

    #[test]
    fn the_longest_family_of_a_variant_wins() {
        assert_eq!(input("gemini-2.5-flash-lite"), Some(0.10));
        assert_eq!(input("gemini-2.5-flash"), Some(0.30));
        assert_eq!(input("models/gemini-2.5-flash"), Some(0.30));
        assert_eq!(input("gemini-2.5-flash-preview-09-2025"), Some(0.30));
        assert_eq!(input("gemini-2.0-flash-001"), Some(0.10));
        assert_eq!(input("gpt-4o-mini-2024-07-18"), Some(0.15));
        assert_eq!(input("claude-sonnet-4-20250514"), Some(3.0));
        assert_eq!(input("claude-opus-4-5-20251101"), Some(5.0));
        // Other models of a family are not priced as it.
        assert_eq!(input("gemini-2.5-flash-image"), None);
        assert_eq!(input("gpt-5.4"), None);
        assert_eq!(input("gpt-unknown"), None);
        assert_eq!(input("llama3"), None);
    }

    #[test]
    fn every_built_in_entry_has_a_source_and_a_date() {
        for e in PriceTable::built_in().entries() {
            assert!(e.source.starts_with("https://"), "{e:?}");
            assert_eq!(e.date.len(), 7, "{e:?}");
            assert!(e.price.cached_input <= e.price.input, "{e:?}");
        }
    }

    #[test]
    fn a_config_price_replaces_or_adds_an_entry() {
        let mut table = PriceTable::built_in();
        let entry = |model: &str, input| PriceEntry {
            model: model.to_owned(),
            price: Price {
                input,
                output: 1.0,
                cached_input: input,
                long: None,
            },
            source: "config".to_owned(),
            date: "config.yaml".to_owned(),
        };
        table.set(entry("gemini-2.5-flash", 0.5));
        table.set(entry("llama3", 0.0));
        assert_eq!(table.price("gemini-2.5-flash-001").unwrap().input, 0.5);
        assert_eq!(table.price("llama3").unwrap().input, 0.0);
        assert_eq!(table.entries().len(), BUILT_IN.len() + 1);
    }

    #[test]
    fn cached_tokens_are_billed_at_the_cache_rate() {
        let price = PriceTable::built_in().price("gemini-2.5-flash").unwrap();
        let cost = price.cost(&usage(1_000_000, 400_000, 1_000_000));
        assert!((cost - (0.6 * 0.30 + 0.4 * 0.03 + 2.50)).abs() < 1e-9);
    }

    #[test]
    fn claude_cache_reads_and_writes_have_their_own_rates() {
        let table = PriceTable::built_in();
        let price = table.price("claude-sonnet-4-5-20250929").unwrap();
        assert_eq!(table.price("claude-opus-4-1").unwrap().input, 15.0);
        assert_eq!(table.price("claude-opus-4-5").unwrap().input, 5.0);
        // 1M input: 600k fresh, 300k read from the cache, 100k written to it.
        let usage = Usage {
            cache_write_tokens: 100_000,
            ..usage(1_000_000, 300_000, 1_000_000)
        };
        let cost = price.cost(&usage);
        assert!((cost - (0.6 * 3.0 + 0.3 * 0.30 + 0.1 * 3.75 + 15.0)).abs() < 1e-9);
    }

    #[test]
    fn long_prompts_switch_the_whole_request_to_the_long_tier() {
        let price = PriceTable::built_in().price("gemini-2.5-pro").unwrap();
        assert!((price.cost(&usage(300_000, 0, 0)) - 0.3 * 2.5).abs() < 1e-9);
        assert!((price.cost(&usage(200_000, 0, 0)) - 0.2 * 1.25).abs() < 1e-9);
    }

    #[test]
    fn batch_is_half_the_online_price_but_cache_hits() {
        let price = PriceTable::built_in().price("gemini-2.5-pro").unwrap();
        let u = usage(300_000, 100_000, 10_000);
        let online = price.cost(&u);
        let batch = price.batch().cost(&u);
        let cached = 0.1 * 0.25;
        assert!((batch - ((online - cached) / 2.0 + cached)).abs() < 1e-9);
    }
}
