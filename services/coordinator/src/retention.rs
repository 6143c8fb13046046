//! Retention (`FLEET_RETENTION`): finalized pipelines older than the setting are deleted with
//! their items, jobs, events and archived dead letters, a bounded batch per transaction, so
//! the tables stop growing without one huge delete locking them. A pipeline that is not
//! finalized (state `running`) is never deleted, however old.

use std::time::Duration;

use fleet_store::{Store, StoreError, Value, params};

use crate::db::for_update;
use crate::metrics as m;
use crate::model::now_ms;

/// Pipelines deleted per transaction.
pub const BATCH: usize = 100;
/// Batches per run at most: a backlog is worked off over several runs, never in one long one.
pub const MAX_BATCHES: usize = 20;
/// How often the sweeper runs retention (it is housekeeping, not state).
pub const EVERY: Duration = Duration::from_secs(60);

/// The tables a pipeline's rows live in, children first.
const CHILD_TABLES: [&str; 4] = [
    "coord_events",
    "coord_jobs",
    "coord_items",
    "coord_dead_letters",
];

/// How long finalized pipelines are kept (`None`: for ever). An alias, so clap takes the
/// whole `Option` from [`parse`] instead of treating the setting as optional.
pub type Keep = Option<Duration>;

/// Parses `FLEET_RETENTION`: a duration (`30d`), or `0` / `off` to keep everything.
pub fn parse(s: &str) -> Result<Keep, String> {
    match s.trim() {
        "0" | "off" | "none" => Ok(None),
        t => match humantime::parse_duration(t) {
            Ok(d) if d.is_zero() => Ok(None),
            Ok(d) => Ok(Some(d)),
            Err(e) => Err(format!(
                "`{s}`: {e} (give a duration like 30d, or off to keep everything)"
            )),
        },
    }
}

/// What one run deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Pipelines deleted.
    pub pipelines: u64,
    /// Rows deleted in the other tables (items, jobs, events, dead letters).
    pub rows: u64,
}

/// Deletes pipelines finalized before `now - keep`, `BATCH` per transaction, at most
/// `MAX_BATCHES` batches; then dead letters without a pipeline archived before the cutoff.
pub async fn prune(store: &Store, keep: Duration) -> Result<Pruned, StoreError> {
    let cutoff = now_ms() - i64::try_from(keep.as_millis()).unwrap_or(i64::MAX / 2);
    let mut total = Pruned::default();
    for _ in 0..MAX_BATCHES {
        let n = prune_batch(store, cutoff, &mut total).await?;
        if n < BATCH {
            break;
        }
    }
    // Dead letters that never belonged to a pipeline (rejected submissions), bounded too.
    let orphans = store
        .execute(
            &format!(
                "DELETE FROM coord_dead_letters WHERE id IN (SELECT id FROM coord_dead_letters \
                 WHERE pipeline_id IS NULL AND archived_at < $1 LIMIT {})",
                BATCH * 10
            ),
            params![cutoff],
        )
        .await?;
    count("coord_dead_letters", orphans);
    total.rows += orphans;
    Ok(total)
}

async fn prune_batch(store: &Store, cutoff: i64, total: &mut Pruned) -> Result<usize, StoreError> {
    let mut tx = store.begin().await?;
    let select = format!(
        "SELECT pipeline_id FROM coord_pipelines WHERE state <> 'running' \
         AND finalized_at IS NOT NULL AND finalized_at < $1 ORDER BY pipeline_id LIMIT {BATCH}{}",
        for_update(&tx)
    );
    let ids: Vec<String> = tx
        .query(&select, params![cutoff])
        .await?
        .iter()
        .map(|r| r.get("pipeline_id"))
        .collect::<Result<_, _>>()?;
    if ids.is_empty() {
        tx.rollback().await?;
        return Ok(0);
    }
    let marks = (1..=ids.len())
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let args: Vec<Value> = ids.iter().map(|s| Value::from(s.as_str())).collect();
    let mut deleted = Vec::new();
    for table in CHILD_TABLES.iter().chain(&["coord_pipelines"]) {
        let n = tx
            .execute(
                &format!("DELETE FROM {table} WHERE pipeline_id IN ({marks})"),
                &args,
            )
            .await?;
        deleted.push((*table, n));
    }
    tx.commit().await?;
    for (table, n) in deleted {
        count(table, n);
        if table == "coord_pipelines" {
            total.pipelines += n;
        } else {
            total.rows += n;
        }
    }
    Ok(ids.len())
}

fn count(table: &'static str, n: u64) {
    if n > 0 {
        metrics::counter!(m::RETENTION_DELETED, "table" => table).increment(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_parses_durations_and_off() {
        assert_eq!(parse("30d"), Ok(Some(Duration::from_secs(30 * 86_400))));
        assert_eq!(parse("off"), Ok(None));
        assert_eq!(parse("0"), Ok(None));
        assert!(parse("soon").is_err());
    }
}
