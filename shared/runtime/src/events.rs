//! Event batches by group commit (DESIGN §4): while fewer than [`IN_FLIGHT`]
//! batches are in flight the pending events go at once; otherwise they collect
//! until a confirmation returns. Terminal events are confirmed to their sender;
//! progress may be dropped under pressure (counted).
//!
//! A queued event is a [`JobEvent`]: it shares its job (no copies of the ids) and takes stage
//! and worker id from the batch, so building one allocates nothing; the batch is serialized
//! straight into the wire form of [`EventBatch`].

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use fleet_core::{Broker, BrokerError, Destination, OutMessage, Topology};
use fleet_protocol::{Degradation, EventKind, Heartbeat, JobEnvelope, PROTOCOL_VERSION};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::supervise::Supervisor;
use crate::telemetry::names;

/// Events queued before progress starts being dropped.
const QUEUE_CAPACITY: usize = 8192;
/// Most events in one batch message (keeps batches far below the message size limit).
const MAX_BATCH: usize = 512;
/// Batches in flight at once (DESIGN §4: a small K); more events wait for a confirmation.
const IN_FLIGHT: usize = 3;
/// How long a batch is retried before its waiters are told it failed.
const PUBLISH_GIVE_UP: Duration = Duration::from_secs(30);

type Confirm = oneshot::Sender<Result<(), BrokerError>>;

/// One job event as queued: a [`fleet_protocol::Event`] whose stage and worker id are the
/// batch's (every event of a worker has the worker's own) and whose ids are read from the
/// shared job when the batch is serialized.
#[derive(Debug, Clone)]
pub struct JobEvent {
    /// The job the event is about.
    pub job: Arc<JobEnvelope>,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Sequence within the attempt, from 0.
    pub seq: u32,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// What happened.
    pub kind: EventKind,
    /// On `succeeded` only: the attempt succeeded with less than the full result.
    pub degraded: Option<Degradation>,
}

enum Item {
    Event(JobEvent, Option<Confirm>),
    Heartbeat(Heartbeat),
}

/// The sending side; cheap to clone.
#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::Sender<Item>,
}

impl EventSink {
    /// Queues a non-terminal event; drops it (counted) when the queue is full.
    pub fn emit(&self, event: JobEvent) {
        let kind = match event.kind {
            EventKind::Started => "started",
            EventKind::Retrying { .. } => "retrying",
            _ => "progress",
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(Item::Event(event, None))
        {
            metrics::counter!(names::EVENTS_DROPPED, "kind" => kind).increment(1);
        }
    }

    /// Queues a heartbeat; a full queue drops it (the next one follows soon).
    pub fn heartbeat(&self, hb: Heartbeat) {
        if self.tx.try_send(Item::Heartbeat(hb)).is_err() {
            metrics::counter!(names::EVENTS_DROPPED, "kind" => "heartbeat").increment(1);
        }
    }

    /// Sends an event and waits (at most `wait`) until the batch carrying it is confirmed.
    pub async fn emit_confirmed(&self, event: JobEvent, wait: Duration) -> Result<(), BrokerError> {
        let (tx, rx) = oneshot::channel();
        let sent = tokio::time::timeout(wait, self.tx.send(Item::Event(event, Some(tx)))).await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(BrokerError::ConnectionLost("event sender stopped".into())),
            Err(_) => return Err(BrokerError::Timeout(wait)),
        }
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(BrokerError::ConnectionLost("event sender stopped".into())),
            Err(_) => Err(BrokerError::Timeout(wait)),
        }
    }
}

/// Starts the batcher for one worker as supervised task `events`; it ends when every sink is
/// dropped (which only shutdown does: the worker keeps one until it has drained).
///
/// `topology` is declared again when the broker refuses a batch (e.g. someone deleted the events
/// exchange), so a worker repairs what it can instead of stalling on unconfirmable events.
pub fn spawn(
    sup: &mut Supervisor,
    broker: Arc<dyn Broker>,
    topology: Topology,
    stage: &str,
    worker_id: &str,
) -> EventSink {
    let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
    let task = batcher(broker, topology, stage.to_owned(), worker_id.to_owned(), rx);
    sup.spawn("events", async move {
        task.await;
        Ok(())
    });
    EventSink { tx }
}

async fn batcher(
    broker: Arc<dyn Broker>,
    topology: Topology,
    stage: String,
    worker_id: String,
    mut rx: mpsc::Receiver<Item>,
) {
    // Registered once: a confirmed batch then costs one atomic add.
    let confirmed = metrics::counter!(names::EVENT_BATCHES, "stage" => stage.clone());
    let mut in_flight = FuturesUnordered::new();
    let mut open = true;
    while open || !in_flight.is_empty() {
        tokio::select! {
            // A confirmation frees a place: what queued meanwhile goes in the next batch.
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            first = rx.recv(), if open && in_flight.len() < IN_FLIGHT => match first {
                Some(first) => {
                    let batch = collect(first, &mut rx);
                    let to = Origin { stage: &stage, worker_id: &worker_id, confirmed: &confirmed };
                    in_flight.push(send(&*broker, &topology, to, batch));
                }
                None => open = false,
            },
        }
    }
}

/// The events of one batch message, its heartbeat, and who waits for its confirmation.
struct Batch {
    events: Vec<JobEvent>,
    heartbeat: Option<Heartbeat>,
    waiters: Vec<Confirm>,
}

/// Group commit: `first` and everything that queued behind it, up to [`MAX_BATCH`].
fn collect(first: Item, rx: &mut mpsc::Receiver<Item>) -> Batch {
    let mut items = vec![first];
    while items.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(item) => items.push(item),
            Err(_) => break,
        }
    }
    let mut events = Vec::with_capacity(items.len());
    let mut waiters = Vec::new();
    let mut heartbeat = None;
    for item in items {
        match item {
            Item::Event(e, w) => {
                events.push(e);
                waiters.extend(w);
            }
            Item::Heartbeat(hb) => heartbeat = Some(hb),
        }
    }
    fold_started(&mut events);
    Batch {
        events,
        heartbeat,
        waiters,
    }
}

/// The wire form of [`fleet_protocol::EventBatch`], borrowed from a [`Batch`].
#[derive(Serialize)]
struct WireBatch<'a> {
    v: u32,
    worker_id: &'a str,
    stage: &'a str,
    events: WireEvents<'a>,
    heartbeat: Option<&'a Heartbeat>,
}

/// The events of a [`WireBatch`], each in the wire form of [`fleet_protocol::Event`].
struct WireEvents<'a> {
    events: &'a [JobEvent],
    worker_id: &'a str,
    stage: &'a str,
}

/// The wire form of [`fleet_protocol::Event`] (same fields, same order, same attributes).
#[derive(Serialize)]
struct WireEvent<'a> {
    job_id: &'a str,
    pipeline_id: &'a str,
    stage: &'a str,
    attempt: u32,
    seq: u32,
    worker_id: &'a str,
    at: &'a DateTime<Utc>,
    #[serde(flatten)]
    kind: &'a EventKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    degraded: Option<&'a Degradation>,
}

impl Serialize for WireEvents<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.events.iter().map(|e| WireEvent {
            job_id: &e.job.job_id,
            pipeline_id: &e.job.pipeline_id,
            stage: self.stage,
            attempt: e.attempt,
            seq: e.seq,
            worker_id: self.worker_id,
            at: &e.at,
            kind: &e.kind,
            degraded: e.degraded.as_ref(),
        }))
    }
}

/// The batch message's body.
fn encode(batch: &Batch, stage: &str, worker_id: &str) -> Vec<u8> {
    let wire = WireBatch {
        v: PROTOCOL_VERSION,
        worker_id,
        stage,
        events: WireEvents {
            events: &batch.events,
            worker_id,
            stage,
        },
        heartbeat: batch.heartbeat.as_ref(),
    };
    // Strings, numbers and timestamps cannot fail to serialize.
    serde_json::to_vec(&wire).unwrap_or_default()
}

/// Who sends a batch, and the counter of its confirmed batches.
#[derive(Clone, Copy)]
struct Origin<'a> {
    stage: &'a str,
    worker_id: &'a str,
    confirmed: &'a metrics::Counter,
}

/// Publishes one batch (retried, bounded) and tells its waiters how it went.
async fn send(broker: &dyn Broker, topology: &Topology, to: Origin<'_>, batch: Batch) {
    let body = encode(&batch, to.stage, to.worker_id);
    let result = publish_with_retry(broker, topology, to.stage, body).await;
    if result.is_ok() {
        to.confirmed.increment(1);
    } else {
        let lost = batch
            .events
            .iter()
            .filter(|e| !e.kind.is_terminal())
            .count();
        metrics::counter!(names::EVENTS_DROPPED, "kind" => "unconfirmed").increment(lost as u64);
    }
    for w in batch.waiters {
        let _ = w.send(result.clone());
    }
}

/// A job's `started` folds into its `succeeded` when both are in one batch.
fn fold_started(events: &mut Vec<JobEvent>) {
    // Keys borrow from the events (no id copies); which to keep is decided before removing.
    let succeeded: HashSet<(&str, u32)> = events
        .iter()
        .filter(|e| e.kind == EventKind::Succeeded)
        .map(|e| (e.job.job_id.as_str(), e.attempt))
        .collect();
    if succeeded.is_empty() {
        return;
    }
    let keep: Vec<bool> = events
        .iter()
        .map(|e| {
            e.kind != EventKind::Started || !succeeded.contains(&(e.job.job_id.as_str(), e.attempt))
        })
        .collect();
    drop(succeeded);
    let mut keep = keep.into_iter();
    events.retain(|_| keep.next().unwrap_or(true));
}

async fn publish_with_retry(
    broker: &dyn Broker,
    topology: &Topology,
    stage: &str,
    body: Vec<u8>,
) -> Result<(), BrokerError> {
    let body = bytes::Bytes::from(body);
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(100);
    loop {
        let msg = OutMessage::new(
            Destination::Events {
                stage: stage.to_owned(),
            },
            body.clone(),
        );
        match broker.publish(msg).await {
            Ok(()) => return Ok(()),
            Err(e) if started.elapsed() >= PUBLISH_GIVE_UP => {
                tracing::error!(error = %e, "event batch could not be published; its senders are told");
                return Err(e);
            }
            Err(e) => {
                tracing::warn!(error = %e, "event batch publish failed; retrying");
                if !e.is_connection() {
                    // Refused, not lost: the events destination may be gone. Declaring is
                    // idempotent, so put the topology back before the next try.
                    if let Err(d) = broker.declare(topology).await {
                        tracing::warn!(error = %d, "redeclaring the topology for events failed");
                    }
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    use fleet_protocol::{DegradationKind, Event, EventBatch, InFlightJob};

    fn ev(job: &str, kind: EventKind) -> JobEvent {
        let mut envelope = JobEnvelope::new("p", "i", "s", serde_json::Value::Null);
        envelope.job_id = job.into();
        JobEvent {
            job: Arc::new(envelope),
            attempt: 1,
            seq: 0,
            at: Utc::now(),
            kind,
            degraded: None,
        }
    }

    /// The same event as the protocol type, as the coordinator decodes it.
    fn full(e: &JobEvent, stage: &str, worker_id: &str) -> Event {
        Event {
            job_id: e.job.job_id.clone(),
            pipeline_id: e.job.pipeline_id.clone(),
            stage: stage.into(),
            attempt: e.attempt,
            seq: e.seq,
            worker_id: worker_id.into(),
            at: e.at,
            kind: e.kind.clone(),
            degraded: e.degraded.clone(),
        }
    }

    #[test]
    fn the_wire_form_is_the_protocol_event_batch() {
        let mut degraded = ev("a", EventKind::Succeeded);
        degraded.degraded = Some(Degradation::new(DegradationKind::StageSkipped, "x"));
        degraded.seq = 3;
        let mut progress = ev(
            "b",
            EventKind::Progress {
                done: 1,
                total: Some(2),
                note: "half".into(),
            },
        );
        progress.attempt = 2;
        let events = vec![
            degraded,
            progress,
            ev("c", EventKind::Started),
            ev(
                "c",
                EventKind::DeadLettered {
                    reason: fleet_protocol::DeadLetterReason::AttemptsExhausted,
                    error: "boom".into(),
                },
            ),
        ];
        let heartbeat = Heartbeat {
            worker_id: "w".into(),
            stage: "s".into(),
            at: Utc::now(),
            slots: 4,
            in_flight: vec![InFlightJob {
                job_id: "a".into(),
                pipeline_id: "p".into(),
                attempt: 1,
                started_at: Utc::now(),
                last_progress_at: Utc::now(),
            }],
            paused: None,
        };
        for heartbeat in [None, Some(heartbeat)] {
            let batch = Batch {
                events: events.clone(),
                heartbeat: heartbeat.clone(),
                waiters: Vec::new(),
            };
            let expected = EventBatch {
                v: PROTOCOL_VERSION,
                worker_id: "w".into(),
                stage: "s".into(),
                events: events.iter().map(|e| full(e, "s", "w")).collect(),
                heartbeat,
            };
            let body = encode(&batch, "s", "w");
            assert_eq!(
                serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
                serde_json::to_value(&expected).unwrap(),
                "same JSON as the protocol type"
            );
            assert_eq!(
                serde_json::from_slice::<EventBatch>(&body).unwrap(),
                expected
            );
        }
    }

    #[test]
    fn started_folds_into_succeeded_only_for_the_same_attempt() {
        let mut events = vec![
            ev("a", EventKind::Started),
            ev("b", EventKind::Started),
            ev("a", EventKind::Succeeded),
        ];
        fold_started(&mut events);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].job.job_id, "b");
        assert_eq!(events[1].kind, EventKind::Succeeded);
    }

    fn supervisor() -> (Supervisor, tokio_util::sync::CancellationToken) {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let health = Arc::new(crate::telemetry::Health::default());
        (Supervisor::new(health, &shutdown, None), shutdown)
    }

    #[tokio::test]
    async fn confirmed_events_arrive_in_batches() {
        use fleet_core::{MemoryBroker, Source, SubscribeOptions};
        let broker = MemoryBroker::new();
        let topology = Topology::new(fleet_protocol::Names::new("t"), &["s"]);
        let (mut sup, shutdown) = supervisor();
        let sink = spawn(&mut sup, Arc::new(broker.clone()), topology, "s", "w");
        let mut waits = Vec::new();
        for i in 0..50 {
            let sink = sink.clone();
            waits.push(tokio::spawn(async move {
                sink.emit_confirmed(
                    ev(&format!("j{i}"), EventKind::Succeeded),
                    Duration::from_secs(5),
                )
                .await
            }));
        }
        for w in waits {
            w.await.unwrap().unwrap();
        }
        shutdown.cancel();
        drop(sink);
        sup.finish(Duration::from_secs(5)).await.unwrap();
        let mut sub = broker
            .subscribe(Source::Events, SubscribeOptions { prefetch: 100 })
            .await
            .unwrap();
        let got = sub.fetch(100, Duration::from_millis(10)).await.unwrap();
        let total: usize = got
            .iter()
            .map(|d| {
                serde_json::from_slice::<EventBatch>(&d.body)
                    .unwrap()
                    .events
                    .len()
            })
            .sum();
        assert_eq!(total, 50);
        assert!(got.len() <= 50);
    }

    /// The memory broker, except that event publishes are refused until `declare` runs again:
    /// what a worker sees after someone deleted the events exchange on RabbitMQ.
    struct EventsGone {
        inner: fleet_core::MemoryBroker,
        declared: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl Broker for EventsGone {
        fn kind(&self) -> fleet_core::BrokerKind {
            self.inner.kind()
        }
        async fn declare(&self, t: &Topology) -> Result<(), BrokerError> {
            self.declared
                .store(true, std::sync::atomic::Ordering::SeqCst);
            self.inner.declare(t).await
        }
        async fn publish(&self, msg: OutMessage) -> Result<(), BrokerError> {
            let refused = matches!(msg.dest, Destination::Events { .. })
                && !self.declared.load(std::sync::atomic::Ordering::SeqCst);
            if refused {
                return Err(BrokerError::Rejected("NOT_FOUND - no exchange".into()));
            }
            self.inner.publish(msg).await
        }
        async fn subscribe(
            &self,
            source: fleet_core::Source,
            opts: fleet_core::SubscribeOptions,
        ) -> Result<Box<dyn fleet_core::Subscription>, BrokerError> {
            self.inner.subscribe(source, opts).await
        }
        fn is_connected(&self) -> bool {
            self.inner.is_connected()
        }
        async fn reconnect(&self) -> Result<(), BrokerError> {
            self.inner.reconnect().await
        }
        async fn depth(&self, source: &fleet_core::Source) -> Result<u64, BrokerError> {
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

    #[tokio::test]
    async fn a_refused_batch_redeclares_the_topology_and_goes_through() {
        let broker = Arc::new(EventsGone {
            inner: fleet_core::MemoryBroker::new(),
            declared: std::sync::atomic::AtomicBool::new(false),
        });
        let topology = Topology::new(fleet_protocol::Names::new("t"), &["s"]);
        let (mut sup, shutdown) = supervisor();
        let sink = spawn(&mut sup, broker.clone(), topology, "s", "w");
        sink.emit_confirmed(ev("j", EventKind::Succeeded), Duration::from_secs(10))
            .await
            .expect("confirmed after the redeclare");
        assert!(broker.declared.load(std::sync::atomic::Ordering::SeqCst));
        shutdown.cancel();
        drop(sink);
        sup.finish(Duration::from_secs(5)).await.unwrap();
    }
}
