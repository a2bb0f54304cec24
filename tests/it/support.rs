//! Test harness: a scratch directory with a job and a config, a simulator,
//! and the real binary run against it.

use keyfan::sim::{SimConfig, SimServer, Stats};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// A scratch directory holding one test's files.
pub struct Workdir {
    dir: tempfile::TempDir,
}

impl Workdir {
    pub fn new() -> Workdir {
        Workdir {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).expect("write test file");
        path
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_else(|e| panic!("read {name}: {e}"))
    }

    /// A `keyfan` command with `args`, run in this directory, with no
    /// `KEYFAN_CONFIG` from the test's environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keyfan"));
        cmd.args(args)
            .current_dir(self.dir.path())
            .env_remove("KEYFAN_CONFIG");
        cmd
    }

    /// Starts `keyfan` with `args` in this directory without waiting for it;
    /// its output is discarded.
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.start(args, Stdio::null)
    }

    /// Starts `keyfan` with `args` in this directory, its stdout and stderr
    /// piped.
    pub fn spawn_piped(&self, args: &[&str]) -> Child {
        self.start(args, Stdio::piped)
    }

    /// Starts `keyfan` with no standard input and `output()` as its stdout
    /// and stderr.
    fn start(&self, args: &[&str], output: fn() -> Stdio) -> Child {
        self.command(args)
            .stdin(Stdio::null())
            .stdout(output())
            .stderr(output())
            .spawn()
            .expect("start keyfan")
    }

    /// Runs `keyfan` with `args` in this directory, with `env` set, and
    /// returns its output (never panics on a non-zero exit). It runs on a
    /// blocking thread so the test's simulator keeps serving meanwhile.
    pub async fn keyfan(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = self.command(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        tokio::task::spawn_blocking(move || cmd.output().expect("run keyfan"))
            .await
            .expect("the command thread does not panic")
    }
}

/// Explains a finished command: for assertion messages.
pub fn explain(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Asserts that `out` exited with `code` and that its stderr says `says`;
/// returns the stderr for further checks.
pub fn assert_exit_saying(out: &Output, code: i32, says: &str) -> String {
    assert_eq!(out.status.code(), Some(code), "{}", explain(out));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(stderr.contains(says), "`{says}` missing from:\n{stderr}");
    stderr
}

/// Polls `ready` every 10 ms until it holds; fails the test, naming `what`,
/// once `within` has passed.
pub async fn wait_until(what: &str, within: Duration, mut ready: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ready().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits for `child` to exit; kills it and fails the test after `within`.
pub async fn exit_within(child: &mut Child, within: Duration) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("keyfan did not exit within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends SIGTERM to `child`.
pub fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success(), "kill -TERM {}", child.id());
}

/// Starts a simulator from YAML.
pub async fn simulator(yaml: &str) -> SimServer {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sim.yaml");
    std::fs::write(&path, yaml).expect("write sim.yaml");
    let config = SimConfig::load(&path).expect("valid sim config");
    SimServer::start(config, ([127, 0, 0, 1], 0).into())
        .await
        .expect("simulator starts")
}

/// A simulator config: project `proj-a` with keys `test-key-a1` and
/// `test-key-a2`, project `proj-b` with `test-key-b1`, and a latency
/// uniform in `[min_ms, max_ms]`.
pub fn two_projects(min_ms: u64, max_ms: u64) -> String {
    format!(
        "seed: 7\nlatency: {{ min_ms: {min_ms}, max_ms: {max_ms} }}\nprojects:\n  - name: proj-a\n    keys: [test-key-a1, test-key-a2]\n  - name: proj-b\n    keys: [test-key-b1]\n"
    )
}

/// A simulator from `sim_yaml`, and a work directory holding a
/// [`jsonl_job`] of `items` and the `config.yaml` that `config` writes for
/// the simulator's base URL.
pub async fn scenario(
    sim_yaml: &str,
    items: usize,
    config: impl FnOnce(&str) -> String,
) -> (SimServer, Workdir) {
    let sim = simulator(sim_yaml).await;
    let work = Workdir::new();
    work.write("job.jsonl", &jsonl_job(items));
    work.write("config.yaml", &config(&sim.base_url()));
    (sim, work)
}

/// A JSONL job of `n` prompts `p0`… with ids `item-0`….
pub fn jsonl_job(n: usize) -> String {
    jsonl_job_with(n, |_| serde_json::Value::Null)
}

/// A [`jsonl_job`] whose item `i` also has the fields of the object
/// `extra(i)` (`null`: none).
pub fn jsonl_job_with(n: usize, extra: impl Fn(usize) -> serde_json::Value) -> String {
    (0..n)
        .map(|i| {
            let mut item = serde_json::json!({"id": format!("item-{i}"), "prompt": prompt(i)});
            if let serde_json::Value::Object(fields) = extra(i) {
                item.as_object_mut().expect("an object").extend(fields);
            }
            item.to_string() + "\n"
        })
        .collect()
}

/// The prompt of item `i` of [`jsonl_job`].
pub fn prompt(i: usize) -> String {
    if i.is_multiple_of(3) {
        format!("第{i}个问题：用一句话解释机器学习。")
    } else {
        format!("Question {i}: explain, in one sentence, why the sky is blue.")
    }
}

/// The digest the simulator puts in its reply to `text`.
pub fn digest(text: &str) -> String {
    format!(
        "digest:{}",
        &hex::encode(Sha256::digest(text.as_bytes()))[..16]
    )
}

/// A valid small MP4: an `ftyp` box, then `moov` holding an `mvhd` (version
/// 0) of `seconds` at timescale 1000, then `pad` bytes of `mdat` that make
/// each file distinct.
pub fn mp4(seconds: u32, pad: u8) -> Vec<u8> {
    mp4_with(
        0,
        1000,
        u64::from(seconds) * 1000,
        2048 + usize::from(pad),
        pad,
    )
}

/// An MP4 whose `mvhd` box of `version` (0: 32-bit times, 1: 64-bit) states
/// `duration` units of `timescale` per second, its `mdat` holding `mdat`
/// bytes of `fill`.
pub fn mp4_with(version: u8, timescale: u32, duration: u64, mdat: usize, fill: u8) -> Vec<u8> {
    fn boxed(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut out = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(body);
        out
    }
    let ftyp = boxed(b"ftyp", b"isom\0\0\x02\0isomiso2mp41");
    let mut mvhd = vec![version, 0, 0, 0]; // version, flags
    if version == 1 {
        mvhd.extend_from_slice(&[0u8; 16]); // creation, modification
        mvhd.extend_from_slice(&timescale.to_be_bytes());
        mvhd.extend_from_slice(&duration.to_be_bytes());
    } else {
        mvhd.extend_from_slice(&[0u8; 8]);
        mvhd.extend_from_slice(&timescale.to_be_bytes());
        mvhd.extend_from_slice(&(duration as u32).to_be_bytes());
    }
    mvhd.extend_from_slice(&0x0001_0000u32.to_be_bytes()); // rate 1.0
    mvhd.extend_from_slice(&[0x01, 0x00]); // volume 1.0
    mvhd.extend_from_slice(&[0u8; 10]); // reserved
    for m in [0x0001_0000u32, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000] {
        mvhd.extend_from_slice(&m.to_be_bytes()); // unity matrix
    }
    mvhd.extend_from_slice(&[0u8; 24]); // pre_defined
    mvhd.extend_from_slice(&2u32.to_be_bytes()); // next_track_ID
    let moov = boxed(b"moov", &boxed(b"mvhd", &mvhd));
    let mdat = boxed(b"mdat", &vec![fill; mdat]);
    [ftyp, moov, mdat].concat()
}

/// The digest the simulator puts in its answer for a media part's bytes.
pub fn media_digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))[..16].to_owned()
}

/// A config with one Gemini account per `(name, keys)` pointed at `base_url`.
pub fn config(base_url: &str, accounts: &[(&str, &[&str])], extra: &str) -> String {
    let mut yaml = format!(
        "providers:\n  gemini:\n    base_url: {base_url}\nmodel: gemini-2.5-flash\nconcurrency: 8\ntimeout: 5s\nmax_retries: 5\n{extra}accounts:\n"
    );
    for (name, keys) in accounts {
        yaml.push_str(&format!("  - name: {name}\n    keys:\n"));
        for key in *keys {
            yaml.push_str(&format!("      - \"{key}\"\n"));
        }
    }
    yaml
}

/// `run JOB --config CONFIG`, then `extra`.
pub fn run_job<'a>(job: &'a str, config: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["run", job, "--config", config];
    args.extend_from_slice(extra);
    args
}

/// `run job.jsonl --config config.yaml --state STATE`, then `extra`.
pub fn run_args<'a>(state: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    run_job(
        "job.jsonl",
        "config.yaml",
        &[&["--state", state], extra].concat(),
    )
}

/// A config for the accounts of [`two_projects`] (`proj-a` with two keys,
/// `proj-b` with one), then `extra` YAML.
pub fn two_accounts(base_url: &str, extra: &str) -> String {
    config(
        base_url,
        &[
            ("proj-a", &["test-key-a1", "test-key-a2"]),
            ("proj-b", &["test-key-b1"]),
        ],
        extra,
    )
}

/// A config with one account, `proj-a`, holding the key `test-key-a1`.
pub fn one_account(base_url: &str) -> String {
    config(base_url, &[("proj-a", &["test-key-a1"])], "")
}

/// Parses a JSONL results file.
pub fn results(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .expect("results file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON results line"))
        .collect()
}

/// The rows of a JSONL results file by their `id`.
pub fn results_by_id(path: &Path) -> HashMap<String, serde_json::Value> {
    results(path)
        .into_iter()
        .map(|row| (row["id"].as_str().expect("a string id").to_owned(), row))
        .collect()
}

/// The `output` of row `id`; fails showing the row when it has none.
pub fn output_of<'a>(rows: &'a HashMap<String, serde_json::Value>, id: &str) -> &'a str {
    rows[id]["output"]
        .as_str()
        .unwrap_or_else(|| panic!("{id}: {}", rows[id]))
}

/// The simulator's counters, fetched over HTTP like any client would.
pub async fn stats(server: &SimServer) -> Stats {
    reqwest::get(format!("{}/__stats", server.base_url()))
        .await
        .expect("GET /__stats")
        .json()
        .await
        .expect("stats JSON")
}

/// Asserts that the results hold every item of a [`jsonl_job`] of `n`
/// exactly once, each `ok` with its own prompt's digest.
pub fn assert_each_item_once_with_its_reply(path: &Path, n: usize) {
    let rows = results(path);
    let mut seen = vec![false; n];
    for row in &rows {
        let id = row["id"].as_str().expect("an id");
        let i: usize = id.trim_start_matches("item-").parse().expect("item-N");
        assert!(!seen[i], "{id} is in the results twice");
        seen[i] = true;
        assert_eq!(row["status"], "ok", "{row}");
        let output = row["output"].as_str().expect("output");
        assert!(
            output.contains(&digest(&prompt(i))),
            "{id} got another item's reply: {output}"
        );
    }
    let missing: Vec<usize> = (0..n).filter(|&i| !seen[i]).collect();
    assert!(missing.is_empty(), "missing from the results: {missing:?}");
}

/// Requests the state file's ledger counts on the days around now.
pub fn ledger_requests(state: &Path) -> u64 {
    let store = keyfan::store::Store::open(state).expect("state file");
    let today = keyfan::types::QuotaDay::today();
    let days = [today, today.previous()];
    days.iter()
        .flat_map(|day| store.ledger(*day).expect("ledger"))
        .map(|row| row.requests)
        .sum()
}

/// A work directory for a simulator at `base_url` with projects `g` (key
/// `test-key-g1`) and `o` (`test-key-o1`): a job of `n` items, the even ones
/// on `openai_model` and the odd ones on gemini-2.5-flash, and a config
/// with Gemini account `g` and OpenAI-compatible account `o`.
pub fn two_providers(base_url: &str, n: usize, openai_model: &str) -> Workdir {
    let work = Workdir::new();
    let job = jsonl_job_with(n, |i| {
        let model = if i % 2 == 0 {
            openai_model
        } else {
            "gemini-2.5-flash"
        };
        serde_json::json!({ "model": model })
    });
    work.write("job.jsonl", &job);
    work.write(
        "config.yaml",
        &format!(
            "providers:\n  gemini: {{ base_url: \"{base_url}\" }}\n  openai: {{ base_url: \"{base_url}\" }}\naccounts:\n  - name: g\n    keys: [test-key-g1]\n  - name: o\n    provider: openai\n    keys: [test-key-o1]\n"
        ),
    );
    work
}

/// The simulator's projects `g` and `o` of [`two_providers`].
pub const TWO_PROVIDER_PROJECTS: &str =
    "projects:\n  - name: g\n    keys: [test-key-g1]\n  - name: o\n    keys: [test-key-o1]\n";
