//! The summarizer's handler through a real Worker on a broker (memory, or a real one by URL),
//! with helpers to submit items and read outputs, events, metrics and `/readyz`.
#![allow(dead_code)] // each test binary uses a subset

use std::sync::Arc;
use std::time::Duration;

use super::stub::Stub;
use fleet_core::{
    Broker, Destination, MemoryBroker, OutMessage, Source, SubscribeOptions, Subscription, Topology,
};
use fleet_protocol::{EventBatch, EventKind, JobEnvelope, Names, RouteStep, decode_job};
use fleet_runtime::{RuntimeConfig, Worker};
use fleet_summarizer::config::ProviderConfig;
use fleet_summarizer::extractive::ExtractiveOptions;
use fleet_summarizer::openai::OpenAiProvider;
use fleet_summarizer::{SummarizeHandler, Summarizer};
use fleet_test_support::unique_prefix;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// An item text with a clear extractive summary.
pub const TEXT: &str = "Message queues decouple producers from consumers. \
    A consumer fleet processes jobs from the message queues under hard deadlines. \
    The weather was pleasant yesterday. \
    Deadlines protect the consumer fleet from hanging jobs and stuck consumers. \
    Retries with backoff keep message queues from overload when consumers fail.";

/// A summarizer worker under test and what it produced.
pub struct World {
    pub broker: Arc<dyn Broker>,
    pub topology: Topology,
    pub prefix: String,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub summarizer: Arc<Summarizer>,
    pub out: Box<dyn Subscription>,
    pub events: Box<dyn Subscription>,
    pub seen_events: Vec<fleet_protocol::Event>,
    pub seen_heartbeats: Vec<fleet_protocol::Heartbeat>,
    pub admin: Arc<std::sync::Mutex<Option<std::net::SocketAddr>>>,
}

/// A provider config for `stub` with short timeouts.
pub fn provider(name: &str, stub: &Stub, f: impl FnOnce(&mut ProviderConfig)) -> ProviderConfig {
    let mut p = ProviderConfig::new(name, &stub.base_url(), "stub-model");
    p.request_timeout = Duration::from_secs(5);
    p.idle_read_timeout = Duration::from_secs(2);
    p.connect_timeout = Duration::from_secs(1);
    f(&mut p);
    p
}

impl World {
    pub async fn start(providers: Vec<ProviderConfig>, concurrency: u32) -> World {
        World::start_with(providers, concurrency, true, true).await
    }

    pub async fn start_with(
        providers: Vec<ProviderConfig>,
        concurrency: u32,
        fallback: bool,
        gate: bool,
    ) -> World {
        World::start_on("memory://", providers, concurrency, fallback, gate).await
    }

    /// On the broker at `url` (`memory://`: an in-process one). `fallback: false` turns the
    /// extractive fallback off; `gate` then gates intake as `run` does (`false`: the
    /// behaviour before the pause gate, for the measurement).
    pub async fn start_on(
        url: &str,
        providers: Vec<ProviderConfig>,
        concurrency: u32,
        fallback: bool,
        gate: bool,
    ) -> World {
        World::start_retrying(url, providers, concurrency, fallback, gate, 2).await
    }

    /// As [`World::start_on`], with `chunk_retries` retries of a failed chunk call.
    pub async fn start_retrying(
        url: &str,
        providers: Vec<ProviderConfig>,
        concurrency: u32,
        fallback: bool,
        gate: bool,
        chunk_retries: u32,
    ) -> World {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        let prefix = unique_prefix("summarizer");
        let cfg = RuntimeConfig::parse_from([
            "summarizer".to_owned(),
            format!("--broker-url={url}"),
            format!("--prefix={prefix}"),
            "--admin-addr=127.0.0.1:0".into(),
            format!("--concurrency={concurrency}"),
            "--max-attempts=3".into(),
            "--max-deliver=6".into(),
            "--retry-base=100ms".into(),
            "--retry-max=2s".into(),
            "--heartbeat-interval=1s".into(),
            // No coordinator here: nothing would ever sync the cancellations on RabbitMQ.
            "--control-sync-wait=0s".into(),
            "--drain-deadline=3s".into(),
        ])
        .expect("config");
        let broker: Arc<dyn Broker> = if url == "memory://" {
            Arc::new(MemoryBroker::new())
        } else {
            fleet_runtime::connect::connect(&cfg)
                .await
                .unwrap_or_else(|e| panic!("cannot reach the broker at {url}: {e}"))
        };
        // The worker's own settings, so a real broker sees one queue config from both.
        let topology = Topology {
            max_deliver: cfg.max_deliver,
            ack_wait: cfg.ack_wait,
            max_ack_pending: cfg.max_ack_pending,
            ..Topology::new(Names::new(&prefix), &["summarize", "write"])
        };
        broker.declare(&topology).await.expect("declare");
        let providers = providers
            .into_iter()
            .map(|p| OpenAiProvider::new(p).map(Arc::new))
            .collect::<anyhow::Result<Vec<_>>>()
            .expect("providers");
        let mut summarizer = Summarizer::new(providers, ExtractiveOptions::default(), 2)
            .with_chunk_retries(chunk_retries);
        if !fallback {
            summarizer = summarizer.without_fallback();
        }
        let summarizer = Arc::new(summarizer);
        let handler = SummarizeHandler::new(
            summarizer.clone(),
            fleet_analyzer::chunk::ChunkSize::chars(4000),
            3,
        );
        let shutdown = CancellationToken::new();
        let mut worker = Worker::new(cfg, "summarize").with_broker(broker.clone());
        if let Some(gate) = fleet_summarizer::pause_gate(&handler).filter(|_| gate) {
            worker = worker.pause_when(gate);
        }
        let admin = worker.admin_addr();
        let task = tokio::spawn(worker.run(handler, shutdown.clone()));
        let out = broker
            .subscribe(
                Source::Jobs {
                    stage: "write".into(),
                },
                SubscribeOptions { prefetch: 64 },
            )
            .await
            .expect("subscribe write");
        let events = broker
            .subscribe(Source::Events, SubscribeOptions { prefetch: 256 })
            .await
            .expect("subscribe events");
        World {
            broker,
            topology,
            prefix,
            shutdown,
            task,
            summarizer,
            out,
            events,
            seen_events: Vec::new(),
            seen_heartbeats: Vec::new(),
            admin,
        }
    }

    pub fn job(&self, item: &str, payload: serde_json::Value, timeout_ms: u64) -> JobEnvelope {
        let mut job = JobEnvelope::new(&format!("{}-p", self.prefix), item, "summarize", payload);
        job.route = vec![RouteStep {
            stage: "write".into(),
            required: true,
        }];
        job.timeout_ms = timeout_ms;
        job.max_attempts = 3;
        job
    }

    pub async fn publish(&self, job: &JobEnvelope) {
        self.broker
            .publish(OutMessage::new(
                Destination::Job {
                    stage: "summarize".into(),
                },
                job.to_bytes(),
            ))
            .await
            .expect("publish");
    }

    pub async fn submit(&self, item: &str, text: &str, timeout_ms: u64) -> JobEnvelope {
        let job = self.job(
            item,
            serde_json::json!({"text": text, "metadata": {"item": item}}),
            timeout_ms,
        );
        self.publish(&job).await;
        job
    }

    /// The next `write` job (its payload), within `within`.
    pub async fn next_output(&mut self, within: Duration) -> JobEnvelope {
        let until = Instant::now() + within;
        while Instant::now() < until {
            let got = self
                .out
                .fetch(1, Duration::from_millis(100))
                .await
                .expect("fetch");
            if let Some(d) = got.into_iter().next() {
                let job = decode_job(&d.body, 1 << 22).expect("write job");
                d.acker.ack().await.expect("ack");
                return job;
            }
        }
        panic!("no write job within {within:?}");
    }

    /// The `succeeded` event of `job_id` (bounded wait).
    pub async fn succeeded(&mut self, job_id: &str) -> fleet_protocol::Event {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            self.pump_events().await;
            let found = self
                .seen_events
                .iter()
                .find(|e| e.job_id == job_id && e.kind == EventKind::Succeeded);
            if let Some(e) = found {
                return e.clone();
            }
            assert!(Instant::now() < until, "no succeeded event for {job_id}");
        }
    }

    /// Drains the events queue into `seen_events` and `seen_heartbeats`.
    pub async fn pump_events(&mut self) {
        loop {
            let got = self
                .events
                .fetch(256, Duration::from_millis(50))
                .await
                .expect("events");
            if got.is_empty() {
                return;
            }
            for d in got {
                if let Ok(b) = serde_json::from_slice::<EventBatch>(&d.body) {
                    self.seen_events.extend(b.events);
                    self.seen_heartbeats.extend(b.heartbeat);
                }
                d.acker.ack().await.expect("ack event");
            }
        }
    }

    /// The worker's /metrics text.
    pub async fn metrics(&self) -> String {
        let addr = self
            .admin
            .lock()
            .expect("lock")
            .expect("admin server started");
        reqwest::get(format!("http://{addr}/metrics"))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// `/readyz`: status code and body.
    pub async fn readyz(&self) -> (u16, String) {
        let addr = self
            .admin
            .lock()
            .expect("lock")
            .expect("admin server started");
        let r = reqwest::get(format!("http://{addr}/readyz"))
            .await
            .expect("GET /readyz");
        (r.status().as_u16(), r.text().await.expect("readyz body"))
    }

    /// Dead letters of `summarize` so far.
    pub async fn dead_letters(&self) -> u64 {
        self.broker
            .depth(&Source::DeadLetters {
                stage: "summarize".into(),
            })
            .await
            .expect("dlq depth")
    }

    pub fn provider(&self, i: usize) -> &Arc<OpenAiProvider> {
        &self.summarizer.providers()[i]
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("worker stops")
            .expect("join")
            .expect("worker ok");
        drop((self.out, self.events));
        let _ = self.broker.delete_topology(&self.topology).await;
        self.broker.close().await;
    }
}

/// The `summary` of an output job.
pub fn summary(job: &JobEnvelope) -> &serde_json::Value {
    &job.payload["summary"]
}
