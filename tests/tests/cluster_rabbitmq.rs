//! Node loss on a three-node RabbitMQ cluster (issue 11): the coordinator and two replicas
//! of each worker run as processes against the cluster's URL list with quorum queues on
//! three nodes; mid-run the node leading the `summarize` jobs queue is SIGKILLed and later
//! started again. Every item must end `succeeded` with exactly one row, no process may exit,
//! the pipeline is finalized once as `completed` (the stall detector finalized nothing
//! wrongly), the queues drain, and some process went unready during the loss and every one is
//! ready again after it.
//! Prints the failover time and items/s beside a healthy
//! run of the same size on the same cluster.
//!
//! Ignored by default: `scripts/ci-extra.d/72-rabbitmq-cluster.sh` starts the cluster
//! (`scripts/rabbitmq-cluster.sh`), runs it with `FLEET_TEST_RABBIT_CLUSTER_URLS` set, and
//! stops the cluster. `FLEET_CLUSTER_ITEMS` sets the pipeline size (CI: 200; the documented
//! long form: 1000).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the failure report

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use fleet_store::params;
use fleet_test_support::wait_for;
use fleet_tests::Backend;
use fleet_tests::cluster::{Completions, sample_completions, sample_readiness};
use fleet_tests::procs::http;
use fleet_tests::world::{Limits, World, submission, text};
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The environment variable naming the cluster's URL list.
const URLS_ENV: &str = "FLEET_TEST_RABBIT_CLUSTER_URLS";

/// Runs `scripts/rabbitmq-cluster.sh ARGS` (bounded by the script's own timeouts).
fn cluster(args: &[&str]) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/rabbitmq-cluster.sh");
    fleet_tests::cluster::script(&path, args)
}

fn items() -> usize {
    std::env::var("FLEET_CLUSTER_ITEMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

/// Rows the writer stored for `pid` (one per succeeded item when nothing is duplicated).
async fn rows(w: &World, pid: &str) -> i64 {
    w.store
        .query_one(
            "SELECT COUNT(*) AS n FROM fleet_results WHERE pipeline_id = $1",
            params![pid],
        )
        .await
        .ok()
        .and_then(|r| r.get::<i64>("n").ok())
        .unwrap_or(0)
}

/// What one run saw: its wall time, when the row count changed, and per process how many
/// `/readyz` samples were not 200.
struct Seen {
    took: Duration,
    started: Instant,
    completions: Completions,
    unready: BTreeMap<String, usize>,
}

impl Seen {
    /// The processes that were unready at least once.
    fn unready(&self) -> Vec<&str> {
        self.unready
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(p, _)| p.as_str())
            .collect()
    }
}

/// Submits `n` items as `pid` and waits until it is `completed`, sampling rows and readiness.
async fn run(w: &World, pid: &str, n: usize) -> Seen {
    let list: Vec<(String, String)> = (0..n)
        .map(|i| (format!("i{i:04}"), text(&format!("cluster item {i}"))))
        .collect();
    let refs: Vec<(&str, String)> = list.iter().map(|(a, b)| (a.as_str(), b.clone())).collect();
    let stop = CancellationToken::new();
    let readiness = sample_readiness(w.admins(), stop.clone());
    let (completions, sampler) = sample_completions(w.store.clone(), pid.to_owned(), stop.clone());
    let started = Instant::now();
    w.submit(&submission(pid, &refs, json!({}))).await;
    let bound = Duration::from_secs(60 + 2 * n as u64);
    w.wait_state(pid, "completed", bound).await;
    let took = started.elapsed();
    stop.cancel();
    sampler.await.expect("completion sampler");
    let unready = readiness.await.expect("readiness sampler");
    Seen {
        took,
        started,
        completions,
        unready,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the three-node cluster of scripts/ci-extra.d/72-rabbitmq-cluster.sh"]
async fn rabbitmq_node_loss_loses_nothing() {
    let urls = std::env::var(URLS_ENV).unwrap_or_else(|_| {
        panic!("{URLS_ENV} is not set: run scripts/ci-extra.d/72-rabbitmq-cluster.sh")
    });
    let n = items();
    let mut w = World::on(
        Backend::Rabbit,
        "rmqc",
        Limits::default(),
        urls,
        vec!["--quorum-group-size=3".into()],
    )
    .await;
    let mut procs = vec![w.start_coordinator(&[]).await];
    for _ in 0..2 {
        procs.push(w.start_analyzer().await);
        procs.push(w.start_summarizer(&[]).await);
        procs.push(w.start_writer().await);
    }

    // Healthy baseline on the same cluster.
    let healthy = run(&w, "healthy", n).await;
    w.assert_final("healthy", "completed").await;

    // The same run with the leader of the summarize queue killed a quarter of the way in.
    let queue = format!("{}.jobs.summarize", w.prefix);
    // Looked up before the run: `rabbitmqctl` takes a second or two on a busy machine.
    let node = {
        let q = queue.clone();
        tokio::task::spawn_blocking(move || cluster(&["leader", &q]))
            .await
            .unwrap()
    };
    let killer = {
        let (store, queue) = (w.store.clone(), queue.clone());
        tokio::spawn(async move {
            let fifth = i64::try_from(n / 5).unwrap();
            wait_for("a fifth of the items written", Duration::from_secs(300), || {
                let store = store.clone();
                async move {
                    store
                        .query_one(
                            "SELECT COUNT(*) AS n FROM fleet_results WHERE pipeline_id = 'failover'",
                            &[],
                        )
                        .await
                        .ok()
                        .and_then(|r| r.get::<i64>("n").ok())
                        .filter(|rows| *rows >= fifth)
                }
            })
            .await;
            let at = Instant::now();
            cluster(&["kill", &node]);
            eprintln!("killed node {node}, the leader of {queue}");
            tokio::time::sleep(Duration::from_secs(5)).await;
            let node2 = node.clone();
            tokio::task::spawn_blocking(move || cluster(&["start-node", &node2]))
                .await
                .unwrap();
            eprintln!("node {node} is back after {:?}", at.elapsed());
            at
        })
    };
    let lossy = run(&w, "failover", n).await;
    let killed_at = killer.await.expect("the node was killed and restarted");

    let r = w.assert_final("failover", "completed").await;
    for item in r["items"].as_array().expect("items") {
        assert_eq!(item["state"], "succeeded", "{item}");
    }
    let ids: Vec<String> = (0..n).map(|i| format!("i{i:04}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    w.assert_rows("failover", &refs).await;
    assert_eq!(rows(&w, "failover").await, i64::try_from(n).unwrap());
    w.wait_queues_empty(Duration::from_secs(60)).await;
    for &id in &procs {
        if let Some(status) = w.exited(id) {
            panic!(
                "{} exited ({status}): it must reconnect, not restart",
                w.proc(id).name
            );
        }
        let p = w.proc(id);
        let in_flight = p.metric("fleet_jobs_in_flight", &[]).await;
        assert_eq!(in_flight, 0.0, "{} still has jobs in flight", p.name);
    }

    let (failover, longest) =
        fleet_tests::cluster::failover(&lossy.completions, killed_at, lossy.started);
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "rabbitmq cluster, {n} items: healthy {:.1} items/s ({:.1?}); node loss {:.1} items/s \
         ({:.1?}); failover (last row before the kill → first after) {failover:.2?}, longest \
         pause after the kill {longest:.2?}; unready during the loss: {:?}; healthy run unready: {:?}",
        rate(healthy.took),
        healthy.took,
        rate(lossy.took),
        lossy.took,
        lossy.unready(),
        healthy.unready(),
    );
    assert!(
        !lossy.unready().is_empty(),
        "no process reported unready while its node was lost"
    );
    // ... and back: every process answers /readyz 200 again (it reconnected, it did not hang).
    for &id in &procs {
        let (name, admin) = (w.proc(id).name.clone(), w.proc(id).admin);
        wait_for(
            &format!("{name} ready again after the node loss"),
            Duration::from_secs(60),
            || async move { matches!(http(admin, "GET", "/readyz", None).await, Ok((200, _))) },
        )
        .await;
    }
    w.cleanup().await;
}
