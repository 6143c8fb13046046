//! Headers and ids of the copies a job delivery makes of itself (retry copies, copies put back
//! by an uncounted release): the attempts made so far travel in `fleet-attempt`, and each
//! retry copy gets a `Nats-Msg-Id` unique per attempt.

use async_nats::{HeaderMap, HeaderName};
use fleet_protocol::deadletter::headers::ATTEMPT;

use crate::wire::header_value;

/// Separates a job's root message id from the attempt of a retry copy.
const ATTEMPT_MARK: &str = "~a";

/// `fleet-attempt` as a header name: looking a `&str` up converts (and allocates) it per call.
const ATTEMPT_NAME: HeaderName = HeaderName::from_static(ATTEMPT);

/// Attempts made before this copy was published (`fleet-attempt`; 0 on a first copy).
pub(crate) fn attempts_before(headers: Option<&HeaderMap>) -> u32 {
    headers
        .and_then(|h| h.get(ATTEMPT_NAME))
        .and_then(|v| v.as_str().trim().parse().ok())
        .unwrap_or(0)
}

/// The `Nats-Msg-Id` of the retry copy made after `attempt`: the job's root id (the original's
/// `Nats-Msg-Id` without an earlier copy's mark, else `<stream>-<sequence>`) + `~a<attempt>`.
pub(crate) fn retry_msg_id(original_id: Option<&str>, origin: &str, attempt: u32) -> String {
    let root = original_id.map_or(origin, |id| match id.rsplit_once(ATTEMPT_MARK) {
        Some((root, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => root,
        _ => id,
    });
    format!("{root}{ATTEMPT_MARK}{attempt}")
}

/// Headers of a retry copy: the original's, without publish expectations, with
/// `fleet-attempt: <attempt>` and `Nats-Msg-Id: <msg_id>`.
pub(crate) fn copy_headers(original: Option<&HeaderMap>, attempt: u32, msg_id: &str) -> HeaderMap {
    let mut headers = crate::wire::plain_copy_headers(original);
    // `insert` replaces what the original carried under these names.
    headers.insert(ATTEMPT, header_value(&attempt.to_string()));
    headers.insert(async_nats::header::NATS_MESSAGE_ID, header_value(msg_id));
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_ids_are_unique_per_attempt_and_do_not_grow() {
        assert_eq!(retry_msg_id(Some("p/i/s"), "J-7", 1), "p/i/s~a1");
        assert_eq!(retry_msg_id(Some("p/i/s~a1"), "J-9", 2), "p/i/s~a2");
        assert_eq!(retry_msg_id(Some("x~ab"), "J-9", 2), "x~ab~a2");
        assert_eq!(retry_msg_id(None, "J-7", 3), "J-7~a3");
    }

    #[test]
    fn copies_carry_the_attempt_and_a_fresh_id() {
        let mut original = HeaderMap::new();
        original.insert(async_nats::header::NATS_MESSAGE_ID, "p/i/s");
        original.insert(ATTEMPT, "2");
        original.insert("Nats-Expected-Stream", "X");
        original.insert("trace", "t1");
        let h = copy_headers(Some(&original), 3, "p/i/s~a3");
        assert_eq!(attempts_before(Some(&h)), 3);
        assert_eq!(
            h.get(async_nats::header::NATS_MESSAGE_ID)
                .map(|v| v.as_str()),
            Some("p/i/s~a3")
        );
        assert!(h.get("Nats-Expected-Stream").is_none());
        assert_eq!(h.get("trace").map(|v| v.as_str()), Some("t1"));
        assert_eq!(attempts_before(None), 0);
    }
}
