//! How an attempt ended, decided purely: [`decide`] turns an attempt's result into an
//! [`Outcome`], and [`Outcome::settlement`] into the broker-neutral [`Settlement`] that
//! [`crate::settle`] applies. No broker, no clock, no metrics here: the table tests below
//! cover every row of the settle table (architecture §5).

use std::time::Duration;

use fleet_core::{JobError, Settlement};
use fleet_protocol::{DeadLetterInfo, DeadLetterReason, Degradation, ErrorKind};

use crate::guard::Guarded;
use crate::handler::Output;

/// How one attempt ended, as seen by the settle step.
pub type AttemptResult = Guarded<Result<Output, JobError>>;

/// What the decision needs to know about the attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// This attempt's number (1 for the first delivery).
    pub number: u32,
    /// Attempts allowed, clamped to the service maximum.
    pub max: u32,
    /// True when the pipeline's `deadline_at` (not the job's own timeout) bounded the run, so a
    /// timeout means the pipeline expired rather than the attempt failing.
    pub pipeline_deadline: bool,
    /// The attempt's own time limit (for the timeout's error text).
    pub timeout: Duration,
}

/// How a delivery ends, before any broker work.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The handler succeeded: publish the next stage's job, confirm `succeeded`, ack.
    Succeeded {
        /// The handler's output payload (the next stage's input).
        payload: serde_json::Value,
        /// A degradation note for the event.
        degraded: Option<Degradation>,
    },
    /// The pipeline's deadline passed: confirm `expired`, ack.
    Expired,
    /// The pipeline was cancelled: confirm `cancelled`, ack.
    Cancelled,
    /// Run again after a backoff of at least `at_least`; `retrying` follows the settlement.
    Retry {
        /// How it failed.
        kind: ErrorKind,
        /// What to report.
        error: String,
        /// A floor on the delay (`JobError::RetryAfter`).
        at_least: Option<Duration>,
    },
    /// Give up: confirm `dead_lettered` (when there is a job), then dead-letter.
    DeadLetter {
        /// Why processing stopped.
        reason: DeadLetterReason,
        /// How the last attempt failed, if it ran.
        kind: Option<ErrorKind>,
        /// The last error.
        error: String,
    },
    /// The drain deadline returned the job: give it back without counting the attempt.
    Drained,
    /// The lease was lost: the broker may already have handed the job on, so send nothing.
    LeaseLost(String),
}

impl Outcome {
    /// The `outcome` label of `fleet_jobs_finished_total`; `None` when the job did not finish
    /// here (drained, lease lost).
    pub fn label(&self) -> Option<&'static str> {
        match self {
            Outcome::Succeeded { .. } => Some("succeeded"),
            Outcome::Expired => Some("expired"),
            Outcome::Cancelled => Some("cancelled"),
            Outcome::Retry { .. } => Some("retried"),
            Outcome::DeadLetter { .. } => Some("dead_lettered"),
            Outcome::Drained | Outcome::LeaseLost(_) => None,
        }
    }

    /// The settlement this outcome ends in. `retry_delay` is the backoff already chosen for a
    /// retry and `dead_letter` the headers of a dead letter (both need clocks or randomness);
    /// a dead letter without headers is released instead, so nothing is lost.
    pub fn settlement(
        &self,
        retry_delay: Duration,
        dead_letter: Option<DeadLetterInfo>,
    ) -> Settlement {
        match self {
            Outcome::Succeeded { .. } | Outcome::Expired | Outcome::Cancelled => Settlement::Ack,
            Outcome::Retry { .. } => Settlement::Retry(retry_delay),
            Outcome::DeadLetter { .. } => match dead_letter {
                Some(info) => Settlement::DeadLetter(Box::new(info)),
                None => Settlement::Release,
            },
            Outcome::Drained => Settlement::ReleaseUncounted,
            Outcome::LeaseLost(_) => Settlement::Leave,
        }
    }
}

/// A retryable failure: retried while attempts remain, else dead-lettered as exhausted.
pub fn retry_or_give_up(
    a: &Attempt,
    kind: ErrorKind,
    error: String,
    at_least: Option<Duration>,
) -> Outcome {
    if a.number >= a.max {
        Outcome::DeadLetter {
            reason: DeadLetterReason::AttemptsExhausted,
            kind: Some(kind),
            error,
        }
    } else {
        Outcome::Retry {
            kind,
            error,
            at_least,
        }
    }
}

/// The decision: how an attempt's result ends its delivery.
pub fn decide(a: &Attempt, result: AttemptResult) -> Outcome {
    match result {
        Guarded::Done(Ok(Output { payload, degraded })) => Outcome::Succeeded { payload, degraded },
        Guarded::Done(Err(JobError::Permanent(error))) => Outcome::DeadLetter {
            reason: DeadLetterReason::PermanentError,
            kind: Some(ErrorKind::HandlerError),
            error,
        },
        Guarded::Done(Err(JobError::Retryable(error))) => {
            retry_or_give_up(a, ErrorKind::HandlerError, error, None)
        }
        Guarded::Done(Err(JobError::RetryAfter { delay, message })) => {
            retry_or_give_up(a, ErrorKind::HandlerError, message, Some(delay))
        }
        Guarded::TimedOut if a.pipeline_deadline => Outcome::Expired,
        Guarded::TimedOut => {
            let error = format!(
                "attempt exceeded its deadline of {}",
                humantime::format_duration(a.timeout)
            );
            retry_or_give_up(a, ErrorKind::Timeout, error, None)
        }
        Guarded::Panicked(error) => retry_or_give_up(a, ErrorKind::Panic, error, None),
        Guarded::LeaseLost(error) => Outcome::LeaseLost(error),
        Guarded::Cancelled => Outcome::Cancelled,
        Guarded::Drained => Outcome::Drained,
    }
}

/// Attempts used up before running: dead-letter as `poison` when the previous delivery never
/// reported an outcome (RabbitMQ `x-delivery-count` > 0), else as `attempts_exhausted`.
pub fn exhausted_before_running(attempt: u32, max: u32, redelivered: bool) -> Outcome {
    Outcome::DeadLetter {
        reason: if redelivered {
            DeadLetterReason::Poison
        } else {
            DeadLetterReason::AttemptsExhausted
        },
        kind: Some(ErrorKind::Lost),
        error: format!("{attempt} deliveries exceed the {max} attempts allowed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(number: u32, max: u32, pipeline_deadline: bool) -> Attempt {
        Attempt {
            number,
            max,
            pipeline_deadline,
            timeout: Duration::from_secs(30),
        }
    }

    fn ok() -> AttemptResult {
        Guarded::Done(Ok(Output::default()))
    }

    fn err(e: JobError) -> AttemptResult {
        Guarded::Done(Err(e))
    }

    /// What the table checks of an outcome: (label, settlement label, reason, kind).
    type Shape = (
        Option<&'static str>,
        &'static str,
        Option<DeadLetterReason>,
        Option<ErrorKind>,
    );

    fn shape(o: &Outcome) -> Shape {
        let info = DeadLetterInfo {
            reason: DeadLetterReason::Poison,
            last_error_kind: None,
            last_error: String::new(),
            attempts: 0,
            stage: String::new(),
            worker_id: String::new(),
            at: chrono::DateTime::UNIX_EPOCH,
            job_id: None,
        };
        let settlement = o.settlement(Duration::from_secs(1), Some(info)).label();
        let (reason, kind) = match o {
            Outcome::DeadLetter { reason, kind, .. } => (Some(*reason), *kind),
            Outcome::Retry { kind, .. } => (None, Some(*kind)),
            _ => (None, None),
        };
        (o.label(), settlement, reason, kind)
    }

    #[test]
    fn every_row_of_the_settle_table() {
        use DeadLetterReason::{AttemptsExhausted as Exhausted, PermanentError};
        use ErrorKind::{HandlerError, Panic, Timeout};
        let retry = |m: &str| JobError::Retryable(m.into());
        let after = || JobError::RetryAfter {
            delay: Duration::from_secs(5),
            message: "busy".into(),
        };
        #[rustfmt::skip]
        let table: Vec<(Attempt, AttemptResult, Shape)> = vec![
            (attempt(1, 3, false), ok(), (Some("succeeded"), "ack", None, None)),
            (attempt(3, 3, false), ok(), (Some("succeeded"), "ack", None, None)),
            (attempt(1, 3, false), err(JobError::Permanent("bad".into())), (Some("dead_lettered"), "dead_letter", Some(PermanentError), Some(HandlerError))),
            (attempt(1, 3, false), err(retry("x")), (Some("retried"), "retry", None, Some(HandlerError))),
            (attempt(3, 3, false), err(retry("x")), (Some("dead_lettered"), "dead_letter", Some(Exhausted), Some(HandlerError))),
            (attempt(2, 3, false), err(after()), (Some("retried"), "retry", None, Some(HandlerError))),
            (attempt(3, 3, false), err(after()), (Some("dead_lettered"), "dead_letter", Some(Exhausted), Some(HandlerError))),
            (attempt(1, 3, false), Guarded::TimedOut, (Some("retried"), "retry", None, Some(Timeout))),
            (attempt(3, 3, false), Guarded::TimedOut, (Some("dead_lettered"), "dead_letter", Some(Exhausted), Some(Timeout))),
            (attempt(1, 3, true), Guarded::TimedOut, (Some("expired"), "ack", None, None)),
            (attempt(3, 3, true), Guarded::TimedOut, (Some("expired"), "ack", None, None)),
            (attempt(1, 3, false), Guarded::Panicked("boom".into()), (Some("retried"), "retry", None, Some(Panic))),
            (attempt(3, 3, false), Guarded::Panicked("boom".into()), (Some("dead_lettered"), "dead_letter", Some(Exhausted), Some(Panic))),
            (attempt(1, 3, false), Guarded::Cancelled, (Some("cancelled"), "ack", None, None)),
            (attempt(1, 3, false), Guarded::Drained, (None, "release_uncounted", None, None)),
            (attempt(1, 3, false), Guarded::LeaseLost("gone".into()), (None, "leave", None, None)),
        ];
        for (i, (a, result, want)) in table.into_iter().enumerate() {
            let got = decide(&a, result);
            assert_eq!(shape(&got), want, "row {i}: {got:?}");
        }
    }

    #[test]
    fn retry_after_keeps_its_floor_and_timeouts_name_the_limit() {
        let a = attempt(1, 3, false);
        let o = decide(
            &a,
            err(JobError::RetryAfter {
                delay: Duration::from_secs(7),
                message: "later".into(),
            }),
        );
        assert!(
            matches!(o, Outcome::Retry { at_least: Some(d), .. } if d == Duration::from_secs(7))
        );
        let Outcome::Retry { error, .. } = decide(&a, Guarded::TimedOut) else {
            panic!("a timeout with attempts left retries");
        };
        assert!(error.contains("30s"), "{error}");
    }

    #[test]
    fn exhausted_before_running_is_poison_only_after_a_silent_redelivery() {
        let shape_of = |redelivered| match exhausted_before_running(4, 3, redelivered) {
            Outcome::DeadLetter { reason, kind, .. } => (reason, kind),
            o => panic!("{o:?}"),
        };
        assert_eq!(
            shape_of(true),
            (DeadLetterReason::Poison, Some(ErrorKind::Lost))
        );
        assert_eq!(
            shape_of(false),
            (DeadLetterReason::AttemptsExhausted, Some(ErrorKind::Lost))
        );
    }
}
