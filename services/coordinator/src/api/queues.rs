//! `GET /v1/queues`: depth of every stage's job queue and the jobs waiting for a delayed retry
//! (both from the broker: parked retries wait outside the job queue, in retry queues or the
//! retry stream), and its live workers (from heartbeats). A stage the broker has no queue for
//! (a job for an unknown stage) reports `depth: null` with the broker's answer instead of
//! failing the whole list; an unreachable broker is still a 503.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use fleet_core::{BrokerError, Source};
use fleet_store::params;
use serde_json::json;

use crate::app::App;
use crate::error::ApiError;
use crate::model::now_ms;
use crate::stall::LOST_AFTER_HEARTBEATS;

/// `GET /v1/queues` → `{queues: [{stage, depth, retrying, workers_alive}]}`.
pub async fn list(State(app): State<App>) -> Result<Json<serde_json::Value>, ApiError> {
    let mut stages: BTreeSet<String> = app.stages().into_iter().collect();
    for r in app
        .store
        .query(
            "SELECT DISTINCT stage FROM coord_jobs WHERE state IN ('queued', 'running', 'retrying')",
            &[],
        )
        .await?
    {
        stages.insert(r.get("stage")?);
    }
    let cutoff = now_ms() - LOST_AFTER_HEARTBEATS * app.ingest.heartbeat_ms;
    let mut out = Vec::new();
    for stage in stages {
        let depth = tokio::time::timeout(
            Duration::from_secs(5),
            app.broker.depth(&Source::Jobs {
                stage: stage.clone(),
            }),
        )
        .await
        .map_err(|_| ApiError::unavailable("the broker did not report queue depth within 5s"))?;
        let (depth, depth_error) = match depth {
            Ok(n) => (Some(n), None),
            Err(BrokerError::Rejected(e)) => (None, Some(e)),
            Err(e) => return Err(ApiError::unavailable(e)),
        };
        let retrying = tokio::time::timeout(Duration::from_secs(5), app.broker.retrying(&stage))
            .await
            .map_err(|_| {
                ApiError::unavailable("the broker did not report waiting retries within 5s")
            })?;
        let retrying = match retrying {
            Ok(n) => Some(n),
            Err(BrokerError::Rejected(_)) => None,
            Err(e) => return Err(ApiError::unavailable(e)),
        };
        let alive: i64 = app
            .store
            .query_one(
                "SELECT COUNT(*) AS n FROM coord_workers WHERE stage = $1 AND last_heartbeat_at >= $2",
                params![stage.as_str(), cutoff],
            )
            .await?
            .get("n")?;
        let mut q =
            json!({"stage": stage, "depth": depth, "retrying": retrying, "workers_alive": alive});
        if let Some(e) = depth_error {
            q["depth_error"] = e.into();
        }
        out.push(q);
    }
    Ok(Json(json!({"queues": out})))
}
