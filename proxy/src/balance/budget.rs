//! The retry budget of a route: retries may be at most `budget_percent` % of the
//! requests plus `min_per_second`, over a sliding one-second window, so retries
//! cannot multiply the load of a struggling service. Atomics only.

use std::sync::atomic::{AtomicU64, Ordering};

use super::breaker::now_ms;

/// A one-second sliding window: retries ≤ `percent` % of requests + `min_per_second`.
#[derive(Debug)]
pub struct RetryBudget {
    percent: u32,
    min_per_second: u32,
    /// The second (of `now_ms`) the `cur` counters belong to.
    second: AtomicU64,
    requests: [AtomicU64; 2],
    retries: [AtomicU64; 2],
}

impl RetryBudget {
    pub fn new(percent: u32, min_per_second: u32) -> Self {
        RetryBudget {
            percent,
            min_per_second,
            second: AtomicU64::new(0),
            requests: Default::default(),
            retries: Default::default(),
        }
    }

    /// Moves the window to `now` (ms); returns the weight of the previous second.
    fn roll(&self, now: u64) -> f64 {
        let sec = now / 1000;
        let seen = self.second.load(Ordering::Acquire);
        if sec != seen
            && self
                .second
                .compare_exchange(seen, sec, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            let (r, t) = if sec == seen + 1 {
                (
                    self.requests[0].swap(0, Ordering::AcqRel),
                    self.retries[0].swap(0, Ordering::AcqRel),
                )
            } else {
                self.requests[0].store(0, Ordering::Release);
                self.retries[0].store(0, Ordering::Release);
                (0, 0)
            };
            self.requests[1].store(r, Ordering::Release);
            self.retries[1].store(t, Ordering::Release);
        }
        1.0 - (now % 1000) as f64 / 1000.0
    }

    /// A request arrived (retries are not requests).
    pub fn deposit(&self) {
        self.roll(now_ms());
        self.requests[0].fetch_add(1, Ordering::Relaxed);
    }

    fn allowed_and_used(&self) -> (f64, f64) {
        let w = self.roll(now_ms());
        let req = self.requests[0].load(Ordering::Relaxed) as f64
            + w * self.requests[1].load(Ordering::Relaxed) as f64;
        let used = self.retries[0].load(Ordering::Relaxed) as f64
            + w * self.retries[1].load(Ordering::Relaxed) as f64;
        let allowed = f64::from(self.min_per_second) + req * f64::from(self.percent) / 100.0;
        (allowed, used)
    }

    /// Whether a retry would fit now (nothing taken).
    pub fn has_room(&self) -> bool {
        let (allowed, used) = self.allowed_and_used();
        used + 1.0 <= allowed
    }

    /// Takes one retry from the budget, if it has room.
    pub fn withdraw(&self) -> bool {
        let (allowed, used) = self.allowed_and_used();
        if used + 1.0 > allowed {
            return false;
        }
        self.retries[0].fetch_add(1, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_allows_percent_plus_minimum() {
        let budget = RetryBudget::new(20, 5);
        for _ in 0..100 {
            budget.deposit();
        }
        let granted = (0..100).filter(|_| budget.withdraw()).count();
        // 5 + 20 % of 100, give or take the window's weight at a second boundary.
        assert!((20..=25).contains(&granted), "{granted}");
        assert!(!budget.has_room());
        let none = RetryBudget::new(0, 0);
        none.deposit();
        assert!(!none.withdraw());
    }
}
