//! Errors: what a handler returns (carrying the retry decision) and what a broker returns.

use std::time::Duration;

/// A handler's failure, carrying the retry decision.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Try again after the runtime's backoff.
    #[error("{0}")]
    Retryable(String),
    /// Try again no sooner than the given delay (e.g. a 429's `Retry-After`).
    #[error("{message} (retry after {delay:?})")]
    RetryAfter {
        /// Minimum delay before the next attempt.
        delay: Duration,
        /// What went wrong.
        message: String,
    },
    /// The job can never succeed: dead-letter it now.
    #[error("{0}")]
    Permanent(String),
}

impl JobError {
    /// A retryable error from anything displayable.
    pub fn retryable(e: impl std::fmt::Display) -> JobError {
        JobError::Retryable(e.to_string())
    }
    /// A permanent error from anything displayable.
    pub fn permanent(e: impl std::fmt::Display) -> JobError {
        JobError::Permanent(e.to_string())
    }
}

/// A broker operation failed.
#[derive(Debug, thiserror::Error, Clone)]
pub enum BrokerError {
    /// The connection or channel is gone; reconnect and resubscribe.
    #[error("broker connection lost: {0}")]
    ConnectionLost(String),
    /// The server cancelled or deleted our consumer.
    #[error("consumer cancelled by the broker: {0}")]
    ConsumerCancelled(String),
    /// The broker did not confirm in time.
    #[error("broker did not answer within {0:?}")]
    Timeout(Duration),
    /// The broker refused the operation (bad topology, permissions, nack).
    #[error("broker refused: {0}")]
    Rejected(String),
    /// The configuration cannot work with this broker.
    #[error("configuration error: {0}")]
    Config(String),
}

impl BrokerError {
    /// True when reconnecting may fix it.
    pub fn is_connection(&self) -> bool {
        matches!(
            self,
            BrokerError::ConnectionLost(_) | BrokerError::Timeout(_)
        )
    }
}
