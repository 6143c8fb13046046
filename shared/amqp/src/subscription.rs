//! A consumer on its own channel, drained in bounded batches.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fleet_core::{BrokerError, Delivery, Subscription};
use futures::{FutureExt, StreamExt};
use lapin::{Channel, Consumer};

use crate::acker::{AmqpAcker, SubContext};
use crate::headers::{attempt, to_strings};

/// A subscription: the consuming channel, its consumer and what its ackers share.
///
/// Dropping it closes the channel: every unsettled delivery goes back to the
/// queue (quorum queues count it in `x-delivery-count`) and its acker fails.
pub(crate) struct AmqpSubscription {
    pub(crate) channel: Channel,
    pub(crate) consumer: Consumer,
    pub(crate) ctx: Arc<SubContext>,
    /// Set once the consumer stream ended; every later fetch reports it again.
    pub(crate) ended: Option<BrokerError>,
    /// Set by [`Subscription::stop`]: the consumer is cancelled, the channel still open.
    pub(crate) stopped: bool,
}

impl AmqpSubscription {
    fn alive(&self) -> Result<(), BrokerError> {
        if self.channel.status().connected() && self.ctx.conn.is_connected() {
            Ok(())
        } else {
            Err(BrokerError::ConnectionLost(format!(
                "channel consuming {} is closed",
                self.ctx.queue
            )))
        }
    }

    /// Turns one stream item into a delivery or the error that ends the subscription.
    fn convert(
        &self,
        item: Option<lapin::Result<lapin::message::Delivery>>,
    ) -> Result<Delivery, BrokerError> {
        match item {
            Some(Ok(d)) => Ok(self.delivery(d)),
            Some(Err(e)) => Err(BrokerError::ConnectionLost(format!(
                "consumer on {} failed: {e}",
                self.ctx.queue
            ))),
            None => {
                self.alive()?;
                Err(BrokerError::ConsumerCancelled(format!(
                    "the broker cancelled the consumer on {} (queue deleted or failed over?)",
                    self.ctx.queue
                )))
            }
        }
    }

    fn delivery(&self, d: lapin::message::Delivery) -> Delivery {
        let headers = to_strings(d.properties.headers().as_ref());
        let acker = self.acker(d);
        Delivery {
            body: acker.body.clone(),
            headers,
            attempt: acker.attempt,
            acker: Box::new(acker),
        }
    }

    /// The acker of a delivery handed out, registered in the ack window (in tag order: the
    /// stream yields a channel's deliveries in order and only `&mut self` takes them).
    fn acker(&self, d: lapin::message::Delivery) -> AmqpAcker {
        self.ctx.window.register(d.delivery_tag);
        AmqpAcker {
            ctx: self.ctx.clone(),
            attempt: attempt(d.properties.headers().as_ref()),
            acker: d.acker,
            tag: d.delivery_tag,
            body: Bytes::from(d.data),
            properties: d.properties,
        }
    }
}

impl AmqpSubscription {
    /// Cancels the consumer (once) and gives back what it had buffered.
    async fn cancel_consumer(&mut self) {
        const STEP: Duration = Duration::from_secs(5);
        if self.stopped || !self.channel.status().connected() {
            return;
        }
        self.stopped = true;
        let tag = self.consumer.tag();
        let cancel = self
            .channel
            .basic_cancel(tag, lapin::options::BasicCancelOptions::default());
        match tokio::time::timeout(STEP, cancel).await {
            Ok(Ok(())) => self.return_prefetched(STEP).await,
            Ok(Err(e)) => {
                tracing::debug!(queue = %self.ctx.queue, error = %e, "amqp: basic.cancel failed");
            }
            Err(_) => {}
        }
    }

    /// Gives back, uncounted, what the broker pushed (prefetch) but no worker was handed: a
    /// channel close would raise their `x-delivery-count`, costing an attempt that never ran.
    /// Called once the consumer is cancelled, so nothing more arrives; bounded by `limit`.
    async fn return_prefetched(&mut self, limit: Duration) {
        let returned = tokio::time::timeout(limit, async {
            let mut n = 0u32;
            while let Some(Some(Ok(d))) = self.consumer.next().now_or_never() {
                let acker = self.acker(d);
                // Alone, not through the cover wait: the jobs still running below these
                // deliveries may hold the run for long, and they are given back one by one.
                if acker.release_uncounted_with(false).await.is_err() {
                    break;
                }
                n += 1;
            }
            n
        })
        .await;
        if let Ok(n) = returned
            && n > 0
        {
            tracing::debug!(queue = %self.ctx.queue, returned = n, "amqp: gave back prefetched deliveries uncounted");
        }
    }
}

#[async_trait]
impl Subscription for AmqpSubscription {
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BrokerError> {
        if let Some(e) = &self.ended {
            return Err(e.clone());
        }
        if max == 0 {
            return Ok(Vec::new());
        }
        let first = match tokio::time::timeout(wait, self.consumer.next()).await {
            Ok(item) => item,
            Err(_) => {
                // Nothing came: make sure that is not because the channel died silently.
                self.alive()?;
                return Ok(Vec::new());
            }
        };
        let first = self
            .convert(first)
            .inspect_err(|e| self.ended = Some(e.clone()))?;
        let mut out = vec![first];
        while out.len() < max {
            let Some(item) = self.consumer.next().now_or_never() else {
                break;
            };
            match self.convert(item) {
                Ok(d) => out.push(d),
                Err(e @ BrokerError::ConsumerCancelled(_)) => {
                    // The channel is still open, so what came before can be settled:
                    // hand it out; the next fetch reports the end.
                    self.ended = Some(e);
                    break;
                }
                Err(e) => {
                    // The channel is gone: nothing taken so far can be settled.
                    self.ended = Some(e.clone());
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    async fn stop(&mut self) {
        // Before the drain releases anything: an ack frees a prefetch slot, and the broker would
        // push the next message to this consumer, only to get it back (counted) at the close.
        self.cancel_consumer().await;
    }

    async fn close(mut self: Box<Self>) {
        // basic.cancel is a round trip queued behind every ack sent on this channel, so once it
        // is answered the broker has them all; then close the channel (unacked go back).
        const STEP: Duration = Duration::from_secs(5);
        if !self.channel.status().connected() {
            return;
        }
        self.cancel_consumer().await;
        let close = self.channel.close(200, "subscription closed".into());
        if let Ok(Err(e)) = tokio::time::timeout(STEP, close).await {
            tracing::debug!(queue = %self.ctx.queue, error = %e, "amqp: channel close failed");
        }
    }
}
