//! The transactional outbox: messages are written in the same transaction as
//! the state that causes them, and a relay publishes them (confirmed) and
//! marks them published. A crash between commit and publish loses nothing; a
//! crash between publish and mark publishes again, which is harmless (the
//! message id de-duplicates on NATS, and every consumer is idempotent).
//!
//! On PostgreSQL each relay batch claims its rows with `FOR UPDATE SKIP
//! LOCKED`, so several replicas relay without publishing a row twice at once.

use std::sync::Arc;
use std::time::Duration;

use fleet_core::{Broker, Destination, OutMessage};
use fleet_store::{Store, StoreError, StoreKind, Tx, params};
use futures::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::model::{Millis, now_ms};

/// Rows claimed per relay batch.
pub const RELAY_BATCH: i64 = 256;
/// Publishes in flight at once within a batch.
const PUBLISH_CONCURRENCY: usize = 32;
/// Longest wait for one publish confirmation.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(15);
/// How often the relay looks even without a nudge (another replica may have written rows).
const RELAY_POLL: Duration = Duration::from_millis(250);
/// Published rows are kept this long for inspection, then deleted by the sweeper.
pub const KEEP_PUBLISHED_MS: Millis = 3_600_000;

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
    msg: OutMessage,
}

fn decode_rows(rows: Vec<fleet_store::Row>) -> Result<Vec<Pending>, StoreError> {
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let id: i64 = r.get("id")?;
        let kind: String = r.get("dest_kind")?;
        let key: String = r.get("dest_key")?;
        let Some(dest) = dest_from(&kind, &key) else {
            tracing::error!(id, kind, "outbox row with an unknown destination; skipped");
            continue;
        };
        let body: String = r.get("body")?;
        let mut msg = OutMessage::new(dest, body.into_bytes());
        msg.msg_id = r.get("msg_id")?;
        out.push(Pending { id, msg });
    }
    Ok(out)
}

/// Publishes every message, confirmed and bounded; returns the ids that went out.
async fn publish_all(
    broker: &Arc<dyn Broker>,
    pending: Vec<Pending>,
) -> (Vec<i64>, Option<String>) {
    let results: Vec<(i64, Result<(), String>)> = futures::stream::iter(pending)
        .map(|p| {
            let broker = broker.clone();
            async move {
                let out = match tokio::time::timeout(PUBLISH_TIMEOUT, broker.publish(p.msg)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no confirmation within {PUBLISH_TIMEOUT:?}")),
                };
                (p.id, out)
            }
        })
        .buffer_unordered(PUBLISH_CONCURRENCY)
        .collect()
        .await;
    let mut ok = Vec::new();
    let mut err = None;
    for (id, r) in results {
        match r {
            Ok(()) => ok.push(id),
            Err(e) => err = Some(e),
        }
    }
    (ok, err)
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

const SELECT_PENDING: &str = "SELECT id, dest_kind, dest_key, msg_id, body FROM coord_outbox \
     WHERE published_at IS NULL ORDER BY id LIMIT $1";

/// Relays one batch; returns how many rows were published and the last publish error.
pub async fn relay_once(
    store: &Store,
    broker: &Arc<dyn Broker>,
) -> anyhow::Result<(usize, Option<String>)> {
    if store.kind() == StoreKind::Sqlite {
        // A single replica: claim nothing, and do not hold the only connection while publishing.
        let rows = store.query(SELECT_PENDING, params![RELAY_BATCH]).await?;
        let pending = decode_rows(rows)?;
        let (ok, err) = publish_all(broker, pending).await;
        let mut tx = store.begin().await?;
        mark(&mut tx, &ok, now_ms()).await?;
        tx.commit().await?;
        return Ok((ok.len(), err));
    }
    let mut tx = store.begin().await?;
    let sql = format!("{SELECT_PENDING}{}", store.skip_locked());
    let rows = tx.query(&sql, params![RELAY_BATCH]).await?;
    let pending = decode_rows(rows)?;
    let (ok, err) = publish_all(broker, pending).await;
    mark(&mut tx, &ok, now_ms()).await?;
    tx.commit().await?;
    Ok((ok.len(), err))
}

/// Runs the relay until `shutdown`: on every nudge and every 250 ms, publishes until nothing is pending.
pub async fn run_relay(
    store: Store,
    broker: Arc<dyn Broker>,
    nudge: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut backoff = RELAY_POLL;
    loop {
        tokio::select! {
            () = nudge.notified() => {}
            () = tokio::time::sleep(backoff) => {}
            () = shutdown.cancelled() => return,
        }
        loop {
            match relay_once(&store, &broker).await {
                Ok((n, None)) => {
                    backoff = RELAY_POLL;
                    if (n as i64) < RELAY_BATCH {
                        break;
                    }
                }
                Ok((_, Some(e))) => {
                    tracing::warn!(error = %e, "outbox relay: publish failed; will retry");
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "outbox relay: database error; will retry");
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    break;
                }
            }
            if shutdown.is_cancelled() {
                return;
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
}
