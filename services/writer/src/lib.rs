//! fleet-writer: the `write` stage (DESIGN §6). A batch handler on the runtime
//! that stores each finished item in `fleet_results` (PostgreSQL, or an
//! embedded SQLite file when no database URL is given).
//!
//! * One transaction per batch (`--batch-size`, `--batch-linger`), a multi-row
//!   `INSERT … ON CONFLICT (job_id) DO NOTHING`: the first write wins, so a
//!   redelivered, duplicated or zombie job never adds a row or overwrites one.
//!   The runtime acks a batch only after `handle_batch` returns, i.e. after COMMIT.
//! * Database trouble fails the batch as retryable; the `database` breaker
//!   (policy `pause`) then stops intake and holds the deliveries (no attempt
//!   burned) until a probe batch commits. The broker keeps the backlog.
//! * The schema is migrated at start-up (fleet-store, component `writer`),
//!   retrying while the database is unreachable, up to `FLEET_MAX_OUTAGE`.
//!
//! # Input payload (from the summarizer)
//!
//! `{"text", "metadata", "analysis": {…, "failed_analyzers": […]},
//! "summary": {"text", "provider", "fallback", "fallback_reason", …},
//! "skipped_stages": [{"stage", "reason", "error"}]}`: every part optional.
//!
//! # What happened to item X of pipeline P
//!
//! ```sql
//! SELECT outcome, skipped_stages, failed_analyzers, summary_provider,
//!        summary_fallback, summary_fallback_reason, attempts, worker_id,
//!        job_created_at, written_at
//! FROM fleet_results WHERE pipeline_id = 'P' AND item_id = 'X';
//! ```
//!
//! `outcome` is `complete` or `partial` (a stage skipped, an analyzer failed, or
//! no analysis/summary); times are unix milliseconds (`to_timestamp(written_at /
//! 1000.0)` on PostgreSQL). `attempts` is the attempt of the batch that wrote the
//! row (the runtime hands a batch handler one attempt number, the first job's).

pub mod config;
pub mod handler;
pub mod schema;
pub mod telemetry;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use fleet_core::Broker;
use fleet_runtime::telemetry::Health;
use fleet_runtime::{Breaker, BreakerPolicy, Worker};
use fleet_store::Store;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use handler::WriteHandler;

/// The stage this service consumes by default.
pub const STAGE: &str = "write";
/// The breaker's dependency label (`fleet_circuit_state{dependency="database"}`).
pub const DEPENDENCY: &str = "database";
/// How often the database is pinged for `fleet_database_up`.
const PING_INTERVAL: Duration = Duration::from_secs(5);

/// Runs the writer until `shutdown`, then drains (DESIGN §5 step 9).
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    Writer::new(config).await?.run(shutdown).await
}

/// A configured writer, before it runs: exposes its breaker, store and admin address.
pub struct Writer {
    config: Config,
    store: Store,
    breaker: Arc<Breaker>,
    worker: Worker,
    worker_id: String,
}

impl Writer {
    /// Validates the config and opens the store (PostgreSQL connects lazily).
    pub async fn new(config: Config) -> anyhow::Result<Writer> {
        let mut rt = config.runtime_config();
        // Every configuration error at once: the writer's and the runtime's.
        let mut errs = config.validate().err().map(|e| e.0).unwrap_or_default();
        errs.extend(
            rt.validate(Some(config.batch_size))
                .err()
                .map(|e| e.0)
                .unwrap_or_default(),
        );
        if !errs.is_empty() {
            return Err(fleet_runtime::config::ConfigErrors(errs).into());
        }
        // One id in events, heartbeats and rows.
        let worker_id = rt.worker_id.clone().unwrap_or_else(|| {
            let stage = rt.stage.clone().unwrap_or_else(|| STAGE.to_owned());
            format!(
                "{stage}-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            )
        });
        rt.worker_id = Some(worker_id.clone());
        let store = Store::connect(
            config.database_url.as_deref(),
            &config.sqlite_path,
            config.store_options(),
        )
        .await
        .context("opening the database")?;
        let breaker = Arc::new(Breaker::new(
            DEPENDENCY,
            BreakerPolicy::Pause,
            config.breaker_config(),
        ));
        let worker = Worker::new(rt, STAGE).pause_on(breaker.clone());
        Ok(Writer {
            config,
            store,
            breaker,
            worker,
            worker_id,
        })
    }

    /// Uses an already connected broker (tests, `fleetctl demo` on the memory broker).
    pub fn with_broker(mut self, broker: Arc<dyn Broker>) -> Writer {
        self.worker = self.worker.with_broker(broker);
        self
    }

    /// The worker's health (`/healthz`, `/readyz`); `/readyz` is false while the database is
    /// unreachable.
    pub fn health(&self) -> Arc<Health> {
        self.worker.health()
    }

    /// The `database` pause breaker.
    pub fn breaker(&self) -> Arc<Breaker> {
        self.breaker.clone()
    }

    /// The store rows are written to.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Where `/metrics`, `/healthz`, `/readyz` listen once running.
    pub fn admin_addr(&self) -> Arc<Mutex<Option<std::net::SocketAddr>>> {
        self.worker.admin_addr()
    }

    /// Migrates (retrying while the database is unreachable), then consumes until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        fleet_runtime::telemetry::admin::prometheus()?;
        telemetry::describe();
        tracing::info!(db = %self.store.describe(), worker_id = %self.worker_id, "writer starting");
        if !migrate(&self.store, self.config.runtime.max_outage, &shutdown).await? {
            return Ok(());
        }
        let pinger = tokio::spawn(ping_loop(
            self.store.clone(),
            self.worker.health(),
            shutdown.clone(),
        ));
        let handler = WriteHandler::new(self.store.clone(), &self.worker_id);
        let out = self
            .worker
            .run_batch(
                handler,
                self.config.batch_size,
                self.config.batch_linger,
                shutdown.clone(),
            )
            .await;
        pinger.abort();
        out
    }
}

/// Applies the migrations; `Ok(false)` when shut down first. Transient failures are
/// retried with backoff until `max_outage`, then the process exits non-zero.
async fn migrate(
    store: &Store,
    max_outage: Duration,
    shutdown: &CancellationToken,
) -> anyhow::Result<bool> {
    let since = Instant::now();
    let mut pause = Duration::from_millis(200);
    loop {
        match store.migrate(schema::COMPONENT, schema::MIGRATIONS).await {
            Ok(applied) => {
                tracing::info!(?applied, "schema up to date");
                return Ok(true);
            }
            Err(e) if e.is_transient() && since.elapsed() < max_outage => {
                tracing::warn!(error = %e, "database unavailable at start-up; retrying");
            }
            Err(e) => bail!("migrating {} failed: {e}", store.describe()),
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = shutdown.cancelled() => return Ok(false),
        }
        pause = (pause * 2).min(Duration::from_secs(10));
    }
}

/// Pings the database: `fleet_database_up`, and `/readyz` false while it is unreachable.
async fn ping_loop(store: Store, health: Arc<Health>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(PING_INTERVAL);
    let mut up = true;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let ok = store.ping().await.is_ok();
        metrics::gauge!(telemetry::DATABASE_UP).set(if ok { 1.0 } else { 0.0 });
        health.set_dependency_down(!ok);
        if ok != up {
            if ok {
                tracing::info!("database reachable again");
            } else {
                tracing::warn!("database ping failed");
            }
            up = ok;
        }
    }
}
