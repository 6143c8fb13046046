//! Event ingestion: applies job events (and dead letters from the archive) to
//! the store through the state machine, keeps items in step with their jobs,
//! records heartbeats, and appends to the event log that SSE streams serve.
//!
//! Locking (PostgreSQL): an event takes its pipeline row `FOR SHARE` (so the
//! sweeper's finalizing `UPDATE` waits for it, and a result after finalization
//! is seen as `late`), then its item row `FOR UPDATE` (so two replicas never
//! derive an item from stale jobs). All events of a transaction (every batch of
//! a fetch) are applied sorted by pipeline, then item, so every transaction takes
//! pipeline locks in ascending id and item locks in one order, as the sweeper
//! does (see `sweeper`): no lock cycle, no deadlock. Heartbeats come after all
//! events, by worker id.

use std::collections::{BTreeMap, HashMap};

use fleet_protocol::{Degradation, Event, EventBatch, EventKind, Heartbeat, RouteStep};
use fleet_store::{StoreError, Tx, Value, params};

use crate::db::{for_share, for_update, insert_rows, log_event};
use crate::item::{JobFact, derive};
use crate::model::{JobState, Millis, PipelineState, to_millis};
use crate::plan::StageLimits;
use crate::transition::{Decision, JobSnapshot, decide, target_state};

/// Defaults the ingestion needs.
#[derive(Debug, Clone, Copy)]
pub struct IngestCtx {
    /// Workers' heartbeat interval in ms.
    pub heartbeat_ms: i64,
    /// Timeout for a job row created from an event when the pipeline names none.
    pub default_timeout_ms: i64,
    /// Attempts for such a row.
    pub default_max_attempts: i64,
}

/// One change to a job, from an event or from the dead-letter archive.
#[derive(Debug, Clone)]
pub struct JobUpdate {
    /// The job.
    pub job_id: String,
    /// Its pipeline.
    pub pipeline_id: String,
    /// Its stage.
    pub stage: String,
    /// Attempt of the event.
    pub attempt: u32,
    /// Sequence within the attempt.
    pub seq: u32,
    /// Worker that sent it, if known.
    pub worker_id: Option<String>,
    /// When it happened.
    pub at: Millis,
    /// State the event leads to.
    pub target: JobState,
    /// Dead-letter reason.
    pub dl_reason: Option<String>,
    /// Error text.
    pub error: Option<String>,
    /// The degradation note of a `succeeded` event (JSON of a bounded [`Degradation`]).
    pub degraded: Option<String>,
    /// What goes to the event log.
    pub log: serde_json::Value,
}

/// What became of one update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The job (and maybe its item) changed.
    Changed(Decision),
    /// Recorded without a state change (superseded, late, duplicate, stale).
    Unchanged(Decision),
    /// The pipeline is final: recorded `late`.
    Late,
    /// Unknown pipeline or item: ignored.
    Unknown,
}

/// The item id inside `job_id` = `{pipeline_id}/{item_id}/{stage}`.
pub fn item_of(job_id: &str, pipeline_id: &str, stage: &str) -> Option<String> {
    let rest = job_id.strip_prefix(pipeline_id)?.strip_prefix('/')?;
    let item = rest.strip_suffix(stage)?.strip_suffix('/')?;
    (!item.is_empty()).then(|| item.to_owned())
}

impl JobUpdate {
    /// The update an event stands for.
    pub fn from_event(e: &Event) -> JobUpdate {
        let (dl_reason, error) = match &e.kind {
            EventKind::DeadLettered { reason, error } => {
                (Some(reason.as_str().to_owned()), Some(error.clone()))
            }
            EventKind::Retrying { error, .. } => (None, Some(error.clone())),
            _ => (None, None),
        };
        let degraded = match e.kind {
            EventKind::Succeeded => e
                .degraded
                .clone()
                .and_then(|d| serde_json::to_string(&d.bounded()).ok()),
            _ => None,
        };
        let mut log = serde_json::to_value(e).unwrap_or_default();
        if let serde_json::Value::Object(m) = &mut log {
            m.insert(
                "item_id".into(),
                item_of(&e.job_id, &e.pipeline_id, &e.stage).into(),
            );
            let kind = m.remove("type").unwrap_or_default();
            m.insert("event".into(), kind);
            m.insert("type".into(), "job".into());
        }
        JobUpdate {
            job_id: e.job_id.clone(),
            pipeline_id: e.pipeline_id.clone(),
            stage: e.stage.clone(),
            attempt: e.attempt,
            seq: e.seq,
            worker_id: Some(e.worker_id.clone()),
            at: to_millis(e.at),
            target: target_state(&e.kind),
            dl_reason,
            error,
            degraded,
            log,
        }
    }
}

/// Applies a whole batch inside `tx` (see [`apply_batches`]).
pub async fn apply_batch(
    tx: &mut Tx,
    batch: &EventBatch,
    ctx: &IngestCtx,
    now: Millis,
) -> Result<Vec<Applied>, StoreError> {
    apply_batches(tx, &[batch], ctx, now).await
}

/// Applies several batches inside one `tx`: all their events sorted by pipeline, item, job and
/// `(attempt, seq)` (the lock order), then their heartbeats by worker id.
pub async fn apply_batches(
    tx: &mut Tx,
    batches: &[&EventBatch],
    ctx: &IngestCtx,
    now: Millis,
) -> Result<Vec<Applied>, StoreError> {
    let mut updates: Vec<(Option<String>, JobUpdate)> = batches
        .iter()
        .flat_map(|b| b.events.iter())
        .map(|e| {
            let u = JobUpdate::from_event(e);
            (item_of(&u.job_id, &u.pipeline_id, &u.stage), u)
        })
        .collect();
    updates.sort_by(|(ia, a), (ib, b)| {
        (&a.pipeline_id, ia, &a.job_id, a.attempt, a.seq).cmp(&(
            &b.pipeline_id,
            ib,
            &b.job_id,
            b.attempt,
            b.seq,
        ))
    });
    let mut out = Vec::with_capacity(updates.len());
    for (_, u) in &updates {
        out.push(apply_update(tx, u, ctx, now).await?);
    }
    let mut beats: Vec<&Heartbeat> = batches
        .iter()
        .filter_map(|b| b.heartbeat.as_ref())
        .collect();
    beats.sort_by(|a, b| (&a.worker_id, a.at).cmp(&(&b.worker_id, b.at)));
    for hb in beats {
        apply_heartbeat(tx, hb, ctx, now).await?;
    }
    Ok(out)
}

/// Applies one job update inside `tx`.
pub async fn apply_update(
    tx: &mut Tx,
    u: &JobUpdate,
    ctx: &IngestCtx,
    now: Millis,
) -> Result<Applied, StoreError> {
    let sql = format!(
        "SELECT state, stages FROM coord_pipelines WHERE pipeline_id = $1{}",
        for_share(tx)
    );
    let Some(p) = tx.query_opt(&sql, params![u.pipeline_id.as_str()]).await? else {
        tracing::debug!(job_id = %u.job_id, "event for an unknown pipeline; ignored");
        return Ok(Applied::Unknown);
    };
    let Some(item_id) = item_of(&u.job_id, &u.pipeline_id, &u.stage) else {
        tracing::warn!(job_id = %u.job_id, "job id does not match its pipeline and stage; ignored");
        return Ok(Applied::Unknown);
    };
    let state: String = p.get("state")?;
    if PipelineState::parse(&state) != Some(PipelineState::Running) {
        tx.execute(
            "UPDATE coord_jobs SET late = TRUE WHERE job_id = $1",
            params![u.job_id.as_str()],
        )
        .await?;
        let mut log = u.log.clone();
        log["applied"] = "late".into();
        log_event(tx, &u.pipeline_id, now, &log).await?;
        return Ok(Applied::Late);
    }
    let stages: BTreeMap<String, StageLimits> =
        serde_json::from_value(p.get::<serde_json::Value>("stages")?).unwrap_or_default();
    let sql = format!(
        "SELECT route FROM coord_items WHERE pipeline_id = $1 AND item_id = $2{}",
        for_update(tx)
    );
    let Some(item) = tx
        .query_opt(&sql, params![u.pipeline_id.as_str(), item_id.as_str()])
        .await?
    else {
        tracing::warn!(job_id = %u.job_id, "event for an unknown item; ignored");
        return Ok(Applied::Unknown);
    };
    let route: Vec<RouteStep> =
        serde_json::from_value(item.get::<serde_json::Value>("route")?).unwrap_or_default();
    let current = tx
        .query_opt(
            "SELECT state, attempt, seq FROM coord_jobs WHERE job_id = $1",
            params![u.job_id.as_str()],
        )
        .await?
        .map(|r| -> Result<JobSnapshot, StoreError> {
            let s: String = r.get("state")?;
            Ok(JobSnapshot {
                state: JobState::parse(&s).unwrap_or(JobState::Queued),
                attempt: r.get("attempt")?,
                seq: r.get::<i64>("seq")?.clamp(0, i64::from(u32::MAX)) as u32,
            })
        })
        .transpose()?;
    let decision = decide(current, u.target, u.attempt, u.seq);
    let progress_at = (u.target == JobState::Running).then_some(u.at);
    match decision {
        Decision::Apply(st) | Decision::Supersede(st) => {
            if current.is_none() {
                let required = route
                    .iter()
                    .find(|s| s.stage == u.stage)
                    .is_none_or(|s| s.required);
                let limits = stages.get(&u.stage);
                let row = vec![
                    Value::from(u.job_id.as_str()),
                    Value::from(u.pipeline_id.as_str()),
                    Value::from(item_id.as_str()),
                    Value::from(u.stage.as_str()),
                    Value::from(required),
                    Value::from(st.as_str()),
                    Value::from(u.attempt),
                    Value::from(u.seq),
                    Value::from(u.worker_id.clone()),
                    Value::from(now),
                    Value::from(now),
                    Value::from(progress_at),
                    Value::Int(limits.map_or(ctx.default_timeout_ms, |l| {
                        i64::try_from(l.timeout_ms).unwrap_or(i64::MAX)
                    })),
                    Value::Int(
                        limits.map_or(ctx.default_max_attempts, |l| i64::from(l.max_attempts)),
                    ),
                    Value::from(u.dl_reason.clone()),
                    Value::from(u.error.clone()),
                    Value::from(u.degraded.clone()),
                ];
                insert_rows(
                    tx,
                    "coord_jobs (job_id, pipeline_id, item_id, stage, required, state, attempt, seq, worker_id, \
                     queued_at, last_event_at, last_progress_at, timeout_ms, max_attempts, dl_reason, error, degraded)",
                    "",
                    &[row],
                )
                .await?;
            } else {
                tx.execute(
                    "UPDATE coord_jobs SET state = $2, attempt = $3, seq = $4, \
                     worker_id = COALESCE($5, worker_id), last_event_at = $6, \
                     last_progress_at = COALESCE($7, last_progress_at), \
                     dl_reason = COALESCE($8, dl_reason), error = COALESCE($9, error), \
                     superseded = (superseded OR $10), stall_kind = NULL, stall_since = NULL, \
                     degraded = COALESCE($11, degraded) \
                     WHERE job_id = $1",
                    params![
                        u.job_id.as_str(),
                        st.as_str(),
                        u.attempt,
                        u.seq,
                        u.worker_id.clone(),
                        now,
                        progress_at,
                        u.dl_reason.clone(),
                        u.error.clone(),
                        matches!(decision, Decision::Supersede(_)),
                        u.degraded.clone()
                    ],
                )
                .await?;
            }
            sync_item(tx, &u.pipeline_id, &item_id, &route, &stages, ctx, now).await?;
        }
        Decision::Touch => {
            tx.execute(
                "UPDATE coord_jobs SET attempt = $2, seq = $3, worker_id = COALESCE($4, worker_id), \
                 last_event_at = $5, last_progress_at = COALESCE($6, last_progress_at) WHERE job_id = $1",
                params![
                    u.job_id.as_str(),
                    u.attempt,
                    u.seq,
                    u.worker_id.clone(),
                    now,
                    progress_at
                ],
            )
            .await?;
        }
        Decision::Superseded => {
            tx.execute(
                "UPDATE coord_jobs SET superseded = TRUE WHERE job_id = $1",
                params![u.job_id.as_str()],
            )
            .await?;
        }
        Decision::Duplicate | Decision::Stale => return Ok(Applied::Unchanged(decision)),
    }
    let mut log = u.log.clone();
    log["applied"] = match decision {
        Decision::Superseded => "superseded",
        Decision::Supersede(_) => "supersedes",
        _ => "applied",
    }
    .into();
    log_event(tx, &u.pipeline_id, now, &log).await?;
    Ok(if decision.changes_state() {
        Applied::Changed(decision)
    } else {
        Applied::Unchanged(decision)
    })
}

/// Re-derives an item from its jobs and writes the result: its state, the next
/// stage's job (`queued`), and `skipped` jobs after a terminal failure.
pub async fn sync_item(
    tx: &mut Tx,
    pipeline_id: &str,
    item_id: &str,
    route: &[RouteStep],
    stages: &BTreeMap<String, StageLimits>,
    ctx: &IngestCtx,
    now: Millis,
) -> Result<(), StoreError> {
    let rows = tx
        .query(
            "SELECT stage, state, dl_reason, error, degraded FROM coord_jobs WHERE pipeline_id = $1 AND item_id = $2",
            params![pipeline_id, item_id],
        )
        .await?;
    let mut facts = HashMap::new();
    for r in rows {
        let state: String = r.get("state")?;
        let reason = match (
            r.get::<Option<String>>("dl_reason")?,
            r.get::<Option<String>>("error")?,
        ) {
            (Some(a), Some(b)) if !b.is_empty() => Some(format!("{a}: {b}")),
            (a, b) => a.or(b),
        };
        facts.insert(
            r.get::<String>("stage")?,
            JobFact {
                state: JobState::parse(&state).unwrap_or(JobState::Queued),
                reason,
                degraded: r
                    .get::<Option<String>>("degraded")?
                    .and_then(|d| serde_json::from_str::<Degradation>(&d).ok())
                    .map(|d| d.to_string()),
            },
        );
    }
    let view = derive(route, &facts);
    let job_row = |stage: &str, required: bool, state: JobState| {
        let limits = stages.get(stage);
        vec![
            Value::from(fleet_protocol::job_id(pipeline_id, item_id, stage)),
            Value::from(pipeline_id),
            Value::from(item_id),
            Value::from(stage),
            Value::from(required),
            Value::from(state.as_str()),
            Value::from(0),
            Value::from(0),
            Value::from(now),
            Value::Int(limits.map_or(ctx.default_timeout_ms, |l| {
                i64::try_from(l.timeout_ms).unwrap_or(i64::MAX)
            })),
            Value::Int(limits.map_or(ctx.default_max_attempts, |l| i64::from(l.max_attempts))),
        ]
    };
    const HEAD: &str = "coord_jobs (job_id, pipeline_id, item_id, stage, required, state, attempt, seq, \
                        queued_at, timeout_ms, max_attempts)";
    if let Some((stage, required)) = &view.queue_stage {
        insert_rows(
            tx,
            HEAD,
            "ON CONFLICT (job_id) DO UPDATE SET state = 'queued', queued_at = excluded.queued_at \
             WHERE coord_jobs.state = 'skipped'",
            &[job_row(stage, *required, JobState::Queued)],
        )
        .await?;
    }
    if !view.skip_stages.is_empty() {
        let rows: Vec<Vec<Value>> = view
            .skip_stages
            .iter()
            .map(|(s, r)| job_row(s, *r, JobState::Skipped))
            .collect();
        insert_rows(
            tx,
            HEAD,
            "ON CONFLICT (job_id) DO UPDATE SET state = 'skipped', stall_kind = NULL, stall_since = NULL \
             WHERE coord_jobs.state = 'queued'",
            &rows,
        )
        .await?;
    }
    tx.execute(
        "UPDATE coord_items SET state = $3, outcome = $4, failed_stage = $5, reason = $6, updated_at = $7, \
         degraded = $8 WHERE pipeline_id = $1 AND item_id = $2",
        params![
            pipeline_id,
            item_id,
            view.state.as_str(),
            view.outcome,
            view.failed_stage.clone(),
            view.reason.clone(),
            now,
            view.degraded.clone()
        ],
    )
    .await?;
    Ok(())
}

/// Records a heartbeat: the worker's liveness and the jobs it runs with their progress.
pub async fn apply_heartbeat(
    tx: &mut Tx,
    hb: &Heartbeat,
    ctx: &IngestCtx,
    now: Millis,
) -> Result<(), StoreError> {
    let at = to_millis(hb.at);
    // Liveness is judged on the coordinator's clock, unless the heartbeat is itself old
    // (a backlog replayed after an outage must not make dead workers look alive).
    let seen = if now - at > 3 * ctx.heartbeat_ms {
        at
    } else {
        now
    };
    let changed = tx
        .execute(
            "INSERT INTO coord_workers (worker_id, stage, last_heartbeat_at, slots, in_flight) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (worker_id) DO UPDATE SET \
             stage = excluded.stage, last_heartbeat_at = excluded.last_heartbeat_at, \
             slots = excluded.slots, in_flight = excluded.in_flight \
             WHERE coord_workers.last_heartbeat_at <= excluded.last_heartbeat_at",
            params![
                hb.worker_id.as_str(),
                hb.stage.as_str(),
                seen,
                hb.slots,
                i64::try_from(hb.in_flight.len()).unwrap_or(i64::MAX)
            ],
        )
        .await?;
    if changed == 0 {
        return Ok(()); // An older heartbeat than the one recorded.
    }
    tx.execute(
        "DELETE FROM coord_worker_jobs WHERE worker_id = $1",
        params![hb.worker_id.as_str()],
    )
    .await?;
    let mut jobs = hb.in_flight.clone();
    jobs.sort_by(|a, b| a.job_id.cmp(&b.job_id));
    jobs.dedup_by(|a, b| a.job_id == b.job_id);
    let rows: Vec<Vec<Value>> = jobs
        .iter()
        .map(|j| {
            vec![
                Value::from(hb.worker_id.as_str()),
                Value::from(j.job_id.as_str()),
                Value::from(j.attempt),
                Value::from(to_millis(j.started_at)),
                Value::from(to_millis(j.last_progress_at)),
            ]
        })
        .collect();
    insert_rows(
        tx,
        "coord_worker_jobs (worker_id, job_id, attempt, started_at, last_progress_at)",
        "",
        &rows,
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_ids_come_out_of_job_ids() {
        assert_eq!(item_of("p/a/analyze", "p", "analyze").as_deref(), Some("a"));
        assert_eq!(
            item_of("p/docs/x.md/write", "p", "write").as_deref(),
            Some("docs/x.md")
        );
        assert_eq!(item_of("q/a/analyze", "p", "analyze"), None);
        assert_eq!(item_of("p//analyze", "p", "analyze"), None);
        assert_eq!(item_of("p/a/write", "p", "analyze"), None);
    }
}
