//! One test's world: a backend, a run-unique prefix, connections, events, DLQ.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_core::{
    Broker, Delivery, Destination, MemoryBroker, OutMessage, Source, SubscribeOptions, Topology,
};
use fleet_protocol::{Event, EventBatch, EventKind, JobEnvelope, Names};
use fleet_runtime::{Breaker, Handler, RuntimeConfig, Worker};
use fleet_test_support::{unique_prefix, wait_for};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The stage every conformance case consumes.
pub const STAGE: &str = "work";
/// Next stages the cases route jobs to (declared by the worker, deleted at cleanup).
pub const EXTRA_STAGES: [&str; 2] = ["next", "after"];

/// Which broker a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// In-process.
    Memory,
    /// RabbitMQ on loopback.
    Rabbit,
    /// NATS JetStream on loopback.
    Nats,
}

/// A test's world.
pub struct Env {
    /// The backend.
    pub backend: Backend,
    /// Run-unique prefix.
    pub prefix: String,
    /// URL workers connect to (may be changed to go through a proxy).
    pub url: String,
    memory: Option<MemoryBroker>,
    /// The test's own connection (publishing, reading DLQ and depth).
    pub control: Arc<dyn Broker>,
    events: Arc<Mutex<Vec<Event>>>,
    collector: JoinHandle<()>,
    collector_stop: CancellationToken,
}

/// A worker running in a task.
pub struct RunningWorker {
    /// Cancels to drain and stop.
    pub shutdown: CancellationToken,
    /// The worker's task: its result is the worker's exit.
    pub task: JoinHandle<anyhow::Result<()>>,
    /// The worker's own broker connection.
    pub broker: Arc<dyn Broker>,
    /// Its health flags.
    pub health: Arc<fleet_runtime::telemetry::Health>,
}

impl RunningWorker {
    /// Simulates `kill -9`: the connection drops without acks and the task is gone.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
        self.broker.close().await;
    }

    /// SIGTERM: drain and wait for the exit (bounded).
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let exit = tokio::time::timeout(Duration::from_secs(60), self.task).await?;
        // The worker does not close a broker it was handed; its connection is ours to close.
        self.broker.close().await;
        exit?
    }
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

impl Env {
    /// A fresh world on `backend`; fails loudly when the broker is unreachable.
    pub async fn new(backend: Backend, tag: &str) -> Env {
        init_logs();
        let prefix = unique_prefix(tag);
        let url = match backend {
            Backend::Memory => "memory://".to_owned(),
            Backend::Rabbit => fleet_test_support::amqp_url(),
            Backend::Nats => fleet_test_support::nats_url(),
        };
        let memory = (backend == Backend::Memory).then(MemoryBroker::new);
        let mut env = Env {
            backend,
            prefix,
            url,
            memory,
            control: Arc::new(MemoryBroker::new()),
            events: Arc::default(),
            collector: tokio::spawn(async {}),
            collector_stop: CancellationToken::new(),
        };
        env.control = env.connect().await;
        env.control
            .declare(&env.topology())
            .await
            .expect("declare the test topology");
        env.collector = env.collect_events().await;
        env
    }

    /// Runtime options for a test worker; `extra` are more flags.
    pub fn cfg(&self, extra: &[&str]) -> RuntimeConfig {
        let mut args = vec![
            "worker".to_owned(),
            format!("--broker-url={}", self.url),
            format!("--prefix={}", self.prefix),
            "--admin-addr=127.0.0.1:0".into(),
            "--ack-wait=3s".into(),
            "--max-attempts=3".into(),
            "--max-deliver=6".into(),
            "--retry-base=100ms".into(),
            "--retry-max=1s".into(),
            "--heartbeat-interval=1s".into(),
            // No coordinator here: nothing would ever sync the cancellations on RabbitMQ.
            "--control-sync-wait=0s".into(),
            "--broker-heartbeat=2s".into(),
            "--drain-deadline=5s".into(),
            "--max-outage=60s".into(),
            "--confirm-timeout=5s".into(),
            "--concurrency=4".into(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        RuntimeConfig::parse_from(args).expect("test config parses")
    }

    /// The topology of the test stage.
    pub fn topology(&self) -> Topology {
        fleet_runtime::config::topology(&self.cfg(&[]), &Names::new(&self.prefix), STAGE)
    }

    /// A new connection (memory: the shared broker).
    pub async fn connect(&self) -> Arc<dyn Broker> {
        match &self.memory {
            Some(m) => Arc::new(m.clone()),
            None => {
                let b = fleet_runtime::connect::connect(&self.cfg(&[]))
                    .await
                    .unwrap_or_else(|e| {
                        panic!(
                            "cannot reach the {:?} broker at {}: {e}",
                            self.backend, self.url
                        )
                    });
                b.declare(&self.topology()).await.expect("declare");
                b
            }
        }
    }

    /// The memory broker, on the memory backend.
    pub fn memory(&self) -> Option<&MemoryBroker> {
        self.memory.as_ref()
    }

    async fn collect_events(&self) -> JoinHandle<()> {
        let control = self.control.clone();
        let mut sub = control
            .subscribe(Source::Events, SubscribeOptions { prefetch: 256 })
            .await
            .expect("subscribe to events");
        let events = self.events.clone();
        let stop = self.collector_stop.clone();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let got = match sub.fetch(256, Duration::from_millis(200)).await {
                    Ok(got) => got,
                    Err(_) => {
                        // The test may cut connections on purpose: resubscribe until it works.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        let _ = control.reconnect().await;
                        if let Ok(s) = control
                            .subscribe(Source::Events, SubscribeOptions { prefetch: 256 })
                            .await
                        {
                            sub = s;
                        }
                        continue;
                    }
                };
                for d in got {
                    if let Ok(batch) = serde_json::from_slice::<EventBatch>(&d.body) {
                        events.lock().expect("events lock").extend(batch.events);
                    }
                    let _ = d.acker.ack().await;
                }
            }
        })
    }

    /// Every job event seen so far.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().expect("events lock").clone()
    }

    /// Events of one job.
    pub fn job_events(&self, job_id: &str) -> Vec<Event> {
        self.events()
            .into_iter()
            .filter(|e| e.job_id == job_id)
            .collect()
    }

    /// Waits until `job_id` has a terminal event and returns it.
    pub async fn terminal(&self, job_id: &str, within: Duration) -> Event {
        wait_for(
            &format!("a terminal event for {job_id}"),
            within,
            || async {
                self.job_events(job_id)
                    .into_iter()
                    .find(|e| e.kind.is_terminal())
            },
        )
        .await
    }

    /// A job for the test stage with `payload` and the given limits.
    pub fn job(&self, item: &str, payload: serde_json::Value) -> JobEnvelope {
        let mut j = JobEnvelope::new(&format!("{}-p", self.prefix), item, STAGE, payload);
        j.timeout_ms = 10_000;
        j.max_attempts = 3;
        j
    }

    /// Publishes a job (confirmed).
    pub async fn publish(&self, job: &JobEnvelope) {
        self.publish_raw(job.to_bytes()).await;
    }

    /// Publishes a raw body to the stage (confirmed).
    pub async fn publish_raw(&self, body: Vec<u8>) {
        self.control
            .publish(OutMessage::new(
                Destination::Job {
                    stage: STAGE.into(),
                },
                body,
            ))
            .await
            .expect("publish");
    }

    /// Starts a worker with `handler` and extra flags, on its own connection.
    pub async fn start(&self, handler: impl Handler, extra: &[&str]) -> RunningWorker {
        self.start_with(extra, None, |w, shutdown| async move {
            w.run(handler, shutdown).await
        })
        .await
    }

    /// Starts a worker gated by a `pause` breaker.
    pub async fn start_paused(
        &self,
        handler: impl Handler,
        extra: &[&str],
        breaker: Arc<Breaker>,
    ) -> RunningWorker {
        self.start_with(extra, Some(breaker), |w, shutdown| async move {
            w.run(handler, shutdown).await
        })
        .await
    }

    /// Starts a worker and runs it with `run` (single or batch).
    pub async fn start_with<F, Fut>(
        &self,
        extra: &[&str],
        breaker: Option<Arc<Breaker>>,
        run: F,
    ) -> RunningWorker
    where
        F: FnOnce(Worker, CancellationToken) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let broker = self.connect().await;
        let mut worker = Worker::new(self.cfg(extra), STAGE).with_broker(broker.clone());
        if let Some(b) = breaker {
            worker = worker.pause_on(b);
        }
        let health = worker.health();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(worker, shutdown.clone()));
        RunningWorker {
            shutdown,
            task,
            broker,
            health,
        }
    }

    /// Reads (and acks) every dead letter of the stage that arrives within `wait`.
    pub async fn dead_letters(&self, expect: usize, within: Duration) -> Vec<Delivery> {
        let mut sub = self
            .control
            .subscribe(
                Source::DeadLetters {
                    stage: STAGE.into(),
                },
                SubscribeOptions { prefetch: 64 },
            )
            .await
            .expect("subscribe to DLQ");
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + within;
        while out.len() < expect && tokio::time::Instant::now() < deadline {
            out.extend(
                sub.fetch(expect - out.len(), Duration::from_millis(500))
                    .await
                    .expect("fetch DLQ"),
            );
        }
        assert!(
            out.len() >= expect,
            "expected {expect} dead letters within {within:?}, got {}",
            out.len()
        );
        // Nothing more may arrive.
        let extra = sub
            .fetch(16, Duration::from_millis(300))
            .await
            .expect("fetch DLQ");
        assert!(
            extra.is_empty(),
            "{} unexpected extra dead letters",
            extra.len()
        );
        out
    }

    /// Messages waiting in the stage queue.
    pub async fn depth(&self) -> u64 {
        self.control
            .depth(&Source::Jobs {
                stage: STAGE.into(),
            })
            .await
            .expect("depth")
    }

    /// Waits until the stage queue is empty.
    pub async fn wait_empty(&self, within: Duration) {
        wait_for("the stage queue to be empty", within, || async {
            self.depth().await == 0
        })
        .await;
    }

    /// Removes everything the test declared.
    pub async fn cleanup(self) {
        self.collector_stop.cancel();
        let mut topology = self.topology();
        // Stages that jobs were routed on to by the cases are declared by the worker: remove them too.
        topology
            .stages
            .extend(EXTRA_STAGES.iter().map(|s| (*s).to_owned()));
        let _ = tokio::time::timeout(Duration::from_secs(5), self.collector).await;
        let _ = self.control.delete_topology(&topology).await;
        self.control.close().await;
    }
}

/// True for a `succeeded` event.
pub fn is_succeeded(e: &Event) -> bool {
    e.kind == EventKind::Succeeded
}
