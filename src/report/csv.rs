//! The CSV rendering of a report: one row per account and model.

use super::{usd, Report};

/// The columns, in order.
const HEADER: [&str; 14] = [
    "account",
    "model",
    "requests",
    "ok",
    "failed",
    "rate_limited",
    "key_invalid",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "latency_p50_ms",
    "latency_p95_ms",
    "ok_per_minute",
    "simulated",
];

pub(super) fn render(r: &Report) -> String {
    let mut out = csv::Writer::from_writer(Vec::new());
    out.write_record(HEADER).expect("CSV to memory");
    for u in &r.account_models {
        out.write_record([
            u.account.clone().unwrap_or_default(),
            u.name.clone(),
            u.requests.to_string(),
            u.ok.to_string(),
            u.failed.to_string(),
            u.rate_limited.to_string(),
            u.key_invalid.to_string(),
            u.input_tokens.to_string(),
            u.output_tokens.to_string(),
            usd(u.cost_usd, 6),
            u.latency_p50_ms.to_string(),
            u.latency_p95_ms.to_string(),
            format!("{:.2}", u.ok_per_minute),
            r.simulated.to_string(),
        ])
        .expect("CSV to memory");
    }
    String::from_utf8(out.into_inner().expect("CSV to memory")).expect("CSV of UTF-8 fields")
}
