//! The HTML rendering of a report: one self-contained page (inline CSS and
//! SVG charts, no script, nothing fetched), written as XHTML-compatible
//! markup (every element closed) so a plain XML check can read it.

use super::{
    batch_cells, host_rows, hosts_note, upload_cells, upload_policy, usd, Report, Usage,
    BATCH_COLUMNS, HOST_COLUMNS, UPLOAD_COLUMNS, USAGE_COLUMNS, VERSUS_COLUMNS,
};
use std::fmt::Write;

/// Width of a full-width chart, in pixels.
const WIDTH: f64 = 640.0;

/// Width of a chart in a half-width column, in pixels.
const HALF: f64 = 460.0;

const STYLE: &str = "
body { font: 14px/1.4 system-ui, sans-serif; color: #1f2937; margin: 24px auto; max-width: 980px; padding: 0 16px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid #e5e7eb; }
h3 { font-size: 14px; margin: 12px 0 2px; }
.meta { color: #6b7280; } .banner { background: #fef3c7; border: 1px solid #f59e0b; padding: 6px 10px; margin: 10px 0; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 14px 0; }
.card { border: 1px solid #e5e7eb; border-radius: 6px; padding: 8px 12px; flex: 1; }
.card b { display: block; font-size: 20px; } .card span { color: #6b7280; font-size: 12px; }
.grid { display: grid; grid-template-columns: 1fr 1fr; gap: 8px 24px; }
table { border-collapse: collapse; margin: 6px 0; } td, th { padding: 3px 8px; border-bottom: 1px solid #f3f4f6; }
th { text-align: left; color: #6b7280; font-weight: 600; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
svg { max-width: 100%; } svg text { font: 11px system-ui, sans-serif; fill: #374151; }
";

pub(super) fn render(r: &Report) -> String {
    let mut h = String::new();
    let label = if r.simulated { " (SIMULATED)" } else { "" };
    let title = format!("keyfan report: run {}{label}", r.run.id.0);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/>\
         <meta name=\"viewport\" content=\"width=device-width\"/><title>{}</title>\
         <style>{STYLE}</style></head><body>\n<h1>{}</h1>",
        esc(&title),
        esc(&title)
    );
    let _ = write!(
        h,
        "<p class=\"meta\">job <code>{}</code> · started {} · finished {} · {} · {:.1} s \
         active</p>",
        esc(&r.run.job_path),
        esc(&r.run.started_at),
        esc(r.run.finished_at.as_deref().unwrap_or("not finished")),
        esc(&r.run.status.to_string()),
        r.elapsed_s
    );
    if r.simulated {
        h.push_str(
            "<p class=\"banner\"><b>SIMULATED.</b> Every request went to keyfan's local \
             simulator, not to a real API. Outputs, latencies and costs are illustrative.</p>",
        );
    }
    if let Some(reset) = &r.quota_resets_at {
        let _ = write!(
            h,
            "<p class=\"banner\">Items were deferred: the daily quotas reset at {} \
             (midnight US/Pacific).</p>",
            esc(reset)
        );
    }
    let t = &r.totals.usage;
    h.push_str("<div class=\"cards\">");
    for (value, name) in [
        (r.totals.items.to_string(), "items"),
        (status(r, "ok").to_string(), "ok"),
        (status(r, "failed").to_string(), "failed"),
        (t.requests.to_string(), "requests"),
        (t.rate_limited.to_string(), "429s"),
        (dollars(t.cost_usd), "cost (USD)"),
        (format!("{} ms", t.latency_p50_ms), "latency p50"),
        (format!("{} ms", t.latency_p95_ms), "latency p95"),
    ] {
        let _ = write!(
            h,
            "<div class=\"card\"><b>{}</b><span>{name}</span></div>",
            esc(&value)
        );
    }
    h.push_str("</div>\n");

    h.push_str("<h2>Requests per minute per account, against its limit</h2>");
    match &r.per_minute.start {
        None => h.push_str("<p>No request was sent.</p>"),
        Some(start) => {
            let _ = write!(
                h,
                "<p class=\"meta\">Minutes from {} (UTC); the dashed line is the account's \
                 configured RPM, summed over its models.</p><div class=\"grid\">",
                esc(start)
            );
            for (account, series) in &r.per_minute.accounts {
                // Each model has a quota of its own: the account can send
                // their sum.
                let limit = r
                    .limits
                    .iter()
                    .filter(|l| l.account == *account)
                    .filter_map(|l| l.limits.rpm.map(u64::from))
                    .reduce(|a, b| a + b);
                let _ = write!(
                    h,
                    "<div><h3>{}</h3>{}</div>",
                    esc(account),
                    columns(series, limit)
                );
            }
            h.push_str("</div>");
        }
    }

    h.push_str("\n<div class=\"grid\"><div><h2>Latency</h2>");
    let buckets: Vec<(String, f64, String)> = r
        .latency_histogram
        .iter()
        .scan(0, |low, b| {
            let name = match b.below_ms {
                Some(high) => format!("{}–{} ms", *low, high),
                None => format!("≥ {} ms", *low),
            };
            *low = b.below_ms.unwrap_or(*low);
            Some((name, b.requests as f64, b.requests.to_string()))
        })
        .collect();
    h.push_str(&bars(&buckets, "#6366f1", HALF));
    h.push_str("</div><div><h2>Items by status</h2>");
    let items: Vec<(String, f64, String)> = r
        .totals
        .status
        .iter()
        .map(|(s, &n)| ((*s).to_owned(), n as f64, n.to_string()))
        .collect();
    h.push_str(&bars(&items, "#10b981", HALF));
    h.push_str("</div></div>\n<h2>Cost per model</h2>");
    let costs: Vec<(String, f64, String)> = r
        .models
        .iter()
        // An unknown cost draws no bar, and says so.
        .map(|m| {
            let label = dollars(m.cost_usd);
            (m.name.clone(), m.cost_usd.unwrap_or(0.0), label)
        })
        .collect();
    h.push_str(&bars(&costs, "#f59e0b", WIDTH));
    usage_table(&mut h, "model", &r.models);
    if !r.estimate_vs_actual.is_empty() {
        h.push_str(
            "\n<h2>Estimate against actual</h2><p class=\"meta\">The estimate made before the \
             run (online prices, the config's expected output per item) against what the run \
             used.</p>",
        );
        let mut costs = Vec::new();
        for v in &r.estimate_vs_actual {
            for (what, cost) in [
                ("estimate", v.estimated.cost_expected_usd),
                ("actual", v.actual.cost_usd),
            ] {
                let name = format!("{} · {what}", v.model);
                costs.push((name, cost.unwrap_or(0.0), dollars(cost)));
            }
        }
        h.push_str(&bars(&costs, "#f59e0b", WIDTH));
        let rows = r.estimate_vs_actual.iter().map(|v| (&*v.model, v.cells()));
        table(&mut h, "model", &VERSUS_COLUMNS, rows);
    }

    if !r.batches.is_empty() {
        let (saving, notes) = r.batch_notes();
        let _ = write!(
            h,
            "\n<h2>Batches</h2><p class=\"meta\">{}</p>",
            esc(&saving)
        );
        let rows = r.batches.iter().map(|b| (&*b.display_name, batch_cells(b)));
        table(&mut h, "batch", &BATCH_COLUMNS, rows);
        for note in notes {
            let _ = write!(h, "<p>{}</p>", esc(&note));
        }
    }

    h.push_str("\n<h2>Quota used today (US/Pacific day, all runs)</h2>");
    let mut shares = Vec::new();
    for l in &r.ledger {
        let rpd = r
            .limits
            .iter()
            .find(|x| x.account == l.account && x.model == l.model)
            .and_then(|x| x.limits.rpd);
        if let Some(rpd) = rpd {
            let share = l.requests as f64 / f64::from(rpd);
            shares.push((
                format!("{} · {}", l.account, l.model),
                share.min(1.0),
                format!("{:.0}% of {} RPD ({})", share * 100.0, rpd, l.requests),
            ));
        } else {
            shares.push((
                format!("{} · {}", l.account, l.model),
                0.0,
                format!("{} requests, no RPD configured", l.requests),
            ));
        }
    }
    if shares.is_empty() {
        h.push_str("<p>Nothing counted today.</p>");
    } else {
        h.push_str(&bars_of(&shares, "#ef4444", 1.0, WIDTH));
    }

    if let Some(hosts) = &r.hosts {
        let _ = write!(h, "\n<h2>Hosts</h2><p>{}</p>", esc(&hosts_note(hosts)));
        table(&mut h, "host", &HOST_COLUMNS, host_rows(hosts));
    }
    h.push_str("\n<h2>Per account</h2>");
    usage_table(&mut h, "account", &r.accounts);
    if !r.uploads.is_empty() {
        h.push_str("\n<h2>Uploads</h2>");
        let rows = r.uploads.iter().map(|u| (&*u.account, upload_cells(u)));
        table(&mut h, "account", &UPLOAD_COLUMNS, rows);
        for line in upload_policy(r) {
            let _ = write!(h, "<p>{}</p>", esc(&line));
        }
    }
    h.push_str("\n</body></html>\n");
    h
}

/// A cost as `$0.1234`, or `?` when it is unknown.
fn dollars(cost: Option<f64>) -> String {
    let sign = if cost.is_some() { "$" } else { "" };
    format!("{sign}{}", usd(cost, 4))
}

fn status(r: &Report, name: &str) -> u64 {
    r.totals.status.get(name).copied().unwrap_or(0)
}

/// A column chart of `series` with a dashed line at `limit`.
fn columns(series: &[u64], limit: Option<u64>) -> String {
    let (height, left, bottom) = (140.0, 34.0, 18.0);
    let width = HALF;
    let top = series
        .iter()
        .copied()
        .max()
        .unwrap_or(0)
        .max(limit.unwrap_or(0))
        .max(1) as f64;
    let plot_h = height - bottom - 10.0;
    let step = (width - left) / series.len().max(1) as f64;
    let y = |v: f64| 10.0 + plot_h * (1.0 - v / top);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\" role=\"img\">\
         <line x1=\"{left}\" y1=\"{b}\" x2=\"{width}\" y2=\"{b}\" stroke=\"#9ca3af\"/>\
         <text x=\"{tx}\" y=\"14\" text-anchor=\"end\">{top}</text>\
         <text x=\"{tx}\" y=\"{b}\" text-anchor=\"end\">0</text>",
        b = height - bottom,
        tx = left - 4.0,
    );
    for (i, &v) in series.iter().enumerate() {
        let x = left + i as f64 * step;
        let _ = write!(
            svg,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#3b82f6\"><title>minute {}: {v}</title></rect>",
            y(v as f64),
            (step * 0.8).max(0.5),
            plot_h * v as f64 / top,
            i + 1
        );
    }
    if let Some(limit) = limit {
        let ly = y(limit as f64);
        let _ = write!(
            svg,
            "<line x1=\"{left}\" y1=\"{ly:.1}\" x2=\"{width}\" y2=\"{ly:.1}\" stroke=\"#ef4444\" \
             stroke-dasharray=\"5 3\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" \
             fill=\"#ef4444\">limit {limit} RPM</text>",
            width - 2.0,
            if ly < 24.0 { ly + 13.0 } else { ly - 3.0 }
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{left}\" y=\"{}\">1</text><text x=\"{width}\" y=\"{}\" \
         text-anchor=\"end\">minute {}</text></svg>",
        height - 4.0,
        height - 4.0,
        series.len()
    );
    svg
}

/// Horizontal bars `width` wide, scaled to the largest value.
fn bars(rows: &[(String, f64, String)], color: &str, width: f64) -> String {
    let top = rows.iter().map(|r| r.1).fold(0.0, f64::max);
    bars_of(rows, color, if top > 0.0 { top } else { 1.0 }, width)
}

/// Horizontal bars `width` wide of `(label, value, value label)`, `top`
/// the full length.
fn bars_of(rows: &[(String, f64, String)], color: &str, top: f64, width: f64) -> String {
    let (row_h, label_w) = (20.0, 170.0);
    let value_w = width / 4.0;
    let height = row_h * rows.len() as f64 + 4.0;
    let bar_w = width - label_w - value_w;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\" role=\"img\">"
    );
    for (i, (label, value, shown)) in rows.iter().enumerate() {
        let y = i as f64 * row_h + 2.0;
        let w = (bar_w * value / top).max(if *value > 0.0 { 1.0 } else { 0.0 });
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\
             <rect x=\"{label_w}\" y=\"{y:.1}\" width=\"{bar_w:.1}\" height=\"{:.1}\" fill=\"#f3f4f6\"/>\
             <rect x=\"{label_w}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"{color}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            label_w - 6.0,
            y + 13.0,
            esc(label),
            row_h - 6.0,
            row_h - 6.0,
            label_w + bar_w + 6.0,
            y + 13.0,
            esc(shown)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn usage_table(h: &mut String, first: &str, rows: &[Usage]) {
    let rows = rows.iter().map(|u| (&*u.name, u.cells()));
    table(h, first, &USAGE_COLUMNS, rows);
}

/// A table of named rows of cells under `columns`.
fn table<'a, const N: usize>(
    h: &mut String,
    first: &str,
    columns: &[&str; N],
    rows: impl Iterator<Item = (&'a str, [String; N])>,
) {
    let _ = write!(h, "<table><tr><th>{first}</th>");
    for column in columns {
        let _ = write!(h, "<th>{}</th>", esc(column));
    }
    h.push_str("</tr>");
    for (name, cells) in rows {
        let _ = write!(h, "<tr><td>{}</td>", esc(name));
        for cell in cells {
            let _ = write!(h, "<td class=\"n\">{cell}</td>");
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");
}

/// `text` with the characters HTML gives meaning escaped.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
