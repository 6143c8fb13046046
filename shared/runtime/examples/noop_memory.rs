//! The runtime alone on the in-process broker: N no-op jobs through a [`Worker`] with
//! everything on (events, heartbeats, metrics). No broker client code runs, so what a heap
//! profiler sees is the runtime's own per-job work plus the memory broker's.
//!
//! `cargo run --release --example noop_memory -p fleet-runtime -- 5000`; allocations by call
//! site: `valgrind --tool=dhat target/release/examples/noop_memory 5000` (allocations per job:
//! the difference of the totals of two runs with different N, divided by the difference of N).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fleet_core::{Broker, Destination, MemoryBroker, OutMessage, Source};
use fleet_runtime::telemetry::names::DELIVERIES_UNSETTLED;
use fleet_runtime::{Handler, JobContext, JobEnvelope, JobError, Output, RuntimeConfig, Worker};
use tokio_util::sync::CancellationToken;

const STAGE: &str = "noop";

/// Counts calls.
#[derive(Clone, Default)]
struct Noop {
    handled: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl Handler for Noop {
    async fn handle(&self, _job: &JobEnvelope, _ctx: &JobContext) -> Result<Output, JobError> {
        self.handled.fetch_add(1, Ordering::Relaxed);
        Ok(Output::default())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(5000);
    let cfg = RuntimeConfig::parse_from([
        "noop_memory",
        "--broker-url",
        "memory://",
        "--prefix",
        "alloc",
        "--concurrency",
        "256",
        "--prefetch",
        "256",
        "--admin-addr",
        "127.0.0.1:0",
        "--control-sync-wait",
        "0s",
    ])?;
    let metrics = fleet_runtime::telemetry::admin::prometheus()?;
    let broker = MemoryBroker::new();
    let topology =
        fleet_runtime::config::topology(&cfg, &fleet_protocol::Names::new("alloc"), STAGE);
    broker.declare(&topology).await?;
    for i in 0..n {
        let job = JobEnvelope::new("p", &format!("item-{i}"), STAGE, serde_json::Value::Null);
        let msg = OutMessage {
            dest: Destination::Job {
                stage: STAGE.to_owned(),
            },
            body: job.to_bytes().into(),
            msg_id: Some(job.job_id),
            headers: Vec::new(),
        };
        broker.publish(msg).await?;
    }
    let handler = Noop::default();
    let shutdown = CancellationToken::new();
    let worker = Worker::new(cfg, STAGE).with_broker(Arc::new(broker.clone()));
    let task = tokio::spawn(worker.run(handler.clone(), shutdown.clone()));
    let label = format!("{DELIVERIES_UNSETTLED}{{stage=\"{STAGE}\"}} 0");
    let started = tokio::time::Instant::now();
    loop {
        if handler.handled.load(Ordering::Relaxed) >= n && metrics.render().contains(&label) {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(120),
            "not done after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = started.elapsed();
    shutdown.cancel();
    task.await??;
    let depth = broker
        .depth(&Source::Jobs {
            stage: STAGE.to_owned(),
        })
        .await?;
    anyhow::ensure!(depth == 0, "{depth} jobs still queued");
    println!(
        "jobs {n}  handled {}  {:.0} jobs/s",
        handler.handled.load(Ordering::Relaxed),
        n as f64 / took.as_secs_f64(),
    );
    Ok(())
}
