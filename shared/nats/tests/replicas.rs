//! `FLEET_NATS_REPLICAS` against the real nats-server at `FLEET_TEST_NATS_URL` (a single server
//! or, from `scripts/ci-extra.d/75-nats-cluster.sh`, a three-node cluster): every stream fleet
//! declares takes the replica count; more replicas than a lone server keeps are refused at
//! connect; a stream that exists with another count is reported as drift, never changed.

mod common;

use std::time::Duration;

use async_nats::jetstream;
use common::{Fixture, options, topology, url};
use fleet_core::{Broker, BrokerError};
use fleet_nats::{NatsBroker, NatsOptions, connect};
use futures::TryStreamExt;

/// True when the test server is part of a cluster (its INFO names one).
async fn clustered() -> bool {
    let first = url()
        .split(',')
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    let client = async_nats::connect(&first).await.expect("connect");
    let clustered = client.server_info().cluster.is_some();
    drop(client);
    clustered
}

/// A connection that declares streams with `replicas`.
async fn broker_with(replicas: usize) -> Result<NatsBroker, BrokerError> {
    connect(
        &url(),
        NatsOptions {
            replicas,
            ..options()
        },
    )
    .await
}

/// The replica counts of the streams whose names start with `prefix` (uppercased).
async fn stream_replicas(b: &NatsBroker, prefix: &str) -> Vec<(String, usize)> {
    let js: &jetstream::Context = b.jetstream();
    let mut out: Vec<(String, usize)> = js
        .streams()
        .try_collect::<Vec<_>>()
        .await
        .expect("list streams")
        .into_iter()
        .filter(|info| info.config.name.starts_with(prefix))
        .map(|info| (info.config.name, info.config.num_replicas))
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn every_stream_takes_the_replica_count() {
    let replicas = if clustered().await { 3 } else { 1 };
    let topo = topology(Duration::from_secs(10), 5);
    let b = broker_with(replicas).await.expect("connect");
    b.declare(&topo).await.expect("declare");
    let prefix = topo.names.jobs_stream().replace("_JOBS", "_");
    let streams = stream_replicas(&b, &prefix).await;
    // JOBS, DLQ, EVENTS, SUBMIT, CONTROL, PIPELINES, BACKSTOP, PARKED, RETRY.
    assert_eq!(streams.len(), 9, "{streams:?}");
    assert!(
        streams.iter().all(|(_, r)| *r == replicas),
        "every stream has {replicas} replicas: {streams:?}"
    );
    assert_eq!(b.config_drift_count(), 0);
    b.delete_topology(&topo).await.expect("delete");
    b.close().await;
}

#[tokio::test]
async fn more_replicas_than_the_server_keeps_are_refused_or_reported() {
    if !clustered().await {
        let e = broker_with(3)
            .await
            .expect_err("a lone server cannot keep 3 replicas");
        assert!(
            matches!(&e, BrokerError::Config(m) if m.contains("FLEET_NATS_REPLICAS") && m.contains("not part of a cluster")),
            "{e}"
        );
        assert!(matches!(broker_with(0).await, Err(BrokerError::Config(_))));
        return;
    }
    // A cluster: streams made with one replica, then declared with three, are reported and kept.
    let f = Fixture::declare(topology(Duration::from_secs(10), 5)).await;
    let three = broker_with(3).await.expect("connect");
    three
        .declare(&f.topo)
        .await
        .expect("drift must not fail declare");
    assert_eq!(
        three.config_drift_count(),
        9,
        "each of the 9 streams is reported"
    );
    assert_eq!(Broker::config_drift(&three), three.config_drift_count());
    let prefix = f.topo.names.jobs_stream().replace("_JOBS", "_");
    let streams = stream_replicas(&three, &prefix).await;
    assert!(
        streams.iter().all(|(_, r)| *r == 1),
        "not changed in place: {streams:?}"
    );
    three.close().await;
    f.cleanup().await;
}
