//! Open pipelines: items appended in batches, then a seal (so a pipeline is not
//! limited by one request body).
//!
//! Guarantees, kept deliberately small:
//! * each batch is one transaction that writes its new items with their
//!   first-stage jobs and outbox rows, so jobs start as items arrive (a
//!   16 MB upload need not wait for its last batch, and nothing is held in
//!   memory between requests);
//! * appends are idempotent per `item_id`: the same content again is a no-op,
//!   other content is a 409, so a client re-sends any batch safely;
//! * only a sealed pipeline is finalized by its items (the sweeper checks
//!   `sealed_at`); an unsealed one still times out at its deadline, and at
//!   `seal_by` (pushed forward by each append) when its client went away.

use axum::http::StatusCode;
use fleet_protocol::{RouteStep, StageLimits, SubmitItem};
use fleet_store::{Store, Tx, Value, params};
use std::collections::{BTreeMap, HashMap};

use crate::db::{for_update, log_event};
use crate::error::ApiError;
use crate::model::{Millis, PipelineState, now_ms};
use crate::plan::{NewPipeline, plan_items};
use crate::submit::{insert_items, item_hash};

/// Item ids looked up per query (well below both backends' parameter limits).
const IDS_PER_QUERY: usize = 200;

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Items stored by this request.
    pub accepted: usize,
    /// Items that were already there with the same content.
    pub existing: usize,
    /// Whether the pipeline is sealed.
    pub sealed: bool,
}

/// The stored facts of a pipeline an append or seal needs.
struct Head {
    state: String,
    sealed: bool,
    route: Vec<RouteStep>,
    stages: BTreeMap<String, StageLimits>,
    deadline_at: Option<Millis>,
    /// When the pipeline was created: its jobs carry it to scope cancellations.
    created_at: Millis,
}

async fn lock_head(tx: &mut Tx, id: &str) -> Result<Head, ApiError> {
    let sql = format!(
        "SELECT state, sealed_at, route, stages, deadline_at, created_at FROM coord_pipelines WHERE pipeline_id = $1{}",
        for_update(tx)
    );
    let row = tx
        .query_opt(&sql, params![id])
        .await?
        .ok_or_else(|| ApiError::not_found("pipeline", id))?;
    let route: Option<serde_json::Value> = row.get("route")?;
    Ok(Head {
        state: row.get("state")?,
        sealed: row.get::<Option<i64>>("sealed_at")?.is_some(),
        route: route
            .and_then(|r| serde_json::from_value(r).ok())
            .unwrap_or_default(),
        stages: serde_json::from_value(row.get::<serde_json::Value>("stages")?).unwrap_or_default(),
        deadline_at: row.get("deadline_at")?,
        created_at: row.get("created_at")?,
    })
}

/// The stored content hashes of those of `ids` that `pipeline_id` already holds.
async fn stored_hashes(
    tx: &mut Tx,
    pipeline_id: &str,
    ids: &[&str],
) -> Result<HashMap<String, Option<String>>, ApiError> {
    let mut out = HashMap::new();
    for chunk in ids.chunks(IDS_PER_QUERY) {
        let mut args: Vec<Value> = vec![Value::from(pipeline_id)];
        let marks: Vec<String> = chunk
            .iter()
            .map(|id| {
                args.push(Value::from(*id));
                format!("${}", args.len())
            })
            .collect();
        let sql = format!(
            "SELECT item_id, item_hash FROM coord_items WHERE pipeline_id = $1 AND item_id IN ({})",
            marks.join(", ")
        );
        for r in tx.query(&sql, &args).await? {
            out.insert(r.get("item_id")?, r.get("item_hash")?);
        }
    }
    Ok(out)
}

/// Appends `list` to the open pipeline `pipeline_id`; `open_timeout_ms` moves its
/// `seal_by` forward. Items already present with the same content are skipped.
pub async fn append_items(
    store: &Store,
    pipeline_id: &str,
    list: &[SubmitItem],
    max_item_bytes: usize,
    open_timeout_ms: i64,
) -> Result<Appended, ApiError> {
    let now = now_ms();
    let mut tx = store.begin().await?;
    let head = lock_head(&mut tx, pipeline_id).await?;
    if head.route.is_empty() {
        // A pipeline submitted whole has no stored route: it never takes more items.
        return Err(closed(pipeline_id, &head, "it was submitted whole"));
    }
    let planned = plan_items(list, &head.route, max_item_bytes)?;
    let ids: Vec<&str> = planned.iter().map(|i| i.item_id.as_str()).collect();
    let stored = stored_hashes(&mut tx, pipeline_id, &ids).await?;
    let total = ids.len();
    let mut fresh = Vec::new();
    for item in planned {
        match stored.get(&item.item_id) {
            None => fresh.push(item),
            Some(Some(h)) if *h != item_hash(&item) => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!(
                        "item `{}` of pipeline `{pipeline_id}` already exists with other content",
                        item.item_id
                    ),
                    "re-send the identical item (a no-op), or give changed content a new item_id or a new pipeline",
                ));
            }
            Some(_) => {}
        }
    }
    let existing = total - fresh.len();
    if !fresh.is_empty() {
        if head.sealed || head.state != PipelineState::Running.as_str() {
            let why = if head.sealed {
                "it is sealed".to_owned()
            } else {
                format!("it is already {}", head.state)
            };
            return Err(closed(pipeline_id, &head, &why));
        }
        let p = NewPipeline {
            pipeline_id: pipeline_id.to_owned(),
            body_hash: String::new(),
            deadline_at: head.deadline_at,
            replay_of: None,
            stages: head.stages.clone(),
            items: Vec::new(),
        };
        insert_items(&mut tx, &p, &fresh, now, head.created_at).await?;
        tx.execute(
            "UPDATE coord_pipelines SET seal_by = $2 WHERE pipeline_id = $1",
            params![pipeline_id, now.saturating_add(open_timeout_ms)],
        )
        .await?;
        log_event(
            &mut tx,
            pipeline_id,
            now,
            &serde_json::json!({"type": "items_appended", "items": fresh.len()}),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(Appended {
        accepted: fresh.len(),
        existing,
        sealed: head.sealed,
    })
}

fn closed(pipeline_id: &str, head: &Head, why: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        format!(
            "pipeline `{pipeline_id}` takes no new items: {why} (state {})",
            head.state
        ),
        "create an open pipeline ({\"open\": true}) under a new pipeline_id and append to that",
    )
}

/// What a seal did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Items in the pipeline.
    pub items: i64,
    /// False when it was sealed already.
    pub newly: bool,
    /// Its state after the seal (it may finalize at once).
    pub state: String,
}

/// Seals `pipeline_id`: its item list is complete, so it finalizes when they
/// are. Idempotent; `expected` (the client's count) must match what is stored.
pub async fn seal(
    store: &Store,
    pipeline_id: &str,
    expected: Option<u64>,
    grace_ms: i64,
) -> Result<Sealed, ApiError> {
    let now = now_ms();
    let mut tx = store.begin().await?;
    let head = lock_head(&mut tx, pipeline_id).await?;
    let items: i64 = tx
        .query_one(
            "SELECT COUNT(*) AS n FROM coord_items WHERE pipeline_id = $1",
            params![pipeline_id],
        )
        .await?
        .get("n")?;
    if let Some(want) = expected
        && u64::try_from(items).ok() != Some(want)
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("pipeline `{pipeline_id}` holds {items} items, the seal expects {want}"),
            "append the missing batches again (re-sending items is a no-op), then seal",
        ));
    }
    if head.sealed {
        return Ok(Sealed {
            items,
            newly: false,
            state: head.state,
        });
    }
    if head.state != PipelineState::Running.as_str() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "pipeline `{pipeline_id}` ended {} before it was sealed",
                head.state
            ),
            "see GET /v1/pipelines/{id} for why; submit again under a new pipeline_id",
        ));
    }
    if items == 0 {
        return Err(ApiError::bad_request(
            format!("pipeline `{pipeline_id}` has no items to seal"),
            "append items with POST /v1/pipelines/{id}/items first",
        ));
    }
    tx.execute(
        "UPDATE coord_pipelines SET sealed_at = $2 WHERE pipeline_id = $1 AND sealed_at IS NULL",
        params![pipeline_id, now],
    )
    .await?;
    log_event(
        &mut tx,
        pipeline_id,
        now,
        &serde_json::json!({"type": "sealed", "items": items}),
    )
    .await?;
    // Its items may all be terminal already: finalize now rather than on the next tick.
    let finalized = crate::sweeper::finalize_one(&mut tx, pipeline_id, now, grace_ms).await?;
    tx.commit().await?;
    Ok(Sealed {
        items,
        newly: true,
        state: finalized.map_or(head.state, |s| s.as_str().to_owned()),
    })
}
