//! `keyfan report --format md|json|csv|html`, rebuilt from the state file
//! alone, and the HTML report `keyfan run` writes.

use crate::support::*;

/// A run of 12 items over two projects with RPM and RPD limits, then each
/// format of its report from the state file.
#[tokio::test]
async fn every_format_is_rebuilt_from_the_state_file_and_the_html_is_well_formed() {
    let (sim, work) = scenario(&two_projects(0, 5), 12, |base_url| {
        config(
            base_url,
            &[
                ("proj-a", &["test-key-a1", "test-key-a2"]),
                ("proj-b", &["test-key-b1"]),
            ],
            "",
        )
        .replace(
            "      - \"test-key-a2\"\n",
            "      - \"test-key-a2\"\n    limits: { gemini-2.5-flash: { rpm: 600, rpd: 40 } }\n",
        )
    })
    .await;
    let out = work.keyfan(&run_args("state.db", &[]), &[]).await;
    assert!(out.status.success(), "{}", explain(&out));
    let written = work.read("job.report.html");
    drop(sim);

    let report = |format: &'static str| {
        let work = &work;
        async move {
            let out = work
                .keyfan(&["report", "--state", "state.db", "--format", format], &[])
                .await;
            assert!(out.status.success(), "{}", explain(&out));
            String::from_utf8(out.stdout).expect("UTF-8")
        }
    };
    let json: serde_json::Value = serde_json::from_str(&report("json").await).unwrap();
    assert_eq!(json["totals"]["requests"], 12);
    assert_eq!(json["limits"][0]["rpm"], 600);
    let per_minute: u64 = json["per_minute"]["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|a| a[1].as_array().unwrap())
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(per_minute, 12, "{}", json["per_minute"]);
    let alias = work
        .keyfan(&["report", "--state", "state.db", "--json"], &[])
        .await;
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&alias.stdout).unwrap()["totals"],
        json["totals"]
    );

    let csv = report("csv").await;
    let mut rows = csv.lines();
    assert!(rows
        .next()
        .unwrap()
        .starts_with("account,model,requests,ok,"));
    let requests: u64 = rows
        .map(|r| r.split(',').nth(2).unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(requests, 12, "{csv}");

    let html = report("html").await;
    assert_eq!(html.trim_end(), written.trim_end(), "run and report agree");
    assert_well_formed(&html);
    for absent in ["<script", "<link", "src=", "href=", "@import", "url("] {
        assert!(
            !html.contains(absent),
            "the page fetches something: {absent}"
        );
    }
    let cost = json["totals"]["cost_usd"].as_f64().unwrap();
    for says in [
        "<svg".to_owned(),
        "limit 600 RPM".to_owned(),
        "<b>12</b><span>items</span>".to_owned(),
        "<b>12</b><span>requests</span>".to_owned(),
        format!("${cost:.4}"),
        format!(
            "{:.0}% of 40 RPD",
            json["ledger"][0]["requests"].as_f64().unwrap() * 100.0 / 40.0
        ),
    ] {
        assert!(
            html.contains(&says),
            "`{says}` missing from the HTML report"
        );
    }
    assert!(report("md").await.starts_with("# keyfan report: run 1"));
}

/// Checks that every element of `html` is closed in order (void elements
/// written `<x/>`), as an XML parser would.
fn assert_well_formed(html: &str) {
    let mut open: Vec<&str> = Vec::new();
    let mut rest = html;
    while let Some(at) = rest.find('<') {
        let end = rest[at..].find('>').expect("an unclosed tag") + at;
        let tag = &rest[at + 1..end];
        rest = &rest[end + 1..];
        if tag.starts_with('!') {
            continue;
        }
        let name = tag
            .trim_start_matches('/')
            .split(|c: char| c.is_whitespace() || c == '/')
            .next()
            .unwrap();
        if let Some(closing) = tag.strip_prefix('/') {
            assert_eq!(
                open.pop(),
                Some(closing.trim()),
                "</{closing}> out of order"
            );
        } else if !tag.ends_with('/') {
            open.push(name);
        }
    }
    assert!(open.is_empty(), "never closed: {open:?}");
    assert!(!rest.contains('>'), "a stray `>`");
}
