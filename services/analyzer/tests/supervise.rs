//! A worker binary as a process (issue 8): a supervised task killed by an injected failure
//! (`FLEET_TEST_FAIL_TASK`) makes `fleet-analyzer` exit non-zero within a bound, naming it.
#![allow(clippy::unwrap_used, missing_docs)] // test code: a panic is the failure report

use std::time::Duration;

use tokio::io::AsyncReadExt;

#[tokio::test]
async fn a_killed_task_makes_the_worker_binary_exit_non_zero_naming_it() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleet-analyzer"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("FLEET_BROKER_URL", "memory://")
        .env("FLEET_ADMIN_ADDR", "127.0.0.1:0")
        .env("FLEET_CONTROL_SYNC_WAIT", "0s")
        .env("FLEET_TEST_FAIL_TASK", "heartbeats:panic")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let read = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s).await;
        s
    });
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("the worker exits on its own within 15 s")
        .unwrap();
    let log = read.await.unwrap();
    assert_eq!(status.code(), Some(1), "exit status {status}; log:\n{log}");
    assert!(
        log.contains("task heartbeats ended before shutdown: it panicked"),
        "the log names the task:\n{log}"
    );
}
