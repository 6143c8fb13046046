//! Background tasks of a worker: heartbeats (liveness) and the cancellation listener.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use fleet_core::{Source, SubscribeOptions};
use fleet_protocol::Heartbeat;
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

/// The pipeline id in a control message: `{"pipeline_id": …}` or the raw text.
pub fn cancelled_pipeline(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Msg {
        pipeline_id: String,
    }
    if let Ok(m) = serde_json::from_slice::<Msg>(body) {
        return Some(m.pipeline_id);
    }
    let text = std::str::from_utf8(body).ok()?.trim();
    (!text.is_empty() && !text.starts_with('{')).then(|| text.to_owned())
}

/// Listens for cancellations until `stop`: remembers them and cancels running jobs.
pub fn cancellations(sh: Arc<Shared>, stop: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut pause = Duration::from_millis(200);
        while !stop.is_cancelled() {
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
            loop {
                let got = tokio::select! {
                    r = sub.fetch(256, Duration::from_secs(1)) => r,
                    () = stop.cancelled() => break,
                };
                let Ok(deliveries) = got.inspect_err(
                    |e| tracing::warn!(error = %e, "cancellation stream failed; resubscribing"),
                ) else {
                    break;
                };
                for d in deliveries {
                    if let Some(pid) = cancelled_pipeline(&d.body) {
                        sh.cancels.insert(&pid);
                        let n = sh.inflight.cancel_pipeline(&pid);
                        tracing::info!(pipeline_id = %pid, running = n, "pipeline cancelled");
                    }
                    if let Err(e) = d.acker.ack().await {
                        tracing::debug!(error = %e, "cancellation ack failed (it is kept by the broker)");
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_bodies() {
        assert_eq!(
            super::cancelled_pipeline(br#"{"pipeline_id":"p1","v":1}"#).as_deref(),
            Some("p1")
        );
        assert_eq!(super::cancelled_pipeline(b"p2").as_deref(), Some("p2"));
        assert_eq!(super::cancelled_pipeline(b"{bad"), None);
    }
}
