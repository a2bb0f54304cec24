//! What one run needs, resolved and typed: the job, the config with the
//! command line's choices merged in, and where each output goes. The CLI
//! builds it once (`Settings::resolve`); nothing below looks at flags.

use super::entry::StartError;
use super::Resume;
use crate::config::Config;
use crate::paths;
use crate::pool::Strategy;
use crate::sink::{OutFormat, Target};
use std::path::{Path, PathBuf};

/// Everything a run needs, with every choice made.
#[derive(Debug)]
pub struct Settings {
    /// The job.
    pub job: Job,
    /// The config, as loaded (under `simulate`, the simulator's address
    /// replaces the providers' once it is started).
    pub config: Config,
    /// Where the config was read from: no output may overwrite it.
    pub config_path: PathBuf,
    /// Where the results, the state file and the report go.
    pub outputs: Outputs,
    /// Rehearse against the built-in simulator instead of the real APIs.
    pub simulate: bool,
    /// Skip the check of the job's models against the providers' lists.
    pub offline: bool,
    /// Run the valid items of a job that has invalid lines (those are
    /// recorded as `skipped`) instead of refusing the job.
    pub skip_invalid: bool,
    /// How to take up an earlier run of the same job.
    pub resume: Resume,
    /// How to choose among keys with room.
    pub strategy: Strategy,
    /// The group whose keys go first, if any.
    pub group: Option<String>,
    /// Requests in flight at most (fewer when the job has fewer items).
    pub concurrency: usize,
    /// The spending cap in USD, if any.
    pub max_cost: Option<f64>,
    /// `--sample`: send only this many items, chosen spread over the job,
    /// and measure them; the next run sends the rest.
    pub sample: Option<super::Sample>,
    /// Whether Ctrl-C and SIGTERM stop the run (first gracefully, then for
    /// good): the CLI's way; a program embedding keyfan may not want it.
    pub stop_on_signals: bool,
    /// `--batch`: submit to the providers' Batch APIs (and collect what
    /// earlier runs submitted) within these limits, instead of sending.
    pub batch: Option<crate::batch::BatchSettings>,
}

/// The job as the run sees it.
#[derive(Debug)]
pub struct Job {
    /// The file to read: the job file, or standard input's spool.
    pub file: PathBuf,
    /// What messages call it: the path as typed, or "standard input".
    pub label: String,
    /// Where default outputs go beside: the job file, or `stdin.jsonl` in
    /// the current directory.
    base: PathBuf,
    /// The job's name in the state file: its canonical path, or `-`.
    key: String,
    /// The path as typed, under which earlier keyfans stored runs.
    typed: String,
    /// Whether the job came from standard input.
    pub stdin: bool,
    /// Removes standard input's spool when the run is over.
    _spool: Option<Spool>,
}

impl Job {
    /// The job at `path`; `-` reads standard input to its end into a
    /// private spool file (removed when the job is dropped).
    pub fn open(path: &Path) -> std::io::Result<Job> {
        if path == Path::new("-") {
            let spool = Spool::from_stdin()?;
            return Ok(Job {
                file: spool.file.clone(),
                label: "standard input".to_owned(),
                base: PathBuf::from("stdin.jsonl"),
                key: "-".to_owned(),
                typed: "-".to_owned(),
                stdin: true,
                _spool: Some(spool),
            });
        }
        let typed = path.display().to_string();
        Ok(Job {
            file: path.to_owned(),
            label: typed.clone(),
            base: path.to_owned(),
            // A job that cannot be resolved is not found either: validation
            // says so.
            key: paths::canonical(path).map_or_else(|_| typed.clone(), |p| p.display().to_string()),
            typed,
            stdin: false,
            _spool: None,
        })
    }

    /// The job's name in the state file.
    pub(super) fn key(&self) -> &str {
        &self.key
    }

    /// The names an earlier run of this job may be stored under.
    pub(super) fn keys(&self) -> Vec<&str> {
        vec![self.key.as_str(), self.typed.as_str()]
    }
}

/// A job read from standard input, spooled to a private temporary file so
/// it can be validated and then read again by the run (its content hash
/// matches a rerun with the same input to its run). Removed when dropped.
#[derive(Debug)]
struct Spool {
    dir: PathBuf,
    file: PathBuf,
}

impl Spool {
    fn from_stdin() -> std::io::Result<Spool> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!("keyfan-stdin-{}-{nanos}", std::process::id()));
        // `create_dir` fails if the name exists, so the directory is ours.
        std::fs::create_dir(&dir)?;
        let spool = Spool {
            file: dir.join("stdin.jsonl"),
            dir,
        };
        let mut file = std::fs::File::create_new(&spool.file)?;
        std::io::copy(&mut std::io::stdin().lock(), &mut file)?;
        Ok(spool)
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where a run writes: results, state file, report.
#[derive(Debug, Clone)]
pub struct Outputs {
    /// The results.
    pub target: Target,
    /// The SQLite state file.
    pub state: PathBuf,
    /// The Markdown report.
    pub report_md: PathBuf,
    /// The JSON report.
    pub report_json: PathBuf,
    /// The HTML report.
    pub report_html: PathBuf,
    /// The shape of the results rows: keyfan's, or the output lines of the
    /// batch API whose batch file the job is.
    pub format: OutFormat,
    /// The state several hosts share (`--state postgres://…`), if any; the
    /// SQLite file at `state` then keeps this host's own detail.
    pub shared: Option<SharedState>,
}

/// How a run takes part in the state several hosts share.
#[derive(Debug, Clone)]
pub struct SharedState {
    /// The database.
    pub url: crate::store::postgres::PgUrl,
    /// Work the job's run alongside the hosts already on it (`--join`).
    pub join: bool,
    /// How long a claim lasts unless renewed: a dead host's items return to
    /// the queue after it.
    pub lease: std::time::Duration,
}

/// The claim lease when none is given: a live host renews a third of it.
pub const DEFAULT_LEASE: std::time::Duration = std::time::Duration::from_secs(30);

impl Outputs {
    /// The outputs of `job`, each where it was asked to go (`out`: a path or
    /// `-`; `report`: a path whose extension becomes `.md`, `.json` and
    /// `.html`) or
    /// by default beside the job: `<job>.results.jsonl`, `<job>.keyfan.db`
    /// (`<job>.simulated.db` under `simulate`), and the report beside `out`
    /// when it is a file, else beside the job. Results are keyfan's rows
    /// ([`OutFormat::Keyfan`]; set `format` for others).
    pub fn pick(
        job: &Job,
        out: Option<&str>,
        state: Option<PathBuf>,
        report: Option<&Path>,
        simulate: bool,
    ) -> Outputs {
        let target = out.map_or_else(
            || Target::File(beside(&job.base, "results.jsonl")),
            Target::parse,
        );
        // A PostgreSQL URL is the shared state; this host's detail stays
        // in the default file.
        let shared = state
            .as_deref()
            .and_then(Path::to_str)
            .and_then(crate::store::postgres::PgUrl::parse)
            .map(|url| SharedState {
                url,
                join: false,
                lease: DEFAULT_LEASE,
            });
        let state = state
            .filter(|_| shared.is_none())
            .unwrap_or_else(|| default_state(&job.base, simulate));
        let report_path = |ext: &str| match (report, out, &target) {
            (Some(path), _, _) => path.with_extension(ext),
            (None, Some(_), Target::File(out)) => beside(out, &format!("report.{ext}")),
            _ => beside(&job.base, &format!("report.{ext}")),
        };
        let (report_md, report_json, report_html) =
            (report_path("md"), report_path("json"), report_path("html"));
        Outputs {
            target,
            state,
            report_md,
            report_json,
            report_html,
            format: OutFormat::Keyfan,
            shared,
        }
    }

    /// Refuses (before anything is written) an output that is the same
    /// file as the job, the config, the state file or one of its side files
    /// (SQLite's `-wal` and `-shm`, the run lock), or as another output:
    /// writing it would destroy that file. Paths are compared by identity
    /// (see [`paths::same_file`]), so a symlink or hard link is caught.
    pub(super) fn check_distinct(&self, job: &Path, config: &Path) -> Result<(), StartError> {
        let state = paths::canonical(&self.state).map_err(|source| StartError::Io {
            what: format!("resolve --state {}", self.state.display()),
            source,
        })?;
        let mut inputs: Vec<(&'static str, PathBuf)> = vec![
            ("the job", job.to_owned()),
            ("the config", config.to_owned()),
            ("the state file", self.state.clone()),
        ];
        for suffix in ["-wal", "-shm", "-journal"] {
            inputs.push((
                "the state file's journal",
                paths::with_suffix(&state, suffix),
            ));
        }
        inputs.push(("the state file's lock", crate::store::lock_path(&state)));
        let mut outputs: Vec<(&'static str, &Path)> = Vec::new();
        if let Target::File(out) = &self.target {
            outputs.push(("--out", out));
        }
        outputs.push(("the report", &self.report_md));
        outputs.push(("the JSON report", &self.report_json));
        outputs.push(("the HTML report", &self.report_html));
        for (i, &(name, output)) in outputs.iter().enumerate() {
            let earlier = outputs[..i].iter().map(|&(n, p)| (n, p.to_owned()));
            let clash = inputs
                .iter()
                .cloned()
                .chain(earlier)
                .find(|(_, other)| paths::same_file(output, other));
            if let Some((other, path)) = clash {
                return Err(StartError::SameFile {
                    name,
                    output: output.to_owned(),
                    other,
                    path,
                });
            }
        }
        Ok(())
    }
}

/// `jobs/demo.jsonl` + `results.jsonl` → `jobs/demo.results.jsonl`.
/// The state file a job uses when `--state` names none: beside it, and a
/// separate one for rehearsals, so they never touch the real ledger.
pub fn default_state(job: &Path, simulate: bool) -> PathBuf {
    beside(
        job,
        if simulate {
            "simulated.db"
        } else {
            "keyfan.db"
        },
    )
}

fn beside(job: &Path, suffix: &str) -> PathBuf {
    job.with_extension(suffix)
}
