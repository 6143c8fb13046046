//! The web console under `/ui`: server-rendered HTML (maud templates compiled into the
//! binary) over the same handlers and store queries as the API, a login that keeps the API
//! token's role in a signed cookie, and a small embedded script that follows the API's SSE
//! stream. Every page works without JavaScript.

mod actions;
mod dlq;
mod error;
mod layout;
mod pipeline;
mod pipelines;
mod queues;
mod session;
mod viewer;

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Redirect};
use axum::routing::{get, post};

use crate::app::App;

const SCRIPT: &str = include_str!("console.js");
const STYLE: &str = include_str!("console.css");

/// The console's routes (merged into the API router).
pub fn router(app: &App) -> Router<App> {
    let sessions = session::Sessions::new(&app.config);
    let guarded = Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/pipelines") }))
        .route("/ui/", get(|| async { Redirect::to("/ui/pipelines") }))
        .route("/ui/pipelines", get(pipelines::list))
        .route("/ui/pipelines/{id}", get(pipeline::show))
        .route("/ui/pipelines/{id}/events", get(crate::api::sse::events))
        .route("/ui/pipelines/{id}/cancel", post(actions::cancel))
        .route("/ui/dlq", get(dlq::list))
        .route("/ui/dlq/replay", post(actions::replay))
        .route("/ui/dlq/purge", post(actions::purge))
        .route("/ui/dlq/{id}", get(dlq::show))
        .route("/ui/queues", get(queues::show))
        .route_layer(axum::middleware::from_fn_with_state(
            sessions.clone(),
            session::guard,
        ));
    let login = Router::new()
        .route("/ui/login", get(actions::login_form).post(actions::login))
        .route("/ui/logout", post(actions::logout))
        .with_state(sessions);
    Router::new()
        .route(
            "/ui/static/console.js",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                    SCRIPT,
                )
                    .into_response()
            }),
        )
        .route(
            "/ui/static/console.css",
            get(|| async {
                ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
            }),
        )
        .merge(guarded)
        .merge(login)
}
