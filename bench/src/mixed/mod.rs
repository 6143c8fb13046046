//! `fleet-bench mixed`: 1,000 mixed items (40 % ~2.5 KB, 60 % ~25 KB of text) through the
//! real fleet-analyzer, fleet-summarizer (extractive) and fleet-writer (PostgreSQL) binaries
//! on one broker: items/s, end-to-end latency from publish to written row, each service's
//! CPU time and peak RSS, next to the same work done in-process in one thread.
//!
//! The coordinator is not in the path: the benchmark publishes the `analyze` jobs itself
//! (as the coordinator's outbox relay would), so the figures are the three workers, the
//! broker and the database. The workers' event batches still go to the broker (and wait
//! there, unconsumed, until the run's topology is deleted).

mod baseline;
mod db;
mod measure;
mod report;
mod services;

use std::time::Duration;

use anyhow::{Context as _, bail};
use fleet_core::Topology;
use fleet_protocol::Names;

use fleet_test_support::corpus;

use crate::load::Kind;
use crate::{Which, cpu, load};

/// Every stage of the benchmark's route, in order.
pub const STAGES: [&str; 3] = ["analyze", "summarize", "write"];

/// Options of `fleet-bench mixed`.
#[derive(Debug, Clone, clap::Args)]
pub struct MixedArgs {
    /// Brokers to run on (one after the other with `all`).
    #[arg(long, value_enum, default_value = "all")]
    pub broker: Which,
    /// Items pushed through the pipeline.
    #[arg(long, default_value_t = 1000)]
    pub items: usize,
    /// Share of small (~2.5 KB) items, in percent; the rest are ~25 KB.
    #[arg(long, default_value_t = 40)]
    pub small_percent: usize,
    /// Seed of the generated text (same seed, same items).
    #[arg(long, default_value_t = 3)]
    pub seed: u64,
    /// Confirmed publishes in flight while pushing the items.
    #[arg(long, default_value_t = 64)]
    pub publish_in_flight: usize,
    /// RabbitMQ URL.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub amqp_url: String,
    /// NATS URL.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// PostgreSQL URL; the run creates and drops its own schema in it.
    #[arg(
        long,
        env = "FLEET_BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    pub database_url: String,
    /// Hard bound on one broker's run (start, push, wait, checks, stop), in seconds; on
    /// expiry the services are killed, everything is cleaned up and the exit is non-zero.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
    /// Items sent one at a time into the idle pipeline before the burst (latency without a
    /// backlog); half small, half large; 0 skips this.
    #[arg(long, default_value_t = 10)]
    pub probe_items: usize,
    /// Skip the in-process baseline.
    #[arg(long)]
    pub no_baseline: bool,
    /// Keep the services' log files after a successful run (they are always kept after a failure).
    #[arg(long)]
    pub keep_logs: bool,
}

impl MixedArgs {
    /// The URL of `kind`.
    fn url(&self, kind: Kind) -> &str {
        match kind {
            Kind::RabbitMq => &self.amqp_url,
            Kind::Nats => &self.nats_url,
        }
    }
}

/// Runs the mixed benchmark on the chosen brokers; fails if any run or end-state check fails.
pub async fn main(args: MixedArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.items > 0, "--items must be at least 1");
    anyhow::ensure!(args.small_percent <= 100, "--small-percent must be 0..=100");
    anyhow::ensure!(
        args.publish_in_flight > 0,
        "--publish-in-flight must be at least 1"
    );
    let binaries = services::locate()?;
    // SIGTERM or Ctrl-C ends the current run through its cleanup path (children killed,
    // topology and schema deleted) instead of killing this process outright.
    let stop = fleet_runtime::shutdown::on_signals();
    let kinds: &[Kind] = match args.broker {
        Which::Rabbitmq => &[Kind::RabbitMq],
        Which::Nats => &[Kind::Nats],
        Which::All => &[Kind::RabbitMq, Kind::Nats],
    };
    let items = corpus::items(args.seed, args.items, args.small_percent);
    // Other texts than the burst's (another seed), so nothing is warm from the probes.
    let probes = corpus::items(args.seed.wrapping_add(1), args.probe_items, 50);
    let before = cpu::Snapshot::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = cpu::busy_cores(&before, &cpu::Snapshot::now());
    report::header(&args, &items, idle);

    let baseline = if args.no_baseline {
        None
    } else {
        let copy = items.clone();
        let b = tokio::task::spawn_blocking(move || baseline::run(&copy))
            .await
            .context("the baseline thread panicked")??;
        report::baseline(&b);
        Some(b)
    };

    let mut results = Vec::new();
    let mut failed = Vec::new();
    for kind in kinds {
        if stop.is_cancelled() {
            failed.push(kind.label());
            continue;
        }
        match run_on(*kind, &args, &binaries, (&items, &probes), &stop).await {
            Ok(r) => {
                report::result(&r, baseline.as_ref());
                results.push(r);
            }
            Err(e) => {
                eprintln!("[{}] FAILED: {e:#}", kind.label());
                failed.push(kind.label());
            }
        }
    }
    report::summary(&results, baseline.as_ref());
    if !failed.is_empty() {
        bail!("the mixed benchmark failed on {}", failed.join(", "));
    }
    Ok(())
}

/// One broker's run under a fresh prefix and schema, with cleanup on every path.
async fn run_on(
    kind: Kind,
    args: &MixedArgs,
    binaries: &std::collections::BTreeMap<&'static str, std::path::PathBuf>,
    (items, probes): (&[corpus::Item], &[corpus::Item]),
    stop: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<measure::Outcome> {
    // `bench-`: scripts/sweep-test-leftovers.sh deletes such leftovers of a killed run, and
    // leaves them alone while a fleet-bench process is running.
    let hex = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let prefix = format!("bench-mix-{hex}");
    let schema_name = format!("bench_mix_{hex}");
    let names = Names::new(&prefix);
    let topology = Topology::new(names, &STAGES);
    let url = args.url(kind).to_owned();
    let broker_pid = cpu::watch_broker(cpu::url_port(&url, kind.default_port()));
    let log_dir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    eprintln!(
        "[{}] prefix {prefix}, schema {schema_name}, logs in {}",
        kind.label(),
        log_dir.display()
    );
    let broker = load::connect(kind, &url)
        .await
        .with_context(|| format!("connecting to {} at {url}", kind.label()))?;
    let limit = Duration::from_secs(args.timeout_secs);
    let cleanup_limit = Duration::from_secs(60);

    let setup = async {
        tokio::time::timeout(cleanup_limit, broker.declare(&topology))
            .await
            .context("declaring the topology timed out")?
            .context("declaring the topology")?;
        db::Schema::create(&args.database_url, &schema_name).await
    };
    let (schema, outcome) = match setup.await {
        Err(e) => (None, Err(e)),
        Ok(schema) => {
            let ctx = measure::Ctx {
                kind,
                url: &url,
                prefix: &prefix,
                broker: &*broker,
                schema: &schema,
                binaries,
                items,
                probes,
                log_dir: &log_dir,
                publish_in_flight: args.publish_in_flight,
                broker_pid,
            };
            // Dropping the measurement (timeout, Ctrl-C) drops the children: kill_on_drop.
            let outcome = tokio::select! {
                r = tokio::time::timeout(limit, measure::run(&ctx)) => match r {
                    Ok(r) => r,
                    Err(_) => Err(anyhow::anyhow!(
                        "the run did not finish within --timeout-secs {}; services killed",
                        args.timeout_secs
                    )),
                },
                () = stop.cancelled() => Err(anyhow::anyhow!("interrupted; services killed")),
            };
            (Some(schema), outcome)
        }
    };

    // Cleanup on every path; each step bounded, each failure reported.
    let mut problems = Vec::new();
    match tokio::time::timeout(cleanup_limit, broker.delete_topology(&topology)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => problems.push(format!("deleting the topology under {prefix}: {e}")),
        Err(_) => problems.push(format!("deleting the topology under {prefix} timed out")),
    }
    if let Some(schema) = &schema {
        match tokio::time::timeout(cleanup_limit, schema.drop_all()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => problems.push(format!("{e:#}")),
            Err(_) => problems.push(format!("dropping schema {} timed out", schema.name)),
        }
    }
    broker.close().await;
    if outcome.is_ok() && problems.is_empty() && !args.keep_logs {
        let _ = std::fs::remove_dir_all(&log_dir);
    } else {
        eprintln!(
            "[{}] service logs kept in {}",
            kind.label(),
            log_dir.display()
        );
    }
    let outcome = outcome?;
    if !problems.is_empty() {
        bail!("cleanup failed: {}", problems.join("; "));
    }
    Ok(outcome)
}
