//! The fleet side of a run that is not measured: connecting through the adapters, declaring
//! the run's topology, pre-loading job envelopes, watching the stage queue, cleaning up.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use fleet_core::{Broker, Destination, OutMessage, Source, Topology};
use fleet_protocol::{JobEnvelope, Names};
use fleet_runtime::RuntimeConfig;
use futures::{StreamExt as _, TryStreamExt as _};
use tokio::time::Instant;

use crate::Args;

/// The stage every benchmark job belongs to.
pub const STAGE: &str = "noop";
/// Publishes in flight while pre-loading.
const LOAD_IN_FLIGHT: usize = 512;

/// A broker under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// RabbitMQ through lapin.
    RabbitMq,
    /// NATS JetStream through async-nats.
    Nats,
}

impl Kind {
    /// Name shown in the table.
    pub fn label(self) -> &'static str {
        match self {
            Kind::RabbitMq => "rabbitmq",
            Kind::Nats => "nats",
        }
    }

    /// The URL of this broker from the command line.
    pub fn url(self, args: &Args) -> &str {
        match self {
            Kind::RabbitMq => &args.amqp_url,
            Kind::Nats => &args.nats_url,
        }
    }

    /// The broker's port when the URL names none.
    pub fn default_port(self) -> u16 {
        match self {
            Kind::RabbitMq => 5672,
            Kind::Nats => 4222,
        }
    }
}

/// One broker's run: its unique prefix and the runtime config both sides share.
pub struct Run {
    /// The broker under test.
    pub kind: Kind,
    /// Run-unique prefix of every queue, stream and consumer (`bench-<uuid8>`).
    pub prefix: String,
    /// The runtime config of the measured worker (also gives the declared topology).
    pub cfg: RuntimeConfig,
}

impl Run {
    /// A run with a fresh prefix and the worker config for `args`.
    pub fn new(kind: Kind, args: &Args) -> anyhow::Result<Run> {
        let prefix = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let prefetch = args.prefetch.to_string();
        let cfg = RuntimeConfig::parse_from([
            "fleet-bench",
            "--broker-url",
            kind.url(args),
            "--prefix",
            &prefix,
            "--concurrency",
            &prefetch,
            "--prefetch",
            &prefetch,
            "--admin-addr",
            "127.0.0.1:0",
            "--heartbeat-interval",
            "1s",
            // No coordinator in the benchmark: take jobs at once.
            "--control-sync-wait",
            "0s",
        ])
        .context("building the runtime config")?;
        Ok(Run { kind, prefix, cfg })
    }

    /// The run's broker names.
    pub fn names(&self) -> Names {
        Names::new(&self.prefix)
    }

    /// The topology the worker declares for [`STAGE`].
    pub fn topology(&self) -> Topology {
        fleet_runtime::config::topology(&self.cfg, &self.names(), STAGE)
    }
}

/// Opens a fleet broker connection (loading, depth, cleanup) through the adapter.
pub async fn connect(kind: Kind, url: &str) -> anyhow::Result<Arc<dyn Broker>> {
    Ok(match kind {
        Kind::RabbitMq => {
            Arc::new(fleet_amqp::connect(url, fleet_amqp::AmqpOptions::default()).await?)
        }
        Kind::Nats => Arc::new(fleet_nats::connect(url, fleet_nats::NatsOptions::default()).await?),
    })
}

/// Declares the run's topology (the worker declares it again, identically).
pub async fn declare(run: &Run, broker: &dyn Broker, limit: Duration) -> anyhow::Result<()> {
    tokio::time::timeout(limit, broker.declare(&run.topology()))
        .await
        .context("declaring the topology timed out")?
        .context("declaring the topology")
}

/// Deletes everything under the run's prefix.
pub async fn cleanup(run: &Run, broker: &dyn Broker, limit: Duration) -> anyhow::Result<()> {
    tokio::time::timeout(limit, broker.delete_topology(&run.topology()))
        .await
        .context("deleting the topology timed out")?
        .with_context(|| format!("deleting the topology under prefix {}", run.prefix))
}

/// Publishes `n` no-op jobs of `pipeline` (confirmed, many in flight) and checks they are queued.
pub async fn preload(
    broker: &dyn Broker,
    pipeline: &str,
    n: u64,
    limit: Duration,
) -> anyhow::Result<()> {
    let publish_all = futures::stream::iter(0..n)
        .map(|i| {
            let job = JobEnvelope::new(
                pipeline,
                &format!("item-{i}"),
                STAGE,
                serde_json::Value::Null,
            );
            let msg = OutMessage {
                dest: Destination::Job {
                    stage: STAGE.to_owned(),
                },
                body: bytes::Bytes::from(job.to_bytes()),
                msg_id: Some(job.job_id),
                headers: Vec::new(),
            };
            broker.publish(msg)
        })
        .buffer_unordered(LOAD_IN_FLIGHT)
        .try_for_each(|()| futures::future::ready(Ok(())));
    tokio::time::timeout(limit, publish_all)
        .await
        .with_context(|| format!("pre-loading {n} jobs took longer than {limit:?}"))?
        .with_context(|| format!("pre-loading {n} jobs"))?;
    wait_depth(broker, n, limit)
        .await
        .context("after pre-loading")
}

/// Messages waiting in the stage queue (not counting those delivered and unacked).
pub async fn depth(broker: &dyn Broker) -> anyhow::Result<u64> {
    let source = Source::Jobs {
        stage: STAGE.to_owned(),
    };
    tokio::time::timeout(Duration::from_secs(30), broker.depth(&source))
        .await
        .context("reading the queue depth timed out")?
        .context("reading the queue depth")
}

/// Waits until the stage queue holds exactly `want` waiting messages; fails after `limit`.
pub async fn wait_depth(broker: &dyn Broker, want: u64, limit: Duration) -> anyhow::Result<()> {
    let until = Instant::now() + limit;
    loop {
        let now = depth(broker).await?;
        if now == want {
            return Ok(());
        }
        if Instant::now() >= until {
            bail!("the stage queue holds {now} messages after {limit:?}, expected {want}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
