//! Declaring and deleting fleet's exchanges and queues (DESIGN §3 and §4).
//!
//! Every queue is a quorum queue with an explicit `x-delivery-limit` and dead-letter target
//! (never a broker default: RabbitMQ 4 limits quorum deliveries to 20 and then drops):
//!
//! | queue | delivery limit | dead-letters to |
//! |---|---|---|
//! | `<p>.jobs.<stage>` | `max_deliver` of the stage | `<p>.dlq` / `<stage>` |
//! | `<p>.retry.<stage>.<step>` (TTL = step, no consumer) | 1000 | `<p>.jobs` / `<stage>` |
//! | `<p>.dlq.<stage>`, `<p>.submit`, `<p>.coordinator.events` | 50 | `""` / `<p>.parked` |
//! | `<p>.retry.control.<step>` (TTL = step, no consumer) | 1000 | `""` / its message's own routing key (the origin queue) |
//! | `<p>.parked` (read by replay only) | 1000 | none: the last stop |
//!
//! Control messages are retried through `<p>.retry.control.<step>` (1s, 5s, 30s): a copy is
//! published to the fanout exchange of that name with the origin queue as routing key, and when
//! its TTL runs out the default exchange routes it back to that queue.
//!
//! Arguments of an existing queue cannot be changed: a deployment made before these limits
//! fails to declare with PRECONDITION_FAILED naming the queue (see [`conflict`]); drain and
//! delete the queue (docs/operations.md, "Migrating control queues").

use std::time::Duration;

use fleet_core::broker::{
    CONTROL_MAX_DELIVER, IDLE_QUEUE_MAX_DELIVER, control_retry_ladder, ladder_label,
};
use fleet_core::{BrokerError, Topology, broker::default_retry_ladder};
use fleet_protocol::Names;
use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

use crate::connect::Conn;
use crate::error::{NOT_FOUND, PRECONDITION_FAILED, map_lapin, reply_code, short, timed_raw};

/// The queue argument that sets a quorum queue's replica count.
const GROUP_SIZE: &str = "x-quorum-initial-group-size";

/// One durable queue to declare, with its arguments and bindings.
struct QueueSpec {
    name: String,
    args: FieldTable,
    /// `(exchange, routing key)` pairs.
    bindings: Vec<(String, String)>,
}

fn exchanges(names: &Names) -> Vec<(String, ExchangeKind)> {
    let mut out = vec![
        (names.jobs_exchange(), ExchangeKind::Direct),
        (names.dlq_exchange(), ExchangeKind::Direct),
        (names.events_exchange(), ExchangeKind::Topic),
        (names.pipelines_exchange(), ExchangeKind::Topic),
        (names.control_exchange(), ExchangeKind::Fanout),
    ];
    for step in control_retry_ladder() {
        // Fanout: the copy keeps the origin queue as its routing key for the way back.
        out.push((
            names.control_retry(&ladder_label(step)),
            ExchangeKind::Fanout,
        ));
    }
    out
}

fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args
}

fn text(args: &mut FieldTable, key: &str, value: &str) {
    args.insert(key.into(), AMQPValue::LongString(value.into()));
}

fn number(args: &mut FieldTable, key: &str, value: i64) {
    args.insert(key.into(), AMQPValue::LongLongInt(value));
}

/// Dead-letter to `exchange`/`key` at least once (needs `overflow=reject-publish`).
fn dead_letter_to(args: &mut FieldTable, exchange: &str, key: &str) {
    text(args, "x-dead-letter-exchange", exchange);
    text(args, "x-dead-letter-routing-key", key);
    text(args, "x-dead-letter-strategy", "at-least-once");
    text(args, "x-overflow", "reject-publish");
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A coordinator queue: retried by the coordinator through the control ladder; the broker's
/// backstop parks what still comes back [`CONTROL_MAX_DELIVER`] times.
fn control_queue(names: &Names, name: String, bindings: Vec<(String, String)>) -> QueueSpec {
    let mut args = quorum();
    dead_letter_to(&mut args, "", &names.parked());
    number(
        &mut args,
        "x-delivery-limit",
        i64::from(CONTROL_MAX_DELIVER),
    );
    QueueSpec {
        name,
        args,
        bindings,
    }
}

/// Explicit limit on a queue that nothing consumes (so no broker default applies).
fn idle_limit(args: &mut FieldTable) {
    number(args, "x-delivery-limit", i64::from(IDLE_QUEUE_MAX_DELIVER));
}

/// The queues every prefix has, whatever its stages: the control retry ladder and `parked`.
fn shared_queues(names: &Names) -> Vec<QueueSpec> {
    let mut out = Vec::new();
    for step in control_retry_ladder() {
        let name = names.control_retry(&ladder_label(step));
        let mut args = quorum();
        number(&mut args, "x-message-ttl", millis(step));
        // No routing key: dead-lettering keeps the copy's own key, the origin queue's name,
        // which the default exchange routes back to it.
        text(&mut args, "x-dead-letter-exchange", "");
        text(&mut args, "x-dead-letter-strategy", "at-least-once");
        text(&mut args, "x-overflow", "reject-publish");
        idle_limit(&mut args);
        out.push(QueueSpec {
            bindings: vec![(name.clone(), String::new())],
            name,
            args,
        });
    }
    let mut args = quorum();
    // The last stop: no dead-letter target; replay and inspection are its only readers.
    text(&mut args, "x-overflow", "reject-publish");
    idle_limit(&mut args);
    out.push(QueueSpec {
        name: names.parked(),
        args,
        bindings: Vec::new(),
    });
    out
}

/// Every queue of `topology`.
fn queues(topology: &Topology) -> Vec<QueueSpec> {
    let names = &topology.names;
    let mut out = Vec::new();
    for stage in &topology.stages {
        let mut args = quorum();
        dead_letter_to(&mut args, &names.dlq_exchange(), stage);
        number(
            &mut args,
            "x-delivery-limit",
            i64::from(topology.max_deliver),
        );
        out.push(QueueSpec {
            name: names.jobs(stage),
            args,
            bindings: vec![(names.jobs_exchange(), stage.clone())],
        });
        for step in &topology.retry_ladder {
            // No consumers: messages expire back to the stage's work queue.
            let mut args = quorum();
            number(&mut args, "x-message-ttl", millis(*step));
            dead_letter_to(&mut args, &names.jobs_exchange(), stage);
            idle_limit(&mut args);
            out.push(QueueSpec {
                name: names.retry_queue(stage, &ladder_label(*step)),
                args,
                bindings: Vec::new(),
            });
        }
        out.push(control_queue(
            names,
            names.dlq(stage),
            vec![(names.dlq_exchange(), stage.clone())],
        ));
    }
    out.push(control_queue(names, names.submit(), Vec::new()));
    out.push(control_queue(
        names,
        names.coordinator_events_queue(),
        vec![(names.events_exchange(), "#".into())],
    ));
    out.extend(shared_queues(names));
    out
}

fn conflict(what: &str, name: &str, e: &lapin::Error) -> BrokerError {
    if e.to_string().contains(GROUP_SIZE) {
        return BrokerError::Config(format!(
            "{what} `{name}` was first declared with another replica count ({e}). Set \
             FLEET_QUORUM_GROUP_SIZE to the value the existing queues were declared with (unset \
             if they have none) on every fleet process; change replicas of existing queues with \
             `rabbitmq-queues grow` / `shrink`"
        ));
    }
    BrokerError::Config(format!(
        "{what} `{name}` already exists with other settings ({e}). fleet does not change it: \
         delete it (e.g. `rabbitmqctl delete_queue {name}`, or `rabbitmqadmin delete \
         exchange name={name}` for an exchange) once it is drained, or use another prefix"
    ))
}

/// Declares the whole topology on one channel; a conflicting existing object is a
/// [`BrokerError::Config`] naming it (the broker closes the channel, nothing is retried).
///
/// `group_size` sets `x-quorum-initial-group-size` on every queue: how many cluster nodes
/// hold a replica of a new queue (RabbitMQ caps it at the cluster's size). An existing
/// queue declared with another value (or none) is refused by RabbitMQ: see [`conflict`].
pub(crate) async fn declare(
    conn: &Conn,
    topology: &Topology,
    group_size: Option<u16>,
) -> Result<(), BrokerError> {
    let t = conn.op_timeout;
    let channel = conn.channel().await?;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    for (name, kind) in exchanges(&topology.names) {
        let declare = channel.exchange_declare(
            short("exchange", &name)?,
            kind,
            durable,
            FieldTable::default(),
        );
        match timed_raw(t, declare).await? {
            Ok(()) => {}
            Err(e) if reply_code(&e) == Some(PRECONDITION_FAILED) => {
                return Err(conflict("exchange", &name, &e));
            }
            Err(e) => return Err(map_lapin(&format!("declaring exchange {name}"), &e)),
        }
    }
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    for mut q in queues(topology) {
        if let Some(n) = group_size {
            number(&mut q.args, GROUP_SIZE, i64::from(n));
        }
        let declare = channel.queue_declare(short("queue", &q.name)?, durable, q.args);
        match timed_raw(t, declare).await? {
            Ok(_) => {}
            Err(e) if reply_code(&e) == Some(PRECONDITION_FAILED) => {
                return Err(conflict("queue", &q.name, &e));
            }
            Err(e) => return Err(map_lapin(&format!("declaring queue {}", q.name), &e)),
        }
        for (exchange, key) in &q.bindings {
            let bind = channel.queue_bind(
                short("queue", &q.name)?,
                short("exchange", exchange)?,
                short("routing key", key)?,
                QueueBindOptions::default(),
                FieldTable::default(),
            );
            timed_raw(t, bind)
                .await?
                .map_err(|e| map_lapin(&format!("binding {} to {exchange}", q.name), &e))?;
        }
    }
    close_quietly(&channel, t).await;
    Ok(())
}

/// Deletes every queue (retry ladder included) and exchange under the topology's prefix;
/// missing ones are skipped.
pub(crate) async fn delete(conn: &Conn, topology: &Topology) -> Result<(), BrokerError> {
    let t = conn.op_timeout;
    let mut ladder = topology.retry_ladder.clone();
    ladder.extend(
        default_retry_ladder()
            .into_iter()
            .filter(|s| !topology.retry_ladder.contains(s)),
    );
    let with_default_ladder = Topology {
        retry_ladder: ladder,
        ..topology.clone()
    };
    let mut channel = conn.channel().await?;
    for q in queues(&with_default_ladder) {
        let delete = channel.queue_delete(short("queue", &q.name)?, QueueDeleteOptions::default());
        match timed_raw(t, delete).await? {
            Ok(_) => {}
            Err(e) if reply_code(&e) == Some(NOT_FOUND) => channel = conn.channel().await?,
            Err(e) => return Err(map_lapin(&format!("deleting queue {}", q.name), &e)),
        }
    }
    for (name, _) in exchanges(&topology.names) {
        let delete =
            channel.exchange_delete(short("exchange", &name)?, ExchangeDeleteOptions::default());
        match timed_raw(t, delete).await? {
            Ok(()) => {}
            Err(e) if reply_code(&e) == Some(NOT_FOUND) => channel = conn.channel().await?,
            Err(e) => return Err(map_lapin(&format!("deleting exchange {name}"), &e)),
        }
    }
    close_quietly(&channel, t).await;
    Ok(())
}

/// Messages ready in `queue` (passive declare); a missing queue is [`BrokerError::Rejected`].
pub(crate) async fn ready_count(conn: &Conn, queue: &str) -> Result<u64, BrokerError> {
    let t = conn.op_timeout;
    let channel = conn.channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let declare = channel.queue_declare(short("queue", queue)?, passive, FieldTable::default());
    let count = match timed_raw(t, declare).await? {
        Ok(q) => u64::from(q.message_count()),
        Err(e) if reply_code(&e) == Some(NOT_FOUND) => {
            return Err(BrokerError::Rejected(format!(
                "queue {queue} does not exist: declare the topology first"
            )));
        }
        Err(e) => return Err(map_lapin(&format!("inspecting queue {queue}"), &e)),
    };
    close_quietly(&channel, t).await;
    Ok(count)
}

async fn close_quietly(channel: &Channel, t: Duration) {
    if channel.status().connected() {
        let _ = tokio::time::timeout(t, channel.close(200, "done".into())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_specs_follow_the_design() {
        let mut t = Topology::new(Names::new("p"), &["a"]);
        t.retry_ladder = vec![Duration::from_secs(1), Duration::from_secs(120)];
        let specs = queues(&t);
        let names: Vec<&str> = specs.iter().map(|q| q.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "p.jobs.a",
                "p.retry.a.1s",
                "p.retry.a.2m",
                "p.dlq.a",
                "p.submit",
                "p.coordinator.events",
                "p.retry.control.1s",
                "p.retry.control.5s",
                "p.retry.control.30s",
                "p.parked",
            ]
        );
        // Issue 8: every queue has an explicit delivery limit, and all but `parked` a
        // dead-letter target (never a broker default).
        for q in &specs {
            assert!(
                q.args.inner().contains_key("x-delivery-limit"),
                "{} lacks a delivery limit",
                q.name
            );
            assert_eq!(
                q.args.inner().contains_key("x-dead-letter-exchange"),
                q.name != "p.parked",
                "{}",
                q.name
            );
        }
        let events = &specs[5].args;
        assert_eq!(
            events.inner().get("x-dead-letter-routing-key"),
            Some(&AMQPValue::LongString("p.parked".into()))
        );
        assert_eq!(
            events.inner().get("x-delivery-limit"),
            Some(&AMQPValue::LongLongInt(50))
        );
        let control_retry = &specs[6].args;
        assert!(
            !control_retry
                .inner()
                .contains_key("x-dead-letter-routing-key")
        );
        let jobs = &specs[0].args;
        assert_eq!(
            jobs.inner().get("x-delivery-limit"),
            Some(&AMQPValue::LongLongInt(10))
        );
        assert_eq!(
            jobs.inner().get("x-dead-letter-exchange"),
            Some(&AMQPValue::LongString("p.dlq".into()))
        );
        let retry = &specs[2].args;
        assert_eq!(
            retry.inner().get("x-message-ttl"),
            Some(&AMQPValue::LongLongInt(120_000))
        );
        assert_eq!(
            retry.inner().get("x-dead-letter-routing-key"),
            Some(&AMQPValue::LongString("a".into()))
        );
    }
}
