//! Subscriptions: bounded pulls from a durable consumer, and the replaying control feed.
//!
//! [`PullSubscription`] pulls over one persistent inbox (see [`crate::pull`]): a fetch asks the
//! server for at most the caller's `max`, returns as soon as something is there, and keeps what
//! arrives afterwards for the next fetch; what is still buffered when the subscription is
//! stopped, closed or dropped is given back (Nak) at once. The retry movers pull
//! with `pull::pull_once` (an inbox per call).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::pull::{self, Ordered, OrderedConfig};
use async_nats::jetstream::consumer::{DeliverPolicy, FromConsumer, PullConsumer};
use async_trait::async_trait;
use fleet_core::{BrokerError, Delivery, Subscription};
use futures::{FutureExt, StreamExt};

use crate::ack_info;
use crate::acker::{ControlAcker, NatsAcker, Origin};
use crate::attempts::{AttemptMemory, REMEMBERED};
use crate::copies::attempts_before;
use crate::pull::Puller;
use crate::retry::Movers;
use crate::shared::Shared;
use crate::topology::{consumer_error, consumer_info_error};
use crate::wire::{bounded, from_header_map};

pub use crate::pull::{MAX_PULL_WAIT, MIN_PULL_EXPIRES};

/// The attempt a server delivery count (`info().delivered`; `None` without one) stands for,
/// from 1.
fn attempt_of(delivered: Option<i64>) -> u32 {
    u32::try_from(delivered.unwrap_or(1).max(1)).unwrap_or(u32::MAX)
}

/// A durable pull consumer (jobs, dead letters, events, submissions).
pub(crate) struct PullSubscription {
    shared: Arc<Shared>,
    puller: Puller,
    /// "pulling from consumer <name> on <stream>", for errors.
    what: String,
    /// Set by `stop`: no more pulls.
    stopped: bool,
    /// Shared with every delivery's acker (one allocation per subscription, not per job).
    dlq_stage: Option<Arc<str>>,
    /// The stream name, shared with every delivery's acker as its origin.
    stream: Arc<str>,
    lease: Duration,
    attempts: AttemptMemory,
    /// The stage's retry movers (jobs subscriptions only); dropped with the subscription.
    pub(crate) movers: Option<Movers>,
}

impl PullSubscription {
    /// Binds to the existing durable consumer `name` on `stream`.
    pub(crate) async fn open(
        shared: Arc<Shared>,
        stream: String,
        name: String,
        dlq_stage: Option<String>,
    ) -> Result<PullSubscription, BrokerError> {
        let what = format!("subscribing to consumer {name} on {stream}");
        if !shared.is_up() {
            return Err(shared.lost(&what));
        }
        let handle = shared
            .js
            .get_stream_no_info(&stream)
            .await
            .map_err(|e| BrokerError::Rejected(format!("{what}: {e}")))?;
        let info = bounded(shared.outer_limit(), handle.consumer_info(&name))
            .await
            .map_err(|e| shared.or_lost(&what, e))?
            .map_err(|e| consumer_info_error(&what, e))?;
        if info.config.deliver_subject.is_some() {
            return Err(BrokerError::Config(format!(
                "{what}: it is a push consumer"
            )));
        }
        let config = pull::Config::try_from_consumer_config(info.config.clone())
            .map_err(|e| BrokerError::Config(format!("{what}: {e}")))?;
        let lease = info.config.ack_wait;
        let consumer = PullConsumer::new(config, info, shared.js.clone());
        let puller = Puller::open(shared.clone(), consumer, &what).await?;
        Ok(PullSubscription {
            shared,
            puller,
            what: format!("pulling from consumer {name} on {stream}"),
            stopped: false,
            dlq_stage: dlq_stage.map(Arc::from),
            stream: Arc::from(stream),
            lease,
            attempts: AttemptMemory::new(REMEMBERED),
            movers: None,
        })
    }

    /// Stream (shared when it is this subscription's), stream sequence and delivery count
    /// of `msg`, from its ack subject: parsed once per delivery.
    fn origin(&self, msg: async_nats::Message) -> (async_nats::Message, Origin, Option<i64>) {
        let stream = |name: &str| {
            if name == &*self.stream {
                self.stream.clone()
            } else {
                Arc::from(name)
            }
        };
        let read = msg
            .reply
            .as_deref()
            .and_then(ack_info::read)
            .map(|i| ((stream(i.stream), i.stream_sequence), i.delivered));
        if let Some((origin, delivered)) = read {
            return (msg, Some(origin), Some(delivered));
        }
        // What the fast reading leaves (no or odd reply subject): async-nats decides.
        let msg = jetstream::Message {
            message: msg,
            context: self.shared.js.clone(),
        };
        let (origin, delivered) = match msg.info() {
            Ok(i) => (
                Some((stream(i.stream), i.stream_sequence)),
                Some(i.delivered),
            ),
            Err(_) => (None, None),
        };
        (msg.message, origin, delivered)
    }

    fn delivery(&mut self, msg: async_nats::Message) -> Delivery {
        let (msg, origin, count) = self.origin(msg);
        let delivered = match &origin {
            Some((_, seq)) => self.attempts.attempt(*seq, attempt_of(count)),
            None => attempt_of(count),
        };
        // A retry copy or a copy put back by an uncounted release (jobs only) carries the
        // attempts made before it (see `retry`); its own (monotonic) delivery count goes on.
        let before = if self.dlq_stage.is_some() {
            attempts_before(msg.headers.as_ref())
        } else {
            0
        };
        let attempt = before.saturating_add(delivered);
        // The ids of copies (retry, dead letter) are built by the acker when it makes one.
        // Subject, reply and headers move into the acker: nothing is cloned but the body.
        Delivery {
            body: msg.payload.clone(),
            headers: from_header_map(msg.headers.as_ref()),
            attempt,
            acker: Box::new(NatsAcker {
                shared: self.shared.clone(),
                dlq_stage: self.dlq_stage.clone(),
                body: msg.payload,
                headers: msg.headers,
                lease: self.lease,
                reply: msg.reply,
                subject: msg.subject,
                attempt,
                origin,
            }),
        }
    }
}

#[async_trait]
impl Subscription for PullSubscription {
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BrokerError> {
        let wait = wait.min(MAX_PULL_WAIT);
        if max == 0 {
            return Ok(Vec::new());
        }
        if self.stopped {
            tokio::time::sleep(wait).await;
            return Ok(Vec::new());
        }
        if !self.shared.is_up() {
            return Err(self.shared.lost(&self.what));
        }
        let msgs = self.puller.pull(max, wait, &self.what).await?;
        Ok(msgs.into_iter().map(|m| self.delivery(m)).collect())
    }

    async fn stop(&mut self) {
        self.stopped = true;
        self.puller.shut_down().await;
    }

    async fn close(mut self: Box<Self>) {
        self.puller.shut_down().await;
    }
}

/// Cancellations: an ephemeral ordered consumer over `<p>.control.>` that starts with the last
/// message of every subject (the kept cancellations) and then follows new ones.
pub(crate) struct ControlSubscription {
    shared: Arc<Shared>,
    messages: Ordered,
    what: String,
}

impl ControlSubscription {
    /// Creates the ordered consumer.
    pub(crate) async fn open(
        shared: Arc<Shared>,
        stream: String,
        prefix: &str,
    ) -> Result<ControlSubscription, BrokerError> {
        let what = format!("subscribing to {stream}");
        if !shared.is_up() {
            return Err(shared.lost(&what));
        }
        let handle = shared
            .js
            .get_stream_no_info(&stream)
            .await
            .map_err(|e| BrokerError::Rejected(format!("{what}: {e}")))?;
        let config = OrderedConfig {
            filter_subject: format!("{prefix}.control.>"),
            deliver_policy: DeliverPolicy::LastPerSubject,
            ..Default::default()
        };
        let limit = shared.outer_limit();
        let consumer = bounded(limit, handle.create_consumer(config))
            .await
            .map_err(|e| shared.or_lost(&what, e))?
            .map_err(|e| shared.or_lost(&what, consumer_error(&what, e)))?;
        let messages = bounded(limit, consumer.messages())
            .await
            .map_err(|e| shared.or_lost(&what, e))?
            .map_err(|e| {
                shared.or_lost(&what, BrokerError::ConnectionLost(format!("{what}: {e}")))
            })?;
        Ok(ControlSubscription {
            shared,
            messages,
            what: format!("reading {stream}"),
        })
    }

    fn delivery(msg: jetstream::Message) -> Delivery {
        let attempt = attempt_of(msg.info().ok().map(|i| i.delivered));
        let msg = msg.message;
        Delivery {
            headers: from_header_map(msg.headers.as_ref()),
            body: msg.payload,
            attempt,
            acker: Box::new(ControlAcker),
        }
    }

    fn item(
        &self,
        item: Option<Result<jetstream::Message, pull::OrderedError>>,
    ) -> Result<Delivery, BrokerError> {
        match item {
            Some(Ok(msg)) => Ok(Self::delivery(msg)),
            Some(Err(e)) => Err(self.shared.or_lost(
                &self.what,
                BrokerError::ConsumerCancelled(format!("{}: {e}", self.what)),
            )),
            None => Err(BrokerError::ConsumerCancelled(format!(
                "{}: feed ended",
                self.what
            ))),
        }
    }
}

#[async_trait]
impl Subscription for ControlSubscription {
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BrokerError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        if !self.shared.is_up() {
            return Err(self.shared.lost(&self.what));
        }
        let wait = wait.min(MAX_PULL_WAIT);
        let first = match tokio::time::timeout(wait, self.messages.next()).await {
            Ok(item) => self.item(item)?,
            Err(_) if self.shared.is_up() => return Ok(Vec::new()),
            Err(_) => return Err(self.shared.lost(&self.what)),
        };
        let mut out = vec![first];
        // Then whatever is already buffered, without waiting.
        while out.len() < max {
            match self.messages.next().now_or_never() {
                Some(item) => out.push(self.item(item)?),
                None => break,
            }
        }
        Ok(out)
    }
}
