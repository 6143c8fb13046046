//! What a handler sees besides its job: attempt, deadline, a cancellation token,
//! a progress reporter, and a helper that runs CPU-heavy work off the reactor.

use std::sync::{Arc, Mutex};

use chrono::Utc;
use fleet_core::JobError;
use fleet_protocol::{EventKind, JobEnvelope};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::events::{EventSink, JobEvent};
use crate::runaways::Runaways;

/// What a context reports progress to: the job's run (see [`crate::run::Run`]), behind a trait
/// so that this module does not depend on the settlement code.
pub trait Track: Send + Sync {
    /// Takes the next event sequence number.
    fn next_seq(&self) -> u32;
    /// Records progress on the job's entry among the running jobs.
    fn touch(&self);
}

/// The per-attempt context handed to a handler.
#[derive(Clone)]
pub struct JobContext {
    pub(crate) attempt: u32,
    pub(crate) deadline: Instant,
    pub(crate) cancel: CancellationToken,
    /// The job's run: its event sequence and its entry among the running jobs.
    pub(crate) track: Arc<dyn Track>,
    /// The job, for progress events (built only when a handler reports progress).
    pub(crate) job: Arc<JobEnvelope>,
    pub(crate) sink: EventSink,
    pub(crate) runaways: Arc<Runaways>,
}

impl JobContext {
    /// This attempt's number (from 1).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// When this attempt is cut.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Time left before the deadline.
    pub fn remaining(&self) -> std::time::Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Fires when the attempt must stop (deadline, cancellation, drain, lost lease).
    pub fn cancelled(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Reports progress; never blocks (may be coalesced or dropped under pressure).
    pub fn progress(&self, done: u64, total: Option<u64>, note: &str) {
        self.track.touch();
        let e = JobEvent {
            job: self.job.clone(),
            attempt: self.attempt,
            seq: self.track.next_seq(),
            at: Utc::now(),
            kind: EventKind::Progress {
                done,
                total,
                note: note.to_owned(),
            },
            degraded: None,
        };
        self.sink.emit(e);
    }

    /// Runs CPU-heavy `work` on the blocking pool so heartbeats and lease extensions keep
    /// flowing. If the attempt ends first, the slot is released anyway and the still-running
    /// work is counted in `fleet_runaway_tasks` until it returns.
    pub async fn blocking<T, F>(&self, work: F) -> Result<T, JobError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        // (finished, abandoned): whoever comes second settles the runaway count.
        let state = Arc::new(Mutex::new((false, false)));
        let guard = AbandonGuard {
            state: state.clone(),
            runaways: self.runaways.clone(),
        };
        let runaways = self.runaways.clone();
        let handle = tokio::task::spawn_blocking(move || {
            let out = work();
            let mut s = state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            s.0 = true;
            if s.1 {
                runaways.add(-1);
            }
            out
        });
        let out = handle.await;
        guard.disarm();
        out.map_err(|e| JobError::Retryable(format!("blocking work failed: {e}")))
    }
}

struct AbandonGuard {
    state: Arc<Mutex<(bool, bool)>>,
    runaways: Arc<Runaways>,
}

impl AbandonGuard {
    fn disarm(self) {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0 = true;
    }
}

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !s.0 && !s.1 {
            s.1 = true;
            self.runaways.add(1);
        }
    }
}
