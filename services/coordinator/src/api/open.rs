//! Open pipelines over HTTP: `POST /v1/pipelines` with `"open": true`,
//! `POST /v1/pipelines/{id}/items` (a batch), `POST /v1/pipelines/{id}/seal`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use fleet_protocol::{Seal, Submission};
use serde_json::json;

use crate::app::App;
use crate::append::{append_items, seal as seal_pipeline};
use crate::error::ApiError;
use crate::model::now_ms;
use crate::plan::plan_with_route;
use crate::submit::{Open, Submitted, store_open_pipeline};

fn ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// `POST /v1/pipelines` with `"open": true`: creates (or finds) the open pipeline,
/// then appends the items sent along, if any.
pub async fn create_open(
    app: &App,
    sub: &Submission,
    key: Option<&str>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let (mut planned, route) = plan_with_route(sub, key, &app.limits)?;
    planned.items.clear();
    let open = Open {
        route,
        seal_by: now_ms().saturating_add(ms(app.config.open_pipeline_timeout)),
    };
    let outcome = store_open_pipeline(&app.store, &planned, &open).await?;
    let id = planned.pipeline_id;
    let appended = if sub.items.is_empty() {
        None
    } else {
        Some(
            append_items(
                &app.store,
                &id,
                &sub.items,
                app.limits.max_item_bytes,
                ms(app.config.open_pipeline_timeout),
            )
            .await?,
        )
    };
    app.relay.notify_one();
    let accepted = appended.map_or(0, |a| a.accepted);
    Ok(match outcome {
        Submitted::Created => (
            StatusCode::CREATED,
            Json(
                json!({"pipeline_id": id, "state": "running", "created": true, "open": true, "accepted": accepted}),
            ),
        ),
        Submitted::Existing(state) => (
            StatusCode::OK,
            Json(
                json!({"pipeline_id": id, "state": state, "created": false, "open": true, "accepted": accepted}),
            ),
        ),
    })
}

/// `POST /v1/pipelines/{id}/items`: appends a batch; items already there with the
/// same content are counted as `existing`, not stored again.
pub async fn append(
    State(app): State<App>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let body = body.map_err(|e| super::body_error(&e, app.config.max_body_bytes))?;
    let batch = fleet_protocol::decode_item_batch(&body)
        .map_err(|e| ApiError::bad_request(e.message, e.hint))?;
    let done = append_items(
        &app.store,
        &id,
        &batch.items,
        app.limits.max_item_bytes,
        ms(app.config.open_pipeline_timeout),
    )
    .await?;
    if done.accepted > 0 {
        app.relay.notify_one();
    }
    Ok(Json(json!({
        "pipeline_id": id,
        "accepted": done.accepted,
        "existing": done.existing,
        "sealed": done.sealed,
    })))
}

/// `POST /v1/pipelines/{id}/seal`: the item list is complete. Idempotent.
pub async fn seal(
    State(app): State<App>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let body = body.map_err(|e| super::body_error(&e, app.config.max_body_bytes))?;
    let req: Seal = if body.iter().all(u8::is_ascii_whitespace) {
        Seal::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(
                format!("the body is not a valid seal request: {e}"),
                "send {\"item_count\": N} with the number of items sent, or an empty body",
            )
        })?
    };
    let done = seal_pipeline(
        &app.store,
        &id,
        req.item_count,
        ms(app.config.deadline_grace),
    )
    .await?;
    app.relay.notify_one();
    Ok(Json(json!({
        "pipeline_id": id,
        "state": done.state,
        "sealed": true,
        "newly_sealed": done.newly,
        "items": done.items,
    })))
}
