//! Settling one delivery: ack, delayed retry through the TTL ladder, dead-letter, release.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fleet_core::broker::{ladder_label, ladder_step};
use fleet_core::{Acker, BrokerError};
use fleet_protocol::{DeadLetterInfo, Names};
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::{BasicProperties, ChannelStatus};

use crate::connect::Conn;
use crate::headers::copy_for_republish;
use crate::publish::{PERSISTENT, Route};

/// What every delivery of one subscription shares.
/// How often a running delivery's channel is checked (the runtime polls at a third of it).
const CHANNEL_CHECK_EVERY: Duration = Duration::from_secs(3);

pub(crate) struct SubContext {
    /// The connection the subscription was made on (its publish channel is used for copies).
    pub(crate) conn: Arc<Conn>,
    /// Names of the declared topology.
    pub(crate) names: Names,
    /// The retry ladder of the declared topology.
    pub(crate) ladder: Vec<Duration>,
    /// The stage, for job queues (which have retry queues).
    pub(crate) stage: Option<String>,
    /// The queue consumed.
    pub(crate) queue: String,
    /// State of the consuming channel: deliveries can only be settled while it is open.
    pub(crate) status: ChannelStatus,
}

/// Settles one RabbitMQ delivery.
pub(crate) struct AmqpAcker {
    pub(crate) ctx: Arc<SubContext>,
    pub(crate) acker: lapin::Acker,
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

    async fn ack_now(&self) -> Result<(), BrokerError> {
        self.settle("ack", self.acker.ack(BasicAckOptions::default()))
            .await
    }

    /// Publishes a copy of this delivery (confirmed) with extra headers.
    async fn republish(
        &self,
        route: &Route,
        extra: &fleet_core::Headers,
    ) -> Result<(), BrokerError> {
        let headers = copy_for_republish(self.properties.headers().as_ref(), extra, self.attempt)?;
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
            // Only job stages have a retry ladder: elsewhere the message goes straight back.
            self.settle("requeue", self.acker.nack(requeue())).await?;
            return Ok(Duration::ZERO);
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
        self.republish(&route, &info.to_headers()).await?;
        self.ack_now().await
    }

    async fn release(self: Box<Self>) -> Result<(), BrokerError> {
        self.ensure_channel("release")?;
        self.settle("release", self.acker.nack(requeue())).await
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

fn requeue() -> BasicNackOptions {
    BasicNackOptions {
        multiple: false,
        requeue: true,
    }
}
