//! `--sample N`: a staged rollout. The run sends N items spread over the
//! job, records them as finished items of the run, and stops; what they
//! cost and took per item is measured and extrapolated to the whole job.
//! The next plain run of the job resumes the same run and sends the rest.
//!
//! The N items are chosen by a seeded hash, not by position: each item not
//! finished yet is ranked by the first 8 bytes (big-endian) of
//! `sha256(seed as 8 little-endian bytes ‖ id)`, and the N lowest ranks are
//! sent. The choice is one streaming pass over the job that keeps N ids
//! (a bounded max-heap), the same for the same job, ids and seed, and as
//! spread over the file as a uniform random choice.

use super::Dependencies;
use crate::job::{id_hash, JobError, JobReader};
use crate::store::{ItemStatus, RunId, Store, StoreError};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{BinaryHeap, HashSet};
use std::path::Path;

/// What `--sample` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// How many items to send.
    pub items: u64,
    /// The seed of the choice (`--sample-seed`, 0 by default).
    pub seed: u64,
}

/// The ids (as [`id_hash`]es) of the `sample.items` valid items of the job
/// at `path`, not in `done` and whose parents are (see `deps`), with the
/// lowest ranks under `sample.seed`. The file must be the one validated
/// (`validated` is its content hash).
pub(super) fn choose(
    path: &Path,
    validated: &str,
    done: &HashSet<u64>,
    deps: &Dependencies,
    sample: Sample,
) -> Result<HashSet<u64>, JobError> {
    let keep = usize::try_from(sample.items).unwrap_or(usize::MAX);
    // The kept ranks, the highest on top: it leaves when a lower one comes.
    let mut kept: BinaryHeap<(u64, u64)> = BinaryHeap::new();
    let mut reader = JobReader::open(path)?;
    for item in (&mut reader).flatten() {
        let id = id_hash(&item.id);
        if done.contains(&id) || !deps.may_sample(&item, done) {
            continue;
        }
        let rank = rank(sample.seed, &item.id);
        if kept.len() < keep {
            kept.push((rank, id));
        } else if kept.peek().is_some_and(|&(top, _)| rank < top) {
            kept.pop();
            kept.push((rank, id));
        }
    }
    reader.verify(validated)?;
    Ok(kept.into_iter().map(|(_, id)| id).collect())
}

/// An item's rank in the seeded choice.
fn rank(seed: u64, id: &str) -> u64 {
    let digest = Sha256::new()
        .chain_update(seed.to_le_bytes())
        .chain_update(id.as_bytes())
        .finalize();
    let mut first = [0; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// What a sample measured, and what it implies for the whole job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SampleSummary {
    /// The seed of the choice.
    pub seed: u64,
    /// Sampled items that finished.
    pub items: u64,
    /// Of them, those not `ok` (failed, blocked, deferred).
    pub not_ok: u64,
    /// `not_ok / items`.
    pub not_ok_share: f64,
    /// What the sampled items cost in USD (every attempt); `None` when a
    /// model's price is unknown.
    pub cost_usd: Option<f64>,
    /// `cost_usd / items`.
    pub cost_per_item_usd: Option<f64>,
    /// Wall time of the sample, in seconds.
    pub elapsed_s: f64,
    /// `elapsed_s / items`: the time per item at the sample's concurrency.
    pub seconds_per_item: f64,
    /// Valid items in the job.
    pub job_items: u64,
    /// Of them, those still to send.
    pub remaining: u64,
    /// `cost_per_item_usd × job_items`: the whole job's cost extrapolated.
    pub job_cost_usd: Option<f64>,
    /// `seconds_per_item × remaining`: the rest's time at the sample's pace.
    pub remaining_s: f64,
}

impl SampleSummary {
    /// Measures the `chosen` items of `run` from the store, after a sample
    /// that took `elapsed_s`, in a job of `job_items` valid items.
    pub(super) fn measure(
        store: &Store,
        run: RunId,
        chosen: &HashSet<u64>,
        sample: Sample,
        elapsed_s: f64,
        job_items: u64,
    ) -> Result<SampleSummary, StoreError> {
        let (mut items, mut not_ok, mut finished) = (0, 0, 0);
        let mut cost = Some(0.0);
        store
            .for_each_item(run, |row| {
                if row.status != ItemStatus::Skipped && row.status != ItemStatus::Deferred {
                    finished += 1;
                }
                if chosen.contains(&id_hash(&row.id)) {
                    items += 1;
                    not_ok += u64::from(row.status != ItemStatus::Ok);
                    cost = cost.zip(row.cost).map(|(sum, c)| sum + c);
                }
                Ok::<_, std::convert::Infallible>(())
            })?
            .unwrap_or_else(|never| match never {});
        let per = |total: f64| {
            if items == 0 {
                0.0
            } else {
                total / items as f64
            }
        };
        let cost_per_item_usd = cost.map(per);
        let seconds_per_item = per(elapsed_s);
        let remaining = job_items.saturating_sub(finished);
        Ok(SampleSummary {
            seed: sample.seed,
            items,
            not_ok,
            not_ok_share: per(not_ok as f64),
            cost_usd: cost,
            cost_per_item_usd,
            elapsed_s,
            seconds_per_item,
            job_items,
            remaining,
            job_cost_usd: cost_per_item_usd.map(|c| c * job_items as f64),
            remaining_s: seconds_per_item * remaining as f64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(n: usize) -> (tempfile::TempDir, std::path::PathBuf, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.jsonl");
        let text: String = (0..n)
            .map(|i| format!("{{\"id\":\"item-{i}\",\"prompt\":\"p{i}\"}}\n"))
            .collect();
        std::fs::write(&path, text).unwrap();
        let hash = crate::job::validate(&path).unwrap().content_hash;
        (dir, path, hash)
    }

    fn none_deps() -> Dependencies {
        Dependencies::default()
    }

    fn sample(items: u64, seed: u64) -> Sample {
        Sample { items, seed }
    }

    #[test]
    fn the_choice_is_spread_seeded_and_skips_what_is_done() {
        let (_dir, path, hash) = job(1000);
        let none = HashSet::new();
        let chosen = choose(&path, &hash, &none, &none_deps(), sample(50, 0)).unwrap();
        assert_eq!(chosen.len(), 50);
        assert_eq!(
            chosen,
            choose(&path, &hash, &none, &none_deps(), sample(50, 0)).unwrap()
        );
        let positions: Vec<usize> = (0..1000)
            .filter(|i| chosen.contains(&id_hash(&format!("item-{i}"))))
            .collect();
        // Spread: some in each quarter of the file, not the first 50.
        for quarter in 0..4 {
            let within = positions.iter().filter(|&&i| i / 250 == quarter).count();
            assert!(within >= 2, "quarter {quarter}: {positions:?}");
        }
        let other = choose(&path, &hash, &none, &none_deps(), sample(50, 1)).unwrap();
        assert_ne!(chosen, other, "another seed chooses otherwise");
        // What is done is never chosen again: a second sample takes others.
        let again = choose(&path, &hash, &chosen, &none_deps(), sample(50, 0)).unwrap();
        assert_eq!(again.len(), 50);
        assert!(again.is_disjoint(&chosen));
        // More than the job holds takes what is left.
        assert_eq!(
            choose(&path, &hash, &chosen, &none_deps(), sample(5000, 0))
                .unwrap()
                .len(),
            950
        );
    }

    #[test]
    fn a_changed_job_is_refused() {
        let (_dir, path, _) = job(10);
        let error = choose(&path, "0000", &HashSet::new(), &none_deps(), sample(5, 0)).unwrap_err();
        assert!(matches!(error, JobError::Changed { .. }), "{error}");
    }
}
