//! What a delivery needs from its ack subject (`$JS.ACK.…`), read without allocating.
//!
//! `jetstream::Message::info` needs a `jetstream::Message`, i.e. a clone of the JetStream
//! context (two allocations and a dozen atomic operations) per message. [`read`] reads the
//! same tokens from the reply subject alone; whatever it is unsure of, the caller hands to
//! `info()` (see `subscription`), so both always agree.

/// The ack subject's stream, stream sequence and delivery count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AckInfo<'a> {
    /// The stream that stores the message.
    pub(crate) stream: &'a str,
    /// The message's sequence in that stream.
    pub(crate) stream_sequence: u64,
    /// The server's delivery count (`info().delivered`).
    pub(crate) delivered: i64,
}

/// Reads `reply` as async-nats' `parse_info` does (ADR-15: 7 tokens after `$JS.ACK.`, or 9
/// and more, of which the first 2 are domain and account hash). `Some` only where `info()`
/// succeeds with the same values; `None` also where it might succeed (a timestamp beyond
/// `i64` nanoseconds, which `info()` may still accept).
pub(crate) fn read(reply: &str) -> Option<AckInfo<'_>> {
    let rest = reply.strip_prefix("$JS.ACK.")?;
    // `parse_info` looks at the first 10 tokens only.
    let mut tokens = [""; 10];
    let mut n = 0;
    for token in rest.split('.').take(tokens.len()) {
        tokens[n] = token;
        n += 1;
    }
    let t = match n {
        9 | 10 => &tokens[2..9],
        7 => &tokens[..7],
        _ => return None,
    };
    // stream, consumer, delivered, stream sequence, consumer sequence, published, pending.
    let delivered: i64 = t[2].parse().ok()?;
    let stream_sequence: u64 = t[3].parse().ok()?;
    t[4].parse::<u64>().ok()?;
    // `info()` takes any i128 nanoseconds its `time` backend can hold (years ±9999); every
    // i64 is well inside that.
    t[5].parse::<i64>().ok()?;
    t[6].parse::<u64>().ok()?;
    Some(AckInfo {
        stream: t[0],
        stream_sequence,
        delivered,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_subject_formats() {
        let want = Some(AckInfo {
            stream: "S",
            stream_sequence: 42,
            delivered: 3,
        });
        assert_eq!(read("$JS.ACK.S.C.3.42.40.1700000000000000000.5"), want);
        assert_eq!(
            read("$JS.ACK.dom.ACC.S.C.3.42.40.1700000000000000000.5"),
            want
        );
        assert_eq!(
            read("$JS.ACK._.ACC.S.C.3.42.40.1700000000000000000.5.tok"),
            want
        );
        assert_eq!(
            read("$JS.ACK._.ACC.S.C.3.42.40.1700000000000000000.5.tok.x.y"),
            want,
            "tokens past the 10th are ignored"
        );
    }

    #[test]
    fn refuses_what_info_refuses_or_might_not_read_alike() {
        for bad in [
            "S.C.3.42.40.1700000000000000000.5",
            "$JS.ACK.S.C.3.42.40.1700000000000000000",
            "$JS.ACK.S.C.3.42.40.1700000000000000000.5.6",
            "$JS.ACK.S.C.x.42.40.1700000000000000000.5",
            "$JS.ACK.S.C.3.-1.40.1700000000000000000.5",
            "$JS.ACK.S.C.3.42.40.x.5",
            "$JS.ACK.S.C.3.42.40.1700000000000000000.-5",
            // Valid for `info()`, left to it.
            "$JS.ACK.S.C.3.42.40.170000000000000000000000.5",
        ] {
            assert_eq!(read(bad), None, "{bad}");
        }
    }
}
