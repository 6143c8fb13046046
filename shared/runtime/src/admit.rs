//! Steps 1–3 of the delivery contract (DESIGN §5): decode, check attempts
//! before running, drop expired and cancelled jobs with their event.

use std::time::Duration;

use chrono::Utc;
use fleet_core::{Acker, Delivery};
use fleet_protocol::{
    DeadLetterReason, DecodeError, ErrorKind, EventKind, JobEnvelope, decode_job,
};
use tokio::time::Instant;

use crate::settle;
use crate::shared::Shared;
use crate::telemetry::names;

/// A delivery that may run.
pub struct Admitted {
    /// The decoded job.
    pub job: JobEnvelope,
    /// Settles it.
    pub acker: Box<dyn Acker>,
    /// This attempt's number.
    pub attempt: u32,
    /// The job's attempts, clamped to the service maximum.
    pub max_attempts: u32,
    /// Per-attempt timeout, clamped to the service maximum.
    pub timeout: Duration,
    /// When it arrived.
    pub received: Instant,
}

impl Admitted {
    /// The attempt deadline `min(timeout, deadline_at − now)` and whether the pipeline
    /// deadline is the one that binds.
    pub fn attempt_deadline(&self) -> (Instant, bool) {
        let own = Instant::now() + self.timeout;
        match self.job.deadline_at {
            Some(at) => {
                let left = (at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                let pipeline = Instant::now() + left;
                if pipeline < own {
                    (pipeline, true)
                } else {
                    (own, false)
                }
            }
            None => (own, false),
        }
    }
}

/// Decodes and checks a delivery; settles it at once when it must not run.
pub async fn admit(sh: &Shared, d: Delivery) -> Option<Admitted> {
    metrics::counter!(names::JOBS_RECEIVED, "stage" => sh.stage.clone()).increment(1);
    let job = match decode_job(&d.body, sh.cfg.max_message_bytes) {
        Ok(job) => job,
        Err(e) => {
            let reason = match e {
                DecodeError::Oversize { .. } => DeadLetterReason::Poison,
                DecodeError::Malformed(_) => DeadLetterReason::DecodeError,
                DecodeError::UnsupportedVersion(_) => DeadLetterReason::UnsupportedVersion,
            };
            tracing::warn!(stage = %sh.stage, error = %e, "undecodable delivery dead-lettered");
            settle::dead_letter_undecodable(sh, d.acker, reason, &e.to_string(), d.attempt).await;
            return None;
        }
    };
    let max_attempts = job.max_attempts.clamp(1, sh.cfg.max_attempts);
    let span = tracing::info_span!("job", pipeline_id = %job.pipeline_id, job_id = %job.job_id, stage = %sh.stage, attempt = d.attempt);
    let _enter = span.enter();
    if d.attempt > max_attempts {
        // The previous delivery never reported an outcome when the broker redelivered this copy
        // (RabbitMQ x-delivery-count): the message kills its worker.
        let poison = d
            .header("x-delivery-count")
            .and_then(|c| c.parse::<u32>().ok())
            .unwrap_or(0)
            > 0;
        let reason = if poison {
            DeadLetterReason::Poison
        } else {
            DeadLetterReason::AttemptsExhausted
        };
        let text = format!(
            "{} deliveries exceed the {max_attempts} attempts allowed",
            d.attempt
        );
        tracing::warn!(%text, "attempts used up before running");
        settle::finished(sh, "dead_lettered", None);
        settle::dead_letter(
            sh,
            &job,
            d.acker,
            d.attempt,
            reason,
            Some(ErrorKind::Lost),
            &text,
            0,
        )
        .await;
        return None;
    }
    if job.deadline_at.is_some_and(|at| at <= Utc::now()) {
        settle::finished(sh, "expired", None);
        settle::terminal(sh, &job, d.acker, d.attempt, 0, EventKind::Expired).await;
        return None;
    }
    if sh.cancels.cancels(&job) {
        settle::finished(sh, "cancelled", None);
        settle::terminal(sh, &job, d.acker, d.attempt, 0, EventKind::Cancelled).await;
        return None;
    }
    let timeout = Duration::from_millis(job.timeout_ms.max(1)).min(sh.cfg.max_timeout);
    Some(Admitted {
        job,
        acker: d.acker,
        attempt: d.attempt,
        max_attempts,
        timeout,
        received: Instant::now(),
    })
}
