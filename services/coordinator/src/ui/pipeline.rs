//! `GET /ui/pipelines/{id}`: per-stage progress (live over the API's SSE stream), the items
//! (paged, filterable), the timeline of events and stalls, the final report, and the cancel
//! and replay-dead-letters actions.

use std::collections::BTreeMap;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::response::Html;
use maud::{Markup, html};
use serde::Deserialize;

use super::error::UiError;
use super::layout::{csrf, page, stage_progress, stall_badges, state_badge, when};
use super::session::{Viewer, urlencode};
use crate::app::App;
use crate::db::Db;
use crate::error::ApiError;
use crate::report::{ItemFilter, PipelineReport, build, items, recent_events, rfc3339};

/// Items per page.
const PAGE: i64 = 100;
/// Timeline entries shown.
const TIMELINE: i64 = 100;

/// Query of the pipeline page: the item filter.
#[derive(Debug, Default, Deserialize)]
pub struct Params {
    state: Option<String>,
    outcome: Option<String>,
    failed_stage: Option<String>,
    reason: Option<String>,
    after: Option<String>,
}

fn some(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// `GET /ui/pipelines/{id}`.
pub async fn show(
    State(app): State<App>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
    Query(p): Query<Params>,
) -> Result<Html<String>, UiError> {
    let mut db = Db::Store(&app.store);
    let rep = build(&mut db, &id, false)
        .await?
        .ok_or_else(|| ApiError::not_found("pipeline", &id))?;
    let filter = ItemFilter {
        state: some(&p.state),
        outcome: some(&p.outcome),
        failed_stage: some(&p.failed_stage),
        reason: some(&p.reason),
        after: some(&p.after),
    };
    let mut page_items = items(&mut db, &id, &filter, Some(PAGE + 1)).await?;
    let more = page_items.len() as i64 > PAGE;
    page_items.truncate(PAGE as usize);
    let events = recent_events(&mut db, &id, TIMELINE).await?;
    let running = rep.state == "running";
    let stalls = rep.stalled.iter().fold(BTreeMap::new(), |mut m, s| {
        *m.entry(s.kind.clone()).or_insert(0usize) += 1;
        m
    });
    let mut next_q = format!(
        "?after={}",
        urlencode(page_items.last().map_or("", |i| &i.item_id))
    );
    for (k, v) in [
        ("state", &filter.state),
        ("outcome", &filter.outcome),
        ("failed_stage", &filter.failed_stage),
        ("reason", &filter.reason),
    ] {
        if let Some(v) = v {
            next_q.push_str(&format!("&{k}={}", urlencode(v)));
        }
    }
    let stages: Vec<&String> = rep.stages.keys().collect();
    let body = html! {
        div id="live" data-pipeline=(id) data-live=(running) {
            (summary(&rep, &stalls))
            section aria-labelledby="progress-h" {
                h2 id="progress-h" { "Progress by stage" }
                p aria-live="polite" { "Items done: " span data-items { (rep.items_terminal) "/" (rep.items_total) }
                    " · state " (state_badge(&rep.state)) }
                @for (stage, counts) in &rep.stages { (stage_progress(stage, counts)) }
            }
        }
        @if viewer.can_act { (actions(&viewer, &id, running)) }
        section aria-labelledby="items-h" {
            h2 id="items-h" { "Items" }
            form method="get" class="filters" {
                label for="f-state" { "State" }
                select id="f-state" name="state" {
                    option value="" { "any" }
                    @for s in ["running", "succeeded", "failed", "cancelled", "expired", "timed_out"] {
                        option value=(s) selected[filter.state.as_deref() == Some(s)] { (s) }
                    }
                }
                label for="f-outcome" { "Outcome" }
                input id="f-outcome" name="outcome" value=(filter.outcome.clone().unwrap_or_default());
                label for="f-stage" { "Failed stage" }
                select id="f-stage" name="failed_stage" {
                    option value="" { "any" }
                    @for s in &stages { option value=(s) selected[filter.failed_stage.as_deref() == Some(s.as_str())] { (s) } }
                }
                label for="f-reason" { "Reason contains" }
                input id="f-reason" name="reason" value=(filter.reason.clone().unwrap_or_default());
                button type="submit" { "Filter items" }
            }
            table id="items" {
                caption { "Items by id" @if filter.after.is_some() { ", continued" } }
                thead { tr { th scope="col" { "Item" } th scope="col" { "State" } th scope="col" { "Outcome" }
                    th scope="col" { "Failed stage" } th scope="col" { "Reason" } } }
                tbody {
                    @for i in &page_items {
                        tr {
                            th scope="row" { (i.item_id) }
                            td { (state_badge(&i.state)) }
                            td { (i.outcome.clone().unwrap_or_default()) }
                            td { (i.failed_stage.clone().unwrap_or_default()) }
                            td class="reason" { (i.reason.clone().or_else(|| i.degraded.clone()).unwrap_or_default()) }
                        }
                    }
                }
            }
            @if page_items.is_empty() { p { "No items match." } }
            @if more { p { a rel="next" href=(next_q) { "Next items" } } }
        }
        section aria-labelledby="timeline-h" {
            h2 id="timeline-h" { "Timeline" }
            table {
                caption { "Open stalls, then the newest " (TIMELINE) " events" }
                thead { tr { th scope="col" { "When" } th scope="col" { "What" } th scope="col" { "Job" } th scope="col" { "Details" } } }
                tbody {
                    @for s in &rep.stalled {
                        tr class="stall-row" {
                            td { @if let Some(t) = &s.since { (when(t)) } }
                            td { span class="badge stall" { "stalled: " (s.kind.replace('_', " ")) } }
                            td { (s.job_id) }
                            td { @if let Some(w) = &s.worker_id { "worker " (w) } }
                        }
                    }
                    @for (at, ev) in &events { (event_row(*at, ev)) }
                }
            }
        }
    };
    Ok(page(&format!("Pipeline {id}"), Some(&viewer), body))
}

fn summary(rep: &PipelineReport, stalls: &BTreeMap<String, usize>) -> Markup {
    html! {
        section aria-labelledby="report-h" {
            h2 id="report-h" { @if rep.state == "running" { "Status" } @else { "Final report" } }
            dl class="facts" {
                dt { "State" } dd { (state_badge(&rep.state)) }
                dt { "Created" } dd { (when(&rep.created_at)) }
                dt { "Deadline" } dd { @if let Some(d) = &rep.deadline_at { (when(d)) } @else { "none" } }
                @if let Some(f) = &rep.finalized_at { dt { "Finalized" } dd { (when(f)) } }
                @if let Some(r) = &rep.reason { dt { "Reason" } dd { (r) } }
                @if let Some(o) = &rep.replay_of {
                    dt { "Replay of" } dd { a href={"/ui/pipelines/" (urlencode(o))} { (o) } }
                }
                dt { "Items" } dd { (rep.items_total) " in all, " (rep.items_terminal) " finished, "
                    (rep.items_degraded) " degraded" }
                dt { "Stalls" } dd { @if stalls.is_empty() { "none" } @else { (stall_badges(stalls)) } }
            }
        }
    }
}

fn actions(viewer: &Viewer, id: &str, running: bool) -> Markup {
    html! {
        section aria-labelledby="actions-h" class="actions" {
            h2 id="actions-h" { "Actions" }
            @if running {
                form method="post" action={"/ui/pipelines/" (urlencode(id)) "/cancel"} class="inline" {
                    (csrf(viewer))
                    button type="submit" class="danger" { "Cancel this pipeline" }
                }
            }
            form method="post" action="/ui/dlq/replay" class="inline" {
                (csrf(viewer))
                input type="hidden" name="pipeline_id" value=(id);
                button type="submit" { "Replay its dead letters (dry run first)" }
            }
        }
    }
}

fn event_row(at: i64, ev: &serde_json::Value) -> Markup {
    let kind = match (ev["type"].as_str(), ev["event"].as_str()) {
        (Some("job"), Some(e)) => e.to_owned(),
        (Some(t), _) => t.to_owned(),
        _ => "event".to_owned(),
    };
    let mut rest = ev.clone();
    if let Some(m) = rest.as_object_mut() {
        for k in ["type", "event", "job_id", "pipeline_id", "at"] {
            m.remove(k);
        }
    }
    let mut details = rest.to_string();
    if details.len() > 300 {
        let mut cut = 300;
        while !details.is_char_boundary(cut) {
            cut -= 1;
        }
        details.truncate(cut);
        details.push('…');
    }
    html! {
        tr {
            td { (when(&rfc3339(at))) }
            td { (kind) }
            td { (ev["job_id"].as_str().unwrap_or_default()) }
            td class="details" { code { (details) } }
        }
    }
}
