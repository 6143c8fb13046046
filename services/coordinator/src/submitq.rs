//! The submit-queue consumer: the same submission path as `POST /v1/pipelines`
//! for producers in any language. A rejected submission is dead-lettered
//! (stage `submit`) with its reason; a redelivered one never makes a second
//! pipeline: without a `pipeline_id` or `Idempotency-Key` header, the id is
//! derived from the body's hash.

use std::sync::Arc;

use chrono::Utc;
use fleet_core::{Delivery, Settlement, Source};
use fleet_protocol::{DeadLetterInfo, DeadLetterReason, Submission};
use fleet_runtime::telemetry::Health;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::consumer::consume;
use crate::metrics as m;
use crate::park::retry_or_park;
use crate::plan::plan;
use crate::submit::{Submitted, store_pipeline};

/// The stage name submissions are dead-lettered under.
pub const SUBMIT_STAGE: &str = "submit";
/// Header a producer may set instead of `pipeline_id`.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// Why a submission is refused, or `Ok` with whether it was new.
async fn submit(app: &App, d: &Delivery) -> Result<Submitted, (DeadLetterReason, String, bool)> {
    if d.body.len() > app.config.max_body_bytes {
        return Err((
            DeadLetterReason::Poison,
            format!(
                "submission of {} bytes exceeds the limit of {} bytes",
                d.body.len(),
                app.config.max_body_bytes
            ),
            false,
        ));
    }
    let probe: serde_json::Value = serde_json::from_slice(&d.body).map_err(|e| {
        (
            DeadLetterReason::DecodeError,
            format!("not JSON: {e}"),
            false,
        )
    })?;
    if let Some(v) = probe.get("v").and_then(serde_json::Value::as_u64)
        && v != u64::from(fleet_protocol::PROTOCOL_VERSION)
    {
        return Err((
            DeadLetterReason::UnsupportedVersion,
            format!("unsupported submission version {v}"),
            false,
        ));
    }
    let sub: Submission = serde_json::from_value(probe).map_err(|e| {
        (
            DeadLetterReason::DecodeError,
            format!("not a submission: {e}"),
            false,
        )
    })?;
    if sub.open {
        // One message is one whole pipeline here; batching is an HTTP feature
        // (the queue's message limit is the broker's, not a request body's).
        return Err((
            DeadLetterReason::PermanentError,
            "the submit queue takes whole pipelines only (\"open\": true is for the HTTP API)"
                .into(),
            false,
        ));
    }
    let key = d
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(IDEMPOTENCY_HEADER))
        .map(|(_, v)| v.clone())
        .or_else(|| {
            sub.pipeline_id.is_none().then(|| {
                let h = hex::encode(Sha256::digest(&d.body));
                format!("sub-{}", &h[..32])
            })
        });
    let planned = plan(&sub, key.as_deref(), &app.limits)
        .map_err(|e| (DeadLetterReason::PermanentError, e.to_string(), false))?;
    store_pipeline(&app.store, &planned).await.map_err(|e| {
        let transient = e.status.is_server_error();
        (DeadLetterReason::PermanentError, e.to_string(), transient)
    })
}

async fn handle_one(app: &App, d: &Delivery) -> Settlement {
    match submit(app, d).await {
        Ok(s) => {
            let result = if s == Submitted::Created {
                "created"
            } else {
                "existing"
            };
            metrics::counter!(m::QUEUE_SUBMISSIONS, "result" => result).increment(1);
            app.relay.notify_one();
            Settlement::Ack
        }
        Err((_, error, true)) => {
            tracing::warn!(
                error,
                "storing a queued submission failed; it will be redelivered"
            );
            retry_or_park(d.attempt, &error, app.config.control_max_attempts)
        }
        Err((reason, error, false)) => {
            tracing::warn!(
                reason = reason.as_str(),
                error,
                "queued submission rejected; dead-lettered"
            );
            metrics::counter!(m::QUEUE_SUBMISSIONS, "result" => "rejected").increment(1);
            let info = DeadLetterInfo {
                reason,
                last_error_kind: None,
                last_error: fleet_protocol::deadletter::bound_error(&error),
                attempts: d.attempt,
                stage: SUBMIT_STAGE.into(),
                worker_id: "coordinator".into(),
                at: Utc::now(),
                job_id: None,
            };
            Settlement::DeadLetter(Box::new(info))
        }
    }
}

/// Runs the submit consumer until `shutdown`.
pub async fn run(app: App, health: Arc<Health>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let a = app.clone();
    consume(
        &app,
        health,
        Source::Submit,
        "submit",
        16,
        shutdown,
        move |ds| {
            let a = a.clone();
            async move {
                let mut settled = Vec::with_capacity(ds.len());
                for d in ds {
                    let s = handle_one(&a, &d).await;
                    settled.push((d, s));
                }
                settled
            }
        },
    )
    .await
}
