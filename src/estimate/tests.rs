use super::*;
use crate::config::MissingEnv;
use crate::store::LedgerRow;
use std::path::PathBuf;

fn config(text: &str) -> Config {
    Config::parse(
        text,
        Path::new("config.yaml"),
        |_| None,
        MissingEnv::Placeholder,
    )
    .expect("a valid config")
}

fn job(lines: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.jsonl");
    std::fs::write(&path, lines).unwrap();
    (dir, path)
}

const TWO_PROJECTS: &str = "
accounts:
  - name: a
    keys: [k1]
    limits: { gemini-2.5-flash: { rpm: 2, tpm: 1000000, rpd: 3 } }
  - name: b
    keys: [k2]
    limits: { gemini-2.5-flash: { rpm: 2, tpm: 1000000, rpd: 3 } }
";

#[test]
fn a_small_job_equals_the_hand_computed_figures() {
    // 40 ASCII characters = 10 tokens; 8 hanzi = 8 tokens; with a system of
    // 8 ASCII characters = 2 tokens.
    let (_dir, path) = job(&format!(
        "{{\"id\":\"1\",\"prompt\":\"{}\",\"max_output_tokens\":100}}\n\
         {{\"id\":\"2\",\"prompt\":\"机器学习机器学习\",\"system\":\"be terse\"}}\n",
        "a".repeat(40)
    ));
    let e = estimate(
        &path,
        &config(TWO_PROJECTS),
        Expected {
            tokens_per_item: 200,
            from: "--expect-output".to_owned(),
        },
        &[],
        &Counts::new(),
    )
    .unwrap();
    let f = &e.total;
    assert_eq!(f.items, 2);
    assert_eq!(f.input_tokens, 10 + 8 + 2);
    // Item 1's expected output is capped at its own 100.
    assert_eq!(f.output_tokens_expected, 100 + 200);
    assert_eq!(f.output_tokens_worst, 100 + 8192);
    // gemini-2.5-flash: $0.30 in, $2.50 out per 1M.
    let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-12, "{a} != {b}");
    close(f.cost.expected_usd, (20.0 * 0.30 + 300.0 * 2.50) / 1e6);
    close(f.cost.worst_usd, (20.0 * 0.30 + 8292.0 * 2.50) / 1e6);
    close(f.cost.expected_batch_usd, f.cost.expected_usd / 2.0);
    close(f.cost.worst_batch_usd, f.cost.worst_usd / 2.0);
    let wall = &e.models[0].wall_time;
    assert_eq!((wall.rpm, wall.rpd, wall.days), (Some(4), Some(6), 1));
    assert_eq!(wall.minutes, Some(0.5));
    assert_eq!(wall.summary, "under a minute at 2 projects × 2 RPM");
}

#[test]
fn the_day_quota_left_by_the_ledger_defers_the_rest() {
    let lines: String = (0..20)
        .map(|i| format!("{{\"id\":\"{i}\",\"prompt\":\"p\"}}\n"))
        .collect();
    let (_dir, path) = job(&lines);
    let used = LedgerRow {
        account: "a".to_owned(),
        model: "gemini-2.5-flash".to_owned(),
        day: "2026-01-01".to_owned(),
        requests: 2,
        ok: 2,
        input_tokens: 0,
        output_tokens: 0,
        cost_usd: Some(0.0),
    };
    let config = config(TWO_PROJECTS);
    let e = estimate(
        &path,
        &config,
        Expected::pick(None, &config),
        &[used],
        &Counts::new(),
    )
    .unwrap();
    let wall = &e.models[0].wall_time;
    // 6 a day, 2 spent: 4 today, 16 over the next 3 days.
    assert_eq!(wall.rpd_left_today, Some(4));
    assert_eq!((wall.deferred_items, wall.days), (16, 4));
    assert_eq!(wall.minutes, Some(1.0));
    assert_eq!(
        wall.summary,
        "about 1 min at 2 projects × 2 RPM; RPD allows 4 today: the rest (16) is deferred \
         over the next 3 days (Pacific)"
    );
    assert_eq!(e.expected_output.from, "default");
}

#[test]
fn a_model_without_a_price_is_an_error_naming_it_and_its_line() {
    let (_dir, path) = job(
        "{\"id\":\"1\",\"prompt\":\"p\"}\n{\"id\":\"2\",\"prompt\":\"p\",\"model\":\"llama3\"}\n",
    );
    let config = config(
        "accounts:\n  - { name: a, keys: [k1] }\n  - { name: o, provider: openai, keys: [k2] }\n",
    );
    let error = estimate(
        &path,
        &config,
        Expected::pick(None, &config),
        &[],
        &Counts::new(),
    )
    .unwrap_err();
    assert!(
        error.to_string().contains("model `llama3` (line 2)"),
        "{error}"
    );
    let priced = Config {
        prices: {
            let mut table = config.prices.clone();
            table.set(crate::price::PriceEntry {
                model: "llama3".to_owned(),
                price: crate::price::Price {
                    input: 0.0,
                    output: 0.0,
                    cached_input: 0.0,
                    long: None,
                },
                source: "config".to_owned(),
                date: "config.yaml".to_owned(),
            });
            table
        },
        ..config
    };
    let e = estimate(
        &path,
        &priced,
        Expected::pick(None, &priced),
        &[],
        &Counts::new(),
    )
    .unwrap();
    assert_eq!(e.models.len(), 2);
    assert_eq!(
        e.models[1].wall_time.summary,
        "unknown: no rpm or tpm configured for it in 1 account(s), so the APIs' own limits decide"
    );
}

#[test]
fn the_plan_tallied_during_validation_has_the_estimates_figures() {
    let (_dir, path) = job(
        "{\"id\":\"1\",\"prompt\":\"aaaaaaaa\",\"max_output_tokens\":100}\n\
         {\"id\":\"2\",\"prompt\":\"机器学习\",\"model\":\"gemini-2.5-pro\"}\n\
         {\"id\":\"3\",\"prompt\":\"no such field\",\"promt\":\"x\"}\n\
         {\"id\":\"4\",\"prompt\":\"aaaa\",\"model\":\"unpriced-model\"}\n\
         {\"id\":\"1\",\"prompt\":\"a duplicate id is not tallied\"}\n",
    );
    let config = config(TWO_PROJECTS);
    let mut planner = Planner::new(&config);
    let validation = crate::job::validate_with(&path, |item| planner.add(item)).unwrap();
    assert_eq!(validation.items, 3);
    let rows = planner.rows();
    let models: Vec<&str> = rows.iter().map(|r| r.model.as_str()).collect();
    assert_eq!(
        models,
        [config.model.as_str(), "gemini-2.5-pro", "unpriced-model"]
    );
    let (tallies, invalid, _) = tally(
        &path,
        &config,
        &Expected::pick(None, &config),
        &Counts::new(),
    )
    .unwrap();
    assert_eq!(invalid.0, 2);
    for (row, tally) in rows.iter().zip(&tallies) {
        let f = &tally.figures;
        assert_eq!(row.items, f.items);
        assert_eq!(row.input_tokens, f.input_tokens);
        assert_eq!(row.output_tokens_expected, f.output_tokens_expected);
        assert_eq!(row.output_tokens_worst, f.output_tokens_worst);
        let known = tally.price.is_some();
        assert_eq!(row.cost_expected_usd, known.then_some(f.cost.expected_usd));
        assert_eq!(row.cost_worst_usd, known.then_some(f.cost.worst_usd));
    }
    assert_eq!(rows[0].output_tokens_expected, 100);
    assert_eq!(rows[2].cost_worst_usd, None);
}
