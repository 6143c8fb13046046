//! The HTTP API (axum): routes, bearer-token auth, body limits, JSON errors.

pub(crate) mod auth;
mod bounds;
pub(crate) mod dlq;
mod limits;
mod nul;
mod open;
mod parked;
pub(crate) mod pipelines;
pub(crate) mod queues;
pub(crate) mod sse;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};

use crate::app::App;
use crate::error::ApiError;

/// The OpenAPI 3 description, checked in at `services/coordinator/openapi.yaml`.
pub const OPENAPI: &str = include_str!("../../openapi.yaml");

/// The API router over `app`.
pub fn router(app: App) -> Router {
    let limit = app.config.max_body_bytes;
    let requests = Router::new()
        .route(
            "/v1/pipelines",
            post(pipelines::create).get(pipelines::list),
        )
        .route("/v1/pipelines/{id}", get(pipelines::show))
        .route("/v1/pipelines/{id}/cancel", post(pipelines::cancel))
        .route("/v1/pipelines/{id}/items", post(open::append))
        .route("/v1/pipelines/{id}/seal", post(open::seal))
        .route("/v1/limits", get(limits::show))
        .route("/v1/dlq", get(dlq::list))
        .route("/v1/dlq/replay", post(dlq::replay))
        .route("/v1/dlq/purge", post(dlq::purge))
        .route("/v1/dlq/{id}", get(dlq::show))
        .route("/v1/queues", get(queues::list))
        .route("/v1/parked/replay", post(parked::replay));
    let streams = Router::new().route("/v1/pipelines/{id}/events", get(sse::events));
    let protected = bounds::bounded_requests(requests, &app.config)
        .merge(bounds::capped_streams(streams, &app.config))
        // Inner to auth: an unauthenticated body is never read.
        .route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            nul::refuse_nul,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            auth::Tokens::new(&app.config),
            auth::auth,
        ));
    let api = Router::new()
        .route("/v1/openapi.yaml", get(openapi))
        .merge(protected)
        .merge(crate::ui::router(&app))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(app);
    bounds::body_limit(api, limit)
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI)
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such endpoint",
        "see GET /v1/openapi.yaml for the API",
    )
}

/// Maps a body rejection (too large, unreadable) to a JSON error.
pub(crate) fn body_error(e: &axum::extract::rejection::BytesRejection, limit: usize) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        too_large(limit)
    } else {
        ApiError::new(
            e.status(),
            format!("cannot read the request body: {e}"),
            "resend the request",
        )
    }
}

/// The 413 for a body over FLEET_MAX_BODY_BYTES.
pub(crate) fn too_large(limit: usize) -> ApiError {
    ApiError::too_large(
        format!("the request body exceeds the limit of {limit} bytes"),
        "send the items in batches: create the pipeline with \"open\": true, POST /v1/pipelines/{id}/items per batch, then POST /v1/pipelines/{id}/seal (fleetctl submit does this by itself); see GET /v1/limits",
    )
}
