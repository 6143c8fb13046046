//! `GET /ui/queues`: depth and waiting retries per stage (the API's queue handler), the age
//! of the oldest queued job, and the live workers of each stage with their last heartbeat.

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::response::Html;
use fleet_store::params;
use maud::html;

use super::error::UiError;
use super::layout::{page, when};
use super::session::Viewer;
use crate::api::queues::list as api_list;
use crate::app::App;
use crate::model::now_ms;
use crate::report::rfc3339;
use crate::stall::LOST_AFTER_HEARTBEATS;

/// `GET /ui/queues`.
pub async fn show(
    State(app): State<App>,
    Extension(viewer): Extension<Viewer>,
) -> Result<Html<String>, UiError> {
    // The broker may be down: the page still shows what the store knows.
    let queues = api_list(State(app.clone())).await;
    let oldest = app
        .store
        .query(
            "SELECT stage, MIN(queued_at) AS oldest FROM coord_jobs WHERE state = 'queued' GROUP BY stage",
            &[],
        )
        .await?
        .into_iter()
        .map(|r| Ok((r.get::<String>("stage")?, r.get::<i64>("oldest")?)))
        .collect::<Result<std::collections::BTreeMap<_, _>, fleet_store::StoreError>>()?;
    let cutoff = now_ms() - LOST_AFTER_HEARTBEATS * app.ingest.heartbeat_ms;
    let workers = app
        .store
        .query(
            "SELECT worker_id, stage, last_heartbeat_at, slots, in_flight FROM coord_workers \
             WHERE last_heartbeat_at >= $1 ORDER BY stage, worker_id",
            params![cutoff],
        )
        .await?;
    let body = html! {
        section aria-labelledby="q-h" {
            h2 id="q-h" { "Queues" }
            @match &queues {
                Err(e) => { p role="alert" { "The broker did not answer: " (e.message) " — " (e.hint) } }
                Ok(Json(v)) => {
                    table {
                        caption { "Jobs per stage" }
                        thead { tr {
                            th scope="col" { "Stage" } th scope="col" { "Queued (broker)" }
                            th scope="col" { "Waiting for a retry" } th scope="col" { "Oldest queued job" }
                            th scope="col" { "Live workers" }
                        } }
                        tbody { @for q in v["queues"].as_array().into_iter().flatten() {
                            @let stage = q["stage"].as_str().unwrap_or_default();
                            tr {
                                th scope="row" { (stage) }
                                td { @if q["depth"].is_null() { "unknown: " (q["depth_error"].as_str().unwrap_or_default()) } @else { (q["depth"]) } }
                                td { @if q["retrying"].is_null() { "unknown" } @else { (q["retrying"]) } }
                                td { @if let Some(t) = oldest.get(stage) { "queued " (when(&rfc3339(*t))) } @else { "none queued" } }
                                td { (q["workers_alive"]) }
                            }
                        } }
                    }
                    p { "Parked control messages: " (v["parked"]) }
                }
            }
        }
        section aria-labelledby="w-h" {
            h2 id="w-h" { "Live workers" }
            p { "Workers whose last heartbeat is at most " (LOST_AFTER_HEARTBEATS) " heartbeat intervals old. "
                "Circuit breaker states are not reported to the coordinator; see each worker's "
                code { "fleet_circuit_state" } " metric." }
            @if workers.is_empty() { p { "No live workers." } } @else {
                table {
                    caption { "Live workers by stage" }
                    thead { tr { th scope="col" { "Worker" } th scope="col" { "Stage" }
                        th scope="col" { "Last heartbeat" } th scope="col" { "Jobs in flight" } th scope="col" { "Slots" } } }
                    tbody { @for w in &workers {
                        tr {
                            th scope="row" { (w.get::<String>("worker_id")?) }
                            td { (w.get::<String>("stage")?) }
                            td { (when(&rfc3339(w.get::<i64>("last_heartbeat_at")?))) }
                            td { (w.get::<i64>("in_flight")?) }
                            td { (w.get::<i64>("slots")?) }
                        }
                    } }
                }
            }
        }
    };
    Ok(page("Queues and workers", Some(&viewer), body))
}
