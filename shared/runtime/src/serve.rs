//! A bounded HTTP/1 server for axum routers (the admin servers and the coordinator API):
//! `axum::serve` sets no hyper timer, so a client that never finishes its headers holds a
//! connection for ever, and it accepts without limit. This accept loop adds a header-read
//! timeout (which also closes idle keep-alive connections), a connection cap (over it: a
//! 503 and close, counted), a gauge of open connections, and a shutdown bounded in time.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Gauge `{server}`: open HTTP connections.
pub const HTTP_CONNECTIONS: &str = "fleet_http_connections";
/// Counter `{server}`: connections refused (503, closed) because the server was at its cap.
pub const HTTP_CONNECTIONS_REFUSED: &str = "fleet_http_connections_refused_total";

/// How long a refused connection may take to receive its 503 before it is dropped.
const REFUSAL_BUDGET: Duration = Duration::from_secs(1);
/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The bounds of one server.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// Longest a client may take to send a request's headers (and longest an idle
    /// keep-alive connection stays open).
    pub header_timeout: Duration,
    /// Connections served at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// Longest shutdown waits for in-flight requests (and open streams) before dropping them.
    pub shutdown_grace: Duration,
}

impl ServeLimits {
    /// Bounds for an admin server (`/metrics`, `/healthz`, `/readyz`): a few scrapers and probes.
    pub const ADMIN: ServeLimits = ServeLimits {
        header_timeout: Duration::from_secs(10),
        max_connections: 64,
        shutdown_grace: Duration::from_secs(5),
    };
}

/// Registers HELP text for the server metrics.
pub fn describe() {
    metrics::describe_gauge!(HTTP_CONNECTIONS, "Open HTTP connections, by server.");
    metrics::describe_counter!(
        HTTP_CONNECTIONS_REFUSED,
        "HTTP connections answered 503 and closed because the server was at its connection cap, by server."
    );
}

/// Serves `router` on `listener` within `limits` until `stop` is cancelled, then waits at
/// most `limits.shutdown_grace` for open connections before dropping them.
/// `server` names it in the metrics (`api`, `admin`).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    server: &'static str,
    limits: ServeLimits,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut conns = JoinSet::new();
    let gauge = metrics::gauge!(HTTP_CONNECTIONS, "server" => server);
    gauge.set(0.0);
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            // Reaps finished connection tasks so the set stays as small as the open connections.
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                tracing::warn!(server, error = %e, "accepting an HTTP connection failed; retrying");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            metrics::counter!(HTTP_CONNECTIONS_REFUSED, "server" => server).increment(1);
            conns.spawn(refuse(stream, limits.max_connections));
            continue;
        };
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .serve_connection(
                TokioIo::new(stream),
                TowerToHyperService::new(router.clone()),
            );
        let conn = graceful.watch(conn);
        let gauge = gauge.clone();
        gauge.increment(1.0);
        conns.spawn(async move {
            // Errors here are the client's (reset, header timeout): nothing to report upward.
            if let Err(e) = conn.await {
                tracing::debug!(server, error = %e, "HTTP connection ended with an error");
            }
            gauge.decrement(1.0);
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::info!(
            server,
            open = conns.len(),
            grace = ?limits.shutdown_grace,
            "HTTP connections still open after the shutdown grace (e.g. event streams); closing them"
        );
    }
    conns.shutdown().await;
    gauge.set(0.0);
    Ok(())
}

/// Answers 503 on a connection over the cap and closes it, within [`REFUSAL_BUDGET`].
async fn refuse(mut stream: TcpStream, cap: usize) {
    let body = format!(
        "{{\"error\":\"the server has {cap} connections open, its limit\",\"hint\":\"retry after a moment; reuse connections (keep-alive) instead of opening many\"}}"
    );
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _best_effort = tokio::time::timeout(REFUSAL_BUDGET, async {
        // Read what the client sent first: closing with unread data would reset the
        // connection and the client might never see the 503.
        let mut buf = [0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await;
        stream.write_all(reply.as_bytes()).await?;
        stream.shutdown().await?;
        while stream.read(&mut buf).await? > 0 {}
        Ok::<(), std::io::Error>(())
    })
    .await;
}
