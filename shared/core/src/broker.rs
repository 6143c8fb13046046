//! The broker traits: publish confirmed, subscribe with bounded pulls, and an
//! [`Acker`] per delivery that is the only way to settle it.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fleet_protocol::{DeadLetterInfo, Names};

use crate::error::BrokerError;

/// Message headers as ordered string pairs.
pub type Headers = Vec<(String, String)>;

/// Which backend a broker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// RabbitMQ over AMQP 0-9-1.
    RabbitMq,
    /// NATS JetStream.
    Nats,
    /// In-process.
    Memory,
}

/// What to declare at start-up (idempotently).
#[derive(Debug, Clone)]
pub struct Topology {
    /// Names derived from the prefix.
    pub names: Names,
    /// Stages whose job queues, retry queues and DLQs must exist.
    pub stages: Vec<String>,
    /// Per-stage ack wait (NATS consumer `ack_wait`; memory visibility timeout).
    pub ack_wait: Duration,
    /// Broker-side backstop on deliveries (RabbitMQ `x-delivery-limit`, NATS `max_deliver`).
    pub max_deliver: u32,
    /// NATS stage-level `max_ack_pending`: all replicas' slots plus delayed retries.
    pub max_ack_pending: i64,
    /// RabbitMQ retry ladder (delays a computed retry delay is rounded up to).
    pub retry_ladder: Vec<Duration>,
}

impl Topology {
    /// A topology for `stages` under `names` with the default limits.
    pub fn new(names: Names, stages: &[&str]) -> Topology {
        Topology {
            names,
            stages: stages.iter().map(|s| (*s).to_owned()).collect(),
            ack_wait: Duration::from_secs(30),
            max_deliver: 10,
            max_ack_pending: 1024,
            retry_ladder: default_retry_ladder(),
        }
    }
}

/// The RabbitMQ retry ladder of DESIGN §3: 1s, 5s, 30s, 2m, 10m.
pub fn default_retry_ladder() -> Vec<Duration> {
    [1, 5, 30, 120, 600]
        .into_iter()
        .map(Duration::from_secs)
        .collect()
}

/// Rounds `delay` up to the first ladder step that is at least as long (the last step caps).
pub fn ladder_step(ladder: &[Duration], delay: Duration) -> Duration {
    ladder
        .iter()
        .copied()
        .find(|step| *step >= delay)
        .or(ladder.last().copied())
        .unwrap_or(delay)
}

/// Formats a ladder step as a queue-name label: `1s`, `2m`, `1500ms`.
pub fn ladder_label(step: Duration) -> String {
    let ms = step.as_millis();
    if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Where a published message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A stage's job queue.
    Job {
        /// Target stage.
        stage: String,
    },
    /// Event batches of a stage (to the coordinator).
    Events {
        /// Sending stage.
        stage: String,
    },
    /// A stage's dead letters.
    DeadLetter {
        /// Stage that gave up.
        stage: String,
    },
    /// Pipeline submissions.
    Submit,
    /// A finalized pipeline, keyed by its final state.
    Pipeline {
        /// Final state.
        state: String,
    },
    /// A pipeline's cancellation.
    Control {
        /// Cancelled pipeline.
        pipeline_id: String,
    },
}

/// A message to publish.
#[derive(Debug, Clone)]
pub struct OutMessage {
    /// Where it goes.
    pub dest: Destination,
    /// The body, unchanged on the wire.
    pub body: Bytes,
    /// De-duplication id (NATS `Nats-Msg-Id`; AMQP `message_id`).
    pub msg_id: Option<String>,
    /// Extra headers.
    pub headers: Headers,
}

impl OutMessage {
    /// A message with no id and no headers.
    pub fn new(dest: Destination, body: impl Into<Bytes>) -> OutMessage {
        OutMessage {
            dest,
            body: body.into(),
            msg_id: None,
            headers: Vec::new(),
        }
    }
}

/// What to consume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A stage's jobs (durable, shared by all replicas of the stage).
    Jobs {
        /// The stage.
        stage: String,
    },
    /// All stages' event batches (the coordinator).
    Events,
    /// A stage's dead letters (the coordinator's archive).
    DeadLetters {
        /// The stage.
        stage: String,
    },
    /// Pipeline submissions.
    Submit,
    /// Cancellations (every subscriber sees all; NATS replays the kept ones).
    Control,
}

/// Per-subscription settings.
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    /// Most deliveries held unacked by this subscription (AMQP `basic_qos`).
    pub prefetch: u16,
}

/// A consumer of one [`Source`].
#[async_trait]
pub trait Subscription: Send {
    /// Waits at most `wait` for up to `max` deliveries; an empty vector means none came.
    ///
    /// Pull-based backends request only `max`, so nothing waits in a client
    /// buffer while its ack wait runs. An error means the subscription is dead:
    /// reconnect (if [`BrokerError::is_connection`]) and subscribe again.
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BrokerError>;

    /// Ends the subscription after the broker has seen every settlement sent before (bounded).
    ///
    /// Plain dropping may close a channel ahead of settlements still on their way; unsettled
    /// deliveries go back to the queue either way.
    async fn close(self: Box<Self>) {}
}

/// Settles one delivery. Consuming methods make double-settling impossible.
#[async_trait]
pub trait Acker: Send + Sync {
    /// Done: remove the message.
    async fn ack(self: Box<Self>) -> Result<(), BrokerError>;
    /// Run again after at least `delay` (a new attempt). Returns the delay actually used
    /// (RabbitMQ rounds up to its retry ladder).
    async fn retry(self: Box<Self>, delay: Duration) -> Result<Duration, BrokerError>;
    /// Publish the original body with `info`'s headers to the stage DLQ (confirmed), then remove it.
    async fn dead_letter(self: Box<Self>, info: &DeadLetterInfo) -> Result<(), BrokerError>;
    /// Give the message back for immediate redelivery (drain, lost slot).
    async fn release(self: Box<Self>) -> Result<(), BrokerError>;
    /// Extend the lease while the job runs (NATS `+WPI`, confirmed); a no-op where impossible.
    async fn extend(&self) -> Result<(), BrokerError>;
    /// How often [`Acker::extend`] must be called to keep the lease, if it can be.
    fn lease(&self) -> Option<Duration>;
}

/// One message handed to this worker.
pub struct Delivery {
    /// The body, exactly as published.
    pub body: Bytes,
    /// Its headers.
    pub headers: Headers,
    /// How many times a worker has been handed this job, this time included (from 1).
    pub attempt: u32,
    /// The only way to settle it.
    pub acker: Box<dyn Acker>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("bytes", &self.body.len())
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// The value of header `name`, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A connected broker.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Which backend this is.
    fn kind(&self) -> BrokerKind;
    /// Declare queues/streams/consumers idempotently; drift is reported, not fatal.
    async fn declare(&self, topology: &Topology) -> Result<(), BrokerError>;
    /// Publish and wait (bounded) for the broker's confirmation.
    async fn publish(&self, msg: OutMessage) -> Result<(), BrokerError>;
    /// Start consuming a source.
    async fn subscribe(
        &self,
        source: Source,
        opts: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>, BrokerError>;
    /// True while the connection is up.
    fn is_connected(&self) -> bool;
    /// Re-establish a lost connection (one try, bounded); subscriptions must be made again.
    async fn reconnect(&self) -> Result<(), BrokerError>;
    /// Messages waiting (not yet delivered) in a source, for `fleetctl queues` and tests.
    async fn depth(&self, source: &Source) -> Result<u64, BrokerError>;
    /// Jobs of `stage` waiting for a delayed retry (RabbitMQ: its `retry.<stage>.*` queues; NATS:
    /// its subjects in the retry stream; memory: its delayed messages), for `fleetctl queues`.
    async fn retrying(&self, stage: &str) -> Result<u64, BrokerError>;
    /// Remove everything declared under the topology's prefix (test cleanup).
    async fn delete_topology(&self, topology: &Topology) -> Result<(), BrokerError>;
    /// Close the connection.
    async fn close(&self);
    /// Declared objects found with another config than declared since connecting (reported,
    /// never fatal; only NATS can tell, the others answer 0).
    fn config_drift(&self) -> u64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ladder_rounds_up_and_caps() {
        let l = default_retry_ladder();
        assert_eq!(
            ladder_step(&l, Duration::from_millis(10)),
            Duration::from_secs(1)
        );
        assert_eq!(
            ladder_step(&l, Duration::from_secs(5)),
            Duration::from_secs(5)
        );
        assert_eq!(
            ladder_step(&l, Duration::from_secs(6)),
            Duration::from_secs(30)
        );
        assert_eq!(
            ladder_step(&l, Duration::from_secs(7200)),
            Duration::from_secs(600)
        );
        assert_eq!(ladder_label(Duration::from_secs(120)), "2m");
        assert_eq!(ladder_label(Duration::from_secs(30)), "30s");
        assert_eq!(ladder_label(Duration::from_millis(1500)), "1500ms");
    }
}
