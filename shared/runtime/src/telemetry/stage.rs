//! One stage's per-job metrics, registered once when the worker starts: a job then updates
//! atomics through these handles instead of looking each series up in the registry with a
//! freshly copied `stage` label (six look-ups per job before, issue 12).

use metrics::{Counter, Gauge, Histogram};
use tokio::time::Instant;

use crate::telemetry::names;

/// Handles of the per-job series of one stage.
pub struct StageMetrics {
    /// `fleet_jobs_received_total{stage}`.
    pub received: Counter,
    /// `fleet_jobs_in_flight{stage}`.
    pub in_flight: Gauge,
    /// `fleet_jobs_finished_total{stage,outcome}`, in [`names::OUTCOMES`] order.
    finished: [Counter; 5],
    /// `fleet_job_duration_seconds{stage,outcome}`, in [`names::OUTCOMES`] order.
    duration: [Histogram; 5],
}

impl StageMetrics {
    /// Registers the series of `stage` (they show from now on, at 0).
    pub fn new(stage: &str) -> StageMetrics {
        let finished = names::OUTCOMES.map(|outcome| {
            metrics::counter!(names::JOBS_FINISHED, "stage" => stage.to_owned(), "outcome" => outcome)
        });
        let duration = names::OUTCOMES.map(|outcome| {
            metrics::histogram!(names::JOB_DURATION, "stage" => stage.to_owned(), "outcome" => outcome)
        });
        StageMetrics {
            received: metrics::counter!(names::JOBS_RECEIVED, "stage" => stage.to_owned()),
            in_flight: metrics::gauge!(names::JOBS_IN_FLIGHT, "stage" => stage.to_owned()),
            finished,
            duration,
        }
    }

    /// Counts a finished job with `outcome` (one of [`names::OUTCOMES`]) and its handler time
    /// when it ran.
    pub fn finished(&self, outcome: &'static str, started: Option<Instant>) {
        let Some(i) = names::OUTCOMES.iter().position(|o| *o == outcome) else {
            // Not in the closed set (a programming error): counted under its own label
            // through the registry rather than lost.
            metrics::counter!(names::JOBS_FINISHED, "outcome" => outcome).increment(1);
            return;
        };
        self.finished[i].increment(1);
        if let Some(s) = started {
            self.duration[i].record(s.elapsed().as_secs_f64());
        }
    }
}
