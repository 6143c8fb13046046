//! No command analyzer leaves a process behind: a program that forks a
//! sleeping child is killed with its whole process group on timeout and when
//! the job's deadline drops the handler (run through a real Worker on the
//! memory broker).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fleet_analyzer::AnalyzeHandler;
use fleet_analyzer::analysis::AnalysisOptions;
use fleet_analyzer::command::run_command;
use fleet_analyzer::config::{AnalyzerSpec, InputMode};
use fleet_core::{Broker, MemoryBroker, Source, SubscribeOptions, Topology};
use fleet_protocol::{JobEnvelope, Names};
use fleet_runtime::{RuntimeConfig, Worker};
use fleet_test_support::{unique_prefix, wait_for};
use tokio_util::sync::CancellationToken;

fn forking_analyzer(pidfile: &Path, timeout: Duration) -> AnalyzerSpec {
    AnalyzerSpec {
        name: "forker".into(),
        program: "sh".into(),
        args: vec![
            "-c".into(),
            format!("sleep 300 & echo $! > {}; wait", pidfile.display()),
        ],
        input: InputMode::Stdin,
        timeout,
        max_output_bytes: 1024,
        required: false,
    }
}

fn pidfile(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{}.pid", unique_prefix(tag)))
}

/// True while `pid` is a live process (a zombie awaiting its reaper counts as dead).
fn alive(pid: i32) -> bool {
    if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3, after the parenthesised command name, is the state.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

async fn read_pid(path: &Path) -> i32 {
    wait_for(
        "the forked child's pid file",
        Duration::from_secs(10),
        || async {
            std::fs::read_to_string(path)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
        },
    )
    .await
}

async fn assert_dies(pid: i32) {
    wait_for(
        &format!("forked child {pid} to be gone"),
        Duration::from_secs(5),
        || async move { !alive(pid) },
    )
    .await;
}

#[tokio::test]
async fn timeout_kills_the_forked_child() {
    let pf = pidfile("orphan-timeout");
    let spec = forking_analyzer(&pf, Duration::from_millis(700));
    let started = std::time::Instant::now();
    let r = run_command(&spec, "text", &CancellationToken::new()).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(!r.ok);
    assert!(
        r.error.as_deref().unwrap_or_default().contains("timed out"),
        "{r:?}"
    );
    let pid = read_pid(&pf).await;
    assert_dies(pid).await;
    let _ = std::fs::remove_file(pf);
}

#[tokio::test]
async fn dropping_the_run_kills_the_forked_child() {
    let pf = pidfile("orphan-drop");
    let spec = forking_analyzer(&pf, Duration::from_secs(300));
    let never = CancellationToken::new();
    let run = run_command(&spec, "text", &never);
    // Drop the future mid-run, as the runtime does at a job deadline.
    let pf2 = pf.clone();
    let dropped = tokio::select! {
        _ = run => false,
        pid = read_pid(&pf2) => { tokio::time::sleep(Duration::from_millis(50)).await; pid > 0 }
    };
    assert!(dropped);
    assert_dies(read_pid(&pf).await).await;
    let _ = std::fs::remove_file(pf);
}

#[tokio::test]
async fn job_deadline_kills_the_forked_child() {
    let prefix = unique_prefix("analyzer-deadline");
    let pf = pidfile("orphan-deadline");
    let broker = MemoryBroker::new();
    let names = Names::new(&prefix);
    let topology = Topology::new(names, &["analyze", "summarize"]);
    broker.declare(&topology).await.expect("declare");
    let cfg = RuntimeConfig::parse_from([
        "analyzer",
        "--broker-url=memory://",
        &format!("--prefix={prefix}"),
        "--admin-addr=127.0.0.1:0",
        "--max-attempts=1",
        "--max-deliver=3",
        "--heartbeat-interval=1s",
        "--drain-deadline=2s",
    ])
    .expect("config");
    let mut spec = forking_analyzer(&pf, Duration::from_secs(300));
    spec.required = true;
    let handler = AnalyzeHandler::new(AnalysisOptions::default(), vec![spec]);
    let shutdown = CancellationToken::new();
    let worker = Worker::new(cfg, "analyze").with_broker(Arc::new(broker.clone()));
    let task = tokio::spawn(worker.run(handler, shutdown.clone()));

    let mut job = JobEnvelope::new(
        &format!("{prefix}-p"),
        "item-1",
        "analyze",
        serde_json::json!({"text": "hello world"}),
    );
    job.timeout_ms = 1500;
    job.max_attempts = 1;
    broker
        .publish(fleet_core::OutMessage::new(
            fleet_core::Destination::Job {
                stage: "analyze".into(),
            },
            job.to_bytes(),
        ))
        .await
        .expect("publish");

    let pid = read_pid(&pf).await;
    assert!(alive(pid), "the child runs while the job runs");
    // The attempt is cut at 1.5 s; the handler future is dropped and its guard kills the group.
    assert_dies(pid).await;
    // The job was dead-lettered (one attempt allowed), nothing went to summarize.
    let mut dlq = broker
        .subscribe(
            Source::DeadLetters {
                stage: "analyze".into(),
            },
            SubscribeOptions { prefetch: 8 },
        )
        .await
        .expect("subscribe dlq");
    let mut dead = Vec::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while dead.is_empty() && tokio::time::Instant::now() < until {
        dead = dlq
            .fetch(1, Duration::from_millis(200))
            .await
            .expect("fetch dlq");
    }
    assert_eq!(
        dead.len(),
        1,
        "the job was dead-lettered after its only attempt"
    );
    let next = broker
        .depth(&Source::Jobs {
            stage: "summarize".into(),
        })
        .await
        .expect("depth");
    assert_eq!(next, 0);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("worker stops")
        .expect("join")
        .expect("worker ok");
    let _ = std::fs::remove_file(pf);
}
