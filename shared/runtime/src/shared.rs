//! State shared by every delivery task of one worker.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use fleet_core::Broker;
use fleet_protocol::control::{self, Cancellation};
use fleet_protocol::{Degradation, EventKind, JobEnvelope, Names};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::budget::RetryBudget;
use crate::config::RuntimeConfig;
use crate::events::{EventSink, JobEvent};
use crate::inflight::InFlight;
use crate::pause::IntakeGate;
use crate::runaways::Runaways;
use crate::telemetry::stage::StageMetrics;
use crate::unsettled::Unsettled;

/// Cancelled pipelines known to this worker, each scoped to one life of its id (its creation
/// time), so a cancellation of an earlier pipeline never hits a later one that reuses the id.
#[derive(Default)]
pub struct Cancellations {
    /// By pipeline id: each cancelled life (creation time, if known) and when it was last heard.
    seen: Mutex<Lives>,
}

/// Most cancelled pipeline ids remembered (the least recently heard are forgotten first).
const MAX_CANCELLATIONS: usize = 100_000;
/// A cancellation neither replayed nor re-broadcast for this long is forgotten: the NATS control
/// stream keeps a cancellation for as long ([`control::RETENTION`]), and on RabbitMQ the
/// coordinator re-broadcasts active ones every tick.
const FORGET_AFTER: Duration = control::RETENTION;

/// Cancelled lives by pipeline id: (creation time if known, when last heard).
type Lives = HashMap<String, Vec<(Option<DateTime<Utc>>, Instant)>>;

impl Cancellations {
    fn lock(&self) -> std::sync::MutexGuard<'_, Lives> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a cancellation (again: a re-broadcast refreshes it).
    pub fn insert(&self, c: Cancellation) {
        let now = Instant::now();
        let mut seen = self.lock();
        if seen.len() >= MAX_CANCELLATIONS && !seen.contains_key(&c.pipeline_id) {
            seen.retain(|_, lives| {
                lives.retain(|(_, at)| now.duration_since(*at) < FORGET_AFTER);
                !lives.is_empty()
            });
            let last_heard =
                |lives: &[(Option<DateTime<Utc>>, Instant)]| lives.iter().map(|(_, at)| *at).max();
            if seen.len() >= MAX_CANCELLATIONS
                && let Some(oldest) = seen
                    .iter()
                    .min_by_key(|(_, lives)| last_heard(lives))
                    .map(|(k, _)| k.clone())
            {
                seen.remove(&oldest);
            }
        }
        let lives = seen.entry(c.pipeline_id).or_default();
        match lives
            .iter_mut()
            .find(|(born, _)| *born == c.pipeline_created_at)
        {
            Some(life) => life.1 = now,
            None => lives.push((c.pipeline_created_at, now)),
        }
    }

    /// True when `job`'s pipeline (this life of its id) was cancelled.
    pub fn cancels(&self, job: &JobEnvelope) -> bool {
        let now = Instant::now();
        let seen = self.lock();
        seen.get(&job.pipeline_id).is_some_and(|lives| {
            lives.iter().any(|(born, at)| {
                now.duration_since(*at) < FORGET_AFTER
                    && Cancellation {
                        pipeline_id: job.pipeline_id.clone(),
                        pipeline_created_at: *born,
                    }
                    .applies_to_job(job)
            })
        })
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
    /// The stage's per-job metric handles.
    pub metrics: StageMetrics,
    /// Deliveries not settled yet (the gauge every fetched delivery's acker lowers).
    pub unsettled: Unsettled,
    /// Fires at the end of the drain period: what still runs goes back to the broker.
    pub drain: CancellationToken,
    /// The worker's delivery tasks (settlements made by a stop from outside join them).
    pub tasks: TaskTracker,
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
            let topology = crate::config::topology(&self.cfg, &self.names, stage);
            self.broker.declare(&topology).await?;
            self.declared
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(stage.to_owned());
        }
        Ok(())
    }

    /// An event about `job` for `attempt` (stage and worker id are this worker's, written by
    /// the event batch).
    pub fn event(
        &self,
        job: &Arc<JobEnvelope>,
        attempt: u32,
        seq: u32,
        kind: EventKind,
    ) -> JobEvent {
        self.event_degraded(job, attempt, seq, kind, None)
    }

    /// An event about `job` for `attempt`, with a degradation note (on `succeeded`).
    pub fn event_degraded(
        &self,
        job: &Arc<JobEnvelope>,
        attempt: u32,
        seq: u32,
        kind: EventKind,
        degraded: Option<Degradation>,
    ) -> JobEvent {
        JobEvent {
            job: job.clone(),
            attempt,
            seq,
            at: Utc::now(),
            kind,
            degraded,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancellations_match_one_life_of_an_id() {
        let c = Cancellations::default();
        let old = DateTime::from_timestamp_millis(1_000);
        let new = DateTime::from_timestamp_millis(2_000);
        let job = |pid: &str, born| {
            let mut j = JobEnvelope::new(pid, "i", "s", serde_json::Value::Null);
            j.pipeline_created_at = born;
            j
        };
        c.insert(Cancellation {
            pipeline_id: "p".into(),
            pipeline_created_at: old,
        });
        c.insert(Cancellation {
            pipeline_id: "p".into(),
            pipeline_created_at: old,
        });
        assert!(c.cancels(&job("p", old)));
        assert!(!c.cancels(&job("p", new)), "a reused id is not cancelled");
        assert!(
            c.cancels(&job("p", None)),
            "an envelope without the time matches by id"
        );
        assert!(!c.cancels(&job("q", old)));
        assert_eq!(
            c.lock()["p"].len(),
            1,
            "a re-broadcast refreshes, it does not add"
        );
    }
}
