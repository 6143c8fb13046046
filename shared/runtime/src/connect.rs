//! Connect by URL: `amqp://`, `amqps://`, `nats://`, `tls://` or `memory://`.

use std::sync::Arc;
use std::time::Duration;

use fleet_core::{Broker, BrokerError, MemoryBroker};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::RuntimeConfig;

/// Opens one connection for `cfg.broker_url`.
pub async fn connect(cfg: &RuntimeConfig) -> Result<Arc<dyn Broker>, BrokerError> {
    let url = cfg.broker_url.as_str();
    let scheme = url.split("://").next().unwrap_or_default();
    match scheme {
        "amqp" | "amqps" => {
            let opts = fleet_amqp::AmqpOptions {
                confirm_timeout: cfg.confirm_timeout,
                heartbeat: cfg.broker_heartbeat,
                consumer_timeout: cfg.rabbitmq_consumer_timeout,
                ca_file: cfg.broker_ca_file.clone(),
                quorum_group_size: cfg.quorum_group_size,
                ..fleet_amqp::AmqpOptions::default()
            };
            Ok(Arc::new(fleet_amqp::connect(url, opts).await?))
        }
        "nats" | "tls" => {
            let opts = fleet_nats::NatsOptions {
                request_timeout: cfg.confirm_timeout,
                ping_interval: cfg.broker_heartbeat,
                client_name: cfg.worker_id.clone(),
                ca_file: cfg.broker_ca_file.clone(),
                replicas: usize::from(cfg.nats_replicas),
                ..fleet_nats::NatsOptions::default()
            };
            Ok(Arc::new(fleet_nats::connect(url, opts).await?))
        }
        "memory" => Ok(Arc::new(MemoryBroker::new())),
        _ => Err(BrokerError::Config(format!(
            "unknown broker URL scheme in `{}`: use amqp://, amqps://, nats://, tls:// or memory://",
            fleet_protocol::redact::redact_url(url)
        ))),
    }
}

/// Connects, retrying with backoff until `FLEET_MAX_OUTAGE`; config errors fail at once.
/// `None` when `shutdown` came first: stopping before the broker was reached is not an error.
pub async fn connect_with_retry(
    cfg: &RuntimeConfig,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Arc<dyn Broker>>> {
    let since = Instant::now();
    let mut pause = Duration::from_millis(200);
    loop {
        match connect(cfg).await {
            Ok(b) => return Ok(Some(b)),
            Err(e @ BrokerError::Config(_)) => return Err(e.into()),
            Err(_) if shutdown.is_cancelled() => return Ok(None),
            Err(e) if since.elapsed() >= cfg.max_outage => {
                anyhow::bail!(
                    "cannot reach the broker at {}: {e}. Check FLEET_BROKER_URL and that the broker runs",
                    fleet_protocol::redact::redact_url(&cfg.broker_url)
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, url = %fleet_protocol::redact::redact_url(&cfg.broker_url), "broker not reachable yet; retrying");
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = shutdown.cancelled() => return Ok(None),
                }
                pause = (pause * 2).min(Duration::from_secs(10));
            }
        }
    }
}
