//! `POST /v1/pipelines`, `GET /v1/pipelines`, `GET /v1/pipelines/{id}`,
//! `POST /v1/pipelines/{id}/cancel`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use fleet_core::Destination;
use fleet_protocol::{Submission, control};
use fleet_store::{Value, params};
use serde::Deserialize;
use serde_json::json;

use crate::app::App;
use crate::db::{Db, for_update, log_event};
use crate::error::ApiError;
use crate::model::{PipelineState, now_ms, to_time};
use crate::outbox::enqueue;
use crate::plan::plan;
use crate::report::{build, rfc3339};
use crate::submit::{Submitted, store_pipeline};
use crate::sweeper::finalize_one;

/// Largest page of `GET /v1/pipelines`.
const MAX_PAGE: i64 = 500;

/// `POST /v1/pipelines`.
pub async fn create(
    State(app): State<App>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let body = body.map_err(|e| super::body_error(&e, app.config.max_body_bytes))?;
    let sub: Submission = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            format!("the body is not a valid submission: {e}"),
            "send {\"v\": 1, \"items\": [{\"item_id\": \"a\", \"text\": \"...\"}]}; see GET /v1/openapi.yaml",
        )
    })?;
    let key = headers
        .get("idempotency-key")
        .map(|v| {
            v.to_str().map(str::to_owned).map_err(|_| {
                ApiError::bad_request(
                    "the Idempotency-Key header is not text",
                    "use letters, digits, - and _",
                )
            })
        })
        .transpose()?;
    if sub.open {
        return super::open::create_open(&app, &sub, key.as_deref()).await;
    }
    let planned = plan(&sub, key.as_deref(), &app.limits)?;
    let outcome = store_pipeline(&app.store, &planned).await?;
    app.relay.notify_one();
    Ok(match outcome {
        Submitted::Created => (
            StatusCode::CREATED,
            Json(json!({"pipeline_id": planned.pipeline_id, "state": "running", "created": true})),
        ),
        Submitted::Existing(state) => (
            StatusCode::OK,
            Json(json!({"pipeline_id": planned.pipeline_id, "state": state, "created": false})),
        ),
    })
}

/// `GET /v1/pipelines/{id}`.
pub async fn show(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<crate::report::PipelineReport>, ApiError> {
    build(&mut Db::Store(&app.store), &id, true)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("pipeline", &id))
}

/// Query of `GET /v1/pipelines`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    pub(crate) state: Option<String>,
    pub(crate) limit: Option<i64>,
    pub(crate) after: Option<String>,
}

/// `GET /v1/pipelines?state=&limit=&after=`: newest first; `next` is the cursor of the next page.
pub async fn list(
    State(app): State<App>,
    Query(q): Query<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = q.limit.unwrap_or(50).clamp(1, MAX_PAGE);
    let mut sql = String::from(
        "SELECT p.pipeline_id, p.state, p.created_at, p.finalized_at, \
         (SELECT COUNT(*) FROM coord_items i WHERE i.pipeline_id = p.pipeline_id) AS items_total, \
         (SELECT COUNT(*) FROM coord_items i WHERE i.pipeline_id = p.pipeline_id AND i.state <> 'running') AS items_terminal \
         FROM coord_pipelines p WHERE 1 = 1",
    );
    let mut args: Vec<Value> = Vec::new();
    if let Some(state) = q.state.as_deref().filter(|s| !s.is_empty()) {
        if PipelineState::parse(state).is_none() {
            return Err(ApiError::bad_request(
                format!("unknown state `{state}`"),
                "use running, completed, partial_success, failed, cancelled or timed_out",
            ));
        }
        args.push(state.into());
        sql.push_str(&format!(" AND p.state = ${}", args.len()));
    }
    if let Some(after) = q.after.as_deref().filter(|s| !s.is_empty()) {
        let (ms, id) = after
            .split_once('.')
            .and_then(|(ms, id)| Some((ms.parse::<i64>().ok()?, id)))
            .ok_or_else(|| {
                ApiError::bad_request(
                    format!("bad cursor `{after}`"),
                    "pass the `next` value of the previous page",
                )
            })?;
        args.push(ms.into());
        let a = args.len();
        args.push(id.into());
        let b = args.len();
        sql.push_str(&format!(
            " AND (p.created_at < ${a} OR (p.created_at = ${a} AND p.pipeline_id < ${b}))"
        ));
    }
    args.push((limit + 1).into());
    sql.push_str(&format!(
        " ORDER BY p.created_at DESC, p.pipeline_id DESC LIMIT ${}",
        args.len()
    ));
    let rows = app.store.query(&sql, &args).await?;
    let mut out = Vec::new();
    let mut next = None;
    for (i, r) in rows.iter().enumerate() {
        let created: i64 = r.get("created_at")?;
        let id: String = r.get("pipeline_id")?;
        if i as i64 == limit {
            break;
        }
        if i as i64 == limit - 1 && rows.len() as i64 > limit {
            next = Some(format!("{created}.{id}"));
        }
        out.push(json!({
            "pipeline_id": id,
            "state": r.get::<String>("state")?,
            "created_at": rfc3339(created),
            "finalized_at": r.get::<Option<i64>>("finalized_at")?.map(rfc3339),
            "items_total": r.get::<i64>("items_total")?,
            "items_terminal": r.get::<i64>("items_terminal")?,
        }));
    }
    Ok(Json(json!({"pipelines": out, "next": next})))
}

/// `POST /v1/pipelines/{id}/cancel`: records the cancellation, drops queued jobs,
/// broadcasts it (outbox → control) and finalizes the pipeline `cancelled`.
pub async fn cancel(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let now = now_ms();
    let mut tx = app.store.begin().await?;
    let sql = format!(
        "SELECT state, created_at FROM coord_pipelines WHERE pipeline_id = $1{}",
        for_update(&tx)
    );
    let Some(row) = tx.query_opt(&sql, params![id.as_str()]).await? else {
        return Err(ApiError::not_found("pipeline", &id));
    };
    let state: String = row.get("state")?;
    let created_at: i64 = row.get("created_at")?;
    if state == PipelineState::Cancelled.as_str() {
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({"pipeline_id": id, "state": state})),
        ));
    }
    if state != PipelineState::Running.as_str() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("pipeline `{id}` is already final: {state}"),
            "a finalized pipeline cannot be cancelled; see GET /v1/pipelines/{id} for its report",
        ));
    }
    tx.execute(
        "UPDATE coord_pipelines SET cancel_requested_at = $2 WHERE pipeline_id = $1 AND cancel_requested_at IS NULL",
        params![id.as_str(), now],
    )
    .await?;
    tx.execute(
        "UPDATE coord_jobs SET state = 'cancelled' WHERE pipeline_id = $1 AND state = 'queued'",
        params![id.as_str()],
    )
    .await?;
    crate::outbox::drop_cancelled_jobs(&mut tx, &id, now).await?;
    enqueue(
        &mut tx,
        &Destination::Control {
            pipeline_id: id.clone(),
        },
        Some(&format!("{id}/{created_at}/cancel")),
        &String::from_utf8_lossy(&control::cancellation(&id, Some(to_time(created_at)))),
        now,
    )
    .await?;
    log_event(&mut tx, &id, now, &json!({"type": "cancel_requested"})).await?;
    let grace = i64::try_from(app.config.deadline_grace.as_millis()).unwrap_or(i64::MAX);
    let finalized = finalize_one(&mut tx, &id, now, grace).await?;
    tx.commit().await?;
    app.relay.notify_one();
    let state = finalized.map_or("running", PipelineState::as_str);
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"pipeline_id": id, "state": state})),
    ))
}
