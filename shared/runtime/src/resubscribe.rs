//! Subscribing with repair (DESIGN §3, §7): a consumer that cannot subscribe reconnects
//! (when the connection is gone), redeclares its topology (a deleted queue comes back) and
//! tries again with backoff, counted and with a rate-limited log. While it fails, `/readyz`
//! is 503; past its bound it gives up with an error, which the task's [`crate::Supervisor`]
//! turns into an exit naming the task.
//!
//! The bound is `FLEET_MAX_OUTAGE` while the broker is disconnected (the same as every other
//! wait for the broker) and `FLEET_RESUBSCRIBE_LIMIT` while it is connected but refuses.

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use fleet_core::{Broker, BrokerError, Source, SubscribeOptions, Subscription, Topology};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::RuntimeConfig;
use crate::telemetry::{Health, Resubscribing, names};

/// First pause between attempts; doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(200);
/// Longest pause between attempts.
const MAX_PAUSE: Duration = Duration::from_secs(5);
/// At most one "still failing" warning per this interval (the rest go to debug).
const LOG_EVERY: Duration = Duration::from_secs(10);
/// Bound on one reconnect, one declaration or one subscribe call.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// The `source` label of [`names::SUBSCRIBE_FAILURES`] (a closed set).
pub fn source_label(source: &Source) -> &'static str {
    match source {
        Source::Jobs { .. } => "jobs",
        Source::Events => "events",
        Source::DeadLetters { .. } => "dead_letters",
        Source::Submit => "submit",
        Source::Control => "control",
    }
}

/// How long a consumer keeps trying before it gives up.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// While the broker is not connected (`FLEET_MAX_OUTAGE`).
    pub max_outage: Duration,
    /// While the broker is connected but subscribing fails (`FLEET_RESUBSCRIBE_LIMIT`).
    pub refused: Duration,
}

impl Limits {
    /// The limits configured for this process.
    pub fn from_config(cfg: &RuntimeConfig) -> Limits {
        Limits {
            max_outage: cfg.max_outage,
            refused: cfg.resubscribe_limit,
        }
    }
}

/// One consumer's subscription state across failures (subscribe and fetch alike).
pub struct Resubscriber {
    broker: Arc<dyn Broker>,
    source: Source,
    opts: SubscribeOptions,
    topology: Topology,
    limits: Limits,
    health: Arc<Health>,
    /// Since when this consumer has been failing; cleared by [`Self::working`].
    failing_since: Option<Instant>,
    last_warn: Option<Instant>,
    failures: u64,
}

impl Resubscriber {
    /// A consumer of `source` that redeclares `topology` when it cannot subscribe.
    pub fn new(
        broker: Arc<dyn Broker>,
        source: Source,
        opts: SubscribeOptions,
        topology: Topology,
        limits: Limits,
        health: Arc<Health>,
    ) -> Resubscriber {
        Resubscriber {
            broker,
            source,
            opts,
            topology,
            limits,
            health,
            failing_since: None,
            last_warn: None,
            failures: 0,
        }
    }

    /// The subscription works (a fetch succeeded): the failure clock starts over.
    pub fn working(&mut self) {
        if let Some(since) = self.failing_since.take() {
            tracing::info!(source = ?self.source, failures = self.failures,
                "subscribed again after {}", humantime::format_duration(round(since.elapsed())));
        }
        self.failures = 0;
        self.last_warn = None;
    }

    /// Records a failure of the subscription (or of a fetch on it): counted, logged at most
    /// every 10 s. An error when the consumer has been failing for longer than its limit.
    pub fn failed(&mut self, what: &str, e: &BrokerError) -> anyhow::Result<()> {
        let now = Instant::now();
        let since = *self.failing_since.get_or_insert(now);
        self.failures += 1;
        metrics::counter!(names::SUBSCRIBE_FAILURES, "source" => source_label(&self.source))
            .increment(1);
        let connected = self.broker.is_connected();
        let (limit, setting) = if connected {
            (self.limits.refused, "FLEET_RESUBSCRIBE_LIMIT")
        } else {
            (self.limits.max_outage, "FLEET_MAX_OUTAGE")
        };
        let failing = now.duration_since(since);
        if failing >= limit {
            bail!(
                "cannot consume {:?} for {} ({} attempts, redeclaring the topology between them; \
                 broker {}): last error: {e} (bounded by {setting})",
                self.source,
                humantime::format_duration(round(failing)),
                self.failures,
                if connected {
                    "connected"
                } else {
                    "not connected"
                },
            );
        }
        if self
            .last_warn
            .is_none_or(|t| now.duration_since(t) >= LOG_EVERY)
        {
            self.last_warn = Some(now);
            tracing::warn!(source = ?self.source, error = %e, failures = self.failures,
                "{what} failed; redeclaring and resubscribing (failing for {}, giving up after {} by {setting})",
                humantime::format_duration(round(failing)), humantime::format_duration(limit));
        } else {
            tracing::debug!(source = ?self.source, error = %e, "{what} failed again");
        }
        Ok(())
    }

    /// Subscribes; on failure reconnects or redeclares and retries with backoff.
    /// `Ok(None)` once `stop` is cancelled; an error past the limit.
    pub async fn subscribe(
        &mut self,
        stop: &CancellationToken,
    ) -> anyhow::Result<Option<Box<dyn Subscription>>> {
        let mut pause = FIRST_PAUSE;
        // Unready from the first failure until subscribed (dropped on every return).
        let mut unready: Option<Resubscribing> = None;
        loop {
            if stop.is_cancelled() {
                return Ok(None);
            }
            let attempt = tokio::time::timeout(
                STEP_TIMEOUT,
                self.broker
                    .subscribe(self.source.clone(), self.opts.clone()),
            )
            .await
            .unwrap_or(Err(BrokerError::Timeout(STEP_TIMEOUT)));
            let e = match attempt {
                Ok(sub) => return Ok(Some(sub)),
                Err(e) => e,
            };
            unready.get_or_insert_with(|| self.health.resubscribing());
            self.failed("subscribe", &e)?;
            self.repair(&e).await;
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = stop.cancelled() => return Ok(None),
            }
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }

    /// Reconnects a lost connection, then declares the topology again (both bounded; their
    /// failures show in the next attempt).
    pub async fn repair(&self, e: &BrokerError) {
        if e.is_connection() || !self.broker.is_connected() {
            match tokio::time::timeout(STEP_TIMEOUT, self.broker.reconnect()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "reconnect failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!("reconnect timed out");
                    return;
                }
            }
        }
        match tokio::time::timeout(STEP_TIMEOUT, self.broker.declare(&self.topology)).await {
            Ok(Ok(())) => tracing::debug!(source = ?self.source, "topology declared again"),
            Ok(Err(e)) => tracing::debug!(error = %e, "declaring the topology again failed"),
            Err(_) => tracing::debug!("declaring the topology again timed out"),
        }
    }
}

/// Whole seconds (or milliseconds under one second), for log lines.
fn round(d: Duration) -> Duration {
    if d >= Duration::from_secs(1) {
        Duration::from_secs(d.as_secs())
    } else {
        Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use fleet_core::MemoryBroker;
    use fleet_protocol::Names;

    use super::*;

    fn topology() -> Topology {
        Topology {
            names: Names::new("t"),
            stages: vec!["work".into()],
            ack_wait: Duration::from_secs(30),
            max_deliver: 10,
            max_ack_pending: 100,
            retry_ladder: fleet_core::broker::default_retry_ladder(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_the_outage_limit_and_is_unready_meanwhile() {
        let m = MemoryBroker::new();
        m.set_connected(false);
        let health = Arc::new(Health::default());
        health.set_ready(true);
        let limits = Limits {
            max_outage: Duration::from_secs(20),
            refused: Duration::from_secs(5),
        };
        let mut r = Resubscriber::new(
            Arc::new(m.clone()),
            Source::Events,
            SubscribeOptions { prefetch: 8 },
            topology(),
            limits,
            health.clone(),
        );
        let stop = CancellationToken::new();
        let h = health.clone();
        let probe = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            h.is_ready()
        });
        let t = Instant::now();
        let err = r.subscribe(&stop).await.err().expect("gives up");
        assert!(!probe.await.unwrap(), "unready while it cannot subscribe");
        assert!(t.elapsed() >= Duration::from_secs(20) && t.elapsed() < Duration::from_secs(30));
        assert!(err.to_string().contains("FLEET_MAX_OUTAGE"), "{err}");
        assert!(health.is_ready(), "the guard is gone with the consumer");
    }

    #[tokio::test(start_paused = true)]
    async fn subscribes_once_the_broker_is_back_and_the_clock_restarts() {
        let m = MemoryBroker::new();
        m.set_connected(false);
        let mut r = Resubscriber::new(
            Arc::new(m.clone()),
            Source::Events,
            SubscribeOptions { prefetch: 8 },
            topology(),
            Limits {
                max_outage: Duration::from_secs(20),
                refused: Duration::from_secs(5),
            },
            Arc::new(Health::default()),
        );
        let back = m.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(15)).await;
            back.set_connected(true);
        });
        let stop = CancellationToken::new();
        assert!(r.subscribe(&stop).await.unwrap().is_some());
        r.working();
        // A later failure gets a full limit again, not what is left of the first one.
        r.failed("fetch", &BrokerError::ConsumerCancelled("gone".into()))
            .expect("a fresh failure is within its limit");
        stop.cancel();
        m.set_connected(false);
        assert!(
            r.subscribe(&stop).await.unwrap().is_none(),
            "stops on shutdown"
        );
    }
}
