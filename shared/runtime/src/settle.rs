//! Applying an outcome, the one place a job delivery is settled: outputs first (the next
//! stage's job, or an optional stage's skip-forward), then the terminal event (confirmed),
//! then the [`Settlement`], and only then the outcome metrics. A terminal event that cannot
//! be confirmed turns the settlement into a release, so an ack never goes out without it.
//!
//! What the outcome is, is decided purely in [`crate::outcome`].

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use fleet_core::{Acker, Applied, Destination, OutMessage, Settlement};
use fleet_protocol::{DeadLetterInfo, ErrorKind, EventKind, JobEnvelope};
use tokio::time::Instant;

use crate::admit::{Admitted, Refused};
use crate::backoff::full_jitter;
use crate::events::JobEvent;
use crate::guard::Guarded;
use crate::outcome::{Attempt, AttemptResult, Outcome, decide, retry_or_give_up};
use crate::shared::Shared;
use crate::telemetry::names;

/// Settles an attempt that ran: decides its outcome, then applies it.
pub async fn settle(
    sh: &Shared,
    adm: Admitted,
    result: AttemptResult,
    seq: u32,
    started: Instant,
    pipeline_deadline: bool,
) {
    let attempt = Attempt {
        number: adm.attempt,
        max: adm.max_attempts,
        pipeline_deadline,
        timeout: adm.timeout,
    };
    note_failure(sh, &adm.job, &attempt, &result);
    let outcome = decide(&attempt, result);
    apply(
        sh,
        Some(&adm.job),
        adm.acker,
        &attempt,
        seq,
        outcome,
        Some(started),
    )
    .await;
}

/// Settles a delivery that was refused before running (see [`crate::admit`]).
pub async fn refused(sh: &Shared, r: Refused) {
    apply(sh, r.job.as_ref(), r.acker, &r.attempt, 0, r.outcome, None).await;
}

/// Logs and counts the failures that have their own metric (timeouts, panics, lost leases).
fn note_failure(sh: &Shared, job: &JobEnvelope, a: &Attempt, result: &AttemptResult) {
    match result {
        Guarded::TimedOut if !a.pipeline_deadline => {
            metrics::counter!(names::DEADLINE_EXCEEDED, "stage" => sh.stage.clone()).increment(1);
            tracing::warn!(job_id = %job.job_id, attempt = a.number, limit = ?a.timeout, "attempt exceeded its deadline");
        }
        Guarded::Panicked(text) => {
            metrics::counter!(names::HANDLER_PANICS, "stage" => sh.stage.clone()).increment(1);
            tracing::error!(job_id = %job.job_id, attempt = a.number, "{text}");
        }
        Guarded::LeaseLost(text) => {
            metrics::counter!(names::LEASES_LOST, "stage" => sh.stage.clone()).increment(1);
            tracing::warn!(job_id = %job.job_id, attempt = a.number, error = %text, "lease lost; the broker redelivers the job");
        }
        Guarded::Drained => {
            // A graceful drain is not the job's fault: its next delivery keeps this attempt
            // number (DESIGN §5.9).
            tracing::info!(job_id = %job.job_id, attempt = a.number, "drain deadline reached; returning the job to the broker (the attempt is not counted)");
        }
        _ => {}
    }
}

/// Applies `outcome` to a delivery of `job` (`None`: a body that is not a job, which gets no
/// event because there is no job id to report).
pub async fn apply(
    sh: &Shared,
    job: Option<&Arc<JobEnvelope>>,
    acker: Box<dyn Acker>,
    a: &Attempt,
    seq: u32,
    outcome: Outcome,
    started: Option<Instant>,
) {
    let job_id = job.map(|j| j.job_id.as_str()).unwrap_or_default();
    // 1. Outputs, before anything that reports the job done.
    let outcome = match outputs(sh, job, a, outcome).await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(job_id, error = %e, "publishing the job's output failed; releasing the job");
            return release(acker, job_id).await;
        }
    };
    let info = |o: &Outcome| match o {
        Outcome::DeadLetter {
            reason,
            kind,
            error,
        } => Some(dead_letter_info(
            sh,
            *reason,
            *kind,
            error,
            a.number,
            job.map(|j| j.job_id.clone()),
        )),
        _ => None,
    };
    let dl = info(&outcome);
    // 2. The terminal event, confirmed (a job's ack waits for it).
    if let Some(job) = job
        && let Some(event) = terminal_event(sh, job, a.number, seq, &outcome, dl.as_ref())
        && let Err(e) = sh
            .sink
            .emit_confirmed(event, sh.cfg.confirm_timeout * 2)
            .await
    {
        tracing::warn!(job_id, error = %e, "terminal event not confirmed; releasing the job");
        return release(acker, job_id).await;
    }
    // 3. The settlement.
    let delay = match &outcome {
        Outcome::Retry { at_least, .. } => retry_delay(sh, a.number, *at_least),
        _ => Duration::ZERO,
    };
    let settlement = outcome.settlement(delay, dl);
    let Some(applied) = settlement.apply_logged(acker, job_id).await else {
        return;
    };
    // 4. Metrics (and the `retrying` event, which names the delay the broker used) only for
    // what was applied.
    if let Some(label) = outcome.label() {
        sh.metrics.finished(label, started);
    }
    if let (Some(job), Outcome::Retry { error, .. }, Applied::Retried(used)) =
        (job, &outcome, applied)
    {
        let kind = EventKind::Retrying {
            delay_ms: u64::try_from(used.as_millis()).unwrap_or(u64::MAX),
            error: fleet_protocol::deadletter::bound_error(error),
        };
        sh.sink.emit(sh.event(job, a.number, seq, kind));
    }
}

/// Publishes what must precede the settlement: the next stage's job after a success (a failed
/// publish turns the success into a retryable failure), an optional stage's skip-forward before
/// it is dead-lettered (a failed publish is an error: the job is released).
async fn outputs(
    sh: &Shared,
    job: Option<&Arc<JobEnvelope>>,
    a: &Attempt,
    outcome: Outcome,
) -> Result<Outcome, fleet_core::BrokerError> {
    let Some(job) = job else { return Ok(outcome) };
    match outcome {
        Outcome::Succeeded { payload, degraded } => match job.next_job(payload) {
            Some(next) if let Err(e) = publish_next(sh, &next).await => Ok(retry_or_give_up(
                a,
                ErrorKind::HandlerError,
                format!("publishing the next stage's job failed: {e}"),
                None,
            )),
            _ => Ok(Outcome::Succeeded {
                payload: serde_json::Value::Null,
                degraded,
            }),
        },
        Outcome::DeadLetter {
            reason,
            kind,
            error,
        } if !job.required => {
            let bounded = fleet_protocol::deadletter::bound_error(&error);
            if let Some(next) = job.skip_forward(reason.as_str(), &bounded) {
                publish_next(sh, &next).await?;
            }
            Ok(Outcome::DeadLetter {
                reason,
                kind,
                error,
            })
        }
        o => Ok(o),
    }
}

/// The terminal event of an outcome that has one (retries report theirs after the settlement).
fn terminal_event(
    sh: &Shared,
    job: &Arc<JobEnvelope>,
    attempt: u32,
    seq: u32,
    outcome: &Outcome,
    dl: Option<&DeadLetterInfo>,
) -> Option<JobEvent> {
    let kind = match outcome {
        Outcome::Succeeded { degraded, .. } => {
            return Some(sh.event_degraded(
                job,
                attempt,
                seq,
                EventKind::Succeeded,
                degraded.clone(),
            ));
        }
        Outcome::Expired => EventKind::Expired,
        Outcome::Cancelled => EventKind::Cancelled,
        Outcome::DeadLetter { reason, .. } => EventKind::DeadLettered {
            reason: *reason,
            error: dl.map(|i| i.last_error.clone()).unwrap_or_default(),
        },
        Outcome::Retry { .. } | Outcome::Drained | Outcome::LeaseLost(_) => return None,
    };
    Some(sh.event(job, attempt, seq, kind))
}

/// Backoff with full jitter, at least `at_least`, stretched to the maximum while the retry
/// budget is exceeded.
fn retry_delay(sh: &Shared, attempt: u32, at_least: Option<Duration>) -> Duration {
    let mut delay = full_jitter(
        attempt,
        sh.cfg.retry_base,
        sh.cfg.retry_max,
        &mut rand::rng(),
    );
    if let Some(min) = at_least {
        delay = delay.max(min);
    }
    if !sh.budget.record_retry() {
        metrics::counter!(names::RETRY_BUDGET_EXHAUSTED, "stage" => sh.stage.clone()).increment(1);
        delay = sh.cfg.retry_max.max(delay);
    }
    delay
}

/// Publishes the next stage's job (confirmed), declaring that stage's queues first.
async fn publish_next(sh: &Shared, next: &JobEnvelope) -> Result<(), fleet_core::BrokerError> {
    sh.ensure_stage(&next.stage).await?;
    let msg = OutMessage {
        dest: Destination::Job {
            stage: next.stage.clone(),
        },
        body: next.to_bytes().into(),
        msg_id: Some(next.job_id.clone()),
        headers: Vec::new(),
    };
    sh.broker.publish(msg).await
}

/// Gives a delivery back (counted); a failure means the connection is gone, and the broker
/// redelivers anyway.
async fn release(acker: Box<dyn Acker>, job_id: &str) {
    Settlement::Release.apply_logged(acker, job_id).await;
}

fn dead_letter_info(
    sh: &Shared,
    reason: fleet_protocol::DeadLetterReason,
    kind: Option<ErrorKind>,
    text: &str,
    attempts: u32,
    job_id: Option<String>,
) -> DeadLetterInfo {
    DeadLetterInfo {
        reason,
        last_error_kind: kind,
        last_error: fleet_protocol::deadletter::bound_error(text),
        attempts,
        stage: sh.stage.clone(),
        worker_id: sh.worker_id.clone(),
        at: Utc::now(),
        job_id,
    }
}
