//! A rate limit on dead-letter replays (each makes a new pipeline and re-queues work): at
//! most [`REPLAYS_PER_MINUTE`] confirmed replays per coordinator in any 60 s, shared by
//! `POST /v1/dlq/replay` and the console's replay button (which calls the same handler).
//! Dry runs and repeats of an earlier replay (same Idempotency-Key) are not counted.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Confirmed replays allowed per minute: far above what a person clicks, low enough that a
/// script looping on replay cannot flood the queues.
pub const REPLAYS_PER_MINUTE: usize = 60;
const WINDOW: Duration = Duration::from_secs(60);

/// The times of the replays in the last minute.
#[derive(Debug, Default)]
pub struct ReplayLimit {
    recent: Mutex<VecDeque<Instant>>,
}

impl ReplayLimit {
    /// Takes one replay if the window has room; otherwise how long until it has.
    pub fn take(&self) -> Result<(), Duration> {
        let now = Instant::now();
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        while recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            recent.pop_front();
        }
        if recent.len() >= REPLAYS_PER_MINUTE {
            let oldest = recent.front().copied().unwrap_or(now);
            return Err(WINDOW.saturating_sub(now.duration_since(oldest)));
        }
        recent.push_back(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sixty_first_replay_in_a_minute_waits() {
        let l = ReplayLimit::default();
        for _ in 0..REPLAYS_PER_MINUTE {
            assert!(l.take().is_ok());
        }
        let wait = l.take().unwrap_err();
        assert!(wait > Duration::from_secs(50) && wait <= WINDOW);
    }
}
