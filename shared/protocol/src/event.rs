//! Progress events and heartbeats that workers send to the coordinator in batches.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::deadletter::DeadLetterReason;

/// What happened to a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// The handler started this attempt.
    Started,
    /// The handler reported progress.
    Progress {
        /// Units done.
        done: u64,
        /// Units in all, when known.
        total: Option<u64>,
        /// Short free text.
        #[serde(default)]
        note: String,
    },
    /// The attempt succeeded and its outputs were published.
    Succeeded,
    /// The attempt failed and the job will run again after `delay_ms`.
    Retrying {
        /// Delay before the next attempt.
        delay_ms: u64,
        /// The attempt's error (bounded).
        error: String,
    },
    /// The job was dead-lettered.
    DeadLettered {
        /// Why processing stopped.
        reason: DeadLetterReason,
        /// The last error (bounded).
        error: String,
    },
    /// The job's pipeline was cancelled; the job was acked without running.
    Cancelled,
    /// The job's deadline passed; it was acked without running.
    Expired,
}

impl EventKind {
    /// True for events that end a job (nothing follows them for this job).
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            EventKind::Succeeded
                | EventKind::DeadLettered { .. }
                | EventKind::Cancelled
                | EventKind::Expired
        )
    }
}

/// One job event. Order within a job is `(attempt, seq)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Event {
    /// Job the event is about.
    pub job_id: String,
    /// Pipeline of the job.
    pub pipeline_id: String,
    /// Stage that ran it.
    pub stage: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Sequence within the attempt, from 0.
    pub seq: u32,
    /// Worker that ran the attempt.
    pub worker_id: String,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
    /// On `succeeded` only: the attempt succeeded with less than the full result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded: Option<Degradation>,
}

/// Longest [`Degradation::detail`], in bytes.
pub const MAX_DEGRADATION_DETAIL: usize = 200;

/// How a succeeded job fell short of the full result (a closed set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DegradationKind {
    /// Optional command analyzers failed; the analysis is partial.
    AnalyzersFailed,
    /// A fallback provider produced the summary.
    SummaryFallback,
    /// Some chunks of an LLM summary failed and were summarized extractively.
    SummaryMixed,
    /// An optional stage failed and was skipped.
    StageSkipped,
    /// A kind this build does not know (sent by a newer worker).
    #[serde(other)]
    Other,
}

impl DegradationKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            DegradationKind::AnalyzersFailed => "analyzers_failed",
            DegradationKind::SummaryFallback => "summary_fallback",
            DegradationKind::SummaryMixed => "summary_mixed",
            DegradationKind::StageSkipped => "stage_skipped",
            DegradationKind::Other => "other",
        }
    }
}

/// A note that a job succeeded degraded: what kind, and a short detail (e.g. which analyzers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Degradation {
    /// What fell short.
    pub kind: DegradationKind,
    /// Short detail, at most [`MAX_DEGRADATION_DETAIL`] bytes (e.g. `sleeper, exit1`).
    #[serde(default)]
    pub detail: String,
}

impl Degradation {
    /// A note of `kind`; `detail` is cut to [`MAX_DEGRADATION_DETAIL`] bytes on a char boundary.
    pub fn new(kind: DegradationKind, detail: &str) -> Degradation {
        Degradation {
            kind,
            detail: bounded(detail, MAX_DEGRADATION_DETAIL),
        }
    }

    /// The same note with its detail bounded (for notes decoded from the wire).
    pub fn bounded(mut self) -> Degradation {
        self.detail = bounded(&self.detail, MAX_DEGRADATION_DETAIL);
        self
    }
}

impl std::fmt::Display for Degradation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.kind {
            DegradationKind::AnalyzersFailed => "analyzers",
            DegradationKind::SummaryFallback => "summary by fallback",
            DegradationKind::SummaryMixed => "summary mixed",
            DegradationKind::StageSkipped => "skipped",
            DegradationKind::Other => "degraded",
        };
        let tail = match self.kind {
            DegradationKind::AnalyzersFailed => " failed",
            _ => "",
        };
        if self.detail.is_empty() {
            write!(f, "{what}{tail}")
        } else {
            write!(f, "{what} {}{tail}", self.detail)
        }
    }
}

fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// A job in flight on a worker, as reported by its heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InFlightJob {
    /// The job.
    pub job_id: String,
    /// Its pipeline.
    pub pipeline_id: String,
    /// Attempt running.
    pub attempt: u32,
    /// When the attempt started.
    pub started_at: DateTime<Utc>,
    /// When the handler last reported progress (or started).
    pub last_progress_at: DateTime<Utc>,
}

/// Worker liveness: sent every few seconds, also when idle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Heartbeat {
    /// Unique per process start.
    pub worker_id: String,
    /// Stage the worker serves.
    pub stage: String,
    /// When it was taken.
    pub at: DateTime<Utc>,
    /// Concurrency slots of the worker.
    pub slots: u32,
    /// Jobs running now.
    pub in_flight: Vec<InFlightJob>,
    /// Why intake is paused (a dependency it needs is unusable), while it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<String>,
}

/// What a worker publishes on the events subject: events, and maybe a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EventBatch {
    /// Wire format major version (`1`).
    #[schemars(extend("enum" = [1]))]
    pub v: u32,
    /// Sending worker.
    pub worker_id: String,
    /// Stage of the sending worker.
    pub stage: String,
    /// Job events, in the order they happened.
    #[serde(default)]
    pub events: Vec<Event>,
    /// A heartbeat, when one was due.
    #[serde(default)]
    pub heartbeat: Option<Heartbeat>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_wire_shape() {
        let e = Event {
            job_id: "p/i/s".into(),
            pipeline_id: "p".into(),
            stage: "s".into(),
            attempt: 2,
            seq: 0,
            worker_id: "w".into(),
            at: Utc::now(),
            kind: EventKind::Retrying {
                delay_ms: 1000,
                error: "boom".into(),
            },
            degraded: None,
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], "retrying");
        assert_eq!(v["delay_ms"], 1000);
        assert!(v.get("degraded").is_none(), "absent when not degraded");
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
        assert!(!back.kind.is_terminal());
        assert!(EventKind::Expired.is_terminal());
    }

    #[test]
    fn degraded_success_wire_shape() {
        let body = r#"{"job_id":"p/i/analyze","pipeline_id":"p","stage":"analyze","attempt":1,
            "seq":1,"worker_id":"w","at":"2026-01-01T00:00:00Z","type":"succeeded",
            "degraded":{"kind":"analyzers_failed","detail":"sleeper, exit1"}}"#;
        let e: Event = serde_json::from_str(body).unwrap();
        assert_eq!(e.kind, EventKind::Succeeded);
        let d = e.degraded.unwrap();
        assert_eq!(d.kind, DegradationKind::AnalyzersFailed);
        assert_eq!(d.to_string(), "analyzers sleeper, exit1 failed");
        // A kind from a newer worker still decodes.
        let d: Degradation = serde_json::from_str(r#"{"kind":"gpu_melted"}"#).unwrap();
        assert_eq!(d.kind, DegradationKind::Other);
        let long = "é".repeat(MAX_DEGRADATION_DETAIL);
        let d = Degradation::new(DegradationKind::SummaryFallback, &long);
        assert!(d.detail.len() <= MAX_DEGRADATION_DETAIL && long.starts_with(&d.detail));
    }
}
