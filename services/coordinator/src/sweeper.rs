//! The sweeper: on every tick, unconditionally, one transaction that starts
//! with `pg_try_advisory_xact_lock` (so one replica sweeps at a time and no
//! lock outlives the transaction), names stalled jobs, finalizes pipelines
//! with a conditional `UPDATE … WHERE state = 'running'` plus an outbox row
//! in the same transaction (exactly once), and refreshes the gauges.
//!
//! Lock order (shared by every writer, so PostgreSQL never finds a deadlock): pipeline rows
//! first, in ascending id, then that pipeline's items and jobs; worker rows after pipelines,
//! in ascending id, then their job lists. Stall changes are classified from one read and
//! written under their pipeline's lock.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_core::Destination;
use fleet_store::{Store, StoreError, Tx, params};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::db::{Db, for_update, log_event};
use crate::finalize::{PipelineFacts, REASON_NOTES, Verdict, decide, with_degradation};
use crate::gauges::{StageCounts, StageGauges};
use crate::metrics as m;
use crate::model::{JobState, Millis, PipelineState, now_ms};
use crate::outbox::{KEEP_PUBLISHED_MS, enqueue};
use crate::stall::{JobFacts, StallParams, classify};

/// Advisory lock key of the sweep ("fleetswp").
pub const SWEEP_LOCK_KEY: i64 = 0x666c_6565_7473_7770;
/// Workers silent this long are forgotten.
const FORGET_WORKER_MS: Millis = 24 * 3_600_000;

/// What the sweeper needs to know.
#[derive(Debug, Clone)]
pub struct SweepConfig {
    /// Workers' heartbeat interval.
    pub heartbeat: Duration,
    /// Backlog age before `no_consumer`.
    pub scale_up_allowance: Duration,
    /// Grace after a deadline before `timed_out`.
    pub deadline_grace: Duration,
    /// Stall windows by stage (default: the job's timeout).
    pub stall_windows: HashMap<String, Duration>,
    /// Stages always reported in gauges (the default route).
    pub stages: Vec<String>,
    /// When this coordinator started (start-up grace).
    pub started_at: Millis,
    /// Finalized pipelines older than this are deleted (`None`: kept for ever).
    pub retention: Option<Duration>,
}

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// False when another replica held the lock.
    pub ran: bool,
    /// Pipelines finalized, with their state.
    pub finalized: Vec<(String, PipelineState)>,
    /// Stalled jobs by (stage, kind).
    pub stalled: BTreeMap<(String, String), i64>,
    /// Stages whose whole backlog waits for delayed retries (nothing queued or running), with
    /// how many jobs wait.
    pub parked: BTreeMap<String, i64>,
    /// Workers, backlog and stalls by stage, for the gauges ([`StageGauges`]).
    pub counts: StageCounts,
}

/// Logs stages that became all-parked (warn) or stopped being so (info) since the last sweep.
fn log_parked_changes(before: &BTreeMap<String, i64>, now: &BTreeMap<String, i64>) {
    for (stage, n) in now {
        if !before.contains_key(stage) {
            tracing::warn!(
                stage = %stage,
                retrying = n,
                "stage {stage}: all {n} unfinished jobs wait for a delayed retry (nothing queued \
                 or running); every recent attempt failed: check the stage's dependency and \
                 `fleetctl queues`"
            );
        }
    }
    for stage in before.keys().filter(|s| !now.contains_key(*s)) {
        tracing::info!(stage = %stage, "stage {stage}: no longer only waiting for retries");
    }
}

/// Stages with jobs waiting for a retry and nothing else in their backlog.
fn parked_stages(backlog: &BTreeMap<(String, &'static str), i64>) -> BTreeMap<String, i64> {
    let mut parked = BTreeMap::new();
    for ((stage, health), n) in backlog {
        if *health == "retrying" && *n > 0 {
            let other = |h: &'static str| backlog.get(&(stage.clone(), h)).copied().unwrap_or(0);
            if other("healthy") == 0 && other("stalled") == 0 {
                parked.insert(stage.clone(), *n);
            }
        }
    }
    parked
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A stall change the sweep writes under its pipeline's lock.
#[derive(Debug)]
struct StallUpdate {
    job_id: String,
    /// The job state it was classified in.
    seen_state: String,
    kind: Option<String>,
    since: Option<Millis>,
}

/// What one sweep does to one pipeline.
#[derive(Debug, Default)]
struct PipelineWork {
    stalls: Vec<StallUpdate>,
    finalize: bool,
}

/// Locks a running pipeline's row (PostgreSQL `FOR UPDATE`); false when it is not running.
async fn lock_running(tx: &mut Tx, pipeline_id: &str) -> Result<bool, StoreError> {
    let lock = format!(
        "SELECT state FROM coord_pipelines WHERE pipeline_id = $1 AND state = 'running'{}",
        for_update(tx)
    );
    Ok(tx.query_opt(&lock, params![pipeline_id]).await?.is_some())
}

/// Reads the facts of one running pipeline inside `tx`.
async fn facts_of(tx: &mut Tx, pipeline_id: &str) -> Result<Option<PipelineFacts>, StoreError> {
    let rows = tx.query(FACTS_SQL_ONE, params![pipeline_id]).await?;
    rows.into_iter().next().map(|r| facts_from(&r)).transpose()
}

const FACTS_SQL_ALL: &str = concat!(
    "SELECT p.pipeline_id, p.deadline_at, p.cancel_requested_at, p.sealed_at, p.seal_by, \
    COUNT(i.item_id) AS total, \
    CAST(COALESCE(SUM(CASE WHEN i.state <> 'running' THEN 1 ELSE 0 END), 0) AS BIGINT) AS terminal, \
    CAST(COALESCE(SUM(CASE WHEN i.state = 'succeeded' THEN 1 ELSE 0 END), 0) AS BIGINT) AS succeeded, \
    CAST(COALESCE(SUM(CASE WHEN i.state = 'expired' THEN 1 ELSE 0 END), 0) AS BIGINT) AS expired",
    " FROM coord_pipelines p LEFT JOIN coord_items i ON i.pipeline_id = p.pipeline_id \
     WHERE p.state = 'running' GROUP BY p.pipeline_id, p.deadline_at, p.cancel_requested_at, p.sealed_at, p.seal_by"
);

const FACTS_SQL_ONE: &str = concat!(
    "SELECT p.pipeline_id, p.deadline_at, p.cancel_requested_at, p.sealed_at, p.seal_by, \
    COUNT(i.item_id) AS total, \
    CAST(COALESCE(SUM(CASE WHEN i.state <> 'running' THEN 1 ELSE 0 END), 0) AS BIGINT) AS terminal, \
    CAST(COALESCE(SUM(CASE WHEN i.state = 'succeeded' THEN 1 ELSE 0 END), 0) AS BIGINT) AS succeeded, \
    CAST(COALESCE(SUM(CASE WHEN i.state = 'expired' THEN 1 ELSE 0 END), 0) AS BIGINT) AS expired",
    " FROM coord_pipelines p LEFT JOIN coord_items i ON i.pipeline_id = p.pipeline_id \
     WHERE p.state = 'running' AND p.pipeline_id = $1 GROUP BY p.pipeline_id, p.deadline_at, p.cancel_requested_at, p.sealed_at, p.seal_by"
);

fn facts_from(r: &fleet_store::Row) -> Result<PipelineFacts, StoreError> {
    Ok(PipelineFacts {
        items_total: r.get("total")?,
        items_terminal: r.get("terminal")?,
        items_succeeded: r.get("succeeded")?,
        items_expired: r.get("expired")?,
        cancel_requested: r.get::<Option<i64>>("cancel_requested_at")?.is_some(),
        deadline_at: r.get("deadline_at")?,
        sealed: r.get::<Option<i64>>("sealed_at")?.is_some(),
        seal_by: r.get("seal_by")?,
    })
}

/// Finalizes `pipeline_id` inside `tx` if the rules say so: locks its row (callers that lock
/// several pipelines in one transaction do so in ascending id order), re-reads
/// the facts, updates conditionally and, only when the row changed, writes the
/// finalization message to the outbox. Returns the final state when it finalized.
pub async fn finalize_one(
    tx: &mut Tx,
    pipeline_id: &str,
    now: Millis,
    grace_ms: i64,
) -> Result<Option<PipelineState>, StoreError> {
    if !lock_running(tx, pipeline_id).await? {
        return Ok(None);
    }
    let Some(facts) = facts_of(tx, pipeline_id).await? else {
        return Ok(None);
    };
    let Some(Verdict { state, reason }) = decide(&facts, now, grace_ms) else {
        return Ok(None);
    };
    let (degraded, notes) =
        crate::report::degraded_items(&mut Db::Tx(tx), pipeline_id, REASON_NOTES + 1).await?;
    let reason = with_degradation(&reason, degraded, &notes);
    let changed = tx
        .execute(
            "UPDATE coord_pipelines SET state = $2, finalized_at = $3, reason = $4 \
             WHERE pipeline_id = $1 AND state = 'running'",
            params![pipeline_id, state.as_str(), now, reason.as_str()],
        )
        .await?;
    if changed != 1 {
        return Ok(None);
    }
    let (item_state, job_state, why) = match state {
        PipelineState::TimedOut => (
            "timed_out",
            JobState::Expired,
            "the pipeline deadline passed before the item finished",
        ),
        PipelineState::Cancelled => (
            "cancelled",
            JobState::Cancelled,
            "the pipeline was cancelled",
        ),
        _ => ("", JobState::Queued, ""),
    };
    if !item_state.is_empty() {
        tx.execute(
            "UPDATE coord_items SET state = $2, outcome = $2, reason = $3, updated_at = $4 \
             WHERE pipeline_id = $1 AND state = 'running'",
            params![pipeline_id, item_state, why, now],
        )
        .await?;
        tx.execute(
            "UPDATE coord_jobs SET state = $2 WHERE pipeline_id = $1 AND state IN ('queued', 'running', 'retrying')",
            params![pipeline_id, job_state.as_str()],
        )
        .await?;
    }
    tx.execute(
        "UPDATE coord_jobs SET stall_kind = NULL, stall_since = NULL WHERE pipeline_id = $1 AND stall_kind IS NOT NULL",
        params![pipeline_id],
    )
    .await?;
    let report = crate::report::build(&mut Db::Tx(tx), pipeline_id, true)
        .await?
        .map(final_message)
        .unwrap_or_default();
    enqueue(
        tx,
        &Destination::Pipeline {
            state: state.as_str().to_owned(),
        },
        Some(&format!("{pipeline_id}/final")),
        &report.to_string(),
        now,
    )
    .await?;
    log_event(
        tx,
        pipeline_id,
        now,
        &serde_json::json!({"type": "final", "state": state, "reason": reason}),
    )
    .await?;
    metrics::counter!(m::PIPELINES_FINALIZED, "state" => state.as_str()).increment(1);
    tracing::info!(pipeline_id, state = %state, reason, "pipeline finalized");
    Ok(Some(state))
}

/// Items listed at most in a finalization message (it must fit the broker's message limit).
pub const FINAL_MESSAGE_ITEMS: usize = 1000;

/// The finalization message: the report with only the items that did not succeed or succeeded
/// degraded (at most [`FINAL_MESSAGE_ITEMS`]); `items_truncated` says when some were left out.
pub fn final_message(mut r: crate::report::PipelineReport) -> serde_json::Value {
    r.items
        .retain(|i| i.state != "succeeded" || i.degraded.is_some());
    let truncated = r.items.len() > FINAL_MESSAGE_ITEMS;
    r.items.truncate(FINAL_MESSAGE_ITEMS);
    let mut v = serde_json::to_value(r).unwrap_or_default();
    v["items_truncated"] = truncated.into();
    v
}

/// One sweep: stalls, finalization, gauges, housekeeping; one transaction.
pub async fn sweep_once(store: &Store, cfg: &SweepConfig) -> Result<SweepReport, StoreError> {
    let now = now_ms();
    let mut tx = store.begin().await?;
    if !tx.try_advisory_xact_lock(SWEEP_LOCK_KEY).await? {
        tx.rollback().await?;
        return Ok(SweepReport::default());
    }
    let mut report = SweepReport {
        ran: true,
        ..SweepReport::default()
    };
    let params_ = StallParams {
        now,
        started_at: cfg.started_at,
        heartbeat_ms: ms(cfg.heartbeat),
        scale_up_allowance_ms: ms(cfg.scale_up_allowance),
    };
    // Live workers per stage.
    let mut alive: BTreeMap<String, i64> = cfg.stages.iter().map(|s| (s.clone(), 0)).collect();
    for r in tx
        .query(
            "SELECT stage, COUNT(*) AS n FROM coord_workers WHERE last_heartbeat_at >= $1 GROUP BY stage",
            params![params_.lost_cutoff()],
        )
        .await?
    {
        alive.insert(r.get("stage")?, r.get("n")?);
    }
    // Stalls: classified from one read, written below under the pipeline's lock.
    let rows = tx
        .query(
            "SELECT j.job_id, j.pipeline_id, j.stage, j.state, j.queued_at, j.last_event_at, j.timeout_ms, \
             j.stall_kind, j.stall_since, w.last_heartbeat_at AS hb_at, wj.last_progress_at AS hb_progress_at, \
             p.deadline_at \
             FROM coord_jobs j JOIN coord_pipelines p ON p.pipeline_id = j.pipeline_id \
             LEFT JOIN coord_workers w ON w.worker_id = j.worker_id \
             LEFT JOIN coord_worker_jobs wj ON wj.worker_id = j.worker_id AND wj.job_id = j.job_id \
             WHERE p.state = 'running' AND j.state IN ('queued', 'running', 'retrying')",
            &[],
        )
        .await?;
    let mut backlog: BTreeMap<(String, &'static str), i64> = BTreeMap::new();
    for s in &cfg.stages {
        backlog.insert((s.clone(), "healthy"), 0);
        backlog.insert((s.clone(), "stalled"), 0);
        backlog.insert((s.clone(), "retrying"), 0);
    }
    // What each pipeline needs, by pipeline id: the lock order (see `lock_order` below).
    let mut work: BTreeMap<String, PipelineWork> = BTreeMap::new();
    for r in rows {
        let job_id: String = r.get("job_id")?;
        let stage: String = r.get("stage")?;
        let state_text: String = r.get("state")?;
        let state = JobState::parse(&state_text).unwrap_or(JobState::Queued);
        let timeout: i64 = r.get("timeout_ms")?;
        let facts = JobFacts {
            state,
            queued_at: r.get("queued_at")?,
            last_event_at: r.get("last_event_at")?,
            worker_heartbeat_at: r.get("hb_at")?,
            heartbeat_progress_at: r.get("hb_progress_at")?,
            stage_has_live_worker: alive.get(&stage).copied().unwrap_or(0) > 0,
            stall_window_ms: cfg.stall_windows.get(&stage).map_or(timeout, |d| ms(*d)),
            deadline_at: r.get("deadline_at")?,
        };
        let verdict = classify(&facts, &params_);
        let old_kind: Option<String> = r.get("stall_kind")?;
        let old_since: Option<i64> = r.get("stall_since")?;
        let new_kind = verdict.map(|(k, _)| k.as_str().to_owned());
        let new_since = verdict.map(|(_, s)| s);
        if old_kind != new_kind || old_since != new_since {
            work.entry(r.get("pipeline_id")?)
                .or_default()
                .stalls
                .push(StallUpdate {
                    job_id,
                    seen_state: state_text,
                    kind: new_kind,
                    since: new_since,
                });
        }
        let health = if verdict.is_some() {
            "stalled"
        } else if state == JobState::Retrying {
            // Waiting out a retry delay (broker retry queue / stream): not consumable yet.
            "retrying"
        } else {
            "healthy"
        };
        *backlog.entry((stage.clone(), health)).or_default() += 1;
        if let Some((kind, _)) = verdict {
            *report
                .stalled
                .entry((stage, kind.as_str().to_owned()))
                .or_default() += 1;
        }
    }
    report.parked = parked_stages(&backlog);
    // Finalization candidates.
    let grace = ms(cfg.deadline_grace);
    for r in tx.query(FACTS_SQL_ALL, &[]).await? {
        if decide(&facts_from(&r)?, now, grace).is_some() {
            work.entry(r.get("pipeline_id")?).or_default().finalize = true;
        }
    }
    // Lock order: every writer locks a pipeline row before its items and jobs, and pipelines in
    // ascending id (event ingestion sorts its updates the same way), so no two transactions can
    // wait on each other in a cycle (PostgreSQL deadlock 40P01). A pipeline whose row is no
    // longer running is left alone.
    for (id, w) in &mut work {
        if !lock_running(&mut tx, id).await? {
            continue;
        }
        w.stalls.sort_by(|a, b| a.job_id.cmp(&b.job_id));
        for u in &w.stalls {
            // Only if the job is still as classified: an event since the read wins.
            tx.execute(
                "UPDATE coord_jobs SET stall_kind = $2, stall_since = $3 WHERE job_id = $1 AND state = $4",
                params![u.job_id.as_str(), u.kind.clone(), u.since, u.seen_state.as_str()],
            )
            .await?;
        }
        if w.finalize
            && let Some(state) = finalize_one(&mut tx, id, now, grace).await?
        {
            report.finalized.push((id.clone(), state));
        }
    }
    // Gauges.
    let mut by_state: BTreeMap<String, i64> = PipelineState::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), 0))
        .collect();
    for r in tx
        .query(
            "SELECT state, COUNT(*) AS n FROM coord_pipelines GROUP BY state",
            &[],
        )
        .await?
    {
        by_state.insert(r.get("state")?, r.get("n")?);
    }
    // Housekeeping.
    tx.execute(
        "DELETE FROM coord_outbox WHERE (published_at IS NOT NULL AND published_at < $1) \
         OR (failed_at IS NOT NULL AND failed_at < $1)",
        params![now - KEEP_PUBLISHED_MS],
    )
    .await?;
    // Worker rows before their jobs, in id order: the order heartbeat ingestion locks them in.
    let forget = format!(
        "SELECT worker_id FROM coord_workers WHERE last_heartbeat_at < $1 ORDER BY worker_id{}",
        for_update(&tx)
    );
    let gone = tx.query(&forget, params![now - FORGET_WORKER_MS]).await?;
    if !gone.is_empty() {
        tx.execute(
            "DELETE FROM coord_worker_jobs WHERE worker_id IN \
             (SELECT worker_id FROM coord_workers WHERE last_heartbeat_at < $1)",
            params![now - FORGET_WORKER_MS],
        )
        .await?;
        tx.execute(
            "DELETE FROM coord_workers WHERE last_heartbeat_at < $1",
            params![now - FORGET_WORKER_MS],
        )
        .await?;
    }
    tx.commit().await?;

    #[allow(clippy::cast_precision_loss)]
    {
        for (state, n) in &by_state {
            metrics::gauge!(m::PIPELINES, "state" => state.clone()).set(*n as f64);
        }
    }
    report.counts = StageCounts {
        alive,
        backlog,
        stalled: report.stalled.clone(),
    };
    metrics::counter!(m::SWEEPER_TICKS).increment(1);
    Ok(report)
}

/// Runs the sweeper until `shutdown`: a tick every `tick`, each bounded by a timeout,
/// never skipped because other work is busy (it is its own task).
pub async fn run(
    store: Store,
    cfg: SweepConfig,
    tick: Duration,
    relay: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let bound = (tick * 10).clamp(Duration::from_secs(5), Duration::from_secs(60));
    // Stages reported as all-parked, so each change is logged once, not every tick.
    let mut parked: BTreeMap<String, i64> = BTreeMap::new();
    let mut last_retention: Option<Instant> = None;
    // Every stage seen so far keeps its gauges (0 when idle), so none freezes or goes missing.
    let mut gauges = StageGauges::new(&cfg.stages);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let started = Instant::now();
        match tokio::time::timeout(bound, sweep_once(&store, &cfg)).await {
            Ok(Ok(r)) => {
                if !r.ran {
                    metrics::counter!(m::SWEEPER_SKIPPED, "result" => "locked").increment(1);
                }
                if !r.finalized.is_empty() {
                    relay.notify_one();
                }
                if r.ran {
                    gauges.export(&r.counts);
                    log_parked_changes(&parked, &r.parked);
                    parked = r.parked;
                }
            }
            Ok(Err(e)) => {
                metrics::counter!(m::SWEEPER_SKIPPED, "result" => "error").increment(1);
                tracing::warn!(error = %e, "sweep failed; the next tick retries");
            }
            Err(_) => {
                metrics::counter!(m::SWEEPER_SKIPPED, "result" => "timeout").increment(1);
                tracing::warn!(limit = ?bound, "sweep timed out; the next tick retries");
            }
        }
        metrics::histogram!(m::SWEEP_DURATION).record(started.elapsed().as_secs_f64());
        if let Some(keep) = cfg.retention
            && last_retention.is_none_or(|t: Instant| t.elapsed() >= crate::retention::EVERY)
        {
            last_retention = Some(Instant::now());
            match tokio::time::timeout(bound, crate::retention::prune(&store, keep)).await {
                Ok(Ok(p)) if p.pipelines > 0 || p.rows > 0 => {
                    tracing::info!(
                        pipelines = p.pipelines,
                        rows = p.rows,
                        "retention deleted old finalized pipelines"
                    );
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "retention failed; it runs again in a minute")
                }
                Err(_) => {
                    tracing::warn!(limit = ?bound, "retention timed out; it runs again in a minute")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{ItemReport, PipelineReport};

    #[test]
    fn a_stage_is_parked_when_its_backlog_only_waits_for_retries() {
        let mut b: BTreeMap<(String, &'static str), i64> = BTreeMap::new();
        for (s, h, n) in [
            ("a", "healthy", 0),
            ("a", "stalled", 0),
            ("a", "retrying", 7),
            ("b", "healthy", 1),
            ("b", "stalled", 0),
            ("b", "retrying", 3),
            ("c", "healthy", 0),
            ("c", "stalled", 0),
            ("c", "retrying", 0),
        ] {
            b.insert((s.to_owned(), h), n);
        }
        let parked = parked_stages(&b);
        assert_eq!(
            parked.into_iter().collect::<Vec<_>>(),
            vec![("a".to_owned(), 7)]
        );
    }

    #[test]
    fn final_message_lists_only_unsuccessful_items_bounded() {
        let item = |i: usize, state: &str| ItemReport {
            item_id: format!("i{i}"),
            state: state.into(),
            outcome: None,
            failed_stage: None,
            reason: None,
            degraded: None,
        };
        let mut items: Vec<ItemReport> = (0..5).map(|i| item(i, "succeeded")).collect();
        items.extend((0..FINAL_MESSAGE_ITEMS + 1).map(|i| item(i, "failed")));
        let r = PipelineReport {
            pipeline_id: "p".into(),
            state: "partial_success".into(),
            created_at: String::new(),
            finalized_at: None,
            deadline_at: None,
            reason: None,
            replay_of: None,
            items_total: 1006,
            items_terminal: 1006,
            items_degraded: 0,
            stages: BTreeMap::new(),
            stalled: Vec::new(),
            items,
        };
        let v = final_message(r);
        assert_eq!(v["items"].as_array().unwrap().len(), FINAL_MESSAGE_ITEMS);
        assert_eq!(v["items_truncated"], true);
        assert!(
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .all(|i| i["state"] == "failed")
        );
    }
}
