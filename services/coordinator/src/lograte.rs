//! Rate-limited logging for retry loops: the same error repeated on every try
//! is logged once per interval with how many repeats were held back, so a row
//! (or a broker) that keeps refusing cannot flood the log.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Distinct keys remembered; past this the memory is cleared (then each key logs once more).
const MAX_KEYS: usize = 256;

/// Decides which occurrences of a repeated message are logged.
#[derive(Debug)]
pub struct LogLimiter {
    interval: Duration,
    seen: HashMap<String, (Instant, u64)>,
}

impl LogLimiter {
    /// Logs each distinct key at most once per `interval`.
    pub fn new(interval: Duration) -> LogLimiter {
        LogLimiter {
            interval,
            seen: HashMap::new(),
        }
    }

    /// `Some(held back since the last line)` when `key` should be logged at `now`, else `None`.
    pub fn allow(&mut self, key: &str, now: Instant) -> Option<u64> {
        if let Some((last, held)) = self.seen.get_mut(key) {
            if now.duration_since(*last) < self.interval {
                *held += 1;
                return None;
            }
            let out = *held;
            *last = now;
            *held = 0;
            return Some(out);
        }
        if self.seen.len() >= MAX_KEYS {
            self.seen.clear();
        }
        self.seen.insert(key.to_owned(), (now, 0));
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_interval_with_the_held_back_count() {
        let mut l = LogLimiter::new(Duration::from_secs(30));
        let t0 = Instant::now();
        assert_eq!(l.allow("a", t0), Some(0));
        for i in 1..=100 {
            assert_eq!(l.allow("a", t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(l.allow("b", t0), Some(0), "another error logs at once");
        assert_eq!(l.allow("a", t0 + Duration::from_secs(31)), Some(100));
        assert_eq!(l.allow("a", t0 + Duration::from_secs(32)), None);
    }

    #[test]
    fn memory_is_bounded() {
        let mut l = LogLimiter::new(Duration::from_secs(30));
        let t0 = Instant::now();
        for i in 0..(MAX_KEYS * 3) {
            l.allow(&i.to_string(), t0);
        }
        assert!(l.seen.len() <= MAX_KEYS);
    }
}
