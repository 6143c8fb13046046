//! State shared by every delivery task of one worker.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use chrono::Utc;
use fleet_core::Broker;
use fleet_protocol::{Event, EventKind, JobEnvelope, Names};
use tokio_util::sync::CancellationToken;

use crate::budget::RetryBudget;
use crate::config::RuntimeConfig;
use crate::context::Runaways;
use crate::events::EventSink;
use crate::inflight::InFlight;
use crate::pause::IntakeGate;

/// Cancelled pipelines known to this worker.
#[derive(Default)]
pub struct Cancellations {
    ids: Mutex<HashSet<String>>,
}

/// Most cancelled pipeline ids remembered (older ones are forgotten first).
const MAX_CANCELLATIONS: usize = 100_000;

impl Cancellations {
    /// Records a cancelled pipeline.
    pub fn insert(&self, pipeline_id: &str) {
        let mut ids = self
            .ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if ids.len() >= MAX_CANCELLATIONS {
            ids.clear();
        }
        ids.insert(pipeline_id.to_owned());
    }
    /// True when the pipeline was cancelled.
    pub fn contains(&self, pipeline_id: &str) -> bool {
        self.ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(pipeline_id)
    }
}

/// Everything a delivery task needs.
pub struct Shared {
    /// The broker.
    pub broker: Arc<dyn Broker>,
    /// Runtime config.
    pub cfg: RuntimeConfig,
    /// Stage consumed.
    pub stage: String,
    /// This process's worker id.
    pub worker_id: String,
    /// Broker names.
    pub names: Names,
    /// Event batches.
    pub sink: EventSink,
    /// Running jobs.
    pub inflight: Arc<InFlight>,
    /// Cancelled pipelines.
    pub cancels: Arc<Cancellations>,
    /// Retry budget.
    pub budget: RetryBudget,
    /// The gate (a breaker with policy `pause`, or several) holding intake, if any.
    pub pause: Option<Arc<dyn IntakeGate>>,
    /// Runaway blocking work.
    pub runaways: Arc<Runaways>,
    /// Fires at the end of the drain period: what still runs goes back to the broker.
    pub drain: CancellationToken,
    /// Stages whose queues this worker has declared (next stages are declared before the
    /// first publish, so a job is never routed to a queue that does not exist yet).
    pub declared: Mutex<HashSet<String>>,
}

impl Shared {
    /// Declares `stage`'s queues once per process before publishing to it.
    pub async fn ensure_stage(&self, stage: &str) -> Result<(), fleet_core::BrokerError> {
        let known = self
            .declared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(stage);
        if !known {
            let topology = crate::worker::topology(&self.cfg, &self.names, stage);
            self.broker.declare(&topology).await?;
            self.declared
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(stage.to_owned());
        }
        Ok(())
    }

    /// An event about `job` for `attempt`.
    pub fn event(&self, job: &JobEnvelope, attempt: u32, seq: u32, kind: EventKind) -> Event {
        Event {
            job_id: job.job_id.clone(),
            pipeline_id: job.pipeline_id.clone(),
            stage: self.stage.clone(),
            attempt,
            seq,
            worker_id: self.worker_id.clone(),
            at: Utc::now(),
            kind,
        }
    }
}
