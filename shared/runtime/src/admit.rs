//! Steps 1–3 of the delivery contract (DESIGN §5): decode, check attempts
//! before running, refuse expired and cancelled jobs. Refused deliveries carry their
//! [`Outcome`]; [`crate::settle`] applies it (their event, then the settlement).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use fleet_core::{Acker, Delivery};
use fleet_protocol::{DeadLetterReason, DecodeError, JobEnvelope, decode_job};
use tokio::time::Instant;

use crate::outcome::{Attempt, Outcome, exhausted_before_running};
use crate::shared::Shared;

/// A delivery that may run.
pub struct Admitted {
    /// The decoded job (shared with the handler's task without copying it).
    pub job: Arc<JobEnvelope>,
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

/// A delivery that must not run, with the outcome that ends it (settled by
/// [`crate::settle::refused`]).
pub struct Refused {
    /// The job, when the body decoded.
    pub job: Option<Arc<JobEnvelope>>,
    /// Settles it.
    pub acker: Box<dyn Acker>,
    /// The attempt it would have been.
    pub attempt: Attempt,
    /// How it ends.
    pub outcome: Outcome,
}

/// Decodes and checks a delivery: it runs, or it is refused with its outcome (nothing is
/// settled here).
pub fn admit(sh: &Shared, d: Delivery) -> Result<Admitted, Box<Refused>> {
    sh.metrics.received.increment(1);
    let refuse = |job: Option<JobEnvelope>, acker, attempt, outcome| {
        Err(Box::new(Refused {
            job: job.map(Arc::new),
            acker,
            attempt,
            outcome,
        }))
    };
    let mut attempt = Attempt {
        number: d.attempt,
        max: sh.cfg.max_attempts,
        pipeline_deadline: false,
        timeout: sh.cfg.max_timeout,
    };
    let job = match decode_job(&d.body, sh.cfg.max_message_bytes) {
        Ok(job) => job,
        Err(e) => {
            let reason = match e {
                DecodeError::Oversize { .. } => DeadLetterReason::Poison,
                DecodeError::Malformed(_) => DeadLetterReason::DecodeError,
                DecodeError::UnsupportedVersion(_) => DeadLetterReason::UnsupportedVersion,
            };
            tracing::warn!(stage = %sh.stage, error = %e, "undecodable delivery dead-lettered");
            let outcome = Outcome::DeadLetter {
                reason,
                kind: None,
                error: e.to_string(),
            };
            return refuse(None, d.acker, attempt, outcome);
        }
    };
    attempt.max = job.max_attempts.clamp(1, sh.cfg.max_attempts);
    attempt.timeout = Duration::from_millis(job.timeout_ms.max(1)).min(sh.cfg.max_timeout);
    if d.attempt > attempt.max {
        // The previous delivery never reported an outcome when the broker redelivered this copy
        // (RabbitMQ x-delivery-count): the message kills its worker.
        let redelivered = d
            .header("x-delivery-count")
            .and_then(|c| c.parse::<u32>().ok())
            .unwrap_or(0)
            > 0;
        let outcome = exhausted_before_running(d.attempt, attempt.max, redelivered);
        tracing::warn!(pipeline_id = %job.pipeline_id, job_id = %job.job_id, attempt = d.attempt, ?outcome, "attempts used up before running");
        return refuse(Some(job), d.acker, attempt, outcome);
    }
    if job.deadline_at.is_some_and(|at| at <= Utc::now()) {
        return refuse(Some(job), d.acker, attempt, Outcome::Expired);
    }
    if sh.cancels.cancels(&job) {
        return refuse(Some(job), d.acker, attempt, Outcome::Cancelled);
    }
    Ok(Admitted {
        job: Arc::new(job),
        acker: d.acker,
        attempt: d.attempt,
        max_attempts: attempt.max,
        timeout: attempt.timeout,
        received: Instant::now(),
    })
}
