//! No command analyzer leaves a process behind: a program that forks a
//! sleeping child is killed with its whole process group on timeout and when
//! the job's deadline drops the handler (run through a real Worker on the
//! memory broker), and when the analyzer binary itself is killed with SIGKILL
//! mid-job (the command guard, on NATS).

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
        env: Vec::new(),
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

/// Through the guard a command behaves as without it: output, exit code, a missing program.
#[tokio::test]
async fn the_guard_is_transparent() {
    fleet_analyzer::guard::use_guard(env!("CARGO_BIN_EXE_fleet-analyzer").into());
    let never = CancellationToken::new();
    let mut spec = forking_analyzer(Path::new("/dev/null"), Duration::from_secs(5));
    spec.args = vec!["-c".into(), "cat; echo oops >&2; exit 3".into()];
    let r = run_command(&spec, "{\"a\": 1}", &never).await;
    assert_eq!(r.exit_code, Some(3), "{r:?}");
    assert_eq!(r.output, serde_json::json!({"a": 1}));
    assert_eq!(r.stderr_tail.trim(), "oops");
    spec.program = "/nonexistent/program".into();
    let r = run_command(&spec, "", &never).await;
    assert_eq!(
        r.failure,
        Some(fleet_analyzer::command::Failure::Missing),
        "{r:?}"
    );
    assert_eq!(r.reason, Some("missing"));
}

/// Kills the listed pids on drop, so a failing test leaves nothing running.
struct Reap(Vec<i32>);
impl Drop for Reap {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// `kill -9` of the analyzer binary mid-job: its command analyzer (a shell) and what that
/// forked (`sleep 600`) die with it instead of running on under PID 1.
#[tokio::test]
async fn sigkill_of_the_analyzer_kills_its_commands() {
    let prefix = unique_prefix("analyzer-sigkill");
    let url = fleet_test_support::nats_url();
    let (child_pf, shell_pf) = (pidfile("orphan-kill9-child"), pidfile("orphan-kill9-shell"));
    let analyzers = std::env::temp_dir().join(format!("{prefix}-analyzers.toml"));
    std::fs::write(
        &analyzers,
        format!(
            "[[analyzer]]\nname = \"forker\"\nprogram = \"sh\"\nargs = [\"-c\", \"echo $$ > {}; sleep 600 & echo $! > {}; wait\"]\ntimeout = \"10m\"\n",
            shell_pf.display(),
            child_pf.display()
        ),
    )
    .expect("write analyzers config");
    let rt = RuntimeConfig::parse_from([
        "analyzer".to_owned(),
        format!("--broker-url={url}"),
        format!("--prefix={prefix}"),
    ])
    .expect("config");
    let control = fleet_runtime::connect::connect(&rt)
        .await
        .unwrap_or_else(|e| panic!("cannot reach the broker at {url}: {e}"));
    let topology = Topology::new(Names::new(&prefix), &["analyze", "summarize"]);
    control.declare(&topology).await.expect("declare");

    let mut analyzer = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleet-analyzer"))
        .env("FLEET_BROKER_URL", &url)
        .env("FLEET_PREFIX", &prefix)
        .env("FLEET_ADMIN_ADDR", "127.0.0.1:0")
        .env("FLEET_CONTROL_SYNC_WAIT", "0s")
        .env("FLEET_ANALYZERS_CONFIG", &analyzers)
        .env("FLEET_LOG_FORMAT", "json")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start fleet-analyzer");
    let job = JobEnvelope::new(
        &format!("{prefix}-p"),
        "item-1",
        "analyze",
        serde_json::json!({"text": "hello world"}),
    );
    control
        .publish(fleet_core::OutMessage::new(
            fleet_core::Destination::Job {
                stage: "analyze".into(),
            },
            job.to_bytes(),
        ))
        .await
        .expect("publish");
    let child = wait_for(
        "the forked child's pid file",
        Duration::from_secs(30),
        || async {
            std::fs::read_to_string(&child_pf)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
        },
    )
    .await;
    let shell = read_pid(&shell_pf).await;
    let _reap = Reap(vec![child, shell]);
    assert!(
        alive(child) && alive(shell),
        "the command runs while the job runs"
    );

    analyzer.start_kill().expect("SIGKILL the analyzer");
    tokio::time::timeout(Duration::from_secs(10), analyzer.wait())
        .await
        .expect("the analyzer dies")
        .expect("wait");
    assert_dies(shell).await;
    assert_dies(child).await;

    let _ = control.delete_topology(&topology).await;
    control.close().await;
    for f in [child_pf, shell_pf, analyzers] {
        let _ = std::fs::remove_file(f);
    }
}
