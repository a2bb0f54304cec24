//! The Markdown rendering of a report.

use super::{
    batch_cells, host_rows, hosts_note, upload_cells, upload_policy, usd, Report, Usage,
    BATCH_COLUMNS, HOST_COLUMNS, UPLOAD_COLUMNS, USAGE_COLUMNS, VERSUS_COLUMNS,
};
use crate::store::postgres::RunHosts;
use std::fmt::Write;

pub(super) fn render(r: &Report) -> String {
    let mut md = String::new();
    let label = if r.simulated { " (SIMULATED)" } else { "" };
    let _ = writeln!(md, "# keyfan report: run {}{label}\n", r.run.id.0);
    if r.simulated {
        let _ = writeln!(
            md,
            "> **SIMULATED.** Every request went to keyfan's local simulator, not to a real API. \
             Outputs, latencies and costs are illustrative.\n"
        );
    }
    let _ = writeln!(md, "- job: `{}`", r.run.job_path);
    let _ = writeln!(md, "- started: {}", r.run.started_at);
    let _ = writeln!(
        md,
        "- finished: {} ({})",
        r.run.finished_at.as_deref().unwrap_or("not finished"),
        r.run.status
    );
    let _ = writeln!(md, "- elapsed: {:.1} s\n", r.elapsed_s);

    let _ = writeln!(md, "## Items\n");
    let _ = writeln!(md, "| status | items |\n|---|---:|");
    for (status, n) in &r.totals.status {
        let _ = writeln!(md, "| {status} | {n} |");
    }
    let _ = writeln!(md, "| **total** | **{}** |\n", r.totals.items);
    if !r.totals.skipped_children.is_empty() {
        let _ = writeln!(md, "**Skipped for their parents** (`depends_on`):\n");
        for child in &r.totals.skipped_children {
            let _ = writeln!(
                md,
                "- `{}` (line {}): {}",
                child.id, child.line, child.error
            );
        }
        let _ = writeln!(md);
    }
    if r.totals.usage.schema_failures > 0 {
        let _ = writeln!(
            md,
            "**Schema failures**: {} answer(s) did not fit their item's `response_schema`.\n",
            r.totals.usage.schema_failures
        );
    }
    if let Some(reset) = &r.quota_resets_at {
        let _ = writeln!(
            md,
            "**Deferred items**: every account's daily quota was spent. Quotas reset at {reset} \
             (midnight US/Pacific); run the same command again after that to send them.\n"
        );
    }

    let _ = writeln!(md, "## Requests\n");
    table(
        &mut md,
        "scope",
        std::slice::from_ref(&r.totals.usage),
        |_| "all".into(),
    );
    let _ = writeln!(
        md,
        "\nWasted on retries: {} USD (attempts that were not their item's final one).",
        usd(r.totals.wasted_on_retries_usd, 4)
    );
    let _ = writeln!(md, "\n## Per model\n");
    table(&mut md, "model", &r.models, |u| u.name.clone());
    if !r.estimate_vs_actual.is_empty() {
        let _ = writeln!(
            md,
            "\n## Estimate against actual\n\nThe estimate made before the run (online prices, \
             the config's expected output per item) against what the run used.\n"
        );
        let rows = r
            .estimate_vs_actual
            .iter()
            .map(|v| (v.model.clone(), v.cells()));
        cells_table(&mut md, "model", &VERSUS_COLUMNS, rows);
    }
    if !r.batches.is_empty() {
        batches(&mut md, r);
    }
    if let Some(hosts) = &r.hosts {
        md.push('\n');
        section_hosts(&mut md, hosts);
    }
    let _ = writeln!(md, "\n## Per account\n");
    table(&mut md, "account", &r.accounts, |u| u.name.clone());
    if !r.uploads.is_empty() {
        uploads(&mut md, r);
    }
    let _ = writeln!(md, "\n## Per key\n");
    table(&mut md, "key", &r.keys, |u| {
        format!("`{}` ({})", u.name, u.account.as_deref().unwrap_or(""))
    });

    let _ = writeln!(md, "\n## Quota ledger today (US/Pacific day, all runs)\n");
    let _ = writeln!(
        md,
        "| account | model | day | requests | ok | input tokens | output tokens | cost (USD) |\n|---|---|---|---:|---:|---:|---:|---:|"
    );
    for l in &r.ledger {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            l.account,
            l.model,
            l.day,
            l.requests,
            l.ok,
            l.input_tokens,
            l.output_tokens,
            usd(l.cost_usd, 4)
        );
    }
    md
}

/// The Hosts section: a shared run, host by host.
pub(super) fn section_hosts(md: &mut String, hosts: &RunHosts) {
    let _ = writeln!(md, "## Hosts\n\n{}\n", hosts_note(hosts));
    let rows = host_rows(hosts).map(|(host, cells)| (host.to_owned(), cells));
    cells_table(md, "host", &HOST_COLUMNS, rows);
}

/// The run's uploads per account, and what `media.on_unavailable` did.
fn uploads(md: &mut String, r: &Report) {
    let _ = writeln!(md, "\n## Uploads\n");
    let rows = r
        .uploads
        .iter()
        .map(|u| (u.account.clone(), upload_cells(u)));
    cells_table(md, "account", &UPLOAD_COLUMNS, rows);
    for line in upload_policy(r) {
        let _ = writeln!(md, "\n{line}");
    }
}

/// The batches of a `run --batch`: what the batch price saved, and each
/// batch's duration from submission to the end keyfan saw.
fn batches(md: &mut String, r: &Report) {
    let (saving, notes) = r.batch_notes();
    let _ = writeln!(
        md,
        "
## Batches

{saving}
"
    );
    let rows = r
        .batches
        .iter()
        .map(|b| (b.display_name.clone(), batch_cells(b)));
    cells_table(md, "batch", &BATCH_COLUMNS, rows);
    for note in notes {
        let _ = writeln!(
            md,
            "
- {note}"
        );
    }
}

fn table(md: &mut String, first: &str, rows: &[Usage], name: impl Fn(&Usage) -> String) {
    cells_table(
        md,
        first,
        &USAGE_COLUMNS,
        rows.iter().map(|u| (name(u), u.cells())),
    );
}

/// A table of named rows of cells under `columns`.
fn cells_table<const N: usize>(
    md: &mut String,
    first: &str,
    columns: &[&str; N],
    rows: impl Iterator<Item = (String, [String; N])>,
) {
    let _ = writeln!(
        md,
        "| {first} | {} |\n|---|{}",
        columns.join(" | "),
        "---:|".repeat(N)
    );
    for (name, cells) in rows {
        let _ = writeln!(md, "| {name} | {} |", cells.join(" | "));
    }
}
