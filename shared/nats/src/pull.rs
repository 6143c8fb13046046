//! Pulls from a durable consumer over one inbox per subscription.
//!
//! [`Puller`] subscribes `<inbox>.*` once and sends every pull request to
//! `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>` with its own reply `<inbox>.<n>`, so the
//! server's status for a request names the request. A request is `no_wait` with `expires` (what
//! async-nats' `fetch` sends): nats-server 2.9.10 holds it until the first message arrives or
//! `expires` passes, then ends it (408 with what was left, or no status once all came), so the
//! server never sends more than was asked. At most one request is open at a time, and one is
//! sent only when nothing is buffered, for the caller's `max`: what is still requested plus
//! what is buffered never exceeds what the caller asked for. Messages that arrive after a pull
//! returned stay buffered for the next one; those still buffered when the puller is shut down
//! or dropped are given back (Nak) at once instead of waiting out their `ack_wait`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::consumer::pull::BatchConfig;
use async_nats::jetstream::{self, AckKind};
use async_nats::{StatusCode, Subject, Subscriber};
use fleet_core::BrokerError;
use futures::{FutureExt, StreamExt};
use tokio::time::Instant;

use crate::shared::{JS_API_PREFIX, Shared};
use crate::topology::consumer_info_error;
use crate::wire::{NO_REPLY, bounded};

/// Shortest `expires` sent with a pull (a shorter positive `wait` waits this long).
pub const MIN_PULL_EXPIRES: Duration = Duration::from_millis(50);
/// Longest `wait` honoured by one `fetch` (longer ones are cut to this).
pub const MAX_PULL_WAIT: Duration = Duration::from_secs(300);
/// How long past `expires` to wait for the server to end a pull before checking on the consumer.
pub(crate) const PULL_GRACE: Duration = Duration::from_secs(2);

/// Maps an error status of a pull to a broker error.
pub(crate) fn pull_item_error(
    shared: &Shared,
    what: &str,
    e: &dyn std::fmt::Display,
) -> BrokerError {
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
pub(crate) fn is_max_ack_pending(e: &dyn std::fmt::Display) -> bool {
    e.to_string()
        .to_lowercase()
        .replace(' ', "")
        .contains("maxackpending")
}

/// Gives messages back for immediate redelivery, best effort and bounded.
pub(crate) async fn release_all(
    shared: &Shared,
    msgs: impl IntoIterator<Item = jetstream::Message>,
) {
    release_raw(shared, msgs.into_iter().map(|m| m.message)).await;
}

/// [`release_all`] for messages as the pull inbox received them: a Nak published on the
/// shared client (the context's own), what `jetstream::Message::ack_with` sends.
pub(crate) async fn release_raw(
    shared: &Shared,
    msgs: impl IntoIterator<Item = async_nats::Message>,
) {
    for msg in msgs {
        let Some(reply) = msg.reply else {
            tracing::debug!(error = %NO_REPLY, "nats: could not give back a pulled message");
            continue;
        };
        let sent = shared.client.publish(reply, AckKind::Nak(None).into());
        if let Ok(Err(e)) = bounded(shared.outer_limit(), sent).await {
            tracing::debug!(error = %e, "nats: could not give back a pulled message");
        }
    }
}

/// One pull of at most `max` messages over an inbox of its own (the retry movers' pull), waiting
/// at most about `wait` for the first.
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

/// The pull request the server has not ended yet.
struct Open {
    /// Its number: the last token of its reply subject.
    id: u64,
    /// Messages asked for and not yet received.
    left: usize,
    /// When the server should have ended it (its `expires` plus a grace).
    until: Instant,
    /// The client's disconnection count when it was sent: a reconnect loses it.
    generation: u64,
}

/// What one inbox message did to the pull.
enum Took {
    /// A message was buffered, or the item changed nothing (heartbeat, stale status).
    Nothing,
    /// The open request ended; `max_ack_pending` when the consumer is at its limit.
    Ended { max_ack_pending: bool },
}

/// One inbox, a buffer and the open pull request of one durable pull consumer.
pub(crate) struct Puller {
    shared: Arc<Shared>,
    consumer: PullConsumer,
    /// `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`.
    next_subject: Subject,
    /// The inbox; requests reply to `<inbox>.<id>`.
    inbox: String,
    /// `None` once shut down.
    sub: Option<Subscriber>,
    /// Received, not yet handed out. Kept as the inbox delivered them: a `jetstream::Message`
    /// would clone the JetStream context (two allocations) per message.
    ready: VecDeque<async_nats::Message>,
    open: Option<Open>,
    next_id: u64,
}

impl Puller {
    /// Subscribes the inbox of pulls from `consumer`.
    pub(crate) async fn open(
        shared: Arc<Shared>,
        consumer: PullConsumer,
        what: &str,
    ) -> Result<Puller, BrokerError> {
        let info = consumer.cached_info();
        let next_subject = Subject::from(format!(
            "{JS_API_PREFIX}.CONSUMER.MSG.NEXT.{}.{}",
            info.stream_name, info.name
        ));
        let inbox = shared.client.new_inbox();
        let sub = bounded(
            shared.outer_limit(),
            shared.client.subscribe(format!("{inbox}.*")),
        )
        .await
        .map_err(|e| shared.or_lost(what, e))?
        .map_err(|e| shared.or_lost(what, BrokerError::ConnectionLost(format!("{what}: {e}"))))?;
        shared.pull_inboxes.fetch_add(1, Ordering::Relaxed);
        Ok(Puller {
            shared,
            consumer,
            next_subject,
            inbox,
            sub: Some(sub),
            ready: VecDeque::new(),
            open: None,
            next_id: 0,
        })
    }

    /// Up to `max` (> 0) messages, waiting about `wait` for the first: what is buffered at once,
    /// else what the open request brings, else what a new request for `max` brings.
    pub(crate) async fn pull(
        &mut self,
        max: usize,
        wait: Duration,
        what: &str,
    ) -> Result<Vec<async_nats::Message>, BrokerError> {
        let started = Instant::now();
        let expires = if wait.is_zero() {
            Duration::ZERO
        } else {
            wait.max(MIN_PULL_EXPIRES)
        };
        let mut sent = false;
        let mut at_max_ack_pending = false;
        loop {
            if self
                .open
                .as_ref()
                .is_some_and(|o| o.generation != self.shared.conn.disconnects())
            {
                // The server forgot the requests of the old connection.
                self.open = None;
            }
            if self.sub.is_none() {
                return Err(self.inbox_closed(what));
            }
            // Whatever already came, without waiting.
            while let Some(item) = self.sub.as_mut().and_then(|s| s.next().now_or_never()) {
                let Some(msg) = item else {
                    return Err(self.inbox_closed(what));
                };
                at_max_ack_pending |= self.take(msg, what).await?;
            }
            if !self.ready.is_empty() {
                let n = max.min(self.ready.len());
                return Ok(self.ready.drain(..n).collect());
            }
            if self.open.is_none() {
                if sent {
                    // Ours ended with nothing. At max_ack_pending some servers answer at once
                    // (409): that is "nothing for you now", so wait like an empty pull would.
                    if at_max_ack_pending {
                        tokio::time::sleep_until(started + expires).await;
                    }
                    return self.nothing(what);
                }
                if Instant::now() >= started + expires && !expires.is_zero() {
                    return self.nothing(what);
                }
                self.request(max, expires, what).await?;
                sent = true;
            }
            let Some(open_until) = self.open.as_ref().map(|o| o.until) else {
                continue;
            };
            // Our own request is waited for until the server ends it; an older one (left by a
            // pull that returned early or was dropped) only for this pull's own wait.
            let until = if sent {
                open_until
            } else {
                open_until.min(started + expires)
            };
            let Some(sub) = self.sub.as_mut() else {
                continue;
            };
            match tokio::time::timeout_at(until, sub.next()).await {
                Ok(Some(msg)) => at_max_ack_pending |= self.take(msg, what).await?,
                Ok(None) => return Err(self.inbox_closed(what)),
                Err(_) if Instant::now() >= open_until => {
                    // nats-server 2.9.10 does not answer a pull for a consumer that does not
                    // exist: find out whether ours is still there.
                    self.open = None;
                    if !self.shared.is_up() {
                        return Err(self.shared.lost(what));
                    }
                    let info = bounded(self.shared.outer_limit(), self.consumer.get_info())
                        .await
                        .map_err(|e| self.shared.or_lost(what, e))?;
                    info.map_err(|e| consumer_info_error(what, e))?;
                    if sent {
                        return self.nothing(what);
                    }
                }
                Err(_) => return self.nothing(what),
            }
        }
    }

    /// Buffers a message or applies a status; true when the consumer is at max_ack_pending.
    async fn take(&mut self, msg: async_nats::Message, what: &str) -> Result<bool, BrokerError> {
        match self.classify(msg, what) {
            Ok(Took::Nothing) => Ok(false),
            Ok(Took::Ended { max_ack_pending }) => Ok(max_ack_pending),
            Err(e) => {
                release_raw(&self.shared, std::mem::take(&mut self.ready)).await;
                Err(e)
            }
        }
    }

    fn classify(&mut self, msg: async_nats::Message, what: &str) -> Result<Took, BrokerError> {
        let status = msg.status.unwrap_or(StatusCode::OK);
        if status == StatusCode::OK {
            if let Some(open) = &mut self.open {
                open.left = open.left.saturating_sub(1);
                if open.left == 0 {
                    // All came: the server ends such a request without a status.
                    self.open = None;
                }
            }
            self.ready.push_back(msg);
            return Ok(Took::Nothing);
        }
        if status == StatusCode::IDLE_HEARTBEAT {
            return Ok(Took::Nothing);
        }
        let id = msg
            .subject
            .as_str()
            .rsplit_once('.')
            .and_then(|(_, id)| id.parse::<u64>().ok());
        if self.open.as_ref().map(|o| o.id) != id {
            // The end of a request already given up on (reconnect, or no answer in time).
            return Ok(Took::Nothing);
        }
        self.open = None;
        if status == StatusCode::NOT_FOUND || status == StatusCode::TIMEOUT {
            return Ok(Took::Ended {
                max_ack_pending: false,
            });
        }
        let text = format!(
            "pull ended with status {status}: {}",
            msg.description.as_deref().unwrap_or("")
        );
        if is_max_ack_pending(&text) {
            return Ok(Took::Ended {
                max_ack_pending: true,
            });
        }
        Err(pull_item_error(&self.shared, what, &text))
    }

    /// Sends a request for `max` messages (no `expires` when it is zero: answered at once).
    async fn request(
        &mut self,
        max: usize,
        expires: Duration,
        what: &str,
    ) -> Result<(), BrokerError> {
        let shared = &self.shared;
        let id = self.next_id;
        self.next_id += 1;
        let answer_within = if expires.is_zero() {
            shared.opts.request_timeout
        } else {
            expires + PULL_GRACE
        };
        // Counted as open before it is sent: a pull dropped half-way may still have sent it.
        self.open = Some(Open {
            id,
            left: max,
            until: Instant::now() + answer_within,
            generation: shared.conn.disconnects(),
        });
        let body = serde_json::to_vec(&BatchConfig {
            batch: max,
            expires: (!expires.is_zero()).then_some(expires),
            no_wait: true,
            ..BatchConfig::default()
        })
        .map_err(|e| BrokerError::Rejected(format!("{what}: {e}")))?;
        let sent = bounded(
            shared.outer_limit(),
            shared.client.publish_with_reply(
                self.next_subject.clone(),
                format!("{}.{id}", self.inbox),
                body.into(),
            ),
        )
        .await
        .map_err(|e| shared.or_lost(what, e))
        .and_then(|r| {
            r.map_err(|e| shared.or_lost(what, BrokerError::ConnectionLost(format!("{what}: {e}"))))
        });
        if sent.is_err() {
            self.open = None;
        }
        sent
    }

    fn nothing(&self, what: &str) -> Result<Vec<async_nats::Message>, BrokerError> {
        if self.shared.is_up() {
            Ok(Vec::new())
        } else {
            Err(self.shared.lost(what))
        }
    }

    fn inbox_closed(&mut self, what: &str) -> BrokerError {
        self.sub = None;
        self.shared.or_lost(
            what,
            BrokerError::ConnectionLost(format!("{what}: the pull inbox is closed")),
        )
    }

    /// Stops pulling: unsubscribes (taking what is still on its way) and gives back everything
    /// buffered. Later pulls fail.
    pub(crate) async fn shut_down(&mut self) {
        self.open = None;
        let ready = std::mem::take(&mut self.ready);
        give_back(self.shared.clone(), self.sub.take(), ready).await;
    }
}

impl Drop for Puller {
    fn drop(&mut self) {
        if let Some(sub) = self.sub.as_mut() {
            while let Some(Some(msg)) = sub.next().now_or_never() {
                if msg.status.is_none_or(|s| s == StatusCode::OK) {
                    self.ready.push_back(msg);
                }
            }
        }
        if self.ready.is_empty() && self.open.is_none() {
            // Dropping the subscriber unsubscribes.
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let shared = self.shared.clone();
        let sub = self.sub.take();
        let ready = std::mem::take(&mut self.ready);
        runtime.spawn(give_back(shared, sub, ready));
    }
}

/// Unsubscribes `sub`, taking the messages still on their way, and Naks all of them with
/// `ready` (best effort, bounded).
async fn give_back(
    shared: Arc<Shared>,
    sub: Option<Subscriber>,
    mut ready: VecDeque<async_nats::Message>,
) {
    if let Some(mut sub) = sub
        && shared.is_up()
        // Sending the unsubscribe waits for room in the client's command queue: bounded too.
        && matches!(bounded(shared.outer_limit(), sub.drain()).await, Ok(Ok(())))
    {
        // The client closes the inbox once the server confirmed the unsubscribe.
        let rest = tokio::time::timeout(shared.opts.request_timeout, async {
            while let Some(msg) = sub.next().await {
                if msg.status.is_none_or(|s| s == StatusCode::OK) {
                    ready.push_back(msg);
                }
            }
        });
        let _ = rest.await;
    }
    release_raw(&shared, ready).await;
}
