//! Connecting: URL checks, client options, and connection-state tracking from client events.

use std::sync::Arc;

use async_nats::ConnectOptions;
use fleet_core::BrokerError;

use crate::broker::NatsBroker;
use crate::conn::{ConnState, MAX_REPLICAS, NatsOptions, redact};

/// True when `e` (or its causes) says the server's TLS certificate was rejected: a setting to
/// fix, not an outage to wait out.
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

/// Connects to a `nats://` or `tls://` URL (several may be given, comma-separated).
///
/// Fails (never retries) when the server cannot be reached within `opts.connect_timeout`; after
/// that the client reconnects by itself, forever, and
/// [`Broker::reconnect`](fleet_core::Broker::reconnect) waits for it.
pub async fn connect(url: &str, opts: NatsOptions) -> Result<NatsBroker, BrokerError> {
    let urls: Vec<&str> = url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    if urls.is_empty() {
        return Err(BrokerError::Config("empty NATS URL".into()));
    }
    for u in &urls {
        if !(u.starts_with("nats://") || u.starts_with("tls://")) {
            return Err(BrokerError::Config(format!(
                "unsupported NATS URL {:?}: use nats://HOST:PORT or tls://HOST:PORT",
                redact(u)
            )));
        }
    }
    check_replicas(opts.replicas)?;
    let conn = Arc::new(ConnState::default());
    let events = conn.clone();
    let mut options = ConnectOptions::new()
        .connection_timeout(opts.connect_timeout)
        .request_timeout(Some(opts.request_timeout))
        .ping_interval(opts.ping_interval)
        .event_callback(move |event| {
            let events = events.clone();
            async move { events.on_event(&event) }
        });
    if urls.iter().all(|u| u.starts_with("tls://")) {
        options = options.require_tls(true);
    }
    if let Some(name) = &opts.client_name {
        options = options.name(name);
    }
    if let Some(ca) = &opts.ca_file {
        // async-nats reads it while connecting; an unreadable file is reported here, clearly.
        std::fs::metadata(ca).map_err(|e| {
            BrokerError::Config(format!(
                "FLEET_BROKER_CA_FILE {}: cannot read it ({e}); it must be the PEM file of the CA that signed the NATS server's certificate",
                ca.display()
            ))
        })?;
        options = options.add_root_certificates(ca.clone());
    }
    let shown = redact(url);
    let addrs: Vec<async_nats::ServerAddr> = urls
        .iter()
        .map(|u| u.parse())
        .collect::<Result<_, _>>()
        .map_err(|e| BrokerError::Config(format!("bad NATS URL {shown:?}: {e}")))?;
    let client = tokio::time::timeout(opts.connect_timeout, options.connect(addrs))
        .await
        .map_err(|_| {
            BrokerError::ConnectionLost(format!(
                "no NATS connection to {shown} within {:?}",
                opts.connect_timeout
            ))
        })?
        .map_err(|e| {
            if certificate_rejected(&e) {
                BrokerError::Config(format!(
                    "the TLS certificate of the NATS server at {shown} was rejected ({e}): set FLEET_BROKER_CA_FILE to the PEM file of the CA that signed it, and connect with a host name the certificate carries"
                ))
            } else {
                BrokerError::ConnectionLost(format!("cannot connect to NATS at {shown}: {e}"))
            }
        })?;
    let info = client.server_info();
    if let Err(e) = check_clustered(opts.replicas, &info) {
        // Not a connection problem: retrying cannot help, so close and report it.
        let _ = tokio::time::timeout(opts.request_timeout, client.drain()).await;
        return Err(e);
    }
    Ok(NatsBroker::new(client, opts, conn))
}

/// Refuses a replica count JetStream cannot take; warns on an even one.
pub(crate) fn check_replicas(replicas: usize) -> Result<(), BrokerError> {
    if !(1..=MAX_REPLICAS).contains(&replicas) {
        return Err(BrokerError::Config(format!(
            "FLEET_NATS_REPLICAS is {replicas}: JetStream keeps 1 to {MAX_REPLICAS} replicas of a \
             stream (1 for a single server, 3 for a three-node cluster)"
        )));
    }
    if replicas.is_multiple_of(2) {
        // A Raft group of 2n tolerates no more failures than one of 2n-1, at more cost.
        tracing::warn!(
            replicas,
            "FLEET_NATS_REPLICAS is even ({replicas}): a group of {replicas} survives no more \
             node losses than one of {}; use an odd count (3 or 5)",
            replicas - 1
        );
    }
    Ok(())
}

/// Refuses more than one replica on a server that is not part of a cluster: JetStream would
/// fail (or, on some versions, quietly downgrade) every stream declaration.
pub(crate) fn check_clustered(
    replicas: usize,
    info: &async_nats::ServerInfo,
) -> Result<(), BrokerError> {
    if replicas > 1 && info.cluster.as_deref().is_none_or(str::is_empty) {
        return Err(BrokerError::Config(format!(
            "FLEET_NATS_REPLICAS is {replicas} but nats-server {} at {}:{} ({}) is not part of a \
             cluster, so it can keep only one replica of a stream: set FLEET_NATS_REPLICAS=1, or \
             point FLEET_BROKER_URL at a JetStream cluster of at least {replicas} nodes",
            info.version, info.host, info.port, info.server_name
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_counts_outside_one_to_five_are_refused() {
        assert!(check_replicas(1).is_ok());
        assert!(check_replicas(2).is_ok(), "even only warns");
        assert!(check_replicas(5).is_ok());
        for bad in [0, 6] {
            let e = check_replicas(bad).unwrap_err().to_string();
            assert!(e.contains("FLEET_NATS_REPLICAS"), "{e}");
        }
    }

    #[test]
    fn more_than_one_replica_needs_a_cluster() {
        let mut info = async_nats::ServerInfo {
            version: "2.9.10".into(),
            ..Default::default()
        };
        assert!(check_clustered(1, &info).is_ok());
        let e = check_clustered(3, &info).unwrap_err();
        assert!(matches!(&e, BrokerError::Config(m) if m.contains("not part of a cluster")));
        info.cluster = Some("fleet".into());
        assert!(check_clustered(3, &info).is_ok());
    }
}
