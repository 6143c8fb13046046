//! Background tasks of a worker: heartbeats (liveness) and the cancellation listener.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use fleet_core::{BrokerKind, Source, SubscribeOptions};
use fleet_protocol::{Heartbeat, control};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::shared::Shared;

/// Sends a heartbeat every interval until `stop`, including the jobs in flight.
pub fn heartbeats(sh: Arc<Shared>, slots: u32, stop: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(sh.cfg.heartbeat_interval);
        loop {
            tokio::select! {
                _ = tick.tick() => sh.sink.heartbeat(Heartbeat {
                    worker_id: sh.worker_id.clone(),
                    stage: sh.stage.clone(),
                    at: Utc::now(),
                    slots,
                    in_flight: sh.inflight.snapshot(),
                }),
                () = stop.cancelled() => break,
            }
        }
    })
}

/// Listens for cancellations until `stop`: remembers them and cancels running jobs.
///
/// `synced` fires once this worker has seen every cancellation that was active when it
/// subscribed, so intake can wait for it (DESIGN §5: a worker started after a cancel drops
/// the cancelled jobs): where the broker keeps cancellations (NATS, memory) after replaying as
/// many as it keeps; on RabbitMQ at the coordinator's first sync marker after a re-broadcast.
pub fn cancellations(
    sh: Arc<Shared>,
    stop: CancellationToken,
    synced: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut pause = Duration::from_millis(200);
        while !stop.is_cancelled() {
            // How many kept cancellations the replay holds (None: the broker keeps none).
            let kept = if sh.broker.kind() == BrokerKind::RabbitMq || synced.is_cancelled() {
                None
            } else {
                Some(sh.broker.depth(&Source::Control).await.unwrap_or(0))
            };
            let sub = sh
                .broker
                .subscribe(Source::Control, SubscribeOptions { prefetch: 256 })
                .await;
            let mut sub = match sub {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot subscribe to cancellations; retrying");
                    tokio::select! { () = tokio::time::sleep(pause) => {}, () = stop.cancelled() => break }
                    pause = (pause * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            pause = Duration::from_millis(200);
            let mut seen = 0u64;
            loop {
                if kept.is_some_and(|n| seen >= n) {
                    synced.cancel();
                }
                let got = tokio::select! {
                    r = sub.fetch(256, Duration::from_secs(1)) => r,
                    () = stop.cancelled() => break,
                };
                let Ok(deliveries) = got.inspect_err(
                    |e| tracing::warn!(error = %e, "cancellation stream failed; resubscribing"),
                ) else {
                    break;
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
                    if let Err(e) = d.acker.ack().await {
                        tracing::debug!(error = %e, "cancellation ack failed (it is kept by the broker)");
                    }
                }
            }
        }
    })
}
