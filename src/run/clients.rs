//! The HTTP clients of a run, one per account (its provider, base URL and
//! proxy), and what is known of each endpoint's reachability.
//!
//! The run owns these, not the pool: the pool chooses keys and never sends.

use crate::config::Config;
use crate::provider::{ApiError, Client};
use crate::types::AccountId;
use std::sync::Mutex;

/// Connection failures in a row after which an endpoint is called
/// unreachable (and, when every endpoint is, the run stops).
pub const UNREACHABLE_AFTER: u32 = 5;

/// Why the clients could not be built.
#[derive(Debug, thiserror::Error)]
#[error("failed to build the HTTP client of account {account}")]
pub struct ClientError {
    /// The account.
    account: String,
    /// reqwest's error (e.g. a bad proxy URL).
    #[source]
    source: reqwest::Error,
}

/// One client per account, indexed by [`AccountId`].
#[derive(Debug)]
pub struct Clients {
    clients: Vec<Client>,
    /// Each account's endpoint: an index into `urls` and `endpoints`.
    endpoint_of: Vec<usize>,
    /// The distinct base URLs.
    urls: Vec<String>,
    endpoints: Mutex<Vec<Endpoint>>,
}

impl Clients {
    /// Builds a client for every account of `config`, in file order (the
    /// pool's [`AccountId`]s): its provider's base URL, its proxy, the
    /// configured timeout and `default_max_output_tokens`.
    pub fn new(config: &Config) -> Result<Clients, ClientError> {
        let clients = config
            .accounts
            .iter()
            .map(|account| {
                let base_url = &config.providers[&account.provider].base_url;
                Client::new(
                    account.provider,
                    base_url,
                    config.timeout,
                    account.proxy.as_deref(),
                )
                .map(|client| {
                    client.with_default_max_output_tokens(config.default_max_output_tokens)
                })
                .map_err(|source| ClientError {
                    account: account.name.clone(),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Clients::from_clients(clients))
    }

    /// Wraps clients already built, one per account in [`AccountId`] order
    /// (e.g. clients on another transport).
    pub fn from_clients(clients: Vec<Client>) -> Clients {
        let mut urls: Vec<String> = Vec::new();
        let endpoint_of = clients
            .iter()
            .map(|client| {
                let url = client.base_url();
                urls.iter().position(|u| u == url).unwrap_or_else(|| {
                    urls.push(url.to_owned());
                    urls.len() - 1
                })
            })
            .collect();
        let endpoints = Mutex::new(urls.iter().map(|_| Endpoint::default()).collect());
        Clients {
            clients,
            endpoint_of,
            urls,
            endpoints,
        }
    }

    /// The client of `account`.
    pub fn get(&self, account: AccountId) -> &Client {
        &self.clients[account.0]
    }

    fn endpoints(&self) -> std::sync::MutexGuard<'_, Vec<Endpoint>> {
        self.endpoints.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records what a request sent for `account` met at its endpoint: an
    /// answer, an HTTP error, a failure to connect, or neither (a timeout, a
    /// cut connection). Returns whether the run cannot go on: every endpoint
    /// sent to has failed to connect [`UNREACHABLE_AFTER`] times in a row
    /// and none has ever answered (a wrong port or host, not an outage).
    pub fn observe(&self, account: AccountId, result: Result<(), &ApiError>) -> bool {
        let answered = result.map_or_else(|e| e.status.is_some(), |()| true);
        let refused = result.err().and_then(connect_failure);
        let mut endpoints = self.endpoints();
        endpoints[self.endpoint_of[account.0]].observe(answered, refused);
        let tried = || endpoints.iter().filter(|e| e.tried());
        refused.is_some() && tried().all(|e| e.unreachable().is_some() && !e.answered())
    }

    /// Base URLs that failed to connect [`UNREACHABLE_AFTER`] times in a
    /// row, each with its last connection error.
    pub fn unreachable(&self) -> Vec<(String, String)> {
        let endpoints = self.endpoints();
        self.urls
            .iter()
            .zip(endpoints.iter())
            .filter_map(|(url, e)| Some((url.clone(), e.unreachable()?.to_owned())))
            .collect()
    }
}

/// Whether `error` is a failure to connect at all (refused, no route, DNS),
/// as the transport describes it: the request never reached a server.
fn connect_failure(error: &ApiError) -> Option<&str> {
    (error.status.is_none() && error.message.starts_with("connection failed"))
        .then_some(error.message.as_str())
}

/// What is known of one base URL's reachability.
#[derive(Debug, Default)]
struct Endpoint {
    /// Connection failures in a row.
    refused: u32,
    /// Whether it was ever sent to.
    tried: bool,
    /// Whether it ever answered (with any HTTP status).
    answered: bool,
    /// The last connection failure, for the user.
    last_error: String,
}

impl Endpoint {
    /// Records one request's fate: `connect_error` when the connection
    /// failed, else whether an HTTP answer came.
    fn observe(&mut self, answered: bool, connect_error: Option<&str>) {
        self.tried = true;
        match connect_error {
            Some(error) => {
                self.refused = self.refused.saturating_add(1);
                error.clone_into(&mut self.last_error);
            }
            None => {
                self.refused = 0;
                self.answered |= answered;
            }
        }
    }

    /// The last connection failure, once there were enough in a row.
    fn unreachable(&self) -> Option<&str> {
        (self.refused >= UNREACHABLE_AFTER).then_some(self.last_error.as_str())
    }

    /// Whether it was ever sent to.
    fn tried(&self) -> bool {
        self.tried
    }

    /// Whether it ever answered.
    fn answered(&self) -> bool {
        self.answered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_is_unreachable_after_failures_in_a_row_only() {
        let mut e = Endpoint::default();
        for _ in 0..UNREACHABLE_AFTER - 1 {
            e.observe(false, Some("connection refused"));
        }
        assert_eq!(e.unreachable(), None);
        e.observe(true, None);
        for _ in 0..UNREACHABLE_AFTER {
            e.observe(false, Some("connection refused"));
        }
        assert_eq!(e.unreachable(), Some("connection refused"));
        assert!(e.answered() && e.tried());
    }
}
