//! Replaying parked control messages: each goes back to the queue it came from.
//!
//! Parked messages are taken one at a time with `basic.get`; a copy is published (confirmed)
//! to the origin queue through the default exchange, without the parking headers and with its
//! attempt count reset, and only then is the parked message acked. A crash in between leaves
//! both copies: the coordinator's handling of events, submissions and dead letters is
//! idempotent.

use fleet_core::BrokerError;
use fleet_core::broker::{parked_origin, replayed_headers};
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions};

use crate::connect::Conn;
use crate::error::{short, timed};
use crate::headers::{to_strings, to_table};
use crate::publish::{PERSISTENT, Route};

/// Moves up to `max` messages from `parked` back to their origin queues; returns how many.
pub(crate) async fn replay_parked(
    conn: &Conn,
    parked: &str,
    max: usize,
) -> Result<u64, BrokerError> {
    let t = conn.op_timeout;
    let channel = conn.channel().await?;
    let mut moved = 0u64;
    let result = async {
        while usize::try_from(moved).unwrap_or(usize::MAX) < max {
            let get = channel.basic_get(short("queue", parked)?, BasicGetOptions { no_ack: false });
            let Some(msg) = timed(t, &format!("reading {parked}"), get).await? else {
                break;
            };
            let d = msg.delivery;
            let headers = to_strings(d.properties.headers().as_ref());
            let Some(origin) = parked_origin(&headers) else {
                let requeue = BasicNackOptions {
                    multiple: false,
                    requeue: true,
                };
                let _ = timed(t, "requeueing a parked message", d.acker.nack(requeue)).await;
                return Err(BrokerError::Rejected(format!(
                    "a message in {parked} has no fleet-parked-from or x-first-death-queue \
                     header, so its origin is unknown: inspect it in the management UI and move \
                     it by hand"
                )));
            };
            let props = d
                .properties
                .clone()
                .with_headers(to_table(&replayed_headers(&headers))?)
                .with_delivery_mode(PERSISTENT);
            let route = Route {
                exchange: String::new(),
                key: origin.clone(),
                mandatory: true,
            };
            conn.send(&route, &d.data, props).await?;
            timed(
                t,
                &format!("acking a replayed message of {parked}"),
                d.acker.ack(BasicAckOptions::default()),
            )
            .await?;
            tracing::info!(%origin, "amqp: replayed a parked message");
            moved += 1;
        }
        Ok(moved)
    }
    .await;
    if channel.status().connected() {
        let _ = tokio::time::timeout(t, channel.close(200, "done".into())).await;
    }
    result
}
