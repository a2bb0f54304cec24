//! Exponential backoff with full jitter: the n-th wait is uniform in
//! `[0, min(cap, base·2ⁿ)]`, which spreads retries of many workers apart
//! instead of letting them hammer a recovering server in step.

use rand::Rng;
use std::time::Duration;

/// The schedule of waits before each retry of one item.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    retries: u32,
}

impl Backoff {
    /// Waits start around `base` and never exceed `cap`.
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            retries: 0,
        }
    }

    /// The wait before the next retry, drawn from `rng`.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(2u32.saturating_pow(self.retries))
            .min(self.cap);
        self.retries += 1;
        ceiling.mul_f64(rng.gen::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::SmallRng, SeedableRng};

    #[test]
    fn waits_grow_exponentially_under_the_cap_and_are_jittered() {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let waits: Vec<Duration> = (0..8).map(|_| backoff.next_delay(&mut rng)).collect();
        let ceilings = [100, 200, 400, 800, 1000, 1000, 1000, 1000];
        for (wait, ceiling) in waits.iter().zip(ceilings) {
            assert!(
                *wait <= Duration::from_millis(ceiling),
                "{wait:?} > {ceiling}ms"
            );
        }
        // Full jitter: not every wait sits at its ceiling.
        assert!(waits
            .iter()
            .zip(ceilings)
            .any(|(w, c)| *w < Duration::from_millis(c) / 2));
    }
}
