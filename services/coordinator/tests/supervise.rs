//! Supervision (issue 8): every long-lived task of the coordinator is watched; one that ends
//! before shutdown makes `/readyz` and `/healthz` 503 and the coordinator stop with an error
//! naming it (the binary exits non-zero). A consumer whose queue is deleted redeclares it and
//! resubscribes.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod common;

use std::time::Duration;

use common::{Backend, Harness, event, http_at};
use fleet_core::{Destination, OutMessage};
use fleet_protocol::{EventBatch, EventKind};
use fleet_test_support::wait_for;
use serde_json::json;

/// Every task of a coordinator on the memory broker (RabbitMQ adds `cancel-rebroadcast`).
const TASKS: [&str; 12] = [
    "admin",
    "watchdog",
    "api",
    "outbox-relay",
    "sweeper",
    "events",
    "submit",
    "dlq-archive:analyze",
    "dlq-archive:summarize",
    "dlq-archive:write",
    "dlq-archive:submit",
    "readiness",
];
/// An injected failure fires 200 ms after start; the rest stop within the stop timeout.
const BOUND: Duration = Duration::from_secs(12);

async fn killed_task_stops_the_coordinator(inject: &str) {
    let task = inject.trim_end_matches(":panic");
    let flag = format!("--test-fail-task={inject}");
    let mut h = Harness::new(Backend::Memory, "supervise", &[flag.as_str()]).await;
    let (running, _stop) = h.coordinators.remove(0);
    let health = running.health.clone();
    let admin = running.admin_addr;
    wait_for(&format!("{task} failing"), BOUND, || async {
        health.failure().is_some()
    })
    .await;
    assert!(!health.is_ready() && !health.is_healthy(), "{task}");
    if task != "admin" {
        // What an orchestrator's probes see (the admin server itself answers until the end).
        let (ready, why) = http_at(admin, "GET", "/readyz", None, &[]).await;
        assert_eq!(ready, 503, "{task}: {why}");
        assert!(why.contains(&format!("task {task} ended")), "{task}: {why}");
        assert_eq!(http_at(admin, "GET", "/healthz", None, &[]).await.0, 503);
    }
    let started = tokio::time::Instant::now();
    let err = tokio::time::timeout(BOUND, running.wait())
        .await
        .unwrap_or_else(|_| panic!("{task}: the coordinator did not stop within {BOUND:?}"))
        .expect_err("a task that ended early is an error");
    let text = format!("{err:#}");
    assert!(
        text.contains(&format!("task {task} ended before shutdown")),
        "{task}: {text}"
    );
    assert!(started.elapsed() < BOUND);
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_task_that_dies_stops_the_coordinator_naming_it() {
    let mut runs = tokio::task::JoinSet::new();
    for task in TASKS {
        runs.spawn(killed_task_stops_the_coordinator(task));
    }
    // A panic is the same failure as an error.
    runs.spawn(killed_task_stops_the_coordinator("sweeper:panic"));
    while let Some(r) = runs.join_next().await {
        r.unwrap();
    }
}

/// Consumers that cannot get their subscription back make the coordinator unready at once
/// and, past the limit, stop it with an error naming one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_that_cannot_resubscribe_stop_the_coordinator() {
    let mut h = Harness::new(Backend::Memory, "supervise-outage", &["--max-outage=2s"]).await;
    let (running, _stop) = h.coordinators.remove(0);
    let health = running.health.clone();
    wait_for("ready", BOUND, || async { health.is_ready() }).await;
    h.memory().set_connected(false);
    let err = tokio::time::timeout(BOUND, running.wait())
        .await
        .expect("gives up within the bound")
        .expect_err("an error naming a consumer");
    let text = format!("{err:#}");
    assert!(
        ["events", "submit", "dlq-archive:"]
            .iter()
            .any(|t| text.contains(&format!("task {t}")))
            && text.contains("FLEET_MAX_OUTAGE"),
        "{text}"
    );
    assert!(!health.is_ready() && !health.is_healthy());
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_is_no_failure() {
    let h = Harness::new(Backend::Memory, "supervise-clean", &[]).await;
    h.submit("p", &["a"], json!({})).await;
    // cleanup cancels the shutdown token and requires wait() to return Ok.
    h.cleanup().await;
}

/// The binary: a killed task makes the process exit non-zero within a bound, naming the task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_exits_non_zero_naming_the_killed_task() {
    let dir = std::env::temp_dir().join(fleet_test_support::unique_prefix("supervise-bin"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleet-coordinator"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("FLEET_BROKER_URL", "memory://")
        .env("FLEET_SQLITE_PATH", dir.join("c.sqlite"))
        .env("FLEET_LISTEN", "127.0.0.1:0")
        .env("FLEET_ADMIN_ADDR", "127.0.0.1:0")
        .env("FLEET_TEST_FAIL_TASK", "sweeper")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let read = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s).await;
        s
    });
    let status = tokio::time::timeout(BOUND, child.wait())
        .await
        .expect("the coordinator exits on its own within the bound")
        .unwrap();
    let log = read.await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!status.success(), "exit status {status}; log:\n{log}");
    assert!(
        log.contains("task sweeper ended before shutdown"),
        "the log names the task:\n{log}"
    );
}

/// RabbitMQ: deleting the coordinator's events queue while it runs. The event consumer sees
/// its consumer cancelled, redeclares the topology (the queue comes back) and resubscribes;
/// events published afterwards are ingested and the pipeline completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_a_deleted_events_queue_is_redeclared_and_consumed_again() {
    let h = Harness::new(Backend::Rabbit, "supervise-delq", &[]).await;
    let queue = format!("{}.coordinator.events", h.prefix);
    h.submit("p", &["a"], json!({})).await;
    let out = tokio::process::Command::new("rabbitmqctl")
        .args(["delete_queue", &queue])
        .output()
        .await
        .expect("rabbitmqctl runs (it ships with the machine's RabbitMQ)");
    assert!(
        out.status.success(),
        "rabbitmqctl delete_queue {queue}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Events go to an unbound exchange until the queue is back: keep sending until ingested.
    let job = fleet_protocol::job_id("p", "a", "analyze");
    let store = h.store();
    wait_for(
        "the analyze event ingested after the queue was deleted",
        Duration::from_secs(30),
        || async {
            // Refused (NO_ROUTE) while the queue is gone: that is what a worker sees too.
            let batch = EventBatch {
                v: 1,
                worker_id: "test-worker".into(),
                stage: "analyze".into(),
                events: vec![event(&job, "p", "analyze", 1, 0, EventKind::Started)],
                heartbeat: None,
            };
            let msg = OutMessage::new(
                Destination::Events {
                    stage: "analyze".into(),
                },
                serde_json::to_vec(&batch).unwrap(),
            );
            let _ = h.broker.publish(msg).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let row = store
                .query_one(
                    "SELECT state FROM coord_jobs WHERE job_id = $1",
                    fleet_store::params![job.as_str()],
                )
                .await
                .unwrap();
            row.get::<String>("state").unwrap() == "running"
        },
    )
    .await;
    for stage in ["analyze", "summarize", "write"] {
        h.finish("p", &["a"], stage, EventKind::Succeeded).await;
    }
    h.wait_state("p", "completed", Duration::from_secs(20))
        .await;
    let r = h.coordinators[0].0.health.clone();
    assert!(r.failure().is_none(), "no task ended");
    h.cleanup().await;
}

/// RabbitMQ, the binary: a clean stop after some traffic exits 0 and logs no ERROR (issue 8,
/// "logs tell the truth": dropped subscriptions used to race the connection close, and lapin
/// logged `ERROR Connection error … invalid channel state: Closing`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_the_binary_stops_cleanly_without_error_logs() {
    let prefix = fleet_test_support::unique_prefix("supervise-stop");
    let dir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&dir).unwrap();
    let api = free_addr();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleet-coordinator"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("FLEET_BROKER_URL", fleet_test_support::amqp_url())
        .env("FLEET_PREFIX", &prefix)
        .env("FLEET_SQLITE_PATH", dir.join("c.sqlite"))
        .env("FLEET_LISTEN", api.to_string())
        .env("FLEET_ADMIN_ADDR", "127.0.0.1:0")
        .env("FLEET_TICK", "200ms")
        .env("FLEET_LOG_FORMAT", "json")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let read = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s).await;
        s
    });
    let body = common::submission(Some("p"), &["a", "b"]).to_string();
    wait_for("the pipeline accepted", BOUND, || async {
        matches!(
            fleet_test_support::http::request(api, "POST", "/v1/pipelines", Some(&body), &[]).await,
            Ok((201 | 200, _))
        )
    })
    .await;
    // A few sweeper ticks, re-broadcasts and relay rounds on the broker.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = child.id().unwrap().to_string();
    let term = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(term.success());
    let status = tokio::time::timeout(BOUND, child.wait())
        .await
        .expect("stops within the bound")
        .unwrap();
    let log = read.await.unwrap();
    // Clean up the broker objects it declared.
    let mut config = fleet_coordinator::Config::parse_args([
        "fleet-coordinator".to_owned(),
        format!("--broker-url={}", fleet_test_support::amqp_url()),
        format!("--prefix={prefix}"),
    ])
    .unwrap();
    config.database_url = None;
    let broker = fleet_runtime::connect::connect(&config.runtime)
        .await
        .unwrap();
    let _ = broker
        .delete_topology(&fleet_coordinator::topology(&config))
        .await;
    broker.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    assert!(status.success(), "exit status {status}; log:\n{log}");
    assert!(log.contains("\"level\":\"INFO\""), "JSON logs:\n{log}");
    assert!(
        !log.contains("\"level\":\"ERROR\""),
        "a clean stop logs no ERROR:\n{log}"
    );
}

fn free_addr() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}
