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
            media: vec![],
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
            media: vec![],
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
            media: vec![],
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
            "2: promt: unknown field; expected one of: id, prompt, model, system, max_output_tokens, temperature, video, image, audio, document",
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
        ["1: promt: unknown column; expected one of: id, prompt, model, system, max_output_tokens, temperature, video, image, audio, document"]
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
            format!("{p}:1: field `promt`: unknown field; expected one of: id, prompt, model, system, max_output_tokens, temperature, video, image, audio, document"),
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
            "{}: unsupported job format; supported extensions: .jsonl, .ndjson, .csv",
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
