//! TLS to the brokers through connect-by-URL with `FLEET_BROKER_CA_FILE`, against real
//! listeners whose certificates come from a CA made in the test:
//! * `amqps://`: the machine's RabbitMQ behind a TLS-terminating proxy (RabbitMQ itself has no
//!   TLS listener here, and its config is shared: never changed by tests);
//! * `tls://`: a private nats-server (JetStream on) with a `tls {}` block.
//!
//! A wrong CA must be a configuration error naming the setting, returned at once (not retried
//! until `FLEET_MAX_OUTAGE`).
#![allow(clippy::unwrap_used, missing_docs)] // test code: a panic is the failure report

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fleet_core::{BrokerError, BrokerKind};
use fleet_runtime::RuntimeConfig;
use fleet_runtime::connect::{connect, connect_with_retry};
use fleet_test_support::tls::{TestCa, TlsProxy};
use tokio_util::sync::CancellationToken;

/// Ports of this test file (the branch's range 31000-31999).
const AMQPS_PORT: u16 = 31671;
const NATS_TLS_PORT: u16 = 31422;
/// A wrong CA must fail far sooner than any retry loop would give up.
const FAIL_FAST: Duration = Duration::from_secs(10);

fn test_dir(tag: &str) -> PathBuf {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(fleet_test_support::unique_prefix(tag));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn config(url: &str, ca: &Path) -> RuntimeConfig {
    RuntimeConfig::parse_from([
        "test".to_owned(),
        format!("--broker-url={url}"),
        format!("--broker-ca-file={}", ca.display()),
        "--max-outage=60s".to_owned(),
    ])
    .unwrap()
}

/// A trusted CA connects; another CA is refused at once with an error naming the setting.
async fn trusted_connects_and_wrong_ca_is_a_config_error(
    url: &str,
    ca: &Path,
    wrong: &Path,
    kind: BrokerKind,
) {
    let broker = connect(&config(url, ca)).await.unwrap_or_else(|e| {
        panic!("connecting to {url} with the test CA failed: {e}");
    });
    assert_eq!(broker.kind(), kind);
    assert!(broker.is_connected());
    broker.close().await;

    let started = Instant::now();
    let Err(err) = connect_with_retry(&config(url, wrong), &CancellationToken::new()).await else {
        panic!("a certificate from an untrusted CA must be refused");
    };
    let text = format!("{err:#}");
    eprintln!("as expected: {text}");
    assert!(
        text.contains("FLEET_BROKER_CA_FILE") && text.contains("rejected"),
        "{text}"
    );
    assert!(
        started.elapsed() < FAIL_FAST,
        "a wrong CA must not be retried"
    );
    match connect(&config(url, wrong)).await {
        Err(BrokerError::Config(_)) => {}
        Err(other) => panic!("a wrong CA must be a configuration error: {other:?}"),
        Ok(_) => panic!("connected to {url} with an untrusted CA"),
    }
}

#[tokio::test]
async fn amqps_through_a_tls_listener_with_the_test_ca() {
    let dir = test_dir("amqps");
    let ca = TestCa::new("fleet test CA");
    let ca_file = ca.write(&dir).unwrap();
    let wrong = TestCa::new("another CA").write(&dir.join("wrong")).unwrap();
    let cert = ca.issue(&["localhost", "127.0.0.1"]);
    let upstream = fleet_test_support::url_addr(&fleet_test_support::amqp_url()).unwrap();
    let proxy = TlsProxy::start(upstream, &cert, AMQPS_PORT).await.unwrap();
    let plain = fleet_test_support::amqp_url();
    let tls_url = fleet_test_support::url_with_addr(&plain, proxy.addr())
        .unwrap()
        .replacen("amqp://", "amqps://", 1)
        .replace("127.0.0.1", "localhost");
    trusted_connects_and_wrong_ca_is_a_config_error(
        &tls_url,
        &ca_file,
        &wrong,
        BrokerKind::RabbitMq,
    )
    .await;
    drop(proxy);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn nats_tls_against_a_private_server_with_the_test_ca() {
    let dir = test_dir("nats-tls");
    let ca = TestCa::new("fleet test CA");
    let ca_file = ca.write(&dir).unwrap();
    let wrong = TestCa::new("another CA").write(&dir.join("wrong")).unwrap();
    let (crt, key) = ca
        .issue(&["localhost", "127.0.0.1"])
        .write(&dir, "server")
        .unwrap();
    let server = PrivateNats::start(&dir, NATS_TLS_PORT, &crt, &key);
    let url = format!("tls://localhost:{NATS_TLS_PORT}");
    trusted_connects_and_wrong_ca_is_a_config_error(&url, &ca_file, &wrong, BrokerKind::Nats).await;
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A nats-server of this test (JetStream, TLS only), killed when dropped.
struct PrivateNats {
    child: Child,
}

impl PrivateNats {
    fn start(dir: &Path, port: u16, crt: &Path, key: &Path) -> PrivateNats {
        let conf = dir.join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:{port}\ntls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  timeout: 5\n}}\njetstream {{\n  store_dir: \"{}\"\n}}\n",
                crt.display(),
                key.display(),
                dir.join("js").display()
            ),
        )
        .unwrap();
        let child = Command::new("/usr/sbin/nats-server")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start /usr/sbin/nats-server: {e}"));
        let server = PrivateNats { child };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        fleet_test_support::wait_for_blocking(
            "the private nats-server to listen",
            Duration::from_secs(10),
            || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok(),
        );
        server
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
