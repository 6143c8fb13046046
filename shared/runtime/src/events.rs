//! Event batches by group commit (DESIGN §4): while fewer than [`IN_FLIGHT`]
//! batches are in flight the pending events go at once; otherwise they collect
//! until a confirmation returns. Terminal events are confirmed to their sender;
//! progress may be dropped under pressure (counted).

use std::sync::Arc;
use std::time::Duration;

use fleet_core::{Broker, BrokerError, Destination, OutMessage, Topology};
use fleet_protocol::{Event, EventBatch, EventKind, Heartbeat, PROTOCOL_VERSION};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
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

enum Item {
    Event(Event, Option<Confirm>),
    Heartbeat(Heartbeat),
}

/// The sending side; cheap to clone.
#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::Sender<Item>,
}

impl EventSink {
    /// Queues a non-terminal event; drops it (counted) when the queue is full.
    pub fn emit(&self, event: Event) {
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
    pub async fn emit_confirmed(&self, event: Event, wait: Duration) -> Result<(), BrokerError> {
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
    let mut in_flight = FuturesUnordered::new();
    let mut open = true;
    while open || !in_flight.is_empty() {
        tokio::select! {
            // A confirmation frees a place: what queued meanwhile goes in the next batch.
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            first = rx.recv(), if open && in_flight.len() < IN_FLIGHT => match first {
                Some(first) => {
                    let batch = collect(first, &mut rx, &stage, &worker_id);
                    in_flight.push(send(&*broker, &topology, &stage, batch));
                }
                None => open = false,
            },
        }
    }
}

/// Group commit: `first` and everything that queued behind it, up to [`MAX_BATCH`].
fn collect(
    first: Item,
    rx: &mut mpsc::Receiver<Item>,
    stage: &str,
    worker_id: &str,
) -> (EventBatch, Vec<Confirm>) {
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
    let batch = EventBatch {
        v: PROTOCOL_VERSION,
        worker_id: worker_id.to_owned(),
        stage: stage.to_owned(),
        events,
        heartbeat,
    };
    (batch, waiters)
}

/// Publishes one batch (retried, bounded) and tells its waiters how it went.
async fn send(
    broker: &dyn Broker,
    topology: &Topology,
    stage: &str,
    (batch, waiters): (EventBatch, Vec<Confirm>),
) {
    let result = publish_with_retry(broker, topology, stage, &batch).await;
    if result.is_ok() {
        metrics::counter!(names::EVENT_BATCHES, "stage" => stage.to_owned()).increment(1);
    } else {
        let lost = batch
            .events
            .iter()
            .filter(|e| !e.kind.is_terminal())
            .count();
        metrics::counter!(names::EVENTS_DROPPED, "kind" => "unconfirmed").increment(lost as u64);
    }
    for w in waiters {
        let _ = w.send(result.clone());
    }
}

/// A job's `started` folds into its `succeeded` when both are in one batch.
fn fold_started(events: &mut Vec<Event>) {
    let succeeded: std::collections::HashSet<(String, u32)> = events
        .iter()
        .filter(|e| e.kind == EventKind::Succeeded)
        .map(|e| (e.job_id.clone(), e.attempt))
        .collect();
    if !succeeded.is_empty() {
        events.retain(|e| {
            e.kind != EventKind::Started || !succeeded.contains(&(e.job_id.clone(), e.attempt))
        });
    }
}

async fn publish_with_retry(
    broker: &dyn Broker,
    topology: &Topology,
    stage: &str,
    batch: &EventBatch,
) -> Result<(), BrokerError> {
    let body = serde_json::to_vec(batch).unwrap_or_default();
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

    fn ev(job: &str, kind: EventKind) -> Event {
        Event {
            job_id: job.into(),
            pipeline_id: "p".into(),
            stage: "s".into(),
            attempt: 1,
            seq: 0,
            worker_id: "w".into(),
            at: Utc::now(),
            kind,
            degraded: None,
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
        assert_eq!(events[0].job_id, "b");
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
