//! Background tasks of a worker, supervised: heartbeats (liveness) and the cancellation
//! listener. Either ending before `stop` ends the process (see [`crate::supervise`]).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use fleet_core::{BrokerKind, Settlement, Source, SubscribeOptions};
use fleet_protocol::{Heartbeat, control};
use tokio_util::sync::CancellationToken;

use crate::breaker::BreakerState;
use crate::consume::{Consumer, Step};
use crate::resubscribe::{Limits, Resubscriber};
use crate::shared::Shared;
use crate::supervise::Supervisor;
use crate::telemetry::Health;

/// Sends a heartbeat every interval until `stop`, including the jobs in flight (task `heartbeats`).
pub fn heartbeats(sup: &mut Supervisor, sh: Arc<Shared>, slots: u32, stop: CancellationToken) {
    sup.spawn("heartbeats", async move {
        let mut tick = tokio::time::interval(sh.cfg.heartbeat_interval);
        loop {
            tokio::select! {
                _ = tick.tick() => sh.sink.heartbeat(Heartbeat {
                    worker_id: sh.worker_id.clone(),
                    stage: sh.stage.clone(),
                    at: Utc::now(),
                    slots,
                    in_flight: sh.inflight.snapshot(),
                    // The coordinator can tell a paused worker from a stuck one.
                    paused: sh
                        .pause
                        .as_ref()
                        .filter(|g| g.state() != BreakerState::Closed)
                        .map(|g| g.reason()),
                }),
                () = stop.cancelled() => return Ok(()),
            }
        }
    });
}

/// Listens for cancellations until `stop` (task `cancellations`): remembers them and cancels
/// running jobs. A subscription it cannot get back (even after redeclaring) ends it with an
/// error after the resubscribe limits.
///
/// `synced` fires once this worker has seen every cancellation that was active when it
/// subscribed, so intake can wait for it (DESIGN §5: a worker started after a cancel drops
/// the cancelled jobs): where the broker keeps cancellations (NATS, memory) after replaying as
/// many as it keeps; on RabbitMQ at the coordinator's first sync marker after a re-broadcast.
pub fn cancellations(
    sup: &mut Supervisor,
    sh: Arc<Shared>,
    health: Arc<Health>,
    stop: CancellationToken,
    synced: CancellationToken,
) {
    sup.spawn("cancellations", async move {
        let topology = crate::config::topology(&sh.cfg, &sh.names, &sh.stage);
        let resub = Resubscriber::new(
            sh.broker.clone(),
            Source::Control,
            SubscribeOptions { prefetch: 256 },
            topology,
            Limits::from_config(&sh.cfg),
            health,
        );
        let mut consumer = Consumer::new(resub, "the cancellation stream");
        // How many kept cancellations the replay holds (None: the broker keeps none), and how
        // many this subscription has seen.
        let (mut kept, mut seen) = (None, 0u64);
        loop {
            if kept.is_some_and(|n| seen >= n) {
                synced.cancel();
            }
            let deliveries = match consumer.next(256, Duration::from_secs(1), &stop).await? {
                None => break,
                Some(Step::Subscribed) => {
                    seen = 0;
                    kept = if sh.broker.kind() == BrokerKind::RabbitMq || synced.is_cancelled() {
                        None
                    } else {
                        let depth = tokio::time::timeout(
                            Duration::from_secs(10),
                            sh.broker.depth(&Source::Control),
                        );
                        Some(depth.await.ok().and_then(Result::ok).unwrap_or(0))
                    };
                    continue;
                }
                Some(Step::Failed(_)) => continue,
                Some(Step::Fetched(d)) => d,
            };
            seen += deliveries.len() as u64;
            for d in deliveries {
                if let Some(c) = control::parse_cancellation(&d.body) {
                    let n = sh.inflight.cancel_pipeline(&c);
                    tracing::info!(pipeline_id = %c.pipeline_id, created_at = ?c.pipeline_created_at, running = n, "pipeline cancelled");
                    sh.cancels.insert(c);
                } else if control::is_sync_marker(&d.body) && !synced.is_cancelled() {
                    tracing::debug!("cancellations in sync with the coordinator");
                    synced.cancel();
                }
                if let Err(e) = Settlement::Ack.apply(d.acker).await {
                    tracing::debug!(error = %e, "cancellation ack failed (it is kept by the broker)");
                }
            }
        }
        consumer.close().await;
        Ok(())
    });
}
