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
    /// RabbitMQ retry ladder (steps a computed retry delay is rounded down to; see [`retry_ladder`]).
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

/// The ladder for a service whose retry delays never exceed `retry_max`: the default steps up to
/// `retry_max`, topped by `retry_max` itself (so a delay stretched to the maximum waits exactly
/// that long, never a longer default step).
///
/// `retry_max = 5m` gives 1s, 5s, 30s, 2m, 5m; `retry_max = 500ms` gives just 500ms.
pub fn retry_ladder(retry_max: Duration) -> Vec<Duration> {
    let mut ladder: Vec<Duration> = default_retry_ladder()
        .into_iter()
        .filter(|step| *step <= retry_max)
        .collect();
    if !retry_max.is_zero() && ladder.last() != Some(&retry_max) {
        ladder.push(retry_max);
    }
    ladder
}

/// Rounds `delay` *down* to the longest ladder step not above it, so a retry never waits longer
/// than asked (and so never longer than the top step, the service's retry maximum). A delay
/// shorter than the first step waits the first step. `ladder` is sorted ascending.
pub fn ladder_step(ladder: &[Duration], delay: Duration) -> Duration {
    ladder
        .iter()
        .copied()
        .rev()
        .find(|step| *step <= delay)
        .or(ladder.first().copied())
        .unwrap_or(delay)
}

/// Delay steps of control-message retries (the coordinator's events, submissions and dead
/// letters): RabbitMQ declares one TTL queue per step (`<p>.retry.control.<step>`); a control
/// retry waits the step its delay rounds down to. NATS and memory wait the delay itself.
pub fn control_retry_ladder() -> Vec<Duration> {
    [1, 5, 30].into_iter().map(Duration::from_secs).collect()
}

/// Broker-side backstop on deliveries of control queues (RabbitMQ `x-delivery-limit` of
/// `<p>.coordinator.events`, `<p>.submit`, `<p>.dlq.<stage>`; NATS `max_deliver` of the
/// coordinator's consumers). Above the coordinator's own parking limit, so it only acts when
/// the coordinator dies on a message over and over; RabbitMQ then dead-letters it to
/// `<p>.parked` (the NATS server stops delivering it and keeps it in its stream).
pub const CONTROL_MAX_DELIVER: u32 = 50;

/// Delivery limit of the queues nothing consumes but replay and inspection (`<p>.parked`, the
/// retry queues): explicit (RabbitMQ 4 would otherwise apply its default of 20), and high.
pub const IDLE_QUEUE_MAX_DELIVER: u32 = 1000;

/// Why a control message is parked: it goes to `<p>.parked` (RabbitMQ, memory) or the
/// `<P>_PARKED` stream (NATS) with headers saying where it came from and why, where the
/// coordinator reports it (`fleet_parked_messages`) and an operator can replay it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkInfo {
    /// Why it was given up (`attempts_exhausted`, `unsupported_version`, `decode_error`).
    pub reason: String,
    /// The last error, bounded.
    pub error: String,
    /// Deliveries made.
    pub attempts: u32,
}

impl ParkInfo {
    /// The parked copy's headers, naming `from` (the origin queue or subject).
    pub fn to_headers(&self, from: &str) -> Headers {
        use fleet_protocol::deadletter::headers as h;
        vec![
            (h::PARKED_FROM.into(), from.to_owned()),
            (h::PARKED_REASON.into(), self.reason.clone()),
            (
                h::PARKED_ERROR.into(),
                fleet_protocol::deadletter::bound_error(&self.error),
            ),
            (h::PARKED_ATTEMPTS.into(), self.attempts.to_string()),
            (
                h::PARKED_AT.into(),
                chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            ),
        ]
    }
}

/// Where a parked message came from (its `fleet-parked-from` header, or on RabbitMQ the queue
/// whose delivery limit dead-lettered it, `x-first-death-queue`).
pub fn parked_origin(headers: &Headers) -> Option<String> {
    use fleet_protocol::deadletter::headers as h;
    let get = |name: &str| {
        headers
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    get(h::PARKED_FROM).or_else(|| get("x-first-death-queue"))
}

/// Headers of a replayed copy: the original ones without the parking headers, the attempt count
/// (a replay starts afresh) and broker-set `x-*` headers.
pub fn replayed_headers(headers: &Headers) -> Headers {
    use fleet_protocol::deadletter::headers as h;
    let drop = [
        h::PARKED_FROM,
        h::PARKED_REASON,
        h::PARKED_ERROR,
        h::PARKED_AT,
        h::PARKED_ATTEMPTS,
        h::ATTEMPT,
    ];
    headers
        .iter()
        // `Nats-*`: a stale de-duplication id would make the origin stream drop the replay.
        .filter(|(k, _)| {
            !drop.contains(&k.as_str())
                && !k.starts_with("x-")
                && !k.to_ascii_lowercase().starts_with("nats-")
        })
        .cloned()
        .collect()
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

    /// Stops taking new messages while deliveries already handed out can still be settled (a
    /// drain): RabbitMQ cancels its consumer and gives back, uncounted, what it had buffered;
    /// pull-based backends need nothing. Later fetches return nothing or an error.
    async fn stop(&mut self) {}

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
    /// (RabbitMQ rounds down to its retry ladder, never past its top step).
    async fn retry(self: Box<Self>, delay: Duration) -> Result<Duration, BrokerError>;
    /// Publish the original body with `info`'s headers to the stage DLQ (confirmed), then remove it.
    async fn dead_letter(self: Box<Self>, info: &DeadLetterInfo) -> Result<(), BrokerError>;
    /// Give the message back for immediate redelivery; the delivery counts as an attempt
    /// (a job that ran but whose outcome could not be reported).
    async fn release(self: Box<Self>) -> Result<(), BrokerError>;
    /// Give the message back without counting this delivery as an attempt: its next delivery
    /// has the same attempt number (a graceful drain returning a job that never got its full
    /// chance). RabbitMQ and NATS publish a copy carrying `fleet-attempt` = attempts made
    /// before this one (confirmed), then remove the original; if the copy cannot be published,
    /// it falls back to [`Acker::release`].
    async fn release_uncounted(self: Box<Self>) -> Result<(), BrokerError> {
        self.release().await
    }
    /// Move a control message that cannot be processed to the parked queue/stream (confirmed,
    /// with [`ParkInfo`] headers), then remove it. Only the coordinator's control sources park.
    async fn park(self: Box<Self>, info: &ParkInfo) -> Result<(), BrokerError>;
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
    /// Control messages parked under the declared prefix (see [`ParkInfo`]).
    async fn parked(&self) -> Result<u64, BrokerError>;
    /// Moves up to `max` parked messages back to where they came from, with their attempt
    /// count reset; returns how many moved. A parked message whose origin is unknown stays.
    async fn replay_parked(&self, max: usize) -> Result<u64, BrokerError>;
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
    fn ladder_rounds_down_and_floors_at_the_first_step() {
        let l = default_retry_ladder();
        let s = Duration::from_secs;
        assert_eq!(ladder_step(&l, Duration::from_millis(10)), s(1));
        assert_eq!(ladder_step(&l, s(5)), s(5));
        assert_eq!(ladder_step(&l, s(6)), s(5));
        assert_eq!(ladder_step(&l, s(119)), s(30));
        assert_eq!(ladder_step(&l, s(7200)), s(600));
        assert_eq!(ladder_label(Duration::from_secs(120)), "2m");
        assert_eq!(ladder_label(Duration::from_secs(30)), "30s");
        assert_eq!(ladder_label(Duration::from_millis(1500)), "1500ms");
    }

    /// Issue 9: with `FLEET_RETRY_MAX=5m`, jobs sat in the 10-minute queue.
    #[test]
    fn ladder_never_exceeds_retry_max() {
        let s = Duration::from_secs;
        assert_eq!(retry_ladder(s(300)), [s(1), s(5), s(30), s(120), s(300)]);
        assert_eq!(retry_ladder(s(600)), default_retry_ladder());
        assert_eq!(
            retry_ladder(Duration::from_millis(500)),
            [Duration::from_millis(500)]
        );
        for max in [500u64, 1_000, 4_000, 45_000, 300_000, 600_000, 3_600_000] {
            let max = Duration::from_millis(max);
            let ladder = retry_ladder(max);
            for ms in (0..=max.as_millis() as u64 * 2).step_by(97) {
                let delay = Duration::from_millis(ms);
                let step = ladder_step(&ladder, delay);
                assert!(step <= max, "{delay:?} with max {max:?} waited {step:?}");
                assert!(
                    step <= delay || step == ladder[0],
                    "{delay:?} rounded up to {step:?}"
                );
            }
            assert_eq!(ladder_step(&ladder, max), max, "the maximum is a step");
        }
    }
}
