//! `keyfan estimate`: the job's tokens, cost and wall time, as a table or
//! JSON. Sends nothing (but free token counts with `--count-tokens`, which
//! uploads the media files it counts and remembers them in the state file
//! for the run); reads the state file for today's ledger.

use super::{exit, print_json, EstimateArgs, Failure};
use crate::config::MissingEnv;
use crate::estimate::{self, Estimate, EstimateError, Expected, Figures};
use crate::store::Store;
use crate::types::QuotaDay;

pub(super) async fn run(args: EstimateArgs) -> Result<u8, Failure> {
    // Nothing is sent, so no key is needed (unset variables are fine),
    // unless the API is to count the tokens.
    let missing = match args.count_tokens {
        true => MissingEnv::Error,
        false => MissingEnv::Placeholder,
    };
    let config = super::load_config(&args.config, missing)?;
    let state = args
        .state
        .clone()
        .unwrap_or_else(|| crate::run::default_state(&args.job, false));
    if args.state.is_some() && !state.exists() {
        return Err(Failure::usage(anyhow::anyhow!(
            "state file {} does not exist",
            state.display()
        )));
    }
    // Counting media uploads their files, remembered in the state file.
    let (counts, media_counted) = match args.count_tokens {
        true => {
            let (counts, media) = estimate::count_tokens(&args.job, &config, &state).await?;
            (counts, Some(media))
        }
        false => (estimate::Counts::new(), None),
    };
    let ledger = match state.exists() {
        true => Store::open(&state)?.ledger(QuotaDay::of(chrono::Utc::now()))?,
        false => Vec::new(),
    };
    let expected = Expected::pick(args.expect_output, &config);
    let estimate = estimate::estimate(&args.job, &config, expected, &ledger, &counts).map_err(
        |e| match e {
            EstimateError::Job(_) | EstimateError::Invalid { .. } => Failure::usage(
                anyhow::Error::from(e).context(format!("cannot estimate {}", args.job.display())),
            ),
            EstimateError::UnknownPrices(_) => Failure::usage(e),
        },
    )?;
    let estimate = Estimate {
        media_counted,
        ..estimate
    };
    if args.json {
        print_json(&estimate)?;
    } else {
        print!("{}", table(&estimate));
    }
    Ok(exit::OK)
}

/// The estimate as the terminal shows it.
fn table(e: &Estimate) -> String {
    use crate::estimate::thousands as n;
    let sent = match e.media_counted.map_or(0, |m| m.uploads.files) {
        0 => "nothing sent",
        _ => "nothing generated; media files uploaded to be counted",
    };
    let mut out = format!("Estimate of {} ({sent})\n\n", e.job);
    out.push_str(&format!(
        "{:<28} {:>10} {:>14} {:>14} {:>14} {:>12} {:>12} {:>12} {:>12}\n",
        "model",
        "items",
        "input tok",
        "output exp",
        "output worst",
        "cost exp",
        "batch exp",
        "cost worst",
        "batch worst"
    ));
    let row = |name: &str, f: &Figures| {
        format!(
            "{:<28} {:>10} {:>14} {:>14} {:>14} {:>12} {:>12} {:>12} {:>12}\n",
            name,
            n(f.items),
            n(f.input_tokens),
            n(f.output_tokens_expected),
            n(f.output_tokens_worst),
            usd(f.cost.expected_usd),
            usd(f.cost.expected_batch_usd),
            usd(f.cost.worst_usd),
            usd(f.cost.worst_batch_usd),
        )
    };
    for m in &e.models {
        out.push_str(&row(&m.model, &m.figures));
    }
    if e.models.len() > 1 {
        out.push_str(&row("total", &e.total));
    }
    out.push_str(&format!(
        "\nExpected output: {} tokens per item ({}), or the item's max_output_tokens if lower.\n\
         Worst case: each item's max_output_tokens, else {}. Batch: half the online price.\n\
         Input tokens: {}.\n",
        n(u64::from(e.expected_output.tokens_per_item)),
        e.expected_output.from,
        n(u64::from(e.worst_output_default)),
        match e.input_counted {
            0 => e.heuristic.to_owned(),
            counted => format!(
                "counted by the API for {} item(s) (their system instructions estimated); the rest {}",
                n(counted),
                e.heuristic
            ),
        }
    ));
    if e.with_outputs > 0 {
        out.push_str(&format!(
            "Depending on other items: {} item(s), estimated with their {{{{outputs.…}}}} \
             placeholders unfilled: their input grows by their parents' answers.\n",
            n(e.with_outputs)
        ));
    }
    let media_counted = e.media_counted.map_or(0, |m| m.items);
    if e.media_items > media_counted {
        out.push_str(&format!(
            "Media tokens ({} item(s)): {}.\n",
            n(e.media_items - media_counted),
            e.media_rule
        ));
    }
    if let Some(m) = e.media_counted.filter(|m| m.items > 0) {
        out.push_str(&format!(
            "Media counted by the API ({} item(s)): counting media uploads their files first \
             (those too large to go inline, once per file and account, through the free Files \
             API): {} file(s), {} bytes uploaded now, {} earlier upload(s) reused. They are kept \
             in the state file for `keyfan run` to reuse (and delete after it); unused, they \
             expire after 48 h.\n",
            n(m.items),
            n(m.uploads.files),
            n(m.uploads.bytes),
            n(m.uploads.reused)
        ));
    }
    for note in &e.notes {
        out.push_str(&format!("  {note}\n"));
    }
    if e.note_count > e.notes.len() as u64 {
        out.push_str(&format!(
            "  … and {} more such notes\n",
            n(e.note_count - e.notes.len() as u64)
        ));
    }
    out.push_str("\nWall time at the configured quotas:\n");
    for m in &e.models {
        out.push_str(&format!("  {}: {}\n", m.model, m.wall_time.summary));
    }
    out.push_str("\nPrices (USD per 1M tokens):\n");
    for m in &e.models {
        let p = &m.price;
        out.push_str(&format!(
            "  {}: input {}, output {}, cached input {}{} ({}, {})\n",
            m.model,
            p.price.input,
            p.price.output,
            p.price.cached_input,
            p.price.long.map_or(String::new(), |l| format!(
                "; above {} prompt tokens: input {}, output {}",
                n(l.above_tokens),
                l.input,
                l.output
            )),
            p.source,
            p.date
        ));
    }
    out
}

/// USD with 4 decimals, or 2 from $100 up.
fn usd(v: f64) -> String {
    if v >= 100.0 {
        format!("${v:.2}")
    } else {
        format!("${v:.4}")
    }
}
