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
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    // The body is optional; one that is there must be valid (a JSON 400, not axum's bare 422).
    let req: ReplayRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ReplayRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(
                format!("the body is not a replay request: {e}"),
                "send {\"max\": N} with N a non-negative integer, or no body",
            )
        })?
    };
    let max = req.max.unwrap_or(MAX_REPLAY).min(MAX_REPLAY);
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
