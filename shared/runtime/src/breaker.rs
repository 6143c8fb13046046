//! Circuit breaker: closed → open after consecutive failures; open → half-open
//! when its timer ends; half-open admits a limited number of probes; a probe's
//! success closes it, a failure re-opens it. State is exported as
//! `fleet_circuit_state{dependency}` (0 closed, 1 half-open, 2 open).

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::telemetry::names;

/// What a dependency's breaker does while open (DESIGN §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerPolicy {
    /// The handler falls back (e.g. another provider); the runtime keeps consuming.
    Route,
    /// The service stops pulling until a probe succeeds; held deliveries are kept alive.
    Pause,
}

/// Breaker state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls flow.
    Closed,
    /// A limited number of probes may run.
    HalfOpen,
    /// Calls are refused until the timer ends.
    Open,
}

impl BreakerState {
    fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }
}

/// Breaker settings.
#[derive(Debug, Clone)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// How long it stays open before probing.
    pub open_for: Duration,
    /// Probes allowed at once while half-open.
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            open_for: Duration::from_secs(10),
            half_open_probes: 1,
        }
    }
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    failures: u32,
    opened_at: Instant,
    probes: u32,
}

/// A circuit breaker for one dependency.
#[derive(Debug)]
pub struct Breaker {
    dependency: String,
    policy: BreakerPolicy,
    cfg: BreakerConfig,
    inner: Mutex<Inner>,
}

/// Permission to call the dependency; report the result with [`Breaker::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A normal call.
    Call,
    /// A half-open probe.
    Probe,
}

impl Breaker {
    /// A closed breaker for `dependency`.
    pub fn new(dependency: &str, policy: BreakerPolicy, cfg: BreakerConfig) -> Breaker {
        let b = Breaker {
            dependency: dependency.to_owned(),
            policy,
            cfg,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                failures: 0,
                opened_at: Instant::now(),
                probes: 0,
            }),
        };
        b.export(BreakerState::Closed);
        b
    }

    /// The dependency's name (the metric label).
    pub fn dependency(&self) -> &str {
        &self.dependency
    }

    /// The policy while open.
    pub fn policy(&self) -> BreakerPolicy {
        self.policy
    }

    fn export(&self, state: BreakerState) {
        metrics::gauge!(names::CIRCUIT_STATE, "dependency" => self.dependency.clone())
            .set(state.gauge());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        let mut g = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // The timer: an open breaker whose time is up is half-open.
        if g.state == BreakerState::Open && g.opened_at.elapsed() >= self.cfg.open_for {
            g.state = BreakerState::HalfOpen;
            g.probes = 0;
            self.export(BreakerState::HalfOpen);
        }
        g
    }

    /// The current state (applying the timer).
    pub fn state(&self) -> BreakerState {
        self.lock().state
    }

    /// When an open breaker turns half-open (now if it is not open).
    pub fn probe_at(&self) -> Instant {
        let g = self.lock();
        match g.state {
            BreakerState::Open => g.opened_at + self.cfg.open_for,
            _ => Instant::now(),
        }
    }

    /// Asks to call the dependency: `None` while open or while all probes are out.
    pub fn admit(&self) -> Option<Admission> {
        let mut g = self.lock();
        match g.state {
            BreakerState::Closed => Some(Admission::Call),
            BreakerState::Open => None,
            BreakerState::HalfOpen if g.probes < self.cfg.half_open_probes => {
                g.probes += 1;
                Some(Admission::Probe)
            }
            BreakerState::HalfOpen => None,
        }
    }

    /// Records a call's result.
    pub fn record(&self, admission: Admission, ok: bool) {
        let mut g = self.lock();
        if admission == Admission::Probe {
            g.probes = g.probes.saturating_sub(1);
        }
        let next = match (g.state, ok) {
            (_, true) => {
                g.failures = 0;
                BreakerState::Closed
            }
            (BreakerState::HalfOpen, false) => BreakerState::Open,
            (BreakerState::Open, false) => BreakerState::Open,
            (BreakerState::Closed, false) => {
                g.failures += 1;
                if g.failures >= self.cfg.failure_threshold {
                    BreakerState::Open
                } else {
                    BreakerState::Closed
                }
            }
        };
        if next == BreakerState::Open && g.state != BreakerState::Open {
            g.opened_at = Instant::now();
            tracing::warn!(dependency = %self.dependency, "circuit breaker opened");
        }
        if next != g.state {
            g.state = next;
            self.export(next);
        }
    }

    /// Returns a probe permission that was not used (e.g. nothing to run).
    pub fn cancel_probe(&self, admission: Admission) {
        if admission == Admission::Probe {
            let mut g = self.lock();
            g.probes = g.probes.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(
            "db",
            BreakerPolicy::Pause,
            BreakerConfig {
                failure_threshold: 2,
                open_for: Duration::from_secs(5),
                half_open_probes: 1,
            },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn closed_open_half_open_closed() {
        let b = breaker();
        let a = b.admit().unwrap();
        b.record(a, false);
        assert_eq!(b.state(), BreakerState::Closed);
        b.record(Admission::Call, false);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.admit(), None);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let probe = b.admit().unwrap();
        assert_eq!(probe, Admission::Probe);
        assert_eq!(b.admit(), None, "only one probe at a time");
        b.record(probe, true);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probe_reopens_with_fresh_timer() {
        let b = breaker();
        b.record(Admission::Call, false);
        b.record(Admission::Call, false);
        tokio::time::advance(Duration::from_secs(6)).await;
        let probe = b.admit().unwrap();
        b.record(probe, false);
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        // A success while closed resets the failure count.
        let b2 = breaker();
        b2.record(Admission::Call, false);
        b2.record(Admission::Call, true);
        b2.record(Admission::Call, false);
        assert_eq!(b2.state(), BreakerState::Closed);
    }
}
