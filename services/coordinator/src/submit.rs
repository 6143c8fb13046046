//! Storing a planned pipeline: pipeline, items, first-stage jobs and their
//! outbox rows in one transaction, idempotently (same id and same body hash →
//! the existing pipeline; a different body → 409).

use axum::http::StatusCode;
use fleet_core::Destination;
use fleet_store::{Store, Tx, Value, params};

use crate::db::{insert_rows, log_event};
use crate::error::ApiError;
use crate::model::{ItemState, JobState, Millis, PipelineState, now_ms};
use crate::outbox::dest_parts;
pub use crate::plan::check_name;
use crate::plan::{NewItem, NewPipeline};

/// What a submission did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    /// A new pipeline was stored.
    Created,
    /// The same pipeline already existed, in this state.
    Existing(String),
}

fn conflict(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        format!("pipeline `{id}` already exists with a different body"),
        "resubmit the identical body to get the existing pipeline, or use a new pipeline_id / Idempotency-Key",
    )
}

async fn existing(store: &Store, p: &NewPipeline) -> Result<Option<Submitted>, ApiError> {
    let row = store
        .query_opt(
            "SELECT body_hash, state FROM coord_pipelines WHERE pipeline_id = $1",
            params![p.pipeline_id.as_str()],
        )
        .await?;
    match row {
        None => Ok(None),
        Some(r) => {
            let hash: String = r.get("body_hash")?;
            if hash == p.body_hash {
                Ok(Some(Submitted::Existing(r.get("state")?)))
            } else {
                Err(conflict(&p.pipeline_id))
            }
        }
    }
}

/// How an open pipeline is stored: the route its later items take and when it
/// times out unless sealed (or appended to) before.
#[derive(Debug, Clone)]
pub struct Open {
    /// The route of every item (appended items get it too).
    pub route: Vec<fleet_protocol::RouteStep>,
    /// When the pipeline times out if still unsealed.
    pub seal_by: Millis,
}

/// Stores `p` (or finds it), committing pipeline, items, jobs and outbox rows together.
pub async fn store_pipeline(store: &Store, p: &NewPipeline) -> Result<Submitted, ApiError> {
    store_with(store, p, None).await
}

/// Stores `p` as an open pipeline (its items, if any, are the first batch; more
/// follow through [`crate::append`]), or finds it.
pub async fn store_open_pipeline(
    store: &Store,
    p: &NewPipeline,
    open: &Open,
) -> Result<Submitted, ApiError> {
    store_with(store, p, Some(open)).await
}

async fn store_with(
    store: &Store,
    p: &NewPipeline,
    open: Option<&Open>,
) -> Result<Submitted, ApiError> {
    if let Some(found) = existing(store, p).await? {
        return Ok(found);
    }
    let now = now_ms();
    let mut tx = store.begin().await?;
    let stages = serde_json::to_string(&p.stages).map_err(ApiError::internal)?;
    let route = open
        .map(|o| serde_json::to_string(&o.route))
        .transpose()
        .map_err(ApiError::internal)?;
    let inserted = tx
        .execute(
            "INSERT INTO coord_pipelines (pipeline_id, state, body_hash, created_at, deadline_at, replay_of, stages, \
             sealed_at, seal_by, route) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (pipeline_id) DO NOTHING",
            params![
                p.pipeline_id.as_str(),
                PipelineState::Running.as_str(),
                p.body_hash.as_str(),
                now,
                p.deadline_at,
                p.replay_of.clone(),
                stages,
                open.is_none().then_some(now),
                open.map(|o| o.seal_by),
                route
            ],
        )
        .await?;
    if inserted == 0 {
        // A concurrent submission of the same id won the race; answer as it did.
        drop(tx);
        return existing(store, p)
            .await?
            .ok_or_else(|| ApiError::unavailable("the pipeline vanished during submission"));
    }
    insert_items(&mut tx, p, &p.items, now, now).await?;
    log_event(
        &mut tx,
        &p.pipeline_id,
        now,
        &serde_json::json!({"type": "submitted", "items": p.items.len(), "replay_of": p.replay_of, "open": open.is_some()}),
    )
    .await?;
    tx.commit().await?;
    metrics::counter!(crate::metrics::PIPELINES_SUBMITTED).increment(1);
    Ok(Submitted::Created)
}

/// The content hash of an item (its first job's payload): what makes re-sending
/// an item to an open pipeline a no-op and changing it a conflict.
pub fn item_hash(item: &NewItem) -> String {
    crate::plan::canonical_hash(&item.payload)
}

/// Inserts `items` of pipeline `p` with their first-stage jobs and the jobs'
/// outbox rows inside `tx` (the caller has checked none of them exists), stored at `now`;
/// the jobs carry the pipeline's `created_at`, which scopes its cancellations.
pub async fn insert_items(
    tx: &mut Tx,
    p: &NewPipeline,
    list: &[NewItem],
    now: Millis,
    created_at: Millis,
) -> Result<(), ApiError> {
    let mut items = Vec::with_capacity(list.len());
    let mut jobs = Vec::with_capacity(list.len());
    let mut outbox = Vec::with_capacity(list.len());
    for it in list {
        let route = serde_json::to_string(&it.route).map_err(ApiError::internal)?;
        items.push(vec![
            Value::from(p.pipeline_id.as_str()),
            Value::from(it.item_id.as_str()),
            Value::from(ItemState::Running.as_str()),
            Value::from(route),
            Value::from(now),
            Value::from(item_hash(it)),
        ]);
        // The pipeline's creation time scopes its cancellations (not the time of this batch).
        let job = p.first_job(it, created_at);
        jobs.push(vec![
            Value::from(job.job_id.as_str()),
            Value::from(p.pipeline_id.as_str()),
            Value::from(it.item_id.as_str()),
            Value::from(job.stage.as_str()),
            Value::from(job.required),
            Value::from(JobState::Queued.as_str()),
            Value::from(0),
            Value::from(0),
            Value::from(now),
            Value::Int(i64::try_from(job.timeout_ms).unwrap_or(i64::MAX)),
            Value::from(job.max_attempts),
        ]);
        let body = String::from_utf8(job.to_bytes()).map_err(ApiError::internal)?;
        let (kind, key) = dest_parts(&Destination::Job {
            stage: job.stage.clone(),
        });
        outbox.push(vec![
            Value::from(kind),
            Value::from(key),
            Value::from(job.job_id.as_str()),
            Value::from(body),
            Value::from(now),
        ]);
    }
    insert_rows(
        tx,
        "coord_outbox (dest_kind, dest_key, msg_id, body, created_at)",
        "",
        &outbox,
    )
    .await?;
    insert_rows(
        tx,
        "coord_items (pipeline_id, item_id, state, route, updated_at, item_hash)",
        "",
        &items,
    )
    .await?;
    insert_rows(
        tx,
        "coord_jobs (job_id, pipeline_id, item_id, stage, required, state, attempt, seq, queued_at, timeout_ms, max_attempts)",
        "",
        &jobs,
    )
    .await?;
    Ok(())
}
