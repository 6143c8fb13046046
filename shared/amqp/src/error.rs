//! Mapping lapin errors and timeouts onto [`BrokerError`], and checked AMQP short strings.

use std::future::Future;
use std::time::Duration;

use fleet_core::BrokerError;
use lapin::types::ShortString;

/// AMQP reply code: the queue or exchange exists with other arguments.
pub(crate) const PRECONDITION_FAILED: u16 = 406;
/// AMQP reply code: no such queue or exchange.
pub(crate) const NOT_FOUND: u16 = 404;

/// The AMQP reply code of a channel or connection close, if `e` is one.
pub(crate) fn reply_code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => Some(amqp.get_id()),
        _ => None,
    }
}

/// Refusals of this operation become [`BrokerError::Rejected`]; everything else means the
/// channel or connection is gone ([`BrokerError::ConnectionLost`]).
pub(crate) fn map_lapin(ctx: &str, e: &lapin::Error) -> BrokerError {
    if e.is_amqp_soft_error() {
        BrokerError::Rejected(format!("{ctx}: {e}"))
    } else {
        BrokerError::ConnectionLost(format!("{ctx}: {e}"))
    }
}

/// Runs a lapin request under `limit`, mapping both failure kinds.
pub(crate) async fn timed<T>(
    limit: Duration,
    ctx: &str,
    fut: impl Future<Output = lapin::Result<T>>,
) -> Result<T, BrokerError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(map_lapin(ctx, &e)),
        Err(_) => Err(BrokerError::Timeout(limit)),
    }
}

/// Like [`timed`] but keeps the raw lapin error, for callers that inspect reply codes.
pub(crate) async fn timed_raw<T>(
    limit: Duration,
    fut: impl Future<Output = lapin::Result<T>>,
) -> Result<lapin::Result<T>, BrokerError> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| BrokerError::Timeout(limit))
}

/// An AMQP short string (names, routing keys, header keys, message ids: at most 255 bytes).
///
/// lapin's `From<&str> for ShortString` panics on longer input, so every value that
/// can come from outside goes through here.
pub(crate) fn short(what: &str, s: &str) -> Result<ShortString, BrokerError> {
    ShortString::try_new(s).map_err(|e| {
        BrokerError::Rejected(format!(
            "{what} `{}…` cannot be sent over AMQP: {e}",
            prefix(s)
        ))
    })
}

fn prefix(s: &str) -> &str {
    let mut end = s.len().min(40);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_short_strings_are_errors_not_panics() {
        assert!(short("queue", "q").is_ok());
        let long = "é".repeat(200);
        let err = short("message id", &long).unwrap_err();
        assert!(
            matches!(err, BrokerError::Rejected(ref m) if m.contains("message id")),
            "{err}"
        );
    }
}
