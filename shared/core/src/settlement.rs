//! The end of a delivery as a value: every consumer in the fleet (the worker runtime and the
//! coordinator's consumers) decides a [`Settlement`] for each delivery it was handed, and
//! [`Settlement::apply`] is the one place that turns it into [`Acker`] calls.
//!
//! Deciding is pure and testable without a broker; applying is the only broker I/O.

use std::time::Duration;

use fleet_protocol::DeadLetterInfo;

use crate::broker::{Acker, ParkInfo};
use crate::error::BrokerError;

/// How a delivery ends, broker-neutral.
#[derive(Debug, Clone, PartialEq)]
pub enum Settlement {
    /// Done: remove the message.
    Ack,
    /// Run again after at least this delay (a new attempt).
    Retry(Duration),
    /// Copy the original to its dead-letter queue/stream with these headers, then remove it.
    DeadLetter(Box<DeadLetterInfo>),
    /// Give it back for immediate redelivery; the delivery counts as an attempt.
    Release,
    /// Give it back without counting this delivery as an attempt (a graceful drain).
    ReleaseUncounted,
    /// Move a control message that cannot be processed to the parked queue/stream.
    Park(ParkInfo),
    /// Send nothing: the lease is gone and the broker redelivers by itself.
    Leave,
}

/// What the broker accepted for a [`Settlement`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The settlement went out as decided.
    Done,
    /// A retry went out with this delay (RabbitMQ rounds down to its ladder).
    Retried(Duration),
    /// Nothing was sent ([`Settlement::Leave`]).
    Nothing,
}

impl Settlement {
    /// A short name for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Settlement::Ack => "ack",
            Settlement::Retry(_) => "retry",
            Settlement::DeadLetter(_) => "dead_letter",
            Settlement::Release => "release",
            Settlement::ReleaseUncounted => "release_uncounted",
            Settlement::Park(_) => "park",
            Settlement::Leave => "leave",
        }
    }

    /// Sends the settlement through `acker` (the only caller of [`Acker`]'s settling methods
    /// outside the broker adapters).
    pub async fn apply(self, acker: Box<dyn Acker>) -> Result<Applied, BrokerError> {
        match self {
            Settlement::Ack => acker.ack().await.map(|()| Applied::Done),
            Settlement::Retry(delay) => acker.retry(delay).await.map(Applied::Retried),
            Settlement::DeadLetter(info) => acker.dead_letter(&info).await.map(|()| Applied::Done),
            Settlement::Release => acker.release().await.map(|()| Applied::Done),
            Settlement::ReleaseUncounted => acker.release_uncounted().await.map(|()| Applied::Done),
            Settlement::Park(info) => acker.park(&info).await.map(|()| Applied::Done),
            Settlement::Leave => {
                drop(acker);
                Ok(Applied::Nothing)
            }
        }
    }

    /// Applies the settlement and logs a failure (`what` names the delivery): a settlement
    /// that did not reach the broker means a redelivery, which every consumer tolerates.
    pub async fn apply_logged(self, acker: Box<dyn Acker>, what: &str) -> Option<Applied> {
        let label = self.label();
        match self.apply(acker).await {
            Ok(a) => Some(a),
            Err(e) => {
                tracing::warn!(error = %e, what, settlement = label,
                    "settling a delivery failed; the broker redelivers it");
                None
            }
        }
    }
}
