//! The raw RabbitMQ loop: lapin with `basic_qos(prefetch)`, one consumer, and every delivery
//! acked without waiting for the ack inline (acks run concurrently in a `FuturesUnordered`
//! polled next to the consumer), which is the fastest correct per-delivery loop.

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

/// Consumes and acks `n` deliveries of `queue`; measures first delivery to last ack.
pub async fn consume(
    url: &str,
    queue: &str,
    prefetch: u16,
    n: u64,
    limit: Duration,
) -> anyhow::Result<Measured> {
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
    let (mut received, mut acked) = (0u64, 0u64);
    let mut first: Option<Snapshot> = None;
    let work = async {
        while acked < n {
            tokio::select! {
                Some(done) = acks.next(), if !acks.is_empty() => {
                    let done: lapin::Result<bool> = done;
                    if !done.context("raw lapin: ack failed")? {
                        bail!("raw lapin: ack not sent, the channel closed");
                    }
                    acked += 1;
                }
                item = consumer.next(), if received < n => {
                    let delivery = item
                        .context("raw lapin: the broker cancelled the consumer")?
                        .context("raw lapin: consumer failed")?;
                    first.get_or_insert_with(Snapshot::now);
                    received += 1;
                    acks.push(async move { delivery.acker.ack(BasicAckOptions::default()).await });
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
