//! Retry delays: exponential backoff with full jitter and a cap (a small pure function;
//! the `backoff` crate is unmaintained, RUSTSEC-2025-0012).

use std::time::Duration;

use rand::Rng;

/// The exponential ceiling for `attempt` (1-based): `base × 2^(attempt-1)`, capped at `max`.
pub fn ceiling(attempt: u32, base: Duration, max: Duration) -> Duration {
    let shift = attempt.saturating_sub(1).min(32);
    base.checked_mul(1u32 << shift.min(31))
        .map_or(max, |d| d.min(max))
}

/// A full-jitter delay: uniform in `[0, ceiling]` (AWS "full jitter"), never above `max`.
pub fn full_jitter(attempt: u32, base: Duration, max: Duration, rng: &mut impl Rng) -> Duration {
    let cap = ceiling(attempt, base, max);
    let ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rng.random_range(0..=ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn ceiling_doubles_and_caps() {
        let b = Duration::from_millis(100);
        let m = Duration::from_secs(5);
        assert_eq!(ceiling(1, b, m), Duration::from_millis(100));
        assert_eq!(ceiling(2, b, m), Duration::from_millis(200));
        assert_eq!(ceiling(4, b, m), Duration::from_millis(800));
        assert_eq!(ceiling(10, b, m), m);
        assert_eq!(ceiling(u32::MAX, b, m), m);
    }

    #[test]
    fn jitter_stays_in_bounds() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let b = Duration::from_millis(100);
        let m = Duration::from_secs(5);
        for attempt in 1..40 {
            for _ in 0..50 {
                let d = full_jitter(attempt, b, m, &mut rng);
                assert!(d <= ceiling(attempt, b, m));
            }
        }
    }
}
