//! A resilient consume loop over one broker [`Source`] (the runtime's [`Consumer`], the same
//! loop the workers use): bounded fetches, a handler per fetched batch of deliveries, and
//! after any failure (a refused subscribe, a lost connection, a consumer the broker cancelled
//! because its queue was deleted) a resubscribe that reconnects and redeclares the
//! coordinator's topology, with backoff. A consumer that
//! cannot get its subscription back within the limits (`FLEET_RESUBSCRIBE_LIMIT` while the
//! broker is connected, `FLEET_MAX_OUTAGE` while it is not) returns an error: its supervisor
//! then makes the coordinator unready and exit non-zero.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use fleet_core::{Delivery, Settlement, Source, SubscribeOptions};
use fleet_runtime::consume::{Consumer, Step};
use fleet_runtime::resubscribe::{Limits, Resubscriber};
use fleet_runtime::telemetry::Health;
use tokio_util::sync::CancellationToken;

use crate::app::App;

/// Longest wait of one fetch (also how quickly shutdown is noticed).
const FETCH_WAIT: Duration = Duration::from_millis(500);

/// Consumes `source` until `shutdown`, handing each non-empty fetch (at most `max`) to `handle`,
/// which returns every delivery it was given with its [`Settlement`]; this loop applies them
/// (`what` names the source in logs and metrics). An error means the consumer is gone.
pub async fn consume<F, Fut>(
    app: &App,
    health: Arc<Health>,
    source: Source,
    what: &'static str,
    max: usize,
    shutdown: CancellationToken,
    mut handle: F,
) -> anyhow::Result<()>
where
    F: FnMut(Vec<Delivery>) -> Fut,
    Fut: Future<Output = Vec<(Delivery, Settlement)>>,
{
    let prefetch = u16::try_from(max).unwrap_or(u16::MAX);
    let resub = Resubscriber::new(
        app.broker.clone(),
        source,
        SubscribeOptions { prefetch },
        crate::topology(&app.config),
        Limits::from_config(&app.config.runtime),
        health,
    );
    let mut consumer = Consumer::new(resub, what);
    while let Some(step) = consumer.next(max, FETCH_WAIT, &shutdown).await? {
        if let Step::Fetched(ds) = step
            && !ds.is_empty()
        {
            apply(what, handle(ds).await).await;
        }
    }
    consumer.close().await;
    Ok(())
}

/// Applies the settlements of one fetch, in order; a failed settlement is logged (the broker
/// redelivers, which is harmless), an applied one counted.
async fn apply(what: &'static str, settled: Vec<(Delivery, Settlement)>) {
    for (d, s) in settled {
        let counted = s.clone();
        if s.apply_logged(d.acker, what).await.is_some() {
            crate::park::applied(what, &counted);
        }
    }
}
