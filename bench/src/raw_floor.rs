//! The NATS floor: the least work the delivery contract allows on top of the raw loop
//! (issue 12). async-nats on the same pull stream as [`crate::raw_nats`], and per message:
//! decode the envelope once ([`fleet_protocol::decode_job`]) and build its `succeeded` event;
//! per [`BATCH`] messages: publish one [`EventBatch`] to the stage's events subject through
//! JetStream, and once its PubAck is in (the events are durable), ack those messages with a
//! plain `+ACK` each (no reply awaited). Up to [`IN_FLIGHT`] batches are in flight, as in the
//! runtime's batcher (DESIGN §4). A partial batch goes out when no message arrived for
//! [`LINGER`], so the tail never waits.
//!
//! No admission checks, deadlines, leases, metrics or heartbeats: what the runtime adds beyond
//! this is its own machinery, not the contract.

use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use chrono::Utc;
use fleet_protocol::{Event, EventBatch, EventKind, PROTOCOL_VERSION, decode_job};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;

use crate::cpu::Snapshot;
use crate::report::Measured;

/// Jobs per event batch (the runtime's batches at prefetch 256 carry 50–100).
pub const BATCH: usize = 64;
/// Event batches in flight at once (the runtime's `IN_FLIGHT`).
const IN_FLIGHT: usize = 3;
/// How long a partial batch waits for more messages before it goes out.
const LINGER: Duration = Duration::from_millis(2);
/// Largest envelope accepted by the decode (the runtime's default `FLEET_MAX_MESSAGE_BYTES`
/// is far above the bench's envelopes).
const MAX_BYTES: usize = 1 << 20;
/// Worker id written into the events.
const WORKER: &str = "fleet-bench-floor";

/// Where the floor loop reads and writes.
pub struct Target<'a> {
    /// NATS URL.
    pub url: &'a str,
    /// The jobs stream.
    pub stream: &'a str,
    /// The stage's durable pull consumer.
    pub consumer: &'a str,
    /// The stage's events subject.
    pub events: &'a str,
    /// The stage.
    pub stage: &'a str,
}

/// Consumes `n` messages as described in the module docs; measures first message to last ack.
pub async fn consume(
    t: &Target<'_>,
    prefetch: u16,
    n: u64,
    limit: Duration,
) -> anyhow::Result<Measured> {
    let client = async_nats::connect(t.url)
        .await
        .context("raw floor: connecting")?;
    let js = async_nats::jetstream::new(client.clone());
    let pull: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream(t.stream)
        .await
        .with_context(|| format!("raw floor: stream {}", t.stream))?
        .get_consumer(t.consumer)
        .await
        .map_err(|e| anyhow!("raw floor: consumer {} on {}: {e}", t.consumer, t.stream))?;
    let mut messages = pull
        .stream()
        .max_messages_per_batch(usize::from(prefetch))
        .messages()
        .await
        .context("raw floor: starting the pull stream")?;

    let (mut received, mut acked) = (0u64, 0u64);
    let mut first: Option<Snapshot> = None;
    let mut open: Vec<(async_nats::jetstream::Message, Event)> = Vec::with_capacity(BATCH);
    let mut in_flight = FuturesUnordered::new();
    let work = async {
        while acked < n {
            let full = open.len() >= BATCH || (received == n && !open.is_empty());
            if full && in_flight.len() < IN_FLIGHT {
                in_flight.push(publish(&js, t, std::mem::take(&mut open)).await?);
                continue;
            }
            tokio::select! {
                biased;
                Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                    let msgs: Vec<async_nats::jetstream::Message> = done?;
                    for m in &msgs {
                        m.ack().await.map_err(|e| anyhow!("raw floor: ack failed: {e}"))?;
                    }
                    acked += msgs.len() as u64;
                }
                item = messages.next(), if received < n && !full => {
                    let msg = item
                        .context("raw floor: the pull stream ended")?
                        .map_err(|e| anyhow!("raw floor: pull failed: {e}"))?;
                    first.get_or_insert_with(Snapshot::now);
                    received += 1;
                    let job = decode_job(&msg.payload, MAX_BYTES)
                        .map_err(|e| anyhow!("raw floor: undecodable envelope: {e}"))?;
                    let event = Event {
                        job_id: job.job_id,
                        pipeline_id: job.pipeline_id,
                        stage: t.stage.to_owned(),
                        attempt: msg.info().map_or(1, |i| u32::try_from(i.delivered).unwrap_or(1)),
                        seq: 1,
                        worker_id: WORKER.to_owned(),
                        at: Utc::now(),
                        kind: EventKind::Succeeded,
                        degraded: None,
                    };
                    open.push((msg, event));
                }
                () = tokio::time::sleep(LINGER), if !open.is_empty() && in_flight.len() < IN_FLIGHT => {
                    in_flight.push(publish(&js, t, std::mem::take(&mut open)).await?);
                }
            }
        }
        client
            .flush()
            .await
            .context("raw floor: flushing the acks")?;
        Ok::<_, anyhow::Error>(Snapshot::now())
    };
    let last = tokio::time::timeout(limit, work)
        .await
        .with_context(|| format!("raw floor: {acked} of {n} acked after {limit:?}"))??;
    drop(messages);
    if let Err(e) = client.drain().await {
        eprintln!("raw floor: draining the client: {e}");
    }
    Ok(Measured {
        jobs: n,
        start: first.unwrap_or(last),
        end: last,
    })
}

/// Sends one event batch; the returned future resolves to its messages once the batch is
/// confirmed (PubAck).
async fn publish(
    js: &async_nats::jetstream::Context,
    t: &Target<'_>,
    open: Vec<(async_nats::jetstream::Message, Event)>,
) -> anyhow::Result<
    impl std::future::Future<Output = anyhow::Result<Vec<async_nats::jetstream::Message>>> + use<>,
> {
    let (msgs, events): (Vec<_>, Vec<_>) = open.into_iter().unzip();
    let batch = EventBatch {
        v: PROTOCOL_VERSION,
        worker_id: WORKER.to_owned(),
        stage: t.stage.to_owned(),
        events,
        heartbeat: None,
    };
    let body = serde_json::to_vec(&batch).context("raw floor: serializing an event batch")?;
    let ack = js
        .publish(t.events.to_owned(), body.into())
        .await
        .map_err(|e| anyhow!("raw floor: publishing an event batch: {e}"))?;
    Ok(async move {
        match ack.await {
            Ok(_) => Ok(msgs),
            Err(e) => bail!("raw floor: event batch not confirmed: {e}"),
        }
    })
}
