//! The registry of jobs running on this worker: feeds heartbeats (liveness plus
//! each job's last progress) and lets a cancellation reach running jobs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use fleet_protocol::control::Cancellation;
use fleet_protocol::{InFlightJob, JobEnvelope};
use tokio_util::sync::CancellationToken;

use crate::telemetry::names;

struct Entry {
    /// The running job (shared, not copied: its ids are read when a heartbeat is built).
    job: Arc<JobEnvelope>,
    attempt: u32,
    started_at: DateTime<Utc>,
    last_progress_at: DateTime<Utc>,
    cancel: CancellationToken,
}

impl Entry {
    fn report(&self) -> InFlightJob {
        InFlightJob {
            job_id: self.job.job_id.clone(),
            pipeline_id: self.job.pipeline_id.clone(),
            attempt: self.attempt,
            started_at: self.started_at,
            last_progress_at: self.last_progress_at,
        }
    }
}

/// Running jobs by a process-local key.
pub struct InFlight {
    /// `fleet_last_progress_timestamp_seconds{stage}`, registered once.
    last_progress: metrics::Gauge,
    next: AtomicU64,
    jobs: Mutex<HashMap<u64, Entry>>,
}

/// Removes its job from the registry when dropped (on every path).
pub struct InFlightGuard {
    registry: Arc<InFlight>,
    key: u64,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.key);
    }
}

impl InFlightGuard {
    /// Records progress now.
    pub fn touch(&self) {
        self.registry.touch(self.key);
    }
}

impl InFlight {
    /// An empty registry for `stage`.
    pub fn new(stage: &str) -> Arc<InFlight> {
        Arc::new(InFlight {
            last_progress: metrics::gauge!(names::LAST_PROGRESS, "stage" => stage.to_owned()),
            next: AtomicU64::new(0),
            jobs: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a running attempt; `cancel` fires if its pipeline is cancelled.
    pub fn insert(
        self: &Arc<Self>,
        job: &Arc<JobEnvelope>,
        attempt: u32,
        cancel: CancellationToken,
    ) -> InFlightGuard {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        let now = Utc::now();
        self.lock().insert(
            key,
            Entry {
                job: job.clone(),
                attempt,
                started_at: now,
                last_progress_at: now,
                cancel,
            },
        );
        self.export(now);
        InFlightGuard {
            registry: self.clone(),
            key,
        }
    }

    fn touch(&self, key: u64) {
        let now = Utc::now();
        if let Some(e) = self.lock().get_mut(&key) {
            e.last_progress_at = now;
        }
        self.export(now);
    }

    fn export(&self, now: DateTime<Utc>) {
        self.last_progress
            .set(now.timestamp_millis() as f64 / 1000.0);
    }

    /// A snapshot for the heartbeat.
    pub fn snapshot(&self) -> Vec<InFlightJob> {
        self.lock().values().map(Entry::report).collect()
    }

    /// Number of running attempts.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when nothing runs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Cancels every running job of the pipeline life `c` is about.
    pub fn cancel_pipeline(&self, c: &Cancellation) -> usize {
        let jobs = self.lock();
        let hits: Vec<_> = jobs
            .values()
            .filter(|e| c.applies_to(&e.job.pipeline_id, e.job.pipeline_created_at))
            .collect();
        for e in &hits {
            e.cancel.cancel();
        }
        hits.len()
    }
}
