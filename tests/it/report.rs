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

    let report = |format| report_of(&work, "state.db", format);
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

/// `keyfan report --state STATE --format FORMAT`'s output.
async fn report_of(work: &Workdir, state: &str, format: &str) -> String {
    let out = work
        .keyfan(&["report", "--state", state, "--format", format], &[])
        .await;
    assert!(out.status.success(), "{}", explain(&out));
    String::from_utf8(out.stdout).expect("UTF-8")
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

/// A run with a priced Gemini model and an OpenAI-compatible model that has
/// no price: every figure the unpriced model is part of is unknown (`null`,
/// `?`) in every format and in `keys status`, never 0; the priced model's
/// figures stay known.
#[tokio::test]
async fn a_model_without_a_price_shows_an_unknown_cost_in_every_format() {
    let sim =
        simulator(&(TWO_PROVIDER_PROJECTS.to_owned() + "models: [gemini-2.5-flash, llama3]\n"))
            .await;
    let work = two_providers(&sim.base_url(), 6, "llama3");
    let out = work.keyfan(&run_args("s.db", &["--offline"]), &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    for row in results(&work.path("job.results.jsonl")) {
        let known = row["model"] == "gemini-2.5-flash";
        assert_eq!(row["cost"].is_f64(), known, "{row}");
    }
    let report = |format| report_of(&work, "s.db", format);

    let json: serde_json::Value = serde_json::from_str(&report("json").await).unwrap();
    let cost_of = |rows: &serde_json::Value, name: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name || r["account"] == name && r.get("model").is_some())
            .unwrap_or_else(|| panic!("{name} missing from {rows}"))["cost_usd"]
            .clone()
    };
    assert!(json["totals"]["cost_usd"].is_null(), "{}", json["totals"]);
    assert!(cost_of(&json["models"], "llama3").is_null());
    assert!(
        cost_of(&json["models"], "gemini-2.5-flash")
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(cost_of(&json["accounts"], "o").is_null());
    assert!(cost_of(&json["accounts"], "g").as_f64().unwrap() > 0.0);
    for key in json["keys"].as_array().unwrap() {
        assert_eq!(key["cost_usd"].is_null(), key["account"] == "o", "{key}");
    }
    for row in json["ledger"].as_array().unwrap() {
        assert_eq!(row["cost_usd"].is_null(), row["model"] == "llama3", "{row}");
    }

    let csv = report("csv").await;
    for row in csv.lines().skip(1) {
        let cells: Vec<&str> = row.split(',').collect();
        let cost = cells[9];
        match cells[1] {
            "llama3" => assert_eq!(cost, "?", "{csv}"),
            _ => assert!(cost.parse::<f64>().unwrap() > 0.0, "{csv}"),
        }
    }

    let md = report("md").await;
    let row_of = |text: &str, start: &str| -> String {
        text.lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no `{start}` row in:\n{text}"))
            .to_owned()
    };
    assert!(row_of(&md, "| all |").contains("| ? |"), "{md}");
    assert!(row_of(&md, "| o |").contains("| ? |"), "{md}");
    assert!(!row_of(&md, "| g |").contains('?'), "{md}");
    assert!(row_of(&md, "| o | llama3 |").ends_with("| ? |"), "{md}");

    let html = report("html").await;
    assert!(html.contains("<b>?</b><span>cost (USD)</span>"), "{html}");
    let model_row = html
        .split("<tr><td>llama3</td>")
        .nth(1)
        .expect("llama3's row");
    let model_row = &model_row[..model_row.find("</tr>").unwrap()];
    assert!(model_row.contains("<td class=\"n\">?</td>"), "{model_row}");
    assert_well_formed(&html);

    let keys_status = |extra: &'static [&'static str]| {
        let args = [
            &[
                "keys",
                "status",
                "--config",
                "config.yaml",
                "--state",
                "s.db",
            ],
            extra,
        ]
        .concat();
        let work = &work;
        async move {
            let out = work.keyfan(&args, &[]).await;
            assert!(out.status.success(), "{}", explain(&out));
            out.stdout
        }
    };
    let status: serde_json::Value =
        serde_json::from_slice(&keys_status(&["--json"]).await).unwrap();
    for row in status["usage"].as_array().unwrap() {
        assert_eq!(row["cost_usd"].is_null(), row["model"] == "llama3", "{row}");
    }
    let text = keys_status(&[]).await;
    let text = String::from_utf8(text).unwrap();
    assert!(row_of(&text, "o ").trim_end().ends_with(" ?"), "{text}");
    let g = row_of(&text, "g ");
    assert!(
        g.split_whitespace().last().unwrap().parse::<f64>().unwrap() > 0.0,
        "{text}"
    );
}

/// `keyfan run` stores the estimate before it sends anything, and every
/// report format sets it against what the run used, per model.
#[tokio::test]
async fn the_report_sets_the_estimate_made_before_the_run_against_its_actual_use() {
    let (_sim, work) = scenario(&two_projects(0, 0), 12, |url| two_accounts(url, "")).await;
    let before = work
        .keyfan(
            &["estimate", "job.jsonl", "--config", "config.yaml", "--json"],
            &[],
        )
        .await;
    assert!(before.status.success(), "{}", explain(&before));
    let before: serde_json::Value = serde_json::from_slice(&before.stdout).unwrap();
    let out = work.keyfan(&run_args("s.db", &[]), &[]).await;
    assert!(out.status.success(), "{}", explain(&out));

    let json: serde_json::Value =
        serde_json::from_str(&work.read("job.report.json")).expect("report JSON");
    let versus = json["estimate_vs_actual"].as_array().unwrap();
    assert_eq!(versus.len(), 1, "{versus:?}");
    let (v, e) = (&versus[0], &before["models"][0]);
    assert_eq!(v["model"], "gemini-2.5-flash");
    // The estimate is `keyfan estimate`'s, made by the same code.
    assert_eq!(v["estimated"]["items"], 12);
    for field in [
        "input_tokens",
        "output_tokens_expected",
        "output_tokens_worst",
    ] {
        assert_eq!(v["estimated"][field], e[field], "{field}");
    }
    let close = |a: &serde_json::Value, b: &serde_json::Value| {
        (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-6
    };
    assert!(close(
        &v["estimated"]["cost_expected_usd"],
        &e["cost"]["expected_usd"]
    ));
    assert!(close(
        &v["estimated"]["cost_worst_usd"],
        &e["cost"]["worst_usd"]
    ));
    // The actual is what the run's attempts used.
    let model = &json["models"][0];
    assert_eq!(v["actual"]["items"], 12);
    assert_eq!(v["actual"]["input_tokens"], model["input_tokens"]);
    assert_eq!(v["actual"]["output_tokens"], model["output_tokens"]);
    assert!(close(&v["actual"]["cost_usd"], &model["cost_usd"]));
    assert!(model["cost_usd"].as_f64().unwrap() > 0.0);

    let md = work.read("job.report.md");
    let row = md
        .split("## Estimate against actual")
        .nth(1)
        .unwrap_or_else(|| panic!("no estimate section in:\n{md}"))
        .lines()
        .find(|l| l.starts_with("| gemini-2.5-flash | 12 | 12 |"))
        .unwrap_or_else(|| panic!("no estimate row in:\n{md}"));
    let cells: Vec<&str> = row.split(" | ").collect();
    assert_eq!(cells[3], e["input_tokens"].to_string(), "{row}");
    assert_eq!(
        cells[10].trim_end_matches(" |"),
        format!("{:.4}", model["cost_usd"].as_f64().unwrap()),
        "{row}"
    );
    let html = work.read("job.report.html");
    assert!(html.contains("<h2>Estimate against actual</h2>"), "{html}");
    assert!(html.contains("gemini-2.5-flash · estimate"), "{html}");
    assert!(html.contains("gemini-2.5-flash · actual"), "{html}");
    assert_well_formed(&html);
}
