//! `POST /v1/parked/replay`: moves parked control messages (event batches, submissions, dead
//! letters the coordinator gave up on) back to the queue or subject they came from.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::json;

use crate::app::App;
use crate::error::ApiError;
use crate::park::refresh_gauge;

/// Most messages one replay call moves.
const MAX_REPLAY: usize = 10_000;
/// Bound on one replay call.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(60);

/// Body of `POST /v1/parked/replay` (optional).
#[derive(Debug, Default, Deserialize)]
pub struct ReplayRequest {
    /// Most messages to move (default and cap 10000).
    max: Option<usize>,
}

/// `POST /v1/parked/replay` → `{replayed, parked}` (what moved, what is still parked).
pub async fn replay(
    State(app): State<App>,
    body: Option<Json<ReplayRequest>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let max = body
        .and_then(|Json(b)| b.max)
        .unwrap_or(MAX_REPLAY)
        .min(MAX_REPLAY);
    let replayed = tokio::time::timeout(REPLAY_TIMEOUT, app.broker.replay_parked(max))
        .await
        .map_err(|_| {
            ApiError::unavailable(
                "replaying parked messages did not finish within 60s; some may have moved: \
                 check GET /v1/queues and call it again",
            )
        })?
        .map_err(ApiError::unavailable)?;
    tracing::info!(replayed, "replayed parked control messages");
    let parked = refresh_gauge(&app).await;
    Ok(Json(json!({"replayed": replayed, "parked": parked})))
}
