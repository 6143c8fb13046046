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
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], "retrying");
        assert_eq!(v["delay_ms"], 1000);
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
        assert!(!back.kind.is_terminal());
        assert!(EventKind::Expired.is_terminal());
    }
}
