//! Intake gates (DESIGN §5, breaker policy `pause`): while the dependency a
//! stage cannot work without is unusable, the worker pulls nothing, holds what
//! it has (leases kept alive, no attempt counted) and answers `/readyz` 503
//! with the reason; `fleet_intake_paused{stage}` says so to the alerts. One
//! breaker is a gate; a service with several dependencies that route to each
//! other (the summarizer's providers) implements the trait over all of them.

use std::sync::Arc;

use tokio::time::Instant;

use fleet_core::JobError;

use crate::breaker::{Admission, Breaker, BreakerState};
use crate::guard::Guarded;

/// A dependency (or set of them) that decides whether a worker may take jobs.
pub trait IntakeGate: Send + Sync + std::fmt::Debug {
    /// Closed: take jobs; half-open: one probe at a time; open: take nothing.
    fn state(&self) -> BreakerState;
    /// When an open gate probes next (its timer; now when not open).
    fn probe_at(&self) -> Instant;
    /// Permission to run one attempt now: `None` while open or while probes are out.
    fn admit(&self) -> Option<Admission>;
    /// Records an attempt's result: `Some(true)` the dependency failed, `Some(false)` it
    /// worked, `None` no evidence (cancelled, drained, lease lost).
    fn record(&self, admission: Admission, failed: Option<bool>);
    /// Why intake is paused, for `/readyz` and the log.
    fn reason(&self) -> String;
}

impl IntakeGate for Breaker {
    fn state(&self) -> BreakerState {
        Breaker::state(self)
    }
    fn probe_at(&self) -> Instant {
        Breaker::probe_at(self)
    }
    fn admit(&self) -> Option<Admission> {
        Breaker::admit(self)
    }
    fn record(&self, admission: Admission, failed: Option<bool>) {
        match failed {
            Some(failed) => Breaker::record(self, admission, !failed),
            None => self.cancel_probe(admission),
        }
    }
    fn reason(&self) -> String {
        format!(
            "dependency `{}` unavailable (circuit breaker {})",
            self.dependency(),
            state_word(Breaker::state(self))
        )
    }
}

/// The breaker state as a word for messages.
pub fn state_word(s: BreakerState) -> &'static str {
    match s {
        BreakerState::Closed => "closed",
        BreakerState::HalfOpen => "half-open, probing",
        BreakerState::Open => "open",
    }
}

/// A gate over several breakers whose calls route to one another: usable while any of
/// them is. The breakers themselves are recorded by the calls the handler makes, so
/// admitting takes nothing and recording does nothing here.
#[derive(Debug)]
pub struct AnyOf {
    breakers: Vec<Arc<Breaker>>,
    what: String,
}

impl AnyOf {
    /// A gate over `breakers`; `what` names them in the pause reason (e.g. "summary provider").
    pub fn new(breakers: Vec<Arc<Breaker>>, what: &str) -> AnyOf {
        AnyOf {
            breakers,
            what: what.to_owned(),
        }
    }
}

impl IntakeGate for AnyOf {
    fn state(&self) -> BreakerState {
        let states: Vec<BreakerState> = self.breakers.iter().map(|b| b.state()).collect();
        if states.is_empty() || states.contains(&BreakerState::Closed) {
            BreakerState::Closed
        } else if states.contains(&BreakerState::HalfOpen) {
            BreakerState::HalfOpen
        } else {
            BreakerState::Open
        }
    }
    fn probe_at(&self) -> Instant {
        self.breakers
            .iter()
            .map(|b| b.probe_at())
            .min()
            .unwrap_or_else(Instant::now)
    }
    fn admit(&self) -> Option<Admission> {
        let usable = self.breakers.is_empty() || self.breakers.iter().any(|b| b.would_admit());
        usable.then_some(Admission::Call)
    }
    fn record(&self, _admission: Admission, _failed: Option<bool>) {}
    fn reason(&self) -> String {
        let each: Vec<String> = self
            .breakers
            .iter()
            .map(|b| format!("`{}` {}", b.dependency(), state_word(b.state())))
            .collect();
        format!(
            "no usable {}: every circuit breaker is open or probing ({})",
            self.what,
            each.join(", ")
        )
    }
}

/// Whether an attempt's result blames the dependency behind a `pause` breaker.
pub(crate) fn dependency_failed<T>(r: &Guarded<Result<T, JobError>>) -> Option<bool> {
    match r {
        Guarded::Done(Ok(_)) | Guarded::Done(Err(JobError::Permanent(_))) => Some(false),
        Guarded::Done(Err(_)) | Guarded::TimedOut => Some(true),
        _ => None,
    }
}

/// After an attempt: record it on the pause gate; true when the deliveries must be held
/// and run again without counting an attempt (it failed while the dependency is unusable).
pub(crate) fn record_and_hold(
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{BreakerConfig, BreakerPolicy};

    fn b(name: &str, open_for: u64) -> Arc<Breaker> {
        Arc::new(Breaker::new(
            name,
            BreakerPolicy::Route,
            BreakerConfig {
                failure_threshold: 1,
                open_for: Duration::from_secs(open_for),
                half_open_probes: 1,
            },
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn any_of_is_usable_while_one_breaker_is() {
        let (x, y) = (b("x", 5), b("y", 10));
        let g = AnyOf::new(vec![x.clone(), y.clone()], "provider");
        assert_eq!(g.state(), BreakerState::Closed);
        x.record(Admission::Call, false);
        assert_eq!(g.state(), BreakerState::Closed);
        assert!(g.admit().is_some());
        y.record(Admission::Call, false);
        assert_eq!(g.state(), BreakerState::Open);
        assert!(g.admit().is_none());
        assert!(g.reason().contains("`x` open"), "{}", g.reason());
        assert_eq!(g.probe_at(), Instant::now() + Duration::from_secs(5));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(g.state(), BreakerState::HalfOpen);
        let probe = x.admit().unwrap();
        assert!(g.admit().is_none(), "the only probe is out");
        x.record(probe, true);
        assert_eq!(g.state(), BreakerState::Closed);
    }
}
