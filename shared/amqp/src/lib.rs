//! fleet's RabbitMQ backend: the only crate that talks to lapin.
//!
//! [`connect`] opens one AMQP connection and returns an [`AmqpBroker`], which
//! implements [`fleet_core::Broker`] with the RabbitMQ rules of DESIGN §3:
//! durable quorum queues, publisher confirms on one shared channel, manual
//! acks with `basic_qos` prefetch on a channel per subscription, delayed
//! retry through a ladder of TTL queues (`<p>.retry.<stage>.<step>`) that
//! dead-letter back to the work queue, and dead letters published with their
//! reason headers to `<p>.dlq`. The attempt of a delivery is its
//! `fleet-attempt` header plus the quorum queue's `x-delivery-count`, plus 1.
//!
//! RabbitMQ 3.10 cannot extend a delivery: [`check_consumer_timeout`] is the
//! start-up check that every attempt ends before the broker's
//! `consumer_timeout` closes the channel.

// Unit tests may unwrap: a panic is the failure report.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod ack_window;
mod acker;
mod broker;
mod connect;
mod error;
mod headers;
mod options;
mod publish;
mod replay;
mod subscription;
mod topology;

pub use broker::{AckStats, AmqpBroker, connect};
pub use connect::check_urls;
pub use options::{
    AmqpOptions, DEFAULT_CONFIRM_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_CONSUMER_TIMEOUT,
    DEFAULT_HEARTBEAT, check_consumer_timeout,
};
