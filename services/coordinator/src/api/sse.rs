//! `GET /v1/pipelines/{id}/events`: Server-Sent Events read from the store's
//! event log, so any replica serves any pipeline. `progress` events carry new
//! job events and per-stage counts; `final` carries the report, then the
//! stream ends.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use fleet_store::params;
use futures::Stream;
use serde_json::json;

use crate::app::App;
use crate::db::Db;
use crate::error::ApiError;
use crate::report::{build, item_counts, stage_counts};

/// How often the stream polls the store.
const POLL: Duration = Duration::from_millis(500);
/// Events per `progress` message at most.
const PAGE: i64 = 500;

struct Cursor {
    app: App,
    id: String,
    last: i64,
    done: bool,
    first: bool,
}

async fn next_event(c: &mut Cursor) -> Result<Option<Event>, ApiError> {
    loop {
        if c.done {
            return Ok(None);
        }
        let mut db = Db::Store(&c.app.store);
        let rows = db
            .query(
                "SELECT id, body FROM coord_events WHERE pipeline_id = $1 AND id > $2 ORDER BY id LIMIT $3",
                params![c.id.as_str(), c.last, PAGE],
            )
            .await?;
        let state: Option<String> = db
            .query_opt(
                "SELECT state FROM coord_pipelines WHERE pipeline_id = $1",
                params![c.id.as_str()],
            )
            .await?
            .map(|r| r.get("state"))
            .transpose()?;
        let Some(state) = state else {
            return Ok(None);
        };
        if !rows.is_empty() || c.first {
            c.first = false;
            let mut events = Vec::with_capacity(rows.len());
            for r in &rows {
                c.last = r.get("id")?;
                events.push(r.get::<serde_json::Value>("body")?);
            }
            let stages = stage_counts(&mut db, &c.id).await?;
            let (total, terminal) = item_counts(&mut db, &c.id).await?;
            let data = json!({
                "pipeline_id": c.id, "state": state, "items_total": total,
                "items_terminal": terminal, "stages": stages, "events": events,
            });
            return Ok(Some(
                Event::default().event("progress").data(data.to_string()),
            ));
        }
        if state != "running" {
            c.done = true;
            let report = build(&mut db, &c.id, true).await?;
            let data = serde_json::to_string(&report).unwrap_or_default();
            return Ok(Some(Event::default().event("final").data(data)));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `GET /v1/pipelines/{id}/events`.
pub async fn events(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let exists = app
        .store
        .query_opt(
            "SELECT 1 AS one FROM coord_pipelines WHERE pipeline_id = $1",
            params![id.as_str()],
        )
        .await?;
    if exists.is_none() {
        return Err(ApiError::not_found("pipeline", &id));
    }
    let cursor = Cursor {
        app,
        id,
        last: 0,
        done: false,
        first: true,
    };
    let stream = futures::stream::unfold(cursor, |mut c| async move {
        match next_event(&mut c).await {
            Ok(Some(e)) => Some((Ok(e), c)),
            Ok(None) => None,
            Err(e) => {
                // Tell the client, then end: it reconnects and resumes from the store.
                c.done = true;
                let data = json!({"error": e.message, "hint": e.hint}).to_string();
                Some((Ok(Event::default().event("error").data(data)), c))
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
