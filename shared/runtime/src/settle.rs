//! The ack decision, in one place: a finished attempt becomes exactly one
//! outcome (ack, delayed retry, dead letter, release, or nothing when the lease
//! is lost), and the terminal event is confirmed before the ack.

use std::time::Duration;

use chrono::Utc;
use fleet_core::{Acker, Destination, JobError, OutMessage};
use fleet_protocol::{DeadLetterInfo, DeadLetterReason, ErrorKind, Event, EventKind, JobEnvelope};
use tokio::time::Instant;

use crate::admit::Admitted;
use crate::backoff::full_jitter;
use crate::guard::Guarded;
use crate::handler::Output;
use crate::shared::Shared;
use crate::telemetry::names;

/// How one attempt ended, as seen by the settle step.
pub type AttemptResult = Guarded<Result<Output, JobError>>;

/// Counts a finished job (and its handler time, when it ran).
pub fn finished(sh: &Shared, outcome: &'static str, started: Option<Instant>) {
    metrics::counter!(names::JOBS_FINISHED, "stage" => sh.stage.clone(), "outcome" => outcome)
        .increment(1);
    if let Some(s) = started {
        metrics::histogram!(names::JOB_DURATION, "stage" => sh.stage.clone(), "outcome" => outcome)
            .record(s.elapsed().as_secs_f64());
    }
}

/// Applies an attempt's result: the one `match` that decides the ack.
pub async fn settle(
    sh: &Shared,
    adm: Admitted,
    result: AttemptResult,
    seq: u32,
    started: Instant,
    pipeline_deadline: bool,
) {
    let Admitted {
        job,
        acker,
        attempt,
        max_attempts,
        ..
    } = adm;
    // Failures that may be retried: (how it failed, what to report, minimum delay).
    let failure: (ErrorKind, String, Option<Duration>) = match result {
        Guarded::Done(Ok(Output { payload, degraded })) => match job.next_job(payload) {
            Some(next) if let Err(e) = publish_next(sh, &next).await => (
                ErrorKind::HandlerError,
                format!("publishing the next stage's job failed: {e}"),
                None,
            ),
            _ => {
                finished(sh, "succeeded", Some(started));
                let event = sh.event_degraded(&job, attempt, seq, EventKind::Succeeded, degraded);
                return terminal_event(sh, &job, acker, event).await;
            }
        },
        Guarded::Done(Err(JobError::Permanent(text))) => {
            finished(sh, "dead_lettered", Some(started));
            let (reason, kind) = (
                DeadLetterReason::PermanentError,
                Some(ErrorKind::HandlerError),
            );
            return dead_letter(sh, &job, acker, attempt, reason, kind, &text, seq).await;
        }
        Guarded::Done(Err(JobError::Retryable(text))) => (ErrorKind::HandlerError, text, None),
        Guarded::Done(Err(JobError::RetryAfter { delay, message })) => {
            (ErrorKind::HandlerError, message, Some(delay))
        }
        Guarded::TimedOut if pipeline_deadline => {
            finished(sh, "expired", Some(started));
            return terminal(sh, &job, acker, attempt, seq, EventKind::Expired).await;
        }
        Guarded::TimedOut => {
            metrics::counter!(names::DEADLINE_EXCEEDED, "stage" => sh.stage.clone()).increment(1);
            let limit = Duration::from_millis(job.timeout_ms).min(sh.cfg.max_timeout);
            let text = format!(
                "attempt exceeded its deadline of {}",
                humantime::format_duration(limit)
            );
            tracing::warn!(job_id = %job.job_id, attempt, "{text}");
            (ErrorKind::Timeout, text, None)
        }
        Guarded::Panicked(text) => {
            metrics::counter!(names::HANDLER_PANICS, "stage" => sh.stage.clone()).increment(1);
            tracing::error!(job_id = %job.job_id, attempt, "{text}");
            (ErrorKind::Panic, text, None)
        }
        Guarded::LeaseLost(text) => {
            // The broker may already have handed the job to someone else: publish nothing.
            metrics::counter!(names::LEASES_LOST, "stage" => sh.stage.clone()).increment(1);
            tracing::warn!(job_id = %job.job_id, attempt, error = %text, "lease lost; the broker redelivers the job");
            return;
        }
        Guarded::Cancelled => {
            finished(sh, "cancelled", Some(started));
            return terminal(sh, &job, acker, attempt, seq, EventKind::Cancelled).await;
        }
        Guarded::Drained => {
            tracing::info!(job_id = %job.job_id, attempt, "drain deadline reached; returning the job to the broker (the attempt is not counted)");
            // A graceful drain is not the job's fault: its next delivery keeps this attempt
            // number (DESIGN §5.9).
            if let Err(e) = acker.release_uncounted().await {
                tracing::warn!(error = %e, "release failed; the broker redelivers after the connection closes");
            }
            return;
        }
    };
    let (kind, text, at_least) = failure;
    let limits = (attempt, max_attempts, seq);
    retry_or_dead_letter(sh, &job, acker, limits, kind, &text, at_least).await;
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

/// Gives a delivery back; failures mean the connection is gone, and the broker redelivers anyway.
pub async fn release(acker: Box<dyn Acker>) {
    if let Err(e) = acker.release().await {
        tracing::warn!(error = %e, "release failed; the broker redelivers after the connection closes");
    }
}

/// Confirms a terminal event, then acks. If the event cannot be confirmed the delivery is
/// released, so a retry reports it again (never an ack without its event).
pub async fn terminal(
    sh: &Shared,
    job: &JobEnvelope,
    acker: Box<dyn Acker>,
    attempt: u32,
    seq: u32,
    kind: EventKind,
) {
    terminal_event(sh, job, acker, sh.event(job, attempt, seq, kind)).await;
}

/// Confirms the terminal `event` of `job`, then acks (see [`terminal`]).
pub async fn terminal_event(sh: &Shared, job: &JobEnvelope, acker: Box<dyn Acker>, event: Event) {
    if let Err(e) = sh
        .sink
        .emit_confirmed(event, sh.cfg.confirm_timeout * 2)
        .await
    {
        tracing::warn!(job_id = %job.job_id, error = %e, "terminal event not confirmed; releasing the job");
        return release(acker).await;
    }
    if let Err(e) = acker.ack().await {
        tracing::warn!(job_id = %job.job_id, error = %e, "ack failed; the job will be redelivered and its effects must be idempotent");
    }
}

/// Dead-letters a decoded job with its event.
#[allow(clippy::too_many_arguments)]
pub async fn dead_letter(
    sh: &Shared,
    job: &JobEnvelope,
    acker: Box<dyn Acker>,
    attempt: u32,
    reason: DeadLetterReason,
    kind: Option<ErrorKind>,
    text: &str,
    seq: u32,
) {
    let info = info(sh, reason, kind, text, attempt, Some(job.job_id.clone()));
    // An optional stage passes the item on before giving up on its own job (outputs first,
    // settle last, as on success).
    if !job.required
        && let Some(next) = job.skip_forward(reason.as_str(), &info.last_error)
        && let Err(e) = publish_next(sh, &next).await
    {
        tracing::warn!(job_id = %job.job_id, error = %e, "skip-forward publish failed; releasing the job");
        return release(acker).await;
    }
    let event = sh.event(
        job,
        attempt,
        seq,
        EventKind::DeadLettered {
            reason,
            error: info.last_error.clone(),
        },
    );
    if let Err(e) = sh
        .sink
        .emit_confirmed(event, sh.cfg.confirm_timeout * 2)
        .await
    {
        tracing::warn!(job_id = %job.job_id, error = %e, "dead-letter event not confirmed; releasing the job");
        return release(acker).await;
    }
    if let Err(e) = acker.dead_letter(&info).await {
        tracing::warn!(job_id = %job.job_id, error = %e, "dead-lettering failed; the broker redelivers the job");
    }
}

/// Dead-letters a body that is not a job (no event: there is no job id to report).
pub async fn dead_letter_undecodable(
    sh: &Shared,
    acker: Box<dyn Acker>,
    reason: DeadLetterReason,
    text: &str,
    attempt: u32,
) {
    finished(sh, "dead_lettered", None);
    let info = info(sh, reason, None, text, attempt, None);
    if let Err(e) = acker.dead_letter(&info).await {
        tracing::warn!(error = %e, "dead-lettering an undecodable message failed; it will be redelivered");
    }
}

fn info(
    sh: &Shared,
    reason: DeadLetterReason,
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

/// Retries with backoff (stretched while the budget is exceeded), or dead-letters when no
/// attempts remain.
pub async fn retry_or_dead_letter(
    sh: &Shared,
    job: &JobEnvelope,
    acker: Box<dyn Acker>,
    (attempt, max_attempts, seq): (u32, u32, u32),
    kind: ErrorKind,
    text: &str,
    at_least: Option<Duration>,
) {
    if attempt >= max_attempts {
        finished(sh, "dead_lettered", None);
        return dead_letter(
            sh,
            job,
            acker,
            attempt,
            DeadLetterReason::AttemptsExhausted,
            Some(kind),
            text,
            seq,
        )
        .await;
    }
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
    match acker.retry(delay).await {
        Ok(used) => {
            finished(sh, "retried", None);
            let event = sh.event(
                job,
                attempt,
                seq,
                EventKind::Retrying {
                    delay_ms: u64::try_from(used.as_millis()).unwrap_or(u64::MAX),
                    error: fleet_protocol::deadletter::bound_error(text),
                },
            );
            sh.sink.emit(event);
        }
        Err(e) => {
            tracing::warn!(job_id = %job.job_id, error = %e, "retry failed; the broker redelivers the job")
        }
    }
}
