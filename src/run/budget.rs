//! The budget guard (`--max-cost`): before an item is sent, the worst case of
//! its billed request is reserved against the cap; when it is answered, the
//! reservation is replaced by the real cost. However many requests are in
//! flight, spent plus reserved never exceeds the cap.
//!
//! APIs bill every request that is answered with a 200 (a safety block, a
//! cap spent on thinking and an empty candidate included), not the 429s,
//! 5xx and timeouts before it. So an item holds one reservation, and one
//! more for each billed empty answer it is tried again after (the only
//! billed answer that is retried).

use std::sync::Mutex;

/// Whether an item's worst case fits under the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Fits {
    /// Reserved: the item may be sent.
    Yes,
    /// Refused: nothing more is sent. `first` for the refusal that reached
    /// the budget.
    No {
        /// Whether this refusal is the one that reached the budget.
        first: bool,
    },
}

/// A spending cap in USD, shared by all workers.
#[derive(Debug)]
pub struct Budget {
    cap: f64,
    state: Mutex<Spend>,
}

#[derive(Debug, Default)]
struct Spend {
    /// Cost of finished items plus the worst case of those in flight.
    committed: f64,
    /// Set once a reservation was refused: the run stops dispatching.
    reached: bool,
}

impl Budget {
    /// A budget of `cap` USD.
    pub fn new(cap: f64) -> Budget {
        Budget {
            cap,
            state: Mutex::new(Spend::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Spend> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cap, in USD.
    pub fn cap(&self) -> f64 {
        self.cap
    }

    /// Reserves `worst` USD, or refuses (and marks the budget reached) if
    /// that could take spending past the cap.
    pub fn reserve(&self, worst: f64) -> Fits {
        let mut spend = self.lock();
        if spend.reached || spend.committed + worst > self.cap {
            let first = !spend.reached;
            spend.reached = true;
            return Fits::No { first };
        }
        spend.committed += worst;
        Fits::Yes
    }

    /// Replaces a reservation of `worst` by the `actual` cost.
    pub fn settle(&self, worst: f64, actual: f64) {
        let mut spend = self.lock();
        spend.committed += actual - worst;
    }

    /// Whether a reservation was refused.
    pub fn reached(&self) -> bool {
        self.lock().reached
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_never_take_spending_past_the_cap() {
        let budget = Budget::new(1.0);
        assert_eq!(budget.reserve(0.4), Fits::Yes);
        assert_eq!(budget.reserve(0.4), Fits::Yes);
        assert_eq!(
            budget.reserve(0.4),
            Fits::No { first: true },
            "0.8 + 0.4 would pass 1.0"
        );
        assert!(budget.reached());
        // Once reached, nothing more is sent even if room comes back.
        budget.settle(0.4, 0.1);
        assert_eq!(budget.reserve(0.1), Fits::No { first: false });
    }

    #[test]
    fn a_settled_item_frees_what_its_worst_case_held() {
        let budget = Budget::new(1.0);
        assert_eq!(budget.reserve(0.9), Fits::Yes);
        budget.settle(0.9, 0.1);
        assert_eq!(
            budget.reserve(0.85),
            Fits::Yes,
            "0.1 spent + 0.85 fits under 1.0"
        );
        assert!(!budget.reached());
    }
}
