//! The pipeline report: what `GET /v1/pipelines/{id}` returns, what the SSE
//! `final` event carries, and the body of the finalized-pipeline message.

use std::collections::BTreeMap;

use fleet_store::{StoreError, params};
use serde::Serialize;

use crate::db::Db;
use crate::model::{Millis, to_time};

/// A stalled job as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Stalled {
    /// The job.
    pub job_id: String,
    /// Its stage.
    pub stage: String,
    /// `worker_lost`, `no_progress`, `no_consumer` or `overdue`.
    pub kind: String,
    /// Since when (RFC 3339).
    pub since: Option<String>,
    /// The worker that ran it last, if any.
    pub worker_id: Option<String>,
}

/// One item's outcome.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ItemReport {
    /// The item.
    pub item_id: String,
    /// `running`, `succeeded`, `failed`, `cancelled`, `expired`, `timed_out`.
    pub state: String,
    /// How it ended (`completed`, `completed_with_skips`, `dead_lettered`, …).
    pub outcome: Option<String>,
    /// The stage that ended it, when it did not succeed.
    pub failed_stage: Option<String>,
    /// Why, for people.
    pub reason: Option<String>,
    /// When it succeeded with less than the full result: why, in words (e.g. `analyzers
    /// sleeper, exit1 failed + summary by fallback extractive + skipped summarize`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
}

/// The full report of one pipeline.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PipelineReport {
    /// Its id.
    pub pipeline_id: String,
    /// Its state.
    pub state: String,
    /// Creation time.
    pub created_at: String,
    /// Finalization time.
    pub finalized_at: Option<String>,
    /// Deadline.
    pub deadline_at: Option<String>,
    /// Finalization reason.
    pub reason: Option<String>,
    /// The pipeline it replays.
    pub replay_of: Option<String>,
    /// Items in all.
    pub items_total: i64,
    /// Items in a terminal state.
    pub items_terminal: i64,
    /// Items that succeeded degraded (analyzers failed, summary by fallback, optional stage
    /// skipped).
    pub items_degraded: i64,
    /// Job counts by stage and job state.
    pub stages: BTreeMap<String, BTreeMap<String, i64>>,
    /// Stalled jobs.
    pub stalled: Vec<Stalled>,
    /// Per-item outcomes.
    pub items: Vec<ItemReport>,
}

/// RFC 3339 of a store time.
pub fn rfc3339(ms: Millis) -> String {
    to_time(ms).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Job counts by stage and state for one pipeline.
pub async fn stage_counts(
    db: &mut Db<'_>,
    pipeline_id: &str,
) -> Result<BTreeMap<String, BTreeMap<String, i64>>, StoreError> {
    let rows = db
        .query(
            "SELECT stage, state, COUNT(*) AS n FROM coord_jobs WHERE pipeline_id = $1 GROUP BY stage, state",
            params![pipeline_id],
        )
        .await?;
    let mut out: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    for r in rows {
        out.entry(r.get("stage")?)
            .or_default()
            .insert(r.get("state")?, r.get("n")?);
    }
    Ok(out)
}

/// `(items_total, items_terminal)` of one pipeline.
pub async fn item_counts(db: &mut Db<'_>, pipeline_id: &str) -> Result<(i64, i64), StoreError> {
    let row = db
        .query_opt(
            "SELECT COUNT(*) AS total, CAST(COALESCE(SUM(CASE WHEN state <> 'running' THEN 1 ELSE 0 END), 0) AS BIGINT) AS terminal \
             FROM coord_items WHERE pipeline_id = $1",
            params![pipeline_id],
        )
        .await?;
    match row {
        Some(r) => Ok((r.get("total")?, r.get("terminal")?)),
        None => Ok((0, 0)),
    }
}

/// Items of `pipeline_id` that succeeded degraded: how many, and up to `max_notes` distinct
/// notes with their item counts, most frequent first.
pub async fn degraded_items(
    db: &mut Db<'_>,
    pipeline_id: &str,
    max_notes: usize,
) -> Result<(i64, Vec<(String, i64)>), StoreError> {
    let rows = db
        .query(
            "SELECT degraded, COUNT(*) AS n FROM coord_items \
             WHERE pipeline_id = $1 AND state = 'succeeded' AND degraded IS NOT NULL \
             GROUP BY degraded ORDER BY COUNT(*) DESC, degraded",
            params![pipeline_id],
        )
        .await?;
    let mut total = 0;
    let mut notes = Vec::new();
    for r in rows {
        let n: i64 = r.get("n")?;
        total += n;
        if notes.len() < max_notes {
            notes.push((r.get("degraded")?, n));
        }
    }
    Ok((total, notes))
}

/// Which items of a pipeline to list: every `Some` field must match (`reason`: contains).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ItemFilter {
    /// Item state.
    pub state: Option<String>,
    /// Item outcome.
    pub outcome: Option<String>,
    /// The stage that ended it.
    pub failed_stage: Option<String>,
    /// Text the reason contains.
    pub reason: Option<String>,
    /// Only item ids after this one (paging).
    pub after: Option<String>,
}

/// Items of `pipeline_id` matching `f`, by item id, at most `limit` of them (all without one).
pub async fn items(
    db: &mut Db<'_>,
    pipeline_id: &str,
    f: &ItemFilter,
    limit: Option<i64>,
) -> Result<Vec<ItemReport>, StoreError> {
    let mut sql = String::from(
        "SELECT item_id, state, outcome, failed_stage, reason, degraded FROM coord_items \
         WHERE pipeline_id = $1",
    );
    let mut args: Vec<fleet_store::Value> = vec![pipeline_id.into()];
    for (col, v) in [
        ("state", &f.state),
        ("outcome", &f.outcome),
        ("failed_stage", &f.failed_stage),
    ] {
        if let Some(v) = v {
            args.push(v.as_str().into());
            sql.push_str(&format!(" AND {col} = ${}", args.len()));
        }
    }
    if let Some(r) = &f.reason {
        // Escaped, so `%` and `_` in the search text match themselves.
        let pattern = r
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        args.push(format!("%{pattern}%").into());
        sql.push_str(&format!(" AND reason LIKE ${} ESCAPE '\\'", args.len()));
    }
    if let Some(a) = &f.after {
        args.push(a.as_str().into());
        sql.push_str(&format!(" AND item_id > ${}", args.len()));
    }
    sql.push_str(" ORDER BY item_id");
    if let Some(l) = limit {
        args.push(l.into());
        sql.push_str(&format!(" LIMIT ${}", args.len()));
    }
    db.query(&sql, &args)
        .await?
        .into_iter()
        .map(|r| {
            Ok(ItemReport {
                item_id: r.get("item_id")?,
                state: r.get("state")?,
                outcome: r.get("outcome")?,
                failed_stage: r.get("failed_stage")?,
                reason: r.get("reason")?,
                degraded: r.get("degraded")?,
            })
        })
        .collect()
}

/// The newest `limit` entries of a pipeline's event log (what SSE streams serve), newest first,
/// as `(time, body)`.
pub async fn recent_events(
    db: &mut Db<'_>,
    pipeline_id: &str,
    limit: i64,
) -> Result<Vec<(Millis, serde_json::Value)>, StoreError> {
    db.query(
        "SELECT at, body FROM coord_events WHERE pipeline_id = $1 ORDER BY id DESC LIMIT $2",
        params![pipeline_id, limit],
    )
    .await?
    .into_iter()
    .map(|r| Ok((r.get("at")?, r.get("body")?)))
    .collect()
}

/// Builds the report of `pipeline_id`, or `None` if there is no such pipeline.
pub async fn build(
    db: &mut Db<'_>,
    pipeline_id: &str,
    with_items: bool,
) -> Result<Option<PipelineReport>, StoreError> {
    let Some(p) = db
        .query_opt(
            "SELECT pipeline_id, state, created_at, finalized_at, deadline_at, reason, replay_of \
             FROM coord_pipelines WHERE pipeline_id = $1",
            params![pipeline_id],
        )
        .await?
    else {
        return Ok(None);
    };
    let (items_total, items_terminal) = item_counts(db, pipeline_id).await?;
    let stages = stage_counts(db, pipeline_id).await?;
    let (items_degraded, _) = degraded_items(db, pipeline_id, 0).await?;
    let stalled = db
        .query(
            "SELECT job_id, stage, stall_kind, stall_since, worker_id FROM coord_jobs \
             WHERE pipeline_id = $1 AND stall_kind IS NOT NULL ORDER BY job_id LIMIT 1000",
            params![pipeline_id],
        )
        .await?
        .into_iter()
        .map(|r| {
            Ok(Stalled {
                job_id: r.get("job_id")?,
                stage: r.get("stage")?,
                kind: r.get("stall_kind")?,
                since: r.get::<Option<i64>>("stall_since")?.map(rfc3339),
                worker_id: r.get("worker_id")?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let items = if with_items {
        items(db, pipeline_id, &ItemFilter::default(), None).await?
    } else {
        Vec::new()
    };
    Ok(Some(PipelineReport {
        pipeline_id: p.get("pipeline_id")?,
        state: p.get("state")?,
        created_at: rfc3339(p.get("created_at")?),
        finalized_at: p.get::<Option<i64>>("finalized_at")?.map(rfc3339),
        deadline_at: p.get::<Option<i64>>("deadline_at")?.map(rfc3339),
        reason: p.get("reason")?,
        replay_of: p.get("replay_of")?,
        items_total,
        items_terminal,
        items_degraded,
        stages,
        stalled,
        items,
    }))
}
