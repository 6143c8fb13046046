//! The per-service retry budget (as in Finagle/Envoy): retries may be at most
//! `ratio` of first attempts over a sliding window, plus a minimum rate. While
//! the budget is exceeded, retry delays stretch to the maximum; nothing is dropped.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Sliding-window counts of first attempts and retries.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    min_per_sec: f64,
    window: Duration,
    state: Mutex<VecDeque<(Instant, bool)>>,
}

impl RetryBudget {
    /// A budget allowing `ratio` retries per first attempt plus `min_per_sec` over `window`.
    pub fn new(ratio: f64, min_per_sec: f64, window: Duration) -> RetryBudget {
        RetryBudget {
            ratio,
            min_per_sec,
            window,
            state: Mutex::new(VecDeque::new()),
        }
    }

    fn with<T>(&self, now: Instant, f: impl FnOnce(&mut VecDeque<(Instant, bool)>) -> T) -> T {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while s
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > self.window)
        {
            s.pop_front();
        }
        f(&mut s)
    }

    /// Records a first attempt.
    pub fn record_first_attempt(&self) {
        let now = Instant::now();
        self.with(now, |s| s.push_back((now, false)));
    }

    /// Records a retry and says whether it was within budget.
    pub fn record_retry(&self) -> bool {
        let now = Instant::now();
        self.with(now, |s| {
            let firsts = s.iter().filter(|(_, retry)| !retry).count() as f64;
            let retries = s.iter().filter(|(_, retry)| *retry).count() as f64;
            let allowed = self.ratio * firsts + self.min_per_sec * self.window.as_secs_f64();
            s.push_back((now, true));
            retries < allowed
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn budget_arithmetic() {
        // 20% of first attempts plus 0.1/s over 10 s = 1 free retry.
        let b = RetryBudget::new(0.2, 0.1, Duration::from_secs(10));
        for _ in 0..10 {
            b.record_first_attempt();
        }
        // 0.2 × 10 + 1 = 3 retries allowed.
        assert!(b.record_retry());
        assert!(b.record_retry());
        assert!(b.record_retry());
        assert!(!b.record_retry());
        // The window slides: everything is forgotten after 10 s.
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(b.record_retry(), "minimum rate still allows one");
        assert!(!b.record_retry());
    }
}
