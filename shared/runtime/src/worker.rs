//! The worker: connect, declare, consume with bounded pulls, hand each delivery
//! to its own task, reconnect after a lost connection, drain on shutdown.
//!
//! Every long-lived part (admin server, event batcher, heartbeats, cancellation
//! listener, the consume loop) runs under one [`Supervisor`]: a part that dies
//! for any reason but shutdown makes `run` return an error naming it, so the
//! process exits non-zero and the orchestrator restarts it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use fleet_core::{Broker, BrokerError, Delivery, Source, SubscribeOptions, Subscription, Topology};
use fleet_protocol::Names;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::breaker::{Breaker, BreakerState};
use crate::budget::RetryBudget;
use crate::config::{RuntimeConfig, topology};
use crate::consume::{Consumer, Step};
use crate::handler::{BatchHandler, Handler};
use crate::inflight::InFlight;
use crate::pause::IntakeGate;
use crate::resubscribe::{Limits, Resubscriber};
use crate::runaways::Runaways;
use crate::shared::{Cancellations, Shared};
use crate::slot::Taken;
use crate::supervise::Supervisor;
use crate::telemetry::stage::StageMetrics;
use crate::telemetry::{AdminServer, Health, names};
use crate::unsettled::Unsettled;
use crate::{background, connect, events, process};

/// How long one pull waits for messages; also how quickly shutdown is noticed.
const FETCH_WAIT: Duration = Duration::from_secs(1);
/// Window of the retry budget.
const BUDGET_WINDOW: Duration = Duration::from_secs(10);
/// How long the event batcher may take to flush after the drain.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the remaining supervised tasks may take to stop at the end.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

enum Mode {
    Single(Arc<dyn Handler>),
    Batch {
        handler: Arc<dyn BatchHandler>,
        size: usize,
        linger: Duration,
    },
}

/// Builds and runs one worker process.
pub struct Worker {
    cfg: RuntimeConfig,
    stage: String,
    broker: Option<Arc<dyn Broker>>,
    pause: Option<Arc<dyn IntakeGate>>,
    health: Arc<Health>,
    admin_addr: Arc<Mutex<Option<std::net::SocketAddr>>>,
}

impl Worker {
    /// A worker for `default_stage` (overridden by `FLEET_STAGE`).
    pub fn new(cfg: RuntimeConfig, default_stage: &str) -> Worker {
        let stage = cfg
            .stage
            .clone()
            .unwrap_or_else(|| default_stage.to_owned());
        Worker {
            cfg,
            stage,
            broker: None,
            pause: None,
            health: Arc::new(Health::default()),
            admin_addr: Arc::default(),
        }
    }

    /// Uses an already connected broker instead of `FLEET_BROKER_URL` (tests, the demo).
    pub fn with_broker(mut self, broker: Arc<dyn Broker>) -> Worker {
        self.broker = Some(broker);
        self
    }

    /// Gates intake on a breaker with policy `pause`: while it is open the worker stops
    /// pulling and holds what it has (leases kept), until a probe succeeds.
    pub fn pause_on(self, breaker: Arc<Breaker>) -> Worker {
        self.pause_when(breaker)
    }

    /// Gates intake on any [`IntakeGate`] (e.g. several routed breakers with no fallback
    /// left): while it is not closed the worker pulls at most one probe job, holds what it
    /// has, and `/readyz` and `fleet_intake_paused{stage}` say why.
    pub fn pause_when(mut self, gate: Arc<dyn IntakeGate>) -> Worker {
        self.health.set_pause_gate(&self.stage, gate.clone());
        self.pause = Some(gate);
        self
    }

    /// The health flags behind `/healthz` and `/readyz`.
    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    /// Where the admin server listens once running (useful with port 0).
    pub fn admin_addr(&self) -> Arc<Mutex<Option<std::net::SocketAddr>>> {
        self.admin_addr.clone()
    }

    /// Runs `handler` until `shutdown`, then drains. Errors mean "exit non-zero".
    pub async fn run(
        self,
        handler: impl Handler,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        self.run_mode(Mode::Single(Arc::new(handler)), shutdown)
            .await
    }

    /// Runs a batch handler: up to `size` jobs per call, waiting at most `linger` to fill one.
    pub async fn run_batch(
        self,
        handler: impl BatchHandler,
        size: usize,
        linger: Duration,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let mode = Mode::Batch {
            handler: Arc::new(handler),
            size: size.max(1),
            linger,
        };
        self.run_mode(mode, shutdown).await
    }

    async fn run_mode(self, mode: Mode, shutdown: CancellationToken) -> anyhow::Result<()> {
        let batch_size = match &mode {
            Mode::Batch { size, .. } => Some(*size),
            Mode::Single(_) => None,
        };
        self.cfg.validate(batch_size)?;
        // Every long-lived part runs supervised: one that ends before shutdown stops the rest
        // and makes `run` fail naming it (the process exits non-zero).
        let mut sup = Supervisor::new(
            self.health.clone(),
            &shutdown,
            self.cfg.test_fail_task.as_deref(),
        );
        let out = self.run_supervised(mode, &mut sup).await;
        sup.finish(STOP_TIMEOUT).await?;
        out
    }

    async fn run_supervised(self, mode: Mode, sup: &mut Supervisor) -> anyhow::Result<()> {
        // Stops on shutdown and on the failure of any supervised task.
        let shutdown = sup.token();
        let cfg = self.cfg.clone();
        let worker_id = cfg.worker_id.clone().unwrap_or_else(|| {
            format!(
                "{}-{}",
                self.stage,
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            )
        });
        let admin = AdminServer::start(cfg.admin_addr, sup).await?;
        *self
            .admin_addr
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(admin.addr);
        tracing::info!(stage = %self.stage, %worker_id, admin = %admin.addr, "worker starting");

        // A broker handed in (tests, the demo) is shared: only close one we opened.
        let owned = self.broker.is_none();
        let broker = match self.broker.clone() {
            Some(b) => b,
            None => match connect::connect_with_retry(&cfg, &shutdown).await? {
                Some(b) => b,
                None => {
                    tracing::info!("stopped before the broker was reached");
                    return Ok(());
                }
            },
        };
        let names = Names::new(&cfg.prefix);
        let topology = topology(&cfg, &names, &self.stage);
        declare_with_retry(&*broker, &topology, &cfg, &shutdown).await?;

        let sink = events::spawn(
            sup,
            broker.clone(),
            topology.clone(),
            &self.stage,
            &worker_id,
        );
        let runaways = Runaways::new(&self.stage, cfg.max_runaway, self.health.clone());
        let tracker = TaskTracker::new();
        let sh = Arc::new(Shared {
            broker: broker.clone(),
            stage: self.stage.clone(),
            worker_id: worker_id.clone(),
            names,
            sink,
            inflight: InFlight::new(&self.stage),
            cancels: Arc::new(Cancellations::default()),
            budget: RetryBudget::new(
                cfg.retry_budget_ratio,
                cfg.retry_budget_min_per_sec,
                BUDGET_WINDOW,
            ),
            pause: self.pause.clone(),
            runaways,
            unsettled: Unsettled::new(&self.stage),
            metrics: StageMetrics::new(&self.stage),
            drain: CancellationToken::new(),
            tasks: tracker.clone(),
            declared: Mutex::new(HashSet::from([self.stage.clone()])),
            cfg,
        });
        // Heartbeats and cancellations go on while the worker drains; they stop after it.
        let bg_stop = CancellationToken::new();
        let _stop_bg = bg_stop.clone().drop_guard();
        background::heartbeats(sup, sh.clone(), sh.cfg.concurrency, bg_stop.clone());
        let synced = CancellationToken::new();
        background::cancellations(
            sup,
            sh.clone(),
            self.health.clone(),
            bg_stop.clone(),
            synced.clone(),
        );
        let timer = sh.inflight.clone().watch(sh.drain.clone(), bg_stop.clone());
        sup.spawn("deadlines", async move {
            timer.await;
            Ok(())
        });
        wait_for_cancellations(&synced, sh.cfg.control_sync_wait, &shutdown).await;

        let consumed = sup
            .run(
                "consumer",
                consume(&sh, &mode, &tracker, &self.health, &shutdown),
            )
            .await;

        // Drain: stop pulling (done), let in-flight jobs finish until the drain deadline,
        // then return the rest to the broker; the subscription stays open until then.
        self.health.set_draining();
        tracker.close();
        let (consumed, sub) = match consumed {
            Ok(sub) => (Ok(()), sub),
            Err(e) => (Err(e), None),
        };
        if tokio::time::timeout(sh.cfg.drain_deadline, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                running = tracker.len(),
                "drain deadline reached; releasing what still runs"
            );
            sh.drain.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(10), tracker.wait()).await;
        }
        if let Some(sub) = sub {
            sub.close().await;
        }
        bg_stop.cancel();
        // The batcher ends when the last sink is dropped (ours here, the background tasks'
        // as they stop): it flushes what is queued first, bounded.
        drop(sh);
        sup.join(FLUSH_TIMEOUT).await;
        if owned {
            broker.close().await;
        }
        tracing::info!("worker stopped");
        consumed
    }
}

/// Waits (bounded) until the cancellation listener has caught up, so that jobs of a pipeline
/// cancelled before this worker started are dropped, not run.
async fn wait_for_cancellations(
    synced: &CancellationToken,
    wait: Duration,
    shutdown: &CancellationToken,
) {
    if wait.is_zero() {
        return;
    }
    tokio::select! {
        () = synced.cancelled() => {}
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(wait) => tracing::warn!(
            waited = ?wait,
            "no cancellation sync from the coordinator yet; taking jobs anyway (is the coordinator running?)"
        ),
    }
}

async fn declare_with_retry(
    broker: &dyn Broker,
    topology: &Topology,
    cfg: &RuntimeConfig,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let since = Instant::now();
    loop {
        match broker.declare(topology).await {
            Ok(()) => {
                metrics::counter!(names::BROKER_CONFIG_DRIFT).absolute(broker.config_drift());
                return Ok(());
            }
            Err(e @ (BrokerError::Config(_) | BrokerError::Rejected(_))) => {
                return Err(e).context("declaring the broker topology failed");
            }
            Err(e) => {
                tracing::warn!(error = %e, "declaring the topology failed; reconnecting");
                reconnect(broker, cfg, since, shutdown).await?;
            }
        }
    }
}

/// Reconnects with backoff; fails after `max_outage` without a broker.
async fn reconnect(
    broker: &dyn Broker,
    cfg: &RuntimeConfig,
    since: Instant,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut pause = Duration::from_millis(200);
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        if since.elapsed() >= cfg.max_outage {
            bail!(
                "no broker at {} for {}: exiting so the orchestrator restarts this worker (FLEET_MAX_OUTAGE)",
                redact(&cfg.broker_url),
                humantime::format_duration(cfg.max_outage)
            );
        }
        match tokio::time::timeout(Duration::from_secs(15), broker.reconnect()).await {
            Ok(Ok(())) => {
                metrics::counter!(names::BROKER_RECONNECTS).increment(1);
                tracing::info!("broker reconnected");
                return Ok(());
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "reconnect failed"),
            Err(_) => tracing::warn!("reconnect timed out"),
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = shutdown.cancelled() => return Ok(()),
        }
        pause = (pause * 2).min(Duration::from_secs(10));
    }
}

/// The URL without its password, for messages (the workspace's one redaction).
pub fn redact(url: &str) -> String {
    fleet_protocol::redact::redact_url(url)
}

/// Fewest free slots worth a fetch while other jobs are running: below it the loop waits up
/// to [`GATHER_WAIT`] for more, so a busy worker pulls in batches instead of sending one pull
/// request per finished job (on NATS each is a server round trip and server work).
const GATHER_MIN: usize = 16;
/// Longest the loop waits for [`GATHER_MIN`] free slots (a latency bound, not a throughput one).
const GATHER_WAIT: Duration = Duration::from_millis(2);

/// Waits until a permit is free or shutdown; then takes every free one up to `max`, as one
/// permit for that many slots ([`OwnedSemaphorePermit::split`] hands them out one by one, and
/// what is not handed out goes back when it is dropped). While other jobs hold slots and
/// fewer than [`GATHER_MIN`] are free, waits (at most [`GATHER_WAIT`]) for more.
async fn permits(
    sem: &Arc<Semaphore>,
    slots: usize,
    max: usize,
    shutdown: &CancellationToken,
) -> Option<OwnedSemaphorePermit> {
    let mut free = tokio::select! {
        p = sem.clone().acquire_owned() => p.ok()?,
        () = shutdown.cancelled() => return None,
    };
    take_free(sem, &mut free, max);
    let want = max.min(GATHER_MIN).min(slots);
    let running = slots - sem.available_permits() - free.num_permits();
    if free.num_permits() < want && running > 0 {
        let need = u32::try_from(want - free.num_permits()).unwrap_or(u32::MAX);
        let gathered = tokio::time::timeout(GATHER_WAIT, sem.clone().acquire_many_owned(need));
        if let Ok(Ok(more)) = gathered.await {
            free.merge(more);
        }
        take_free(sem, &mut free, max);
    }
    Some(free)
}

/// Adds to `free` every free permit, up to `max` in all.
fn take_free(sem: &Arc<Semaphore>, free: &mut OwnedSemaphorePermit, max: usize) {
    let more = sem
        .available_permits()
        .min(max.saturating_sub(free.num_permits()));
    if more > 0
        && let Ok(more) = sem
            .clone()
            .try_acquire_many_owned(u32::try_from(more).unwrap_or(u32::MAX))
    {
        free.merge(more);
    }
}

/// How many deliveries the pause breaker lets us pull now (waits while it is open).
async fn intake_allowance(sh: &Shared, shutdown: &CancellationToken) -> Option<usize> {
    let Some(b) = &sh.pause else {
        return Some(usize::MAX);
    };
    loop {
        match b.state() {
            BreakerState::Closed => return Some(usize::MAX),
            // Held deliveries probe by themselves; pull one probe only when nothing is held.
            BreakerState::HalfOpen if sh.inflight.is_empty() => return Some(1),
            _ => {
                let wake = b
                    .probe_at()
                    .max(Instant::now() + Duration::from_millis(200));
                tokio::select! {
                    () = tokio::time::sleep_until(wake) => {}
                    () = shutdown.cancelled() => return None,
                }
            }
        }
    }
}

/// The consume loop. Returns the live subscription (kept open during drain) on shutdown.
async fn consume(
    sh: &Arc<Shared>,
    mode: &Mode,
    tracker: &TaskTracker,
    health: &Arc<Health>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Box<dyn Subscription>>> {
    let slots = match mode {
        Mode::Single(_) => sh.cfg.concurrency as usize,
        Mode::Batch { .. } => usize::from(sh.cfg.effective_prefetch()),
    };
    let sem = Arc::new(Semaphore::new(slots));
    let opts = SubscribeOptions {
        prefetch: sh.cfg.effective_prefetch(),
    };
    let source = Source::Jobs {
        stage: sh.stage.clone(),
    };
    let resub = Resubscriber::new(
        sh.broker.clone(),
        source,
        opts,
        topology(&sh.cfg, &sh.names, &sh.stage),
        Limits::from_config(&sh.cfg),
        health.clone(),
    );
    let mut consumer = Consumer::new(resub, "consuming").exit_on_second_cancel();
    let mut pending: Vec<Taken> = Vec::new();
    let mut batch_started: Option<Instant> = None;
    loop {
        if shutdown.is_cancelled() {
            if let Mode::Batch { handler, .. } = mode
                && !pending.is_empty()
            {
                tracker.spawn(process::run_batch(
                    sh.clone(),
                    handler.clone(),
                    std::mem::take(&mut pending),
                ));
            }
            let Some(mut sub) = consumer.take_subscription() else {
                return Ok(None);
            };
            // Drain: no new messages from here on (RabbitMQ would otherwise push one for
            // every slot a release frees, and take it back counted at the close).
            sub.stop().await;
            return Ok(Some(sub));
        }
        let Some(allowance) = intake_allowance(sh, shutdown).await else {
            continue;
        };
        let (max, wait) = match mode {
            Mode::Single(_) => (allowance, FETCH_WAIT),
            Mode::Batch { size, linger, .. } => {
                let left = batch_started.map_or(*linger, |t| linger.saturating_sub(t.elapsed()));
                (
                    allowance.min(size - pending.len()),
                    left.min(FETCH_WAIT).max(Duration::from_millis(10)),
                )
            }
        };
        let Some(mut free) = permits(&sem, slots, max, shutdown).await else {
            continue;
        };
        let deliveries = match consumer.next(free.num_permits(), wait, shutdown).await? {
            None => continue,
            Some(Step::Subscribed) => {
                health.set_ready(true);
                continue;
            }
            Some(Step::Fetched(d)) => d,
            Some(Step::Failed(e)) => {
                health.set_ready(false);
                tracing::warn!(error = %e, "consuming failed; resubscribing");
                // Deliveries of the dead subscription cannot be acked; their tasks see it.
                pending.clear();
                batch_started = None;
                continue;
            }
        };
        match mode {
            Mode::Single(handler) => {
                for d in deliveries {
                    let Some(taken) = take(sh, &mut free, d) else {
                        break;
                    };
                    tracker.spawn(process::run_one(sh.clone(), handler.clone(), taken));
                }
            }
            Mode::Batch {
                handler,
                size,
                linger,
            } => {
                for d in deliveries {
                    let Some(taken) = take(sh, &mut free, d) else {
                        break;
                    };
                    batch_started.get_or_insert_with(Instant::now);
                    pending.push(taken);
                }
                let due = batch_started.is_some_and(|t| t.elapsed() >= *linger);
                if pending.len() >= *size || (due && !pending.is_empty()) {
                    batch_started = None;
                    tracker.spawn(process::run_batch(
                        sh.clone(),
                        handler.clone(),
                        std::mem::take(&mut pending),
                    ));
                }
            }
        }
    }
}

/// Pairs a delivery with one of the `free` permits and counts it unsettled (`None`: no permit
/// left; the delivery is dropped and the broker redelivers it).
fn take(sh: &Shared, free: &mut OwnedSemaphorePermit, delivery: Delivery) -> Option<Taken> {
    Some(Taken {
        delivery,
        permit: free.split(1)?,
        held: sh.unsettled.hold(),
    })
}
