use super::*;
use std::io::Write;

/// Writes `content` to `name` in a fresh temporary directory.
fn file(name: &str, content: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, content).unwrap();
    (dir, path)
}

fn items(name: &str, content: &str) -> Vec<Item> {
    let (_dir, path) = file(name, content.as_bytes());
    JobReader::open(&path)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// The errors of a file, as `line: field: reason` (field `-` when none).
fn errors(name: &str, content: &[u8]) -> Vec<String> {
    let (_dir, path) = file(name, content);
    let validation = validate(&path).unwrap();
    validation
        .errors
        .iter()
        .map(|e| {
            let field = e.field.as_deref().unwrap_or("-");
            format!("{}: {field}: {}", e.line, e.reason)
        })
        .collect()
}

/// The single error of a one-line JSONL job (after a valid first line).
fn jsonl_error(line: &str) -> String {
    let content = format!("{{\"id\": \"ok\", \"prompt\": \"fine\"}}\n{line}\n");
    let errors = errors("job.jsonl", content.as_bytes());
    assert_eq!(errors.len(), 1, "{errors:?}");
    errors[0].clone()
}

#[test]
fn jsonl_items_parse_with_every_field() {
    let items = items(
        "job.jsonl",
        "\u{feff}{\"id\": \"q1\", \"prompt\": \"用一句话解释什么是机器学习\", \"max_output_tokens\": 256}\n\
         \n   \n\
         {\"id\": 7, \"prompt\": \"Summarise Hamlet\", \"system\": \"You are terse.\", \"model\": \"gemini-2.5-pro\", \"temperature\": 0.5}\r\n\
         {\"id\": \"q3\", \"prompt\": \"p\", \"system\": null, \"model\": null, \"temperature\": 2}",
    );
    assert_eq!(
        items[0],
        Item {
            id: "q1".into(),
            line: 1,
            prompt: "用一句话解释什么是机器学习".into(),
            model: None,
            system: None,
            max_output_tokens: Some(256),
            temperature: None,

            ..Item::default()
        }
    );
    assert_eq!(
        items[1],
        Item {
            id: "7".into(),
            line: 4,
            prompt: "Summarise Hamlet".into(),
            model: Some("gemini-2.5-pro".into()),
            system: Some("You are terse.".into()),
            max_output_tokens: None,
            temperature: Some(0.5),

            ..Item::default()
        }
    );
    assert_eq!((items[2].line, items[2].temperature), (5, Some(2.0)));
    assert_eq!(
        (items[2].model.as_ref(), items[2].system.as_ref()),
        (None, None)
    );
}

#[test]
fn csv_items_parse_with_quoted_multiline_cells() {
    let items = items(
        "job.CSV",
        "id,prompt,system,max_output_tokens,temperature\n\
         c1,\"Summarise, briefly:\nline one, with commas\nline \"\"two\"\"\",,128,\n\
         c2,解释量子纠缠,你是一位物理老师。,,0.7\n",
    );
    assert_eq!(
        items[0],
        Item {
            id: "c1".into(),
            line: 2,
            prompt: "Summarise, briefly:\nline one, with commas\nline \"two\"".into(),
            model: None,
            system: None,
            max_output_tokens: Some(128),
            temperature: None,

            ..Item::default()
        }
    );
    assert_eq!(items[1].line, 5);
    assert_eq!(items[1].prompt, "解释量子纠缠");
    assert_eq!(items[1].system.as_deref(), Some("你是一位物理老师。"));
    assert_eq!(items[1].temperature, Some(0.7));
}

#[test]
fn jsonl_errors_name_line_and_field() {
    for (line, expected) in [
        ("{\"id\": \"a\", \"prompt\": }", "2: -: invalid JSON: expected value at column 23"),
        ("{\"id\": \"a\"} {}", "2: -: invalid JSON: trailing characters at column 13"),
        ("[1, 2]", "2: -: expected a JSON object, found an array"),
        (
            "{\"id\": \"a\", \"promt\": \"x\"}",
            "2: promt: unknown field; expected one of: id, prompt, messages, model, system, max_output_tokens, temperature, top_p, top_k, stop, seed, thinking_budget, thinking_level, reasoning_effort, response_mime_type, response_schema, schema_retries, media_resolution, start_offset, end_offset, fps, video, image, audio, document, depends_on",
        ),
        ("{\"id\": \"a\"}", "2: prompt: is required"),
        ("{\"prompt\": \"x\"}", "2: id: is required"),
        ("{\"id\": \"a\", \"prompt\": \"  \"}", "2: prompt: must not be empty"),
        ("{\"id\": \"a\", \"prompt\": 42}", "2: prompt: expected a string, found a number"),
        ("{\"id\": \"a\", \"prompt\": null}", "2: prompt: is required"),
        ("{\"id\": 1.5, \"prompt\": \"x\"}", "2: id: expected a string or an integer, found a number"),
        ("{\"id\": \"\", \"prompt\": \"x\"}", "2: id: must not be empty"),
        ("{\"id\": [\"a\"], \"prompt\": \"x\"}", "2: id: expected a string or an integer, found an array"),
        ("{\"id\": \"a\", \"prompt\": \"x\", \"model\": \"\"}", "2: model: must not be empty"),
        ("{\"id\": \"a\", \"prompt\": \"x\", \"system\": true}", "2: system: expected a string, found a boolean"),
        (
            "{\"id\": \"a\", \"prompt\": \"x\", \"max_output_tokens\": 0}",
            "2: max_output_tokens: expected an integer >= 1, found 0",
        ),
        (
            "{\"id\": \"a\", \"prompt\": \"x\", \"max_output_tokens\": 1.5}",
            "2: max_output_tokens: expected an integer >= 1, found 1.5",
        ),
        (
            "{\"id\": \"a\", \"prompt\": \"x\", \"max_output_tokens\": \"256\"}",
            "2: max_output_tokens: expected an integer >= 1, found a string",
        ),
        (
            "{\"id\": \"a\", \"prompt\": \"x\", \"max_output_tokens\": 4294967296}",
            "2: max_output_tokens: expected an integer >= 1, found 4294967296",
        ),
        (
            "{\"id\": \"a\", \"prompt\": \"x\", \"temperature\": 2.5}",
            "2: temperature: must be between 0.0 and 2.0, found 2.5",
        ),
        (
            "{\"id\": \"a\", \"prompt\": \"x\", \"temperature\": \"hot\"}",
            "2: temperature: expected a number, found a string",
        ),
    ] {
        assert_eq!(jsonl_error(line), expected, "{line}");
    }
}

#[test]
fn media_settings_parse_and_bad_ones_name_their_field() {
    use crate::provider::{MediaResolution, VideoClip};
    use std::time::Duration;
    let parsed = items(
        "job.jsonl",
        "{\"id\": 1, \"prompt\": \"p\", \"media_resolution\": \"LOW\", \"start_offset\": \"1m30s\", \"end_offset\": 120.5, \"fps\": 2}\n",
    );
    assert_eq!(
        parsed[0].generation.media_resolution,
        Some(MediaResolution::Low)
    );
    assert_eq!(
        parsed[0].generation.clip,
        VideoClip {
            start: Some(Duration::from_secs(90)),
            end: Some(Duration::from_millis(120_500)),
            fps: Some(2.0),
        }
    );
    let csv = items(
        "job.csv",
        "id,prompt,start_offset,end_offset\n1,p,1h2m3.5s,3725\n",
    );
    assert_eq!(
        csv[0].generation.clip.start,
        Some(Duration::from_millis(3_723_500))
    );
    assert_eq!(csv[0].generation.clip.end, Some(Duration::from_secs(3725)));
    for (line, says) in [
        (
            "{\"id\": 2, \"prompt\": \"p\", \"media_resolution\": \"ultra\"}",
            "2: media_resolution: expected one of low, medium, high, found `ultra`",
        ),
        (
            "{\"id\": 2, \"prompt\": \"p\", \"start_offset\": \"1:30\"}",
            "2: start_offset: expected seconds (e.g. 90) or a duration like `1m30s`, found `1:30`",
        ),
        (
            "{\"id\": 2, \"prompt\": \"p\", \"end_offset\": -5}",
            "2: end_offset: expected seconds (e.g. 90) or a duration like `1m30s`, found -5",
        ),
        (
            "{\"id\": 2, \"prompt\": \"p\", \"start_offset\": \"30s\", \"end_offset\": \"10s\"}",
            "2: end_offset: end_offset (10s) must be after start_offset (30s)",
        ),
        (
            "{\"id\": 2, \"prompt\": \"p\", \"fps\": 30}",
            "2: fps: must be above 0 and at most 24 frames per second, found 30",
        ),
        (
            "{\"id\": 2, \"prompt\": \"p\", \"fps\": 0}",
            "2: fps: must be above 0 and at most 24 frames per second, found 0",
        ),
    ] {
        assert_eq!(jsonl_error(line), says);
    }
    for bad in ["1m30", "30s1m", "1.5m", "s", "1m1m"] {
        assert_eq!(super::fields::duration_seconds(bad), None, "{bad}");
    }
}

#[test]
fn invalid_utf8_is_reported_on_its_line() {
    let content =
        b"{\"id\": \"a\", \"prompt\": \"ok\"}\n{\"id\": \"b\", \"prompt\": \"\xC4\xE3\xBA\xC3\"}\n";
    assert_eq!(
        errors("job.jsonl", content),
        ["2: -: invalid UTF-8 at byte 24 (save the file as UTF-8)"]
    );
    let content = b"id,prompt\na,ok\nb,\xC4\xE3\xBA\xC3\n";
    assert_eq!(
        errors("job.csv", content),
        ["3: prompt: invalid UTF-8 at byte 1 (save the file as UTF-8)"]
    );
}

#[test]
fn csv_errors_name_line_and_column() {
    let header_error = |header: &str| errors("job.csv", format!("{header}\na,b\n").as_bytes());
    assert_eq!(
        header_error("id,promt"),
        ["1: promt: unknown column; expected one of: id, prompt, messages, model, system, max_output_tokens, temperature, top_p, top_k, stop, seed, thinking_budget, thinking_level, reasoning_effort, response_mime_type, response_schema, schema_retries, media_resolution, start_offset, end_offset, fps, video, image, audio, document, depends_on"]
    );
    assert_eq!(
        header_error("id,model"),
        ["1: prompt: required column is missing from the header"]
    );
    assert_eq!(
        header_error("id,prompt,id"),
        ["1: id: column appears twice in the header"]
    );
    assert_eq!(
        errors(
            "job.csv",
            b"id,prompt,max_output_tokens,temperature\n\
              a,\"multi\nline\",,\n\
              b,x,lots,\n\
              c,x,,nan\n\
              d,x\n\
              ,x,,\n\
              e,,,\n\
              f,x,,\n"
        ),
        [
            "4: max_output_tokens: expected an integer >= 1, found `lots`",
            "5: temperature: must be between 0.0 and 2.0, found NaN",
            "6: -: row has 2 cells, the header has 4",
            "7: id: is required",
            "8: prompt: is required",
        ]
    );
}

#[test]
fn duplicate_ids_are_reported_on_the_later_line() {
    let content = "{\"id\": 1, \"prompt\": \"a\"}\n{\"id\": \"2\", \"prompt\": \"b\"}\n\n{\"id\": \"1\", \"prompt\": \"c\"}\n";
    assert_eq!(
        errors("job.jsonl", content.as_bytes()),
        ["4: id: duplicate id `1`, first used on line 1"]
    );
    let content = "id,prompt\nx,\"one\ntwo\"\nx,three\n";
    assert_eq!(
        errors("job.csv", content.as_bytes()),
        ["4: id: duplicate id `x`, first used on line 2"]
    );
}

#[test]
fn the_reader_never_yields_a_duplicate_as_an_item() {
    // The run reads the job again after validation: it must see the
    // duplicate as an error too, or it would send it.
    let (_dir, path) = file(
        "job.jsonl",
        b"{\"id\": \"a\", \"prompt\": \"1\"}\n{\"id\": \"a\", \"prompt\": \"2\"}\n{\"id\": \"b\", \"prompt\": \"3\"}\n",
    );
    let read: Vec<Result<String, String>> = JobReader::open(&path)
        .unwrap()
        .map(|r| r.map(|item| item.id).map_err(|e| e.skipped_id()))
        .collect();
    assert_eq!(
        read,
        [Ok("a".into()), Err("#line:2".into()), Ok("b".into())]
    );
    let validation = validate(&path).unwrap();
    assert_eq!((validation.items, validation.error_count), (2, 1));
}

#[test]
fn ids_in_the_skipped_rows_namespace_are_refused() {
    let content = "{\"id\": \"#line:1\", \"prompt\": \"x\"}\n{\"id\": \"line:2\", \"prompt\": \"y\"}\n{\"id\": \"#1\", \"prompt\": \"z\"}\n";
    assert_eq!(
        errors("job.jsonl", content.as_bytes()),
        ["1: id: ids starting with `#line:` are reserved for the rows of skipped lines"]
    );
}

#[test]
fn an_unterminated_csv_quote_is_an_error_on_the_line_it_opened() {
    let message =
        "-: a quote opened on this line is never closed: the rest of the file would be one cell";
    for (content, line) in [
        ("id,prompt\na,\"oops\nb,x\nc,y", 2),
        (
            "id,prompt\na,x\nb,\"ok \"\"quoted\"\" text\"\nc,\"open\r\nd,y\r\n",
            4,
        ),
        ("\"id,prompt\na,x\n", 1),
    ] {
        let (_dir, path) = file("job.csv", content.as_bytes());
        let validation = validate(&path).unwrap();
        assert_eq!(validation.error_count, 1, "{content:?}");
        let error = &validation.errors[0];
        assert_eq!(
            format!("{}: {}", error.line, error.reason),
            format!("{line}: {}", &message[3..]),
            "{content:?}"
        );
    }
    // Quotes that close, or that are literal inside an unquoted cell, are fine.
    for content in [
        "id,prompt\na,\"x\"\nb,\"two\nlines\"\n",
        "id,prompt\na,5\" tall\nb,\"say \"\"hi\"\"\"",
        "id,prompt\na,\"x\"\"\"\n",
    ] {
        assert_eq!(
            errors("job.csv", content.as_bytes()),
            Vec::<String>::new(),
            "{content:?}"
        );
    }
}

#[test]
fn item_errors_display_path_line_and_field() {
    let (_dir, path) = file(
        "job.jsonl",
        b"{\"id\": \"a\", \"promt\": \"x\"}\nnot json\n",
    );
    let validation = validate(&path).unwrap();
    let shown: Vec<String> = validation.errors.iter().map(ToString::to_string).collect();
    let p = path.display();
    assert_eq!(
        shown,
        [
            format!("{p}:1: field `promt`: unknown field; expected one of: id, prompt, messages, model, system, max_output_tokens, temperature, top_p, top_k, stop, seed, thinking_budget, thinking_level, reasoning_effort, response_mime_type, response_schema, schema_retries, media_resolution, start_offset, end_offset, fps, video, image, audio, document, depends_on"),
            format!("{p}:2: invalid JSON: expected ident at column 2"),
        ]
    );
}

#[test]
fn the_error_list_is_capped_but_the_count_is_not() {
    let content = "{}\n".repeat(MAX_ERRORS + 500);
    let (_dir, path) = file("job.jsonl", content.as_bytes());
    let validation = validate(&path).unwrap();
    assert_eq!(validation.items, 0);
    assert_eq!(validation.errors.len(), MAX_ERRORS);
    assert_eq!(validation.error_count, MAX_ERRORS as u64 + 500);
}

#[test]
fn file_level_errors_name_the_file() {
    let (_dir, path) = file("job.txt", b"");
    let err = JobReader::open(&path).err().unwrap();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: unsupported job format; supported extensions: .jsonl, .ndjson, .csv, .yaml, .yml",
            path.display()
        )
    );
    let err = validate(Path::new("/nonexistent/job.jsonl")).unwrap_err();
    assert_eq!(err.to_string(), "failed to open job /nonexistent/job.jsonl");
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn a_read_failure_ends_the_stream_and_fails_validation() {
    // A directory opens on Unix but fails on the first read.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dir.jsonl");
    std::fs::create_dir(&path).unwrap();
    let mut reader = JobReader::open(&path).unwrap();
    let error = reader.next().unwrap().unwrap_err();
    assert!(
        error.reason.starts_with("failed to read the file: "),
        "{error}"
    );
    assert!(reader.next().is_none());
    assert_eq!(reader.content_hash(), None, "a failed read has no hash");
    let err = validate(&path).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("failed to read job {}", path.display())
    );
}

#[test]
fn empty_files_have_no_items() {
    for name in ["job.jsonl", "job.csv"] {
        let (_dir, path) = file(name, b"");
        let validation = validate(&path).unwrap();
        assert_eq!((validation.items, validation.error_count), (0, 0));
    }
    assert!(items("job.csv", "id,prompt\n").is_empty());
}

#[test]
fn the_content_hash_is_the_sha256_of_the_bytes() {
    let content = b"{\"id\": \"a\", \"prompt\": \"x\"}\n\n";
    let (_dir, path) = file("job.ndjson", content);
    let first = validate(&path).unwrap();
    assert_eq!(first.content_hash, hex::encode(Sha256::digest(content)));
    assert_eq!(validate(&path).unwrap().content_hash, first.content_hash);
    std::fs::write(&path, b"{\"id\": \"a\", \"prompt\": \"y\"}\n\n").unwrap();
    assert_ne!(validate(&path).unwrap().content_hash, first.content_hash);
}

#[test]
fn the_reader_tells_whether_it_read_the_file_that_was_validated() {
    for (name, content, appended) in [
        (
            "job.jsonl",
            "{\"id\": \"a\", \"prompt\": \"x\"}\n{\"id\": \"b\", \"prompt\": \"y\"}\n",
            "{\"id\": \"c\", \"prompt\": \"z\"}\n",
        ),
        ("job.csv", "id,prompt\na,x\nb,y\n", "c,z\n"),
    ] {
        let (_dir, path) = file(name, content.as_bytes());
        let validated = validate(&path).unwrap().content_hash;
        // Read to the end, unchanged: the same hash as validation's.
        let mut reader = JobReader::open(&path).unwrap();
        assert!(reader.next().is_some());
        assert_eq!(reader.content_hash(), None, "{name}: not at the end yet");
        reader
            .verify(&validated)
            .expect("part of a file is not compared");
        assert_eq!(reader.by_ref().count(), 1, "{name}");
        assert_eq!(reader.content_hash().as_deref(), Some(validated.as_str()));
        reader.verify(&validated).expect("unchanged");

        // Appended to between validation and the run.
        let mut job = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        job.write_all(appended.as_bytes()).unwrap();
        let mut reader = JobReader::open(&path).unwrap();
        assert_eq!(reader.by_ref().count(), 3, "{name}");
        let read = hex::encode(Sha256::digest(std::fs::read(&path).unwrap()));
        assert_eq!(reader.content_hash().as_deref(), Some(read.as_str()));
        let err = reader.verify(&validated).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{} changed while the run was reading it (sha256 {}… when validated, {}… when read)",
                path.display(),
                &validated[..12],
                &read[..12]
            )
        );
    }
}

#[test]
fn a_large_job_is_validated_as_a_stream() {
    const LINES: u64 = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.jsonl");
    let mut out = io::BufWriter::new(File::create(&path).unwrap());
    for i in 0..LINES {
        writeln!(
            out,
            "{{\"id\": \"item-{i}\", \"prompt\": \"Question number {i}?\"}}"
        )
        .unwrap();
    }
    out.into_inner().unwrap();
    let validation = validate(&path).unwrap();
    assert_eq!((validation.items, validation.error_count), (LINES, 0));
    assert_eq!(
        validation.content_hash,
        hex::encode(Sha256::digest(std::fs::read(&path).unwrap()))
    );
}

#[test]
fn the_demo_jobs_are_valid() {
    for name in ["jobs/demo.jsonl", "jobs/demo.csv"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
        let validation = validate(&path).unwrap();
        assert_eq!(validation.errors, [], "{name}");
        assert!(validation.items >= 8, "{name}");
    }
}

#[test]
fn validate_collects_each_model_with_the_line_that_first_asks_for_it() {
    let (_dir, path) = file(
        "models.jsonl",
        concat!(
            r#"{"id":"a","prompt":"p"}"#,
            "\n",
            r#"{"id":"b","prompt":"p","model":"gpt-4o"}"#,
            "\n",
            r#"{"id":"c","prompt":"p","model":"gpt-4o"}"#,
            "\n",
            r#"{"id":"d","prompt":"p","model":"gemini-2.5-flsh"}"#,
            "\n",
        )
        .as_bytes(),
    );
    let models = validate(&path).unwrap().models;
    let uses: Vec<(Option<&str>, u64)> = models
        .iter()
        .map(|m| (m.model.as_deref(), m.line))
        .collect();
    assert_eq!(
        uses,
        [(None, 1), (Some("gpt-4o"), 2), (Some("gemini-2.5-flsh"), 4)]
    );
}

/// Writes `files` (name, content) into a fresh directory; the first is the spec.
fn spec_files(files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content).unwrap();
    }
    let spec = dir.path().join(files[0].0);
    (dir, spec)
}

/// The spec-level errors of a spec, as `line: field: reason`.
fn spec_errors(files: &[(&str, &str)]) -> Vec<String> {
    let (_dir, spec) = spec_files(files);
    match JobReader::open(&spec) {
        Err(JobError::Spec { errors }) => errors
            .iter()
            .map(|e| {
                format!(
                    "{}: {}: {}",
                    e.line,
                    e.field.as_deref().unwrap_or("-"),
                    e.reason
                )
            })
            .collect(),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("the spec was accepted"),
    }
}

#[test]
fn a_spec_fills_its_template_from_each_csv_row_with_defaults_and_overrides() {
    let (_dir, spec) = spec_files(&[
        (
            "job.yaml",
            "defaults:\n  model: gemini-2.5-flash\n  temperature: 0.2\n  system: \"{{file:sys.txt}}\"\n\
             template: \"Translate into {{lang}}: {{text}}\"\nid: \"{{key}}-{{lang}}\"\ndata: rows.csv\n",
        ),
        ("sys.txt", "You translate."),
        (
            "rows.csv",
            "key,text,lang,temperature,unused\nk1,Hello,French,,x\nk2,\"Good, bye\",German,0.9,y\n",
        ),
    ]);
    let items: Vec<Item> = JobReader::open(&spec)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(
        items[0],
        Item {
            id: "k1-French".into(),
            line: 2,
            prompt: "Translate into French: Hello".into(),
            model: Some("gemini-2.5-flash".into()),
            system: Some("You translate.".into()),
            temperature: Some(0.2),
            ..Item::default()
        }
    );
    assert_eq!(items[1].prompt, "Translate into German: Good, bye");
    assert_eq!(items[1].temperature, Some(0.9));
}

#[test]
fn a_spec_over_inline_items_or_jsonl_numbers_rows_by_default() {
    let items = |files: &[(&str, &str)]| -> Vec<Result<Item, ItemError>> {
        let (_dir, spec) = spec_files(files);
        JobReader::open(&spec).unwrap().collect()
    };
    let inline = items(&[(
        "job.yml",
        "template: \"Q: {{q}}\"\nitems:\n  - q: one\n  - q: 2\n    max_output_tokens: 64\n  - q: three\n    qq: typo\n",
    )]);
    let ok = inline[1].as_ref().unwrap();
    assert_eq!(
        (ok.id.as_str(), ok.line, ok.prompt.as_str()),
        ("2", 4, "Q: 2")
    );
    assert_eq!(ok.max_output_tokens, Some(64));
    let typo = inline[2].as_ref().unwrap_err();
    assert_eq!((typo.line, typo.field.as_deref()), (6, Some("qq")));
    assert!(typo.path.ends_with("job.yml"));

    let jsonl = items(&[
        ("job.yaml", "template: \"{{a}} and {{b}}\"\ndata: d.jsonl\n"),
        ("d.jsonl", "{\"a\": 1, \"b\": [2]}\n\n{\"a\": \"x\"}\n"),
    ]);
    assert_eq!(jsonl[0].as_ref().unwrap().prompt, "1 and [2]");
    let missing = jsonl[1].as_ref().unwrap_err();
    assert_eq!((missing.line, missing.field.as_deref()), (3, Some("b")));
    assert!(missing.path.ends_with("d.jsonl"), "{missing}");
}

#[test]
fn spec_errors_name_line_and_field_and_stop_the_job() {
    assert_eq!(
        spec_errors(&[("job.yaml", "template: \"{{x}}\"\nitems: []\npromt: typo\n")]),
        ["3: promt: unknown field `promt`, expected one of `defaults`, `template`, `messages`, `id`, `data`, `items`"]
    );
    let errors = spec_errors(&[
        (
            "job.yaml",
            "defaults:\n  temperature: 7\n  colour: red\ntemplate: \"{{text}} {{file:missing.txt}}\"\ndata: d.csv\n",
        ),
        ("d.csv", "txt\nhello\n"),
    ]);
    assert_eq!(errors.len(), 4, "{errors:?}");
    assert!(
        errors[0].starts_with("2: temperature: must be between"),
        "{errors:?}"
    );
    assert!(
        errors[1].starts_with("3: colour: unknown default"),
        "{errors:?}"
    );
    assert!(
        errors[2].starts_with("4: template: cannot read the included file"),
        "{errors:?}"
    );
    assert!(
        errors[3].starts_with("5: data: ") && errors[3].contains("no column `text`"),
        "{errors:?}"
    );
    assert_eq!(
        spec_errors(&[("job.yaml", "template: hi\n")]),
        ["1: data: `data` or `items` is required"]
    );
}

#[test]
fn a_spec_hash_covers_the_spec_its_data_and_its_included_files() {
    let (dir, spec) = spec_files(&[
        (
            "job.yaml",
            "template: \"{{file:p.txt}} {{a}}\"\ndata: d.csv\n",
        ),
        ("p.txt", "Say"),
        ("d.csv", "a\nx\ny\n"),
    ]);
    let hash = || validate(&spec).unwrap().content_hash;
    let first = hash();
    assert_eq!(validate(&spec).unwrap().items, 2);
    assert_eq!(hash(), first);
    for (name, edit) in [("p.txt", "Tell"), ("d.csv", "a\nx\nz\n")] {
        let before = hash();
        std::fs::write(dir.path().join(name), edit).unwrap();
        assert_ne!(hash(), before, "an edit of {name} changes the hash");
    }
}

#[test]
fn spec_ids_must_be_unique_and_duplicates_name_the_data_file() {
    let (_dir, spec) = spec_files(&[
        (
            "job.yaml",
            "template: \"{{a}}\"\nid: \"{{a}}\"\ndata: d.csv\n",
        ),
        ("d.csv", "a\nx\ny\nx\n"),
    ]);
    let validation = validate(&spec).unwrap();
    assert_eq!((validation.items, validation.error_count), (2, 1));
    let error = &validation.errors[0];
    assert_eq!((error.line, error.field.as_deref()), (4, Some("id")));
    assert!(error.to_string().contains("d.csv:4"), "{error}");
}

#[test]
fn generation_settings_parse_in_every_format_and_are_checked() {
    let items = items(
        "job.jsonl",
        "{\"id\": 1, \"prompt\": \"p\", \"top_p\": 0.9, \"top_k\": 20, \"stop\": [\"END\", \"##\"], \"seed\": -3, \"thinking_budget\": -1, \"thinking_level\": \"HIGH\", \"reasoning_effort\": \"low\", \"response_mime_type\": \"application/json\"}\n",
    );
    let g = &items[0].generation;
    assert_eq!((g.top_p, g.top_k, g.seed), (Some(0.9), Some(20), Some(-3)));
    assert_eq!(g.stop, ["END", "##"]);
    assert_eq!(g.thinking_budget, Some(-1));
    assert_eq!(g.thinking_level.as_deref(), Some("high"));
    assert_eq!(g.reasoning_effort.as_deref(), Some("low"));
    assert_eq!(g.response_mime_type.as_deref(), Some("application/json"));
    let csv = self::items("job.csv", "id,prompt,stop,top_k\na,p,STOP,3\n");
    assert_eq!(
        (csv[0].generation.stop.as_slice(), csv[0].generation.top_k),
        (["STOP".to_owned()].as_slice(), Some(3))
    );

    for (line, expected) in [
        (r#"{"id": 2, "prompt": "p", "top_p": 1.5}"#, "2: top_p: must be between 0.0 and 1.0, found 1.5"),
        (r#"{"id": 2, "prompt": "p", "top_k": 0}"#, "2: top_k: expected an integer from 1 to 4294967295, found 0"),
        (r#"{"id": 2, "prompt": "p", "thinking_budget": -2}"#, "2: thinking_budget: expected an integer from -1 to 2147483647, found -2"),
        (r#"{"id": 2, "prompt": "p", "thinking_level": "max"}"#, "2: thinking_level: expected one of minimal, low, medium, high, found `max`"),
        (r#"{"id": 2, "prompt": "p", "stop": ["a", 1]}"#, "2: stop: expected a string or a list of non-empty strings, found a number"),
        (r#"{"id": 2, "prompt": "p", "response_mime_type": "text/html"}"#, "2: response_mime_type: expected one of application/json, text/plain, found `text/html`"),
    ] {
        assert_eq!(jsonl_error(line), expected);
    }
}

#[test]
fn validation_lists_each_model_and_setting_pair_once_where_first_used() {
    let (_dir, path) = file(
        "job.jsonl",
        b"{\"id\": 1, \"prompt\": \"p\", \"seed\": 1}\n{\"id\": 2, \"prompt\": \"p\", \"seed\": 2, \"top_k\": 3}\n{\"id\": 3, \"prompt\": \"p\", \"seed\": 2, \"model\": \"gpt-4o\"}\n",
    );
    let uses: Vec<_> = validate(&path)
        .unwrap()
        .settings
        .into_iter()
        .map(|u| (u.model, u.setting, u.line))
        .collect();
    assert_eq!(
        uses,
        [
            (None, "seed", 1),
            (None, "top_k", 2),
            (Some("gpt-4o".to_owned()), "seed", 3)
        ]
    );
}

#[test]
fn conversations_are_messages_ending_with_the_user_s_turn() {
    use crate::provider::{Role, Turn};
    let items = items(
        "job.jsonl",
        "{\"id\": 1, \"messages\": [{\"role\": \"user\", \"text\": \"Hi\"}, {\"role\": \"assistant\", \"text\": \"Hello!\"}, {\"role\": \"user\", \"text\": \"Bye?\"}]}\n",
    );
    assert_eq!(items[0].prompt, "Bye?");
    assert_eq!(
        items[0].turns,
        [
            Turn {
                role: Role::User,
                text: "Hi".into()
            },
            Turn {
                role: Role::Model,
                text: "Hello!".into()
            }
        ]
    );
    for (line, expected) in [
        (
            r#"{"id": 2, "messages": [{"role": "user", "text": "a"}, {"role": "model", "text": "b"}]}"#,
            "2: messages: the last message must be the user's",
        ),
        (
            r#"{"id": 2, "messages": [{"role": "system", "text": "a"}]}"#,
            "2: messages: message 1: `role` must be user or assistant",
        ),
        (
            r#"{"id": 2, "prompt": "p", "messages": [{"role": "user", "text": "a"}]}"#,
            "2: messages: give `prompt` or `messages`, not both",
        ),
        (r#"{"id": 2}"#, "2: prompt: is required"),
    ] {
        assert_eq!(jsonl_error(line), expected);
    }

    let (_dir, spec) = spec_files(&[(
        "chat.yaml",
        "messages:\n  - {role: user, text: \"Translate {{word}}\"}\n  - {role: assistant, text: \"Into what?\"}\n  - {role: user, text: \"{{lang}}\"}\nitems:\n  - {word: cat, lang: Welsh}\n",
    )]);
    let item = JobReader::open(&spec).unwrap().next().unwrap().unwrap();
    assert_eq!(item.prompt, "Welsh");
    assert_eq!(item.turns[0].text, "Translate cat");
    assert_eq!(item.turns[1].role, Role::Model);
    assert_eq!(
        spec_errors(&[(
            "chat.yaml",
            "items: []\nmessages:\n  - {role: user, text: a}\n  - {role: assistant, text: b}\n"
        )]),
        ["2: messages: the last message must be the user's"]
    );
}

/// Each entry of `reader` as `line id` or `line error: reason`.
fn entries(reader: impl Iterator<Item = Result<Item, ItemError>>) -> Vec<String> {
    reader
        .map(|entry| match entry {
            Ok(item) => format!("{} {}", item.line, item.id),
            Err(e) => format!("{} error: {}", e.line, e.reason),
        })
        .collect()
}

#[test]
fn a_validated_reader_passes_over_lines_unparsed_and_still_finds_duplicates() {
    let content = "{\"id\":\"a\",\"prompt\":\"1\"}\n\
                   {\"id\":\"b\",\"prompt\":\"2\"}\n\
                   not json, but passed over\n\
                   {\"id\":\"c\",\"prompt\":\"4\"}\n\
                   {\"id\":\"b\",\"prompt\":\"5\"}\n\
                   {\"id\":\"d\",\"prompt\":\"6\"}\n";
    let (_dir, path) = file("job.jsonl", content.as_bytes());
    let validation = validate(&path).unwrap();
    let ids = Arc::clone(&validation.first_lines);
    // The first line is read whatever `skip` says: it sets the shape.
    let skip = Arc::new(HashSet::from([1, 2, 3, 6]));
    let mut reader = JobReader::open(&path).unwrap().validated(ids, skip);
    let seen = entries(reader.by_ref());
    // Line 5 repeats the id of line 2, which was not parsed.
    assert_eq!(
        seen,
        [
            "1 a",
            "4 c",
            "5 error: duplicate id `b`, first used on line 2"
        ]
    );
    assert_eq!(reader.verify(&validation.content_hash).ok(), Some(()));
    assert_eq!(
        reader.content_hash().as_deref(),
        Some(validation.content_hash.as_str())
    );
}

#[test]
fn other_formats_yield_the_lines_a_validated_reader_is_told_to_skip() {
    let (_dir, path) = file("job.csv", b"id,prompt\na,1\nb,2\n");
    let validation = validate(&path).unwrap();
    let skip = Arc::new(HashSet::from([2, 3]));
    let reader = JobReader::open(&path)
        .unwrap()
        .validated(Arc::clone(&validation.first_lines), skip);
    assert_eq!(entries(reader), ["2 a", "3 b"]);
}
