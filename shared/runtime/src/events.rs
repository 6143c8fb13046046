//! Event batches by group commit (DESIGN §4): when no batch is in flight the
//! pending events go at once; otherwise they collect until the in-flight
//! confirmation returns. Terminal events are confirmed to their sender;
//! progress may be dropped under pressure (counted).

use std::sync::Arc;
use std::time::Duration;

use fleet_core::{Broker, BrokerError, Destination, OutMessage};
use fleet_protocol::{Event, EventBatch, EventKind, Heartbeat, PROTOCOL_VERSION};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::telemetry::names;

/// Events queued before progress starts being dropped.
const QUEUE_CAPACITY: usize = 8192;
/// Most events in one batch message (keeps batches far below the message size limit).
const MAX_BATCH: usize = 512;
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

/// Starts the batcher task for one worker; it ends when every sink is dropped.
pub fn spawn(broker: Arc<dyn Broker>, stage: &str, worker_id: &str) -> (EventSink, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
    let task = tokio::spawn(batcher(broker, stage.to_owned(), worker_id.to_owned(), rx));
    (EventSink { tx }, task)
}

async fn batcher(
    broker: Arc<dyn Broker>,
    stage: String,
    worker_id: String,
    mut rx: mpsc::Receiver<Item>,
) {
    while let Some(first) = rx.recv().await {
        // Group commit: everything that queued while the last batch was in flight goes now.
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
            worker_id: worker_id.clone(),
            stage: stage.clone(),
            events,
            heartbeat,
        };
        let result = publish_with_retry(&*broker, &stage, &batch).await;
        if result.is_ok() {
            metrics::counter!(names::EVENT_BATCHES, "stage" => stage.clone()).increment(1);
        } else {
            let lost = batch
                .events
                .iter()
                .filter(|e| !e.kind.is_terminal())
                .count();
            metrics::counter!(names::EVENTS_DROPPED, "kind" => "unconfirmed")
                .increment(lost as u64);
        }
        for w in waiters {
            let _ = w.send(result.clone());
        }
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

    #[tokio::test]
    async fn confirmed_events_arrive_in_batches() {
        use fleet_core::{MemoryBroker, Source, SubscribeOptions};
        let broker = MemoryBroker::new();
        let (sink, task) = spawn(Arc::new(broker.clone()), "s", "w");
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
        drop(sink);
        task.await.unwrap();
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
}
