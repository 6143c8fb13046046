//! Settling deliveries: a plain ack goes out unconfirmed (DESIGN §5.6); every other settlement
//! is a confirmed (double) ack, bounded by the request timeout.
//!
//! nats-server answers every ack that carries a reply subject, whether or not the message is
//! still pending for this delivery: a confirmed `+WPI` proves the server got it, not that the
//! lease was still held, and an ack from a delivery whose lease already expired still removes
//! the (redelivered) message.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::AckKind;
use async_trait::async_trait;
use bytes::Bytes;
use fleet_core::broker::{ladder_label, ladder_step};
use fleet_core::{Acker, BrokerError, ParkInfo};
use fleet_protocol::DeadLetterInfo;
use fleet_protocol::deadletter::headers::ATTEMPT;

use crate::copies::{copy_headers, retry_msg_id};
use crate::shared::Shared;
use crate::wire::{NO_REPLY, bounded, insert_headers, keep_header, plain_copy_headers};

/// Stream and stream sequence of a delivery, when its ack subject names them.
pub(crate) type Origin = Option<(Arc<str>, u64)>;

/// Settles one delivery of a durable pull consumer.
///
/// It holds no `jetstream::message::Acker`: every settlement publishes on the shared client
/// (the context's own), so the per-delivery context clone is not needed.
pub(crate) struct NatsAcker {
    pub(crate) shared: Arc<Shared>,
    /// The stage whose DLQ gets this message (jobs); `None` uses the dead letter's stage.
    /// Shared by the subscription's deliveries.
    pub(crate) dlq_stage: Option<Arc<str>>,
    pub(crate) body: Bytes,
    pub(crate) headers: Option<HeaderMap>,
    pub(crate) lease: Duration,
    /// The delivery's ack subject, to confirm settlements through the client's shared
    /// request inbox.
    pub(crate) reply: Option<async_nats::Subject>,
    /// The subject the message was published to (where an uncounted release puts its copy and
    /// where replay sends a parked message back).
    pub(crate) subject: async_nats::Subject,
    /// The attempt this delivery is (a retry or release copy carries the attempts before it as
    /// `fleet-attempt`).
    pub(crate) attempt: u32,
    /// Stream and stream sequence, for de-duplication ids of copies (the stream name is
    /// shared by the subscription's deliveries).
    pub(crate) origin: Origin,
}

impl NatsAcker {
    /// De-duplication id of the dead-letter copy (`dlq-<stream>-<stream sequence>`), so that
    /// dead-lettering the same stored message twice (Term lost, redelivered) keeps one copy.
    /// Built when needed, not per delivery (most deliveries are acked).
    fn dlq_msg_id(&self) -> Option<String> {
        self.origin
            .as_ref()
            .map(|(stream, seq)| format!("dlq-{stream}-{seq}"))
    }

    /// `Nats-Msg-Id` of this attempt's retry copy (see [`crate::retry`]); built when needed.
    fn retry_id(&self) -> String {
        let origin = self
            .origin
            .as_ref()
            .map_or_else(String::new, |(stream, seq)| format!("{stream}-{seq}"));
        let original = self
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|v| v.as_str());
        retry_msg_id(original, &origin, self.attempt)
    }

    /// Sends `kind` and waits (bounded) for the server's confirmation.
    async fn confirmed(&self, kind: AckKind, what: &str) -> Result<(), BrokerError> {
        let shared = &self.shared;
        if !shared.is_up() {
            return Err(shared.lost(what));
        }
        // A request through the client's shared inbox costs a third less CPU than
        // `double_ack_with`, which subscribes and unsubscribes a fresh inbox per settlement.
        let sent = async {
            match &self.reply {
                Some(reply) => {
                    let request = shared.client.request(reply.clone(), kind.into());
                    match tokio::time::timeout(shared.opts.request_timeout, request).await {
                        Ok(r) => r.map(drop).map_err(|e| e.to_string()),
                        Err(_) => Err("ack confirmation timed out".to_owned()),
                    }
                }
                // What `double_ack_with` answers without a reply subject.
                None => Err(NO_REPLY.to_owned()),
            }
        };
        match bounded(shared.outer_limit(), sent).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                Err(shared.or_lost(what, ack_error(what, &e, shared.opts.request_timeout)))
            }
            Err(e) => Err(shared.or_lost(what, e)),
        }
    }
}

fn ack_error(what: &str, e: &dyn std::fmt::Display, limit: Duration) -> BrokerError {
    let text = e.to_string();
    if text.contains("timed out") {
        BrokerError::Timeout(limit)
    } else {
        BrokerError::ConnectionLost(format!("{what}: {text}"))
    }
}

#[async_trait]
impl Acker for NatsAcker {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        // DESIGN §5.6: an ack needs no confirmation (its terminal event is already durable, and
        // a lost ack is a redelivery that the job id de-duplicates). A plain `+ACK` is only
        // queued on the connection: no reply, no inbox, no timer, and the slot is not held for
        // a round trip. The client flushes it; `close` drains.
        let this = *self;
        let shared = &this.shared;
        if !shared.is_up() {
            return Err(shared.lost("ack"));
        }
        // The acker is consumed: its reply subject moves into the publish.
        let sent = match this.reply {
            Some(reply) => shared
                .client
                .publish(reply, "+ACK".into())
                .await
                .map_err(|e| e.to_string()),
            // What `jetstream::message::Acker::ack` answers without a reply subject.
            None => Err(NO_REPLY.to_owned()),
        };
        sent.map_err(|e| shared.or_lost("ack", BrokerError::ConnectionLost(format!("ack: {e}"))))
    }

    async fn retry(self: Box<Self>, delay: Duration) -> Result<Duration, BrokerError> {
        let ladder = self.shared.ladder();
        let step = ladder_step(&ladder, delay);
        let parked = match &self.dlq_stage {
            // A job waits in the retry stream, outside the consumer's pending window (see
            // `retry`); elsewhere (no ladder step to wait on, no delay, not a job) it is nak'd.
            Some(stage) if !delay.is_zero() && ladder.contains(&step) => Some(stage),
            _ => None,
        };
        let Some(stage) = parked else {
            let kind = if delay.is_zero() {
                AckKind::Nak(None)
            } else {
                AckKind::Nak(Some(delay))
            };
            self.confirmed(kind, "retry (nak with delay)").await?;
            return Ok(delay);
        };
        let subject = self.shared.names().retry_queue(stage, &ladder_label(step));
        let headers = copy_headers(self.headers.as_ref(), self.attempt, &self.retry_id());
        self.shared
            .publish_raw(subject, headers, self.body.clone())
            .await?;
        // Only once the copy is confirmed: remove the original.
        self.confirmed(AckKind::Ack, "ack after parking the retry")
            .await?;
        Ok(step)
    }

    async fn dead_letter(self: Box<Self>, info: &DeadLetterInfo) -> Result<(), BrokerError> {
        let stage = self.dlq_stage.as_deref().unwrap_or(&info.stage);
        crate::wire::check_token("stage", stage)?;
        let subject = self.shared.names().dlq(stage);
        let mut headers = HeaderMap::new();
        if let Some(original) = &self.headers {
            for (name, values) in original.iter() {
                let name_str: &str = name.as_ref();
                if keep_header(name_str) {
                    for value in values {
                        headers.append(name.clone(), value.clone());
                    }
                }
            }
        }
        insert_headers(&mut headers, &info.to_headers())?;
        // A copy put back by an uncounted release carries `fleet-attempt`: the dead letter's own
        // deliveries (to the coordinator's archive) count from 1.
        headers.insert(ATTEMPT, "0");
        if let Some(id) = self.dlq_msg_id() {
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                crate::wire::header_value(&id),
            );
        }
        self.shared
            .publish_raw(subject, headers, self.body.clone())
            .await?;
        // Only once the copy is confirmed: stop redelivery of the original.
        self.confirmed(AckKind::Term, "term after dead-lettering")
            .await
    }

    async fn release(self: Box<Self>) -> Result<(), BrokerError> {
        self.confirmed(AckKind::Nak(None), "release (nak)").await
    }

    async fn release_uncounted(self: Box<Self>) -> Result<(), BrokerError> {
        // A Nak raises the server's delivery count: put a copy back that carries the attempts
        // made before this delivery instead (its own count starts again at 1), then ack.
        let mut headers = plain_copy_headers(self.headers.as_ref());
        let made = self.attempt.saturating_sub(1);
        insert_headers(&mut headers, &vec![(ATTEMPT.into(), made.to_string())])?;
        if let Err(e) = self
            .shared
            .publish_raw(self.subject.to_string(), headers, self.body.clone())
            .await
        {
            tracing::warn!(subject = %self.subject, error = %e,
                "nats: could not put back an uncounted copy; naking (costs an attempt)");
            return self.confirmed(AckKind::Nak(None), "release (nak)").await;
        }
        self.confirmed(AckKind::Ack, "ack after putting back a copy")
            .await
    }

    async fn park(self: Box<Self>, info: &ParkInfo) -> Result<(), BrokerError> {
        let subject = format!("{}.{}", self.shared.names().parked(), self.subject);
        let mut headers = plain_copy_headers(self.headers.as_ref());
        insert_headers(&mut headers, &info.to_headers(self.subject.as_str()))?;
        if let Some((stream, seq)) = &self.origin {
            // Parking the same stored message twice (ack lost, redelivered) keeps one copy.
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                crate::wire::header_value(&format!("park-{stream}-{seq}")),
            );
        }
        self.shared
            .publish_raw(subject, headers, self.body.clone())
            .await?;
        self.confirmed(AckKind::Term, "term after parking").await
    }

    async fn extend(&self) -> Result<(), BrokerError> {
        self.confirmed(AckKind::Progress, "extend (in progress)")
            .await
            .map_err(|e| BrokerError::ConnectionLost(format!("lease lost: {e}")))
    }

    fn lease(&self) -> Option<Duration> {
        Some(self.lease)
    }
}

/// Control messages are read without acks (ordered consumer): settling does nothing.
pub(crate) struct ControlAcker;

#[async_trait]
impl Acker for ControlAcker {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn retry(self: Box<Self>, delay: Duration) -> Result<Duration, BrokerError> {
        Ok(delay)
    }

    async fn dead_letter(self: Box<Self>, _info: &DeadLetterInfo) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn release(self: Box<Self>) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn park(self: Box<Self>, _info: &ParkInfo) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn extend(&self) -> Result<(), BrokerError> {
        Ok(())
    }

    fn lease(&self) -> Option<Duration> {
        None
    }
}
