//! The campaign's table: one row per scenario and broker, as Markdown.

use std::collections::BTreeMap;
use std::time::Duration;

use super::check::EndState;

/// One scenario's result.
#[derive(Debug, Clone)]
pub struct Row {
    /// `rabbitmq` or `nats`.
    pub broker: String,
    /// The scenario's name.
    pub scenario: String,
    /// The end state and its violations.
    pub end: EndState,
    /// Longest window with a backlog and no item becoming terminal.
    pub longest_stall: Duration,
    /// Processes that exited on their own and were started again.
    pub exits: Vec<String>,
    /// Processes SIGKILLed on purpose.
    pub kills: usize,
    /// Peak RSS per kind, bytes.
    pub peak_rss: BTreeMap<String, u64>,
    /// Wall time of the scenario.
    pub took: Duration,
    /// Failures outside the end state (a stuck run, a refused submission).
    pub errors: Vec<String>,
}

impl Row {
    /// Every violation of the row.
    pub fn violations(&self) -> Vec<String> {
        self.end
            .violations
            .iter()
            .chain(&self.errors)
            .cloned()
            .collect()
    }
}

/// The Markdown header of the table.
pub fn header() -> String {
    "| broker | scenario | items | ok | dead-lettered (stage:reason ×n) | lost | duplicated | last terminal → finalized | longest backlog without completion | exited non-zero, restarted | killed on purpose | peak RSS MiB coord / analyzer / summarizer / writer | took | verdict |\n\
     |---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        .to_owned()
}

fn mib(b: Option<&u64>) -> String {
    b.map_or("–".into(), |b| {
        format!("{:.0}", *b as f64 / (1024.0 * 1024.0))
    })
}

/// One Markdown row.
pub fn line(r: &Row) -> String {
    let e = &r.end;
    let reasons = if e.reasons.is_empty() {
        String::new()
    } else {
        let mut list: Vec<String> = e.reasons.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
        if e.superseded > 0 {
            list.push(format!("{} of the items succeeded after all", e.superseded));
        }
        format!(" ({})", list.join(", "))
    };
    let lag = e
        .final_lag_ms
        .map_or("–".into(), |ms| format!("{:.1} s", ms as f64 / 1000.0));
    let exits = if r.exits.is_empty() {
        "0".to_owned()
    } else {
        // `analyzer-3 (signal: 9 (SIGKILL)) → analyzer-5`: counted by kind and status.
        let mut by: BTreeMap<String, usize> = BTreeMap::new();
        for e in &r.exits {
            let kind = e.split('-').next().unwrap_or(e);
            let status = e
                .split_once(" (")
                .and_then(|(_, rest)| rest.rsplit_once(") →"))
                .map_or("", |(s, _)| s);
            *by.entry(format!("{kind} {status}")).or_default() += 1;
        }
        let list: Vec<String> = by.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
        format!("{}: {}", r.exits.len(), list.join(", "))
    };
    let v = r.violations();
    let verdict = if v.is_empty() {
        "ok".to_owned()
    } else {
        format!("**FAIL**: {}", v.join("; "))
    };
    format!(
        "| {} | {} | {} | {} | {}{} | {} | {} | {} | {:.1} s | {} | {} | {} / {} / {} / {} | {:.0} s | {} |",
        r.broker,
        r.scenario,
        e.expected,
        e.ok,
        e.dead_lettered,
        reasons,
        e.lost,
        e.duplicated,
        lag,
        r.longest_stall.as_secs_f64(),
        exits,
        r.kills,
        mib(r.peak_rss.get("coordinator")),
        mib(r.peak_rss.get("analyzer")),
        mib(r.peak_rss.get("summarizer")),
        mib(r.peak_rss.get("writer")),
        r.took.as_secs_f64(),
        verdict
    )
}
