//! Control messages the coordinator cannot process: retried with backoff (never an immediate
//! requeue, so a database outage does not spin the consumers), and parked once they run out of
//! attempts or can never be processed (an event batch of an unknown version). Parked messages
//! wait in `<p>.parked` (RabbitMQ) / `<P>_PARKED` (NATS), are reported as
//! `fleet_parked_messages` and in `GET /v1/queues`, and `POST /v1/parked/replay` (`fleetctl
//! parked replay`) sends them back to where they came from.

use std::time::Duration;

use fleet_core::{ParkInfo, Settlement};
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

/// Parks a message on its `attempt`th delivery: it can never be processed here, or has run
/// out of attempts.
pub fn park(attempt: u32, reason: &str, error: &str) -> Settlement {
    Settlement::Park(ParkInfo {
        reason: reason.to_owned(),
        error: error.to_owned(),
        attempts: attempt,
    })
}

/// Retries a message on its `attempt`th delivery after a backoff, or parks it once it has had
/// `max_attempts` deliveries.
pub fn retry_or_park(attempt: u32, error: &str, max_attempts: u32) -> Settlement {
    if attempt >= max_attempts {
        park(attempt, "attempts_exhausted", error)
    } else {
        Settlement::Retry(backoff(attempt))
    }
}

/// Counts and logs a settlement of a `what` message once the broker took it.
pub fn applied(what: &'static str, s: &Settlement) {
    match s {
        Settlement::Park(info) => {
            metrics::counter!(m::PARKED, "source" => what, "reason" => info.reason.clone())
                .increment(1);
            tracing::error!(
                source = what,
                reason = info.reason,
                attempt = info.attempts,
                error = info.error,
                "parked a {what} message: it waits in the parked queue until it is replayed \
                 (fleetctl parked replay)"
            );
        }
        Settlement::Retry(_) => {
            metrics::counter!(m::CONTROL_RETRIES, "source" => what).increment(1);
        }
        _ => {}
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

    #[test]
    fn retries_with_backoff_then_parks() {
        let s = Duration::from_secs;
        assert_eq!(retry_or_park(1, "db down", 3), Settlement::Retry(s(1)));
        assert_eq!(retry_or_park(2, "db down", 3), Settlement::Retry(s(2)));
        assert_eq!(
            retry_or_park(3, "db down", 3),
            Settlement::Park(ParkInfo {
                reason: "attempts_exhausted".into(),
                error: "db down".into(),
                attempts: 3
            })
        );
    }
}
