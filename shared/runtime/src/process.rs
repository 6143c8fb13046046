//! Steps 4–8 of the delivery contract for one delivery ([`run_one`]) or a batch
//! ([`run_batch`]): hold a slot, emit `started`, run the handler under its
//! limits, hold deliveries while a `pause` breaker is open, then settle.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use fleet_core::{Acker, JobError};
use fleet_protocol::EventKind;
use futures::FutureExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::admit::{Admitted, admit};
use crate::breaker::Admission;
use crate::context::JobContext;
use crate::guard::{Guarded, Limits, panic_message, run_guarded};
use crate::handler::{BatchHandler, Handler};
use crate::inflight::{Stop, Stoppable};
use crate::outcome::AttemptResult;
use crate::pause::{dependency_failed, record_and_hold};
use crate::run::{Claim, Run};
use crate::settle::{self, settle};
use crate::shared::Shared;
use crate::slot::{Slot, Taken};

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

fn context(
    sh: &Arc<Shared>,
    adm: &Admitted,
    deadline: Instant,
    token: CancellationToken,
    track: &Arc<Run>,
) -> JobContext {
    JobContext {
        attempt: adm.attempt,
        deadline,
        cancel: token,
        track: track.clone() as Arc<dyn crate::context::Track>,
        job: adm.job.clone(),
        sink: sh.sink.clone(),
        runaways: sh.runaways.clone(),
    }
}

/// Runs one delivery through the whole contract, in one task: the handler runs inline, under
/// the shared deadline timer of [`crate::inflight`] (no timer or guard task of its own).
pub async fn run_one(sh: Arc<Shared>, handler: Arc<dyn Handler>, taken: Taken) {
    let mut slot = Slot::new(&sh.metrics.in_flight, taken.permit, taken.held);
    let mut adm = match admit(&sh, taken.delivery) {
        Ok(adm) => adm,
        Err(r) => return settle::refused(&sh, *r).await,
    };
    if adm.attempt == 1 {
        sh.budget.record_first_attempt();
    }
    let key = sh.inflight.key();
    let mut _registered = Registered { sh: &sh, key };
    let mut run = Run::new(&sh, Some(key), 1);
    sh.inflight.insert(key, &adm.job, adm.attempt, run.clone());
    sh.sink
        .emit(sh.event(&adm.job, adm.attempt, 0, EventKind::Started));
    let started = Instant::now();
    let hold_until = started + sh.cfg.max_outage;
    loop {
        let admission = match gate(&sh, &[&*adm.acker], run.token(), hold_until).await {
            Gate::Run(a) => a,
            // The run's token fires for the drain too: the run knows which it was.
            Gate::Stop(Guarded::Cancelled) => {
                return finish(&run, adm, slot, started, run.stopped()).await;
            }
            Gate::Stop(r) => return finish(&run, adm, slot, started, r).await,
        };
        let (deadline, pipeline_deadline) = adm.attempt_deadline();
        let ctx = context(&sh, &adm, deadline, run.token().clone(), &run);
        let job = adm.job.clone();
        let claim = Claim {
            adm,
            slot,
            started,
            pipeline_deadline,
            admission,
        };
        run.hold(claim, deadline).await;
        if sh.drain.is_cancelled() {
            run.clone().stop(Stop::Drained);
        }
        // Let the tasks this one just woke (the event batcher, for `started`) run first: they
        // sit in this thread's LIFO slot, which no other thread steals, so a handler that
        // blocks the thread would otherwise hold them (and every job's settlement) with it.
        tokio::task::yield_now().await;
        let result = tokio::select! {
            biased;
            () = run.token().cancelled() => None,
            r = AssertUnwindSafe(handler.handle(&job, &ctx)).catch_unwind() => Some(r),
        };
        // A stop that took the claim first settles the job (see `Run`).
        let Some(mut claim) = run.claim().await else {
            return;
        };
        let result = match result {
            None => run.stopped(),
            Some(Ok(r)) => Guarded::Done(r),
            Some(Err(p)) => Guarded::Panicked(panic_message(p)),
        };
        if claim.record(&sh, &result) {
            // Held while the dependency is down: run again without counting an attempt, as a
            // fresh run (this one's token may have fired) whose events continue the sequence.
            (adm, slot) = (claim.adm, claim.slot);
            let key = sh.inflight.key();
            _registered = Registered { sh: &sh, key };
            run = Run::new(&sh, Some(key), run.peek_seq());
            sh.inflight.insert(key, &adm.job, adm.attempt, run.clone());
            continue;
        }
        return run.settle(claim, result).await;
    }
}

/// Settles a run that ended before its handler ran (the pause gate stopped it).
async fn finish(run: &Run, adm: Admitted, slot: Slot, started: Instant, r: AttemptResult) {
    let claim = Claim {
        adm,
        slot,
        started,
        pipeline_deadline: false,
        admission: None,
    };
    run.settle(claim, r).await;
}

/// Removes a job from the running set on every path out of its task.
struct Registered<'a> {
    sh: &'a Shared,
    key: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.sh.inflight.remove(self.key);
    }
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
    let track = Run::new(&sh, None, 1);
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
