//! `GET /ui/pipelines`: newest first, filter by state, a progress bar per stage, age,
//! deadline, final state and a badge per kind of open stall. Rows come from the API's
//! own list handler and report builder.

use std::collections::BTreeMap;

use axum::Extension;
use axum::Json;
use axum::extract::{Query, State};
use axum::response::Html;
use maud::html;
use serde::Deserialize;

use super::error::UiError;
use super::layout::{page, stage_progress, stall_badges, state_badge, when};
use super::session::{Viewer, urlencode};
use crate::api::pipelines::{ListQuery, list as api_list};
use crate::app::App;
use crate::db::Db;
use crate::report::build;

/// Pipelines per page.
const PAGE: i64 = 25;

/// The states a pipeline can be in, for the filter.
const STATES: [&str; 6] = [
    "running",
    "completed",
    "partial_success",
    "failed",
    "cancelled",
    "timed_out",
];

/// Query of the pipelines page.
#[derive(Debug, Default, Deserialize)]
pub struct Params {
    state: Option<String>,
    after: Option<String>,
}

/// `GET /ui/pipelines`.
pub async fn list(
    State(app): State<App>,
    Extension(viewer): Extension<Viewer>,
    Query(p): Query<Params>,
) -> Result<Html<String>, UiError> {
    let state = p.state.filter(|s| !s.is_empty());
    let Json(v) = api_list(
        State(app.clone()),
        Query(ListQuery {
            state: state.clone(),
            limit: Some(PAGE),
            after: p.after.filter(|s| !s.is_empty()),
        }),
    )
    .await?;
    let mut rows = Vec::new();
    for r in v["pipelines"].as_array().into_iter().flatten() {
        let id = r["pipeline_id"].as_str().unwrap_or_default();
        if let Some(rep) = build(&mut Db::Store(&app.store), id, false).await? {
            rows.push(rep);
        }
    }
    let body = html! {
        form method="get" action="/ui/pipelines" class="filters" {
            label for="state" { "State" }
            select id="state" name="state" {
                option value="" { "any" }
                @for s in STATES {
                    option value=(s) selected[state.as_deref() == Some(s)] { (s) }
                }
            }
            button type="submit" { "Filter" }
        }
        @if rows.is_empty() {
            p { "No pipelines" @if let Some(s) = &state { " in state " (s) } "." }
        } @else {
            table {
                caption { "Pipelines, newest first" }
                thead { tr {
                    th scope="col" { "Pipeline" } th scope="col" { "State" }
                    th scope="col" { "Progress by stage" } th scope="col" { "Items" }
                    th scope="col" { "Created" } th scope="col" { "Deadline" }
                    th scope="col" { "Stalls" }
                } }
                tbody {
                    @for r in &rows {
                        @let stalls = r.stalled.iter().fold(BTreeMap::new(), |mut m, s| {
                            *m.entry(s.kind.clone()).or_insert(0usize) += 1; m
                        });
                        tr {
                            th scope="row" { a href={"/ui/pipelines/" (urlencode(&r.pipeline_id))} { (r.pipeline_id) } }
                            td { (state_badge(&r.state)) }
                            td { @for (stage, counts) in &r.stages { (stage_progress(stage, counts)) } }
                            td { (r.items_terminal) "/" (r.items_total) }
                            td { (when(&r.created_at)) }
                            td { @if let Some(d) = &r.deadline_at { (when(d)) } @else { "none" } }
                            td { @if stalls.is_empty() { "none" } @else { (stall_badges(&stalls)) } }
                        }
                    }
                }
            }
        }
        @if let Some(next) = v["next"].as_str() {
            p { a rel="next" href={"/ui/pipelines?after=" (urlencode(next))
                @if let Some(s) = &state { "&state=" (urlencode(s)) } } { "Older pipelines" } }
        }
    };
    Ok(page("Pipelines", Some(&viewer), body))
}
