//! The admin HTTP server: `/metrics` (Prometheus text), `/healthz` (a watchdog
//! proves the runtime is not wedged) and `/readyz` (broker connected, consuming,
//! not draining, no consumer failing to subscribe, intake not paused by a dependency; a 503
//! says which); both answer 503 for good once a supervised task ended early.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tower::limit::GlobalConcurrencyLimitLayer;
use tower_http::limit::RequestBodyLimitLayer;

use super::names;
use crate::breaker::BreakerState;
use crate::pause::IntakeGate;
use crate::serve::ServeLimits;
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
    pause: Mutex<Pause>,
    /// Consumers failing to subscribe right now (each holds a [`Resubscribing`] guard).
    resubscribing: AtomicUsize,
    /// Set for good once a supervised task ended before shutdown (see `crate::supervise`).
    failed: OnceLock<String>,
}

/// The intake gate, if any, and what was last reported about it.
#[derive(Debug, Default)]
struct Pause {
    gate: Option<(String, Arc<dyn IntakeGate>)>,
    reason: Option<String>,
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
    /// Watches `gate` for stage `stage`: while it is not closed, intake is paused.
    pub fn set_pause_gate(&self, stage: &str, gate: Arc<dyn IntakeGate>) {
        self.pause_lock().gate = Some((stage.to_owned(), gate));
        self.refresh_pause();
    }

    fn pause_lock(&self) -> std::sync::MutexGuard<'_, Pause> {
        self.pause
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Re-reads the intake gate (its timer included): sets `fleet_intake_paused{stage}`,
    /// logs each pause and resume once, and returns why intake is paused, if it is.
    pub fn refresh_pause(&self) -> Option<String> {
        let mut p = self.pause_lock();
        let (stage, gate) = p.gate.clone()?;
        let now = (gate.state() != BreakerState::Closed).then(|| gate.reason());
        match (&p.reason, &now) {
            (None, Some(why)) => {
                tracing::warn!(%stage, reason = %why, "intake paused: taking no jobs, holding the ones in hand until a probe succeeds");
            }
            (Some(_), None) => {
                tracing::info!(%stage, "intake resumed: the dependency answers again")
            }
            _ => {}
        }
        metrics::gauge!(names::INTAKE_PAUSED, "stage" => stage).set(if now.is_some() {
            1.0
        } else {
            0.0
        });
        p.reason = now.clone();
        now
    }

    /// Why `/readyz` answers 503, or `None` when it answers 200.
    pub fn not_ready_reason(&self) -> Option<String> {
        if let Some(why) = self.failed.get() {
            return Some(why.clone());
        }
        if self.draining.load(Ordering::SeqCst) {
            return Some("draining".into());
        }
        if !self.ready.load(Ordering::SeqCst) {
            return Some("not connected to the broker or not consuming".into());
        }
        if self.dependency_down.load(Ordering::SeqCst) {
            return Some("a dependency this service needs is down".into());
        }
        if self.resubscribing.load(Ordering::SeqCst) > 0 {
            return Some("a consumer cannot subscribe (redeclaring and retrying)".into());
        }
        self.refresh_pause()
            .map(|why| format!("intake paused: {why}"))
    }

    /// True when `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.not_ready_reason().is_none()
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
    crate::serve::describe();
    Ok(HANDLE.get_or_init(|| handle).clone())
}

#[derive(Clone)]
struct AppState {
    health: Arc<Health>,
    prom: PrometheusHandle,
}

/// Longest an admin request may take (they answer from memory; a scrape of a wedged
/// process should fail, not hang the scraper's connection).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Admin requests handled at once (a few scrapers and probes; more wait, within the timeout).
const MAX_CONCURRENT_REQUESTS: usize = 16;
/// Largest request body accepted: every admin route is a GET, so anything bigger is abuse.
const MAX_BODY_BYTES: usize = 4 * 1024;

/// The admin routes within their bounds: a request timeout (waiting for a slot included), a
/// concurrency limit, and a body limit (connection bounds are in [`crate::serve`]).
fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route_layer(GlobalConcurrencyLimitLayer::new(MAX_CONCURRENT_REQUESTS))
        .route_layer(middleware::from_fn(request_timeout))
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        .with_state(state)
}

async fn request_timeout(req: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(resp) => resp,
        Err(_elapsed) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the admin request did not finish within {}s: the process may be overloaded or wedged\n",
                REQUEST_TIMEOUT.as_secs()
            ),
        )
            .into_response(),
    }
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
        let app = router(state);
        let stop = sup.last_token();
        sup.spawn_last("admin", async move {
            crate::serve::serve(listener, app, "admin", ServeLimits::ADMIN, stop)
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
                        // Keeps the pause gauge and log current while nothing else asks.
                        health.refresh_pause();
                        sample_runtime();
                        prom.run_upkeep();
                    }
                    () = stop.cancelled() => return Ok(()),
                }
            }
        });
        Ok(AdminServer { addr })
    }
}

/// Sets the gauges read from the tokio runtime this runs on (`num_alive_tasks` is stable
/// since tokio 1.39: no `tokio_unstable` needed).
fn sample_runtime() {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        metrics::gauge!(names::TOKIO_ALIVE_TASKS).set(rt.metrics().num_alive_tasks() as f64);
    }
}

async fn metrics_text(State(s): State<AppState>) -> String {
    // Sampled at scrape time too, so a scrape never reads a count a second old.
    sample_runtime();
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
    match s.health.not_ready_reason() {
        None => (StatusCode::OK, "ready\n".into()),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt as _;

    fn state() -> AppState {
        AppState {
            health: Arc::new(Health::default()),
            prom: PrometheusBuilder::new().build_recorder().handle(),
        }
    }

    #[tokio::test]
    async fn a_request_body_over_the_limit_is_refused() {
        let big = Request::post("/healthz")
            .header("content-length", (MAX_BODY_BYTES + 1).to_string())
            .body(Body::from(vec![b'x'; MAX_BODY_BYTES + 1]))
            .unwrap();
        let resp = router(state()).oneshot(big).await.unwrap();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let probe = Request::get("/healthz").body(Body::empty()).unwrap();
        let resp = router(state()).oneshot(probe).await.unwrap();
        assert_ne!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
}
