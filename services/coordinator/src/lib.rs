//! fleet coordinator: knows where every pipeline stands (DESIGN §5–§6).
//!
//! It accepts pipelines (HTTP API and the submit queue) idempotently, stores
//! them with their first jobs and publishes those through a transactional
//! outbox; ingests event batches and heartbeats through the job state machine;
//! archives every dead letter; and runs a sweeper on every tick that names
//! stalled jobs and finalizes each pipeline exactly once.
//!
//! [`run`] connects to the broker by URL; [`run_with`] takes a broker (e.g. the
//! memory broker `fleetctl demo` shares with in-process workers); [`start`]
//! returns once everything listens, for tests.

pub mod api;
pub mod app;
pub mod append;
pub mod archive;
pub mod config;
pub mod consumer;
pub mod db;
pub mod error;
pub mod events;
pub mod finalize;
pub mod gauges;
pub mod ingest;
pub mod item;
pub mod item_limit;
pub mod lograte;
pub mod metrics;
pub mod model;
pub mod outbox;
pub mod park;
pub mod plan;
pub mod replay_limit;
pub mod report;
pub mod retention;
pub mod schema;
pub mod stall;
pub mod submit;
pub mod submitq;
pub mod sweeper;
pub mod transition;
pub mod ui;

use std::net::SocketAddr;
use std::sync::{Arc, Once};
use std::time::Duration;

use anyhow::Context;
use fleet_core::broker::retry_ladder;
use fleet_core::{Broker, BrokerKind, Destination, OutMessage, Topology};
use fleet_protocol::{Names, control};
use fleet_runtime::Supervisor;
use fleet_runtime::telemetry::{AdminServer, Health};
use fleet_store::{Store, StoreOptions, params};
use tokio_util::sync::CancellationToken;

pub use app::App;
pub use config::Config;

/// How long shutdown waits for the tasks to stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait to reach the database at start-up.
const DB_START_TIMEOUT: Duration = Duration::from_secs(60);

/// A started coordinator.
pub struct Running {
    /// Where the API listens.
    pub api_addr: SocketAddr,
    /// Where `/metrics`, `/healthz`, `/readyz` listen.
    pub admin_addr: SocketAddr,
    /// The shared context (store, broker, config).
    pub app: App,
    /// `/healthz` and `/readyz`.
    pub health: Arc<Health>,
    tasks: Supervisor,
}

impl Running {
    /// Runs until `shutdown` is cancelled or a task ends before it; then stops every task
    /// (bounded). An error names the task that ended early: the process must exit non-zero.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.tasks.stopped().await;
        self.tasks.finish(STOP_TIMEOUT).await?;
        Ok(())
    }
}

/// Parses nothing, connects the broker by URL, and runs until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    config.validate()?;
    fleet_runtime::telemetry::logging::init(config.runtime.log_format);
    let Some(broker) =
        fleet_runtime::connect::connect_with_retry(&config.runtime, &shutdown).await?
    else {
        tracing::info!("stopped before the broker was reached");
        return Ok(());
    };
    let out = run_with(config, broker.clone(), shutdown).await;
    broker.close().await;
    out
}

/// Runs on `broker` until `shutdown`.
pub async fn run_with(
    config: Config,
    broker: Arc<dyn Broker>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let running = start(config, broker, shutdown).await?;
    tracing::info!(api = %running.api_addr, admin = %running.admin_addr, "coordinator running");
    running.wait().await
}

/// The topology the coordinator declares: the default route's stages plus `submit`'s DLQ.
pub fn topology(config: &Config) -> Topology {
    let mut stages: Vec<String> = config
        .default_route()
        .into_iter()
        .map(|s| s.stage)
        .collect();
    stages.push(submitq::SUBMIT_STAGE.into());
    Topology {
        names: Names::new(&config.runtime.prefix),
        stages,
        ack_wait: config.runtime.ack_wait,
        max_deliver: config.runtime.max_deliver,
        max_ack_pending: config.runtime.max_ack_pending,
        retry_ladder: retry_ladder(config.runtime.retry_max),
    }
}

async fn open_store(config: &Config, shutdown: &CancellationToken) -> anyhow::Result<Store> {
    let opts = StoreOptions {
        statement_timeout: config.statement_timeout,
        pool_size: config.database_pool,
        ca_file: config.database_ca_file.clone(),
        ..StoreOptions::default()
    };
    let store = Store::connect(config.database_url.as_deref(), &config.sqlite_path, opts)
        .await
        .context(
            "opening the coordinator's database (check FLEET_DATABASE_URL / FLEET_SQLITE_PATH)",
        )?;
    let since = tokio::time::Instant::now();
    loop {
        match store
            .migrate(schema::COMPONENT, schema::migrations(store.kind()))
            .await
        {
            Ok(_) => return Ok(store),
            Err(e)
                if e.is_transient()
                    && since.elapsed() < DB_START_TIMEOUT
                    && !shutdown.is_cancelled() =>
            {
                tracing::warn!(error = %e, db = store.describe(), "database not ready; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("migrating the coordinator tables in {}", store.describe())
                });
            }
        }
    }
}

/// Logs a warning when the API accepts requests without a token (every start).
fn warn_if_open(config: &Config, addr: std::net::SocketAddr) {
    if config.api_auth == config::ApiAuth::None {
        tracing::warn!(api = %addr, "FLEET_API_AUTH=none: the API accepts every request without a token, including cancel, DLQ replay and purge; set FLEET_API_TOKEN and unset FLEET_API_AUTH to require one");
    } else if config.api_token.is_none() {
        tracing::warn!(api = %addr, "no FLEET_API_TOKEN: the API (loopback only) accepts every request without a token");
    }
}

/// Longest shutdown waits for API requests in flight; open event streams are then cut
/// (clients reconnect to another replica and resume from the store).
const API_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Starts every part and returns once the API and admin servers listen.
pub async fn start(
    config: Config,
    broker: Arc<dyn Broker>,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    static DESCRIBE: Once = Once::new();
    config.validate()?;
    let store = open_store(&config, &shutdown).await?;
    broker
        .declare(&topology(&config))
        .await
        .context("declaring the broker topology")?;
    let health = Arc::new(Health::default());
    // Every task below is supervised: one that ends before shutdown makes the coordinator
    // unready and `wait` return an error naming it.
    let mut tasks = Supervisor::new(
        health.clone(),
        &shutdown,
        config.runtime.test_fail_task.as_deref(),
    );
    let shutdown = tasks.token();
    let admin = AdminServer::start(config.runtime.admin_addr, &mut tasks).await?;
    DESCRIBE.call_once(metrics::describe);
    metrics::register_zero_counters();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| {
            format!(
                "cannot bind the API address {} (set FLEET_LISTEN to a free port)",
                config.listen
            )
        })?;
    let api_addr = listener.local_addr()?;
    warn_if_open(&config, api_addr);
    let api_limits = fleet_runtime::serve::ServeLimits {
        header_timeout: config.api_header_timeout,
        max_connections: config.api_max_connections,
        shutdown_grace: API_SHUTDOWN_GRACE,
    };
    let app = App::new(store, broker, config);

    let router = api::router(app.clone());
    let stop = shutdown.clone();
    tasks.spawn("api", async move {
        fleet_runtime::serve::serve(listener, router, "api", api_limits, stop)
            .await
            .with_context(|| format!("the API server on {api_addr} stopped"))
    });
    let relay = outbox::run_relay(
        app.store.clone(),
        app.broker.clone(),
        outbox::RelayPolicy::new(&app.config, app.ingest),
        app.relay.clone(),
        shutdown.clone(),
    );
    tasks.spawn("outbox-relay", async move {
        relay.await;
        Ok(())
    });
    let sweep = sweeper::SweepConfig {
        heartbeat: app.config.heartbeat(),
        scale_up_allowance: app.config.scale_up_allowance,
        deadline_grace: app.config.deadline_grace,
        stall_windows: app.config.stall_window.iter().cloned().collect(),
        stages: app.stages(),
        started_at: app.started_at,
        retention: app.config.retention,
    };
    let sweeper = sweeper::run(
        app.store.clone(),
        sweep,
        app.config.tick,
        app.relay.clone(),
        shutdown.clone(),
    );
    tasks.spawn("sweeper", async move {
        sweeper.await;
        Ok(())
    });
    tasks.spawn(
        "events",
        events::run(app.clone(), health.clone(), shutdown.clone()),
    );
    tasks.spawn(
        "submit",
        submitq::run(app.clone(), health.clone(), shutdown.clone()),
    );
    let mut dlq_stages = app.stages();
    dlq_stages.push(submitq::SUBMIT_STAGE.into());
    for stage in dlq_stages {
        tasks.spawn(
            format!("dlq-archive:{stage}"),
            archive::run(app.clone(), stage, health.clone(), shutdown.clone()),
        );
    }
    if app.broker.kind() == BrokerKind::RabbitMq {
        tasks.spawn(
            "cancel-rebroadcast",
            rebroadcast_cancellations(app.clone(), shutdown.clone()),
        );
    }
    tasks.spawn(
        "readiness",
        readiness(app.clone(), health.clone(), shutdown.clone()),
    );
    let (gauge_app, gauge_stop) = (app.clone(), shutdown.clone());
    tasks.spawn("parked-gauge", async move {
        park::run_gauge(gauge_app, gauge_stop).await;
        Ok(())
    });
    Ok(Running {
        api_addr,
        admin_addr: admin.addr,
        app,
        health,
        tasks,
    })
}

/// `/readyz`: database answers and broker connected, checked every 2 s.
async fn readiness(
    app: App,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => { health.set_draining(); return Ok(()); }
        }
        let db = tokio::time::timeout(Duration::from_secs(5), app.store.ping()).await;
        health.set_ready(matches!(db, Ok(Ok(()))) && app.broker.is_connected());
    }
}

/// RabbitMQ keeps no message for late subscribers: re-broadcast recent cancellations every tick.
async fn rebroadcast_cancellations(app: App, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(app.config.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let window = i64::try_from(app.config.cancel_rebroadcast.as_millis()).unwrap_or(i64::MAX);
    'tick: loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return Ok(()),
        }
        let rows = app
            .store
            .query(
                "SELECT pipeline_id, created_at FROM coord_pipelines WHERE cancel_requested_at IS NOT NULL AND cancel_requested_at >= $1",
                params![model::now_ms() - window],
            )
            .await;
        let Ok(rows) = rows else { continue };
        for r in rows {
            let (Ok(id), Ok(created)) =
                (r.get::<String>("pipeline_id"), r.get::<i64>("created_at"))
            else {
                continue;
            };
            let body = control::cancellation(&id, Some(model::to_time(created)));
            let msg = OutMessage::new(Destination::Control { pipeline_id: id }, body);
            if let Err(e) = publish_control(&app, msg).await {
                tracing::debug!(error = %e, "re-broadcasting a cancellation failed; next tick retries");
                continue 'tick;
            }
        }
        // Only after a complete round: a worker that sees the marker has seen every active
        // cancellation, and starts taking jobs.
        let marker = OutMessage::new(
            Destination::Control {
                pipeline_id: "sync".into(),
            },
            control::sync_marker(),
        );
        if let Err(e) = publish_control(&app, marker).await {
            tracing::debug!(error = %e, "publishing the cancellation sync marker failed; next tick retries");
        }
    }
}

/// Publishes a control message, bounded.
async fn publish_control(app: &App, msg: OutMessage) -> Result<(), fleet_core::BrokerError> {
    const LIMIT: Duration = Duration::from_secs(5);
    tokio::time::timeout(LIMIT, app.broker.publish(msg))
        .await
        .map_err(|_| fleet_core::BrokerError::Timeout(LIMIT))?
}
