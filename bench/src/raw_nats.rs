//! The raw NATS JetStream loop: async-nats on the stage's durable pull consumer with
//! `stream().max_messages_per_batch(prefetch)`, every message acked with a plain `ack()`.
//!
//! `ack()` only queues a publish on the client's connection (no server round trip), so awaiting
//! it inline does not serialize the loop; the client is flushed before the clock stops.

use std::time::Duration;

use anyhow::{Context as _, anyhow};
use futures::StreamExt as _;

use crate::cpu::Snapshot;
use crate::report::Measured;

/// Consumes and acks `n` messages of `consumer` on `stream`; measures first message to last ack.
pub async fn consume(
    url: &str,
    stream: &str,
    consumer: &str,
    prefetch: u16,
    n: u64,
    limit: Duration,
) -> anyhow::Result<Measured> {
    let client = async_nats::connect(url)
        .await
        .context("raw async-nats: connecting")?;
    let js = async_nats::jetstream::new(client.clone());
    let pull: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream(stream)
        .await
        .with_context(|| format!("raw async-nats: stream {stream}"))?
        .get_consumer(consumer)
        .await
        .map_err(|e| anyhow!("raw async-nats: consumer {consumer} on {stream}: {e}"))?;
    let mut messages = pull
        .stream()
        .max_messages_per_batch(usize::from(prefetch))
        .messages()
        .await
        .context("raw async-nats: starting the pull stream")?;

    let mut acked = 0u64;
    let mut first: Option<Snapshot> = None;
    let work = async {
        while acked < n {
            let msg = messages
                .next()
                .await
                .context("raw async-nats: the pull stream ended")?
                .map_err(|e| anyhow!("raw async-nats: pull failed: {e}"))?;
            first.get_or_insert_with(Snapshot::now);
            msg.ack()
                .await
                .map_err(|e| anyhow!("raw async-nats: ack failed: {e}"))?;
            acked += 1;
        }
        client
            .flush()
            .await
            .context("raw async-nats: flushing the acks")?;
        Ok::<_, anyhow::Error>(Snapshot::now())
    };
    let last = tokio::time::timeout(limit, work)
        .await
        .with_context(|| format!("raw async-nats: {acked} of {n} acked after {limit:?}"))??;
    drop(messages);
    if let Err(e) = client.drain().await {
        eprintln!("raw async-nats: draining the client: {e}");
    }
    Ok(Measured {
        jobs: n,
        start: first.unwrap_or(last),
        end: last,
    })
}
