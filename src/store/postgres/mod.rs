//! PostgreSQL: the state several hosts share.
//!
//! keyfan's state has two backends behind the same traits. SQLite (a file,
//! the default) serves one host. PostgreSQL, chosen with
//! `--state postgres://user@host/db`, serves several: every host that names
//! the same database draws on one quota and can work one job.
//!
//! What lives here, in keyfan's own schema `keyfan` (created and migrated by
//! keyfan, versioned like the SQLite one, see [`schema`]):
//! - the day's ledger: [`QuotaLedger`](super::QuotaLedger) on [`PgState`],
//!   one conditional upsert per request, so no two hosts take the last one;
//! - the per-minute windows, handed out in small expiring slices of an
//!   account's minute ([`PgState::take_slice`], [`PgState::give_back`]), so a
//!   host does not round-trip per request and all hosts together never pass
//!   a limit in any rolling 60 s;
//! - limits learned from a 429 ([`PgState::learn`], [`PgState::learned`]),
//!   seen by every host;
//! - the run row with its heartbeat (the run lock across hosts) and the work
//!   queue of a job's items, claimed in chunks with `FOR UPDATE SKIP LOCKED`
//!   under a lease a live host renews ([`queue`]), and what each host did in
//!   a run, for the reports ([`hosts`]).
//!
//! A host keeps its own detail (attempts, its results file) locally; what
//! must be shared — quotas, the queue, the run lock, every item's result —
//! is here. Every instant is the database's clock (`now()`), so the hosts'
//! clocks need not agree. The connection is plain TCP (no TLS): the
//! database is meant to be on the loopback or a private network.
//!
//! The client is the synchronous `postgres` crate: the ledger trait is
//! synchronous, and each connection is owned by one thread (the run's
//! shared-state thread), never by an async worker.

pub mod hosts;
mod ledger;
pub mod queue;
mod schema;

pub use hosts::{HostRow, RunHosts};
pub use ledger::{Slice, SliceRefused};
pub use queue::{Claim, ClaimedItem, JoinError, ResultsError};

use std::fmt;
use std::time::Duration;

/// How long connecting may take before the database counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A `postgres://` (or `postgresql://`) state URL. Shown (`Display`,
/// `Debug`) without its password, which stays only in the connection.
#[derive(Clone, PartialEq, Eq)]
pub struct PgUrl {
    raw: String,
    shown: String,
}

impl PgUrl {
    /// The URL in `state`, if it names PostgreSQL; `None` for anything else
    /// (a file path: SQLite).
    pub fn parse(state: &str) -> Option<PgUrl> {
        let rest = state
            .strip_prefix("postgres://")
            .or_else(|| state.strip_prefix("postgresql://"))?;
        Some(PgUrl {
            raw: state.to_owned(),
            shown: format!("postgres://{}", without_password(rest)),
        })
    }

    /// The URL as it may be shown: no password.
    pub fn shown(&self) -> &str {
        &self.shown
    }
}

impl fmt::Display for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgUrl({})", self.shown)
    }
}

/// `user:secret@host/db?password=x&a=b` without `:secret` and `password=x`.
fn without_password(rest: &str) -> String {
    let (authority_path, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let authority_path = match authority_path.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info.split_once(':').map_or(user_info, |(u, _)| u);
            format!("{user}@{host}")
        }
        None => authority_path.to_owned(),
    };
    let query: Vec<&str> = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter(|pair| !pair.to_ascii_lowercase().starts_with("password="))
        .collect();
    if query.is_empty() {
        authority_path
    } else {
        format!("{authority_path}?{}", query.join("&"))
    }
}

/// A failure of the shared state.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The URL is not one PostgreSQL accepts.
    #[error("state {url}: not a valid PostgreSQL URL: {reason}")]
    Url {
        /// The URL, without password.
        url: PgUrl,
        /// What is wrong.
        reason: String,
    },
    /// The database could not be reached or refused an operation.
    #[error("state {url}: {source}")]
    Db {
        /// The URL, without password.
        url: PgUrl,
        /// PostgreSQL's error.
        #[source]
        source: postgres::Error,
    },
    /// The schema was migrated by a newer keyfan.
    #[error("state {url} has schema version {found}, newer than this keyfan's {supported}: upgrade keyfan")]
    TooNew {
        /// The URL, without password.
        url: PgUrl,
        /// Its schema version.
        found: i32,
        /// The newest this build knows.
        supported: i32,
    },
}

/// An open connection to the shared state, migrated.
pub struct PgState {
    client: postgres::Client,
    statements: ledger::Statements,
    url: PgUrl,
    host: String,
}

impl fmt::Debug for PgState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgState")
            .field("url", &self.url)
            .field("host", &self.host)
            .finish()
    }
}

impl PgState {
    /// Connects to `url` (within a few seconds, else it is unreachable) and
    /// creates or migrates keyfan's schema. `host` names this process in
    /// the rows it holds (claims, slices, the run): e.g. `hostname:pid`.
    pub fn connect(url: &PgUrl, host: &str) -> Result<PgState, PgError> {
        let mut config: postgres::Config =
            url.raw.parse().map_err(|e: postgres::Error| PgError::Url {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.application_name("keyfan");
        let wrap = |source| PgError::Db {
            url: url.clone(),
            source,
        };
        let mut client = config.connect(postgres::NoTls).map_err(wrap)?;
        schema::migrate(&mut client, url)?;
        let statements = ledger::Statements::prepare(&mut client).map_err(wrap)?;
        Ok(PgState {
            client,
            statements,
            url: url.clone(),
            host: host.to_owned(),
        })
    }

    /// A function that wraps PostgreSQL's errors with this URL, for use
    /// while the client is borrowed (in a transaction).
    fn wrapper(&self) -> impl Fn(postgres::Error) -> PgError {
        let url = self.url.clone();
        move |source| PgError::Db {
            url: url.clone(),
            source,
        }
    }

    fn wrap(&self, source: postgres::Error) -> PgError {
        PgError::Db {
            url: self.url.clone(),
            source,
        }
    }
}

/// This process's name for the shared rows: `hostname:pid`.
pub fn this_host() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{name}:{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_shown_without_its_password() {
        let url =
            PgUrl::parse("postgres://kf:s3cr3t@db.local:5433/keyfan?sslmode=disable").unwrap();
        assert_eq!(
            url.shown(),
            "postgres://kf@db.local:5433/keyfan?sslmode=disable"
        );
        assert_eq!(
            format!("{url:?}"),
            "PgUrl(postgres://kf@db.local:5433/keyfan?sslmode=disable)"
        );
        let url = PgUrl::parse("postgresql://kf@h/db?password=s3cr3t&application_name=x").unwrap();
        assert_eq!(url.to_string(), "postgres://kf@h/db?application_name=x");
        assert!(!url.shown().contains("s3cr3t"));
        // A password with '@' in it is cut at the last '@'.
        let url = PgUrl::parse("postgres://kf:p@ss@h/db").unwrap();
        assert_eq!(url.shown(), "postgres://kf@h/db");
    }

    #[test]
    fn a_path_is_not_a_postgres_url() {
        assert!(PgUrl::parse("state.db").is_none());
        assert!(PgUrl::parse("/var/lib/keyfan/postgres.db").is_none());
    }
}
