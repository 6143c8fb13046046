//! `memory://`: an in-process broker with the same visibility-timeout,
//! delayed-retry, DLQ and redelivery semantics as the real ones.
//!
//! It uses tokio's clock, so tests under paused time are deterministic. A
//! dropped [`Subscription`] returns its unsettled messages (like a closed
//! connection), and [`MemoryBroker::set_connected`] simulates an outage.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fleet_protocol::{DeadLetterInfo, Names};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::broker::{
    Acker, Broker, BrokerKind, CONTROL_MAX_DELIVER, Delivery, Destination, Headers, OutMessage,
    ParkInfo, Source, SubscribeOptions, Subscription, Topology,
};
use crate::error::BrokerError;

#[derive(Clone)]
struct Message {
    id: u64,
    body: Bytes,
    headers: Headers,
    delivered: u32,
}

struct Leased {
    msg: Message,
    until: Instant,
    sub: u64,
}

#[derive(Default)]
struct QueueState {
    ready: VecDeque<Message>,
    delayed: Vec<(Instant, Message)>,
    leased: HashMap<u64, Leased>,
}

struct Queue {
    name: String,
    state: Mutex<QueueState>,
    notify: Notify,
}

struct Inner {
    names: Mutex<Names>,
    queues: Mutex<HashMap<String, Arc<Queue>>>,
    /// The last control message per pipeline id, replayed to each new subscriber (like NATS).
    kept_cancels: Mutex<Vec<(String, Bytes)>>,
    control_subs: Mutex<Vec<Arc<Queue>>>,
    ack_wait: Mutex<Duration>,
    max_deliver: Mutex<u32>,
    connected: AtomicBool,
    next_id: AtomicU64,
}

/// The in-process broker. Cloning shares the same queues.
#[derive(Clone)]
pub struct MemoryBroker {
    inner: Arc<Inner>,
}

impl Default for MemoryBroker {
    fn default() -> Self {
        MemoryBroker::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these short, non-async locks leaves plain data behind.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl MemoryBroker {
    /// A new, empty broker with a 30 s ack wait.
    pub fn new() -> MemoryBroker {
        MemoryBroker {
            inner: Arc::new(Inner {
                names: Mutex::new(Names::default()),
                queues: Mutex::new(HashMap::new()),
                kept_cancels: Mutex::new(Vec::new()),
                control_subs: Mutex::new(Vec::new()),
                ack_wait: Mutex::new(Duration::from_secs(30)),
                max_deliver: Mutex::new(u32::MAX),
                connected: AtomicBool::new(true),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// Simulates losing (false) or regaining (true) the connection.
    pub fn set_connected(&self, up: bool) {
        self.inner.connected.store(up, Ordering::SeqCst);
        for q in lock(&self.inner.queues).values() {
            q.notify.notify_waiters();
        }
    }

    /// Messages published to finalized-pipeline subjects, for tests.
    pub fn queue_len(&self, name: &str) -> usize {
        let q = self.queue(name);
        let s = lock(&q.state);
        s.ready.len() + s.delayed.len() + s.leased.len()
    }

    fn queue(&self, name: &str) -> Arc<Queue> {
        lock(&self.inner.queues)
            .entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(Queue {
                    name: name.to_owned(),
                    state: Mutex::new(QueueState::default()),
                    notify: Notify::new(),
                })
            })
            .clone()
    }

    fn queue_for_dest(&self, dest: &Destination) -> Option<String> {
        let names = lock(&self.inner.names).clone();
        match dest {
            Destination::Job { stage } => Some(names.jobs(stage)),
            Destination::Events { .. } => Some(names.coordinator_events_queue()),
            Destination::DeadLetter { stage } => Some(names.dlq(stage)),
            Destination::Submit => Some(names.submit()),
            Destination::Pipeline { .. } => Some(names.pipelines_exchange()),
            Destination::Control { .. } => None,
        }
    }

    fn queue_for_source(&self, source: &Source) -> String {
        let names = lock(&self.inner.names).clone();
        match source {
            Source::Jobs { stage } => names.jobs(stage),
            Source::Events => names.coordinator_events_queue(),
            Source::DeadLetters { stage } => names.dlq(stage),
            Source::Submit => names.submit(),
            Source::Control => names.control_exchange(),
        }
    }

    fn push(&self, queue: &Arc<Queue>, body: Bytes, headers: Headers) {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&queue.state).ready.push_back(Message {
            id,
            body,
            headers,
            delivered: 0,
        });
        queue.notify.notify_waiters();
    }

    fn check_connected(&self) -> Result<(), BrokerError> {
        if self.inner.connected.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(BrokerError::ConnectionLost(
                "memory broker disconnected".into(),
            ))
        }
    }

    /// The backstop on deliveries of `q`: the topology's for job queues, [`CONTROL_MAX_DELIVER`]
    /// for the coordinator's queues, none for per-subscriber control queues.
    fn max_deliver_of(&self, q: &Queue) -> u32 {
        if q.name.starts_with("control-sub-") {
            u32::MAX
        } else if self.is_jobs_queue(&q.name) {
            *lock(&self.inner.max_deliver)
        } else {
            CONTROL_MAX_DELIVER
        }
    }

    fn is_jobs_queue(&self, name: &str) -> bool {
        let prefix = lock(&self.inner.names).jobs("");
        name.starts_with(&prefix)
    }

    /// Puts a copy of `msg` (with `info`'s headers) into the parked queue.
    fn park_message(&self, from: &Queue, msg: Message, info: &ParkInfo) {
        let parked = self.queue(&lock(&self.inner.names).parked());
        let mut headers = msg.headers;
        headers.extend(info.to_headers(&from.name));
        self.push(&parked, msg.body, headers);
    }

    /// Moves due delayed messages and expired leases back to ready.
    fn promote(&self, q: &Queue, s: &mut QueueState, now: Instant) {
        let (due, later): (Vec<_>, Vec<_>) = s.delayed.drain(..).partition(|(at, _)| *at <= now);
        s.delayed = later;
        s.ready.extend(due.into_iter().map(|(_, m)| m));
        let expired: Vec<u64> = s
            .leased
            .iter()
            .filter(|(_, l)| l.until <= now)
            .map(|(id, _)| *id)
            .collect();
        let max_deliver = self.max_deliver_of(q);
        for id in expired {
            if let Some(l) = s.leased.remove(&id) {
                self.requeue_or_backstop(q, s, l.msg, max_deliver);
            }
        }
    }

    /// Returns a message for redelivery, or dead-letters it when the broker backstop is hit.
    fn requeue_or_backstop(&self, q: &Queue, s: &mut QueueState, msg: Message, max_deliver: u32) {
        if msg.delivered >= max_deliver && !self.is_jobs_queue(&q.name) {
            // Like RabbitMQ's delivery limit on a control queue: dead-lettered to the parked queue.
            let info = ParkInfo {
                reason: "delivery_limit".into(),
                error: "the broker's delivery limit was reached".into(),
                attempts: msg.delivered,
            };
            self.park_message(q, msg, &info);
        } else if msg.delivered >= max_deliver {
            let stage = q.name.rsplit('.').next().unwrap_or_default().to_owned();
            let dlq = self.queue(&lock(&self.inner.names).dlq(&stage));
            let mut headers = msg.headers.clone();
            headers.push(("x-backstop".into(), "delivery-limit".into()));
            self.push(&dlq, msg.body, headers);
        } else {
            s.ready.push_front(msg);
        }
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    fn kind(&self) -> BrokerKind {
        BrokerKind::Memory
    }

    async fn declare(&self, topology: &Topology) -> Result<(), BrokerError> {
        self.check_connected()?;
        *lock(&self.inner.names) = topology.names.clone();
        *lock(&self.inner.ack_wait) = topology.ack_wait;
        *lock(&self.inner.max_deliver) = topology.max_deliver;
        for stage in &topology.stages {
            self.queue(&topology.names.jobs(stage));
            self.queue(&topology.names.dlq(stage));
        }
        Ok(())
    }

    async fn publish(&self, msg: OutMessage) -> Result<(), BrokerError> {
        self.check_connected()?;
        match self.queue_for_dest(&msg.dest) {
            Some(name) => {
                let q = self.queue(&name);
                self.push(&q, msg.body, msg.headers);
            }
            None => {
                let Destination::Control { pipeline_id } = &msg.dest else {
                    return Ok(());
                };
                let mut kept = lock(&self.inner.kept_cancels);
                // One message per subject, the last one wins (NATS `max_messages_per_subject: 1`).
                kept.retain(|(pid, _)| pid != pipeline_id);
                kept.push((pipeline_id.clone(), msg.body.clone()));
                drop(kept);
                let subs = lock(&self.inner.control_subs).clone();
                for q in subs {
                    self.push(&q, msg.body.clone(), msg.headers.clone());
                }
            }
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        source: Source,
        _opts: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>, BrokerError> {
        self.check_connected()?;
        let queue = if source == Source::Control {
            // Each control subscriber gets its own queue, pre-filled with the kept cancellations.
            let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
            let q = self.queue(&format!("control-sub-{id}"));
            for (_, body) in lock(&self.inner.kept_cancels).clone() {
                self.push(&q, body, Vec::new());
            }
            lock(&self.inner.control_subs).push(q.clone());
            q
        } else {
            self.queue(&self.queue_for_source(&source))
        };
        Ok(Box::new(MemorySubscription {
            broker: self.clone(),
            queue,
            sub: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
        }))
    }

    fn is_connected(&self) -> bool {
        self.inner.connected.load(Ordering::SeqCst)
    }

    async fn reconnect(&self) -> Result<(), BrokerError> {
        self.check_connected()
    }

    async fn depth(&self, source: &Source) -> Result<u64, BrokerError> {
        if *source == Source::Control {
            // Like NATS: the number of kept cancellations a new subscriber is replayed.
            return Ok(lock(&self.inner.kept_cancels).len() as u64);
        }
        let q = self.queue(&self.queue_for_source(source));
        let s = lock(&q.state);
        Ok((s.ready.len() + s.delayed.len()) as u64)
    }

    async fn retrying(&self, stage: &str) -> Result<u64, BrokerError> {
        let q = self.queue(&self.queue_for_source(&Source::Jobs {
            stage: stage.to_owned(),
        }));
        let s = lock(&q.state);
        Ok(s.delayed.len() as u64)
    }

    async fn parked(&self) -> Result<u64, BrokerError> {
        self.check_connected()?;
        let q = self.queue(&lock(&self.inner.names).parked());
        let s = lock(&q.state);
        Ok(s.ready.len() as u64)
    }

    async fn replay_parked(&self, max: usize) -> Result<u64, BrokerError> {
        self.check_connected()?;
        let parked = self.queue(&lock(&self.inner.names).parked());
        let mut moved = 0;
        while (moved as usize) < max {
            let Some(msg) = lock(&parked.state).ready.pop_front() else {
                break;
            };
            let Some(from) = crate::broker::parked_origin(&msg.headers) else {
                lock(&parked.state).ready.push_front(msg);
                return Err(BrokerError::Rejected(
                    "a parked message has no fleet-parked-from header: inspect it and move it \
                     by hand"
                        .into(),
                ));
            };
            let origin = self.queue(&from);
            self.push(
                &origin,
                msg.body,
                crate::broker::replayed_headers(&msg.headers),
            );
            moved += 1;
        }
        Ok(moved)
    }

    async fn delete_topology(&self, _topology: &Topology) -> Result<(), BrokerError> {
        lock(&self.inner.queues).clear();
        Ok(())
    }

    async fn close(&self) {}
}

struct MemorySubscription {
    broker: MemoryBroker,
    queue: Arc<Queue>,
    sub: u64,
}

impl Drop for MemorySubscription {
    fn drop(&mut self) {
        // Like a closed connection: everything this subscriber held goes back.
        let mut s = lock(&self.queue.state);
        let held: Vec<u64> = s
            .leased
            .iter()
            .filter(|(_, l)| l.sub == self.sub)
            .map(|(id, _)| *id)
            .collect();
        let max_deliver = self.broker.max_deliver_of(&self.queue);
        for id in held {
            if let Some(l) = s.leased.remove(&id) {
                self.broker
                    .requeue_or_backstop(&self.queue, &mut s, l.msg, max_deliver);
            }
        }
        drop(s);
        self.queue.notify.notify_waiters();
    }
}

#[async_trait]
impl Subscription for MemorySubscription {
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BrokerError> {
        let deadline = Instant::now() + wait;
        loop {
            self.broker.check_connected()?;
            // Register for wake-ups before looking, so a push in between is not missed.
            let notified = self.queue.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let ack_wait = *lock(&self.broker.inner.ack_wait);
            let now = Instant::now();
            let (out, next_due) = {
                let mut s = lock(&self.queue.state);
                self.broker.promote(&self.queue, &mut s, now);
                let mut out = Vec::new();
                while out.len() < max {
                    let Some(mut msg) = s.ready.pop_front() else {
                        break;
                    };
                    msg.delivered += 1;
                    let until = now + ack_wait;
                    s.leased.insert(
                        msg.id,
                        Leased {
                            msg: msg.clone(),
                            until,
                            sub: self.sub,
                        },
                    );
                    out.push(Delivery {
                        body: msg.body.clone(),
                        headers: msg.headers.clone(),
                        attempt: msg.delivered,
                        acker: Box::new(MemoryAcker {
                            broker: self.broker.clone(),
                            queue: self.queue.clone(),
                            id: msg.id,
                            delivered: msg.delivered,
                        }),
                    });
                }
                let next_due = s
                    .delayed
                    .iter()
                    .map(|(at, _)| *at)
                    .chain(s.leased.values().map(|l| l.until))
                    .min();
                (out, next_due)
            };
            if !out.is_empty() || now >= deadline || max == 0 {
                return Ok(out);
            }
            let wake = next_due.map_or(deadline, |d| d.min(deadline));
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }
}

struct MemoryAcker {
    broker: MemoryBroker,
    queue: Arc<Queue>,
    id: u64,
    delivered: u32,
}

impl MemoryAcker {
    /// Takes the message back from the lease, if this delivery still holds it.
    fn take(&self) -> Result<Message, BrokerError> {
        self.broker.check_connected()?;
        let mut s = lock(&self.queue.state);
        match s.leased.get(&self.id) {
            Some(l) if l.msg.delivered == self.delivered => {}
            _ => {
                return Err(BrokerError::ConnectionLost(
                    "lease lost: message was redelivered".into(),
                ));
            }
        }
        s.leased
            .remove(&self.id)
            .map(|l| l.msg)
            .ok_or_else(|| BrokerError::ConnectionLost("lease lost".into()))
    }
}

#[async_trait]
impl Acker for MemoryAcker {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        self.take().map(drop)
    }

    async fn retry(self: Box<Self>, delay: Duration) -> Result<Duration, BrokerError> {
        let msg = self.take()?;
        lock(&self.queue.state)
            .delayed
            .push((Instant::now() + delay, msg));
        self.queue.notify.notify_waiters();
        Ok(delay)
    }

    async fn dead_letter(self: Box<Self>, info: &DeadLetterInfo) -> Result<(), BrokerError> {
        let msg = self.take()?;
        let dlq = self
            .broker
            .queue(&lock(&self.broker.inner.names).dlq(&info.stage));
        self.broker.push(&dlq, msg.body, info.to_headers());
        Ok(())
    }

    async fn release(self: Box<Self>) -> Result<(), BrokerError> {
        let msg = self.take()?;
        lock(&self.queue.state).ready.push_front(msg);
        self.queue.notify.notify_waiters();
        Ok(())
    }

    async fn release_uncounted(self: Box<Self>) -> Result<(), BrokerError> {
        let mut msg = self.take()?;
        // This delivery does not count: the next one has the same attempt number.
        msg.delivered = msg.delivered.saturating_sub(1);
        lock(&self.queue.state).ready.push_front(msg);
        self.queue.notify.notify_waiters();
        Ok(())
    }

    async fn park(self: Box<Self>, info: &ParkInfo) -> Result<(), BrokerError> {
        let msg = self.take()?;
        self.broker.park_message(&self.queue, msg, info);
        Ok(())
    }

    async fn extend(&self) -> Result<(), BrokerError> {
        self.broker.check_connected()?;
        let ack_wait = *lock(&self.broker.inner.ack_wait);
        let mut s = lock(&self.queue.state);
        match s.leased.get_mut(&self.id) {
            Some(l) if l.msg.delivered == self.delivered => {
                l.until = Instant::now() + ack_wait;
                Ok(())
            }
            _ => Err(BrokerError::ConnectionLost(
                "lease lost: message was redelivered".into(),
            )),
        }
    }

    fn lease(&self) -> Option<Duration> {
        Some(*lock(&self.broker.inner.ack_wait))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo() -> Topology {
        let mut t = Topology::new(Names::new("t"), &["s"]);
        t.ack_wait = Duration::from_secs(10);
        t
    }

    async fn setup() -> (MemoryBroker, Box<dyn Subscription>) {
        let b = MemoryBroker::new();
        b.declare(&topo()).await.unwrap();
        b.publish(OutMessage::new(Destination::Job { stage: "s".into() }, "x"))
            .await
            .unwrap();
        let sub = b
            .subscribe(
                Source::Jobs { stage: "s".into() },
                SubscribeOptions { prefetch: 1 },
            )
            .await
            .unwrap();
        (b, sub)
    }

    #[tokio::test(start_paused = true)]
    async fn lease_expiry_redelivers_with_higher_attempt() {
        let (_b, mut sub) = setup().await;
        let d = sub.fetch(1, Duration::from_secs(1)).await.unwrap();
        assert_eq!(d[0].attempt, 1);
        let d2 = sub.fetch(1, Duration::from_secs(60)).await.unwrap();
        assert_eq!(d2[0].attempt, 2);
        // The first delivery lost its lease and cannot settle.
        let first = d.into_iter().next().unwrap();
        assert!(first.acker.ack().await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn retry_waits_for_delay_and_extend_keeps_lease() {
        let (_b, mut sub) = setup().await;
        let d = sub
            .fetch(1, Duration::from_secs(1))
            .await
            .unwrap()
            .pop()
            .unwrap();
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(8)).await;
            d.acker.extend().await.unwrap();
        }
        let start = Instant::now();
        d.acker.retry(Duration::from_secs(3)).await.unwrap();
        let again = sub
            .fetch(1, Duration::from_secs(60))
            .await
            .unwrap()
            .pop()
            .unwrap();
        assert_eq!(again.attempt, 2);
        assert!(start.elapsed() >= Duration::from_secs(3));
        again.acker.ack().await.unwrap();
        assert!(
            sub.fetch(1, Duration::from_secs(30))
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_subscription_returns_messages() {
        let (b, mut sub) = setup().await;
        let _held = sub.fetch(1, Duration::from_secs(1)).await.unwrap();
        drop(sub);
        let mut sub2 = b
            .subscribe(
                Source::Jobs { stage: "s".into() },
                SubscribeOptions { prefetch: 1 },
            )
            .await
            .unwrap();
        assert_eq!(
            sub2.fetch(1, Duration::from_secs(1)).await.unwrap()[0].attempt,
            2
        );
    }
}
