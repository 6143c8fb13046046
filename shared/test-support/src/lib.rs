//! Test fixtures shared by fleet's broker, runtime and cross-service tests.
//!
//! * [`unique_prefix`] names queues, streams and consumers so that tests never
//!   collide on a long-lived broker (DESIGN §8, test hygiene).
//! * [`wait_for`] / [`wait_for_blocking`] poll a condition with a bound and a
//!   panic message that says what was awaited.
//! * [`FaultProxy`] sits between a client and a broker or database and cuts,
//!   refuses or blackholes connections on demand.
//! * [`tls::TestCa`] issues certificates for a test; [`tls::TlsProxy`] puts a TLS
//!   listener in front of a plaintext service.
//! * [`corpus`] generates the mixed item set (40 % ~2.5 KB, 60 % ~25 KB of prose) that the
//!   mixed benchmark and the fault campaign push through the fleet.
//! * [`amqp_url`], [`nats_url`] and [`postgres_url`] locate the machine's real
//!   services (`scripts/services.sh` starts them), overridable by environment.

pub mod corpus;
pub mod http;
mod proxy;
mod run;
pub mod tls;
mod wait;

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};

pub use proxy::FaultProxy;
pub use run::run_to_exit;
pub use wait::{Condition, wait_for, wait_for_blocking};

/// The prefix every name made by [`unique_prefix`] starts with; sweepers match on it.
pub const TEST_NAME_PREFIX: &str = "t-";

/// Environment variable overriding [`amqp_url`].
pub const AMQP_URL_ENV: &str = "FLEET_TEST_AMQP_URL";
/// Environment variable overriding [`nats_url`].
pub const NATS_URL_ENV: &str = "FLEET_TEST_NATS_URL";
/// Environment variable overriding [`postgres_url`].
pub const DATABASE_URL_ENV: &str = "FLEET_TEST_DATABASE_URL";

/// Default for [`amqp_url`]: the local RabbitMQ, default vhost.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Default for [`nats_url`]: the local nats-server with JetStream.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
/// Default for [`postgres_url`]: the local PostgreSQL, database `test`, trust auth.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Returns a run-unique name prefix `t-<tag>-<8 hex>`, lowercase, valid for RabbitMQ names.
///
/// `tag` is lowercased and every character outside `[a-z0-9-]` becomes `-`.
/// The result only contains `[a-z0-9-]`, so [`nats_name`] of it (or of
/// anything built from it with `-`) is a valid NATS stream or consumer name.
///
/// ```
/// let p = fleet_test_support::unique_prefix("redelivery");
/// assert!(p.starts_with("t-redelivery-"));
/// assert_eq!(p.len(), "t-redelivery-".len() + 8);
/// ```
pub fn unique_prefix(tag: &str) -> String {
    let tag: String = tag
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{TEST_NAME_PREFIX}{tag}-{}", &id[..8])
}

/// Converts a name made from [`unique_prefix`] to NATS style: uppercase, `-` → `_`.
///
/// ```
/// assert_eq!(fleet_test_support::nats_name("t-dlq-0a1b2c3d"), "T_DLQ_0A1B2C3D");
/// ```
pub fn nats_name(name: &str) -> String {
    name.to_ascii_uppercase().replace('-', "_")
}

/// The AMQP URL of the test RabbitMQ: `$FLEET_TEST_AMQP_URL` or [`DEFAULT_AMQP_URL`].
pub fn amqp_url() -> String {
    env_or(AMQP_URL_ENV, DEFAULT_AMQP_URL)
}

/// The URL of the test nats-server: `$FLEET_TEST_NATS_URL` or [`DEFAULT_NATS_URL`].
pub fn nats_url() -> String {
    env_or(NATS_URL_ENV, DEFAULT_NATS_URL)
}

/// The URL of the test PostgreSQL: `$FLEET_TEST_DATABASE_URL` or [`DEFAULT_DATABASE_URL`].
pub fn postgres_url() -> String {
    env_or(DATABASE_URL_ENV, DEFAULT_DATABASE_URL)
}

fn env_or(var: &str, default: &str) -> String {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => default.to_owned(),
    }
}

/// Splits `scheme://[userinfo@]host[:port][rest]` into (prefix up to host, host, port, rest).
fn split_url(url: &str) -> io::Result<(&str, &str, Option<&str>, &str)> {
    let bad = || io::Error::new(io::ErrorKind::InvalidInput, format!("not a URL: {url}"));
    let authority_start = url.find("://").ok_or_else(bad)? + 3;
    let after = &url[authority_start..];
    let authority_len = after.find(['/', '?', '#']).unwrap_or(after.len());
    let authority = &after[..authority_len];
    let host_start = authority.rfind('@').map_or(0, |i| i + 1);
    let hostport = &authority[host_start..];
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let end = v6.find(']').ok_or_else(bad)?;
        let port = v6[end + 1..].strip_prefix(':');
        (&hostport[..end + 2], port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err(bad());
    }
    let prefix = &url[..authority_start + host_start];
    let rest = &after[authority_len..];
    Ok((prefix, host, port, rest))
}

/// The socket address a service URL points at (amqp, nats, postgres default ports known).
///
/// Use it as the upstream of a [`FaultProxy`]; resolves host names (blocking).
pub fn url_addr(url: &str) -> io::Result<SocketAddr> {
    let (prefix, host, port, _) = split_url(url)?;
    let port: u16 = match port {
        Some(p) => p.parse().map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("bad port in {url}"))
        })?,
        None => match prefix.split("://").next().unwrap_or_default() {
            "amqp" => 5672,
            "amqps" => 5671,
            "nats" | "tls" => 4222,
            "postgres" | "postgresql" => 5432,
            scheme => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("no port in {url} and no default for scheme {scheme:?}"),
                ));
            }
        },
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (host, port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{host} did not resolve")))
}

/// Returns `url` with its host and port replaced by `addr` (e.g. a [`FaultProxy::addr`]).
///
/// ```
/// let url = fleet_test_support::url_with_addr(
///     "amqp://guest:guest@127.0.0.1:5672/%2f",
///     "127.0.0.1:40001".parse().unwrap(),
/// ).unwrap();
/// assert_eq!(url, "amqp://guest:guest@127.0.0.1:40001/%2f");
/// ```
pub fn url_with_addr(url: &str, addr: SocketAddr) -> io::Result<String> {
    let (prefix, _, _, rest) = split_url(url)?;
    Ok(format!("{prefix}{addr}{rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_shape_and_uniqueness() {
        let a = unique_prefix("Conformance: NATS.x");
        let b = unique_prefix("Conformance: NATS.x");
        assert_ne!(a, b);
        assert!(a.starts_with("t-conformance--nats-x-"), "{a}");
        let hex = a.rsplit('-').next().expect("suffix");
        assert_eq!(hex.len(), 8);
        assert!(
            hex.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
        let n = nats_name(&a);
        assert!(
            n.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        );
    }

    #[test]
    fn url_parsing() {
        let addr: SocketAddr = "127.0.0.1:4000".parse().expect("addr");
        assert_eq!(
            url_addr(DEFAULT_AMQP_URL).expect("amqp"),
            "127.0.0.1:5672".parse().expect("addr")
        );
        assert_eq!(
            url_addr("nats://127.0.0.1").expect("nats").port(),
            4222,
            "default nats port"
        );
        assert_eq!(url_addr(DEFAULT_DATABASE_URL).expect("pg").port(), 5432);
        assert_eq!(
            url_addr("amqp://u:p@[::1]:5673/v").expect("v6").port(),
            5673
        );
        assert!(url_addr("127.0.0.1:5672").is_err());
        assert!(url_addr("http://127.0.0.1/").is_err());
        assert_eq!(
            url_with_addr(DEFAULT_NATS_URL, addr).expect("nats"),
            "nats://127.0.0.1:4000"
        );
        assert_eq!(
            url_with_addr(DEFAULT_DATABASE_URL, addr).expect("pg"),
            "postgres://postgres@127.0.0.1:4000/test"
        );
        assert_eq!(
            url_with_addr("amqp://u:p@[::1]:5673/v?heartbeat=2", addr).expect("v6"),
            "amqp://u:p@127.0.0.1:4000/v?heartbeat=2"
        );
    }

    #[test]
    fn default_urls() {
        // The variables are normally unset here; when set they must win.
        for (f, var, default) in [
            (amqp_url as fn() -> String, AMQP_URL_ENV, DEFAULT_AMQP_URL),
            (nats_url, NATS_URL_ENV, DEFAULT_NATS_URL),
            (postgres_url, DATABASE_URL_ENV, DEFAULT_DATABASE_URL),
        ] {
            match std::env::var(var) {
                Ok(v) if !v.trim().is_empty() => assert_eq!(f(), v),
                _ => assert_eq!(f(), default),
            }
        }
    }
}
