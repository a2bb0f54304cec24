//! Strategies: how the pool chooses among the keys that have room now.
//!
//! Each strategy is a pure function of a snapshot of the candidates, so it
//! can be tested without time, network or locks. Ties always go to the key
//! that comes next in round-robin order, so no strategy starves a key.

use serde::Deserialize;
use std::str::FromStr;

/// How to choose among keys that can take a request now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Each key in turn.
    RoundRobin,
    /// In proportion to each key's `weight` (smooth weighted round robin).
    Weighted,
    /// The key with the fewest requests in flight.
    LeastInFlight,
    /// The key whose account has used the smallest share of its quotas.
    LeastQuotaUsed,
    /// The key with the lowest recent latency (EWMA).
    Fastest,
    /// A blend: 0.4·quota headroom + 0.3·speed + 0.2·idle share + 0.1·reliability.
    #[default]
    Hybrid,
}

impl Strategy {
    /// Every strategy, in the order the help lists them.
    pub const ALL: [Strategy; 6] = [
        Strategy::RoundRobin,
        Strategy::Weighted,
        Strategy::LeastInFlight,
        Strategy::LeastQuotaUsed,
        Strategy::Fastest,
        Strategy::Hybrid,
    ];

    /// The strategy's name in the config and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round_robin",
            Strategy::Weighted => "weighted",
            Strategy::LeastInFlight => "least_in_flight",
            Strategy::LeastQuotaUsed => "least_quota_used",
            Strategy::Fastest => "fastest",
            Strategy::Hybrid => "hybrid",
        }
    }
}

impl FromStr for Strategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Strategy, String> {
        Strategy::ALL
            .into_iter()
            .find(|strategy| strategy.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<&str> = Strategy::ALL.iter().map(|s| s.name()).collect();
                format!("unknown strategy `{s}`; one of: {}", names.join(", "))
            })
    }
}

/// What a strategy knows of one key that can take a request now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// The key.
    pub id: usize,
    /// Its configured weight (≥ 1).
    pub weight: u32,
    /// Its requests in flight.
    pub in_flight: u32,
    /// The largest share its account has used of any quota for the model
    /// (RPM, TPM in the window; RPD today), in [0, 1]; 0 with no limits.
    pub quota_used: f64,
    /// Its latency EWMA in ms, `None` before its first answer.
    pub latency_ms: Option<f64>,
    /// Its recent success rate in [0, 1].
    pub reliability: f64,
}

/// Round-robin and weighted state carried between choices.
#[derive(Debug, Clone, Default)]
pub struct Turns {
    /// The key after the last one chosen goes first on ties.
    cursor: usize,
    /// Smooth weighted round robin's running weights, per key.
    current: Vec<i64>,
}

impl Turns {
    /// Distance of `id` after the cursor, wrapping over `n` keys.
    fn order(&self, id: usize, n: usize) -> usize {
        (id + n - self.cursor % n) % n
    }
}

impl Strategy {
    /// Chooses one of `candidates` (non-empty) among `n` keys in all.
    pub(super) fn choose(self, candidates: &[Candidate], n: usize, turns: &mut Turns) -> usize {
        assert!(!candidates.is_empty(), "a choice needs candidates");
        let n = n.max(1);
        let chosen = match self {
            Strategy::RoundRobin => best_by(candidates, turns, n, |_| 0.0),
            Strategy::Weighted => weighted(candidates, n, turns),
            Strategy::LeastInFlight => best_by(candidates, turns, n, |c| -f64::from(c.in_flight)),
            Strategy::LeastQuotaUsed => best_by(candidates, turns, n, |c| -c.quota_used),
            // A key not yet measured is tried first, so every key gets one.
            Strategy::Fastest => best_by(candidates, turns, n, |c| -c.latency_ms.unwrap_or(0.0)),
            Strategy::Hybrid => {
                let slowest = candidates
                    .iter()
                    .filter_map(|c| c.latency_ms)
                    .fold(0.0_f64, f64::max);
                let busiest = candidates.iter().map(|c| c.in_flight).max().unwrap_or(0);
                best_by(candidates, turns, n, |c| {
                    let headroom = 1.0 - c.quota_used.clamp(0.0, 1.0);
                    let speed = match c.latency_ms {
                        Some(ms) if slowest > 0.0 => 1.0 - ms / slowest,
                        _ => 1.0,
                    };
                    let idle = if busiest == 0 {
                        1.0
                    } else {
                        1.0 - f64::from(c.in_flight) / f64::from(busiest)
                    };
                    0.4 * headroom + 0.3 * speed + 0.2 * idle + 0.1 * c.reliability
                })
            }
        };
        turns.cursor = chosen + 1;
        chosen
    }
}

/// The candidate with the highest score; ties to the next in turn.
fn best_by(
    candidates: &[Candidate],
    turns: &Turns,
    n: usize,
    score: impl Fn(&Candidate) -> f64,
) -> usize {
    candidates
        .iter()
        .max_by(|a, b| {
            score(a)
                .total_cmp(&score(b))
                .then_with(|| turns.order(b.id, n).cmp(&turns.order(a.id, n)))
        })
        .expect("candidates is not empty")
        .id
}

/// Smooth weighted round robin (as in nginx): every candidate gains its
/// weight, the richest is chosen and pays the total. Over any stretch each
/// key is chosen in proportion to its weight, evenly interleaved.
fn weighted(candidates: &[Candidate], n: usize, turns: &mut Turns) -> usize {
    if turns.current.len() < n {
        turns.current.resize(n, 0);
    }
    let total: i64 = candidates.iter().map(|c| i64::from(c.weight)).sum();
    for c in candidates {
        turns.current[c.id] += i64::from(c.weight);
    }
    let chosen = best_by(candidates, turns, n, |c| turns.current[c.id] as f64);
    turns.current[chosen] -= total;
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(id: usize) -> Candidate {
        Candidate {
            id,
            weight: 1,
            in_flight: 0,
            quota_used: 0.0,
            latency_ms: None,
            reliability: 1.0,
        }
    }

    fn picks(strategy: Strategy, candidates: &[Candidate], times: usize) -> Vec<usize> {
        let mut turns = Turns::default();
        (0..times)
            .map(|_| strategy.choose(candidates, candidates.len(), &mut turns))
            .collect()
    }

    #[test]
    fn round_robin_takes_each_key_in_turn() {
        let c: Vec<_> = (0..3).map(candidate).collect();
        assert_eq!(picks(Strategy::RoundRobin, &c, 6), [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn weighted_interleaves_in_proportion() {
        let mut c: Vec<_> = (0..2).map(candidate).collect();
        c[1].weight = 3;
        let p = picks(Strategy::Weighted, &c, 8);
        assert_eq!(p.iter().filter(|&&id| id == 1).count(), 6);
        assert!(p.windows(4).all(|w| w.contains(&0)), "evenly spread: {p:?}");
    }

    #[test]
    fn least_in_flight_and_least_quota_used_prefer_the_idlest() {
        let mut c: Vec<_> = (0..3).map(candidate).collect();
        c[0].in_flight = 2;
        c[1].in_flight = 1;
        c[2].in_flight = 3;
        assert_eq!(picks(Strategy::LeastInFlight, &c, 1), [1]);
        c[0].quota_used = 0.2;
        c[1].quota_used = 0.9;
        c[2].quota_used = 0.5;
        assert_eq!(picks(Strategy::LeastQuotaUsed, &c, 1), [0]);
    }

    #[test]
    fn fastest_tries_unmeasured_keys_then_the_quickest() {
        let mut c: Vec<_> = (0..3).map(candidate).collect();
        c[0].latency_ms = Some(300.0);
        c[1].latency_ms = Some(100.0);
        assert_eq!(picks(Strategy::Fastest, &c, 1), [2]);
        c[2].latency_ms = Some(200.0);
        assert_eq!(picks(Strategy::Fastest, &c, 1), [1]);
    }

    #[test]
    fn hybrid_weighs_headroom_above_speed() {
        let mut c: Vec<_> = (0..2).map(candidate).collect();
        // Key 0 is fast but its account is nearly full; key 1 is slower
        // with plenty of room.
        c[0].latency_ms = Some(50.0);
        c[0].quota_used = 0.95;
        c[1].latency_ms = Some(100.0);
        c[1].quota_used = 0.1;
        assert_eq!(picks(Strategy::Hybrid, &c, 1), [1]);
        // Equal in everything: it alternates.
        let even: Vec<_> = (0..2).map(candidate).collect();
        assert_eq!(picks(Strategy::Hybrid, &even, 4), [0, 1, 0, 1]);
    }

    #[test]
    fn strategies_parse_from_their_config_names() {
        assert_eq!(
            "least_quota_used".parse::<Strategy>(),
            Ok(Strategy::LeastQuotaUsed)
        );
        assert_eq!("hybrid".parse::<Strategy>(), Ok(Strategy::Hybrid));
        assert!("fastest-ish".parse::<Strategy>().is_err());
    }
}
