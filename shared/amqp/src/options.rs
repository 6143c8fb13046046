//! Connection settings and the start-up check against RabbitMQ's `consumer_timeout`.

use std::path::PathBuf;
use std::time::Duration;

/// How long to wait for the TCP/TLS connection and the AMQP handshake.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for a publisher confirm or any other broker answer.
pub const DEFAULT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// AMQP heartbeat: a dead peer is noticed after about twice this.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);
/// RabbitMQ's default global `consumer_timeout` (30 min).
pub const DEFAULT_CONSUMER_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Settings for [`crate::connect`].
#[derive(Debug, Clone)]
pub struct AmqpOptions {
    /// Name shown for the connection in the RabbitMQ management UI.
    pub connection_name: String,
    /// Bound on opening the connection (TCP, TLS and AMQP handshake).
    pub connect_timeout: Duration,
    /// Bound on a publisher confirm and on every other broker request (declare, ack, qos).
    pub confirm_timeout: Duration,
    /// AMQP heartbeat interval (whole seconds, at least 1; a URL `?heartbeat=` wins).
    pub heartbeat: Duration,
    /// The broker's global `consumer_timeout`, for [`AmqpOptions::check_attempt_timeout`].
    pub consumer_timeout: Duration,
    /// PEM file of a CA trusted for `amqps://` besides the system roots (`FLEET_BROKER_CA_FILE`).
    pub ca_file: Option<PathBuf>,
    /// Replicas of each new quorum queue (`x-quorum-initial-group-size`); `None` leaves it
    /// to the broker's default, which differs between RabbitMQ versions and settings.
    pub quorum_group_size: Option<u16>,
}

impl Default for AmqpOptions {
    fn default() -> Self {
        AmqpOptions {
            connection_name: default_connection_name(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            confirm_timeout: DEFAULT_CONFIRM_TIMEOUT,
            heartbeat: DEFAULT_HEARTBEAT,
            consumer_timeout: DEFAULT_CONSUMER_TIMEOUT,
            ca_file: None,
            quorum_group_size: None,
        }
    }
}

impl AmqpOptions {
    /// [`check_consumer_timeout`] against this broker's `consumer_timeout`.
    pub fn check_attempt_timeout(
        &self,
        max_attempt_timeout: Duration,
        margin: Duration,
    ) -> Result<(), String> {
        check_consumer_timeout(max_attempt_timeout, self.consumer_timeout, margin)
    }

    /// The heartbeat in whole seconds as AMQP wants it (1..=65535).
    pub(crate) fn heartbeat_secs(&self) -> u16 {
        u16::try_from(self.heartbeat.as_secs())
            .unwrap_or(u16::MAX)
            .max(1)
    }
}

/// `fleet <program> <pid>`, so every process is told apart in the management UI.
fn default_connection_name() -> String {
    let program = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "worker".to_owned());
    format!("fleet {program} {}", std::process::id())
}

/// Fails unless `max_attempt_timeout + margin` stays below RabbitMQ's `consumer_timeout`.
///
/// RabbitMQ 3.10 cannot extend a delivery: when one stays unacked longer than
/// the global `consumer_timeout`, the broker closes the whole channel with 406
/// PRECONDITION_FAILED, and every delivery on it is redelivered. Time spent in
/// the prefetch buffer counts too, so keep prefetch close to the worker's slots.
pub fn check_consumer_timeout(
    max_attempt_timeout: Duration,
    consumer_timeout: Duration,
    margin: Duration,
) -> Result<(), String> {
    if max_attempt_timeout.saturating_add(margin) < consumer_timeout {
        return Ok(());
    }
    Err(format!(
        "the longest attempt timeout ({max_attempt_timeout:?}) plus a safety margin ({margin:?}) \
         is not below RabbitMQ's consumer_timeout ({consumer_timeout:?}): the broker would close \
         the channel under a running job. Lower the attempt timeout, or raise `consumer_timeout` \
         (milliseconds) in rabbitmq.conf and tell fleet the new value"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_timeout_check() {
        let min = Duration::from_secs(60);
        assert!(check_consumer_timeout(min * 10, min * 30, min).is_ok());
        let err = check_consumer_timeout(min * 29, min * 30, min).unwrap_err();
        assert!(err.contains("consumer_timeout"), "{err}");
        assert!(check_consumer_timeout(min * 40, min * 30, Duration::ZERO).is_err());
        let opts = AmqpOptions {
            heartbeat: Duration::from_millis(300),
            ..AmqpOptions::default()
        };
        assert_eq!(opts.heartbeat_secs(), 1);
        assert!(opts.connection_name.starts_with("fleet "));
    }
}
