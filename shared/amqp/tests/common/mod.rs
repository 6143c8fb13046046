//! Shared fixtures of the RabbitMQ tests: a run-unique declared prefix per test,
//! deleted afterwards even when the test fails, and small delivery helpers.
//!
//! There is no skipping: an unreachable broker fails every test loudly.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use fleet_amqp::{AmqpBroker, AmqpOptions, connect};
use fleet_core::{
    Broker, Delivery, Destination, OutMessage, Source, SubscribeOptions, Subscription, Topology,
};
use fleet_protocol::Names;
use fleet_test_support::{amqp_url, unique_prefix};
use futures::FutureExt;

/// The one stage every test topology has.
pub const STAGE: &str = "work";
/// How long a test waits for a delivery that should come at once.
pub const SOON: Duration = Duration::from_secs(5);

/// Test options: short timeouts and a 5 s heartbeat, so faults show quickly.
pub fn options(name: &str) -> AmqpOptions {
    AmqpOptions {
        connection_name: name.to_owned(),
        connect_timeout: Duration::from_secs(5),
        confirm_timeout: Duration::from_secs(5),
        heartbeat: Duration::from_secs(5),
        ..AmqpOptions::default()
    }
}

/// Connects to `url` or panics naming the test broker.
pub async fn open_with(url: &str, opts: AmqpOptions) -> AmqpBroker {
    match connect(url, opts).await {
        Ok(b) => b,
        Err(e) => panic!(
            "RabbitMQ must be reachable at {} for these tests (set FLEET_TEST_AMQP_URL): {e}",
            amqp_url()
        ),
    }
}

/// Connects to the test broker under connection name `name`.
pub async fn open(name: &str) -> AmqpBroker {
    open_with(&amqp_url(), options(name)).await
}

/// The job source of [`STAGE`].
pub fn jobs() -> Source {
    Source::Jobs {
        stage: STAGE.into(),
    }
}

/// The dead letters of [`STAGE`].
pub fn dead_letters() -> Source {
    Source::DeadLetters {
        stage: STAGE.into(),
    }
}

/// A declared test prefix.
pub struct Env {
    /// Connected and declared.
    pub broker: AmqpBroker,
    /// What was declared.
    pub topology: Topology,
    /// The connection name (unique: it contains the prefix).
    pub name: String,
}

impl Env {
    /// A job for [`STAGE`].
    pub fn job(&self, body: &str) -> OutMessage {
        OutMessage::new(
            Destination::Job {
                stage: STAGE.into(),
            },
            body.to_owned(),
        )
    }

    /// Publishes a job for [`STAGE`].
    pub async fn publish(&self, body: &str) {
        self.broker.publish(self.job(body)).await.expect("publish");
    }

    /// Subscribes with prefetch 10.
    pub async fn sub(&self, source: Source) -> Box<dyn Subscription> {
        subscribe(&self.broker, source).await
    }

    /// Ready messages in `source`.
    pub async fn depth(&self, source: Source) -> u64 {
        self.broker.depth(&source).await.expect("depth")
    }
}

/// Subscribes `broker` to `source` with prefetch 10.
pub async fn subscribe(broker: &AmqpBroker, source: Source) -> Box<dyn Subscription> {
    broker
        .subscribe(source, SubscribeOptions { prefetch: 10 })
        .await
        .expect("subscribe")
}

/// Runs `test` against a fresh declared prefix, then deletes it, pass or fail.
pub async fn with_env<F, Fut>(test: F)
where
    F: FnOnce(&'static Env) -> Fut,
    Fut: Future<Output = ()>,
{
    with_env_using(|_| {}, test).await;
}

/// [`with_env`] with a changed topology (1 s / 5 s ladder and `max_deliver` 20 by default).
pub async fn with_env_using<F, Fut>(tweak: impl FnOnce(&mut Topology), test: F)
where
    F: FnOnce(&'static Env) -> Fut,
    Fut: Future<Output = ()>,
{
    let prefix = unique_prefix("amqp");
    let name = format!("fleet-amqp test {prefix}");
    let broker = open(&name).await;
    let mut topology = Topology::new(Names::new(&prefix), &[STAGE]);
    topology.retry_ladder = vec![Duration::from_secs(1), Duration::from_secs(5)];
    topology.max_deliver = 20;
    tweak(&mut topology);
    broker.declare(&topology).await.expect("declare");
    // Leaked so the test future may borrow it as 'static: one small struct per test.
    let env: &'static Env = Box::leak(Box::new(Env {
        broker,
        topology,
        name,
    }));
    let outcome = AssertUnwindSafe(test(env)).catch_unwind().await;
    if !env.broker.is_connected() {
        env.broker.reconnect().await.expect("reconnect for cleanup");
    }
    env.broker
        .delete_topology(&env.topology)
        .await
        .expect("delete_topology");
    env.broker.close().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Fetches exactly one delivery, waiting at most `within`.
pub async fn one(sub: &mut Box<dyn Subscription>, within: Duration) -> Delivery {
    let mut got = sub.fetch(1, within).await.expect("fetch");
    assert_eq!(got.len(), 1, "expected one delivery within {within:?}");
    got.remove(0)
}
