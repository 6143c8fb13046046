//! The API's bounds, as layers: a request timeout and a concurrency limit on ordinary
//! requests, a cap on simultaneous event streams (which are long-lived by design, so they
//! get neither), and a body limit on every route. Each refusal is a JSON error like the
//! others. Connection-level bounds (header timeout, connection cap) live in
//! `fleet_runtime::serve`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::limit::GlobalConcurrencyLimitLayer;
use tower_http::limit::RequestBodyLimitLayer;

use crate::app::App;
use crate::config::Config;
use crate::error::ApiError;
use crate::metrics as m;

/// Ordinary requests: cut at `FLEET_API_REQUEST_TIMEOUT` (waiting for a concurrency slot
/// included) and at most `FLEET_API_MAX_CONCURRENT_REQUESTS` handled at once.
pub fn bounded_requests(router: Router<App>, config: &Config) -> Router<App> {
    router
        // Inner: the slot is taken after the timer starts, so waiting for one is bounded too.
        .route_layer(GlobalConcurrencyLimitLayer::new(
            config.api_max_concurrent_requests,
        ))
        .route_layer(middleware::from_fn_with_state(
            config.api_request_timeout,
            request_timeout,
        ))
}

/// Event streams: at most `FLEET_API_MAX_EVENT_STREAMS` open at once; more are answered 503.
pub fn capped_streams(router: Router<App>, config: &Config) -> Router<App> {
    let cap = StreamCap {
        open: Arc::new(Semaphore::new(config.api_max_event_streams)),
        max: config.api_max_event_streams,
    };
    metrics::gauge!(m::API_EVENT_STREAMS).set(0.0);
    router.route_layer(middleware::from_fn_with_state(cap, stream_cap))
}

/// Every route: a body over `FLEET_MAX_BODY_BYTES` is refused with a JSON 413 before a
/// handler sees it (by its Content-Length, or while it streams in).
pub fn body_limit(router: Router, limit: usize) -> Router {
    router
        .layer(RequestBodyLimitLayer::new(limit))
        // Outer: tower-http's 413 and axum's extractor rejections are plain text; every API
        // error is JSON.
        .layer(middleware::map_response_with_state(limit, json_errors))
}

async fn request_timeout(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_elapsed) => {
            metrics::counter!(m::API_REQUEST_TIMEOUTS).increment(1);
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the request did not finish within {} (FLEET_API_REQUEST_TIMEOUT)",
                    humantime::format_duration(limit)
                ),
                "retry shortly; if it persists the coordinator or its database is overloaded",
            )
            .into_response()
        }
    }
}

#[derive(Clone)]
struct StreamCap {
    open: Arc<Semaphore>,
    max: usize,
}

/// Holds one stream slot (and the gauge) for as long as the response body lives.
struct StreamSlot(#[allow(dead_code)] OwnedSemaphorePermit);

impl StreamSlot {
    fn new(permit: OwnedSemaphorePermit) -> StreamSlot {
        metrics::gauge!(m::API_EVENT_STREAMS).increment(1.0);
        StreamSlot(permit)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        metrics::gauge!(m::API_EVENT_STREAMS).decrement(1.0);
    }
}

async fn stream_cap(State(cap): State<StreamCap>, req: Request, next: Next) -> Response {
    let Ok(permit) = cap.open.clone().try_acquire_owned() else {
        metrics::counter!(m::API_EVENT_STREAMS_REFUSED).increment(1);
        let mut resp = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} event streams are open, the limit (FLEET_API_MAX_EVENT_STREAMS)",
                cap.max
            ),
            "retry after a while, or poll GET /v1/pipelines/{id} instead of streaming",
        )
        .into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        return resp;
    };
    let slot = StreamSlot::new(permit);
    let resp = next.run(req).await;
    if !resp.status().is_success() {
        return resp;
    }
    // The slot goes with the body: released when the stream ends or the client leaves.
    resp.map(|body| {
        Body::from_stream(body.into_data_stream().map(move |chunk| {
            let _held = &slot;
            chunk
        }))
    })
}

/// Largest plain-text rejection body turned into a JSON error (axum's are one line).
const REJECTION_TEXT: usize = 64 * 1024;

async fn json_errors(State(limit): State<usize>, resp: Response) -> Response {
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !resp.status().is_client_error() || json {
        return resp;
    }
    if resp.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return super::too_large(limit).into_response();
    }
    // An extractor's rejection (bad path, query or body): plain text from axum. A 422 (well-
    // formed JSON of the wrong shape) is a 400 like every other invalid request here.
    let status = match resp.status() {
        StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
        s => s,
    };
    let text = axum::body::to_bytes(resp.into_body(), REJECTION_TEXT)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    ApiError::new(
        status,
        if text.is_empty() {
            "invalid request".to_owned()
        } else {
            text
        },
        "see GET /v1/openapi.yaml for the parameters and bodies each endpoint accepts",
    )
    .into_response()
}
