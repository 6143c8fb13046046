//! The `max_deliver` backstop: jobs the server gave up on become dead letters.
//!
//! When a job reaches its consumer's `max_deliver` (e.g. it SIGKILLs its worker on every
//! attempt), nats-server stops delivering it, publishes a `MAX_DELIVERIES` advisory
//! (`{stream, consumer, stream_seq, deliveries, timestamp}`) and leaves the message in the
//! WorkQueue stream `<P>_JOBS` for good. `<P>_BACKSTOP` keeps those advisories (see
//! [`crate::topology`]), and the dead-letter subscription of each stage drains its stage's
//! advisories before each pull of the DLQ ([`DeadLetterSubscription`]), so callers of
//! `Source::DeadLetters` (the coordinator's archive) see backstop dead letters like any other.
//!
//! For each advisory, in this order (each step idempotent, so a repeat after a crash is safe):
//!
//! 1. fetch the job by stream sequence (`STREAM.MSG.GET`); gone already → ack the advisory;
//! 2. publish it confirmed to `<p>.dlq.<stage>` with the dead-letter headers (`fleet-reason:
//!    poison`, `fleet-last-error-kind: lost`, the delivery count as attempts, the advisory's time,
//!    `x-backstop: delivery-limit` like the other backends) and `Nats-Msg-Id:
//!    dlq-<stream>-<seq>`, the id a worker's own dead-lettering of that message uses, so a
//!    repeat within the DLQ's duplicate window is stored once (and outside it, the identical
//!    headers make the archive's dedup key equal);
//! 3. delete the job from `<P>_JOBS` by sequence;
//! 4. ack the advisory.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::consumer::{FromConsumer, PullConsumer};
use async_nats::jetstream::stream::{DeleteMessageErrorKind, RawMessageErrorKind};
use async_nats::jetstream::{self, AckKind};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use fleet_core::{BrokerError, Delivery, Subscription};
use fleet_protocol::{DeadLetterInfo, DeadLetterReason, ErrorKind, decode_job};
use futures::StreamExt;
use serde::Deserialize;
use tokio::time::Instant;

use crate::shared::Shared;
use crate::subscription::PullSubscription;
use crate::topology::{backstop_consumer, consumer_info_error};
use crate::wire::keep_header;
use crate::wire::{bounded, header_value, insert_headers};

/// Most advisories handled per drain (the rest wait for the next fetch).
const DRAIN_BATCH: usize = 16;
/// Least time between two pulls of an idle advisory consumer (saves a request per DLQ fetch).
const IDLE_POLL: Duration = Duration::from_secs(1);
/// How long a failed advisory waits before it is handled again.
const RETRY_DELAY: Duration = Duration::from_secs(2);
/// How long to wait before binding again to an advisory consumer that was missing.
const REBIND_DELAY: Duration = Duration::from_secs(30);
/// Header marking a dead letter made by the broker's delivery limit (as on RabbitMQ and memory).
pub const BACKSTOP_HEADER: &str = "x-backstop";
/// Value of [`BACKSTOP_HEADER`].
pub const BACKSTOP_VALUE: &str = "delivery-limit";

/// A `MAX_DELIVERIES` advisory (`io.nats.jetstream.advisory.v1.max_deliver`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct Advisory {
    /// Stream holding the message.
    pub(crate) stream: String,
    /// Consumer that gave up (the stage).
    pub(crate) consumer: String,
    /// Sequence of the message in `stream`.
    pub(crate) stream_seq: u64,
    /// Deliveries made.
    pub(crate) deliveries: u64,
    /// When the server gave up (RFC 3339).
    #[serde(default)]
    pub(crate) timestamp: Option<String>,
}

impl Advisory {
    /// When the server gave up, if the advisory says.
    fn at(&self) -> Option<DateTime<Utc>> {
        let t = self.timestamp.as_deref()?;
        DateTime::parse_from_rfc3339(t)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

/// The dead-letter headers of a message the backstop gave up on (pure).
pub(crate) fn dead_letter_info(advisory: &Advisory, stage: &str, body: &[u8]) -> DeadLetterInfo {
    DeadLetterInfo {
        reason: DeadLetterReason::Poison,
        last_error_kind: Some(ErrorKind::Lost),
        last_error: format!(
            "the NATS server stopped delivering it after {} deliveries without an outcome \
             (max_deliver backstop of consumer {} on {})",
            advisory.deliveries, advisory.consumer, advisory.stream
        ),
        attempts: u32::try_from(advisory.deliveries).unwrap_or(u32::MAX),
        stage: stage.to_owned(),
        worker_id: String::new(),
        // The advisory's time, not now: a repeat then carries identical headers.
        at: advisory.at().unwrap_or_else(Utc::now),
        job_id: decode_job(body, usize::MAX).ok().map(|j| j.job_id),
    }
}

/// What became of one advisory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handled {
    /// Dead-lettered and removed from the jobs stream.
    DeadLettered,
    /// Nothing to do (already gone, foreign, unreadable): acked.
    Skipped,
}

/// The advisory consumer of one stage and what handling its advisories needs.
struct Backstop {
    shared: Arc<Shared>,
    stage: String,
    name: String,
    consumer: Option<PullConsumer>,
    /// No pull before this instant (idle advisory consumer, or missing consumer).
    next_pull: Instant,
}

impl Backstop {
    fn new(shared: Arc<Shared>, stage: String) -> Backstop {
        let name = backstop_consumer(&stage);
        Backstop {
            shared,
            stage,
            name,
            consumer: None,
            next_pull: Instant::now(),
        }
    }

    /// Binds to the durable advisory consumer; a missing one disables the backstop for a while.
    async fn bind(&mut self) -> Result<(), BrokerError> {
        let shared = &self.shared;
        let stream = shared.names().backstop_stream();
        let what = format!("binding to consumer {} on {stream}", self.name);
        let handle = shared
            .js
            .get_stream_no_info(&stream)
            .await
            .map_err(|e| BrokerError::Rejected(format!("{what}: {e}")))?;
        let info = bounded(shared.outer_limit(), handle.consumer_info(&self.name))
            .await
            .map_err(|e| shared.or_lost(&what, e))?
            .map_err(|e| consumer_info_error(&what, e))?;
        let config = pull::Config::try_from_consumer_config(info.config.clone())
            .map_err(|e| BrokerError::Config(format!("{what}: {e}")))?;
        self.consumer = Some(PullConsumer::new(config, info, shared.js.clone()));
        Ok(())
    }

    /// Handles the advisories waiting now (at most [`DRAIN_BATCH`]); never fails the caller's
    /// subscription: problems are logged and the advisory is handled again later.
    async fn drain(&mut self) {
        if Instant::now() < self.next_pull || !self.shared.is_up() {
            return;
        }
        if self.consumer.is_none()
            && let Err(e) = self.bind().await
        {
            tracing::warn!(
                stage = %self.stage,
                error = %e,
                "nats: the max_deliver backstop consumer {} is unavailable (declare the \
                 topology); jobs that reach max_deliver stay in the jobs stream until it is",
                self.name
            );
            self.next_pull = Instant::now() + REBIND_DELAY;
            return;
        }
        let msgs = match self.pull().await {
            Ok(msgs) => msgs,
            Err(e) => {
                tracing::warn!(stage = %self.stage, error = %e, "nats: pulling max_deliver advisories failed");
                if matches!(e, BrokerError::ConsumerCancelled(_)) {
                    self.consumer = None;
                }
                self.next_pull = Instant::now() + RETRY_DELAY;
                return;
            }
        };
        if msgs.len() < DRAIN_BATCH {
            self.next_pull = Instant::now() + IDLE_POLL;
        }
        for msg in msgs {
            self.settle(msg).await;
        }
    }

    /// One `no_wait` pull: whatever advisories are there now.
    async fn pull(&self) -> Result<Vec<jetstream::Message>, BrokerError> {
        let Some(consumer) = &self.consumer else {
            return Ok(Vec::new());
        };
        let shared = &self.shared;
        let what = format!("pulling advisories from {}", self.name);
        let limit = shared.outer_limit();
        let mut out = Vec::new();
        let pulled = bounded(limit, async {
            let mut batch = consumer
                .fetch()
                .max_messages(DRAIN_BATCH)
                .messages()
                .await
                .map_err(|e| BrokerError::ConnectionLost(format!("{what}: {e}")))?;
            while let Some(item) = batch.next().await {
                match item {
                    Ok(msg) => out.push(msg),
                    // A full max_ack_pending answers 409: nothing for us now.
                    Err(_) if !out.is_empty() => break,
                    Err(e) => return Err(BrokerError::ConsumerCancelled(format!("{what}: {e}"))),
                }
            }
            Ok(())
        })
        .await;
        match pulled {
            Ok(Ok(())) => Ok(out),
            Ok(Err(e)) if out.is_empty() => Err(shared.or_lost(&what, e)),
            Ok(Err(_)) => Ok(out),
            Err(timeout) if out.is_empty() => {
                // nats-server 2.9.10 does not answer a pull for a consumer that does not exist.
                bounded(limit, consumer.get_info())
                    .await
                    .map_err(|e| shared.or_lost(&what, e))?
                    .map_err(|e| consumer_info_error(&what, e))?;
                Err(shared.or_lost(&what, timeout))
            }
            Err(_) => Ok(out),
        }
    }

    /// Handles one advisory and settles it: ack when done or pointless, Nak(delay) to retry.
    async fn settle(&self, msg: jetstream::Message) {
        let limit = self.shared.outer_limit();
        match self.handle(&msg.payload).await {
            Ok(_) => {
                if let Err(e) = bounded(limit, msg.double_ack()).await.and_then(|r| {
                    r.map_err(|e| BrokerError::ConnectionLost(format!("acking an advisory: {e}")))
                }) {
                    // Redelivered after ack_wait: handling it again finds the job gone.
                    tracing::debug!(stage = %self.stage, error = %e, "nats: acking a max_deliver advisory failed");
                }
            }
            Err(e) => {
                tracing::warn!(
                    stage = %self.stage,
                    error = %e,
                    "nats: dead-lettering a job the max_deliver backstop gave up on failed; \
                     retrying in {RETRY_DELAY:?}"
                );
                if let Ok(Err(e)) =
                    bounded(limit, msg.ack_with(AckKind::Nak(Some(RETRY_DELAY)))).await
                {
                    tracing::debug!(error = %e, "nats: could not nak a max_deliver advisory");
                }
            }
        }
    }

    /// Steps 1–3 of the module doc for one advisory body.
    async fn handle(&self, payload: &[u8]) -> Result<Handled, BrokerError> {
        let shared = &self.shared;
        let names = shared.names();
        let advisory: Advisory = match serde_json::from_slice(payload) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(stage = %self.stage, error = %e, "nats: unreadable max_deliver advisory dropped");
                return Ok(Handled::Skipped);
            }
        };
        let jobs = names.jobs_stream();
        if advisory.stream != jobs || advisory.consumer != self.stage {
            tracing::warn!(stage = %self.stage, ?advisory, "nats: max_deliver advisory for another consumer dropped");
            return Ok(Handled::Skipped);
        }
        let seq = advisory.stream_seq;
        let what = format!("dead-lettering {jobs} sequence {seq} (max_deliver backstop)");
        let limit = shared.outer_limit();
        let stream = shared
            .js
            .get_stream_no_info(&jobs)
            .await
            .map_err(|e| BrokerError::Rejected(format!("{what}: {e}")))?;
        let stored = match bounded(limit, stream.get_raw_message(seq)).await? {
            Ok(m) => m,
            Err(e) if matches!(e.kind(), RawMessageErrorKind::NoMessageFound) => {
                tracing::info!(
                    stage = %self.stage,
                    stream_sequence = seq,
                    "nats: a job the max_deliver backstop gave up on is already gone (handled \
                     before, or acked late)"
                );
                return Ok(Handled::Skipped);
            }
            Err(e) => {
                return Err(shared.or_lost(&what, BrokerError::Rejected(format!("{what}: {e}"))));
            }
        };
        // A jobs stream deleted and recreated restarts its sequences: a message stored after the
        // advisory was raised is another job, not the one the server gave up on.
        let raised = advisory
            .timestamp
            .as_deref()
            .and_then(|t| async_nats::datetime::parse_rfc3339(t).ok());
        if raised.is_some_and(|raised| stored.time > raised) {
            tracing::warn!(
                stage = %self.stage,
                stream_sequence = seq,
                "nats: max_deliver advisory older than the message now at its sequence \
                 (jobs stream recreated?); dropped"
            );
            return Ok(Handled::Skipped);
        }
        let mut info = dead_letter_info(&advisory, &self.stage, &stored.payload);
        // A retry copy's deliveries come on top of the attempts made before it (see `retry`).
        info.attempts = info
            .attempts
            .saturating_add(crate::copies::attempts_before(Some(&stored.headers)));
        let mut headers = HeaderMap::new();
        for (name, values) in stored.headers.iter() {
            let name_str: &str = name.as_ref();
            if keep_header(name_str) {
                for value in values {
                    headers.append(name.clone(), value.clone());
                }
            }
        }
        let mut extra = info.to_headers();
        extra.push((BACKSTOP_HEADER.into(), BACKSTOP_VALUE.into()));
        insert_headers(&mut headers, &extra)?;
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            header_value(&format!("dlq-{jobs}-{seq}")),
        );
        shared
            .publish_raw(names.dlq(&self.stage), headers, stored.payload)
            .await?;
        // Only once the copy is confirmed: remove the job the server will never deliver again.
        match bounded(limit, stream.delete_message(seq)).await? {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                return Err(shared.or_lost(
                    &what,
                    match e.kind() {
                        DeleteMessageErrorKind::TimedOut | DeleteMessageErrorKind::Request => {
                            BrokerError::ConnectionLost(format!("{what}: {e}"))
                        }
                        DeleteMessageErrorKind::JetStream(_) => {
                            BrokerError::Rejected(format!("{what}: {e}"))
                        }
                    },
                ));
            }
        }
        tracing::warn!(
            stage = %self.stage,
            stream_sequence = seq,
            deliveries = advisory.deliveries,
            job_id = info.job_id.as_deref().unwrap_or(""),
            "nats: job reached max_deliver without an outcome; dead-lettered as poison"
        );
        Ok(Handled::DeadLettered)
    }
}

/// True when deleting failed because the message is not there (already deleted or acked).
fn is_not_found(e: &async_nats::jetstream::stream::DeleteMessageError) -> bool {
    match e.kind() {
        DeleteMessageErrorKind::JetStream(err) => {
            let text = err.to_string().to_lowercase();
            text.contains("not found") || text.contains("no message")
        }
        _ => false,
    }
}

/// A stage's dead letters on NATS: the DLQ consumer, with the stage's backstop advisories turned
/// into dead letters before each pull.
pub(crate) struct DeadLetterSubscription {
    dlq: PullSubscription,
    backstop: Backstop,
}

impl DeadLetterSubscription {
    /// Binds to the DLQ consumer of `stage` and (when it exists) its advisory consumer.
    pub(crate) async fn open(
        shared: Arc<Shared>,
        stream: String,
        consumer: String,
        stage: String,
    ) -> Result<DeadLetterSubscription, BrokerError> {
        let dlq = PullSubscription::open(shared.clone(), stream, consumer, None).await?;
        Ok(DeadLetterSubscription {
            dlq,
            backstop: Backstop::new(shared, stage),
        })
    }
}

#[async_trait]
impl Subscription for DeadLetterSubscription {
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BrokerError> {
        if max > 0 {
            // First, so that what it dead-letters is in this very pull.
            self.backstop.drain().await;
        }
        self.dlq.fetch(max, wait).await
    }

    async fn close(self: Box<Self>) {
        Box::new(self.dlq).close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advisory_parses_and_makes_poison_headers() {
        let raw = br#"{"type":"io.nats.jetstream.advisory.v1.max_deliver","id":"x",
            "timestamp":"2026-11-23T01:02:03.456789Z","stream":"P_JOBS","consumer":"analyze",
            "stream_seq":42,"deliveries":3}"#;
        let a: Advisory = serde_json::from_slice(raw).expect("advisory");
        assert_eq!((a.stream_seq, a.deliveries), (42, 3));
        let job = fleet_protocol::JobEnvelope::new("p", "i", "analyze", serde_json::json!({}));
        let info = dead_letter_info(&a, "analyze", &job.to_bytes());
        assert_eq!(info.reason, DeadLetterReason::Poison);
        assert_eq!(info.last_error_kind, Some(ErrorKind::Lost));
        assert_eq!(info.attempts, 3);
        assert_eq!(info.job_id.as_deref(), Some("p/i/analyze"));
        assert_eq!(info.at.to_rfc3339(), "2026-11-23T01:02:03.456789+00:00");
        // Deterministic: the same advisory makes the same headers.
        assert_eq!(
            info.to_headers(),
            dead_letter_info(&a, "analyze", &job.to_bytes()).to_headers()
        );
        assert!(dead_letter_info(&a, "analyze", b"\xff").job_id.is_none());
    }
}
