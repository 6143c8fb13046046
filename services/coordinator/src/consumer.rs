//! A resilient consume loop over one broker [`Source`]: bounded fetches,
//! resubscribe after errors (reconnecting on connection loss, with backoff),
//! and a handler per fetched batch of deliveries.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use fleet_core::{Broker, Delivery, Source, SubscribeOptions, Subscription};
use tokio_util::sync::CancellationToken;

/// Longest wait of one fetch (also how quickly shutdown is noticed).
const FETCH_WAIT: Duration = Duration::from_millis(500);

async fn subscribe(
    broker: &Arc<dyn Broker>,
    source: &Source,
    prefetch: u16,
    shutdown: &CancellationToken,
) -> Option<Box<dyn Subscription>> {
    let mut pause = Duration::from_millis(200);
    loop {
        match broker
            .subscribe(source.clone(), SubscribeOptions { prefetch })
            .await
        {
            Ok(s) => return Some(s),
            Err(e) => {
                tracing::warn!(error = %e, ?source, "subscribe failed; retrying");
                if e.is_connection() {
                    let _ = broker.reconnect().await;
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = shutdown.cancelled() => return None,
        }
        pause = (pause * 2).min(Duration::from_secs(10));
    }
}

/// Consumes `source` until `shutdown`, handing each non-empty fetch (at most `max`) to `handle`.
/// The handler settles every delivery it is given.
pub async fn consume<F, Fut>(
    broker: Arc<dyn Broker>,
    source: Source,
    max: usize,
    shutdown: CancellationToken,
    mut handle: F,
) where
    F: FnMut(Vec<Delivery>) -> Fut,
    Fut: Future<Output = ()>,
{
    let prefetch = u16::try_from(max).unwrap_or(u16::MAX);
    let Some(mut sub) = subscribe(&broker, &source, prefetch, &shutdown).await else {
        return;
    };
    while !shutdown.is_cancelled() {
        let fetched = tokio::select! {
            r = sub.fetch(max, FETCH_WAIT) => r,
            () = shutdown.cancelled() => break,
        };
        match fetched {
            Ok(ds) if ds.is_empty() => {}
            Ok(ds) => handle(ds).await,
            Err(e) => {
                tracing::warn!(error = %e, ?source, "fetch failed; resubscribing");
                drop(sub);
                if e.is_connection() {
                    let _ = broker.reconnect().await;
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    () = shutdown.cancelled() => break,
                }
                let Some(s) = subscribe(&broker, &source, prefetch, &shutdown).await else {
                    return;
                };
                sub = s;
            }
        }
    }
}

/// Settles a delivery; a failed settlement is logged (the broker redelivers, which is harmless).
pub async fn settle<F>(what: &str, f: F)
where
    F: Future<Output = Result<(), fleet_core::BrokerError>>,
{
    if let Err(e) = f.await {
        tracing::warn!(error = %e, what, "settling a delivery failed; it will be redelivered");
    }
}
