//! One AMQP connection with its shared publisher-confirm channel.
//!
//! lapin's own auto-recovery is off: it is reported not to recover after a
//! broker restart, so [`crate::AmqpBroker::reconnect`] replaces the whole
//! [`Conn`] instead.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fleet_core::BrokerError;
use lapin::options::ConfirmSelectOptions;
use lapin::tcp::OwnedTLSConfig;
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Channel, Connection, ConnectionProperties};

use crate::error::{map_lapin, timed};
use crate::options::AmqpOptions;

/// Locks a short, non-async lock; a panic while holding one leaves plain data behind.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Parses an `amqp://` or `amqps://` URL and applies the heartbeat unless the URL sets one.
pub(crate) fn parse_url(url: &str, opts: &AmqpOptions) -> Result<AMQPUri, BrokerError> {
    if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
        return Err(BrokerError::Config(
            "a RabbitMQ URL starts with amqp:// or amqps:// (amqp://user:pass@host:5672/%2f)"
                .into(),
        ));
    }
    // The parser's messages can echo the URL (and its password): keep them out.
    let mut uri: AMQPUri = url.parse().map_err(|_| {
        BrokerError::Config(
            "malformed AMQP URL: expected amqp[s]://user:pass@host:port/vhost (vhost `/` is %2f)"
                .into(),
        )
    })?;
    uri.query.heartbeat = uri.query.heartbeat.or(Some(opts.heartbeat_secs()));
    Ok(uri)
}

/// Parses `FLEET_BROKER_URL` for RabbitMQ: one URL, or a comma-separated list of the nodes
/// of one cluster (`amqp://u:p@rmq-0:5672/%2f,amqp://u:p@rmq-1:5672/%2f`).
pub(crate) fn parse_urls(list: &str, opts: &AmqpOptions) -> Result<Vec<AMQPUri>, BrokerError> {
    let parts: Vec<&str> = list.split(',').map(str::trim).collect();
    let many = parts.len() > 1;
    parts
        .iter()
        .enumerate()
        .map(|(i, part)| {
            parse_url(part, opts).map_err(|e| match e {
                BrokerError::Config(m) if many => BrokerError::Config(format!(
                    "URL {} of {} in the list: {m}; separate the nodes' URLs with commas",
                    i + 1,
                    parts.len()
                )),
                other => other,
            })
        })
        .collect()
}

/// Checks a RabbitMQ URL or URL list without connecting (start-up configuration checks).
pub fn check_urls(list: &str) -> Result<(), String> {
    parse_urls(list, &AmqpOptions::default())
        .map(drop)
        .map_err(|e| e.to_string())
}

/// A channel in confirm mode shared by every publisher of a connection.
pub(crate) struct Publisher {
    /// The confirm-mode channel.
    pub(crate) channel: Channel,
    /// Held only while a publish is handed to lapin (never across an await): lapin numbers
    /// confirms and queues frames under two separate locks, so two threads publishing at
    /// once could otherwise get each other's confirms.
    pub(crate) order: Mutex<()>,
}

/// An open connection.
pub(crate) struct Conn {
    pub(crate) connection: Connection,
    publisher: Mutex<Arc<Publisher>>,
    reopen: tokio::sync::Mutex<()>,
    /// Bound on every request after the handshake.
    pub(crate) op_timeout: Duration,
    pub(crate) endpoint: String,
}

impl Conn {
    /// Connects and opens the confirm channel, all within `connect_timeout`.
    pub(crate) async fn open(uri: &AMQPUri, opts: &AmqpOptions) -> Result<Arc<Conn>, BrokerError> {
        let endpoint = format!(
            "{}://{}:{}",
            if uri.scheme == AMQPScheme::AMQPS {
                "amqps"
            } else {
                "amqp"
            },
            uri.authority.host,
            uri.authority.port
        );
        let props = ConnectionProperties::default()
            .with_connection_name(opts.connection_name.as_str().into());
        let tls = tls_config(opts)?;
        let open = async {
            let runtime = lapin::runtime::default_runtime()
                .map_err(|e| BrokerError::Config(format!("no async runtime for lapin: {e}")))?;
            let connection = Connection::connect_uri_with_config(uri.clone(), props, tls, runtime)
                .await
                .map_err(|e| refused(&endpoint, &e))?;
            let channel = open_confirm_channel(&connection).await?;
            Ok::<_, BrokerError>((connection, channel))
        };
        let (connection, channel) = tokio::time::timeout(opts.connect_timeout, open)
            .await
            .map_err(|_| {
                BrokerError::ConnectionLost(format!(
                    "no AMQP connection to {endpoint} within {:?}",
                    opts.connect_timeout
                ))
            })??;
        tracing::info!(%endpoint, name = %opts.connection_name, "connected to RabbitMQ");
        Ok(Arc::new(Conn {
            connection,
            publisher: Mutex::new(Arc::new(Publisher {
                channel,
                order: Mutex::new(()),
            })),
            reopen: tokio::sync::Mutex::new(()),
            op_timeout: opts.confirm_timeout,
            endpoint,
        }))
    }

    /// Connects to the first of `uris` that answers, trying them in order from `first`
    /// (wrapping round); returns the connection and the index of its URL. A node that
    /// refuses the login ends the search: the others share its users.
    pub(crate) async fn open_any(
        uris: &[AMQPUri],
        first: usize,
        opts: &AmqpOptions,
    ) -> Result<(Arc<Conn>, usize), BrokerError> {
        let n = uris.len();
        let mut last = None;
        for i in 0..n {
            let at = (first + i) % n;
            match Conn::open(&uris[at], opts).await {
                Ok(conn) => return Ok((conn, at)),
                Err(e @ BrokerError::Config(_)) => return Err(e),
                Err(e) => {
                    if n > 1 {
                        tracing::warn!(error = %e, node = at + 1, of = n, "RabbitMQ node not reachable; trying the next");
                    }
                    last = Some(e);
                }
            }
        }
        Err(match last {
            Some(BrokerError::ConnectionLost(m)) if n > 1 => BrokerError::ConnectionLost(format!(
                "none of the {n} RabbitMQ nodes answered; last: {m}"
            )),
            Some(e) => e,
            None => BrokerError::Config("FLEET_BROKER_URL names no RabbitMQ node".into()),
        })
    }

    /// True while the connection is open.
    pub(crate) fn is_connected(&self) -> bool {
        self.connection.status().connected()
    }

    /// Fails fast with [`BrokerError::ConnectionLost`] when the connection is gone.
    pub(crate) fn ensure_connected(&self) -> Result<(), BrokerError> {
        if self.is_connected() {
            Ok(())
        } else {
            Err(BrokerError::ConnectionLost(format!(
                "connection to {} is closed",
                self.endpoint
            )))
        }
    }

    /// A fresh channel (for a subscription or one admin operation).
    pub(crate) async fn channel(&self) -> Result<Channel, BrokerError> {
        self.ensure_connected()?;
        timed(
            self.op_timeout,
            "opening a channel",
            self.connection.create_channel(),
        )
        .await
    }

    /// The shared confirm channel, reopened if a refused publish (e.g. to a missing
    /// exchange) closed it while the connection stayed up.
    pub(crate) async fn publisher(&self) -> Result<Arc<Publisher>, BrokerError> {
        let current = lock(&self.publisher).clone();
        if current.channel.status().connected() {
            return Ok(current);
        }
        self.ensure_connected()?;
        let _one = tokio::time::timeout(self.op_timeout, self.reopen.lock())
            .await
            .map_err(|_| BrokerError::Timeout(self.op_timeout))?;
        let current = lock(&self.publisher).clone();
        if current.channel.status().connected() {
            return Ok(current);
        }
        tracing::warn!(endpoint = %self.endpoint, "publish channel was closed; opening a new one");
        let channel = tokio::time::timeout(self.op_timeout, open_confirm_channel(&self.connection))
            .await
            .map_err(|_| BrokerError::Timeout(self.op_timeout))??;
        let fresh = Arc::new(Publisher {
            channel,
            order: Mutex::new(()),
        });
        *lock(&self.publisher) = fresh.clone();
        Ok(fresh)
    }

    /// Closes the connection (bounded); its channels and consumers end with it.
    pub(crate) async fn close(&self) {
        if self.is_connected() {
            let closing = self.connection.close(200, "closing".into());
            if let Ok(Err(e)) = tokio::time::timeout(self.op_timeout, closing).await {
                tracing::debug!(error = %e, "closing the AMQP connection");
            }
        }
    }
}

/// A broker that answers but refuses the handshake (bad login, missing vhost) will not
/// change its mind on a retry: that is a configuration error.
/// The extra CA of `amqps://` (read on every connect, so a rotated file is picked up).
fn tls_config(opts: &AmqpOptions) -> Result<OwnedTLSConfig, BrokerError> {
    let cert_chain = match &opts.ca_file {
        None => None,
        Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
            BrokerError::Config(format!(
                "FLEET_BROKER_CA_FILE {}: cannot read it ({e}); it must be the PEM file of the CA that signed the broker's certificate",
                path.display()
            ))
        })?),
    };
    Ok(OwnedTLSConfig {
        identity: None,
        cert_chain,
    })
}

/// True when `e` (or its causes) says the peer's TLS certificate was rejected: a setting to fix,
/// not an outage to wait out.
fn certificate_rejected(e: &dyn std::error::Error) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.to_string().contains("invalid peer certificate") {
            return true;
        }
        cur = err.source();
    }
    false
}

fn refused(endpoint: &str, e: &lapin::Error) -> BrokerError {
    if certificate_rejected(e) {
        BrokerError::Config(format!(
            "the TLS certificate of RabbitMQ at {endpoint} was rejected ({e}): set FLEET_BROKER_CA_FILE to the PEM file of the CA that signed it, and connect with a host name the certificate carries"
        ))
    } else if e.is_amqp_error() {
        BrokerError::Config(format!(
            "RabbitMQ at {endpoint} refused the connection ({e}): check the user, password and \
             vhost in the URL"
        ))
    } else {
        map_lapin(&format!("connecting to {endpoint}"), e)
    }
}

async fn open_confirm_channel(connection: &Connection) -> Result<Channel, BrokerError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| map_lapin("opening the publish channel", &e))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| map_lapin("enabling publisher confirms", &e))?;
    Ok(channel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parsing_sets_heartbeat_and_hides_password() {
        let opts = AmqpOptions {
            heartbeat: Duration::from_secs(5),
            ..AmqpOptions::default()
        };
        let uri = parse_url("amqp://u:p@h:5672/%2f", &opts).unwrap();
        assert_eq!(uri.query.heartbeat, Some(5));
        assert_eq!(uri.vhost, "/");
        let uri = parse_url("amqps://u:p@h/%2f?heartbeat=30", &opts).unwrap();
        assert_eq!(uri.query.heartbeat, Some(30));
        assert_eq!(uri.scheme, AMQPScheme::AMQPS);
        let err = parse_url("nats://u:secret@h", &opts).unwrap_err();
        assert!(matches!(err, BrokerError::Config(ref m) if !m.contains("secret")));
        let err = parse_url("amqp://u:secret@h:notaport/%2f", &opts).unwrap_err();
        assert!(matches!(err, BrokerError::Config(ref m) if !m.contains("secret")));
    }
}
