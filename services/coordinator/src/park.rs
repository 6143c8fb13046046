//! Control messages the coordinator cannot process: retried with backoff (never an immediate
//! requeue, so a database outage does not spin the consumers), and parked once they run out of
//! attempts or can never be processed (an event batch of an unknown version). Parked messages
//! wait in `<p>.parked` (RabbitMQ) / `<P>_PARKED` (NATS), are reported as
//! `fleet_parked_messages` and in `GET /v1/queues`, and `POST /v1/parked/replay` (`fleetctl
//! parked replay`) sends them back to where they came from.

use std::time::Duration;

use fleet_core::{Delivery, ParkInfo};
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::metrics as m;

/// Longest backoff between deliveries of a failing control message.
pub const CONTROL_RETRY_MAX: Duration = Duration::from_secs(30);
/// How often the parked depth gauge is refreshed.
const GAUGE_EVERY: Duration = Duration::from_secs(15);
/// Bound on one depth query.
const DEPTH_TIMEOUT: Duration = Duration::from_secs(5);

/// The backoff before delivery `attempt + 1`: 1s, 2s, 4s… capped at [`CONTROL_RETRY_MAX`]
/// (RabbitMQ rounds it down to its control ladder: 1s, 5s, 30s).
pub fn backoff(attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(16);
    Duration::from_secs(1u64 << exp).min(CONTROL_RETRY_MAX)
}

/// Parks `d` (`what` names the source for logs and metrics); a failure leaves it to be
/// redelivered.
pub async fn park(d: Delivery, what: &'static str, reason: &str, error: &str) {
    let info = ParkInfo {
        reason: reason.to_owned(),
        error: error.to_owned(),
        attempts: d.attempt,
    };
    let attempt = d.attempt;
    match d.acker.park(&info).await {
        Ok(()) => {
            metrics::counter!(m::PARKED, "source" => what, "reason" => reason.to_owned())
                .increment(1);
            tracing::error!(
                source = what,
                reason,
                attempt,
                error,
                "parked a {what} message: it waits in the parked queue until it is replayed \
                 (fleetctl parked replay)"
            );
        }
        Err(e) => {
            tracing::warn!(source = what, error = %e, "parking a message failed; it will be redelivered");
        }
    }
}

/// Retries `d` after a backoff, or parks it once it has had `max_attempts` deliveries.
pub async fn retry_or_park(d: Delivery, what: &'static str, error: &str, max_attempts: u32) {
    if d.attempt >= max_attempts {
        return park(d, what, "attempts_exhausted", error).await;
    }
    let delay = backoff(d.attempt);
    metrics::counter!(m::CONTROL_RETRIES, "source" => what).increment(1);
    if let Err(e) = d.acker.retry(delay).await {
        tracing::warn!(source = what, error = %e, "retrying a message failed; it will be redelivered");
    }
}

/// Refreshes `fleet_parked_messages` from the broker; returns the depth when it answered.
pub async fn refresh_gauge(app: &App) -> Option<u64> {
    match tokio::time::timeout(DEPTH_TIMEOUT, app.broker.parked()).await {
        Ok(Ok(n)) => {
            metrics::gauge!(m::PARKED_MESSAGES).set(n as f64);
            Some(n)
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "could not read the parked depth");
            None
        }
        Err(_) => None,
    }
}

/// Keeps `fleet_parked_messages` current until `shutdown`.
pub async fn run_gauge(app: App, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(GAUGE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        refresh_gauge(&app).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let s = Duration::from_secs;
        assert_eq!(backoff(1), s(1));
        assert_eq!(backoff(2), s(2));
        assert_eq!(backoff(5), s(16));
        assert_eq!(backoff(6), s(30));
        assert_eq!(backoff(u32::MAX), s(30));
    }
}
