//! One job's run: its event sequence, the token that stops its handler, why it was stopped,
//! and (while its handler runs) the parts its settlement needs. Whoever takes those parts
//! first settles the job, once: its own task when the handler returns, or the stop from
//! outside (deadline timer, cancellation, drain, lost lease), which settles it on a task of
//! its own so that the slot is freed even when the handler never gives way.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::admit::Admitted;
use crate::breaker::Admission;
use crate::context::Track;
use crate::guard::Guarded;
use crate::inflight::{Stop, Stoppable};
use crate::outcome::AttemptResult;
use crate::pause::{dependency_failed, record_and_hold};
use crate::settle::settle;
use crate::shared::Shared;
use crate::slot::Slot;

/// How long a stopped run's own task has to take its claim before the stop settles it.
const STUCK_AFTER: Duration = Duration::from_millis(100);

/// What settling a running job takes, held by its [`Run`] while the handler runs.
pub struct Claim {
    /// The admitted delivery.
    pub adm: Admitted,
    /// Its slot, freed after the settlement.
    pub slot: Slot,
    /// When the job started (for the duration metric).
    pub started: Instant,
    /// Whether the pipeline's deadline is the attempt's.
    pub pipeline_deadline: bool,
    /// The pause gate's permission this attempt ran under, if any.
    pub admission: Option<Admission>,
}

impl Claim {
    /// Records the attempt's `result` on the pause gate; true when the job must be held and
    /// run again without counting an attempt (it failed while the dependency is unusable).
    pub fn record(&mut self, sh: &Shared, result: &AttemptResult) -> bool {
        let failed = if self.pipeline_deadline && matches!(result, Guarded::TimedOut) {
            None
        } else {
            dependency_failed(result)
        };
        record_and_hold(sh.pause.as_ref(), self.admission.take(), failed)
    }
}

/// One delivery's run (one allocation per job).
pub struct Run {
    sh: Arc<Shared>,
    /// Its key among the running jobs (none for a batch, which is not in the table).
    key: Option<u64>,
    seq: AtomicU32,
    token: CancellationToken,
    why: Mutex<Option<Stop>>,
    /// An async lock: a lease extension holds it across its round trip, and the settlement
    /// waits for that rather than acking under it.
    held: tokio::sync::Mutex<Option<Claim>>,
}

impl Run {
    /// A run whose events continue at `seq` (1 for a new job: `started` is 0); `key`: its
    /// entry in `sh.inflight` (the caller inserts it).
    pub fn new(sh: &Arc<Shared>, key: Option<u64>, seq: u32) -> Arc<Run> {
        Arc::new(Run {
            sh: sh.clone(),
            key,
            seq: AtomicU32::new(seq),
            token: CancellationToken::new(),
            why: Mutex::new(None),
            held: tokio::sync::Mutex::new(None),
        })
    }

    /// Takes the next event sequence number.
    pub fn next_seq(&self) -> u32 {
        self.seq.fetch_add(1, Ordering::SeqCst)
    }

    /// The next sequence number, without taking it.
    pub fn peek_seq(&self) -> u32 {
        self.seq.load(Ordering::SeqCst)
    }

    /// Fires when the run is stopped from outside (the handler's cancellation token too).
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Records progress on its entry.
    pub fn touch(&self) {
        if let Some(k) = self.key {
            self.sh.inflight.touch(k);
        }
    }

    /// How a stopped run ended (`Drained` if nothing was recorded).
    pub fn stopped<T>(&self) -> Guarded<T> {
        match &*self
            .why
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            Some(Stop::TimedOut) => Guarded::TimedOut,
            Some(Stop::Cancelled) => Guarded::Cancelled,
            Some(Stop::LeaseLost(e)) => Guarded::LeaseLost(e.clone()),
            Some(Stop::Drained) | None => Guarded::Drained,
        }
    }

    /// Hands the settlement's parts to the run while its handler runs under `deadline`.
    pub async fn hold(&self, claim: Claim, deadline: Instant) {
        let every = claim
            .adm
            .acker
            .lease()
            .map(|l| (l / 3).max(Duration::from_millis(100)));
        *self.held.lock().await = Some(claim);
        if let Some(k) = self.key {
            self.sh.inflight.arm(k, deadline, every);
        }
    }

    /// Takes the settlement's parts back (`None`: a stop took them and settles the job).
    pub async fn claim(&self) -> Option<Claim> {
        if let Some(k) = self.key {
            self.sh.inflight.disarm(k);
        }
        self.held.lock().await.take()
    }

    /// Settles a claimed run with `result`: the job leaves the running set first, then the
    /// settlement goes out, then the slot is freed.
    pub async fn settle(&self, claim: Claim, result: AttemptResult) {
        let seq = self.next_seq();
        if let Some(k) = self.key {
            self.sh.inflight.remove(k);
        }
        let Claim {
            adm,
            slot,
            started,
            pipeline_deadline,
            ..
        } = claim;
        settle(&self.sh, adm, result, seq, started, pipeline_deadline).await;
        drop(slot);
    }
}

impl Track for Run {
    fn next_seq(&self) -> u32 {
        Run::next_seq(self)
    }

    fn touch(&self) {
        Run::touch(self);
    }
}

impl Stoppable for Run {
    fn stop(self: Arc<Self>, why: Stop) {
        {
            let mut w = self
                .why
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if w.is_some() {
                return;
            }
            *w = Some(why);
        }
        self.token.cancel();
        // The handler's task settles the job itself when it sees the token; this one settles
        // it when that task is stuck in code that never yields.
        let sh = self.sh.clone();
        sh.tasks.spawn(async move {
            // A task that gives way claims within microseconds (and may hold the job for a
            // rerun); take the claim only from one that is stuck.
            tokio::time::sleep(STUCK_AFTER).await;
            if let Some(mut claim) = self.claim().await {
                let result = self.stopped();
                // The handler is stuck: the job cannot be held for a rerun, only settled.
                claim.record(&self.sh, &result);
                self.settle(claim, result).await;
            }
        });
    }

    fn extend(self: Arc<Self>, within: Duration) {
        let sh = self.sh.clone();
        sh.tasks.spawn(async move {
            let failed = {
                let held = self.held.lock().await;
                let Some(claim) = held.as_ref() else { return };
                match tokio::time::timeout(within, claim.adm.acker.extend()).await {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(_) => Some(format!("lease extension not confirmed within {within:?}")),
                }
            };
            if let Some(e) = failed {
                self.stop(Stop::LeaseLost(e));
            }
        });
    }
}
