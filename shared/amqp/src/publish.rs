//! Confirmed publishing: where each [`Destination`] goes, and the confirm wait.
//!
//! All publishers of a connection share one confirm-mode channel. A publish is
//! handed to lapin under a short lock, then its confirm is awaited outside
//! any lock, so many tasks publish concurrently with pipelined confirms.

use std::time::Duration;

use fleet_core::{BrokerError, Destination};
use fleet_protocol::Names;
use futures::FutureExt;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Confirmation};
use tokio::time::Instant;

use crate::connect::{Conn, lock};
use crate::error::{NOT_FOUND, map_lapin, reply_code, short};

/// AMQP delivery mode of messages that survive a broker restart.
pub(crate) const PERSISTENT: u8 = 2;

/// Exchange, routing key and whether an unroutable message is an error.
pub(crate) struct Route {
    pub(crate) exchange: String,
    pub(crate) key: String,
    /// Ask the broker to return the message when no queue takes it. Off for fanout
    /// control and finalized pipelines, which may legitimately have no listener.
    pub(crate) mandatory: bool,
}

/// Where `dest` is published under `names` (DESIGN §4, "Names").
pub(crate) fn route(names: &Names, dest: &Destination) -> Route {
    let (exchange, key, mandatory) = match dest {
        Destination::Job { stage } => (names.jobs_exchange(), stage.clone(), true),
        Destination::Events { stage } => (names.events_exchange(), stage.clone(), true),
        Destination::DeadLetter { stage } => (names.dlq_exchange(), stage.clone(), true),
        Destination::Submit => (String::new(), names.submit(), true),
        Destination::Pipeline { state } => (names.pipelines_exchange(), state.clone(), false),
        Destination::Control { pipeline_id } => {
            (names.control_exchange(), pipeline_id.clone(), false)
        }
    };
    Route {
        exchange,
        key,
        mandatory,
    }
}

/// First pause before publishing a nacked message again; doubled up to [`NACK_PAUSE_MAX`].
const NACK_PAUSE: Duration = Duration::from_millis(50);
/// Longest pause between two publishes of a nacked message.
const NACK_PAUSE_MAX: Duration = Duration::from_secs(1);

impl Conn {
    /// Publishes one message and waits (at most `confirm_timeout`) for the broker's confirm.
    ///
    /// A nacked message is published again until that deadline: RabbitMQ nacks while a
    /// quorum queue has no leader (for a few seconds after its leader's node is lost), and
    /// that must not cost a job an attempt. Still nacked at the deadline:
    /// [`BrokerError::Rejected`].
    pub(crate) async fn send(
        &self,
        route: &Route,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), BrokerError> {
        let limit = self.op_timeout;
        let deadline = Instant::now() + limit;
        let mut pause = NACK_PAUSE;
        let mut nacks = 0u32;
        loop {
            match self
                .send_once(route, body, properties.clone(), deadline)
                .await?
            {
                true => return Ok(()),
                false if Instant::now() + pause < deadline => {
                    nacks += 1;
                    if nacks == 1 {
                        tracing::warn!(route = %describe(route), "the broker nacked a publish (a quorum queue electing a leader?); publishing it again");
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(NACK_PAUSE_MAX);
                }
                false => {
                    return Err(BrokerError::Rejected(format!(
                        "{}: the broker nacked the message {} times within {limit:?} (a quorum \
                         queue without a majority of its nodes running?)",
                        describe(route),
                        nacks + 1
                    )));
                }
            }
        }
    }

    /// One publish and its confirm, bounded by `deadline`; `false` when the broker nacked it.
    async fn send_once(
        &self,
        route: &Route,
        body: &[u8],
        properties: BasicProperties,
        deadline: Instant,
    ) -> Result<bool, BrokerError> {
        let limit = self.op_timeout;
        let exchange = short("exchange", &route.exchange)?;
        let key = short("routing key", &route.key)?;
        let target = describe(route);
        let publisher = self.publisher().await?;
        let options = BasicPublishOptions {
            mandatory: route.mandatory,
            immediate: false,
        };
        let publish = publisher
            .channel
            .basic_publish(exchange, key, options, body, properties);
        let mut publish = std::pin::pin!(publish);
        // The first poll takes the confirm number and queues the frames; doing it under
        // `order` keeps the two in the same order across threads.
        let first = {
            let _order = lock(&publisher.order);
            publish.as_mut().now_or_never()
        };
        let sent = match first {
            Some(sent) => sent,
            None => tokio::time::timeout_at(deadline, publish)
                .await
                .map_err(|_| BrokerError::Timeout(limit))?,
        };
        let confirm = sent.map_err(|e| publish_error(&target, &route.exchange, &e))?;
        let confirmation = tokio::time::timeout_at(deadline, confirm)
            .await
            .map_err(|_| BrokerError::Timeout(limit))?
            .map_err(|e| publish_error(&target, &route.exchange, &e))?;
        match confirmation {
            Confirmation::Ack(None) => Ok(true),
            Confirmation::Ack(Some(returned)) => {
                // lapin hands a basic.return to whichever confirm of a `multiple` ack it
                // completes first, so only trust it when it names our own route.
                if returned.delivery.exchange.as_str() == route.exchange
                    && returned.delivery.routing_key.as_str() == route.key
                {
                    Err(BrokerError::Rejected(format!(
                        "{target}: no queue is bound for this message ({} {}); declare the \
                         topology (stage queues) before publishing",
                        returned.reply_code, returned.reply_text
                    )))
                } else {
                    tracing::warn!(
                        exchange = %returned.delivery.exchange,
                        routing_key = %returned.delivery.routing_key,
                        "broker returned an unroutable message published by another task"
                    );
                    Ok(true)
                }
            }
            Confirmation::Nack(_) => Ok(false),
            Confirmation::NotRequested => Err(BrokerError::ConnectionLost(format!(
                "{target}: publish channel is not in confirm mode"
            ))),
        }
    }
}

/// A refused publish closes the shared channel; only the publisher whose exchange was
/// missing gets [`BrokerError::Rejected`], the others lost their channel and may retry.
fn publish_error(target: &str, exchange: &str, e: &lapin::Error) -> BrokerError {
    if reply_code(e) == Some(NOT_FOUND) && e.to_string().contains(&format!("'{exchange}'")) {
        return BrokerError::Rejected(format!(
            "{target}: exchange does not exist; declare the topology first ({e})"
        ));
    }
    match map_lapin(target, e) {
        BrokerError::Rejected(m) => BrokerError::ConnectionLost(m),
        other => other,
    }
}

fn describe(route: &Route) -> String {
    if route.exchange.is_empty() {
        format!("publishing to queue {}", route.key)
    } else {
        format!("publishing to {} with key {}", route.exchange, route.key)
    }
}

/// Properties of a fleet message: persistent, with headers and an optional message id.
pub(crate) fn properties(
    headers: lapin::types::FieldTable,
    msg_id: Option<&str>,
) -> Result<BasicProperties, BrokerError> {
    let mut props = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_headers(headers);
    if let Some(id) = msg_id {
        props = props.with_message_id(short("message id", id)?);
    }
    Ok(props)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_follow_the_design_names() {
        let n = Names::new("p");
        let r = route(&n, &Destination::Job { stage: "a".into() });
        assert_eq!(
            (r.exchange.as_str(), r.key.as_str(), r.mandatory),
            ("p.jobs", "a", true)
        );
        let r = route(&n, &Destination::Submit);
        assert_eq!((r.exchange.as_str(), r.key.as_str()), ("", "p.submit"));
        let r = route(
            &n,
            &Destination::Control {
                pipeline_id: "x".into(),
            },
        );
        assert_eq!((r.exchange.as_str(), r.mandatory), ("p.control", false));
        let r = route(
            &n,
            &Destination::Pipeline {
                state: "completed".into(),
            },
        );
        assert_eq!(
            (r.exchange.as_str(), r.key.as_str()),
            ("p.pipelines", "completed")
        );
        let r = route(&n, &Destination::DeadLetter { stage: "a".into() });
        assert_eq!(r.exchange, "p.dlq");
        let r = route(&n, &Destination::Events { stage: "a".into() });
        assert_eq!((r.exchange.as_str(), r.key.as_str()), ("p.events", "a"));
    }
}
