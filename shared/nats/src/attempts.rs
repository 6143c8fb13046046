//! Attempt numbers that never go backwards.
//!
//! The attempt of a JetStream delivery is the server's delivery count (`info().delivered`). On
//! nats-server before 2.10.15, a delivery the server fails to hand over (typically a pull request
//! that expired as the message was sent to it) can make the next redelivery of that message report
//! a count of 1 again (nats-server#5305, #5338). A worker that pulled the message before would
//! then run attempt "1" twice, stretching the retry budget. Each subscription therefore remembers
//! the highest count it saw per stream sequence (bounded, oldest forgotten first) and never
//! reports less than one more than that for a message it saw before.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

/// Hashes a stream sequence with one multiplication: sequences come from the server, not from
/// an attacker, and SipHash cost more than the rest of the lookup.
#[derive(Default)]
struct SeqHasher(u64);

impl Hasher for SeqHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing, folded so that both the low (bucket) and the high (tag) bits vary.
        let h = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = h ^ (h >> 32);
    }
}

/// How many stream sequences one subscription remembers.
pub(crate) const REMEMBERED: usize = 4096;

/// Highest attempt seen per stream sequence, bounded to `capacity` entries.
#[derive(Debug)]
pub(crate) struct AttemptMemory {
    capacity: usize,
    seen: HashMap<u64, u32, BuildHasherDefault<SeqHasher>>,
    order: VecDeque<u64>,
}

impl AttemptMemory {
    /// An empty memory of at most `capacity` sequences.
    pub(crate) fn new(capacity: usize) -> AttemptMemory {
        AttemptMemory {
            capacity: capacity.max(1),
            seen: HashMap::default(),
            order: VecDeque::new(),
        }
    }

    /// The attempt to report for a delivery of `seq` the server counts as `delivered`.
    pub(crate) fn attempt(&mut self, seq: u64, delivered: u32) -> u32 {
        // One lookup: the entry is read and written in place.
        match self.seen.entry(seq) {
            Entry::Occupied(mut seen) => {
                let before = *seen.get();
                if delivered > before {
                    seen.insert(delivered);
                    return delivered;
                }
                tracing::debug!(
                    stream_sequence = seq,
                    server_count = delivered,
                    seen_before = before,
                    "nats: delivery count went backwards, counting on"
                );
                let attempt = before.saturating_add(1);
                seen.insert(attempt);
                attempt
            }
            Entry::Vacant(slot) => {
                slot.insert(delivered);
                self.order.push_back(seq);
                while self.order.len() > self.capacity {
                    if let Some(old) = self.order.pop_front() {
                        self.seen.remove(&old);
                    }
                }
                delivered
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_count_is_used_when_it_moves_forward() {
        let mut m = AttemptMemory::new(8);
        assert_eq!(m.attempt(7, 1), 1);
        assert_eq!(m.attempt(7, 2), 2);
        assert_eq!(m.attempt(7, 5), 5);
    }

    #[test]
    fn a_count_going_backwards_counts_on_from_what_was_seen() {
        let mut m = AttemptMemory::new(8);
        assert_eq!(m.attempt(7, 1), 1);
        assert_eq!(m.attempt(7, 1), 2);
        assert_eq!(m.attempt(7, 2), 3);
        assert_eq!(m.attempt(8, 1), 1, "other sequences are independent");
    }

    #[test]
    fn memory_is_bounded_and_forgets_the_oldest() {
        let mut m = AttemptMemory::new(2);
        m.attempt(1, 1);
        m.attempt(2, 1);
        m.attempt(3, 1);
        assert_eq!(m.seen.len(), 2);
        assert_eq!(m.attempt(1, 1), 1, "sequence 1 was forgotten");
        assert_eq!(m.attempt(3, 1), 2);
    }
}
