//! The event consumer: event batches (job events and heartbeats) from every
//! stage, applied in one transaction per fetch, acked after the commit.

use std::sync::Arc;

use fleet_core::{Delivery, Source};
use fleet_protocol::EventBatch;
use fleet_runtime::telemetry::Health;
use fleet_store::StoreError;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::consumer::{consume, settle};
use crate::ingest::{Applied, apply_batches};
use crate::metrics as m;
use crate::model::now_ms;

/// Deliveries fetched (and committed together) at once.
const FETCH: usize = 64;
/// A batch that keeps failing in the database is given up after this many deliveries.
const MAX_DELIVERIES: u32 = 10;

async fn apply_all(app: &App, batches: &[&EventBatch]) -> Result<(), StoreError> {
    let mut tx = app.store.begin().await?;
    let now = now_ms();
    // One sorted pass over every batch: the lock order holds across batches too.
    let late = apply_batches(&mut tx, batches, &app.ingest, now)
        .await?
        .into_iter()
        .filter(|a| *a == Applied::Late)
        .count() as u64;
    tx.commit().await?;
    metrics::counter!(m::LATE_EVENTS).increment(late);
    Ok(())
}

/// Applies a fetch: all together, or one by one when the whole fails.
pub async fn handle(app: &App, deliveries: Vec<Delivery>) {
    let mut good = Vec::new();
    for d in deliveries {
        match serde_json::from_slice::<EventBatch>(&d.body) {
            Ok(b) if b.v == fleet_protocol::PROTOCOL_VERSION => good.push((d, b)),
            Ok(b) => {
                tracing::warn!(v = b.v, "event batch of an unsupported version; dropped");
                metrics::counter!(m::EVENT_BATCHES, "result" => "invalid").increment(1);
                settle("ack invalid batch", d.acker.ack()).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "undecodable event batch; dropped");
                metrics::counter!(m::EVENT_BATCHES, "result" => "invalid").increment(1);
                settle("ack invalid batch", d.acker.ack()).await;
            }
        }
    }
    if good.is_empty() {
        return;
    }
    let all: Vec<&EventBatch> = good.iter().map(|(_, b)| b).collect();
    if apply_all(app, &all).await.is_ok() {
        let n = good.len() as u64;
        for (d, _) in good {
            settle("ack event batch", d.acker.ack()).await;
        }
        app.relay.notify_one();
        metrics::counter!(m::EVENT_BATCHES, "result" => "ok").increment(n);
        return;
    }
    for (d, b) in good {
        match apply_all(app, &[&b]).await {
            Ok(()) => {
                metrics::counter!(m::EVENT_BATCHES, "result" => "ok").increment(1);
                settle("ack event batch", d.acker.ack()).await;
            }
            Err(e) if !e.is_transient() && d.attempt >= MAX_DELIVERIES => {
                tracing::error!(error = %e, worker_id = %b.worker_id, body = %String::from_utf8_lossy(&d.body),
                    "event batch fails in the database on every delivery; giving up on it");
                metrics::counter!(m::EVENT_BATCHES, "result" => "failed").increment(1);
                settle("ack failed batch", d.acker.ack()).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "applying an event batch failed; it will be redelivered");
                settle("retry event batch", async {
                    d.acker
                        .retry(std::time::Duration::from_secs(1))
                        .await
                        .map(drop)
                })
                .await;
            }
        }
    }
}

/// Runs the event consumer until `shutdown`.
pub async fn run(app: App, health: Arc<Health>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let a = app.clone();
    consume(&app, health, Source::Events, FETCH, shutdown, move |ds| {
        let a = a.clone();
        async move { handle(&a, ds).await }
    })
    .await
}
