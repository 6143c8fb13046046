//! API authentication: a non-loopback API never starts open by accident, `FLEET_API_AUTH=none`
//! is an explicit, warned choice, and a read-only token reads but changes nothing.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{Backend, Harness, submission};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

const BOUND: Duration = Duration::from_secs(20);

/// The coordinator binary on the memory broker with `env` (and nothing else from ours).
fn coordinator(dir: &std::path::Path, env: &[(&str, &str)]) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleet-coordinator"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("FLEET_BROKER_URL", "memory://")
        .env("FLEET_SQLITE_PATH", dir.join("c.sqlite"))
        .env("FLEET_ADMIN_ADDR", "127.0.0.1:0");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(fleet_test_support::unique_prefix(tag));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_loopback_api_without_a_token_refuses_to_start() {
    let dir = temp_dir("auth-refuse");
    let child = coordinator(&dir, &[("FLEET_LISTEN", "0.0.0.0:0")]);
    let out = tokio::time::timeout(BOUND, child.wait_with_output())
        .await
        .expect("the coordinator exits on its own within the bound")
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "must refuse to start:\n{text}");
    assert!(
        text.contains("FLEET_API_TOKEN") && text.contains("FLEET_API_AUTH=none"),
        "the error names both fixes:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_none_starts_on_a_non_loopback_address_and_warns() {
    let dir = temp_dir("auth-none");
    let mut child = coordinator(
        &dir,
        &[("FLEET_LISTEN", "0.0.0.0:0"), ("FLEET_API_AUTH", "none")],
    );
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    let warned = tokio::time::timeout(BOUND, async {
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("WARN") && line.contains("FLEET_API_AUTH=none") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    let _ = child.start_kill();
    let _ = tokio::time::timeout(BOUND, child.wait()).await;
    let _ = std::fs::remove_dir_all(&dir);
    assert!(warned, "a warning about FLEET_API_AUTH=none:\n{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_token_reads_but_cannot_submit_cancel_replay_or_purge() {
    let h = Harness::new(
        Backend::Memory,
        "auth-read",
        &["--api-token=writer-token", "--api-read-token=reader-token"],
    )
    .await;
    let write = [("Authorization", "Bearer writer-token")];
    let read = [("Authorization", "Bearer reader-token")];
    let body = submission(Some("pa"), &["a"]);
    let (s, b) = h.http("POST", "/v1/pipelines", Some(&body), &read).await;
    assert_eq!(s, 403, "read token cannot submit: {b}");
    let (s, b) = h.http("POST", "/v1/pipelines", Some(&body), &write).await;
    assert_eq!(s, 201, "{b}");
    for path in ["/v1/pipelines", "/v1/pipelines/pa", "/v1/dlq", "/v1/limits"] {
        let (s, b) = h.http("GET", path, None, &read).await;
        assert_eq!(s, 200, "read token reads {path}: {b}");
        let (s, _) = h.http("GET", path, None, &[]).await;
        assert_eq!(s, 401, "no token: {path}");
        let (s, _) = h
            .http("GET", path, None, &[("Authorization", "Bearer wrong")])
            .await;
        assert_eq!(s, 401, "wrong token: {path}");
    }
    let empty = json!({});
    let replay = json!({"pipeline_id": "pa", "dry_run": true});
    let purge = json!({"pipeline_id": "pa"});
    let mutations: [(&str, &Value); 3] = [
        ("/v1/pipelines/pa/cancel", &empty),
        ("/v1/dlq/replay", &replay),
        ("/v1/dlq/purge", &purge),
    ];
    for (path, body) in mutations {
        let (s, b) = h.http("POST", path, Some(body), &read).await;
        assert_eq!(s, 403, "read token on {path}: {b}");
        assert!(b.contains("FLEET_API_TOKEN"), "the hint names the fix: {b}");
    }
    // Nothing changed: the pipeline is still running.
    let (_, b) = h.http("GET", "/v1/pipelines/pa", None, &read).await;
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["state"], "running", "{v}");
    for (path, body) in mutations {
        let (s, b) = h.http("POST", path, Some(body), &write).await;
        assert!((200..300).contains(&s), "write token on {path}: {s} {b}");
    }
    let (_, b) = h.http("GET", "/v1/pipelines/pa", None, &write).await;
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["state"], "cancelled", "{v}");
    h.cleanup().await;
}

/// Runs the binary to completion with `env` and `args`; returns success and stdout+stderr.
async fn run_to_end(dir: &std::path::Path, env: &[(&str, &str)], args: &[&str]) -> (bool, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleet-coordinator"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("FLEET_SQLITE_PATH", dir.join("c.sqlite"))
        .env("FLEET_ADMIN_ADDR", "127.0.0.1:0")
        .env("FLEET_LISTEN", "127.0.0.1:0")
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(BOUND, cmd.output())
        .await
        .expect("the coordinator exits on its own within the bound")
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_help_or_configuration_errors() {
    let dir = temp_dir("secret-print");
    let secrets = [
        ("FLEET_BROKER_URL", "amqq://user:S3CRET@rabbit:5672/%2f"),
        (
            "FLEET_DATABASE_URL",
            "postgres://u:S3CRET@db/x?password=S3CRET",
        ),
        ("FLEET_API_TOKEN", "S3CRET"),
        ("FLEET_API_READ_TOKEN", "S3CRET-read"),
    ];
    let (ok, help) = run_to_end(&dir, &secrets, &["--help"]).await;
    assert!(ok && help.contains("FLEET_BROKER_URL"), "{help}");
    assert!(!help.contains("S3CRET"), "--help shows a secret:\n{help}");
    // A typo'd scheme: the configuration error names the variable, not the password.
    let (ok, err) = run_to_end(&dir, &secrets, &[]).await;
    assert!(!ok && err.contains("FLEET_BROKER_URL"), "{err}");
    assert!(!err.contains("S3CRET"), "the error shows a secret:\n{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_come_from_files_and_conflicts_are_errors() {
    let dir = temp_dir("secret-files");
    let token = dir.join("token");
    std::fs::write(&token, "file-token\n").unwrap();
    let broker = dir.join("broker");
    std::fs::write(&broker, "amqq://user:S3CRET@rabbit/%2f\n").unwrap();
    let token_s = token.display().to_string();
    let broker_s = broker.display().to_string();
    // The broker URL comes from its file: its (bad) scheme is reported, its password not.
    let (ok, err) = run_to_end(&dir, &[("FLEET_BROKER_URL_FILE", &broker_s)], &[]).await;
    assert!(!ok && err.contains("no known scheme"), "{err}");
    assert!(!err.contains("S3CRET"), "{err}");
    // Both forms set: an error naming both.
    let (ok, err) = run_to_end(
        &dir,
        &[("FLEET_API_TOKEN", "x"), ("FLEET_API_TOKEN_FILE", &token_s)],
        &[],
    )
    .await;
    assert!(
        !ok && err.contains("both FLEET_API_TOKEN and FLEET_API_TOKEN_FILE"),
        "{err}"
    );
    // An unreadable file: named, with what to check.
    let (ok, err) = run_to_end(
        &dir,
        &[("FLEET_DATABASE_URL_FILE", "/nonexistent/db-url")],
        &[],
    )
    .await;
    assert!(!ok && err.contains("/nonexistent/db-url"), "{err}");
    // The API token from its file satisfies the non-loopback rule: the coordinator starts.
    let mut child = coordinator(
        &dir,
        &[
            ("FLEET_LISTEN", "0.0.0.0:0"),
            ("FLEET_API_TOKEN_FILE", &token_s),
        ],
    );
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    let started = tokio::time::timeout(BOUND, async {
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("coordinator running") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    let _ = child.start_kill();
    let _ = tokio::time::timeout(BOUND, child.wait()).await;
    let _ = std::fs::remove_dir_all(&dir);
    assert!(started, "starts with FLEET_API_TOKEN_FILE:\n{seen}");
    assert!(!seen.contains("file-token"), "{seen}");
}
