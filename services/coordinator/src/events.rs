//! The event consumer: event batches (job events and heartbeats) from every
//! stage, applied in one transaction per fetch, acked after the commit.

use std::sync::Arc;

use fleet_core::{Delivery, Settlement, Source};
use fleet_protocol::EventBatch;
use fleet_runtime::telemetry::Health;
use fleet_store::StoreError;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::consumer::consume;
use crate::ingest::{Applied, apply_batches};
use crate::metrics as m;
use crate::model::now_ms;
use crate::park::{park, retry_or_park};

/// Deliveries fetched (and committed together) at once.
const FETCH: usize = 64;
/// Source label of parked and retried event batches.
const SOURCE: &str = "events";

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

/// Applies a fetch: all together, or one by one when the whole fails; returns each delivery
/// with its settlement.
pub async fn handle(app: &App, deliveries: Vec<Delivery>) -> Vec<(Delivery, Settlement)> {
    let mut settled = Vec::with_capacity(deliveries.len());
    let mut good = Vec::new();
    for d in deliveries {
        match serde_json::from_slice::<EventBatch>(&d.body) {
            Ok(b) if b.v == fleet_protocol::PROTOCOL_VERSION => good.push((d, b)),
            Ok(b) => {
                // Perhaps from a newer worker: keep it for a coordinator that understands it.
                metrics::counter!(m::EVENT_BATCHES, "result" => "invalid").increment(1);
                let error = format!(
                    "event batch version {} (this coordinator reads version {})",
                    b.v,
                    fleet_protocol::PROTOCOL_VERSION
                );
                let s = park(d.attempt, "unsupported_version", &error);
                settled.push((d, s));
            }
            Err(e) => {
                metrics::counter!(m::EVENT_BATCHES, "result" => "invalid").increment(1);
                let s = park(d.attempt, "decode_error", &e.to_string());
                settled.push((d, s));
            }
        }
    }
    if good.is_empty() {
        return settled;
    }
    let all: Vec<&EventBatch> = good.iter().map(|(_, b)| b).collect();
    if apply_all(app, &all).await.is_ok() {
        let n = good.len() as u64;
        settled.extend(good.into_iter().map(|(d, _)| (d, Settlement::Ack)));
        app.relay.notify_one();
        metrics::counter!(m::EVENT_BATCHES, "result" => "ok").increment(n);
        return settled;
    }
    for (d, b) in good {
        match apply_all(app, &[&b]).await {
            Ok(()) => {
                metrics::counter!(m::EVENT_BATCHES, "result" => "ok").increment(1);
                settled.push((d, Settlement::Ack));
            }
            Err(e) => {
                tracing::warn!(error = %e, worker_id = %b.worker_id, attempt = d.attempt,
                    "applying an event batch failed; retrying after a backoff");
                if d.attempt >= app.config.control_max_attempts {
                    metrics::counter!(m::EVENT_BATCHES, "result" => "failed").increment(1);
                }
                let s = retry_or_park(d.attempt, &e.to_string(), app.config.control_max_attempts);
                settled.push((d, s));
            }
        }
    }
    settled
}

/// Runs the event consumer until `shutdown`.
pub async fn run(app: App, health: Arc<Health>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let a = app.clone();
    consume(
        &app,
        health,
        Source::Events,
        SOURCE,
        FETCH,
        shutdown,
        move |ds| {
            let a = a.clone();
            async move { handle(&a, ds).await }
        },
    )
    .await
}
