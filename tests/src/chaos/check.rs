//! The end state of a scenario, read from the coordinator's and the writer's tables, and
//! the campaign's assertions over it.

use std::collections::{BTreeMap, BTreeSet};

use fleet_store::params;

use crate::world::World;

/// What the tables say at the end of a scenario.
#[derive(Debug, Clone, Default)]
pub struct EndState {
    /// Items submitted.
    pub expected: usize,
    /// Items the coordinator stored, by state.
    pub states: BTreeMap<String, usize>,
    /// Items that succeeded.
    pub ok: usize,
    /// Distinct items with a dead letter.
    pub dead_lettered: usize,
    /// Items with a dead letter that still succeeded (one row): the dead letter was a
    /// redelivered copy of a job whose earlier attempt had passed the item on.
    pub superseded: usize,
    /// Failed items without an archived dead letter (yet: see `run_scenario`).
    pub unarchived: usize,
    /// Dead letters by `stage:reason`.
    pub reasons: BTreeMap<String, usize>,
    /// Items submitted but not terminal, or succeeded without a row.
    pub lost: usize,
    /// Items with more than one row.
    pub duplicated: usize,
    /// Milliseconds from the last item's terminal transition to finalization.
    pub final_lag_ms: Option<i64>,
    /// The pipeline's state.
    pub pipeline_state: String,
    /// Finalization messages (exactly once: 1).
    pub finalizations: i64,
    /// Every assertion that failed.
    pub violations: Vec<String>,
}

fn s(r: &fleet_store::Row, c: &str) -> String {
    r.get::<Option<String>>(c)
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Reads the end state of `pid` (`expected` items) and checks it; `in_flight` is the sum
/// of the workers' `fleet_jobs_in_flight` at the end (`None`: a worker did not answer).
pub async fn end_state(w: &World, pid: &str, expected: usize, in_flight: Option<f64>) -> EndState {
    let mut e = EndState {
        expected,
        ..EndState::default()
    };
    let db = &w.store;
    let items = db
        .query(
            "SELECT item_id, state, outcome, failed_stage, reason FROM coord_items WHERE pipeline_id = $1",
            params![pid],
        )
        .await
        .unwrap_or_default();
    let mut succeeded = BTreeSet::new();
    let mut failed = BTreeSet::new();
    let mut running = 0usize;
    let mut about = BTreeMap::new();
    for r in &items {
        let (id, state) = (s(r, "item_id"), s(r, "state"));
        about.insert(
            id.clone(),
            format!(
                "{id}: {state} {} {} {}",
                s(r, "outcome"),
                s(r, "failed_stage"),
                s(r, "reason").chars().take(120).collect::<String>()
            ),
        );
        *e.states.entry(state.clone()).or_default() += 1;
        match state.as_str() {
            "succeeded" => {
                succeeded.insert(id);
            }
            "failed" => {
                failed.insert(id);
            }
            "running" => running += 1,
            _ => {}
        }
    }
    e.ok = succeeded.len();
    let rows = w.rows(pid).await;
    e.duplicated = rows.values().filter(|n| **n > 1).count();
    let written: BTreeSet<String> = rows.keys().cloned().collect();
    let missing_rows = succeeded.difference(&written).count();
    e.lost = expected.saturating_sub(items.len()) + running + missing_rows;

    let dead = db
        .query(
            "SELECT item_id, stage, reason FROM coord_dead_letters WHERE pipeline_id = $1",
            params![pid],
        )
        .await
        .unwrap_or_default();
    let mut dead_items = BTreeSet::new();
    for r in &dead {
        *e.reasons
            .entry(format!("{}:{}", s(r, "stage"), s(r, "reason")))
            .or_default() += 1;
        dead_items.insert(s(r, "item_id"));
    }
    e.dead_lettered = dead_items.len();

    if let Ok(p) = db
        .query_one(
            "SELECT p.state, p.finalized_at, \
             (SELECT MAX(updated_at) FROM coord_items i WHERE i.pipeline_id = p.pipeline_id) AS last \
             FROM coord_pipelines p WHERE p.pipeline_id = $1",
            params![pid],
        )
        .await
    {
        e.pipeline_state = s(&p, "state");
        let fin = p.get::<Option<i64>>("finalized_at").ok().flatten();
        let last = p.get::<Option<i64>>("last").ok().flatten();
        e.final_lag_ms = fin.zip(last).map(|(f, l)| f - l);
    }
    e.finalizations = w.final_messages(pid).await;

    // The assertions.
    let v = &mut e.violations;
    if items.len() != expected {
        v.push(format!("{} of {expected} items stored", items.len()));
    }
    if running > 0 {
        v.push(format!("{running} items not terminal"));
    }
    // The first few offending items, with what the coordinator says of them.
    let name = |ids: Vec<&String>| -> String {
        ids.iter()
            .take(5)
            .map(|i| {
                about
                    .get(*i)
                    .cloned()
                    .unwrap_or_else(|| format!("{i}: unknown"))
            })
            .collect::<Vec<_>>()
            .join(" | ")
    };
    if written != succeeded {
        let extra: Vec<&String> = written.difference(&succeeded).collect();
        v.push(format!(
            "rows ≠ succeeded items: {} succeeded without a row [{}], {} rows of items not succeeded [{}]",
            missing_rows,
            name(succeeded.difference(&written).collect()),
            extra.len(),
            name(extra.clone())
        ));
    }
    if e.duplicated > 0 {
        v.push(format!("{} items written more than once", e.duplicated));
    }
    // Dead letters = failed items, except dead letters superseded by the item's success.
    let superseded: BTreeSet<String> = dead_items
        .difference(&failed)
        .filter(|i| succeeded.contains(*i) && rows.get(*i) == Some(&1))
        .cloned()
        .collect();
    e.superseded = superseded.len();
    let unexplained: Vec<&String> = dead_items
        .difference(&failed)
        .filter(|i| !superseded.contains(*i))
        .collect();
    e.unarchived = failed.difference(&dead_items).count();
    if !failed.is_subset(&dead_items) || !unexplained.is_empty() {
        v.push(format!(
            "dead letters ≠ failed items: {} failed without a dead letter [{}], {} dead-lettered neither failed nor succeeded [{}]",
            failed.difference(&dead_items).count(),
            name(failed.difference(&dead_items).collect()),
            unexplained.len(),
            name(unexplained.clone())
        ));
    }
    match in_flight {
        Some(0.0) => {}
        Some(n) => v.push(format!("{n} jobs still in flight")),
        None => v.push("in-flight unknown: a worker did not answer /metrics".into()),
    }
    if e.pipeline_state == "running" || e.pipeline_state.is_empty() {
        v.push(format!("pipeline not finalized ({:?})", e.pipeline_state));
    }
    if e.finalizations != 1 {
        v.push(format!("finalized {} times", e.finalizations));
    }
    e
}
