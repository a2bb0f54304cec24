//! The command line: clap definitions, `Settings::resolve` (each flag over
//! the config, once), dispatch, and the display of a run. No business logic
//! lives here: `keyfan run` is [`crate::run()`]; its exit codes come from
//! [`crate::run::exit`].

mod batches_cmd;
mod estimate_cmd;
mod keys_cmd;
mod progress;
mod results_cmd;
mod run_cmd;
mod sim_cmd;
mod state_cmd;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

use crate::run::exit;

/// Help text lines are wrapped at this width.
const HELP_WIDTH: usize = 80;

/// The exit codes of `keyfan run`, from the one table ([`exit::TABLE`]), as
/// `--help` shows them: each meaning wrapped under its own column.
fn exit_codes_help() -> String {
    const INDENT: usize = 7;
    let mut help = String::from("Exit codes:");
    for (code, meaning) in exit::TABLE {
        let mut line = format!("\n  {code:<4} ");
        for word in meaning.split(' ') {
            if line.len() + word.len() > HELP_WIDTH {
                help.push_str(line.trim_end());
                line = format!("\n{:INDENT$}", "");
            }
            line.push_str(word);
            line.push(' ');
        }
        help.push_str(line.trim_end());
    }
    help
}

/// `keyfan --version`: the package version, the commit and the build date
/// (set by the build script, `src/build.rs`).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("KEYFAN_COMMIT"),
    ", built ",
    env!("KEYFAN_BUILD_DATE"),
    ")"
);

/// Fan a job of LLM prompts across many API keys and projects, within every
/// project's quotas.
#[derive(Debug, Parser)]
#[command(name = "keyfan", version = VERSION, after_help = exit_codes_help())]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Print less: no progress, only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Print more: one line per request (keys shown as fingerprints).
    #[arg(short, long, global = true)]
    verbose: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a job: send every item, write results and a report.
    #[command(after_help = format!("{RUN_EXAMPLES}\n\n{}", exit_codes_help()))]
    Run(RunArgs),
    /// Estimate a job's tokens, cost and wall time (sends nothing).
    #[command(after_help = ESTIMATE_EXAMPLES)]
    Estimate(EstimateArgs),
    /// Check keys, or show today's quota use and key health.
    Keys(KeysArgs),
    /// List the runs recorded in a state file.
    Runs(RunsArgs),
    /// Show and control the provider batches of a state file (`run --batch`).
    #[command(after_help = BATCHES_EXAMPLES)]
    Batches(BatchesArgs),
    /// Rebuild a run's report from its state file alone (sends nothing).
    Report(ReportArgs),
    /// Write every result of a run several hosts worked, from the shared
    /// state (`--state postgres://…`), in job order.
    Results(ResultsArgs),
    /// Start the local simulator of the Gemini and OpenAI APIs.
    #[command(after_help = SIM_EXAMPLES)]
    Sim(SimArgs),
    /// Print the shell completion script for SHELL on standard output.
    #[command(after_help = COMPLETIONS_EXAMPLES)]
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

const COMPLETIONS_EXAMPLES: &str = "\
Examples:
  keyfan completions bash > ~/.local/share/bash-completion/completions/keyfan
  keyfan completions zsh > ~/.zfunc/_keyfan      # with fpath+=~/.zfunc before compinit
  keyfan completions fish > ~/.config/fish/completions/keyfan.fish";

/// `keyfan keys`.
#[derive(Debug, Args)]
struct KeysArgs {
    /// The config file whose keys to look at.
    #[arg(
        short,
        long,
        global = true,
        env = "KEYFAN_CONFIG",
        default_value = "config.yaml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Send one free request per key (Gemini countTokens, OpenAI model list)
    /// and tell which keys work.
    #[command(after_help = KEYS_CHECK_EXIT_CODES)]
    Check {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show today's usage per account against its limits, and each key's
    /// last known state, from a state file. Needs no key: the state file
    /// holds fingerprints; limits come from the config when it exists.
    Status {
        /// The SQLite state file of your runs.
        #[arg(long)]
        state: PathBuf,
        /// Read a simulated run's state (e.g. jobs/demo.simulated.db): key
        /// variables that are not set stand for the placeholder keys that
        /// `run --simulate` used, so its keys show their real state.
        #[arg(long)]
        simulate: bool,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
}

const KEYS_CHECK_EXIT_CODES: &str = "\
Exit codes:
  0    every key answered ok
  1    keyfan failed (e.g. an HTTP client could not be built)
  2    invalid command line or config (a key's variable not set): nothing was sent
  3    some key is not ok: invalid, no access, rate limited or another error";

const ESTIMATE_EXAMPLES: &str = "\
Examples:
  keyfan estimate jobs/demo.jsonl --config config.example.yaml
  keyfan estimate prompts.jsonl --config config.yaml --expect-output 400 --json | jq .total

Exit codes:
  0    the estimate was printed
  1    keyfan failed (e.g. the state file cannot be read)
  2    invalid command line, config or job, or a model with no known price";

/// `keyfan estimate`.
#[derive(Debug, Args)]
struct EstimateArgs {
    /// The job file (`.jsonl` or `.csv`).
    job: PathBuf,
    /// The config file (accounts, limits, prices). No key is needed.
    #[arg(short, long, env = "KEYFAN_CONFIG", default_value = "config.yaml")]
    config: PathBuf,
    /// The state file whose ledger says what today's quotas have left.
    /// [default: <job>.keyfan.db beside the job, if it exists]
    #[arg(long)]
    state: Option<PathBuf>,
    /// Output tokens expected per item. [default: the config's
    /// `expected_output_tokens`, else 256]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    expect_output: Option<u32>,
    /// Ask the API for each item's exact input tokens (Gemini's free
    /// countTokens, through the key pool, within the accounts' limits)
    /// instead of estimating them; needs the keys. Other providers' items
    /// keep the estimate. Media files too large to go inline are uploaded
    /// to be counted, and remembered in the state file for the run to reuse.
    #[arg(long)]
    count_tokens: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

const BATCHES_EXAMPLES: &str = "\
Examples:
  keyfan batches list --state prompts.keyfan.db
  keyfan batches status --state prompts.keyfan.db --config config.yaml --json
  keyfan batches cancel keyfan-1a2b3c4d-r1-b2 --state prompts.keyfan.db --config config.yaml

Exit codes:
  0    done
  1    keyfan failed (e.g. the state file cannot be read, a provider refused)
  2    invalid command line or config, or no such batch";

/// `keyfan batches`.
#[derive(Debug, Args)]
struct BatchesArgs {
    /// The SQLite state file of your `run --batch` runs.
    #[arg(long, global = true)]
    state: Option<PathBuf>,
    /// The config file: the keys `status` and `cancel` ask the providers
    /// with.
    #[arg(
        short,
        long,
        global = true,
        env = "KEYFAN_CONFIG",
        default_value = "config.yaml"
    )]
    config: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: BatchesCommand,
}

#[derive(Debug, Subcommand)]
enum BatchesCommand {
    /// Every batch of the state file as last recorded: stage, items, age or
    /// duration, account (sends nothing; needs no key).
    List,
    /// The open batches as their providers see them now: state and counts
    /// (one request per batch).
    Status,
    /// Ask the provider to cancel a batch (by its display name or the
    /// provider's id); the next `run --batch` collects what it finished and
    /// puts the rest back to pending.
    Cancel {
        /// The batch's display name (`keyfan-…`) or provider id.
        batch: String,
    },
}

/// `keyfan runs`.
#[derive(Debug, Args)]
struct RunsArgs {
    /// The SQLite state file.
    #[arg(long)]
    state: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// `keyfan results`.
#[derive(Debug, Args)]
struct ResultsArgs {
    /// The run in the shared state. [default: the newest]
    run: Option<i64>,
    /// The shared state: `postgres://user@host/db`.
    #[arg(long)]
    state: String,
    /// The JSONL file to write.
    #[arg(short, long)]
    out: PathBuf,
    /// Also write the run's Hosts section (what each host did, and the
    /// whole run) here: JSON when the name ends in `.json`, else Markdown.
    #[arg(long)]
    report: Option<PathBuf>,
}

/// `keyfan report`.
#[derive(Debug, Args)]
struct ReportArgs {
    /// The run to report on. [default: the newest]
    run: Option<i64>,
    /// The SQLite state file.
    #[arg(long)]
    state: PathBuf,
    /// The format printed.
    #[arg(long, value_enum, default_value_t = ReportFormat::Md)]
    format: ReportFormat,
    /// Print JSON: the same as `--format json`.
    #[arg(long, conflicts_with = "format")]
    json: bool,
}

/// `keyfan report --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ReportFormat {
    /// Markdown.
    Md,
    /// JSON.
    Json,
    /// CSV, one row per account and model.
    Csv,
    /// One self-contained HTML page with charts.
    Html,
}

const RUN_EXAMPLES: &str = "\
Examples:
  # Rehearse against the built-in simulator (no key, no network):
  keyfan run jobs/demo.jsonl --config config.example.yaml --simulate

  # Real run; keys come from the environment as the config says:
  GEMINI_API_KEY_1=... GEMINI_API_KEY_2=... keyfan run prompts.jsonl --config config.yaml

  # Results to stdout for a pipe, CSV job, 32 requests in flight:
  keyfan run prompts.csv --config config.yaml --out - --concurrency 32 | jq .status";

const SIM_EXAMPLES: &str = "\
Examples:
  keyfan sim --port 8089                      # defaults: any model of the built-in list, no limits
  keyfan sim --config sim.yaml --port 8089    # projects, keys, limits, latency and faults from a file";

/// `keyfan run`.
#[derive(Debug, Args)]
struct RunArgs {
    /// The job file: `.jsonl` (one JSON object per line, or an OpenAI or
    /// Gemini batch input file as it is) or `.csv` (header row); `-` reads a
    /// JSONL job from standard input.
    job: PathBuf,
    /// The config file (providers, accounts, keys, limits).
    #[arg(short, long, env = "KEYFAN_CONFIG", default_value = "config.yaml")]
    config: PathBuf,
    /// Results file; `.csv` for CSV, `-` for JSONL on standard output.
    /// [default: <job>.results.jsonl beside the job]
    #[arg(short, long)]
    out: Option<String>,
    /// The results' shape: `keyfan` (the documented columns), or `batch`
    /// for a job that is an OpenAI or Gemini batch file: that batch API's
    /// output lines (JSONL), so a pipeline built for it reads them as they are.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = crate::sink::OutFormat::Keyfan)]
    out_format: crate::sink::OutFormat,
    /// Where the report goes: PATH with the extensions `.md`, `.json` and
    /// `.html`.
    /// [default: <out>.report.md and .json beside --out, or beside the job
    /// when --out is the default or `-`]
    #[arg(long, value_name = "PATH")]
    report: Option<PathBuf>,
    /// SQLite state file, or `postgres://user@host/db`: PostgreSQL, the
    /// state several hosts share (quotas, the job's work queue, results);
    /// this host's detail then stays in the default file. [default:
    /// <job>.keyfan.db beside the job, or <job>.simulated.db with --simulate]
    #[arg(long)]
    state: Option<PathBuf>,
    /// With `--state postgres://…`: work the job's run alongside the hosts
    /// already on it, claiming items from its queue.
    #[arg(long)]
    join: bool,
    /// With `--state postgres://…`: seconds a host's claim on items lasts
    /// unless renewed; a dead host's items return to the queue after it.
    #[arg(long, value_name = "SECONDS", default_value_t = crate::run::DEFAULT_LEASE.as_secs_f64(), value_parser = lease_seconds)]
    lease: f64,
    /// Requests in flight at most, 1 to 10000. [default: the config's
    /// `concurrency`]
    #[arg(short = 'j', long, value_parser = concurrency)]
    concurrency: Option<usize>,
    /// Use the keys of this group first; the other groups are fallbacks in
    /// the config's `groups` order.
    #[arg(long)]
    group: Option<String>,
    /// How to choose among keys with room. [default: the config's `strategy`]
    #[arg(long, value_parser = strategy_names())]
    strategy: Option<crate::pool::Strategy>,
    /// Run against the built-in simulator on a loopback port instead of the
    /// real APIs: no key and no network needed; all output is labelled SIMULATED.
    #[arg(long)]
    simulate: bool,
    /// Do not check the job's models against the providers' model lists
    /// before sending (no list request; a list kept in the state file is
    /// not used either).
    #[arg(long)]
    offline: bool,
    /// Run the valid items of a job that has invalid lines (they are recorded
    /// as `skipped`), instead of refusing to send anything.
    #[arg(long)]
    skip_invalid: bool,
    /// Print a JSON summary on standard output when done (for scripts).
    #[arg(long)]
    json: bool,
    /// Start a fresh run even if the state file has a run of this same job
    /// (by default keyfan resumes it: finished items are not sent again).
    #[arg(long)]
    new_run: bool,
    /// When resuming, send the items that failed last time again.
    #[arg(long)]
    retry_failed: bool,
    /// Stop sending before this run's cost (USD) could pass this cap. Each
    /// item's worst case (estimated input + its output cap, at the model's
    /// price) is reserved before it is sent; items without
    /// `max_output_tokens` are capped at 8192 output tokens.
    #[arg(long, value_name = "USD", value_parser = positive_usd)]
    max_cost: Option<f64>,
    /// Send only N items, spread over the job by a seeded choice, then stop
    /// and print their cost and time per item, the extrapolation to the
    /// whole job and the share not `ok`. The next run without --sample
    /// sends the rest (never a sampled item again).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    sample: Option<u64>,
    /// The seed of --sample's choice: the items whose sha256(seed ‖ id)
    /// ranks lowest are sent.
    #[arg(long, value_name = "SEED", default_value_t = 0, requires = "sample")]
    sample_seed: u64,
    /// Submit the job to the providers' Batch APIs (half price, results
    /// within 24 hours) instead of sending it, after collecting what earlier
    /// `--batch` runs submitted. Exits 10 while batches are open: run the
    /// same command again (e.g. from cron) until it exits 0.
    #[arg(long, conflicts_with_all = ["sample", "max_cost"])]
    batch: bool,
    /// With --batch: requests per batch at most. [default: 100000 for
    /// Gemini, 50000 for OpenAI, 100000 for Anthropic]
    #[arg(long, value_name = "N", requires = "batch", value_parser = clap::value_parser!(u64).range(1..))]
    batch_size: Option<u64>,
    /// With --batch: bytes of input file per batch at most. [default: 2 GB
    /// for Gemini, 200 MB for OpenAI, 255 MB for Anthropic]
    #[arg(long, value_name = "BYTES", requires = "batch", value_parser = clap::value_parser!(u64).range(1..))]
    batch_bytes: Option<u64>,
    /// With --batch: estimated input tokens per batch at most (your tier's
    /// enqueued-token limit for the model). [default: no limit]
    #[arg(long, value_name = "N", requires = "batch", value_parser = clap::value_parser!(u64).range(1..))]
    batch_tokens: Option<u64>,
    /// With --batch --retry-failed: send the items that failed inside a
    /// batch online in this run instead of batching them again.
    #[arg(long, requires_all = ["batch", "retry_failed"])]
    online_fallback: bool,
    /// Not a keyfan flag: caught to say what to use instead.
    #[arg(long, hide = true)]
    dry_run: bool,
}

fn concurrency(s: &str) -> Result<usize, String> {
    let max = crate::config::MAX_CONCURRENCY;
    match s.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("`{s}` is not a number of requests from 1 to {max}")),
    }
}

/// The strategies by name, for `--strategy`'s parser and its help.
fn strategy_names() -> impl clap::builder::TypedValueParser<Value = crate::pool::Strategy> {
    use crate::pool::Strategy;
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(Strategy::ALL.map(Strategy::name))
        .map(|name| name.parse::<Strategy>().expect("a listed strategy name"))
}

fn positive_usd(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("`{s}` is not a positive amount in USD")),
    }
}

/// `keyfan sim`.
#[derive(Debug, Args)]
struct SimArgs {
    /// Simulator config (projects, keys, limits, latency, faults).
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(short, long, default_value_t = 8089)]
    port: u16,
}

/// How much the CLI prints on standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verbosity {
    Quiet,
    Normal,
    Verbose,
}

impl Cli {
    fn verbosity(&self) -> Verbosity {
        match (self.quiet, self.verbose) {
            (true, _) => Verbosity::Quiet,
            (_, true) => Verbosity::Verbose,
            _ => Verbosity::Normal,
        }
    }
}

/// A failure with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl Failure {
    fn usage(error: impl Into<anyhow::Error>) -> Failure {
        Failure {
            code: exit::USAGE,
            error: error.into(),
        }
    }
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(error: E) -> Failure {
        Failure {
            code: exit::ERROR,
            error: error.into(),
        }
    }
}

/// A claim lease in seconds: from 0.5 s to a day.
fn lease_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if (0.5..=86_400.0).contains(&s) => Ok(s),
        _ => Err(format!(
            "{text} is not a number of seconds from 0.5 to 86400"
        )),
    }
}

/// Opens an existing state file for reading commands; a missing one is a
/// usage error (those commands must not create it).
fn open_state(state: &std::path::Path) -> Result<crate::store::Store, Failure> {
    if !state.exists() {
        return Err(Failure::usage(anyhow::anyhow!(
            "state file {} does not exist (run a job with --state first)",
            state.display()
        )));
    }
    Ok(crate::store::Store::open(state)?)
}

/// Loads the config file at `path` with the process environment, unset
/// variables handled as `missing` says; a bad config is a usage error.
fn load_config(
    path: &std::path::Path,
    missing: crate::config::MissingEnv,
) -> Result<crate::config::Config, Failure> {
    crate::config::Config::load(path, |name| std::env::var(name).ok(), missing)
        .map_err(Failure::usage)
}

/// Prints `value` as pretty JSON on standard output, for `--json`.
fn print_json(value: &impl serde::Serialize) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value).map_err(anyhow::Error::from)?;
    println!("{text}");
    Ok(())
}

/// Runs the parsed command line and returns the process exit code.
pub async fn main(cli: Cli) -> ExitCode {
    let verbosity = cli.verbosity();
    let result = match cli.command {
        Command::Run(args) => run_cmd::run(args, verbosity).await,
        Command::Estimate(args) => estimate_cmd::run(args).await,
        Command::Keys(args) => keys_cmd::run(args, verbosity).await,
        Command::Runs(args) => state_cmd::runs(args),
        Command::Batches(args) => batches_cmd::run(args).await,
        Command::Report(args) => state_cmd::report(args),
        Command::Results(args) => results_cmd::run(args).await,
        Command::Sim(args) => sim_cmd::run(args, verbosity).await,
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "keyfan", &mut std::io::stdout());
            Ok(exit::OK)
        }
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(Failure { code, error }) => {
            eprintln!("keyfan: error: {error:#}");
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn keyfan_and_run_help_list_every_exit_code_of_the_table() {
        let mut cli = Cli::command();
        let top = cli.render_long_help().to_string();
        let run = cli
            .find_subcommand_mut("run")
            .expect("a run command")
            .render_long_help()
            .to_string();
        let help = exit_codes_help();
        for text in [&top, &run] {
            assert!(text.contains(&help), "{text}");
        }
        for (code, meaning) in exit::TABLE {
            let listed = help
                .split_once(&format!("\n  {code:<4} "))
                .unwrap_or_else(|| panic!("code {code} missing from {help}"))
                .1;
            // The meaning, wrapped: its words in order.
            let words: Vec<&str> = listed.split_whitespace().collect();
            let wanted: Vec<&str> = meaning.split_whitespace().collect();
            assert_eq!(words[..wanted.len()], wanted[..], "{help}");
        }
        assert!(help.lines().all(|l| l.len() <= HELP_WIDTH), "{help}");
    }
}
