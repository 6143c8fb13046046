//! The admin HTTP server: `/metrics` (Prometheus text), `/healthz` (a watchdog
//! proves the runtime is not wedged) and `/readyz` (broker connected, consuming,
//! not draining); both answer 503 for good once a supervised task ended early.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use super::names;
use crate::supervise::Supervisor;

/// Shared health flags the runtime sets and the admin server reads.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    draining: AtomicBool,
    /// A dependency the service cannot work without is down (e.g. the writer's database).
    dependency_down: AtomicBool,
    watchdog_ms: AtomicU64,
    unhealthy: AtomicBool,
    /// Consumers failing to subscribe right now (each holds a [`Resubscribing`] guard).
    resubscribing: AtomicUsize,
    /// Set for good once a supervised task ended before shutdown (see `crate::supervise`).
    failed: OnceLock<String>,
}

/// Held by a consumer while it cannot subscribe: `/readyz` is 503 until every one is dropped.
#[derive(Debug)]
pub struct Resubscribing(Arc<Health>);

impl Drop for Resubscribing {
    fn drop(&mut self) {
        self.0.resubscribing.fetch_sub(1, Ordering::SeqCst);
    }
}

fn now_ms() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0)
}

/// The watchdog is stale past this: the reactor has not run a timer for 10 s.
const WATCHDOG_STALE_MS: u64 = 10_000;

impl Health {
    /// Marks the worker connected and consuming (or not).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
        metrics::gauge!(names::BROKER_CONNECTED).set(if ready { 1.0 } else { 0.0 });
    }
    /// Marks the worker draining: not ready any more.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }
    /// Marks the worker unhealthy for good (e.g. too many runaway tasks).
    pub fn set_unhealthy(&self, bad: bool) {
        self.unhealthy.store(bad, Ordering::SeqCst);
    }
    /// Marks a dependency the service needs as down (not ready) or back up.
    pub fn set_dependency_down(&self, down: bool) {
        self.dependency_down.store(down, Ordering::SeqCst);
    }
    /// Marks the process failed for good (a supervised task ended): neither ready nor healthy.
    pub fn set_failed(&self, why: String) {
        let _first_wins = self.failed.set(why);
    }
    /// Why the process failed, once it has.
    pub fn failure(&self) -> Option<&str> {
        self.failed.get().map(String::as_str)
    }
    /// Marks one consumer as unable to subscribe (not ready) until the guard is dropped.
    pub fn resubscribing(self: &Arc<Self>) -> Resubscribing {
        self.resubscribing.fetch_add(1, Ordering::SeqCst);
        Resubscribing(self.clone())
    }
    /// True when `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
            && !self.draining.load(Ordering::SeqCst)
            && !self.dependency_down.load(Ordering::SeqCst)
            && self.resubscribing.load(Ordering::SeqCst) == 0
            && self.failed.get().is_none()
    }
    /// True when `/healthz` answers 200.
    pub fn is_healthy(&self) -> bool {
        let last = self.watchdog_ms.load(Ordering::SeqCst);
        !self.unhealthy.load(Ordering::SeqCst)
            && self.failed.get().is_none()
            && now_ms().saturating_sub(last) < WATCHDOG_STALE_MS
    }
    /// Called by the watchdog task on every tick.
    pub fn tick(&self) {
        self.watchdog_ms.store(now_ms(), Ordering::SeqCst);
    }
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once and returns its handle.
pub fn prometheus() -> anyhow::Result<PrometheusHandle> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    // Two services starting at once in one process (the demo, tests) must not both install.
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = INSTALL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets(&names::DURATION_BUCKETS)?
        .install_recorder()
        .map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))?;
    names::describe();
    Ok(HANDLE.get_or_init(|| handle).clone())
}

#[derive(Clone)]
struct AppState {
    health: Arc<Health>,
    prom: PrometheusHandle,
}

/// A running admin server.
pub struct AdminServer {
    /// The address it listens on (useful with port 0).
    pub addr: SocketAddr,
}

impl AdminServer {
    /// Binds `addr` and serves (with the watchdog and metric upkeep) as supervised tasks
    /// `admin` and `watchdog`, which stop last: when `sup` finishes.
    pub async fn start(addr: SocketAddr, sup: &mut Supervisor) -> anyhow::Result<AdminServer> {
        let health = sup.health();
        let prom = prometheus()?;
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot bind the admin port {addr}: {e} (set FLEET_ADMIN_ADDR to a free port)"
            )
        })?;
        let addr = listener.local_addr()?;
        let state = AppState {
            health: health.clone(),
            prom: prom.clone(),
        };
        let app = Router::new()
            .route("/metrics", get(metrics_text))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .with_state(state);
        let stop = sup.last_token();
        sup.spawn_last("admin", async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
                .map_err(|e| anyhow::anyhow!("the admin server on {addr} stopped: {e}"))
        });
        let stop = sup.last_token();
        sup.spawn_last("watchdog", async move {
            // The watchdog: if the reactor wedges, this stops ticking and /healthz turns 503.
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        health.tick();
                        prom.run_upkeep();
                    }
                    () = stop.cancelled() => return Ok(()),
                }
            }
        });
        Ok(AdminServer { addr })
    }
}

async fn metrics_text(State(s): State<AppState>) -> String {
    s.prom.render()
}

async fn healthz(State(s): State<AppState>) -> (StatusCode, String) {
    if s.health.is_healthy() {
        (StatusCode::OK, "ok\n".into())
    } else if let Some(why) = s.health.failure() {
        (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n"))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "watchdog stale or too many runaway tasks\n".into(),
        )
    }
}

async fn readyz(State(s): State<AppState>) -> (StatusCode, String) {
    if s.health.is_ready() {
        (StatusCode::OK, "ready\n".into())
    } else if let Some(why) = s.health.failure() {
        (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n"))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not connected, not consuming (a consumer cannot subscribe), or draining\n".into(),
        )
    }
}
