//! Supervision of a worker (issue 8), through the real `Worker::run` on the memory broker:
//! each long-lived task killed by an injected failure makes `run` return an error naming it
//! within a bound, with `/readyz` and `/healthz` down; a clean stop is still `Ok`.
#![allow(clippy::unwrap_used, missing_docs)] // test code: a panic is the failure report

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fleet_core::{JobError, MemoryBroker};
use fleet_protocol::JobEnvelope;
use fleet_runtime::{Handler, JobContext, Output, RuntimeConfig, Worker};
use tokio_util::sync::CancellationToken;

/// Injected failures fire 200 ms after start; drain and flush of an idle worker are quick.
const BOUND: Duration = Duration::from_secs(10);

struct Echo;

#[async_trait]
impl Handler for Echo {
    async fn handle(&self, job: &JobEnvelope, _ctx: &JobContext) -> Result<Output, JobError> {
        Ok(Output::new(job.payload.clone()))
    }
}

fn worker(inject: Option<&str>) -> Worker {
    let mut args = vec![
        "worker".to_owned(),
        "--prefix=sup".into(),
        "--admin-addr=127.0.0.1:0".into(),
        "--control-sync-wait=0s".into(),
        "--heartbeat-interval=100ms".into(),
        "--drain-deadline=2s".into(),
    ];
    args.extend(inject.map(|t| format!("--test-fail-task={t}")));
    let cfg = RuntimeConfig::parse_from(args).unwrap();
    Worker::new(cfg, "work").with_broker(Arc::new(MemoryBroker::new()))
}

async fn killed_task_stops_the_worker(inject: &'static str) {
    let task = inject.trim_end_matches(":panic");
    let w = worker(Some(inject));
    let health = w.health();
    let shutdown = CancellationToken::new();
    let started = tokio::time::Instant::now();
    let out = tokio::time::timeout(BOUND, w.run(Echo, shutdown))
        .await
        .unwrap_or_else(|_| panic!("{task}: the worker did not stop within {BOUND:?}"));
    let err = format!("{:#}", out.expect_err("a killed task is an error"));
    assert!(
        err.contains(&format!("task {task} ended before shutdown")),
        "{task}: {err}"
    );
    assert!(started.elapsed() < BOUND);
    assert!(
        !health.is_ready() && !health.is_healthy(),
        "{task}: /readyz and /healthz answer 503"
    );
    assert!(health.failure().is_some_and(|f| f.contains(task)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_task_that_dies_stops_the_worker_naming_it() {
    let mut runs = tokio::task::JoinSet::new();
    for task in [
        "admin",
        "watchdog",
        "events",
        "heartbeats",
        "cancellations",
        "consumer",
        "heartbeats:panic",
    ] {
        runs.spawn(killed_task_stops_the_worker(task));
    }
    while let Some(r) = runs.join_next().await {
        r.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_is_ok() {
    let w = worker(None);
    let health = w.health();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(w.run(Echo, shutdown.clone()));
    wait_until(|| health.is_ready()).await;
    shutdown.cancel();
    tokio::time::timeout(BOUND, run)
        .await
        .expect("stops within the bound")
        .unwrap()
        .expect("a clean stop is Ok");
    assert!(health.failure().is_none());
}

/// Polls `f` every 20 ms until true, at most [`BOUND`].
async fn wait_until(f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + BOUND;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "not ready in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
