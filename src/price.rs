//! The model price table: USD per 1M tokens, built in and overridable.
//!
//! Owns: the built-in prices and the cost of a reply's usage. Never: I/O of
//! any kind.
//!
//! Prices are the paid-tier Standard prices of
//! <https://ai.google.dev/gemini-api/docs/pricing> (2025–26).
//! Thinking tokens are billed as output; prompts above 200k tokens switch the
//! whole request to the higher tier where the model has one.

use crate::provider::Usage;

/// Prices of one model in USD per 1M tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    /// Uncached input.
    pub input: f64,
    /// Output, thinking included.
    pub output: f64,
    /// Cached input (context cache reads).
    pub cached_input: f64,
    /// Prompt size above which the `long` prices apply, with those prices.
    pub long: Option<(u64, LongPrice)>,
}

/// Prices for prompts above a model's long-context threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LongPrice {
    /// Uncached input.
    pub input: f64,
    /// Output, thinking included.
    pub output: f64,
    /// Cached input.
    pub cached_input: f64,
}

const fn flat(input: f64, output: f64, cached_input: f64) -> Price {
    Price {
        input,
        output,
        cached_input,
        long: None,
    }
}

/// Built-in prices, matched by the longest model-name prefix.
const TABLE: &[(&str, Price)] = &[
    (
        "gemini-2.5-pro",
        Price {
            input: 1.25,
            output: 10.0,
            cached_input: 0.125,
            long: Some((
                200_000,
                LongPrice {
                    input: 2.5,
                    output: 15.0,
                    cached_input: 0.25,
                },
            )),
        },
    ),
    ("gemini-2.5-flash-lite", flat(0.10, 0.40, 0.01)),
    ("gemini-2.5-flash", flat(0.30, 2.50, 0.03)),
    ("gemini-2.0-flash", flat(0.10, 0.40, 0.025)),
    (
        "gemini-3.1-pro",
        Price {
            input: 2.0,
            output: 12.0,
            cached_input: 0.20,
            long: Some((
                200_000,
                LongPrice {
                    input: 4.0,
                    output: 18.0,
                    cached_input: 0.40,
                },
            )),
        },
    ),
];

// ---------------------------------------------------------------------------
// Anthropic (Claude): base input, output and cache hits of
// <https://platform.claude.com/docs/en/about-claude/pricing> (2025-26). Cache
// writes (`cache_creation_input_tokens`) cost the 5-minute write rate, 1.25×
// base input ([`CACHE_WRITE_FACTOR`]); Claude has no long-prompt tier.

/// Built-in Claude prices, matched by the longest model-name prefix.
const CLAUDE: &[(&str, Price)] = &[
    ("claude-opus-4", flat(15.0, 75.0, 1.50)),
    ("claude-opus-4-5", flat(5.0, 25.0, 0.50)),
    ("claude-opus-4-6", flat(5.0, 25.0, 0.50)),
    ("claude-sonnet-4", flat(3.0, 15.0, 0.30)),
    ("claude-3-7-sonnet", flat(3.0, 15.0, 0.30)),
    ("claude-haiku-4-5", flat(1.0, 5.0, 0.10)),
    ("claude-3-5-haiku", flat(0.80, 4.0, 0.08)),
    ("claude-3-haiku", flat(0.25, 1.25, 0.03)),
];

/// Cache writes cost this many times the uncached input price (Anthropic's
/// 5-minute cache write rate).
pub const CACHE_WRITE_FACTOR: f64 = 1.25;

// ---------------------------------------------------------------------------

/// The built-in price of `model`, if keyfan knows it.
pub fn lookup(model: &str) -> Option<Price> {
    TABLE
        .iter()
        .chain(CLAUDE)
        .filter(|(prefix, _)| model.starts_with(prefix))
        .max_by_key(|(prefix, _)| prefix.len())
        .map(|(_, price)| *price)
}

impl Price {
    /// The cost in USD of one call's usage.
    pub fn cost(&self, usage: &Usage) -> f64 {
        let (input, output, cached) = match self.long {
            Some((threshold, long)) if usage.input_tokens > threshold => {
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

    #[test]
    fn longest_prefix_wins() {
        assert_eq!(lookup("gemini-2.5-flash-lite").unwrap().input, 0.10);
        assert_eq!(lookup("gemini-2.5-flash").unwrap().input, 0.30);
        assert_eq!(
            lookup("gemini-2.5-flash-preview-09-2025").unwrap().input,
            0.30
        );
        assert!(lookup("gpt-unknown").is_none());
    }

    #[test]
    fn cached_tokens_are_billed_at_the_cache_rate() {
        let price = lookup("gemini-2.5-flash").unwrap();
        let cost = price.cost(&usage(1_000_000, 400_000, 1_000_000));
        assert!((cost - (0.6 * 0.30 + 0.4 * 0.03 + 2.50)).abs() < 1e-9);
    }

    #[test]
    fn claude_cache_reads_and_writes_have_their_own_rates() {
        let price = lookup("claude-sonnet-4-5-20250929").unwrap();
        assert_eq!(lookup("claude-opus-4-1").unwrap().input, 15.0);
        assert_eq!(lookup("claude-opus-4-5").unwrap().input, 5.0);
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
        let price = lookup("gemini-2.5-pro").unwrap();
        let cost = price.cost(&usage(300_000, 0, 0));
        assert!((cost - 0.3 * 2.5).abs() < 1e-9);
    }
}
