//! The wall time a model's quotas imply: minutes from the RPM and TPM summed
//! over the accounts that serve it, days from their RPD less what today's
//! ledger already spent.

use super::Figures;
use crate::config::{AccountConfig, Config};
use crate::store::LedgerRow;
use crate::types::ProviderKind;
use serde::Serialize;

/// How long one model's items take at its configured quotas.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WallTime {
    /// Accounts that serve the model.
    pub accounts: usize,
    /// Of them, those with an `rpm` or `tpm` configured for it.
    pub limited_accounts: usize,
    /// Requests per minute, summed over the limited accounts.
    pub rpm: Option<u64>,
    /// Input tokens per minute, summed over the limited accounts.
    pub tpm: Option<u64>,
    /// Minutes to send what today's quotas allow (`None` when no account
    /// has a per-minute limit configured: the APIs' own limits decide).
    pub minutes: Option<f64>,
    /// Requests per day, summed, when every serving account has one
    /// (otherwise the day does not limit the job).
    pub rpd: Option<u64>,
    /// Of `rpd`, what today's ledger leaves.
    pub rpd_left_today: Option<u64>,
    /// Items that wait for later days (US/Pacific), deferred by a run.
    pub deferred_items: u64,
    /// Calendar days the job spans (1: all today).
    pub days: u64,
    /// The sentence shown, e.g. "about 3 h 10 min at 4 projects × 150 RPM".
    pub summary: String,
}

impl WallTime {
    /// The wall time of `figures`' items of `model` under `config`, with
    /// `ledger` today's rows.
    pub fn of(config: &Config, model: &str, figures: &Figures, ledger: &[LedgerRow]) -> WallTime {
        let provider =
            ProviderKind::serving(model, |p| config.accounts.iter().any(|a| a.provider == p));
        let serving: Vec<&AccountConfig> = config
            .accounts
            .iter()
            .filter(|a| Some(a.provider) == provider)
            .collect();
        let limits = |a: &AccountConfig| a.limits.get(model).copied().unwrap_or_default();
        let limited: Vec<_> = serving
            .iter()
            .map(|a| limits(a))
            .filter(|l| l.rpm.is_some() || l.tpm.is_some())
            .collect();
        let sum = |values: Vec<Option<u64>>| -> Option<u64> {
            values.into_iter().flatten().reduce(|a, b| a + b)
        };
        let rpm = sum(limited.iter().map(|l| l.rpm.map(u64::from)).collect());
        let tpm = sum(limited.iter().map(|l| l.tpm).collect());
        let daily: Vec<(u64, u64)> = serving
            .iter()
            .filter_map(|a| {
                let rpd = u64::from(limits(a).rpd?);
                let used = ledger
                    .iter()
                    .filter(|r| r.account == a.name && r.model == model)
                    .map(|r| r.requests)
                    .sum::<u64>();
                Some((rpd, rpd.saturating_sub(used)))
            })
            .collect();
        let (rpd, rpd_left_today) = if !serving.is_empty() && daily.len() == serving.len() {
            (
                Some(daily.iter().map(|d| d.0).sum::<u64>()),
                Some(daily.iter().map(|d| d.1).sum::<u64>()),
            )
        } else {
            (None, None)
        };
        let today = rpd_left_today.map_or(figures.items, |left| figures.items.min(left));
        let deferred_items = figures.items - today;
        let days = match rpd {
            Some(rpd) if deferred_items > 0 && rpd > 0 => 1 + deferred_items.div_ceil(rpd),
            Some(_) if deferred_items > 0 => 0,
            _ => 1,
        };
        let today_input = if figures.items == 0 {
            0.0
        } else {
            figures.input_tokens as f64 * today as f64 / figures.items as f64
        };
        let by_rpm = rpm.map(|r| today as f64 / r as f64);
        let by_tpm = tpm.map(|t| today_input / t as f64);
        let minutes = match (by_rpm, by_tpm) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let mut wall = WallTime {
            accounts: serving.len(),
            limited_accounts: limited.len(),
            rpm,
            tpm,
            minutes,
            rpd,
            rpd_left_today,
            deferred_items,
            days,
            summary: String::new(),
        };
        wall.summary = wall.describe(&limited, by_tpm > by_rpm);
        wall
    }

    fn describe(&self, limited: &[crate::types::Limits], tpm_binds: bool) -> String {
        let mut text = match self.minutes {
            None if self.accounts == 0 => "no account serves this model".to_owned(),
            None => format!(
                "unknown: no rpm or tpm configured for it in {} account(s), so the APIs' own \
                 limits decide",
                self.accounts
            ),
            Some(minutes) => {
                let (unit, values): (&str, Vec<u64>) = if tpm_binds {
                    ("TPM", limited.iter().filter_map(|l| l.tpm).collect())
                } else {
                    (
                        "RPM",
                        limited
                            .iter()
                            .filter_map(|l| l.rpm.map(u64::from))
                            .collect(),
                    )
                };
                let n = values.len();
                let rate = if values.windows(2).all(|w| w[0] == w[1]) {
                    format!(
                        "{n} project{} × {} {unit}",
                        if n == 1 { "" } else { "s" },
                        thousands(values[0])
                    )
                } else {
                    format!(
                        "{n} projects, {} {unit} in all",
                        thousands(values.iter().sum())
                    )
                };
                let mut text = format!("{} at {rate}", duration(minutes));
                let unlimited = self.accounts - self.limited_accounts;
                if unlimited > 0 {
                    text.push_str(&format!(
                        " ({unlimited} account(s) without rpm/tpm for it not counted)"
                    ));
                }
                text
            }
        };
        if let (Some(left), true) = (self.rpd_left_today, self.deferred_items > 0) {
            let when = match self.days {
                0 => "never sent: the daily quota is 0".to_owned(),
                2 => "deferred to tomorrow (Pacific)".to_owned(),
                d => format!("deferred over the next {} days (Pacific)", d - 1),
            };
            text.push_str(&format!(
                "; RPD allows {} today: the rest ({}) is {when}",
                thousands(left),
                thousands(self.deferred_items)
            ));
        }
        text
    }
}

/// `1234567` → `1,234,567`: counts as the estimate and the reports print them.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Minutes as `under a minute`, `about 42 min` or `about 3 h 10 min`.
fn duration(minutes: f64) -> String {
    let whole = minutes.ceil() as u64;
    match whole {
        0 | 1 if minutes < 1.0 => "under a minute".to_owned(),
        m if m < 60 => format!("about {m} min"),
        m => format!("about {} h {} min", m / 60, m % 60),
    }
}
