//! The runtime side: a [`Worker`] with everything on (events by group commit, heartbeats,
//! metrics, admin server) running a no-op [`Handler`], connecting by URL like a service.
//!
//! The clock starts at the first handler call and stops once the handler has seen all N jobs
//! and the worker's unsettled-deliveries gauge (`fleet_deliveries_unsettled`, lowered once a
//! delivery's settlement has gone out) is back to zero: the worker owes the broker nothing,
//! whatever its concurrency slots say. The stage queue must then be empty.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_trait::async_trait;
use fleet_core::Broker;
use fleet_runtime::telemetry::names::DELIVERIES_UNSETTLED;
use fleet_runtime::{Handler, JobContext, JobEnvelope, JobError, Output, Worker};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cpu::Snapshot;
use crate::load::{self, Run, STAGE};
use crate::probe::{ProbeBroker, Stats};
use crate::report::Measured;

/// How often the end condition is checked.
const POLL: Duration = Duration::from_millis(5);
/// How long the worker may take to drain and stop once everything is acked.
const STOP_LIMIT: Duration = Duration::from_secs(60);

/// Counts calls and remembers when the first came.
#[derive(Clone, Default)]
struct Noop {
    handled: Arc<AtomicU64>,
    first: Arc<OnceLock<Snapshot>>,
}

#[async_trait]
impl Handler for Noop {
    async fn handle(&self, _job: &JobEnvelope, _ctx: &JobContext) -> Result<Output, JobError> {
        self.first.get_or_init(Snapshot::now);
        self.handled.fetch_add(1, Ordering::Relaxed);
        Ok(Output::default())
    }
}

/// Runs a worker until it has handled and acked `n` jobs; measures first call to last ack.
///
/// With `probe`, the worker gets its broker connection wrapped in a [`ProbeBroker`] and the
/// breakdown is printed; otherwise it connects by URL like a service.
pub async fn consume(
    run: &Run,
    broker: &dyn Broker,
    n: u64,
    limit: Duration,
    probe: bool,
) -> anyhow::Result<Measured> {
    // The worker installs the same process-wide recorder; taking it first lets us read it.
    let metrics = fleet_runtime::telemetry::admin::prometheus()?;
    let handler = Noop::default();
    let shutdown = CancellationToken::new();
    let mut worker = Worker::new(run.cfg.clone(), STAGE);
    let stats = Arc::new(Stats::default());
    // A broker handed to the worker stays open when it stops: close it ourselves.
    let mut injected: Option<Arc<dyn Broker>> = None;
    if probe {
        let inner = fleet_runtime::connect::connect(&run.cfg)
            .await
            .context("connecting the probed worker")?;
        injected = Some(inner.clone());
        worker = worker.with_broker(Arc::new(ProbeBroker::new(inner, stats.clone())));
    }
    let mut task = tokio::spawn(worker.run(handler.clone(), shutdown.clone()));

    let until = Instant::now() + limit;
    let last = loop {
        if task.is_finished() {
            let ended = (&mut task).await.context("the worker task panicked")?;
            ended.context("the worker stopped before consuming everything")?;
            bail!("the worker stopped before consuming everything");
        }
        let handled = handler.handled.load(Ordering::Relaxed);
        if handled >= n && unsettled(&metrics.render()) == Some(0.0) {
            break Snapshot::now();
        }
        if Instant::now() >= until {
            shutdown.cancel();
            bail!("runtime: {handled} of {n} jobs handled after {limit:?}");
        }
        tokio::time::sleep(POLL).await;
    };
    let first = *handler.first.get().context("no job was handled")?;
    let left = load::depth(broker).await?;
    shutdown.cancel();
    tokio::time::timeout(STOP_LIMIT, task)
        .await
        .with_context(|| format!("the worker did not stop within {STOP_LIMIT:?}"))?
        .context("the worker task panicked")?
        .context("the worker failed")?;
    if let Some(b) = injected {
        b.close().await;
    }
    if left != 0 {
        bail!("runtime: {left} jobs still queued after all {n} were acked");
    }
    let handled = handler.handled.load(Ordering::Relaxed);
    if handled != n {
        bail!("runtime: the handler ran {handled} times for {n} jobs (redeliveries?)");
    }
    let measured = Measured {
        jobs: n,
        start: first,
        end: last,
    };
    if probe {
        stats.print(run.kind.label(), n, measured.elapsed());
    }
    Ok(measured)
}

/// The stage's unsettled-deliveries gauge in a Prometheus text rendering.
fn unsettled(text: &str) -> Option<f64> {
    let label = format!("stage=\"{STAGE}\"");
    text.lines()
        .filter(|l| l.starts_with(DELIVERIES_UNSETTLED) && l.contains(&label))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_unsettled_gauge() {
        let text = "# TYPE fleet_deliveries_unsettled gauge\nfleet_deliveries_unsettled{stage=\"noop\"} 3\n\
                    fleet_deliveries_unsettled{stage=\"other\"} 1\n";
        assert_eq!(unsettled(text), Some(3.0));
        assert_eq!(
            unsettled("fleet_deliveries_unsettled{stage=\"other\"} 1\n"),
            None
        );
    }
}
