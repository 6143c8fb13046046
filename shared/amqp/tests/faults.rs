//! fleet-amqp under connection faults against the real RabbitMQ: a connection
//! the broker closes, a reset one and a hung one (through a [`FaultProxy`]),
//! refused logins, TLS, and unreachable brokers.

mod common;

use std::time::Duration;

use common::{Env, SOON, jobs, one, open_with, options, subscribe, with_env};
use fleet_amqp::{AmqpBroker, AmqpOptions, connect};
use fleet_core::{Broker, BrokerError};
use fleet_test_support::{FaultProxy, amqp_url, url_addr, url_with_addr, wait_for};
use tokio::time::Instant;

/// A second broker handle on `env`'s prefix, connected through a fault proxy.
async fn through_proxy(env: &Env, heartbeat: Duration) -> (FaultProxy, AmqpBroker) {
    let upstream = url_addr(&amqp_url()).expect("address of the AMQP URL");
    let proxy = FaultProxy::start(upstream)
        .await
        .expect("start the fault proxy");
    let url = url_with_addr(&amqp_url(), proxy.addr()).expect("proxied URL");
    let opts = AmqpOptions {
        heartbeat,
        ..options(&format!("{} (proxied)", env.name))
    };
    let broker = open_with(&url, opts).await;
    broker.use_topology(&env.topology);
    (proxy, broker)
}

/// After the connection died: the subscription, the held delivery and publishing all
/// report it; `reconnect` brings a new connection on which the message comes back.
async fn assert_lost_then_recovered(env: &Env, broker: &AmqpBroker, sub_err: BrokerError) {
    assert!(sub_err.is_connection(), "{sub_err}");
    let err = broker
        .publish(env.job("x"))
        .await
        .expect_err("publish while down");
    assert!(err.is_connection(), "{err}");
    broker.reconnect().await.expect("reconnect");
    assert!(broker.is_connected());
    let mut sub = subscribe(broker, jobs()).await;
    let again = one(&mut sub, SOON).await;
    assert_eq!((&again.body[..], again.attempt), (&b"survives"[..], 2));
    again.acker.ack().await.expect("ack on the new connection");
}

/// Closes a connection from the broker side (as a broker shutdown does) with `rabbitmqctl`.
fn close_from_broker(name: &str) {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_connections", "pid", "client_properties"])
        .output()
        .expect("rabbitmqctl (on the broker's machine) is needed to close a connection");
    let listing = String::from_utf8_lossy(&out.stdout);
    let pid = listing
        .lines()
        .find(|l| l.contains(name))
        .and_then(|l| l.split('\t').next())
        .unwrap_or_else(|| panic!("connection {name} not listed by rabbitmqctl: {listing}"));
    let status = std::process::Command::new("rabbitmqctl")
        .args(["-q", "close_connection", pid, "fleet-amqp test"])
        .status()
        .expect("rabbitmqctl close_connection");
    assert!(status.success(), "rabbitmqctl close_connection failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_closed_connection_is_reported_and_reconnect_recovers() {
    with_env(|env| async move {
        env.publish("survives").await;
        let mut sub = env.sub(jobs()).await;
        let held = one(&mut sub, SOON).await;
        let name = env.name.clone();
        tokio::task::spawn_blocking(move || close_from_broker(&name))
            .await
            .expect("join");
        let b = &env.broker;
        wait_for(
            "the close to be seen",
            Duration::from_secs(15),
            || async move { !b.is_connected() },
        )
        .await;
        let err = sub
            .fetch(1, Duration::from_secs(1))
            .await
            .expect_err("dead subscription");
        assert!(
            held.acker.ack().await.is_err(),
            "ack after the connection closed"
        );
        assert_lost_then_recovered(env, &env.broker, err).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_connection_is_reported_and_reconnect_recovers() {
    with_env(|env| async move {
        let (proxy, broker) = through_proxy(env, Duration::from_secs(5)).await;
        env.publish("survives").await;
        let mut sub = subscribe(&broker, jobs()).await;
        let held = one(&mut sub, SOON).await;
        proxy.cut();
        let b = &broker;
        wait_for(
            "the reset to be seen",
            SOON,
            || async move { !b.is_connected() },
        )
        .await;
        let err = sub
            .fetch(1, Duration::from_secs(1))
            .await
            .expect_err("dead subscription");
        assert!(held.acker.ack().await.is_err(), "ack after the reset");
        assert_lost_then_recovered(env, &broker, err).await;
        broker.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_broker_is_noticed_by_the_heartbeat() {
    with_env(|env| async move {
        let (proxy, broker) = through_proxy(env, Duration::from_secs(1)).await;
        env.publish("survives").await;
        let mut sub = subscribe(&broker, jobs()).await;
        let held = one(&mut sub, SOON).await;
        proxy.set_blackhole(true);
        // Never a silent empty forever: the missing heartbeat ends the subscription.
        let deadline = Instant::now() + Duration::from_secs(15);
        let err = loop {
            match sub.fetch(1, Duration::from_millis(500)).await {
                Err(e) => break e,
                Ok(got) => assert!(got.is_empty() && Instant::now() < deadline, "never noticed"),
            }
        };
        assert!(!broker.is_connected());
        assert!(
            held.acker.ack().await.is_err(),
            "ack after the heartbeat timeout"
        );
        let started = Instant::now();
        assert!(
            broker.reconnect().await.is_err(),
            "reconnect while the broker hangs"
        );
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "took {:?}",
            started.elapsed()
        );
        proxy.set_blackhole(false);
        assert_lost_then_recovered(env, &broker, err).await;
        broker.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_are_bounded_and_classified() {
    let start = Instant::now();
    let err = connect("amqp://guest:guest@127.0.0.1:1/%2f", options("nobody")).await;
    assert!(err.expect_err("nothing listens on port 1").is_connection());
    // TLS against the plain-text port must fail: without a TLS feature lapin would
    // silently speak plain AMQP on an amqps:// URL.
    let tls = amqp_url().replacen("amqp://", "amqps://", 1);
    let err = connect(&tls, options("tls probe"))
        .await
        .expect_err("TLS to a plain port");
    assert!(err.is_connection(), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(12),
        "took {:?}",
        start.elapsed()
    );
    // A refused login will not heal by retrying: it is a configuration error.
    let url = amqp_url();
    let (scheme, rest) = url.split_once("://").expect("scheme");
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let bad_login = format!("{scheme}://fleet-no-such-user:wrong@{host}");
    let err = connect(&bad_login, options("bad login"))
        .await
        .expect_err("bad login");
    assert!(
        matches!(err, BrokerError::Config(ref m) if m.contains("password")),
        "{err}"
    );
    let err = connect("http://x", options("bad"))
        .await
        .expect_err("wrong scheme");
    assert!(matches!(err, BrokerError::Config(_)), "{err}");
}

/// A cluster's URL list: the first node that answers is used, and after losing it the
/// broker reconnects to the next one (two fault proxies stand in for two nodes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_list_fails_over_to_the_next_node() {
    with_env(|env| async move {
        let upstream = url_addr(&amqp_url()).expect("address of the AMQP URL");
        let first = FaultProxy::start(upstream).await.expect("proxy 1");
        let second = FaultProxy::start(upstream).await.expect("proxy 2");
        let list = format!(
            "{},{}",
            url_with_addr(&amqp_url(), first.addr()).expect("url 1"),
            url_with_addr(&amqp_url(), second.addr()).expect("url 2")
        );
        // Node 1 down at start: the list's second URL is used.
        first.set_refuse(true);
        let broker = open_with(&list, options(&format!("{} (list)", env.name))).await;
        broker.use_topology(&env.topology);
        broker
            .publish(env.job("survives"))
            .await
            .expect("publish via node 2");
        let mut sub = subscribe(&broker, jobs()).await;
        let got = one(&mut sub, SOON).await;
        assert_eq!(&got.body[..], b"survives");
        // Node 2 is lost with the delivery unacked; node 1 is back.
        first.set_refuse(false);
        second.set_refuse(true);
        second.cut();
        let b = &broker;
        wait_for("node 2's loss to be seen", SOON, || async move {
            !b.is_connected()
        })
        .await;
        let err = sub
            .fetch(1, Duration::from_secs(1))
            .await
            .expect_err("dead subscription");
        assert!(got.acker.ack().await.is_err(), "ack after the loss");
        assert_lost_then_recovered(env, &broker, err).await;
        broker.close().await;
    })
    .await;
}

/// Malformed entries in a URL list are named by position, without the password.
#[test]
fn url_list_errors_name_the_entry() {
    let err = fleet_amqp::check_urls("amqp://u:secret@a:5672/%2f,nats://u:secret@b:4222")
        .expect_err("a NATS URL in a RabbitMQ list");
    assert!(err.contains("URL 2 of 2"), "{err}");
    assert!(!err.contains("secret"), "{err}");
    fleet_amqp::check_urls("amqp://a:5672/%2f, amqp://b:5672/%2f").expect("two nodes");
}
