//! `GET /v1/limits`: the sizes a client must respect, so `fleetctl submit` (or
//! any producer) can split its items into batches without guessing.

use axum::Json;
use axum::extract::State;
use serde_json::json;

use crate::app::App;

/// `GET /v1/limits`.
pub async fn show(State(app): State<App>) -> Json<serde_json::Value> {
    let c = &app.config;
    Json(json!({
        "max_body_bytes": c.max_body_bytes,
        "max_item_bytes": app.limits.max_item_bytes,
        "max_message_bytes": c.runtime.max_message_bytes,
        "open_pipeline_timeout_ms": u64::try_from(c.open_pipeline_timeout.as_millis()).unwrap_or(u64::MAX),
    }))
}
