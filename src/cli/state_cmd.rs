//! `keyfan runs` and `keyfan report`: read a state file, send nothing.

use super::{exit, open_state, print_json, Failure, ReportArgs, ReportFormat, RunsArgs};
use crate::report::Report;
use crate::store::RunId;
use anyhow::anyhow;

pub(super) fn runs(args: RunsArgs) -> Result<u8, Failure> {
    let store = open_state(&args.state)?;
    let runs = store.runs()?;
    if args.json {
        let mut out = Vec::new();
        for run in &runs {
            let counts: std::collections::BTreeMap<&str, u64> = store
                .status_counts(run.id)?
                .into_iter()
                .map(|(status, n)| (status.as_str(), n))
                .collect();
            out.push(serde_json::json!({ "run": run, "items": counts }));
        }
        print_json(&out)?;
        return Ok(exit::OK);
    }
    println!(
        "{:>4}  {:<11} {:<24} {:<24} job / items",
        "run", "status", "started", "finished"
    );
    for run in &runs {
        let counts = super::progress::counts(&store.status_counts(run.id)?);
        println!(
            "{:>4}  {:<11} {:<24} {:<24} {}{} / {}",
            run.id.0,
            run.status,
            run.started_at,
            run.finished_at.as_deref().unwrap_or("-"),
            run.job_path,
            if run.simulated { " (SIMULATED)" } else { "" },
            counts,
        );
    }
    Ok(exit::OK)
}

pub(super) fn report(args: ReportArgs) -> Result<u8, Failure> {
    let store = open_state(&args.state)?;
    let run = match args.run {
        Some(id) => RunId(id),
        None => store
            .runs()?
            .first()
            .map(|r| r.id)
            .ok_or_else(|| Failure::usage(anyhow!("{} holds no run", args.state.display())))?,
    };
    if store.run(run)?.is_none() {
        return Err(Failure::usage(anyhow!(
            "{} has no run {}",
            args.state.display(),
            run.0
        )));
    }
    let report = Report::build(&store, run)?;
    let format = if args.json {
        ReportFormat::Json
    } else {
        args.format
    };
    let text = match format {
        ReportFormat::Md => report.to_markdown(),
        ReportFormat::Json => report.to_json(),
        ReportFormat::Csv => report.to_csv(),
        ReportFormat::Html => report.to_html(),
    };
    print!("{}", text.trim_end());
    println!();
    Ok(exit::OK)
}
