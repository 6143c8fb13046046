//! The connection's settings and state: options, what the client's events told us, and
//! whether it is up (shared by the broker, its subscriptions and ackers).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::Event;
use async_nats::connection::State;
use tokio::sync::Notify;

/// Connection settings for [`connect`](crate::connect()).
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// Bound on establishing the TCP/TLS connection and the NATS handshake.
    pub connect_timeout: Duration,
    /// Bound on every JetStream API request, publish ack and confirmed (double) ack.
    pub request_timeout: Duration,
    /// Interval of client PINGs; a dead peer is noticed after about two missed intervals.
    pub ping_interval: Duration,
    /// Connection name shown by the server's monitoring (`connz`), e.g. the worker id.
    pub client_name: Option<String>,
    /// PEM file of a CA trusted for `tls://` besides the system roots (`FLEET_BROKER_CA_FILE`).
    pub ca_file: Option<std::path::PathBuf>,
    /// Replicas of every stream fleet declares (1–[`MAX_REPLICAS`]); consumers inherit it.
    /// More than one needs a clustered server (checked at [`connect`](crate::connect())).
    pub replicas: usize,
}

/// Most replicas JetStream allows for a stream.
pub const MAX_REPLICAS: usize = 5;

impl Default for NatsOptions {
    fn default() -> Self {
        NatsOptions {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(10),
            client_name: None,
            ca_file: None,
            replicas: 1,
        }
    }
}

/// Counter: disconnections the NATS client reported (it reconnects by itself, often within
/// milliseconds: faster than `/readyz` shows, so this is how a lost node is seen afterwards).
pub const BROKER_DISCONNECTS: &str = "fleet_broker_disconnects_total";

/// What the client's event callback has told us about the connection.
#[derive(Default)]
pub(crate) struct ConnState {
    /// The client was closed (by us, or it gave up); it will never reconnect.
    closed: AtomicBool,
    /// Disconnections seen since connecting.
    disconnects: AtomicU64,
    /// Woken on every event.
    pub(crate) changed: Notify,
}

impl ConnState {
    pub(crate) fn on_event(&self, event: &Event) {
        match event {
            Event::Connected => tracing::info!("nats: connected"),
            Event::Disconnected => {
                self.disconnects.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(BROKER_DISCONNECTS).increment(1);
                tracing::warn!("nats: disconnected; the client reconnects by itself");
            }
            Event::Closed => {
                self.closed.store(true, Ordering::SeqCst);
                tracing::warn!("nats: connection closed");
            }
            Event::LameDuckMode => tracing::warn!("nats: server entered lame duck mode"),
            Event::Draining => tracing::info!("nats: draining"),
            Event::SlowConsumer(sid) => tracing::warn!(sid, "nats: slow consumer"),
            Event::ServerError(e) => tracing::warn!(error = %e, "nats: server error"),
            Event::ClientError(e) => tracing::warn!(error = %e, "nats: client error"),
        }
        self.changed.notify_waiters();
    }

    pub(crate) fn mark_closed(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    pub(crate) fn disconnects(&self) -> u64 {
        self.disconnects.load(Ordering::Relaxed)
    }
}

/// `url` without passwords, for messages and logs (the workspace's one redaction).
pub(crate) fn redact(url: &str) -> String {
    fleet_protocol::redact::redact_url(url)
}

/// True when `client` is connected and was not closed.
pub(crate) fn is_up(client: &async_nats::Client, conn: &ConnState) -> bool {
    !conn.is_closed() && client.connection_state() == State::Connected
}
