//! The one resilient consume loop of the workspace: the worker's jobs consumer, its
//! cancellation listener and the coordinator's consumers (events, submissions, dead letters)
//! all pull through a [`Consumer`]. It subscribes (with [`Resubscriber`]'s repair and limits),
//! fetches, and after a failed fetch repairs the connection or topology, pauses, and
//! subscribes again; the caller only sees fresh subscriptions and fetched deliveries.

use std::time::Duration;

use anyhow::bail;
use fleet_core::{BrokerError, Delivery, Subscription};
use tokio_util::sync::CancellationToken;

use crate::resubscribe::Resubscriber;

/// Pause after a failed fetch before subscribing again.
const FAILED_FETCH_PAUSE: Duration = Duration::from_millis(200);

/// What one call of [`Consumer::next`] produced.
#[derive(Debug)]
pub enum Step {
    /// A new subscription is up (the first, or one after a failure): deliveries fetched before
    /// it came from a subscription that is gone and cannot be settled any more.
    Subscribed,
    /// A fetch returned (possibly nothing).
    Fetched(Vec<Delivery>),
    /// A fetch failed; the subscription was dropped and the next call subscribes again.
    Failed(BrokerError),
}

/// A subscription kept alive across failures, within the limits of its [`Resubscriber`].
pub struct Consumer {
    resub: Resubscriber,
    sub: Option<Box<dyn Subscription>>,
    /// Names the consumer in logs ("consuming", "the cancellation stream", …).
    what: &'static str,
    /// Exit (an error) when the broker cancels the consumer a second time in this process.
    exit_on_second_cancel: bool,
    cancellations: u32,
}

impl Consumer {
    /// A consumer that subscribes through `resub`; `what` names it in logs.
    pub fn new(resub: Resubscriber, what: &'static str) -> Consumer {
        Consumer {
            resub,
            sub: None,
            what,
            exit_on_second_cancel: false,
            cancellations: 0,
        }
    }

    /// A second consumer cancellation by the broker (its queue or consumer deleted twice in
    /// the life of the process) becomes an error, so the orchestrator restarts the process
    /// rather than it fighting whoever deletes its queue.
    pub fn exit_on_second_cancel(mut self) -> Consumer {
        self.exit_on_second_cancel = true;
        self
    }

    /// Subscribes if needed, else fetches at most `max` deliveries waiting at most `wait`.
    /// `Ok(None)` once `stop` is cancelled; an error when the consumer is gone for good (past
    /// its resubscribe limits, or cancelled twice with [`Self::exit_on_second_cancel`]).
    ///
    /// A fetch is not raced against `stop` (dropping one half-way could strand deliveries
    /// on some brokers): shutdown is noticed within `wait`.
    pub async fn next(
        &mut self,
        max: usize,
        wait: Duration,
        stop: &CancellationToken,
    ) -> anyhow::Result<Option<Step>> {
        if stop.is_cancelled() {
            return Ok(None);
        }
        let Some(sub) = self.sub.as_mut() else {
            return Ok(self.resub.subscribe(stop).await?.map(|s| {
                self.sub = Some(s);
                Step::Subscribed
            }));
        };
        let e = match sub.fetch(max, wait).await {
            Ok(ds) => {
                self.resub.working();
                return Ok(Some(Step::Fetched(ds)));
            }
            Err(e) => e,
        };
        if matches!(e, BrokerError::ConsumerCancelled(_)) {
            self.cancellations += 1;
            if self.exit_on_second_cancel && self.cancellations > 1 {
                bail!(
                    "the broker cancelled this process's consumer twice ({e}); exiting so the orchestrator restarts it"
                );
            }
        }
        // A subscription that keeps failing right after it was made is bounded too.
        self.resub.failed(self.what, &e)?;
        if let Some(sub) = self.sub.take() {
            sub.close().await;
        }
        // Reconnect or redeclare now (a cancelled consumer's queue was probably deleted), so
        // the next subscribe usually works at once.
        self.resub.repair(&e).await;
        tokio::select! {
            () = tokio::time::sleep(FAILED_FETCH_PAUSE) => {}
            () = stop.cancelled() => {}
        }
        Ok(Some(Step::Failed(e)))
    }

    /// The live subscription, if any, taken out of the consumer (the worker keeps it open
    /// while it drains, then closes it).
    pub fn take_subscription(&mut self) -> Option<Box<dyn Subscription>> {
        self.sub.take()
    }

    /// Closes the live subscription, if any.
    pub async fn close(mut self) {
        if let Some(sub) = self.sub.take() {
            sub.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use fleet_core::{Broker, Destination, MemoryBroker, OutMessage, Source, SubscribeOptions};
    use fleet_core::{Settlement, Topology};
    use fleet_protocol::Names;

    use super::*;
    use crate::resubscribe::Limits;
    use crate::telemetry::Health;

    fn consumer(m: &MemoryBroker) -> Consumer {
        let resub = Resubscriber::new(
            Arc::new(m.clone()),
            Source::Jobs {
                stage: "work".into(),
            },
            SubscribeOptions { prefetch: 8 },
            Topology::new(Names::new("t"), &["work"]),
            Limits {
                max_outage: Duration::from_secs(20),
                refused: Duration::from_secs(5),
            },
            Arc::new(Health::default()),
        );
        Consumer::new(resub, "consuming")
    }

    async fn publish(m: &MemoryBroker, body: &'static str) {
        let dest = Destination::Job {
            stage: "work".into(),
        };
        m.publish(OutMessage::new(dest, body)).await.unwrap();
    }

    /// Subscribes, fetches, survives an outage (a failed fetch, then a new subscription once the
    /// broker is back) and hands over what was published meanwhile; stops on shutdown.
    #[tokio::test(start_paused = true)]
    async fn resubscribes_after_a_failed_fetch_and_stops_on_shutdown() {
        let m = MemoryBroker::new();
        m.declare(&Topology::new(Names::new("t"), &["work"]))
            .await
            .unwrap();
        let mut c = consumer(&m);
        let stop = CancellationToken::new();
        let wait = Duration::from_millis(100);
        assert!(matches!(
            c.next(8, wait, &stop).await.unwrap(),
            Some(Step::Subscribed)
        ));
        publish(&m, "a").await;
        let Some(Step::Fetched(ds)) = c.next(8, wait, &stop).await.unwrap() else {
            panic!("a fetch");
        };
        assert_eq!(ds.len(), 1);
        for d in ds {
            Settlement::Ack.apply(d.acker).await.unwrap();
        }
        m.set_connected(false);
        assert!(matches!(
            c.next(8, wait, &stop).await.unwrap(),
            Some(Step::Failed(_))
        ));
        let back = m.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            back.set_connected(true);
            publish(&back, "b").await;
        });
        assert!(matches!(
            c.next(8, wait, &stop).await.unwrap(),
            Some(Step::Subscribed)
        ));
        let mut got = Vec::new();
        while got.is_empty() {
            if let Some(Step::Fetched(ds)) = c.next(8, wait, &stop).await.unwrap() {
                got = ds;
            }
        }
        assert_eq!(&got[0].body[..], b"b");
        stop.cancel();
        assert!(c.next(8, wait, &stop).await.unwrap().is_none());
        c.close().await;
    }
}
