//! Steps 4–8 of the delivery contract for one delivery ([`run_one`]) or a batch
//! ([`run_batch`]): hold a slot, emit `started`, run the handler under its
//! limits, hold deliveries while a `pause` breaker is open, then settle.

use std::sync::Arc;

use fleet_core::{Acker, Delivery, JobError};
use fleet_protocol::EventKind;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::admit::{Admitted, admit};
use crate::breaker::{Admission, BreakerState};
use crate::context::{JobContext, JobTrack};
use crate::guard::{Guarded, Limits, run_guarded};
use crate::handler::{BatchHandler, Handler};
use crate::outcome::AttemptResult;
use crate::pause::IntakeGate;
use crate::settle::{self, settle};
use crate::shared::Shared;
use crate::unsettled::Held;

/// A delivery as the consume loop hands it over: its concurrency permit, and its mark on the
/// unsettled-deliveries gauge (both released when the task that settles it ends).
pub struct Taken {
    /// The delivery.
    pub delivery: Delivery,
    /// Its concurrency permit.
    pub permit: OwnedSemaphorePermit,
    /// Its mark on `fleet_deliveries_unsettled`.
    pub held: Held,
}

/// A concurrency slot: the permit, the in-flight gauge and the unsettled mark, released on
/// every path (after the settlement, which happens while the slot is held).
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    _held: Held,
    in_flight: metrics::Gauge,
}

impl Slot {
    /// Takes ownership of a permit and a mark for one delivery (`in_flight`: the stage's gauge
    /// handle).
    pub fn new(in_flight: &metrics::Gauge, permit: OwnedSemaphorePermit, held: Held) -> Slot {
        in_flight.increment(1.0);
        Slot {
            _permit: permit,
            _held: held,
            in_flight: in_flight.clone(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.in_flight.decrement(1.0);
    }
}

/// Whether an attempt's result blames the dependency behind a `pause` breaker.
fn dependency_failed<T>(r: &Guarded<Result<T, JobError>>) -> Option<bool> {
    match r {
        Guarded::Done(Ok(_)) | Guarded::Done(Err(JobError::Permanent(_))) => Some(false),
        Guarded::Done(Err(_)) | Guarded::TimedOut => Some(true),
        _ => None,
    }
}

enum Gate {
    Run(Option<Admission>),
    Stop(AttemptResult),
}

/// Asks the pause breaker for permission; while it is open, holds the deliveries (leases
/// kept alive, no attempt burned) until the probe time, the hold bound, or a stop signal.
async fn gate(
    sh: &Shared,
    ackers: &[&dyn Acker],
    pipeline_cancel: &CancellationToken,
    hold_until: Instant,
) -> Gate {
    let Some(b) = &sh.pause else {
        return Gate::Run(None);
    };
    loop {
        if let Some(a) = b.admit() {
            return Gate::Run(Some(a));
        }
        if Instant::now() >= hold_until {
            return Gate::Stop(Guarded::Done(Err(JobError::Retryable(format!(
                "{} longer than the hold bound (FLEET_MAX_OUTAGE)",
                b.reason()
            )))));
        }
        // Wake at the probe time, or shortly after when another probe is out.
        let wake = b
            .probe_at()
            .max(Instant::now() + std::time::Duration::from_millis(200))
            .min(hold_until);
        let token = CancellationToken::new();
        let limits = Limits {
            deadline: hold_until,
            pipeline_cancel,
            drain: &sh.drain,
            attempt_token: &token,
        };
        match run_guarded(ackers, limits, tokio::time::sleep_until(wake)).await {
            Guarded::Done(()) | Guarded::TimedOut => {}
            Guarded::LeaseLost(e) => return Gate::Stop(Guarded::LeaseLost(e)),
            Guarded::Cancelled => return Gate::Stop(Guarded::Cancelled),
            Guarded::Drained | Guarded::Panicked(_) => return Gate::Stop(Guarded::Drained),
        }
    }
}

/// After an attempt: record it on the pause gate; true when the deliveries must be held
/// and run again without counting an attempt (it failed while the dependency is unusable).
fn record_and_hold(
    b: Option<&Arc<dyn IntakeGate>>,
    admission: Option<Admission>,
    failed: Option<bool>,
) -> bool {
    let (Some(b), Some(a)) = (b, admission) else {
        return false;
    };
    b.record(a, failed);
    failed == Some(true) && b.state() != BreakerState::Closed
}

fn context(
    sh: &Arc<Shared>,
    adm: &Admitted,
    deadline: Instant,
    token: CancellationToken,
    track: &Arc<JobTrack>,
) -> JobContext {
    JobContext {
        attempt: adm.attempt,
        deadline,
        cancel: token,
        track: track.clone(),
        job: adm.job.clone(),
        sink: sh.sink.clone(),
        runaways: sh.runaways.clone(),
    }
}

/// Runs one delivery through the whole contract.
pub async fn run_one(sh: Arc<Shared>, handler: Arc<dyn Handler>, taken: Taken) {
    let _slot = Slot::new(&sh.metrics.in_flight, taken.permit, taken.held);
    let adm = match admit(&sh, taken.delivery) {
        Ok(adm) => adm,
        Err(r) => return settle::refused(&sh, *r).await,
    };
    if adm.attempt == 1 {
        sh.budget.record_first_attempt();
    }
    let pipeline_cancel = CancellationToken::new();
    let track = JobTrack::new(Some(sh.inflight.insert(
        &adm.job,
        adm.attempt,
        pipeline_cancel.clone(),
    )));
    sh.sink
        .emit(sh.event(&adm.job, adm.attempt, 0, EventKind::Started));
    let started = Instant::now();
    let hold_until = started + sh.cfg.max_outage;
    let (result, pipeline_deadline) = loop {
        let admission = match gate(&sh, &[&*adm.acker], &pipeline_cancel, hold_until).await {
            Gate::Run(a) => a,
            Gate::Stop(r) => break (r, false),
        };
        let (deadline, pipeline_deadline) = adm.attempt_deadline();
        let token = CancellationToken::new();
        let ctx = context(&sh, &adm, deadline, token.clone(), &track);
        let (h, job) = (handler.clone(), adm.job.clone());
        let limits = Limits {
            deadline,
            pipeline_cancel: &pipeline_cancel,
            drain: &sh.drain,
            attempt_token: &token,
        };
        let r = run_guarded(
            &[&*adm.acker],
            limits,
            async move { h.handle(&job, &ctx).await },
        )
        .await;
        let failed = if pipeline_deadline && matches!(r, Guarded::TimedOut) {
            None
        } else {
            dependency_failed(&r)
        };
        if record_and_hold(sh.pause.as_ref(), admission, failed) {
            continue;
        }
        break (r, pipeline_deadline);
    };
    // The job leaves the running set before it settles (with the last holder of its track).
    let seq = track.next_seq();
    drop(track);
    settle(&sh, adm, result, seq, started, pipeline_deadline).await;
}

/// Runs up to N deliveries through one batch handler call; one outcome each.
pub async fn run_batch(sh: Arc<Shared>, handler: Arc<dyn BatchHandler>, batch: Vec<Taken>) {
    let mut slots = Vec::with_capacity(batch.len());
    let mut adms = Vec::with_capacity(batch.len());
    for t in batch {
        slots.push(Slot::new(&sh.metrics.in_flight, t.permit, t.held));
        match admit(&sh, t.delivery) {
            Ok(a) => {
                if a.attempt == 1 {
                    sh.budget.record_first_attempt();
                }
                sh.sink
                    .emit(sh.event(&a.job, a.attempt, 0, EventKind::Started));
                adms.push(a);
            }
            Err(r) => settle::refused(&sh, *r).await,
        }
    }
    let Some(first) = adms.first() else { return };
    let track = JobTrack::new(None);
    let started = Instant::now();
    let hold_until = started + sh.cfg.max_outage;
    let never = CancellationToken::new();
    let results: Vec<(AttemptResult, bool)> = loop {
        let ackers: Vec<&dyn Acker> = adms.iter().map(|a| &*a.acker).collect();
        let admission = match gate(&sh, &ackers, &never, hold_until).await {
            Gate::Run(a) => a,
            Gate::Stop(r) => break adms.iter().map(|_| (replicate_stop(&r), false)).collect(),
        };
        let (deadline, pipeline_deadline) = adms
            .iter()
            .map(Admitted::attempt_deadline)
            .min_by_key(|(d, _)| *d)
            .unwrap_or((Instant::now(), false));
        let token = CancellationToken::new();
        let ctx = context(&sh, first, deadline, token.clone(), &track);
        let (h, jobs) = (
            handler.clone(),
            adms.iter().map(|a| (*a.job).clone()).collect::<Vec<_>>(),
        );
        let limits = Limits {
            deadline,
            pipeline_cancel: &never,
            drain: &sh.drain,
            attempt_token: &token,
        };
        let r = run_guarded(
            &ackers,
            limits,
            async move { h.handle_batch(&jobs, &ctx).await },
        )
        .await;
        let per_job: Vec<AttemptResult> = match r.into_done() {
            Ok(v) if v.len() == adms.len() => v.into_iter().map(Guarded::Done).collect(),
            Ok(v) => {
                let text = format!(
                    "batch handler returned {} results for {} jobs",
                    v.len(),
                    adms.len()
                );
                adms.iter()
                    .map(|_| Guarded::Done(Err(JobError::Retryable(text.clone()))))
                    .collect()
            }
            Err(stop) => adms.iter().map(|_| replicate_stop(&stop)).collect(),
        };
        let any_ok = per_job.iter().any(|r| dependency_failed(r) == Some(false));
        let failed = if any_ok {
            Some(false)
        } else {
            per_job.iter().find_map(dependency_failed)
        };
        if record_and_hold(sh.pause.as_ref(), admission, failed) {
            continue;
        }
        break per_job
            .into_iter()
            .map(|r| (r, pipeline_deadline))
            .collect();
    };
    let settles = adms.into_iter().zip(results).map(|(adm, (r, pd))| {
        let sh = sh.clone();
        let seq = track.peek_seq();
        async move { settle(&sh, adm, r, seq, started, pd).await }
    });
    futures::future::join_all(settles).await;
    drop(slots);
}

fn replicate_stop(r: &AttemptResult) -> AttemptResult {
    match r {
        Guarded::Done(Ok(o)) => Guarded::Done(Ok(o.clone())),
        Guarded::Done(Err(e)) => Guarded::Done(Err(JobError::Retryable(e.to_string()))),
        Guarded::TimedOut => Guarded::TimedOut,
        Guarded::Panicked(s) => Guarded::Panicked(s.clone()),
        Guarded::LeaseLost(s) => Guarded::LeaseLost(s.clone()),
        Guarded::Cancelled => Guarded::Cancelled,
        Guarded::Drained => Guarded::Drained,
    }
}
