//! What a person sees of a run, on standard error: the one owner of every
//! line a run prints there. An indicatif bar on a terminal, a plain line
//! every few seconds otherwise (cron, CI, pipes), nothing but errors with
//! `-q`, and one line per request with `-v` (keys as fingerprints). Both
//! say what the run waits for when the quotas hold it back, and an
//! endpoint that refuses connections is named once, even without `-v`.
//! The run's notices (warnings, the resume, signals) and its summary are
//! printed here too, from the events the run sends.

use super::Verbosity;
use crate::run::{Notice, Observer, Progress, RunOutcome, SampleSummary};
use crate::store::{AttemptRow, ItemRow, ItemStatus, RunStatus};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashSet;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How often the plain (non-terminal) progress line is printed.
const LINE_EVERY: Duration = Duration::from_secs(5);

/// The run's display on standard error.
pub(super) struct Display {
    verbosity: Verbosity,
    /// The bar, on a terminal, from the first progress on.
    bar: Option<ProgressBar>,
    last_line: Instant,
    /// Endpoints already named as unreachable.
    unreachable: HashSet<String>,
    /// Keys already said to be refused.
    disabled: HashSet<String>,
}

impl Display {
    pub(super) fn new(verbosity: Verbosity) -> Display {
        Display {
            verbosity,
            bar: None,
            last_line: Instant::now(),
            unreachable: HashSet::new(),
            disabled: HashSet::new(),
        }
    }

    /// Whether the bar is shown: on a terminal, unless `-q`.
    fn bar_shown(&self) -> bool {
        self.verbosity != Verbosity::Quiet && std::io::stderr().is_terminal()
    }

    /// Makes the bar of a run of `total` items, on first use.
    fn start_bar(&mut self, total: u64) {
        if self.bar.is_none() && self.bar_shown() {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{bar:30.cyan/blue} {pos}/{len} {elapsed} {msg}")
                    .expect("the template is valid")
                    .progress_chars("█▉▊▋▌▍▎▏ "),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            self.bar = Some(bar);
        }
    }

    /// Names each endpoint that keeps refusing connections, once.
    fn call_out_unreachable(&mut self, unreachable: &[(String, String)]) {
        if self.verbosity == Verbosity::Quiet {
            return;
        }
        for (url, error) in unreachable {
            if self.unreachable.insert(url.clone()) {
                self.say(&format!(
                    "keyfan: cannot connect to {url}: {error} ({} failures in a row)",
                    crate::run::UNREACHABLE_AFTER
                ));
            }
        }
    }

    /// Prints `line` above the bar, or on its own without one.
    fn say(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// [`Display::say`], unless `-q`.
    fn tell(&self, line: &str) {
        if self.verbosity != Verbosity::Quiet {
            self.say(line);
        }
    }
}

impl Observer for Display {
    fn attempt(&mut self, a: &AttemptRow) {
        if let (Verbosity::Verbose, Some(message)) = (self.verbosity, &a.error) {
            self.say(&format!(
                "keyfan: {} attempt {} key {} ({}) {} {} in {} ms: {message}",
                a.item_id,
                a.attempt,
                a.key,
                a.account,
                a.http_status.map_or("-".into(), |s| s.to_string()),
                a.class.as_str(),
                a.latency_ms,
            ));
        }
    }

    fn finished(&mut self, item: &ItemRow) {
        if self.verbosity == Verbosity::Verbose {
            self.say(&format!(
                "keyfan: {} {} after {} attempt(s), key {} ({}) {} ms{}",
                item.id,
                item.status.as_str(),
                item.attempts,
                item.key.as_deref().unwrap_or("-"),
                item.account.as_deref().unwrap_or("-"),
                item.latency_ms,
                item.error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default(),
            ));
        }
    }

    fn progress(&mut self, p: &Progress) {
        self.call_out_unreachable(&p.load.unreachable);
        let failed = p.count(ItemStatus::Failed);
        let in_flight = p.load.in_flight;
        let elapsed = p.started.elapsed();
        let rate = p.done() as f64 / elapsed.as_secs_f64().max(1e-3);
        // While the quotas hold the run back, a rate-based ETA only grows:
        // say what it waits for, and the ETA the quotas' pace gives.
        let left = p.total.saturating_sub(p.done());
        let outlook = match &p.load.waiting {
            Some(waiting) => match p.load.quota_rpm {
                Some(rpm) => format!("{waiting}; {}", quota_eta(left, rpm)),
                None => waiting.to_string(),
            },
            None if rate > 0.0 => format!(
                "ETA {}",
                duration(Duration::from_secs_f64(
                    (p.total.saturating_sub(p.done()) as f64 / rate).min(1e9)
                ))
            ),
            None => "ETA ?".to_owned(),
        };
        self.start_bar(p.total);
        match &self.bar {
            Some(bar) => {
                bar.set_position(p.done());
                bar.set_message(format!(
                    "ok {} failed {failed} in flight {in_flight} retries {} (429s {}) {}/s {outlook}",
                    p.count(ItemStatus::Ok),
                    p.retries,
                    p.rate_limited,
                    significant(rate),
                ));
                if p.done() >= p.total {
                    bar.finish_and_clear();
                }
            }
            None if self.verbosity != Verbosity::Quiet
                && (self.last_line.elapsed() >= LINE_EVERY || p.done() == p.total) =>
            {
                self.last_line = Instant::now();
                eprintln!(
                    "keyfan: {}/{} done (ok {}, failed {failed}), {in_flight} in flight, {} retries ({} 429s), {}/s, elapsed {}, {outlook}",
                    p.done(),
                    p.total,
                    p.count(ItemStatus::Ok),
                    p.retries,
                    p.rate_limited,
                    significant(rate),
                    duration(elapsed),
                );
            }
            None => {}
        }
    }

    fn notice(&mut self, notice: &Notice) {
        match notice {
            // Shown even with -q: they refuse the run, or explain the
            // `skipped` items of one that goes on.
            Notice::InvalidLines { shown, hidden } => {
                for error in shown {
                    self.say(&format!("keyfan: {error}"));
                }
                if *hidden > 0 {
                    self.say(&format!("keyfan: … and {hidden} more invalid lines"));
                }
            }
            Notice::ModelRefused { job, error } => self.say(&format!("keyfan: {job}: {error}")),
            Notice::ModelWarning(warning) => self.tell(&format!("keyfan: warning: {warning}")),
            Notice::Simulated { base_url } => self.tell(&format!(
                "keyfan: SIMULATED run: every request goes to the built-in simulator at {base_url}, not to a real API"
            )),
            Notice::Resuming { run, job, done, to_do } => self.tell(&format!(
                "keyfan: resuming run {} of {job}: {done} item(s) already finished, {to_do} to go (--new-run starts afresh)",
                run.0
            )),
            Notice::Stopping { grace } => self.tell(&format!(
                "keyfan: stopping: no new requests; waiting up to {}s for those in flight (Ctrl-C again to abandon them)",
                grace.as_secs()
            )),
            Notice::Abandoning { grace_over: true } => {
                self.tell("keyfan: grace period over: abandoning the requests in flight")
            }
            Notice::Abandoning { grace_over: false } => {
                self.tell("keyfan: abandoning the requests in flight")
            }
            Notice::KeyDisabled {
                key,
                account,
                reason,
            } => {
                // Requests in flight on the key may all come back refused.
                if self.disabled.insert(key.clone()) {
                    self.tell(&format!(
                        "keyfan: key {key} ({account}) was refused and is not used again in this run: {reason}"
                    ));
                }
            }
            Notice::Batch(message) => self.tell(&format!("keyfan: {message}")),
            Notice::BudgetReached { cap } => self.tell(&format!(
                "keyfan: --max-cost {cap} USD reached: no new requests; finishing those in flight"
            )),
            Notice::MediaUnavailable {
                account,
                policy,
                why,
            } => self.tell(&format!(
                "keyfan: account {account} cannot serve the items whose files it holds ({why}); media.on_unavailable: {}: {}",
                policy.as_str(),
                match policy {
                    crate::config::OnUnavailable::Wait => "they wait for it (deferred to a run after its quota resets)",
                    crate::config::OnUnavailable::Reupload => "they go to another account with room, which uploads their files",
                }
            )),
        }
    }

    fn done(&mut self, outcome: &RunOutcome) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        // Errors are shown even with -q: the items they left pending go out
        // with the next run.
        for error in &outcome.errors {
            eprintln!("keyfan: error: {error}");
        }
        // So are refused keys when they left a model with none: each key
        // is named with the API's reason.
        for model in &outcome.keys_refused {
            eprintln!(
                "keyfan: error: every key that can serve {model} was refused: stopped sending"
            );
        }
        let quiet = self.verbosity == Verbosity::Quiet;
        if !quiet || !outcome.keys_refused.is_empty() {
            for (key, account, reason) in &outcome.disabled {
                eprintln!("keyfan: key {key} ({account}) was disabled for this run: {reason}");
            }
        }
        if !outcome.errors.is_empty() || !outcome.keys_refused.is_empty() {
            eprintln!("keyfan: the items not finished stay pending: running the same command again sends them");
        }
        if quiet {
            return;
        }
        let outputs = &outcome.outputs;
        if outcome.status == RunStatus::OutputClosed {
            eprintln!(
                "keyfan: the results output was closed: stopped sending; finished items are kept in {} (running the same command again writes them and sends the rest)",
                outputs.state.display()
            );
        }
        // The run's active time, as the report gives it: a resumed run's
        // earlier invocations count, the gaps between them do not.
        eprintln!(
            "keyfan: {}run {} {} in {:.1}s: {}",
            if outcome.simulated { "SIMULATED " } else { "" },
            outcome.run.0,
            outcome.status,
            outcome.elapsed_s,
            counts(&outcome.items)
        );
        if let Some(sample) = &outcome.sample {
            for line in sample_lines(sample) {
                eprintln!("keyfan: {line}");
            }
        }
        if let Some(reset) = &outcome.quota_resets_at {
            eprintln!(
                "keyfan: daily quotas are spent: deferred items can go after {reset} (midnight US/Pacific)"
            );
        }
        eprintln!("keyfan: results: {}", outputs.target);
        eprintln!(
            "keyfan: report:  {}, {} and {}",
            outputs.report_md.display(),
            outputs.report_json.display(),
            outputs.report_html.display()
        );
    }
}

/// What `--sample` measured, and what it implies for the whole job.
fn sample_lines(s: &SampleSummary) -> Vec<String> {
    let usd = |cost: Option<f64>| {
        cost.map_or_else(
            || "? USD (a price is unknown)".to_owned(),
            |c| format!("{} USD", significant(c)),
        )
    };
    let mut lines = vec![
        format!(
            "sample: {} items (seed {}): {} and {} per item; {:.1}% not ok",
            s.items,
            s.seed,
            usd(s.cost_per_item_usd),
            duration_of(s.seconds_per_item),
            s.not_ok_share * 100.0
        ),
        format!(
            "the whole job ({} items) at that rate: about {}",
            s.job_items,
            usd(s.job_cost_usd)
        ),
    ];
    if s.remaining > 0 {
        lines.push(format!(
            "the other {} items: about {} at the sample's pace; run the same command without --sample to send them",
            s.remaining,
            duration_of(s.remaining_s)
        ));
    }
    lines
}

/// Seconds as `0.25s` below a minute, else as [`duration`] does.
fn duration_of(seconds: f64) -> String {
    if seconds < 60.0 {
        format!("{}s", significant(seconds))
    } else {
        duration(Duration::from_secs_f64(seconds))
    }
}

/// Items per status, e.g. `3 failed, 40 ok`.
pub(super) fn counts(items: &[(ItemStatus, u64)]) -> String {
    if items.is_empty() {
        return "no items".to_owned();
    }
    items
        .iter()
        .map(|(status, n)| format!("{n} {status}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `x` rounded to 3 significant digits: `0.0123`, `12.3`, `1230`.
fn significant(x: f64) -> String {
    if !x.is_finite() || x == 0.0 {
        return "0".to_owned();
    }
    let magnitude = x.abs().log10().floor() as i32;
    let decimals = 2 - magnitude;
    if decimals > 0 {
        format!("{x:.*}", decimals as usize)
    } else {
        let unit = 10f64.powi(-decimals);
        format!("{:.0}", (x / unit).round() * unit)
    }
}

/// The ETA of `left` items at the quotas' pace of `rpm` requests a minute,
/// e.g. `ETA 4m00s at 120 rpm (quota)`.
fn quota_eta(left: u64, rpm: u64) -> String {
    let minutes = left as f64 / rpm.max(1) as f64;
    let eta = Duration::from_secs_f64((minutes * 60.0).min(1e9));
    format!("ETA {} at {rpm} rpm (quota)", duration(eta))
}

/// A duration as `42s`, `3m05s` or `2h07m`.
pub(super) fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_keep_three_significant_digits() {
        assert_eq!(significant(0.012345), "0.0123");
        assert_eq!(significant(1.0), "1.00");
        assert_eq!(significant(12.345), "12.3");
        assert_eq!(significant(123.45), "123");
        assert_eq!(significant(12345.0), "12300");
        assert_eq!(significant(0.0), "0");
    }

    #[test]
    fn a_quota_bound_eta_follows_the_quotas_pace() {
        assert_eq!(quota_eta(240, 120), "ETA 2m00s at 120 rpm (quota)");
        assert_eq!(quota_eta(0, 120), "ETA 0s at 120 rpm (quota)");
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration(Duration::from_secs(42)), "42s");
        assert_eq!(duration(Duration::from_secs(185)), "3m05s");
        assert_eq!(duration(Duration::from_secs(7620)), "2h07m");
    }

    #[test]
    fn a_sample_says_its_rates_the_whole_job_and_what_is_left() {
        let sample = SampleSummary {
            seed: 0,
            items: 50,
            not_ok: 1,
            not_ok_share: 0.02,
            cost_usd: Some(0.002),
            cost_per_item_usd: Some(0.00004),
            elapsed_s: 2.5,
            seconds_per_item: 0.05,
            job_items: 200,
            remaining: 150,
            job_cost_usd: Some(0.008),
            remaining_s: 7.5,
        };
        assert_eq!(
            sample_lines(&sample),
            [
                "sample: 50 items (seed 0): 0.0000400 USD and 0.0500s per item; 2.0% not ok",
                "the whole job (200 items) at that rate: about 0.00800 USD",
                "the other 150 items: about 7.50s at the sample's pace; run the same command \
                 without --sample to send them",
            ]
        );
        let unpriced = SampleSummary {
            cost_per_item_usd: None,
            job_cost_usd: None,
            remaining: 0,
            ..sample
        };
        let lines = sample_lines(&unpriced);
        assert_eq!(lines.len(), 2, "nothing is left: {lines:?}");
        assert!(
            lines[1].ends_with("about ? USD (a price is unknown)"),
            "{lines:?}"
        );
    }
}
