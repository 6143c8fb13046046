//! Supervision of a worker (issue 8), through the real `Worker::run` on the memory broker:
//! each long-lived task killed by an injected failure makes `run` return an error naming it
//! within a bound, with `/readyz` and `/healthz` down; a clean stop is still `Ok`.
#![allow(clippy::unwrap_used, missing_docs)] // test code: a panic is the failure report

use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use fleet_core::{
    Broker, BrokerError, BrokerKind, JobError, MemoryBroker, OutMessage, Source, SubscribeOptions,
    Subscription, Topology,
};
use fleet_protocol::JobEnvelope;
use fleet_runtime::{Handler, JobContext, Output, RuntimeConfig, Worker};
use tokio_util::sync::CancellationToken;

/// Injected failures fire 200 ms after start; drain and flush of an idle worker are quick.
const BOUND: Duration = Duration::from_secs(10);

struct Echo;

#[async_trait]
impl Handler for Echo {
    async fn handle(&self, job: &JobEnvelope, _ctx: &JobContext) -> Result<Output, JobError> {
        Ok(Output::new(job.payload.clone()))
    }
}

fn worker(inject: Option<&str>) -> Worker {
    worker_on(Arc::new(MemoryBroker::new()), inject, &[])
}

fn worker_on(broker: Arc<dyn Broker>, inject: Option<&str>, extra: &[&str]) -> Worker {
    let mut args = vec![
        "worker".to_owned(),
        "--prefix=sup".into(),
        "--admin-addr=127.0.0.1:0".into(),
        "--control-sync-wait=0s".into(),
        "--heartbeat-interval=100ms".into(),
        "--drain-deadline=2s".into(),
    ];
    args.extend(inject.map(|t| format!("--test-fail-task={t}")));
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let cfg = RuntimeConfig::parse_from(args).unwrap();
    Worker::new(cfg, "work").with_broker(broker)
}

async fn killed_task_stops_the_worker(inject: &'static str) {
    let task = inject.trim_end_matches(":panic");
    let w = worker(Some(inject));
    let health = w.health();
    let shutdown = CancellationToken::new();
    let started = tokio::time::Instant::now();
    let out = tokio::time::timeout(BOUND, w.run(Echo, shutdown))
        .await
        .unwrap_or_else(|_| panic!("{task}: the worker did not stop within {BOUND:?}"));
    let err = format!("{:#}", out.expect_err("a killed task is an error"));
    assert!(
        err.contains(&format!("task {task} ended before shutdown")),
        "{task}: {err}"
    );
    assert!(started.elapsed() < BOUND);
    assert!(
        !health.is_ready() && !health.is_healthy(),
        "{task}: /readyz and /healthz answer 503"
    );
    assert!(health.failure().is_some_and(|f| f.contains(task)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_task_that_dies_stops_the_worker_naming_it() {
    let mut runs = tokio::task::JoinSet::new();
    for task in [
        "admin",
        "watchdog",
        "events",
        "heartbeats",
        "cancellations",
        "consumer",
        "heartbeats:panic",
    ] {
        runs.spawn(killed_task_stops_the_worker(task));
    }
    while let Some(r) = runs.join_next().await {
        r.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_is_ok() {
    let w = worker(None);
    let health = w.health();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(w.run(Echo, shutdown.clone()));
    wait_until(|| health.is_ready()).await;
    shutdown.cancel();
    tokio::time::timeout(BOUND, run)
        .await
        .expect("stops within the bound")
        .unwrap()
        .expect("a clean stop is Ok");
    assert!(health.failure().is_none());
}

/// Polls `f` every 20 ms until true, at most [`BOUND`].
async fn wait_until(f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + BOUND;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "not ready in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The memory broker, except that subscribing to cancellations is refused until the topology
/// was declared `heal_after` times: what a worker sees on RabbitMQ after someone deleted the
/// control exchange (its per-subscriber queue cannot be bound) until it declares it again.
struct ControlGone {
    inner: MemoryBroker,
    declares: AtomicU32,
    heal_after: u32,
}

#[async_trait]
impl Broker for ControlGone {
    fn kind(&self) -> BrokerKind {
        self.inner.kind()
    }
    async fn declare(&self, t: &Topology) -> Result<(), BrokerError> {
        self.declares.fetch_add(1, Ordering::SeqCst);
        self.inner.declare(t).await
    }
    async fn publish(&self, msg: OutMessage) -> Result<(), BrokerError> {
        self.inner.publish(msg).await
    }
    async fn subscribe(
        &self,
        source: Source,
        opts: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>, BrokerError> {
        if source == Source::Control && self.declares.load(Ordering::SeqCst) < self.heal_after {
            return Err(BrokerError::Rejected(
                "NOT_FOUND - no exchange 'sup.control'".into(),
            ));
        }
        self.inner.subscribe(source, opts).await
    }
    fn is_connected(&self) -> bool {
        self.inner.is_connected()
    }
    async fn reconnect(&self) -> Result<(), BrokerError> {
        self.inner.reconnect().await
    }
    async fn depth(&self, source: &Source) -> Result<u64, BrokerError> {
        self.inner.depth(source).await
    }
    async fn retrying(&self, stage: &str) -> Result<u64, BrokerError> {
        self.inner.retrying(stage).await
    }
    async fn parked(&self) -> Result<u64, BrokerError> {
        self.inner.parked().await
    }
    async fn replay_parked(&self, max: usize) -> Result<u64, BrokerError> {
        self.inner.replay_parked(max).await
    }
    async fn delete_topology(&self, t: &Topology) -> Result<(), BrokerError> {
        self.inner.delete_topology(t).await
    }
    async fn close(&self) {
        self.inner.close().await;
    }
}

fn control_gone(heal_after: u32) -> Arc<ControlGone> {
    Arc::new(ControlGone {
        inner: MemoryBroker::new(),
        declares: AtomicU32::new(0),
        heal_after,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_listener_that_cannot_subscribe_redeclares_and_recovers() {
    // The worker declares once at start; the listener's repair is the second declaration.
    let broker = control_gone(2);
    let w = worker_on(broker.clone(), None, &[]);
    let health = w.health();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(w.run(Echo, shutdown.clone()));
    wait_until(|| health.is_ready()).await;
    assert!(broker.declares.load(Ordering::SeqCst) >= 2, "redeclared");
    shutdown.cancel();
    tokio::time::timeout(BOUND, run)
        .await
        .unwrap()
        .unwrap()
        .expect("recovered: a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_listener_that_never_subscribes_ends_the_worker() {
    let broker = control_gone(u32::MAX);
    let w = worker_on(broker.clone(), None, &["--resubscribe-limit=1s"]);
    let health = w.health();
    let out = tokio::time::timeout(BOUND, w.run(Echo, CancellationToken::new()))
        .await
        .expect("gives up within the bound");
    let err = format!("{:#}", out.expect_err("an error naming the listener"));
    assert!(
        err.contains("task cancellations ended before shutdown")
            && err.contains("FLEET_RESUBSCRIBE_LIMIT"),
        "{err}"
    );
    assert!(
        broker.declares.load(Ordering::SeqCst) >= 3,
        "kept redeclaring"
    );
    assert!(!health.is_ready() && !health.is_healthy());
}
