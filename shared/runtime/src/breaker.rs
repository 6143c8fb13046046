//! Circuit breaker: closed → open after consecutive failures; open → half-open
//! when its timer ends (a timer task moves it and its gauge even when no call
//! arrives, and every read applies the timer too); half-open admits a limited
//! number of probes; only a probe's success closes it, a probe's failure
//! re-opens it. Late results of calls admitted before it opened change
//! nothing. State is exported as `fleet_circuit_state{dependency}` (0 closed,
//! 1 half-open, 2 open) and every change is logged once.

use std::sync::{Arc, Mutex, Weak};
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

#[derive(Debug)]
struct Core {
    dependency: String,
    policy: BreakerPolicy,
    cfg: BreakerConfig,
    inner: Mutex<Inner>,
}

/// A circuit breaker for one dependency.
#[derive(Debug)]
pub struct Breaker {
    core: Arc<Core>,
}

/// Permission to call the dependency; report the result with [`Breaker::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A normal call.
    Call,
    /// A half-open probe.
    Probe,
}

impl Core {
    fn export(&self, state: BreakerState) {
        metrics::gauge!(names::CIRCUIT_STATE, "dependency" => self.dependency.clone())
            .set(state.gauge());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        let mut g = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // The timer, applied on every read as well: an open breaker whose time is up is
        // half-open (the timer task only makes the gauge and the log line move unasked).
        if g.state == BreakerState::Open && g.opened_at.elapsed() >= self.cfg.open_for {
            g.state = BreakerState::HalfOpen;
            g.probes = 0;
            self.export(BreakerState::HalfOpen);
            tracing::info!(dependency = %self.dependency, "circuit breaker half-open: the next call probes");
        }
        g
    }
}

/// Moves an opened breaker to half-open when its open time ends, without waiting for a call.
fn spawn_timer(core: &Arc<Core>, at: Instant) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return; // No runtime (a plain unit test): reads still apply the timer.
    };
    let weak: Weak<Core> = Arc::downgrade(core);
    rt.spawn(async move {
        tokio::time::sleep_until(at).await;
        if let Some(core) = weak.upgrade() {
            drop(core.lock());
        }
    });
}

impl Breaker {
    /// A closed breaker for `dependency`.
    pub fn new(dependency: &str, policy: BreakerPolicy, cfg: BreakerConfig) -> Breaker {
        let core = Arc::new(Core {
            dependency: dependency.to_owned(),
            policy,
            cfg,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                failures: 0,
                opened_at: Instant::now(),
                probes: 0,
            }),
        });
        core.export(BreakerState::Closed);
        Breaker { core }
    }

    /// The dependency's name (the metric label).
    pub fn dependency(&self) -> &str {
        &self.core.dependency
    }

    /// The policy while open.
    pub fn policy(&self) -> BreakerPolicy {
        self.core.policy
    }

    /// The current state (applying the timer).
    pub fn state(&self) -> BreakerState {
        self.core.lock().state
    }

    /// When an open breaker turns half-open (now if it is not open).
    pub fn probe_at(&self) -> Instant {
        let g = self.core.lock();
        match g.state {
            BreakerState::Open => g.opened_at + self.core.cfg.open_for,
            _ => Instant::now(),
        }
    }

    /// True when [`Breaker::admit`] would let a call through now (nothing is taken).
    pub fn would_admit(&self) -> bool {
        let g = self.core.lock();
        match g.state {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen => g.probes < self.core.cfg.half_open_probes,
        }
    }

    /// Asks to call the dependency: `None` while open or while all probes are out.
    pub fn admit(&self) -> Option<Admission> {
        let mut g = self.core.lock();
        match g.state {
            BreakerState::Closed => Some(Admission::Call),
            BreakerState::Open => None,
            BreakerState::HalfOpen if g.probes < self.core.cfg.half_open_probes => {
                g.probes += 1;
                Some(Admission::Probe)
            }
            BreakerState::HalfOpen => None,
        }
    }

    /// Records a call's result. Only a probe's result moves a breaker that is not closed:
    /// a call admitted before it opened and answering late is no evidence about now.
    pub fn record(&self, admission: Admission, ok: bool) {
        let core = &self.core;
        let mut g = core.lock();
        if admission == Admission::Probe {
            g.probes = g.probes.saturating_sub(1);
        }
        let next = match (g.state, admission, ok) {
            (BreakerState::Closed, _, true) => {
                g.failures = 0;
                BreakerState::Closed
            }
            (BreakerState::Closed, _, false) => {
                g.failures += 1;
                if g.failures >= core.cfg.failure_threshold {
                    BreakerState::Open
                } else {
                    BreakerState::Closed
                }
            }
            (BreakerState::HalfOpen, Admission::Probe, true) => {
                g.failures = 0;
                BreakerState::Closed
            }
            (BreakerState::HalfOpen, Admission::Probe, false) => BreakerState::Open,
            // Late results of calls admitted before the breaker opened, or of a probe
            // whose sibling already failed: the state stands.
            (state, _, _) => state,
        };
        if next == g.state {
            return;
        }
        g.state = next;
        core.export(next);
        match next {
            BreakerState::Open => {
                g.opened_at = Instant::now();
                let at = g.opened_at + core.cfg.open_for;
                tracing::warn!(
                    dependency = %core.dependency,
                    failures = g.failures,
                    open_for = ?core.cfg.open_for,
                    "circuit breaker opened"
                );
                drop(g);
                spawn_timer(core, at);
            }
            BreakerState::Closed => {
                tracing::info!(dependency = %core.dependency, "circuit breaker closed: a probe succeeded");
            }
            BreakerState::HalfOpen => {}
        }
    }

    /// The stored state without applying the timer (tests of the timer task).
    #[cfg(test)]
    fn peek(&self) -> BreakerState {
        self.core
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .state
    }

    /// Returns a probe permission that was not used (e.g. nothing to run).
    pub fn cancel_probe(&self, admission: Admission) {
        if admission == Admission::Probe {
            let mut g = self.core.lock();
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

    #[tokio::test(start_paused = true)]
    async fn the_timer_moves_an_idle_breaker_to_half_open() {
        let b = breaker();
        b.record(Admission::Call, false);
        b.record(Admission::Call, false);
        assert_eq!(b.peek(), BreakerState::Open);
        tokio::time::sleep(Duration::from_millis(4900)).await;
        assert_eq!(b.peek(), BreakerState::Open);
        // No call, no read: the timer task alone moves the state (and the gauge).
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(b.peek(), BreakerState::HalfOpen);
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_probe_closes_it() {
        let b = breaker();
        // Admitted while closed, answering after the breaker opened.
        let early = b.admit().unwrap();
        b.record(Admission::Call, false);
        b.record(Admission::Call, false);
        b.record(early, true);
        assert_eq!(
            b.state(),
            BreakerState::Open,
            "a late success does not close it"
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        b.record(Admission::Call, true);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.record(Admission::Call, false);
        assert_eq!(
            b.state(),
            BreakerState::HalfOpen,
            "a late failure does not reopen it"
        );
        assert!(b.would_admit());
        let probe = b.admit().unwrap();
        assert!(!b.would_admit());
        b.record(probe, true);
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
