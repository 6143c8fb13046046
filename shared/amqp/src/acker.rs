//! Settling one delivery: ack, delayed retry through the TTL ladder (jobs) or the control ladder
//! (the coordinator's queues), dead-letter, park, release (counted or not).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fleet_core::broker::{control_retry_ladder, ladder_label, ladder_step};
use fleet_core::{Acker, BrokerError, ParkInfo};
use fleet_protocol::{DeadLetterInfo, Names};
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::{BasicProperties, ChannelStatus};

use crate::ack_window::AckWindow;
use crate::connect::Conn;
use crate::headers::copy_for_republish;
use crate::publish::{PERSISTENT, Route};

/// How often a running delivery's channel is checked (the runtime polls at a third of it).
const CHANNEL_CHECK_EVERY: Duration = Duration::from_secs(3);

/// What every delivery of one subscription shares.
pub(crate) struct SubContext {
    /// The connection the subscription was made on (its publish channel is used for copies).
    pub(crate) conn: Arc<Conn>,
    /// Names of the declared topology.
    pub(crate) names: Names,
    /// The retry ladder of the declared topology.
    pub(crate) ladder: Vec<Duration>,
    /// The stage, for job queues (which have retry queues).
    pub(crate) stage: Option<String>,
    /// A durable coordinator queue (events, submissions, dead letters): retried through the
    /// control ladder and parkable. False for job queues and per-subscriber control queues.
    pub(crate) control: bool,
    /// The queue consumed.
    pub(crate) queue: String,
    /// State of the consuming channel: deliveries can only be settled while it is open.
    pub(crate) status: ChannelStatus,
    /// The consuming channel's deliveries, for acks with `multiple=true`.
    pub(crate) window: AckWindow,
}

/// Settles one RabbitMQ delivery.
pub(crate) struct AmqpAcker {
    pub(crate) ctx: Arc<SubContext>,
    pub(crate) acker: lapin::Acker,
    /// The delivery tag (registered in the window).
    pub(crate) tag: u64,
    pub(crate) body: Bytes,
    pub(crate) properties: BasicProperties,
    pub(crate) attempt: u32,
}

impl AmqpAcker {
    fn lost(&self, what: &str) -> BrokerError {
        BrokerError::ConnectionLost(format!(
            "cannot {what} a delivery from {}: its channel is closed (the broker redelivers it)",
            self.ctx.queue
        ))
    }

    fn ensure_channel(&self, what: &str) -> Result<(), BrokerError> {
        if self.ctx.status.connected() && self.acker.usable() {
            Ok(())
        } else {
            Err(self.lost(what))
        }
    }

    /// Awaits an ack/nack; lapin answers `Ok(false)` when the channel died meanwhile.
    async fn settle(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = lapin::Result<bool>>,
    ) -> Result<(), BrokerError> {
        let limit = self.ctx.conn.op_timeout;
        match tokio::time::timeout(limit, fut).await {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(self.lost(what)),
            Ok(Err(e)) => Err(BrokerError::ConnectionLost(format!("{what} failed: {e}"))),
            Err(_) => Err(BrokerError::Timeout(limit)),
        }
    }

    /// Acks through the window: one `basic.ack(multiple=true)` for a run of finished
    /// deliveries, or alone after a short wait behind an unfinished one.
    async fn ack_now(&self) -> Result<(), BrokerError> {
        let limit = self.ctx.conn.op_timeout;
        self.ctx
            .window
            .ack(self.tag, &self.acker, limit, |last| async move {
                match last {
                    // lapin has no channel-level ack without the channel handle (whose clones
                    // keep the channel open): the last delivery's own handle sends it.
                    Some(last) => {
                        let all = BasicAckOptions { multiple: true };
                        self.settle("ack", last.ack(all)).await
                    }
                    None => {
                        self.settle("ack", self.acker.ack(BasicAckOptions::default()))
                            .await
                    }
                }
            })
            .await
    }

    /// Acks alone at once, never waiting to be covered (giving back prefetched deliveries:
    /// the running jobs below them may take long).
    async fn ack_alone(&self) -> Result<(), BrokerError> {
        let frame = self.settle("ack", self.acker.ack(BasicAckOptions::default()));
        self.ctx.window.settle_alone(self.tag, true, frame).await
    }

    /// Requeues (counted by the quorum queue): a frame of its own that no multiple ack covers.
    async fn requeue(&self, what: &str) -> Result<(), BrokerError> {
        let frame = self.settle(what, self.acker.nack(requeue()));
        self.ctx.window.settle_alone(self.tag, false, frame).await
    }

    /// [`Acker::release_uncounted`], acking the original through the window (`wait`) or alone.
    pub(crate) async fn release_uncounted_with(&self, wait: bool) -> Result<(), BrokerError> {
        self.ensure_channel("release")?;
        // A requeue would raise `x-delivery-count`: put a copy back that carries the attempts
        // made before this delivery instead, then remove the original.
        let route = Route {
            exchange: String::new(),
            key: self.ctx.queue.clone(),
            mandatory: true,
        };
        let made = self.attempt.saturating_sub(1);
        if let Err(e) = self.republish_counting(&route, &Vec::new(), made).await {
            tracing::warn!(queue = %self.ctx.queue, error = %e,
                "amqp: could not put back an uncounted copy; requeueing (costs an attempt)");
            return self.requeue("release").await;
        }
        if wait {
            self.ack_now().await
        } else {
            self.ack_alone().await
        }
    }

    /// Publishes a copy of this delivery (confirmed) with extra headers, counting this delivery
    /// as an attempt made.
    async fn republish(
        &self,
        route: &Route,
        extra: &fleet_core::Headers,
    ) -> Result<(), BrokerError> {
        self.republish_counting(route, extra, self.attempt).await
    }

    /// Publishes a copy (confirmed) whose next delivery is attempt `attempts_made + 1`.
    async fn republish_counting(
        &self,
        route: &Route,
        extra: &fleet_core::Headers,
        attempts_made: u32,
    ) -> Result<(), BrokerError> {
        let headers = copy_for_republish(self.properties.headers().as_ref(), extra, attempts_made)?;
        let props = self
            .properties
            .clone()
            .with_headers(headers)
            .with_delivery_mode(PERSISTENT);
        self.ctx.conn.send(route, &self.body, props).await
    }
}

#[async_trait]
impl Acker for AmqpAcker {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        self.ensure_channel("ack")?;
        self.ack_now().await
    }

    async fn retry(self: Box<Self>, delay: Duration) -> Result<Duration, BrokerError> {
        self.ensure_channel("retry")?;
        let Some(stage) = &self.ctx.stage else {
            if !self.ctx.control {
                // A per-subscriber cancellation queue: no ladder, the message goes straight back.
                self.requeue("requeue").await?;
                return Ok(Duration::ZERO);
            }
            // A coordinator queue: wait in the control ladder (never spin on an outage), then
            // come back to this queue by the copy's routing key.
            let step = ladder_step(&control_retry_ladder(), delay);
            let route = Route {
                exchange: self.ctx.names.control_retry(&ladder_label(step)),
                key: self.ctx.queue.clone(),
                mandatory: true,
            };
            self.republish(&route, &Vec::new()).await?;
            self.ack_now().await?;
            return Ok(step);
        };
        let step = ladder_step(&self.ctx.ladder, delay);
        let route = Route {
            exchange: String::new(),
            key: self.ctx.names.retry_queue(stage, &ladder_label(step)),
            mandatory: true,
        };
        self.republish(&route, &Vec::new()).await?;
        self.ack_now().await?;
        Ok(step)
    }

    async fn dead_letter(self: Box<Self>, info: &DeadLetterInfo) -> Result<(), BrokerError> {
        self.ensure_channel("dead-letter")?;
        let route = Route {
            exchange: self.ctx.names.dlq_exchange(),
            key: info.stage.clone(),
            mandatory: true,
        };
        // `fleet-attempt` 0: the job's attempts are in `fleet-attempts`; the dead letter's own
        // deliveries (to the coordinator's archive) count from 1.
        self.republish_counting(&route, &info.to_headers(), 0)
            .await?;
        self.ack_now().await
    }

    async fn release(self: Box<Self>) -> Result<(), BrokerError> {
        self.ensure_channel("release")?;
        self.requeue("release").await
    }

    async fn release_uncounted(self: Box<Self>) -> Result<(), BrokerError> {
        self.release_uncounted_with(true).await
    }

    async fn park(self: Box<Self>, info: &ParkInfo) -> Result<(), BrokerError> {
        self.ensure_channel("park")?;
        let route = Route {
            exchange: String::new(),
            key: self.ctx.names.parked(),
            mandatory: true,
        };
        self.republish(&route, &info.to_headers(&self.ctx.queue))
            .await?;
        self.ack_now().await
    }

    async fn extend(&self) -> Result<(), BrokerError> {
        // RabbitMQ 3.10 cannot extend a delivery (`check_consumer_timeout` stands in), but a
        // closed channel means this delivery can never be acked: report the lease as lost so
        // the runtime cancels the handler and publishes nothing for it.
        if self.ctx.status.connected() && self.acker.usable() {
            Ok(())
        } else {
            Err(BrokerError::ConnectionLost(
                "lease lost: the channel of this delivery is closed".into(),
            ))
        }
    }

    fn lease(&self) -> Option<Duration> {
        // Not a broker lease: how often the runtime checks that the channel is still open.
        Some(CHANNEL_CHECK_EVERY)
    }
}

impl Drop for AmqpAcker {
    fn drop(&mut self) {
        // Unsettled (the channel died, or the delivery was given up): the broker may still
        // count it outstanding, so no multiple ack may cover it. A no-op once settled.
        self.ctx.window.abandon(self.tag);
    }
}

fn requeue() -> BasicNackOptions {
    BasicNackOptions {
        multiple: false,
        requeue: true,
    }
}
