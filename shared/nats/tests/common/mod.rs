//! What the fleet-nats tests share: the server they need (`FLEET_TEST_NATS_URL`, default
//! `nats://127.0.0.1:4222`; they fail, never skip, when it is unreachable) and a fixture that
//! declares a topology under a random prefix and deletes its streams at the end or on panic.
#![allow(dead_code)] // each test binary uses its own part

use std::time::Duration;

use fleet_core::{Broker, Source, SubscribeOptions, Subscription, Topology};
use fleet_nats::{NatsBroker, NatsOptions, connect};
use fleet_protocol::Names;

/// The stage every fixture declares.
pub const STAGE: &str = "s";

/// Where the tests find nats-server.
pub fn url() -> String {
    std::env::var("FLEET_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// Short client timeouts, so a broken server fails a test quickly.
pub fn options() -> NatsOptions {
    NatsOptions {
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(5),
        ping_interval: Duration::from_secs(2),
        client_name: Some("fleet-nats-tests".into()),
        ..NatsOptions::default()
    }
}

/// A fresh connection, or a panic that says what is needed.
pub async fn broker() -> NatsBroker {
    let url = url();
    connect(&url, options()).await.unwrap_or_else(|e| {
        panic!("these tests need nats-server with JetStream at {url} (FLEET_TEST_NATS_URL): {e}")
    })
}

/// A one-stage topology under a random prefix.
pub fn topology(ack_wait: Duration, max_deliver: u32) -> Topology {
    let prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut t = Topology::new(Names::new(&prefix), &[STAGE]);
    t.ack_wait = ack_wait;
    t.max_deliver = max_deliver;
    t.max_ack_pending = 100;
    t
}

/// A declared topology on a fresh connection; its streams are deleted at the end (or on panic).
pub struct Fixture {
    /// The fixture's connection.
    pub broker: NatsBroker,
    /// What it declared.
    pub topo: Topology,
    cleaned: bool,
}

impl Fixture {
    /// Connects and declares `topo`.
    pub async fn declare(topo: Topology) -> Fixture {
        let broker = broker().await;
        broker.declare(&topo).await.expect("declare");
        Fixture {
            broker,
            topo,
            cleaned: false,
        }
    }

    /// Subscribes to `source` (prefetch 10).
    pub async fn sub(&self, source: Source) -> Box<dyn Subscription> {
        self.broker
            .subscribe(source, SubscribeOptions { prefetch: 10 })
            .await
            .expect("subscribe")
    }

    /// Deletes the streams and closes the connection.
    pub async fn cleanup(mut self) {
        self.broker
            .delete_topology(&self.topo)
            .await
            .expect("delete_topology");
        self.cleaned = true;
        self.broker.close().await;
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        // A failed test still removes its streams, from a runtime of its own.
        let topo = self.topo.clone();
        let cleaner = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(b) = connect(&url(), options()).await {
                    let _ = b.delete_topology(&topo).await;
                    b.close().await;
                }
            });
        });
        let _ = cleaner.join();
    }
}
