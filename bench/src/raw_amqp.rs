//! The raw RabbitMQ loop: lapin with `basic_qos(prefetch)`, one consumer, and every delivery
//! acked without waiting for the ack inline (acks run concurrently in a `FuturesUnordered`
//! polled next to the consumer), which is the fastest correct per-delivery loop.
//!
//! The multiple-ack variant acks every [`ACK_EVERY`] deliveries (at most half the prefetch) with
//! one `basic.ack(multiple=true)`, the least ack traffic a consumer can send without starving its
//! window: the baseline for a runtime that coalesces acks over contiguous tags.

use std::time::Duration;

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};

use crate::cpu::Snapshot;
use crate::report::Measured;

/// Consumer tag of the raw loop.
const CONSUMER_TAG: &str = "fleet-bench-raw";
/// Deliveries covered by one multiple ack (the multiple-ack variant).
const ACK_EVERY: u64 = 64;

/// Consumes and acks `n` deliveries of `queue` (each on its own, or `multiple` at a time);
/// measures first delivery to last ack.
pub async fn consume(
    url: &str,
    queue: &str,
    prefetch: u16,
    n: u64,
    multiple: bool,
    limit: Duration,
) -> anyhow::Result<Measured> {
    let every = ACK_EVERY.min(u64::from(prefetch / 2)).max(1);
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .context("raw lapin: connecting")?;
    let channel = conn
        .create_channel()
        .await
        .context("raw lapin: opening a channel")?;
    channel
        .basic_qos(prefetch, BasicQosOptions { global: false })
        .await
        .context("raw lapin: basic.qos")?;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            CONSUMER_TAG.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("raw lapin: consuming {queue}"))?;

    let mut acks = FuturesUnordered::new();
    let (mut received, mut acked, mut unacked) = (0u64, 0u64, 0u64);
    let mut first: Option<Snapshot> = None;
    let work = async {
        while acked < n {
            tokio::select! {
                Some(done) = acks.next(), if !acks.is_empty() => {
                    let (count, done): (u64, lapin::Result<bool>) = done;
                    if !done.context("raw lapin: ack failed")? {
                        bail!("raw lapin: ack not sent, the channel closed");
                    }
                    acked += count;
                }
                item = consumer.next(), if received < n => {
                    let delivery = item
                        .context("raw lapin: the broker cancelled the consumer")?
                        .context("raw lapin: consumer failed")?;
                    first.get_or_insert_with(Snapshot::now);
                    received += 1;
                    unacked += 1;
                    if !multiple {
                        unacked = 0;
                        acks.push(async move { (1, delivery.acker.ack(BasicAckOptions::default()).await) });
                    } else if unacked >= every || received == n {
                        // Multiple acks go out in tag order (one covering a later tag first
                        // would make the earlier one unknown, closing the channel): each is
                        // awaited here, once per `every` deliveries (lapin resolves it when the
                        // frame is written, not at a broker reply).
                        let opts = BasicAckOptions { multiple: true };
                        if !delivery.acker.ack(opts).await.context("raw lapin: ack failed")? {
                            bail!("raw lapin: ack not sent, the channel closed");
                        }
                        acked += std::mem::take(&mut unacked);
                    }
                }
            }
        }
        Ok::<_, anyhow::Error>(Snapshot::now())
    };
    let last = tokio::time::timeout(limit, work)
        .await
        .with_context(|| format!("raw lapin: {acked} of {n} acked after {limit:?}"))??;
    // Closing the channel as soon as the last ack future resolved lost some acks in each of
    // 4 trials (58 to 110 of 20000 messages came back, RabbitMQ 3.10 quorum queue). A round
    // trip on the channel first (basic.cancel waits for cancel-ok) settles them all.
    let cancel = channel.basic_cancel(CONSUMER_TAG.into(), BasicCancelOptions::default());
    tokio::time::timeout(limit, cancel)
        .await
        .context("raw lapin: basic.cancel timed out")?
        .context("raw lapin: basic.cancel")?;
    if let Err(e) = channel.close(200, "done".into()).await {
        eprintln!("raw lapin: closing the channel: {e}");
    }
    if let Err(e) = conn.close(200, "done".into()).await {
        eprintln!("raw lapin: closing the connection: {e}");
    }
    Ok(Measured {
        jobs: n,
        start: first.unwrap_or(last),
        end: last,
    })
}
