//! What a service implements: a [`Handler`] (one job at a time) or a
//! [`BatchHandler`] (up to N jobs, one outcome each).

use async_trait::async_trait;
use fleet_core::JobError;
use fleet_protocol::{Degradation, JobEnvelope};

use crate::context::JobContext;

/// A successful attempt's result.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Output {
    /// Payload of the next job on the item's route (ignored at the end of the route).
    pub payload: serde_json::Value,
    /// Set when the attempt succeeded with less than the full result; it goes out in the
    /// `succeeded` event, and the coordinator counts the item as degraded.
    pub degraded: Option<Degradation>,
}

impl Output {
    /// An output carrying `payload` to the next stage.
    pub fn new(payload: serde_json::Value) -> Output {
        Output {
            payload,
            degraded: None,
        }
    }

    /// The same output, noted as degraded.
    pub fn degraded(mut self, note: Degradation) -> Output {
        self.degraded = Some(note);
        self
    }
}

/// Processes one job per call.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Runs one attempt. The future is dropped at the deadline; use `ctx.blocking` for CPU work.
    async fn handle(&self, job: &JobEnvelope, ctx: &JobContext) -> Result<Output, JobError>;
}

/// Processes several jobs per call (e.g. one database transaction per batch).
#[async_trait]
pub trait BatchHandler: Send + Sync + 'static {
    /// Runs one attempt of each job; returns exactly one result per job, in order.
    async fn handle_batch(
        &self,
        jobs: &[JobEnvelope],
        ctx: &JobContext,
    ) -> Vec<Result<Output, JobError>>;
}
