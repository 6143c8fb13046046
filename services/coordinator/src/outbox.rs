//! The transactional outbox: messages are written in the same transaction as
//! the state that causes them, and a relay publishes them (confirmed) and
//! marks them published. A crash between commit and publish loses nothing; a
//! crash between publish and mark publishes again, which is harmless (the
//! message id de-duplicates on NATS, and every consumer is idempotent).
//!
//! On PostgreSQL each relay batch claims its rows with `FOR UPDATE SKIP
//! LOCKED`, so several replicas relay without publishing a row twice at once.
//!
//! A row the broker refuses (unroutable stage, message too large, …) never
//! blocks the others: each row counts its own attempts and backs off on its
//! own (`next_attempt_at`; the relay claims only rows that are due, so healthy
//! rows pass backed-off ones), and after `max_attempts` it is abandoned
//! (`failed_at`) — a job row's job then ends `dead_lettered` with reason
//! `publish_failed` through the state machine, so its item fails and its
//! pipeline finalizes. While the broker is disconnected nothing is counted:
//! an outage delays rows, it does not fail them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_core::{Broker, Destination, OutMessage};
use fleet_store::{Store, StoreError, StoreKind, Tx, params};
use futures::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::ingest::{IngestCtx, JobUpdate, apply_update};
use crate::lograte::LogLimiter;
use crate::metrics as m;
use crate::model::{JobState, Millis, now_ms};

/// Rows claimed per relay batch.
pub const RELAY_BATCH: i64 = 256;
/// Publishes in flight at once within a batch.
const PUBLISH_CONCURRENCY: usize = 32;
/// Longest wait for one publish confirmation.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(15);
/// How often the relay looks even without a nudge (another replica may have written rows).
const RELAY_POLL: Duration = Duration::from_millis(250);
/// Published and abandoned rows are kept this long for inspection, then deleted by the sweeper.
pub const KEEP_PUBLISHED_MS: Millis = 3_600_000;
/// Longest per-row retry delay.
const RETRY_MAX: Duration = Duration::from_secs(60);
/// Longest relay pause while the broker is unreachable.
const OUTAGE_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// The same relay error is logged at most once per this interval.
const LOG_INTERVAL: Duration = Duration::from_secs(30);
/// How often the relay refreshes the outbox gauges.
const GAUGE_EVERY: Duration = Duration::from_secs(2);
/// Longest error text kept on a row (and in a failed item's reason).
const MAX_ERROR_CHARS: usize = 500;
/// `last_error` of a job row dropped because its pipeline was cancelled first.
const CANCELLED_BEFORE_PUBLISH: &str = "pipeline cancelled before the job was published";
pub use crate::item::PUBLISH_FAILED;

/// How the relay retries a row and when it gives up.
#[derive(Debug, Clone, Copy)]
pub struct RelayPolicy {
    /// Publish attempts of one row before it is abandoned.
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt up to one minute.
    pub backoff: Duration,
    /// Defaults for failing an abandoned row's job through the state machine.
    pub ingest: IngestCtx,
}

impl RelayPolicy {
    /// The policy `config` sets.
    pub fn new(config: &crate::Config, ingest: IngestCtx) -> RelayPolicy {
        RelayPolicy {
            max_attempts: config.outbox_max_attempts.max(1),
            backoff: config.outbox_retry_backoff,
            ingest,
        }
    }

    /// Delay before the next try of a row that has failed `attempts` times (≥ 1).
    pub fn delay(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(20);
        self.backoff
            .saturating_mul(1u32 << doublings)
            .min(RETRY_MAX.max(self.backoff))
    }
}

/// The stored form of a destination: `(kind, key)`.
pub fn dest_parts(d: &Destination) -> (&'static str, String) {
    match d {
        Destination::Job { stage } => ("job", stage.clone()),
        Destination::Events { stage } => ("events", stage.clone()),
        Destination::DeadLetter { stage } => ("dead_letter", stage.clone()),
        Destination::Submit => ("submit", String::new()),
        Destination::Pipeline { state } => ("pipeline", state.clone()),
        Destination::Control { pipeline_id } => ("control", pipeline_id.clone()),
    }
}

/// The destination of a stored `(kind, key)`.
pub fn dest_from(kind: &str, key: &str) -> Option<Destination> {
    let key = key.to_owned();
    Some(match kind {
        "job" => Destination::Job { stage: key },
        "events" => Destination::Events { stage: key },
        "dead_letter" => Destination::DeadLetter { stage: key },
        "submit" => Destination::Submit,
        "pipeline" => Destination::Pipeline { state: key },
        "control" => Destination::Control { pipeline_id: key },
        _ => return None,
    })
}

/// Writes one message to the outbox inside `tx`.
pub async fn enqueue(
    tx: &mut Tx,
    dest: &Destination,
    msg_id: Option<&str>,
    body: &str,
    now: Millis,
) -> Result<(), StoreError> {
    let (kind, key) = dest_parts(dest);
    tx.execute(
        "INSERT INTO coord_outbox (dest_kind, dest_key, msg_id, body, created_at) VALUES ($1, $2, $3, $4, $5)",
        params![kind, key, msg_id, body, now],
    )
    .await
    .map(drop)
}

struct Pending {
    id: i64,
    kind: String,
    key: String,
    attempts: u32,
    /// `None` when the stored destination is unknown: such a row is abandoned at once.
    msg: Option<OutMessage>,
}

fn decode_rows(rows: Vec<fleet_store::Row>) -> Result<Vec<Pending>, StoreError> {
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let kind: String = r.get("dest_kind")?;
        let key: String = r.get("dest_key")?;
        let body: String = r.get("body")?;
        let msg_id: Option<String> = r.get("msg_id")?;
        let msg = dest_from(&kind, &key).map(|dest| {
            let mut msg = OutMessage::new(dest, body.into_bytes());
            msg.msg_id = msg_id;
            msg
        });
        let attempts: i64 = r.get("attempts")?;
        out.push(Pending {
            id: r.get("id")?,
            kind,
            key,
            attempts: u32::try_from(attempts.max(0)).unwrap_or(u32::MAX),
            msg,
        });
    }
    Ok(out)
}

/// Publishes every message, confirmed and bounded; returns each row's result by index.
async fn publish_all(
    broker: &Arc<dyn Broker>,
    pending: &[Pending],
) -> Vec<(usize, Result<(), String>)> {
    // Owned inputs: a stream of borrowed rows makes the relay future not `Send` for spawning.
    let work: Vec<(usize, Option<OutMessage>, String)> = pending
        .iter()
        .enumerate()
        .map(|(i, p)| (i, p.msg.clone(), p.kind.clone()))
        .collect();
    futures::stream::iter(work)
        .map(|(i, msg, kind)| {
            let broker = broker.clone();
            async move {
                let Some(msg) = msg else {
                    return (i, Err(format!("unknown destination kind `{kind}`")));
                };
                let out = match tokio::time::timeout(PUBLISH_TIMEOUT, broker.publish(msg)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no confirmation within {PUBLISH_TIMEOUT:?}")),
                };
                (i, out)
            }
        })
        .buffer_unordered(PUBLISH_CONCURRENCY)
        .collect()
        .await
}

async fn mark(tx: &mut Tx, ids: &[i64], now: Millis) -> Result<(), StoreError> {
    for chunk in ids.chunks(100) {
        let list = chunk
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        tx.execute(
            &format!("UPDATE coord_outbox SET published_at = $1 WHERE id IN ({list})"),
            params![now],
        )
        .await?;
    }
    Ok(())
}

/// `s` cut to at most [`MAX_ERROR_CHARS`] characters.
fn bounded(s: &str) -> String {
    match s.char_indices().nth(MAX_ERROR_CHARS) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_owned(),
    }
}

/// Gives up on a row: marks it abandoned and, for a job, ends the job `dead_lettered`
/// (`publish_failed`) through the state machine, so its item fails and its pipeline finalizes.
async fn abandon(
    tx: &mut Tx,
    p: &Pending,
    attempts: u32,
    error: &str,
    ctx: &IngestCtx,
    now: Millis,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE coord_outbox SET attempts = $2, last_error = $3, failed_at = $4 WHERE id = $1",
        params![p.id, attempts, error, now],
    )
    .await?;
    metrics::counter!(m::OUTBOX_ABANDONED, "kind" => kind_label(&p.kind)).increment(1);
    if p.kind != "job" {
        return Ok(());
    }
    let Some(Ok(job)) = p
        .msg
        .as_ref()
        .map(|m| fleet_protocol::decode_job(&m.body, usize::MAX))
    else {
        return Ok(()); // Not a job envelope: no job to fail.
    };
    let update = JobUpdate {
        log: serde_json::json!({
            "type": "job", "event": "dead_lettered", "source": "outbox",
            "job_id": job.job_id, "pipeline_id": job.pipeline_id, "stage": job.stage,
            "reason": PUBLISH_FAILED, "error": error, "attempt": 0,
        }),
        job_id: job.job_id,
        pipeline_id: job.pipeline_id,
        stage: job.stage,
        // Attempt 0: no worker ever had it; a delivery that did happen after all wins.
        attempt: 0,
        seq: 0,
        worker_id: None,
        at: now,
        target: JobState::DeadLettered,
        dl_reason: Some(PUBLISH_FAILED.to_owned()),
        error: Some(error.to_owned()),
        degraded: None,
    };
    apply_update(tx, &update, ctx, now).await.map(drop)
}

/// Drops the unpublished job rows of `pipeline_id`'s cancelled jobs inside `tx` (a cancelled
/// pipeline's jobs need not go out, and a row the broker refuses stops retrying at once).
/// Rows a relay is publishing right now are skipped, never waited for.
pub async fn drop_cancelled_jobs(
    tx: &mut Tx,
    pipeline_id: &str,
    now: Millis,
) -> Result<u64, StoreError> {
    let skip = match tx.kind() {
        StoreKind::Postgres => " FOR UPDATE SKIP LOCKED",
        StoreKind::Sqlite => "",
    };
    tx.execute(
        &format!(
            "UPDATE coord_outbox SET failed_at = $2, last_error = '{CANCELLED_BEFORE_PUBLISH}' \
             WHERE id IN (SELECT o.id FROM coord_outbox o WHERE o.published_at IS NULL AND o.failed_at IS NULL \
             AND o.dest_kind = 'job' AND o.msg_id IN \
             (SELECT job_id FROM coord_jobs WHERE pipeline_id = $1 AND state = 'cancelled'){skip})"
        ),
        params![pipeline_id, now],
    )
    .await
}

/// The metric label of a stored destination kind (a closed set).
fn kind_label(kind: &str) -> &'static str {
    match kind {
        "job" => "job",
        "events" => "events",
        "dead_letter" => "dead_letter",
        "submit" => "submit",
        "pipeline" => "pipeline",
        "control" => "control",
        _ => "unknown",
    }
}

/// What one relay round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayRound {
    /// Rows claimed.
    pub claimed: usize,
    /// Rows published.
    pub published: usize,
    /// Rows that failed and back off.
    pub retrying: usize,
    /// Rows given up.
    pub abandoned: usize,
    /// Publishes failed while the broker was disconnected: nothing was counted.
    pub broker_down: bool,
}

/// Records the outcome of a round inside `tx`: published rows, per-row backoff, abandonment.
async fn settle(
    tx: &mut Tx,
    pending: &[Pending],
    results: Vec<(usize, Result<(), String>)>,
    connected: bool,
    policy: &RelayPolicy,
    logs: &mut LogLimiter,
) -> Result<RelayRound, StoreError> {
    let now = now_ms();
    let mut round = RelayRound {
        claimed: pending.len(),
        ..RelayRound::default()
    };
    let mut ok = Vec::new();
    let mut retried = Vec::new();
    // Abandoning a job locks its pipeline and item rows: take them in job-id order, as event
    // ingestion does, so the two never wait on each other in a cycle.
    let mut results = results;
    // (pipeline id, job id), ingestion's order; a pipeline id never contains `/`.
    let order = |i: usize| {
        let job = pending[i].msg.as_ref().and_then(|m| m.msg_id.as_deref());
        (job.map(|j| j.split_once('/').map_or(j, |(p, _)| p)), job)
    };
    results.sort_by(|a, b| order(a.0).cmp(&order(b.0)));
    for (i, r) in results {
        let p = &pending[i];
        let error = match r {
            Ok(()) => {
                ok.push(p.id);
                continue;
            }
            Err(e) => bounded(&e),
        };
        if !connected && p.msg.is_some() {
            // An outage is not the row's fault: retry it when the broker is back.
            round.broker_down = true;
            continue;
        }
        metrics::counter!(m::OUTBOX_PUBLISH_FAILURES, "kind" => kind_label(&p.kind)).increment(1);
        let attempts = p.attempts.saturating_add(1);
        if attempts >= policy.max_attempts || p.msg.is_none() {
            abandon(tx, p, attempts, &error, &policy.ingest, now).await?;
            round.abandoned += 1;
            if let Some(held) = logs.allow(&format!("abandon {}:{error}", p.kind), Instant::now()) {
                tracing::error!(
                    outbox_id = p.id, kind = %p.kind, key = %p.key, attempts, error = %error,
                    similar_since_last_log = held,
                    "outbox: gave up publishing a row; a job row's item ends failed (publish_failed)"
                );
            }
        } else {
            let delay = policy.delay(attempts);
            let next = now.saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
            tx.execute(
                "UPDATE coord_outbox SET attempts = $2, last_error = $3, next_attempt_at = $4 WHERE id = $1",
                params![p.id, attempts, error.as_str(), next],
            )
            .await?;
            round.retrying += 1;
            retried.push(p.id);
            if let Some(held) = logs.allow(&format!("retry {}:{error}", p.kind), Instant::now()) {
                tracing::warn!(
                    outbox_id = p.id, kind = %p.kind, key = %p.key, attempts,
                    max_attempts = policy.max_attempts, retry_in = ?delay, error = %error,
                    similar_since_last_log = held,
                    "outbox: publish failed; the row backs off, others go on"
                );
            }
        }
    }
    mark(tx, &ok, now).await?;
    round.published = ok.len();
    // A job cancelled meanwhile needs no more tries (the cancellation skipped this row
    // because this relay held it).
    for chunk in retried.chunks(100) {
        let list = chunk
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        tx.execute(
            &format!(
                "UPDATE coord_outbox SET failed_at = $1, last_error = '{CANCELLED_BEFORE_PUBLISH}' \
                 WHERE id IN ({list}) AND dest_kind = 'job' AND EXISTS (SELECT 1 FROM coord_jobs j \
                 WHERE j.job_id = coord_outbox.msg_id AND j.state = 'cancelled')"
            ),
            params![now],
        )
        .await?;
    }
    Ok(round)
}

/// Due rows, oldest first: backed-off rows wait in place while healthy rows pass them.
const SELECT_PENDING: &str = "SELECT id, dest_kind, dest_key, msg_id, body, attempts FROM coord_outbox \
     WHERE published_at IS NULL AND failed_at IS NULL AND next_attempt_at <= $1 ORDER BY id LIMIT $2";

/// Relays one batch of due rows.
pub async fn relay_once(
    store: &Store,
    broker: &Arc<dyn Broker>,
    policy: &RelayPolicy,
    logs: &mut LogLimiter,
) -> anyhow::Result<RelayRound> {
    if store.kind() == StoreKind::Sqlite {
        // A single replica: claim nothing, and do not hold the only connection while publishing.
        let rows = store
            .query(SELECT_PENDING, params![now_ms(), RELAY_BATCH])
            .await?;
        let pending = decode_rows(rows)?;
        let results = publish_all(broker, &pending).await;
        let connected = broker.is_connected();
        let mut tx = store.begin().await?;
        let round = settle(&mut tx, &pending, results, connected, policy, logs).await?;
        tx.commit().await?;
        return Ok(round);
    }
    let mut tx = store.begin().await?;
    let sql = format!("{SELECT_PENDING}{}", store.skip_locked());
    let rows = tx.query(&sql, params![now_ms(), RELAY_BATCH]).await?;
    let pending = decode_rows(rows)?;
    let results = publish_all(broker, &pending).await;
    let connected = broker.is_connected();
    let round = settle(&mut tx, &pending, results, connected, policy, logs).await?;
    tx.commit().await?;
    Ok(round)
}

/// Refreshes `fleet_outbox_rows{state}`: unpublished rows waiting, backing off, abandoned.
async fn refresh_gauges(store: &Store) -> Result<(), StoreError> {
    let r = store
        .query_one(
            "SELECT \
             CAST(COALESCE(SUM(CASE WHEN failed_at IS NULL AND attempts = 0 THEN 1 ELSE 0 END), 0) AS BIGINT) AS pending, \
             CAST(COALESCE(SUM(CASE WHEN failed_at IS NULL AND attempts > 0 THEN 1 ELSE 0 END), 0) AS BIGINT) AS retrying, \
             CAST(COALESCE(SUM(CASE WHEN failed_at IS NOT NULL THEN 1 ELSE 0 END), 0) AS BIGINT) AS abandoned \
             FROM coord_outbox WHERE published_at IS NULL",
            &[],
        )
        .await?;
    for state in ["pending", "retrying", "abandoned"] {
        let n: i64 = r.get(state)?;
        metrics::gauge!(m::OUTBOX_ROWS, "state" => state).set(n as f64);
    }
    Ok(())
}

/// Runs the relay until `shutdown`: on every nudge and every 250 ms, publishes until no row is due.
pub async fn run_relay(
    store: Store,
    broker: Arc<dyn Broker>,
    policy: RelayPolicy,
    nudge: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut logs = LogLimiter::new(LOG_INTERVAL);
    let mut backoff = RELAY_POLL;
    let mut gauges_at: Option<Instant> = None;
    loop {
        tokio::select! {
            () = nudge.notified() => {}
            () = tokio::time::sleep(backoff) => {}
            () = shutdown.cancelled() => return,
        }
        loop {
            match relay_once(&store, &broker, &policy, &mut logs).await {
                Ok(round) if round.broker_down => {
                    backoff = (backoff * 2).min(OUTAGE_BACKOFF_MAX);
                    if let Some(held) = logs.allow("broker down", Instant::now()) {
                        tracing::warn!(
                            similar_since_last_log = held,
                            "outbox relay: the broker is disconnected; rows wait, nothing is counted"
                        );
                    }
                    break;
                }
                Ok(round) => {
                    backoff = RELAY_POLL;
                    // A full batch may hide more due rows (failed ones now back off): go on.
                    if (round.claimed as i64) < RELAY_BATCH {
                        break;
                    }
                }
                Err(e) => {
                    let e = format!("{e:#}");
                    if let Some(held) = logs.allow(&format!("db {e}"), Instant::now()) {
                        tracing::warn!(error = %e, similar_since_last_log = held, "outbox relay: database error; will retry");
                    }
                    backoff = (backoff * 2).min(OUTAGE_BACKOFF_MAX);
                    break;
                }
            }
            if shutdown.is_cancelled() {
                return;
            }
        }
        if gauges_at.is_none_or(|t| t.elapsed() >= GAUGE_EVERY) {
            gauges_at = Some(Instant::now());
            if let Err(e) = refresh_gauges(&store).await {
                tracing::debug!(error = %e, "outbox gauges not refreshed; next round retries");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_round_trip() {
        for d in [
            Destination::Job { stage: "a".into() },
            Destination::Events { stage: "a".into() },
            Destination::DeadLetter { stage: "a".into() },
            Destination::Submit,
            Destination::Pipeline {
                state: "completed".into(),
            },
            Destination::Control {
                pipeline_id: "p".into(),
            },
        ] {
            let (k, v) = dest_parts(&d);
            assert_eq!(dest_from(k, &v), Some(d));
        }
        assert_eq!(dest_from("nope", ""), None);
    }

    #[test]
    fn per_row_backoff_doubles_and_is_capped() {
        let p = RelayPolicy {
            max_attempts: 10,
            backoff: Duration::from_secs(1),
            ingest: IngestCtx {
                heartbeat_ms: 1000,
                default_timeout_ms: 1000,
                default_max_attempts: 1,
            },
        };
        let d: Vec<u64> = (1..=9).map(|a| p.delay(a).as_secs()).collect();
        assert_eq!(d, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(p.delay(u32::MAX), RETRY_MAX);
    }

    #[test]
    fn errors_are_bounded_on_char_boundaries() {
        assert_eq!(bounded("short"), "short");
        let long = "é".repeat(MAX_ERROR_CHARS + 10);
        assert_eq!(bounded(&long).chars().count(), MAX_ERROR_CHARS + 1);
        assert_eq!(kind_label("weird"), "unknown");
    }
}
