//! `--probe`: a [`Broker`] wrapper that times what the runtime asks of the broker during the
//! runtime phase (pulls, event-batch publishes, acks), to show where a job's slot time goes.
//!
//! The wrapper adds two clock reads and a few atomic adds per call; the figures of a probed run
//! are for diagnosis, the table's figures come from unprobed runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use fleet_core::{
    Acker, Broker, BrokerError, BrokerKind, Delivery, Destination, OutMessage, Source,
    SubscribeOptions, Subscription, Topology,
};
use fleet_protocol::DeadLetterInfo;
use tokio::time::Instant;

/// A sum of durations and a count.
#[derive(Default)]
struct Timer {
    count: AtomicU64,
    nanos: AtomicU64,
}

impl Timer {
    fn add(&self, d: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.nanos.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Mean in milliseconds.
    fn mean_ms(&self) -> f64 {
        let n = self.count().max(1) as f64;
        self.nanos.load(Ordering::Relaxed) as f64 / n / 1e6
    }
}

/// What the probe saw.
#[derive(Default)]
pub struct Stats {
    fetch: Timer,
    fetch_asked: AtomicU64,
    fetch_got: AtomicU64,
    fetch_empty: AtomicU64,
    events: Timer,
    event_bytes: AtomicU64,
    events_started: AtomicU64,
    events_succeeded: AtomicU64,
    other_publish: Timer,
    handed_to_ack: Timer,
    ack: Timer,
}

fn count(haystack: &[u8], needle: &[u8]) -> u64 {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count() as u64
}

impl Stats {
    /// Prints the breakdown to stderr.
    pub fn print(&self, label: &str, jobs: u64, elapsed: Duration) {
        let batches = self.events.count().max(1);
        let fetches = self.fetch.count().max(1);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        eprintln!(
            "[{label}] probe over {jobs} jobs in {:.2} s:",
            elapsed.as_secs_f64()
        );
        eprintln!(
            "  pulls: {} calls ({} empty), asked {:.1} / got {:.1} deliveries per call, {:.2} ms per call",
            self.fetch.count(),
            load(&self.fetch_empty),
            load(&self.fetch_asked) as f64 / fetches as f64,
            load(&self.fetch_got) as f64 / fetches as f64,
            self.fetch.mean_ms()
        );
        eprintln!(
            "  event batches: {} publishes, {:.1} events each (started {} / succeeded {} sent), {:.1} KiB each, {:.2} ms per confirmed publish, busy {:.0} % of the run",
            self.events.count(),
            (load(&self.events_started) + load(&self.events_succeeded)) as f64 / batches as f64,
            load(&self.events_started),
            load(&self.events_succeeded),
            load(&self.event_bytes) as f64 / batches as f64 / 1024.0,
            self.events.mean_ms(),
            100.0 * self.events.nanos.load(Ordering::Relaxed) as f64 / 1e9 / elapsed.as_secs_f64()
        );
        eprintln!(
            "  delivery handed out -> ack called: {:.2} ms mean; ack call: {:.3} ms mean ({} acks)",
            self.handed_to_ack.mean_ms(),
            self.ack.mean_ms(),
            self.ack.count()
        );
        if self.other_publish.count() > 0 {
            eprintln!(
                "  other publishes: {} at {:.2} ms",
                self.other_publish.count(),
                self.other_publish.mean_ms()
            );
        }
    }
}

/// Wraps a broker; job subscriptions and their ackers are wrapped too.
pub struct ProbeBroker {
    inner: Arc<dyn Broker>,
    stats: Arc<Stats>,
}

impl ProbeBroker {
    /// A probe around `inner`, reporting into `stats`.
    pub fn new(inner: Arc<dyn Broker>, stats: Arc<Stats>) -> ProbeBroker {
        ProbeBroker { inner, stats }
    }
}

#[async_trait]
impl Broker for ProbeBroker {
    fn kind(&self) -> BrokerKind {
        self.inner.kind()
    }

    async fn declare(&self, topology: &Topology) -> Result<(), BrokerError> {
        self.inner.declare(topology).await
    }

    async fn publish(&self, msg: OutMessage) -> Result<(), BrokerError> {
        let events = matches!(msg.dest, Destination::Events { .. });
        if events {
            self.stats
                .event_bytes
                .fetch_add(msg.body.len() as u64, Ordering::Relaxed);
            let started = count(&msg.body, br#""type":"started""#);
            let succeeded = count(&msg.body, br#""type":"succeeded""#);
            self.stats
                .events_started
                .fetch_add(started, Ordering::Relaxed);
            self.stats
                .events_succeeded
                .fetch_add(succeeded, Ordering::Relaxed);
        }
        let t = Instant::now();
        let r = self.inner.publish(msg).await;
        if events {
            &self.stats.events
        } else {
            &self.stats.other_publish
        }
        .add(t.elapsed());
        r
    }

    async fn subscribe(
        &self,
        source: Source,
        opts: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>, BrokerError> {
        let jobs = matches!(source, Source::Jobs { .. });
        let inner = self.inner.subscribe(source, opts).await?;
        if !jobs {
            return Ok(inner);
        }
        Ok(Box::new(ProbeSub {
            inner,
            stats: self.stats.clone(),
        }))
    }

    fn is_connected(&self) -> bool {
        self.inner.is_connected()
    }

    async fn reconnect(&self) -> Result<(), BrokerError> {
        self.inner.reconnect().await
    }

    async fn depth(&self, source: &Source) -> Result<u64, BrokerError> {
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

    async fn delete_topology(&self, topology: &Topology) -> Result<(), BrokerError> {
        self.inner.delete_topology(topology).await
    }

    async fn close(&self) {
        self.inner.close().await;
    }
}

struct ProbeSub {
    inner: Box<dyn Subscription>,
    stats: Arc<Stats>,
}

#[async_trait]
impl Subscription for ProbeSub {
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BrokerError> {
        let t = Instant::now();
        let got = self.inner.fetch(max, wait).await?;
        let handed = Instant::now();
        self.stats.fetch.add(handed - t);
        self.stats
            .fetch_asked
            .fetch_add(max as u64, Ordering::Relaxed);
        self.stats
            .fetch_got
            .fetch_add(got.len() as u64, Ordering::Relaxed);
        if got.is_empty() {
            self.stats.fetch_empty.fetch_add(1, Ordering::Relaxed);
        }
        Ok(got
            .into_iter()
            .map(|d| Delivery {
                acker: Box::new(ProbeAcker {
                    inner: d.acker,
                    stats: self.stats.clone(),
                    handed,
                }),
                ..d
            })
            .collect())
    }
}

struct ProbeAcker {
    inner: Box<dyn Acker>,
    stats: Arc<Stats>,
    handed: Instant,
}

#[async_trait]
impl Acker for ProbeAcker {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        let t = Instant::now();
        self.stats.handed_to_ack.add(t - self.handed);
        let r = self.inner.ack().await;
        self.stats.ack.add(t.elapsed());
        r
    }

    async fn retry(self: Box<Self>, delay: Duration) -> Result<Duration, BrokerError> {
        self.inner.retry(delay).await
    }

    async fn dead_letter(self: Box<Self>, info: &DeadLetterInfo) -> Result<(), BrokerError> {
        self.inner.dead_letter(info).await
    }

    async fn release(self: Box<Self>) -> Result<(), BrokerError> {
        self.inner.release().await
    }

    async fn release_uncounted(self: Box<Self>) -> Result<(), BrokerError> {
        self.inner.release_uncounted().await
    }

    async fn park(self: Box<Self>, info: &fleet_core::ParkInfo) -> Result<(), BrokerError> {
        self.inner.park(info).await
    }

    async fn extend(&self) -> Result<(), BrokerError> {
        self.inner.extend().await
    }

    fn lease(&self) -> Option<Duration> {
        self.inner.lease()
    }
}
