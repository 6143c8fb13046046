//! `GET /ui/dlq` (filter by stage, reason, pipeline) and `GET /ui/dlq/{id}` (headers and body),
//! read through the API's own handlers.

use axum::Extension;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::Html;
use maud::html;
use serde::Deserialize;

use super::error::UiError;
use super::layout::{csrf, page, when};
use super::session::{Viewer, urlencode};
use crate::api::dlq::{Filter, list as api_list, show as api_show};
use crate::app::App;

/// Dead letters per page.
const PAGE: i64 = 100;

/// Query of the dead-letter page.
#[derive(Debug, Default, Deserialize)]
pub struct Params {
    pipeline_id: Option<String>,
    stage: Option<String>,
    reason: Option<String>,
    after: Option<i64>,
}

fn some(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// `GET /ui/dlq`.
pub async fn list(
    State(app): State<App>,
    Extension(viewer): Extension<Viewer>,
    Query(p): Query<Params>,
) -> Result<Html<String>, UiError> {
    let (pipeline_id, stage, reason) = (some(p.pipeline_id), some(p.stage), some(p.reason));
    let Json(v) = api_list(
        State(app.clone()),
        Query(Filter {
            pipeline_id: pipeline_id.clone(),
            stage: stage.clone(),
            reason: reason.clone(),
            limit: Some(PAGE),
            after: p.after,
            ..Filter::default()
        }),
    )
    .await?;
    let rows = v["dead_letters"].as_array().cloned().unwrap_or_default();
    let mut query = String::new();
    for (k, v) in [
        ("pipeline_id", &pipeline_id),
        ("stage", &stage),
        ("reason", &reason),
    ] {
        if let Some(v) = v {
            query.push_str(&format!("&{k}={}", urlencode(v)));
        }
    }
    let filtered = pipeline_id.is_some() || stage.is_some() || reason.is_some();
    let stages = app.stages();
    let body = html! {
        form method="get" action="/ui/dlq" class="filters" {
            label for="d-pipeline" { "Pipeline" }
            input id="d-pipeline" name="pipeline_id" value=(pipeline_id.clone().unwrap_or_default());
            label for="d-stage" { "Stage" }
            select id="d-stage" name="stage" {
                option value="" { "any" }
                @for s in &stages { option value=(s) selected[stage.as_deref() == Some(s.as_str())] { (s) } }
            }
            label for="d-reason" { "Reason" }
            select id="d-reason" name="reason" {
                option value="" { "any" }
                @for r in ["attempts_exhausted", "permanent_error", "decode_error", "unsupported_version", "poison"] {
                    option value=(r) selected[reason.as_deref() == Some(r)] { (r) }
                }
            }
            button type="submit" { "Filter" }
        }
        @if viewer.can_act && filtered {
            section class="actions" aria-label="Act on the selection" {
                @if pipeline_id.is_some() {
                    form method="post" action="/ui/dlq/replay" class="inline" {
                        (csrf(&viewer)) (hidden(&pipeline_id, &stage, &reason))
                        button type="submit" { "Replay the selection (dry run first)" }
                    }
                }
                form method="post" action="/ui/dlq/purge" class="inline" {
                    (csrf(&viewer)) (hidden(&pipeline_id, &stage, &reason))
                    button type="submit" class="danger" { "Purge the selection (dry run first)" }
                }
            }
        }
        @if rows.is_empty() { p { "No dead letters match." } } @else {
            table {
                caption { "Dead letters, newest first" }
                thead { tr {
                    th scope="col" { "Id" } th scope="col" { "Pipeline" } th scope="col" { "Item" }
                    th scope="col" { "Stage" } th scope="col" { "Reason" } th scope="col" { "Last error" }
                    th scope="col" { "Attempts" } th scope="col" { "When" } th scope="col" { "Replayed in" }
                } }
                tbody { @for d in &rows {
                    tr {
                        th scope="row" { a href={"/ui/dlq/" (d["id"])} { "#" (d["id"]) } }
                        td { @if let Some(p) = d["pipeline_id"].as_str() { a href={"/ui/pipelines/" (urlencode(p))} { (p) } } }
                        td { (d["item_id"].as_str().unwrap_or_default()) }
                        td { (d["stage"].as_str().unwrap_or_default()) }
                        td { (d["reason"].as_str().unwrap_or_default()) }
                        td class="reason" { (d["last_error_kind"].as_str().map(|k| format!("{k}: ")).unwrap_or_default()) (d["last_error"].as_str().unwrap_or_default()) }
                        td { (d["attempts"]) }
                        td { (when(d["at"].as_str().unwrap_or_default())) }
                        td { @if let Some(r) = d["replayed_in"].as_str() { a href={"/ui/pipelines/" (urlencode(r))} { (r) } } @else { "not replayed" } }
                    }
                } }
            }
        }
        @if let Some(next) = v["next"].as_i64() {
            p { a rel="next" href={"/ui/dlq?after=" (next) (query)} { "Older dead letters" } }
        }
    };
    Ok(page("Dead letters", Some(&viewer), body))
}

fn hidden(p: &Option<String>, s: &Option<String>, r: &Option<String>) -> maud::Markup {
    html! {
        @if let Some(v) = p { input type="hidden" name="pipeline_id" value=(v); }
        @if let Some(v) = s { input type="hidden" name="stage" value=(v); }
        @if let Some(v) = r { input type="hidden" name="reason" value=(v); }
    }
}

/// `GET /ui/dlq/{id}`.
pub async fn show(
    State(app): State<App>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<i64>,
) -> Result<Html<String>, UiError> {
    let Json(d) = api_show(State(app), Path(id.to_string())).await?;
    let headers = d["headers"].as_object().cloned().unwrap_or_default();
    let body_text = match &d["body"] {
        serde_json::Value::String(s) => s.clone(),
        v => serde_json::to_string_pretty(v).unwrap_or_default(),
    };
    let body = html! {
        dl class="facts" {
            @for k in ["pipeline_id", "item_id", "job_id", "stage", "reason", "last_error_kind", "last_error", "attempts", "worker_id", "replayed_in"] {
                dt { (k) } dd {
                    @match (k, &d[k]) {
                        ("pipeline_id" | "replayed_in", serde_json::Value::String(p)) => { a href={"/ui/pipelines/" (urlencode(p))} { (p) } }
                        (_, serde_json::Value::String(s)) => { (s) }
                        (_, serde_json::Value::Null) => { "none" }
                        (_, v) => { (v) }
                    }
                }
            }
            dt { "When" } dd { (when(d["at"].as_str().unwrap_or_default())) }
        }
        @if viewer.can_act {
            section class="actions" aria-label="Act on this dead letter" {
                form method="post" action="/ui/dlq/replay" class="inline" {
                    (csrf(&viewer)) input type="hidden" name="ids" value=(id);
                    button type="submit" { "Replay (dry run first)" }
                }
                form method="post" action="/ui/dlq/purge" class="inline" {
                    (csrf(&viewer)) input type="hidden" name="ids" value=(id);
                    button type="submit" class="danger" { "Purge (dry run first)" }
                }
            }
        }
        h2 { "Headers" }
        table {
            caption { "Headers of the dead-lettered message" }
            thead { tr { th scope="col" { "Header" } th scope="col" { "Value" } } }
            tbody { @for (k, v) in &headers {
                tr { th scope="row" { (k) } td { (v.as_str().map_or_else(|| v.to_string(), str::to_owned)) } }
            } }
        }
        h2 { "Body (" (d["body_encoding"].as_str().unwrap_or("utf8")) ")" }
        pre { code { (body_text) } }
    };
    Ok(page(&format!("Dead letter #{id}"), Some(&viewer), body))
}
