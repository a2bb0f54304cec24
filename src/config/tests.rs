use super::*;

const KEY_1: &str = "AIzaSyD-first-test-key-0000000000001";
const KEY_2: &str = "AIzaSyD-second-test-key-000000000002";

/// The example of the design doc, field for field.
const FULL: &str = r#"
providers:
  gemini: { base_url: http://127.0.0.1:8089/ }
accounts:
  - name: proj-a
    provider: gemini
    keys:
      - ${GEMINI_API_KEY_1}
      - key: ${GEMINI_API_KEY_2}
        weight: 2
        group: main
    limits:
      gemini-2.5-flash: { rpm: 10, tpm: 250000, rpd: 250 }
    proxy: http://127.0.0.1:3128
model: gemini-2.5-flash
concurrency: 16
timeout: 60s
max_retries: 5
"#;

fn env(name: &str) -> Option<String> {
    match name {
        "GEMINI_API_KEY_1" => Some(KEY_1.to_owned()),
        "GEMINI_API_KEY_2" => Some(KEY_2.to_owned()),
        "EMPTY" => Some(String::new()),
        _ => None,
    }
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("config.yaml"), env, MissingEnv::Error)
}

/// The error message of a config that must fail; also checks that no test
/// key leaked into it.
fn error(text: &str) -> String {
    let message = parse(text)
        .expect_err("config should be rejected")
        .to_string();
    for key in [KEY_1, KEY_2] {
        assert!(!message.contains(key), "key leaked: {message}");
    }
    message
}

/// A minimal valid config with `extra` lines appended: indented by four
/// spaces they belong to the account, unindented to the top level.
fn with(extra: &str) -> String {
    format!("accounts:\n  - name: a\n    keys: [k1]\n{extra}")
}

#[test]
fn the_full_example_parses() {
    let config = parse(FULL).unwrap();
    assert_eq!(
        config.providers[&ProviderKind::Gemini].base_url,
        "http://127.0.0.1:8089"
    );
    assert_eq!(
        config.providers[&ProviderKind::Openai].base_url,
        "https://api.openai.com"
    );
    let account = &config.accounts[0];
    assert_eq!(account.name, "proj-a");
    assert_eq!(account.provider, ProviderKind::Gemini);
    assert_eq!(account.keys[0].key.expose(), KEY_1);
    assert_eq!(
        (account.keys[0].weight, account.keys[0].group.as_str()),
        (1, "default")
    );
    assert_eq!(account.keys[1].key.expose(), KEY_2);
    assert_eq!(
        (account.keys[1].weight, account.keys[1].group.as_str()),
        (2, "main")
    );
    assert_eq!(
        account.limits["gemini-2.5-flash"],
        Limits {
            rpm: Some(10),
            tpm: Some(250_000),
            otpm: None,
            rpd: Some(250)
        }
    );
    assert_eq!(account.proxy.as_deref(), Some("http://127.0.0.1:3128"));
    assert_eq!(config.model, "gemini-2.5-flash");
    assert_eq!(config.concurrency, 16);
    assert_eq!(config.timeout, Duration::from_secs(60));
    assert_eq!(config.max_retries, 5);
}

#[test]
fn omitted_fields_take_their_defaults() {
    let config = parse("accounts:\n  - name: a\n    keys: [k1]\n").unwrap();
    assert_eq!(
        config.providers[&ProviderKind::Gemini].base_url,
        "https://generativelanguage.googleapis.com"
    );
    assert_eq!(config.providers.len(), ALL_PROVIDERS.len());
    assert_eq!(config.model, "gemini-2.5-flash");
    assert_eq!(config.concurrency, 8);
    assert_eq!(config.timeout, Duration::from_secs(60));
    assert_eq!(config.max_retries, 5);
    assert!(config.accounts[0].limits.is_empty());
    assert_eq!(config.accounts[0].proxy, None);
}

#[test]
fn the_shipped_example_parses_in_placeholder_mode() {
    let text = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.yaml"));
    let config = Config::parse(
        text,
        Path::new("config.example.yaml"),
        |_| None,
        MissingEnv::Placeholder,
    )
    .unwrap();
    let names: Vec<&str> = config.accounts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["proj-a", "proj-b"]);
    assert_eq!(config.accounts[0].keys[1].key.expose(), "sim-proj-a-2");
    assert_eq!(
        config.accounts[1].limits["gemini-2.5-flash"],
        Limits {
            rpm: Some(1000),
            tpm: Some(1_000_000),
            otpm: None,
            rpd: Some(10_000)
        }
    );
    assert_eq!(
        (config.model.as_str(), config.concurrency),
        ("gemini-2.5-flash", 16)
    );
}

#[test]
fn a_missing_variable_names_the_variable_and_the_field() {
    let text = FULL.replace("GEMINI_API_KEY_2", "GEMINI_API_KEY_9");
    assert_eq!(
        error(&text),
        "config.yaml: accounts[0].keys[1]: environment variable GEMINI_API_KEY_9 is not set"
    );
}

#[test]
fn placeholder_mode_substitutes_only_missing_keys() {
    let text = FULL.replace("GEMINI_API_KEY_2", "GEMINI_API_KEY_9");
    let config = Config::parse(
        &text,
        Path::new("config.yaml"),
        env,
        MissingEnv::Placeholder,
    )
    .unwrap();
    let keys = &config.accounts[0].keys;
    assert_eq!(keys[0].key.expose(), KEY_1);
    assert_eq!(keys[1].key.expose(), "sim-proj-a-2");
}

#[test]
fn embedded_variables_expand() {
    let config = parse(&with("").replace("k1", "'prefix-${GEMINI_API_KEY_1}'")).unwrap();
    assert_eq!(
        config.accounts[0].keys[0].key.expose(),
        format!("prefix-{KEY_1}")
    );
}

#[test]
fn an_empty_key_is_rejected() {
    assert_eq!(
        error(&with("").replace("k1", "'${EMPTY}'")),
        "config.yaml: accounts[0].keys[0]: key is empty after expanding environment variables"
    );
    assert_eq!(
        error(&with("").replace("[k1]", "[k1, '  ']")),
        "config.yaml: accounts[0].keys[1]: key is empty"
    );
}

#[test]
fn a_duplicate_key_names_both_places_but_not_the_key() {
    let text = format!(
        "accounts:\n  - name: a\n    keys: [{KEY_1}]\n  - name: b\n    keys:\n      - k2\n      - ${{GEMINI_API_KEY_1}}\n"
    );
    let message = error(&text);
    assert_eq!(
        message,
        format!(
            "config.yaml: accounts[1].keys[1]: key {} is already listed at accounts[0].keys[0]",
            ApiKey::new(KEY_1).fingerprint()
        )
    );
}

#[test]
fn duplicate_account_names_are_rejected() {
    let text = "accounts:\n  - name: a\n    keys: [k1]\n  - name: a\n    keys: [k2]\n";
    assert_eq!(
        error(text),
        "config.yaml: accounts[1].name: duplicate account name `a`, also used by accounts[0]"
    );
}

#[test]
fn unknown_fields_are_named() {
    let message = error(&with("concurency: 16\n"));
    assert!(
        message.starts_with("config.yaml: unknown field `concurency`"),
        "{message}"
    );
    assert!(message.contains("line 4 column 1"), "{message}");

    let message = error(&with("    limit: {}\n"));
    assert!(
        message.contains("accounts[0]: unknown field `limit`"),
        "{message}"
    );

    let message = error(&with("    limits:\n      m: { rpn: 1 }\n"));
    assert!(
        message.contains("accounts[0].limits.m: unknown field `rpn`"),
        "{message}"
    );

    let message = error(&with("").replace("[k1]", "[{key: k1, wieght: 2}]"));
    assert!(
        message.contains("accounts[0].keys[0]: unknown field `wieght`"),
        "{message}"
    );

    let message = error(&with("providers:\n  mistral: { base_url: http://x }\n"));
    assert!(message.contains("unknown variant `mistral`"), "{message}");
}

#[test]
fn anthropic_accounts_otpm_and_the_default_output_cap() {
    let config = parse(
        "accounts:\n  - name: org-a\n    provider: anthropic\n    keys: [k1]\n    \
         limits: { claude-sonnet-4-5: { rpm: 50, tpm: 30000, otpm: 8000 } }\n\
         default_max_output_tokens: 1024\n",
    )
    .unwrap();
    assert_eq!(
        config.providers[&ProviderKind::Anthropic].base_url,
        "https://api.anthropic.com"
    );
    let account = &config.accounts[0];
    assert_eq!(account.provider, ProviderKind::Anthropic);
    assert_eq!(account.limits["claude-sonnet-4-5"].otpm, Some(8000));
    assert_eq!(config.default_max_output_tokens, 1024);
    assert_eq!(
        config.route("claude-sonnet-4-5"),
        Some((ProviderKind::Anthropic, "claude-sonnet-4-5"))
    );
    assert_eq!(
        parse(&with("")).unwrap().default_max_output_tokens,
        crate::provider::DEFAULT_MAX_OUTPUT_TOKENS
    );
    let message = error(&with("default_max_output_tokens: 0\n"));
    assert!(message.contains("default_max_output_tokens"), "{message}");
}

#[test]
fn the_models_map_routes_any_name_to_a_provider_and_is_validated() {
    let two = "accounts:\n  - name: a\n    keys: [k1]\n  - name: o\n    provider: openai\n    keys: [k2]\n";
    let config = parse(&format!(
        "{two}models:\n  fast: {{ provider: openai, name: meta-llama/llama-3.1-8b-instruct }}\n  \
         cheap: {{ provider: gemini, name: gemini-2.5-flash-lite }}\n"
    ))
    .unwrap();
    assert_eq!(
        config.route("fast"),
        Some((ProviderKind::Openai, "meta-llama/llama-3.1-8b-instruct"))
    );
    assert_eq!(
        config.route("cheap"),
        Some((ProviderKind::Gemini, "gemini-2.5-flash-lite"))
    );
    // Names not in the map route by their name, as before.
    assert_eq!(
        config.route("gpt-4o"),
        Some((ProviderKind::Openai, "gpt-4o"))
    );
    assert_eq!(
        config.route("claude-haiku-4-5"),
        Some((ProviderKind::Openai, "claude-haiku-4-5"))
    );

    let message = error(&format!(
        "{two}models:\n  x: {{ provider: openai, nme: y }}\n"
    ));
    assert!(
        message.contains("models.x: unknown field `nme`"),
        "{message}"
    );
    let message = error(&format!("{two}models:\n  x: {{ provider: openai }}\n"));
    assert!(message.contains("missing field `name`"), "{message}");
    let message = error(&format!(
        "{two}models:\n  x: {{ provider: openai, name: \"a b\" }}\n"
    ));
    assert!(
        message.contains("models.x.name") && message.contains("not a model name"),
        "{message}"
    );
    let message = error(&format!(
        "{two}models:\n  x: {{ provider: anthropic, name: claude-x }}\n"
    ));
    assert!(
        message.ends_with("models.x.provider: no account has provider anthropic"),
        "{message}"
    );
}

#[test]
fn key_entries_take_both_forms() {
    let text = with("").replace("[k1]", "\n      - k1\n      - { key: k2, group: g }\n");
    let keys = &parse(&text).unwrap().accounts[0].keys;
    assert_eq!(
        (keys[0].key.expose(), keys[0].weight, keys[0].group.as_str()),
        ("k1", 1, "default")
    );
    assert_eq!(
        (keys[1].key.expose(), keys[1].weight, keys[1].group.as_str()),
        ("k2", 1, "g")
    );

    let message = error(&with("").replace("[k1]", "[{weight: 2}]"));
    assert!(
        message.contains("accounts[0].keys[0]: missing field `key`"),
        "{message}"
    );
    let message = error(&with("").replace("[k1]", "[123456789]"));
    assert!(
        message.contains("accounts[0].keys[0]: a numeric key must be quoted")
            && !message.contains("123456789"),
        "{message}"
    );
    let message = error(&with("").replace("[k1]", "[{key: 123456789}]"));
    assert!(
        message.contains("accounts[0].keys[0].key: a numeric key must be quoted")
            && !message.contains("123456789"),
        "{message}"
    );
    let message = error(&with("").replace("[k1]", "[{key: {key: k1}}]"));
    assert!(
        message.contains("keys[0].key: invalid type: map, expected a key string"),
        "{message}"
    );
    let message = error(&with("").replace("[k1]", "[[k1]]"));
    assert!(
        message.contains("accounts[0].keys[0]: invalid type: sequence, expected a key string"),
        "{message}"
    );
}

#[test]
fn durations_take_a_unit() {
    for (text, expected) in [
        ("500ms", Duration::from_millis(500)),
        ("60s", Duration::from_secs(60)),
        ("2m", Duration::from_secs(120)),
        ("1h", Duration::from_secs(3600)),
    ] {
        assert_eq!(
            parse(&with(&format!("timeout: {text}\n"))).unwrap().timeout,
            expected
        );
    }
    for (text, reason) in [
        ("60", "a duration needs a unit: write `60s`"),
        ("'60'", "a duration needs a unit: write `60s`"),
        ("6os", "invalid duration `6os`"),
        ("1.5s", "invalid duration `1.5s`"),
        ("0s", "must be greater than zero"),
        ("1d", "invalid duration `1d`"),
    ] {
        let message = error(&with(&format!("timeout: {text}\n")));
        assert!(
            message.starts_with(&format!("config.yaml: timeout: {reason}")),
            "{message}"
        );
        assert!(message.contains("line 4 column 10"), "{message}");
    }
}

#[test]
fn every_field_check_names_its_field_and_line() {
    for (extra, needle) in [
        (
            "concurrency: 0\n",
            "concurrency: must be at least 1, found 0 at line 4",
        ),
        (
            "concurrency: -3\n",
            "concurrency: invalid type: integer `-3`, expected an integer >= 1 at line 4",
        ),
        (
            "max_retries: -1\n",
            "max_retries: invalid type: integer `-1`, expected u32 at line 4",
        ),
        ("model: ''\n", "model: must not be empty at line 4"),
        (
            "model: gemini-../../evil?x=1\n",
            "model: is not a model name: '?' is not allowed",
        ),
        (
            "providers:\n  gemini: { base_url: ftp://x }\n",
            "providers.gemini.base_url: must start with http:// or https:// at line 5",
        ),
        (
            "providers:\n  openai: { base_url: 'http://' }\n",
            "providers.openai.base_url: has no host at line 5",
        ),
    ] {
        let message = error(&with(extra));
        assert!(message.contains(needle), "{extra:?}: {message}");
    }
    for (extra, needle) in [
        (
            "    proxy: ftp://user:secret@host\n",
            "accounts[0].proxy: must start with http:// or https:// or socks5:// at line 4",
        ),
        (
            "    provider: gemni\n",
            "accounts[0].provider: unknown variant `gemni`",
        ),
        (
            "    limits:\n      gemini-2.5-flash: { rpm: 0 }\n",
            "accounts[0].limits.gemini-2.5-flash.rpm: must be at least 1, found 0 at line 5",
        ),
        (
            "    limits:\n      m: { rpd: 4294967296 }\n",
            "accounts[0].limits.m.rpd: 4294967296 is too large",
        ),
    ] {
        let message = error(&with(extra));
        assert!(message.contains(needle), "{extra:?}: {message}");
        assert!(!message.contains("secret"), "{message}");
    }
    let message = error(&with("").replace("[k1]", "[{key: k1, weight: 0}]"));
    assert!(
        message.contains("accounts[0].keys[0].weight: must be at least 1"),
        "{message}"
    );
    let message = error(&with("").replace("[k1]", "[{key: k1, group: ''}]"));
    assert!(
        message.contains("accounts[0].keys[0].group: must not be empty"),
        "{message}"
    );
    let message = error(&with("").replace("name: a", "name: ' '"));
    assert!(
        message.contains("accounts[0].name: must not be empty"),
        "{message}"
    );
}

#[test]
fn structural_checks_name_their_field() {
    assert_eq!(
        error("accounts: []\n"),
        "config.yaml: accounts: at least one account is required"
    );
    assert_eq!(
        error("accounts:\n  - name: a\n    keys: []\n"),
        "config.yaml: accounts[0].keys: at least one key is required"
    );
    assert!(error("model: x\n").contains("missing field `accounts`"));
    assert!(error("- a\n").contains("expected a config map with `accounts`"));
    assert!(error("accounts: [a]\n").contains("expected an account map with `name` and `keys`"));
    assert!(error("accounts:\n  - keys: [k]\n").contains("accounts[0]: missing field `name`"));
    assert_eq!(
        error(&with("").replace("k1", "'${GEMINI_API_KEY_1'")),
        "config.yaml: accounts[0].keys[0]: unterminated `${` (write `$$` for a literal `$`)"
    );
}

#[test]
fn yaml_syntax_errors_keep_line_and_column() {
    let message = error("accounts:\n  - name: a\n   keys: [k1\n");
    assert!(message.starts_with("config.yaml: "), "{message}");
    assert!(message.contains("line"), "{message}");
}

#[test]
fn a_misplaced_key_is_not_echoed() {
    let message = error(&format!("accounts:\n  - name: a\n    keys: {KEY_1}\n"));
    assert!(
        message.contains("accounts[0].keys: invalid type: a string, expected a sequence"),
        "{message}"
    );
}

#[test]
fn redaction_handles_escaped_quotes() {
    assert_eq!(
        redact_strings(r#"invalid type: string "a\"b", expected u64 at line 1"#),
        "invalid type: a string, expected u64 at line 1"
    );
    assert_eq!(redact_strings("no strings here"), "no strings here");
}

#[test]
fn load_names_the_file_it_could_not_read() {
    let dir = tempfile::tempdir().unwrap();
    // A directory: it exists but cannot be read as a file.
    let err = Config::load(dir.path(), env, MissingEnv::Error).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("failed to read config {}", dir.path().display())
    );
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn a_missing_config_suggests_copying_the_example() {
    let err = Config::load(
        Path::new("/nonexistent/config.yaml"),
        env,
        MissingEnv::Error,
    )
    .unwrap_err();
    let message = err.to_string();
    assert!(
        message.starts_with("config /nonexistent/config.yaml does not exist"),
        "{message}"
    );
    assert!(
        message.contains("cp config.example.yaml config.yaml"),
        "{message}"
    );
}

#[test]
fn load_reads_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, FULL).unwrap();
    let config = Config::load(&path, env, MissingEnv::Error).unwrap();
    assert_eq!(config.accounts[0].name, "proj-a");
    let err = Config::load(&path, |_| None, MissingEnv::Error).unwrap_err();
    assert!(err
        .to_string()
        .starts_with(&format!("{}: accounts[0].keys[0]", path.display())));
}

#[test]
fn the_strategy_defaults_to_hybrid_and_names_its_choices_when_wrong() {
    assert_eq!(parse(&with("")).unwrap().strategy, Strategy::Hybrid);
    let config = parse(&with("strategy: least_in_flight\n")).unwrap();
    assert_eq!(config.strategy, Strategy::LeastInFlight);
    let message = error(&with("strategy: quickest\n"));
    assert!(
        message.contains("strategy") && message.contains("round_robin"),
        "{message}"
    );
}

#[test]
fn groups_are_ordered_by_the_list_then_by_first_use() {
    let text = "accounts:\n  - name: a\n    keys: [k1, {key: k2, group: backup}, {key: k3, group: main}]\ngroups: [main]\n";
    let config = parse(text).unwrap();
    assert_eq!(config.groups, ["main", "default", "backup"]);
    let message =
        error(&format!("{text}groups: [main, nowhere]\n").replace("groups: [main]\n", ""));
    assert!(
        message.contains("groups[1]") && message.contains("nowhere"),
        "{message}"
    );
}

#[test]
fn an_item_deadline_is_a_duration() {
    assert_eq!(parse(&with("")).unwrap().item_deadline, None);
    let config = parse(&with("item_deadline: 10m\n")).unwrap();
    assert_eq!(config.item_deadline, Some(Duration::from_secs(600)));
    assert!(error(&with("item_deadline: soon\n")).contains("item_deadline"));
}

#[test]
fn concurrency_has_a_documented_maximum() {
    let config = parse(&with(&format!("concurrency: {MAX_CONCURRENCY}\n"))).unwrap();
    assert_eq!(config.concurrency, MAX_CONCURRENCY);
    assert_eq!(
        error(&with("concurrency: 1000000000\n")),
        "config.yaml: concurrency: 1000000000 is more than the maximum, 10000"
    );
}

#[test]
fn a_base_url_that_does_not_parse_is_named() {
    for url in ["'https://[::1'", "'http://host:99999'"] {
        let message = error(&with(&format!(
            "providers:\n  gemini: {{ base_url: {url} }}\n"
        )));
        assert!(
            message.contains("providers.gemini.base_url: is not a valid URL"),
            "{url}: {message}"
        );
    }
}

#[test]
fn a_key_that_cannot_be_a_header_is_named_but_not_shown() {
    let secret = "AIzaSyD-broken";
    for (written, what) in [
        (format!("\"{secret}\\nsecond-line\""), "a line break"),
        (format!("\"{secret} tail\""), "a space"),
        (format!("\"{secret}\\u0007\""), "a control character"),
        (format!("\"{secret}é\""), "a non-ASCII character"),
    ] {
        let text = format!("accounts:\n  - name: a\n    keys: [k0, {written}]\n");
        let message = error(&text);
        assert_eq!(
            message,
            format!(
                "config.yaml: accounts[0].keys[1]: key contains {what}, which cannot be sent in an HTTP header"
            )
        );
        assert!(!message.contains(secret), "{message}");
    }
    // Also when the bad character comes from the environment.
    let message = Config::parse(
        "accounts:\n  - name: a\n    keys: ['${K}']\n",
        Path::new("config.yaml"),
        |_| Some("abc\ndef".to_owned()),
        MissingEnv::Error,
    )
    .unwrap_err()
    .to_string();
    assert!(
        message.contains("accounts[0].keys[0]: key contains a line break"),
        "{message}"
    );
}

#[test]
fn the_media_section_reads_the_upload_lifecycle_keys() {
    let defaults = parse(FULL).unwrap().media;
    assert!(!defaults.keep_uploads);
    assert_eq!(defaults.on_unavailable, OnUnavailable::Reupload);
    assert_eq!(defaults.upload_concurrency, DEFAULT_UPLOAD_CONCURRENCY);
    let media = parse(&with(
        "media:\n  keep_uploads: true\n  on_unavailable: wait\n  upload_concurrency: 2\n",
    ))
    .unwrap()
    .media;
    assert!(media.keep_uploads);
    assert_eq!(media.on_unavailable, OnUnavailable::Wait);
    assert_eq!(media.upload_concurrency, 2);
    let message = error(&with("media:\n  on_unavailable: later\n"));
    assert!(
        message.contains("media.on_unavailable") && message.contains("wait"),
        "{message}"
    );
    let message = error(&with("media:\n  upload_concurrency: 0\n"));
    assert!(message.contains("media.upload_concurrency"), "{message}");
}
