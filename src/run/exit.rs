//! keyfan's exit codes: one table, from which `keyfan --help` and
//! `keyfan run --help` are made, and which the README's table must match (a
//! test compares them). [`super::RunOutcome::exit_code`] picks a run's code;
//! [`super::RunError::exit_code`] that of a run that could not start.

/// Every item ended `ok` (or `blocked` by the API's safety filters).
pub const OK: u8 = 0;
/// keyfan itself failed: state file, results file, I/O, internal error.
pub const ERROR: u8 = 1;
/// The command line, the config or the job file is invalid; nothing was sent.
pub const USAGE: u8 = 2;
/// The run finished but some items failed or were skipped.
pub const ITEMS_FAILED: u8 = 3;
/// Every account's daily quota ran out; the rest of the items are deferred.
pub const DEFERRED: u8 = 4;
/// `--max-cost` was reached; the rest of the items were not sent.
pub const BUDGET: u8 = 5;
/// Every key for a model was refused; the rest of the items stay pending.
pub const KEYS_REFUSED: u8 = 6;
/// `--batch`: items wait in the providers' batches; run again later to
/// collect them.
pub const SUBMITTED: u8 = 10;
/// Another run holds the state file; nothing was sent (try again later).
pub const LOCKED: u8 = 75;
/// Interrupted by Ctrl-C or SIGTERM (or the results pipe closed); finished
/// items are kept.
pub const INTERRUPTED: u8 = 130;

/// Each exit code of `keyfan run` and what it means, as `--help` and the
/// README say it.
pub const TABLE: &[(u8, &str)] = &[
    (OK, "every item ok (or blocked by the API's safety filters)"),
    (
        ERROR,
        "keyfan itself failed (state file, shared database unreachable or lost, results file, \
         I/O, an internal error, no endpoint reachable): unfinished items stay pending",
    ),
    (
        USAGE,
        "invalid command line, config or job file (a model no account serves or its provider \
         does not list included), an output that would overwrite an input, or a job edited \
         since its run: nothing was sent",
    ),
    (
        ITEMS_FAILED,
        "the run finished but some items failed or were skipped (--skip-invalid, or a parent that did not end ok)",
    ),
    (
        DEFERRED,
        "every account's daily quota ran out, or a server asked to wait more than 10 minutes: \
         the remaining items are deferred",
    ),
    (
        BUDGET,
        "--max-cost reached: the remaining items were not sent (running again resumes them)",
    ),
    (
        KEYS_REFUSED,
        "no key can serve a model: every key for it was refused (invalid, disabled); the \
         remaining items stay pending",
    ),
    (
        SUBMITTED,
        "--batch: items wait in the providers' batches (submitted now or earlier): run the same \
         command again later to collect them",
    ),
    (
        LOCKED,
        "another run is using the state file: nothing was sent, try again later",
    ),
    (
        INTERRUPTED,
        "interrupted by Ctrl-C or SIGTERM, or the results pipe was closed: finished items are \
         kept",
    ),
];
