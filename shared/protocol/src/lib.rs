//! fleet's wire contract: the versioned JSON job envelope, submissions, events,
//! heartbeats, dead-letter headers and broker names (DESIGN §4).
//!
//! This crate has no runtime and no broker dependency so producers in Rust can
//! use it alone; producers in other languages validate against the JSON Schemas
//! in `shared/protocol/schema/`.

pub mod control;
pub mod deadletter;
pub mod envelope;
pub mod event;
pub mod names;
pub mod redact;
pub mod schema;
pub mod submission;

pub use deadletter::{DeadLetterInfo, DeadLetterReason, ErrorKind};
pub use envelope::{DecodeError, JobEnvelope, RouteStep, StageLimits, decode_job};
pub use event::{
    Degradation, DegradationKind, Event, EventBatch, EventKind, Heartbeat, InFlightJob,
};
pub use names::Names;
pub use submission::{
    ItemBatch, Seal, StageOptions, Submission, SubmissionError, SubmitItem, decode_item_batch,
    decode_submission,
};

/// The wire format major version this build reads and writes.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default maximum message size (1 MiB): bigger bodies are dead-lettered `poison`.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Builds the deterministic job id `{pipeline_id}/{item_id}/{stage}`.
///
/// ```
/// assert_eq!(fleet_protocol::job_id("p1", "a", "analyze"), "p1/a/analyze");
/// ```
pub fn job_id(pipeline_id: &str, item_id: &str, stage: &str) -> String {
    format!("{pipeline_id}/{item_id}/{stage}")
}
