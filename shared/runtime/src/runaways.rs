//! Blocking work that outlived its attempt: counted in `fleet_runaway_tasks`, and /healthz
//! turns red past a bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::telemetry::{Health, names};

/// Counts blocking work that outlived its attempt, and turns /healthz red past a bound.
pub struct Runaways {
    stage: String,
    count: AtomicUsize,
    max: usize,
    health: Arc<Health>,
}

impl Runaways {
    /// A counter for `stage` that marks the worker unhealthy above `max`.
    pub fn new(stage: &str, max: usize, health: Arc<Health>) -> Arc<Runaways> {
        Arc::new(Runaways {
            stage: stage.to_owned(),
            count: AtomicUsize::new(0),
            max,
            health,
        })
    }

    pub(crate) fn add(&self, delta: isize) {
        let now = if delta > 0 {
            self.count.fetch_add(1, Ordering::SeqCst) + 1
        } else {
            self.count.fetch_sub(1, Ordering::SeqCst) - 1
        };
        metrics::gauge!(names::RUNAWAY_TASKS, "stage" => self.stage.clone()).set(now as f64);
        self.health.set_unhealthy(now > self.max);
    }

    /// Blocking tasks running past their deadline now.
    pub fn current(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}
