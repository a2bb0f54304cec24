//! What a person sees while a run goes: an indicatif bar on a terminal, a
//! plain line every few seconds otherwise (cron, CI, pipes), nothing with
//! `-q`, and one line per request with `-v` (keys as fingerprints). Both
//! say what the run waits for when the quotas hold it back, and an
//! endpoint that refuses connections is named once, even without `-v`.

use super::Verbosity;
use crate::pool::Pool;
use crate::run::Clients;
use crate::run::{Observer, Progress};
use crate::store::{AttemptRow, ItemRow, ItemStatus};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashSet;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the plain (non-terminal) progress line is printed.
const LINE_EVERY: Duration = Duration::from_secs(5);

/// The run's display on standard error.
pub(super) struct Display {
    verbosity: Verbosity,
    pool: Arc<Pool>,
    clients: Arc<Clients>,
    bar: Option<ProgressBar>,
    last_line: Instant,
    /// Endpoints already named as unreachable.
    unreachable: HashSet<String>,
}

impl Display {
    pub(super) fn new(
        verbosity: Verbosity,
        total: u64,
        pool: Arc<Pool>,
        clients: Arc<Clients>,
    ) -> Display {
        let bar = (verbosity != Verbosity::Quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{bar:30.cyan/blue} {pos}/{len} {elapsed} {msg}")
                    .expect("the template is valid")
                    .progress_chars("█▉▊▋▌▍▎▏ "),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Display {
            verbosity,
            pool,
            clients,
            bar,
            last_line: Instant::now(),
            unreachable: HashSet::new(),
        }
    }

    /// Names each endpoint that keeps refusing connections, once.
    fn call_out_unreachable(&mut self) {
        if self.verbosity == Verbosity::Quiet {
            return;
        }
        for (url, error) in self.clients.unreachable() {
            if self.unreachable.insert(url.clone()) {
                self.say(&format!(
                    "keyfan: cannot connect to {url}: {error} ({} failures in a row)",
                    crate::run::UNREACHABLE_AFTER
                ));
            }
        }
    }

    fn say(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
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
        self.call_out_unreachable();
        let failed = p.count(ItemStatus::Failed);
        let in_flight = self.pool.in_flight();
        let elapsed = p.started.elapsed();
        let rate = p.done() as f64 / elapsed.as_secs_f64().max(1e-3);
        // While the quotas hold the run back, a rate-based ETA only grows:
        // say what it waits for instead.
        let outlook = match self.pool.waiting() {
            Some(waiting) => waiting.to_string(),
            None if rate > 0.0 => format!(
                "ETA {}",
                duration(Duration::from_secs_f64(
                    (p.total.saturating_sub(p.done()) as f64 / rate).min(1e9)
                ))
            ),
            None => "ETA ?".to_owned(),
        };
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

/// A duration as `42s`, `3m05s` or `2h07m`.
fn duration(d: Duration) -> String {
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
    fn durations_read_at_a_glance() {
        assert_eq!(duration(Duration::from_secs(42)), "42s");
        assert_eq!(duration(Duration::from_secs(185)), "3m05s");
        assert_eq!(duration(Duration::from_secs(7620)), "2h07m");
    }
}
