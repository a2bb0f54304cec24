//! What each host did in a run several hosts worked, from the shared queue:
//! the "Hosts" section of every host's report and of `keyfan results
//! --report`.

use super::{PgError, PgState};
use serde::Serialize;
use std::collections::BTreeMap;

/// A run of the shared state, host by host.
#[derive(Debug, Clone, Serialize)]
pub struct RunHosts {
    /// The run's id in the shared state.
    pub run: i64,
    /// The run's status there (`running` until the last host out closes it,
    /// then `done`).
    pub status: String,
    /// Items no host holds yet.
    pub pending: u64,
    /// One row per host that claimed or ended an item, by name.
    pub hosts: Vec<HostRow>,
    /// The whole run: every host's row summed (its name is empty).
    pub totals: HostRow,
}

/// What one host (`hostname:pid`) did in a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HostRow {
    /// The host; empty for the totals (and then left out of the JSON).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub host: String,
    /// Items it ended, per outcome (`ok`, `failed`, `deferred`, …).
    pub ended: BTreeMap<String, u64>,
    /// Items it holds claimed, not ended yet.
    pub claimed: u64,
    /// Input tokens of the items it ended, from their results lines.
    pub input_tokens: u64,
    /// Output tokens of the items it ended, from their results lines.
    pub output_tokens: u64,
    /// Cost in USD of the items it ended; `None` (JSON `null`) when one of
    /// them went to a model whose price is unknown.
    pub cost_usd: Option<f64>,
}

impl HostRow {
    /// Items it ended, whatever their outcome.
    pub fn ended_total(&self) -> u64 {
        self.ended.values().sum()
    }

    fn add(&mut self, other: &HostRow) {
        for (outcome, n) in &other.ended {
            *self.ended.entry(outcome.clone()).or_default() += n;
        }
        self.claimed += other.claimed;
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cost_usd = self.cost_usd.zip(other.cost_usd).map(|(a, b)| a + b);
    }
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl PgState {
    /// Run `run` host by host, or `None` when the shared state has no such
    /// run. Tokens and cost come from the ended items' results lines.
    pub fn run_hosts(&mut self, run: i64) -> Result<Option<RunHosts>, PgError> {
        let wrap = &self.wrapper();
        let Some(status) = self
            .client
            .query_opt("SELECT status FROM keyfan.runs WHERE id = $1", &[&run])
            .map_err(wrap)?
        else {
            return Ok(None);
        };
        let rows = self
            .client
            .query(
                "SELECT coalesce(host, ''), status, coalesce(outcome, ''), count(*),
                        coalesce(sum((result::jsonb->>'input_tokens')::bigint), 0)::bigint,
                        coalesce(sum((result::jsonb->>'output_tokens')::bigint), 0)::bigint,
                        coalesce(sum((result::jsonb->>'cost')::float8), 0),
                        coalesce(bool_or(jsonb_typeof(result::jsonb->'cost') = 'null'), false)
                 FROM keyfan.items WHERE run_id = $1
                 GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
                &[&run],
            )
            .map_err(wrap)?;
        let mut report = RunHosts {
            run,
            status: status.get(0),
            pending: 0,
            hosts: Vec::new(),
            totals: HostRow {
                cost_usd: Some(0.0),
                ..HostRow::default()
            },
        };
        for row in rows {
            let (host, status, outcome): (String, String, String) =
                (row.get(0), row.get(1), row.get(2));
            let n = count(row.get(3));
            if host.is_empty() || status == "pending" {
                report.pending += n;
                continue;
            }
            let mut part = HostRow {
                host: host.clone(),
                cost_usd: Some(0.0),
                ..HostRow::default()
            };
            if status == "done" {
                part.ended.insert(outcome, n);
                part.input_tokens = count(row.get(4));
                part.output_tokens = count(row.get(5));
                part.cost_usd = (!row.get::<_, bool>(7)).then(|| row.get(6));
            } else {
                part.claimed = n;
            }
            match report.hosts.last_mut() {
                Some(last) if last.host == host => last.add(&part),
                _ => report.hosts.push(part),
            }
        }
        for host in &report.hosts {
            report.totals.add(host);
        }
        Ok(Some(report))
    }
}
