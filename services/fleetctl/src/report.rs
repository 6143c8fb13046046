//! Reports as people read them: the pipeline report, pipeline lists and queue
//! depths rendered as aligned tables.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::client::truncate;

/// Job states in the order a pipeline moves through them.
pub const JOB_STATES: &[&str] = &[
    "queued",
    "running",
    "retrying",
    "succeeded",
    "dead_lettered",
    "skipped",
    "cancelled",
    "expired",
];
/// Job states that end a job.
pub const TERMINAL_JOB_STATES: &[&str] = &[
    "succeeded",
    "dead_lettered",
    "skipped",
    "cancelled",
    "expired",
];
/// Items listed by default before the list is cut to unsuccessful ones.
const MAX_ITEMS: usize = 50;
/// The usual stages, shown first and in this order.
const KNOWN_STAGES: &[&str] = &["analyze", "summarize", "write"];

/// A stalled job.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stalled {
    /// The job.
    pub job_id: String,
    /// Its stage.
    pub stage: String,
    /// `worker_lost`, `no_progress`, `no_consumer` or `overdue`.
    pub kind: String,
    /// Since when.
    #[serde(default)]
    pub since: Option<String>,
    /// The worker that ran it last.
    #[serde(default)]
    pub worker_id: Option<String>,
}

/// One item's outcome.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ItemReport {
    /// The item.
    pub item_id: String,
    /// Its state.
    pub state: String,
    /// How it ended.
    #[serde(default)]
    pub outcome: Option<String>,
    /// The stage that ended it, when it did not succeed.
    #[serde(default)]
    pub failed_stage: Option<String>,
    /// Why.
    #[serde(default)]
    pub reason: Option<String>,
    /// Why it succeeded degraded (analyzers failed, summary by fallback, stage skipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
}

/// `GET /v1/pipelines/{id}` and the SSE `final` event.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// Pipeline id.
    pub pipeline_id: String,
    /// Pipeline state.
    pub state: String,
    /// Creation time.
    #[serde(default)]
    pub created_at: Option<String>,
    /// Finalization time.
    #[serde(default)]
    pub finalized_at: Option<String>,
    /// Deadline.
    #[serde(default)]
    pub deadline_at: Option<String>,
    /// Finalization reason.
    #[serde(default)]
    pub reason: Option<String>,
    /// The pipeline this one replays.
    #[serde(default)]
    pub replay_of: Option<String>,
    /// Items in all.
    #[serde(default)]
    pub items_total: i64,
    /// Items finished.
    #[serde(default)]
    pub items_terminal: i64,
    /// Items that succeeded degraded.
    #[serde(default)]
    pub items_degraded: i64,
    /// Job counts by stage and job state.
    #[serde(default)]
    pub stages: BTreeMap<String, BTreeMap<String, i64>>,
    /// Stalled jobs.
    #[serde(default)]
    pub stalled: Vec<Stalled>,
    /// Per-item outcomes.
    #[serde(default)]
    pub items: Vec<ItemReport>,
}

/// Renders rows under headers as space-aligned columns.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                let pad = widths[i].saturating_sub(c.chars().count());
                let _ = write!(s, "{c}{}  ", " ".repeat(pad));
            }
        }
        s.trim_end().to_owned()
    };
    let mut out = line(headers.to_vec());
    for r in rows {
        out.push('\n');
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// Sort key of a stage: the usual ones first, in pipeline order, then by name.
pub fn stage_rank(stage: &str) -> (usize, &str) {
    (
        KNOWN_STAGES
            .iter()
            .position(|k| *k == stage)
            .unwrap_or(usize::MAX),
        stage,
    )
}

/// Stage names ordered by [`stage_rank`].
pub fn ordered_stages<'a>(stages: impl IntoIterator<Item = &'a String>) -> Vec<&'a String> {
    let mut v: Vec<&String> = stages.into_iter().collect();
    v.sort_by(|a, b| stage_rank(a).cmp(&stage_rank(b)));
    v
}

fn duration_between(a: Option<&str>, b: Option<&str>) -> Option<String> {
    let a = chrono::DateTime::parse_from_rfc3339(a?).ok()?;
    let b = chrono::DateTime::parse_from_rfc3339(b?).ok()?;
    let ms = u64::try_from((b - a).num_milliseconds()).ok()?;
    Some(humantime::format_duration(std::time::Duration::from_millis(ms)).to_string())
}

/// The stage table: one row per stage, one column per job state present.
pub fn stage_table(stages: &BTreeMap<String, BTreeMap<String, i64>>) -> String {
    let mut states: Vec<&str> = JOB_STATES
        .iter()
        .copied()
        .filter(|s| stages.values().any(|m| m.get(*s).is_some_and(|n| *n > 0)))
        .collect();
    for m in stages.values() {
        for k in m.keys() {
            if !states.contains(&k.as_str()) {
                states.push(k);
            }
        }
    }
    let mut headers = vec!["STAGE"];
    let upper: Vec<String> = states.iter().map(|s| s.to_uppercase()).collect();
    headers.extend(upper.iter().map(String::as_str));
    let rows: Vec<Vec<String>> = ordered_stages(stages.keys())
        .into_iter()
        .map(|stage| {
            let m = &stages[stage];
            let mut row = vec![stage.clone()];
            row.extend(
                states
                    .iter()
                    .map(|s| m.get(*s).copied().unwrap_or(0).to_string()),
            );
            row
        })
        .collect();
    table(&headers, &rows)
}

/// The full report as text; `all_items` lists every item.
pub fn render(r: &Report, all_items: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "pipeline   {}", r.pipeline_id);
    match &r.reason {
        Some(reason) => {
            let _ = writeln!(out, "state      {} ({reason})", r.state);
        }
        None => {
            let _ = writeln!(out, "state      {}", r.state);
        }
    }
    let degraded = if r.items_degraded > 0 {
        format!(", {} degraded", r.items_degraded)
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "items      {}/{} finished{degraded}",
        r.items_terminal, r.items_total
    );
    if let Some(c) = &r.created_at {
        let _ = writeln!(out, "created    {c}");
    }
    if let Some(f) = &r.finalized_at {
        match duration_between(r.created_at.as_deref(), Some(f)) {
            Some(took) => {
                let _ = writeln!(out, "finalized  {f} (after {took})");
            }
            None => {
                let _ = writeln!(out, "finalized  {f}");
            }
        }
    }
    if let Some(d) = &r.deadline_at {
        let _ = writeln!(out, "deadline   {d}");
    }
    if let Some(o) = &r.replay_of {
        let _ = writeln!(out, "replay of  {o}");
    }
    if !r.stages.is_empty() {
        let _ = writeln!(out, "\n{}", stage_table(&r.stages));
    }
    if !r.stalled.is_empty() {
        let rows: Vec<Vec<String>> = r
            .stalled
            .iter()
            .map(|s| {
                vec![
                    s.job_id.clone(),
                    s.stage.clone(),
                    s.kind.clone(),
                    s.since.clone().unwrap_or_default(),
                    s.worker_id.clone().unwrap_or_default(),
                ]
            })
            .collect();
        let _ = writeln!(
            out,
            "\nstalled jobs:\n{}",
            table(&["JOB", "STAGE", "KIND", "SINCE", "WORKER"], &rows)
        );
    }
    if !r.items.is_empty() {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for i in &r.items {
            *counts.entry(i.state.as_str()).or_default() += 1;
        }
        let summary: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
        let shown: Vec<&ItemReport> = if all_items || r.items.len() <= MAX_ITEMS {
            r.items.iter().collect()
        } else {
            r.items
                .iter()
                .filter(|i| i.state != "succeeded" || i.degraded.is_some())
                .take(MAX_ITEMS)
                .collect()
        };
        let any_degraded = shown.iter().any(|i| i.degraded.is_some());
        let _ = writeln!(out, "\nitems: {}", summary.join(", "));
        if !shown.is_empty() {
            let rows: Vec<Vec<String>> = shown
                .iter()
                .map(|i| {
                    let mut row = vec![
                        i.item_id.clone(),
                        i.state.clone(),
                        i.outcome.clone().unwrap_or_default(),
                        i.failed_stage.clone().unwrap_or_default(),
                    ];
                    if any_degraded {
                        row.push(truncate(i.degraded.as_deref().unwrap_or_default(), 100));
                    }
                    row.push(truncate(i.reason.as_deref().unwrap_or_default(), 100));
                    row
                })
                .collect();
            let mut headers = vec!["ITEM", "STATE", "OUTCOME", "FAILED_STAGE"];
            if any_degraded {
                headers.push("DEGRADED");
            }
            headers.push("REASON");
            let _ = writeln!(out, "{}", table(&headers, &rows));
        }
        if shown.len() < r.items.len() {
            let _ = writeln!(
                out,
                "({} more items not shown; --all-items lists them)",
                r.items.len() - shown.len()
            );
        }
    }
    out.trim_end().to_owned()
}

/// `GET /v1/pipelines` rendered.
pub fn render_list(v: &serde_json::Value) -> String {
    let rows: Vec<Vec<String>> = v["pipelines"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|p| {
            vec![
                text(&p["pipeline_id"]),
                text(&p["state"]),
                format!("{}/{}", text(&p["items_terminal"]), text(&p["items_total"])),
                text(&p["created_at"]),
                text(&p["finalized_at"]),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "no pipelines".into();
    }
    let mut out = table(
        &["PIPELINE", "STATE", "ITEMS", "CREATED", "FINALIZED"],
        &rows,
    );
    if let Some(next) = v["next"].as_str() {
        let _ = write!(out, "\nmore: fleetctl list --after {next}");
    }
    out
}

/// `GET /v1/queues` rendered.
pub fn render_queues(v: &serde_json::Value) -> String {
    let rows: Vec<Vec<String>> = v["queues"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|q| {
            vec![
                text(&q["stage"]),
                text(&q["depth"]),
                text(&q["retrying"]),
                text(&q["workers_alive"]),
            ]
        })
        .collect();
    let mut out = if rows.is_empty() {
        "no queues".to_owned()
    } else {
        table(&["STAGE", "DEPTH", "RETRYING", "WORKERS"], &rows)
    };
    match v["parked"].as_u64() {
        Some(0) | None => {}
        Some(n) => {
            out.push_str(&format!(
                "\nparked: {n} control message(s) (fix the cause, then `fleetctl parked replay`)"
            ));
        }
    }
    out
}

/// A JSON value as a table cell (`-` for null).
pub fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "-".into(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_show_waiting_retries() {
        let v = serde_json::json!({"queues": [
            {"stage": "summarize", "depth": 0, "retrying": 1855, "workers_alive": 2}
        ]});
        let out = render_queues(&v);
        assert!(out.contains("RETRYING"), "{out}");
        assert!(out.contains("1855"), "{out}");
    }

    #[test]
    fn tables_align() {
        let t = table(&["A", "LONG"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    LONG\nxyz  1");
    }

    #[test]
    fn report_renders() {
        let r: Report = serde_json::from_value(serde_json::json!({
            "pipeline_id": "p", "state": "partial_success", "reason": "1 item failed",
            "created_at": "2024-01-01T00:00:00.000Z", "finalized_at": "2024-01-01T00:00:02.500Z",
            "items_total": 2, "items_terminal": 2,
            "stages": {"write": {"succeeded": 1}, "analyze": {"succeeded": 2}, "summarize": {"succeeded": 1, "dead_lettered": 1}},
            "stalled": [],
            "items": [{"item_id": "a", "state": "succeeded"}, {"item_id": "b", "state": "failed", "failed_stage": "summarize", "reason": "timeout"}]
        }))
        .unwrap();
        let s = render(&r, false);
        assert!(s.contains("partial_success (1 item failed)"), "{s}");
        assert!(s.contains("after 2s 500ms"), "{s}");
        let analyze = s.find("analyze").unwrap();
        assert!(
            analyze < s.find("summarize").unwrap()
                && s.find("summarize").unwrap() < s.find("write").unwrap()
        );
        assert!(s.contains("DEAD_LETTERED"));
        assert!(s.contains("1 failed, 1 succeeded"), "{s}");
    }

    #[test]
    fn degraded_items_are_counted_and_named() {
        let r: Report = serde_json::from_value(serde_json::json!({
            "pipeline_id": "p", "state": "completed",
            "reason": "all 2 items succeeded, 1 item degraded: analyzers sleeper, exit1 failed",
            "items_total": 2, "items_terminal": 2, "items_degraded": 1,
            "items": [{"item_id": "a", "state": "succeeded"},
                      {"item_id": "b", "state": "succeeded", "degraded": "analyzers sleeper, exit1 failed"}]
        }))
        .unwrap();
        let s = render(&r, false);
        assert!(s.contains("items      2/2 finished, 1 degraded"), "{s}");
        assert!(s.contains("DEGRADED"), "{s}");
        assert!(s.contains("b     succeeded"), "{s}");
        assert!(
            s.matches("analyzers sleeper, exit1 failed").count() == 2,
            "{s}"
        );
        // No column when nothing is degraded (older coordinators send no field).
        let plain: Report = serde_json::from_value(serde_json::json!({
            "pipeline_id": "p", "state": "completed", "items": [{"item_id": "a", "state": "succeeded"}]
        }))
        .unwrap();
        assert!(!render(&plain, false).contains("DEGRADED"));
    }
}
