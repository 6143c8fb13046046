//! The measured part of one broker's run: start the services, push every item as an
//! `analyze` job, wait for every row, read CPU and memory, check the end state, stop.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use fleet_core::{Broker, Destination, OutMessage, Source, SubscribeOptions};
use fleet_protocol::{JobEnvelope, RouteStep};
use futures::{StreamExt as _, TryStreamExt as _};
use serde_json::json;
use tokio::time::Instant;

use super::STAGES;
use super::corpus::{Item, Size};
use super::db::Schema;
use super::services::{self, Metrics, ProcStats, Running, Service};
use crate::cpu;
use crate::load::Kind;

/// How often the row count is polled (bounds the error of the run's end time).
const POLL: Duration = Duration::from_millis(100);
/// How long the services may take to answer `/readyz`.
const READY_LIMIT: Duration = Duration::from_secs(60);
/// How long the end-state checks wait for the last acks and metrics to settle.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);
/// Drain time granted after SIGTERM (the runtime's default drain deadline is 25 s).
const STOP_GRACE: Duration = Duration::from_secs(40);

/// What one run needs.
pub struct Ctx<'a> {
    /// The broker under test.
    pub kind: Kind,
    /// Its URL.
    pub url: &'a str,
    /// The run-unique prefix.
    pub prefix: &'a str,
    /// The benchmark's own connection (publishing, depths, DLQ checks).
    pub broker: &'a dyn Broker,
    /// The run's schema.
    pub schema: &'a Schema,
    /// The service binaries.
    pub binaries: &'a BTreeMap<&'static str, PathBuf>,
    /// The items.
    pub items: &'a [Item],
    /// Items sent one at a time into the idle pipeline before the burst.
    pub probes: &'a [Item],
    /// Where the services' logs go.
    pub log_dir: &'a Path,
    /// Confirmed publishes in flight.
    pub publish_in_flight: usize,
    /// The broker's pid when found (for its CPU time).
    pub broker_pid: Option<u32>,
}

/// One service's figures over the measured window.
#[derive(Debug, Clone)]
pub struct ServiceFigures {
    /// Which service.
    pub service: Service,
    /// CPU time spent between the first publish and the last row.
    pub cpu: Duration,
    /// Peak RSS of the process's whole life (`VmHWM`), KiB.
    pub peak_rss_kib: u64,
    /// Mean handler time of a succeeded job of the burst (`fleet_job_duration_seconds`).
    pub mean_handler: Option<Duration>,
    /// Jobs of the burst finished, by outcome (from `/metrics`).
    pub finished: BTreeMap<&'static str, u64>,
}

/// Everything one run measured and checked.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The broker.
    pub kind: Kind,
    /// Items pushed.
    pub items: usize,
    /// Time to publish every job (confirmed).
    pub publish: Duration,
    /// First publish to the poll that saw every row.
    pub wall: Duration,
    /// Publish → `written_at` of each item, with its size class.
    pub latencies: Vec<(Size, Duration)>,
    /// The same for the probe items, each sent alone into the idle pipeline.
    pub unloaded: Vec<(Size, Duration)>,
    /// Per service.
    pub services: Vec<ServiceFigures>,
    /// CPU of the broker process over the window.
    pub broker_cpu: Option<Duration>,
    /// CPU of the `postgres` processes over the window (other clients included; backends
    /// that exited meanwhile missing).
    pub postgres_cpu: Duration,
    /// Cores the whole machine kept busy over the window.
    pub machine_busy: Option<f64>,
    /// This process's CPU over the window.
    pub bench_cpu: Option<Duration>,
    /// Mean writer batch commit time and batches (`fleet_writer_commit_duration_seconds`).
    pub commit: Option<(Duration, u64)>,
    /// Event messages left for the (absent) coordinator, when the broker can say.
    pub events_waiting: Option<u64>,
    /// Rows whose summary came from a provider other than `extractive`, or that are partial.
    pub odd_rows: usize,
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Starts the services, pushes the items, waits for every row, checks, stops.
pub async fn run(ctx: &Ctx<'_>) -> anyhow::Result<Outcome> {
    let label = ctx.kind.label();
    let mut running = Vec::new();
    for s in Service::ALL {
        let mut args = vec![
            format!("--broker-url={}", ctx.url),
            format!("--prefix={}", ctx.prefix),
            // No coordinator runs, so no cancellation sync would ever come on RabbitMQ.
            "--control-sync-wait=0s".to_owned(),
        ];
        if s == Service::Writer {
            args.push(format!("--database-url={}", ctx.schema.url));
        }
        running.push(services::spawn(
            s,
            &ctx.binaries[s.binary()],
            &args,
            ctx.log_dir,
        )?);
    }
    services::wait_ready(&mut running, READY_LIMIT).await?;
    eprintln!(
        "[{label}] services ready (pids {}); pushing {} items",
        running
            .iter()
            .map(|r| format!("{} {}", r.service.binary(), r.pid()))
            .collect::<Vec<_>>()
            .join(", "),
        ctx.items.len()
    );

    let unloaded = probe(ctx, &mut running).await?;
    // Metrics after the probes: the burst's figures are differences from these.
    let mut base_metrics = Vec::new();
    for r in &running {
        base_metrics.push(r.metrics().await?);
    }

    // Serialize every job up front: the clock covers publishing, not building.
    let pipeline = format!("{}-p", ctx.prefix);
    let jobs: Vec<(String, OutMessage)> = ctx
        .items
        .iter()
        .map(|i| (i.id.clone(), job(&pipeline, i)))
        .collect();
    let before: Vec<ProcStats> = running
        .iter()
        .map(Running::stats)
        .collect::<Result<_, _>>()?;
    let pg_before = postgres_ticks();
    let snap_before = cpu::Snapshot::now();
    let started = Instant::now();

    let publish = async {
        let sent: Vec<(String, f64)> = futures::stream::iter(jobs)
            .map(|(id, msg)| async move {
                // Stamped when this publish starts, i.e. when the item enters the pipeline.
                let at = now_ms();
                ctx.broker.publish(msg).await.map(|()| (id, at))
            })
            .buffered(ctx.publish_in_flight)
            .try_collect()
            .await
            .context("publishing the analyze jobs")?;
        anyhow::Ok((sent, started.elapsed()))
    };
    let n = ctx.items.len() as u64;
    let total = n + ctx.probes.len() as u64;
    let wait_rows = async {
        let mut last_print = Instant::now();
        loop {
            for r in running.iter_mut() {
                r.check_alive()?;
            }
            let count = ctx.schema.count().await.context("counting rows")?;
            if count >= total {
                return anyhow::Ok(started.elapsed());
            }
            if last_print.elapsed() >= Duration::from_secs(10) {
                let done = count.saturating_sub(ctx.probes.len() as u64);
                eprintln!("[{label}] {done}/{n} rows after {:.0?}", started.elapsed());
                last_print = Instant::now();
            }
            tokio::time::sleep(POLL).await;
        }
    };
    let ((sent, publish_took), wall) = tokio::try_join!(publish, wait_rows)?;
    let after: Vec<ProcStats> = running
        .iter()
        .map(Running::stats)
        .collect::<Result<_, _>>()?;
    let snap_after = cpu::Snapshot::now();
    let pg_after = postgres_ticks();
    eprintln!("[{label}] every row written after {wall:.1?}; checking the end state");

    let metrics = settle(ctx, &running, total).await?;
    let events_waiting = ctx.broker.depth(&Source::Events).await.ok();
    let rows = ctx.schema.rows(&pipeline).await?;
    let latencies = check_rows(ctx.items, &sent, &rows)?;
    let odd_rows = rows
        .iter()
        .filter(|r| r.outcome != "complete" || r.provider != "extractive")
        .count();

    let services: Vec<ServiceFigures> = running
        .iter()
        .zip(before.iter().zip(&after))
        .zip(metrics.iter().zip(&base_metrics))
        .map(|((r, (b, a)), (m, m0))| figures(r.service, b, a, m, m0))
        .collect();
    let (w, w0) = (&metrics[2], &base_metrics[2]);
    let delta = |name: &str| w.sum(name, &[]) - w0.sum(name, &[]);
    let batches = delta("fleet_writer_commit_duration_seconds_count");
    let commit = (batches > 0.0).then(|| {
        (
            Duration::from_secs_f64(delta("fleet_writer_commit_duration_seconds_sum") / batches),
            batches as u64,
        )
    });

    let mut stop_errors = Vec::new();
    for r in running {
        if let Err(e) = r.stop(STOP_GRACE).await {
            stop_errors.push(format!("{e:#}"));
        }
    }
    if !stop_errors.is_empty() {
        bail!("stopping the services: {}", stop_errors.join("; "));
    }
    // Anything unacked went back to the queues when the services stopped.
    for stage in STAGES {
        let d = stage_depth(ctx.broker, stage).await?;
        if d != 0 {
            bail!("stage queue {stage} holds {d} messages after the services stopped");
        }
    }

    let delta = |a: Option<Duration>, b: Option<Duration>| a?.checked_sub(b?);
    Ok(Outcome {
        kind: ctx.kind,
        items: ctx.items.len(),
        publish: publish_took,
        wall,
        latencies,
        unloaded,
        services,
        broker_cpu: ctx
            .broker_pid
            .and(delta(snap_after.broker, snap_before.broker)),
        postgres_cpu: postgres_cpu(&pg_before, &pg_after),
        machine_busy: cpu::busy_cores(&snap_before, &snap_after),
        bench_cpu: delta(snap_after.own, snap_before.own),
        commit,
        events_waiting,
        odd_rows,
    })
}

/// Sends each probe item alone and waits for its row: latency without a backlog.
async fn probe(ctx: &Ctx<'_>, running: &mut [Running]) -> anyhow::Result<Vec<(Size, Duration)>> {
    let pipeline = format!("{}-probe", ctx.prefix);
    let mut out = Vec::new();
    for item in ctx.probes {
        let at = now_ms();
        ctx.broker
            .publish(job(&pipeline, item))
            .await
            .context("publishing a probe item")?;
        let until = Instant::now() + READY_LIMIT;
        let written = loop {
            if let Some(w) = ctx.schema.written_at(&pipeline, &item.id).await? {
                break w;
            }
            for r in running.iter_mut() {
                r.check_alive()?;
            }
            if Instant::now() >= until {
                bail!("probe item {} not written within {READY_LIMIT:?}", item.id);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let ms = (written as f64 - at).max(0.0);
        out.push((item.size, Duration::from_secs_f64(ms / 1000.0)));
    }
    Ok(out)
}

/// The `analyze` job envelope of an item, routed through `summarize` and `write` (both
/// required): what the benchmark publishes and what the in-process baseline runs.
pub fn envelope(pipeline: &str, item: &Item) -> JobEnvelope {
    let mut job = JobEnvelope::new(
        pipeline,
        &item.id,
        "analyze",
        json!({"text": item.text, "metadata": {"size": item.size.label()}}),
    );
    job.route = ["summarize", "write"]
        .into_iter()
        .map(|s| RouteStep {
            stage: s.to_owned(),
            required: true,
        })
        .collect();
    job
}

/// The message publishing an item's `analyze` job, de-duplicated by its job id.
fn job(pipeline: &str, item: &Item) -> OutMessage {
    let job = envelope(pipeline, item);
    OutMessage {
        msg_id: Some(job.job_id.clone()),
        ..OutMessage::new(
            Destination::Job {
                stage: "analyze".to_owned(),
            },
            job.to_bytes(),
        )
    }
}

async fn stage_depth(broker: &dyn Broker, stage: &str) -> anyhow::Result<u64> {
    let source = Source::Jobs {
        stage: stage.to_owned(),
    };
    tokio::time::timeout(Duration::from_secs(30), broker.depth(&source))
        .await
        .with_context(|| format!("reading the depth of {stage} timed out"))?
        .with_context(|| format!("reading the depth of {stage}"))
}

/// Waits (bounded) until every stage queue is empty and each service's metrics count `n`
/// settled jobs; then checks the dead-letter queues are empty. Returns the metrics.
async fn settle(ctx: &Ctx<'_>, running: &[Running], n: u64) -> anyhow::Result<Vec<Metrics>> {
    let until = Instant::now() + SETTLE_LIMIT;
    let metrics = loop {
        let mut depths = Vec::new();
        for stage in STAGES {
            depths.push(stage_depth(ctx.broker, stage).await?);
        }
        let mut all = Vec::new();
        for r in running {
            all.push(r.metrics().await?);
        }
        let settled: Vec<u64> = all
            .iter()
            .zip(running)
            .map(|(m, r)| {
                m.sum("fleet_jobs_finished_total", &[("stage", r.service.stage())]) as u64
            })
            .collect();
        let ok = depths.iter().all(|d| *d == 0)
            && all.iter().zip(running).all(|(m, r)| {
                m.sum(
                    "fleet_jobs_finished_total",
                    &[("stage", r.service.stage()), ("outcome", "succeeded")],
                ) as u64
                    >= n
            });
        if ok {
            break all;
        }
        if Instant::now() >= until {
            bail!(
                "after {SETTLE_LIMIT:?}: stage queue depths {depths:?} (want 0), jobs finished per service {settled:?} (want {n} succeeded each)"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for stage in STAGES {
        let mut dlq = ctx
            .broker
            .subscribe(
                Source::DeadLetters {
                    stage: stage.to_owned(),
                },
                SubscribeOptions { prefetch: 4 },
            )
            .await
            .with_context(|| format!("subscribing to the {stage} dead letters"))?;
        let got = dlq
            .fetch(4, Duration::from_millis(500))
            .await
            .with_context(|| format!("reading the {stage} dead letters"))?;
        if !got.is_empty() {
            bail!("the {stage} dead-letter queue is not empty");
        }
        dlq.close().await;
    }
    Ok(metrics)
}

/// Exactly one row per published item, every summary non-empty; returns the latencies.
fn check_rows(
    items: &[Item],
    sent: &[(String, f64)],
    rows: &[super::db::Written],
) -> anyhow::Result<Vec<(Size, Duration)>> {
    if rows.len() != items.len() {
        bail!("{} rows written for {} items", rows.len(), items.len());
    }
    let published: HashMap<&str, f64> = sent.iter().map(|(id, at)| (id.as_str(), *at)).collect();
    let sizes: HashMap<&str, Size> = items.iter().map(|i| (i.id.as_str(), i.size)).collect();
    let mut seen = HashMap::new();
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        if seen.insert(r.item_id.as_str(), ()).is_some() {
            bail!("item {} has more than one row", r.item_id);
        }
        let (Some(at), Some(size)) = (
            published.get(r.item_id.as_str()),
            sizes.get(r.item_id.as_str()),
        ) else {
            bail!("row for unknown item {}", r.item_id);
        };
        if r.summary_chars == 0 {
            bail!("item {} has an empty summary", r.item_id);
        }
        let ms = (r.written_at_ms as f64 - at).max(0.0);
        out.push((*size, Duration::from_secs_f64(ms / 1000.0)));
    }
    Ok(out)
}

/// A service's figures over the burst: `m0` was scraped before it, `m` after.
fn figures(
    service: Service,
    before: &ProcStats,
    after: &ProcStats,
    m: &Metrics,
    m0: &Metrics,
) -> ServiceFigures {
    let stage = service.stage();
    let labels = [("stage", stage), ("outcome", "succeeded")];
    let delta = |name: &str, l: &[(&str, &str)]| m.sum(name, l) - m0.sum(name, l);
    let count = delta("fleet_job_duration_seconds_count", &labels);
    let sum = delta("fleet_job_duration_seconds_sum", &labels);
    let finished = [
        "succeeded",
        "retried",
        "dead_lettered",
        "expired",
        "cancelled",
    ]
    .into_iter()
    .map(|o| {
        (
            o,
            delta(
                "fleet_jobs_finished_total",
                &[("stage", stage), ("outcome", o)],
            ) as u64,
        )
    })
    .collect();
    ServiceFigures {
        service,
        cpu: after.cpu.saturating_sub(before.cpu),
        peak_rss_kib: after.peak_rss_kib,
        mean_handler: (count > 0.0).then(|| Duration::from_secs_f64(sum / count)),
        finished,
    }
}

/// CPU ticks of every process named `postgres` (the server and its backends), by pid.
fn postgres_ticks() -> HashMap<u32, u64> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let (head, rest) = stat.rsplit_once(')')?;
            if !head.ends_with("(postgres") {
                return None;
            }
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((
                pid,
                f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?,
            ))
        })
        .collect()
}

/// PostgreSQL CPU between two readings, per process, so that backends which exit meanwhile
/// do not subtract from the total (their CPU in the window is lost instead: a lower bound).
fn postgres_cpu(before: &HashMap<u32, u64>, after: &HashMap<u32, u64>) -> Duration {
    let ticks: u64 = after
        .iter()
        .map(|(pid, t)| t.saturating_sub(before.get(pid).copied().unwrap_or(0)))
        .sum();
    Duration::from_secs_f64(ticks as f64 / 100.0)
}
