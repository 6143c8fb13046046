//! `GET /v1/queues`: depth of every stage's job queue (from the broker) and
//! its live workers (from heartbeats), and the parked control messages.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use fleet_core::Source;
use fleet_store::params;
use serde_json::json;

use crate::app::App;
use crate::error::ApiError;
use crate::model::now_ms;
use crate::stall::LOST_AFTER_HEARTBEATS;

/// `GET /v1/queues` → `{queues: [{stage, depth, workers_alive}], parked}`.
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
        .map_err(|_| ApiError::unavailable("the broker did not report queue depth within 5s"))?
        .map_err(ApiError::unavailable)?;
        let alive: i64 = app
            .store
            .query_one(
                "SELECT COUNT(*) AS n FROM coord_workers WHERE stage = $1 AND last_heartbeat_at >= $2",
                params![stage.as_str(), cutoff],
            )
            .await?
            .get("n")?;
        out.push(json!({"stage": stage, "depth": depth, "workers_alive": alive}));
    }
    let parked = crate::park::refresh_gauge(&app)
        .await
        .ok_or_else(|| ApiError::unavailable("the broker did not report the parked depth"))?;
    Ok(Json(json!({"queues": out, "parked": parked})))
}
