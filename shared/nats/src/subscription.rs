//! Subscriptions: bounded pulls from a durable consumer, and the replaying control feed.
//!
//! A pull asks the server for at most `max` messages (`fetch().max_messages(max)
//! .expires(wait)`, which sends `no_wait` with `expires`): nats-server 2.9.10 holds such a request
//! until the first message arrives or `expires` passes, then ends it, so `fetch` returns as soon as
//! something is there and nothing is ever buffered beyond what was asked for. The pull runs in its
//! own task: if the caller drops `fetch` half-way, whatever arrives is given back at once (Nak)
//! instead of waiting out its `ack_wait`.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::pull::{self, Ordered, OrderedConfig};
use async_nats::jetstream::consumer::{DeliverPolicy, FromConsumer, PullConsumer};
use async_nats::jetstream::{self, AckKind};
use async_trait::async_trait;
use fleet_core::{BrokerError, Delivery, Subscription};
use futures::{FutureExt, StreamExt};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::acker::{ControlAcker, NatsAcker};
use crate::attempts::{AttemptMemory, REMEMBERED};
use crate::copies::attempts_before;
use crate::retry::Movers;
use crate::shared::Shared;
use crate::topology::{consumer_error, consumer_info_error};
use crate::wire::{bounded, from_header_map};

/// Shortest `expires` sent with a pull (a shorter positive `wait` waits this long).
pub const MIN_PULL_EXPIRES: Duration = Duration::from_millis(50);
/// Longest `wait` honoured by one `fetch` (longer ones are cut to this).
pub const MAX_PULL_WAIT: Duration = Duration::from_secs(300);
/// How long past `expires` to wait for the server to end a pull before checking on the consumer.
const PULL_GRACE: Duration = Duration::from_secs(2);

/// The server's delivery count of a JetStream delivery (`info().delivered`, from 1).
fn attempt_of(msg: &jetstream::Message) -> u32 {
    let delivered = msg.info().map(|i| i.delivered).unwrap_or(1).max(1);
    u32::try_from(delivered).unwrap_or(u32::MAX)
}

/// Maps an error item of a pull to a broker error.
fn pull_item_error(shared: &Shared, what: &str, e: &dyn std::fmt::Display) -> BrokerError {
    let text = e.to_string();
    let lower = text.to_lowercase();
    if lower.contains("consumer deleted")
        || lower.contains("503")
        || lower.contains("no responders")
    {
        BrokerError::ConsumerCancelled(format!("{what}: {text}"))
    } else if lower.contains("leadership change") || lower.contains("server shutdown") {
        BrokerError::ConnectionLost(format!("{what}: {text}"))
    } else if lower.contains("exceeded max") {
        BrokerError::Rejected(format!("{what}: {text}"))
    } else if !shared.is_up() {
        shared.lost(what)
    } else {
        BrokerError::ConsumerCancelled(format!("{what}: {text}"))
    }
}

/// True for the 409 "Exceeded MaxAckPending" status of a pull.
fn is_max_ack_pending(e: &dyn std::fmt::Display) -> bool {
    e.to_string()
        .to_lowercase()
        .replace(' ', "")
        .contains("maxackpending")
}

/// A durable pull consumer (jobs, dead letters, events, submissions).
pub(crate) struct PullSubscription {
    shared: Arc<Shared>,
    consumer: PullConsumer,
    stream: String,
    name: String,
    dlq_stage: Option<String>,
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
        Ok(PullSubscription {
            shared,
            consumer,
            stream,
            name,
            dlq_stage,
            lease,
            attempts: AttemptMemory::new(REMEMBERED),
            movers: None,
        })
    }

    fn delivery(&mut self, msg: jetstream::Message) -> Delivery {
        let info = msg
            .info()
            .ok()
            .map(|i| (i.stream.to_owned(), i.stream_sequence));
        let delivered = match &info {
            Some((_, seq)) => self.attempts.attempt(*seq, attempt_of(&msg)),
            None => attempt_of(&msg),
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
        let reply = msg.reply.clone();
        let subject = msg.subject.clone();
        let (msg, acker) = msg.split();
        Delivery {
            body: msg.payload.clone(),
            headers: from_header_map(msg.headers.as_ref()),
            attempt,
            acker: Box::new(NatsAcker {
                acker,
                shared: self.shared.clone(),
                dlq_stage: self.dlq_stage.clone(),
                body: msg.payload,
                headers: msg.headers,
                lease: self.lease,
                reply,
                subject,
                attempt,
                origin: info,
            }),
        }
    }
}

/// One pull of at most `max` messages, waiting at most about `wait` for the first.
pub(crate) async fn pull_once(
    shared: &Shared,
    consumer: &PullConsumer,
    what: &str,
    max: usize,
    wait: Duration,
) -> Result<Vec<jetstream::Message>, BrokerError> {
    let mut builder = consumer.fetch().max_messages(max);
    let expires = if wait.is_zero() {
        Duration::ZERO
    } else {
        wait.max(MIN_PULL_EXPIRES)
    };
    if !expires.is_zero() {
        builder = builder.expires(expires);
    }
    let mut batch = bounded(shared.outer_limit(), builder.messages())
        .await
        .map_err(|e| shared.or_lost(what, e))?
        .map_err(|e| shared.or_lost(what, BrokerError::ConnectionLost(format!("{what}: {e}"))))?;
    let started = Instant::now();
    let deadline = started
        + if expires.is_zero() {
            shared.opts.request_timeout
        } else {
            expires + PULL_GRACE
        };
    let mut out = Vec::new();
    let mut ended_by_server = true;
    loop {
        match tokio::time::timeout_at(deadline, batch.next()).await {
            Ok(Some(Ok(msg))) => out.push(msg),
            Ok(Some(Err(e))) if out.is_empty() && is_max_ack_pending(&e) => {
                // Some servers answer a `no_wait` pull at the max_ack_pending limit at once with
                // 409: that is "nothing for you now", so wait like an empty pull would.
                tokio::time::sleep_until(started + expires).await;
                break;
            }
            Ok(Some(Err(e))) => {
                let err = pull_item_error(shared, what, &e);
                release_all(shared, out).await;
                return Err(err);
            }
            Ok(None) => break,
            Err(_) => {
                ended_by_server = false;
                break;
            }
        }
    }
    if out.is_empty() {
        if !shared.is_up() {
            return Err(shared.lost(what));
        }
        if !ended_by_server {
            // nats-server 2.9.10 does not answer a pull for a consumer that does not exist:
            // find out whether ours is still there.
            let info = bounded(shared.outer_limit(), consumer.get_info())
                .await
                .map_err(|e| shared.or_lost(what, e))?;
            info.map_err(|e| consumer_info_error(what, e))?;
        }
    }
    Ok(out)
}

/// Gives messages back for immediate redelivery, best effort and bounded.
pub(crate) async fn release_all(shared: &Shared, msgs: Vec<jetstream::Message>) {
    for msg in msgs {
        if let Ok(Err(e)) = bounded(shared.outer_limit(), msg.ack_with(AckKind::Nak(None))).await {
            tracing::debug!(error = %e, "nats: could not give back a pulled message");
        }
    }
}

#[async_trait]
impl Subscription for PullSubscription {
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BrokerError> {
        let what = format!("pulling from consumer {} on {}", self.name, self.stream);
        if max == 0 {
            return Ok(Vec::new());
        }
        if !self.shared.is_up() {
            return Err(self.shared.lost(&what));
        }
        let wait = wait.min(MAX_PULL_WAIT);
        let (tx, rx) = oneshot::channel();
        let shared = self.shared.clone();
        let consumer = self.consumer.clone();
        let task_what = what.clone();
        tokio::spawn(async move {
            let result = pull_once(&shared, &consumer, &task_what, max, wait).await;
            if let Err(Ok(msgs)) = tx.send(result) {
                // fetch() was dropped: do not let these wait out their ack_wait.
                release_all(&shared, msgs).await;
            }
        });
        let msgs = rx
            .await
            .map_err(|_| BrokerError::ConnectionLost(format!("{what}: pull task ended")))??;
        Ok(msgs.into_iter().map(|m| self.delivery(m)).collect())
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
        let attempt = attempt_of(&msg);
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
