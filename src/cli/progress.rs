//! What a person sees while a run goes: an indicatif bar on a terminal, a
//! plain line every few seconds otherwise (cron, CI, pipes), nothing with
//! `-q`, and one line per request with `-v` (keys as fingerprints).

use super::Verbosity;
use crate::pool::Pool;
use crate::run::{Observer, Progress};
use crate::store::{AttemptRow, ItemRow, ItemStatus};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the plain (non-terminal) progress line is printed.
const LINE_EVERY: Duration = Duration::from_secs(5);

/// The run's display on standard error.
pub(super) struct Display {
    verbosity: Verbosity,
    pool: Arc<Pool>,
    bar: Option<ProgressBar>,
    last_line: Instant,
}

impl Display {
    pub(super) fn new(verbosity: Verbosity, total: u64, pool: Arc<Pool>) -> Display {
        let bar = (verbosity != Verbosity::Quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30.cyan/blue} {pos}/{len} {msg} {per_sec} ETA {eta}",
                )
                .expect("the template is valid")
                .progress_chars("█▉▊▋▌▍▎▏ "),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Display {
            verbosity,
            pool,
            bar,
            last_line: Instant::now(),
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
        let failed = p.count(ItemStatus::Failed);
        let in_flight = self.pool.in_flight();
        match &self.bar {
            Some(bar) => {
                bar.set_position(p.done());
                bar.set_message(format!(
                    "ok {} failed {failed} in flight {in_flight} retries {} (429s {})",
                    p.count(ItemStatus::Ok),
                    p.retries,
                    p.rate_limited
                ));
                if p.done() >= p.total {
                    bar.finish_and_clear();
                }
            }
            None if self.verbosity != Verbosity::Quiet
                && (self.last_line.elapsed() >= LINE_EVERY || p.done() == p.total) =>
            {
                self.last_line = Instant::now();
                let elapsed = p.started.elapsed().as_secs_f64().max(1e-3);
                let rate = p.done() as f64 / elapsed;
                let eta = if rate > 0.0 {
                    format!("{:.0}s", p.total.saturating_sub(p.done()) as f64 / rate)
                } else {
                    "?".into()
                };
                eprintln!(
                    "keyfan: {}/{} done (ok {}, failed {failed}), {in_flight} in flight, {} retries ({} 429s), {rate:.1}/s, ETA {eta}",
                    p.done(),
                    p.total,
                    p.count(ItemStatus::Ok),
                    p.retries,
                    p.rate_limited,
                );
            }
            None => {}
        }
    }
}
