//! API authentication: a non-loopback API never starts open by accident, `FLEET_API_AUTH=none`
//! is an explicit, warned choice, and a read-only token reads but changes nothing. Secrets
//! (tokens, broker and database passwords) come from files and never reach help, errors,
//! logs or `/metrics`.
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

/// `base` (a PostgreSQL URL without a password) with `password` added to its user.
fn with_password(base: &str, password: &str) -> String {
    let (scheme, rest) = base.split_once("://").expect("a URL");
    let (user, host) = rest
        .split_once('@')
        .expect("a user in the test database URL");
    let user = user.split(':').next().unwrap_or(user);
    format!("{scheme}://{user}:{password}@{host}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_logs_or_metrics() {
    const DB_PW: &str = "S3CRET-db-pw";
    const TOKEN: &str = "S3CRET-api-token";
    const READ_TOKEN: &str = "S3CRET-read-token";
    let dir = temp_dir("secret-logs");
    // A real PostgreSQL in its own schema; the test server trusts loopback, so the password
    // in the URL is accepted and has to be redacted wherever the URL is mentioned.
    let base = fleet_test_support::postgres_url();
    let schema = fleet_test_support::unique_prefix("secret_logs").replace('-', "_");
    let admin_store = fleet_store::Store::connect(
        Some(&base),
        std::path::Path::new(""),
        fleet_store::StoreOptions::default(),
    )
    .await
    .expect("PostgreSQL URL");
    admin_store
        .execute(&format!("CREATE SCHEMA {schema}"), &[])
        .await
        .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {base}: {e}"));
    let db_url = fleet_store::pg_url_with_schema(&with_password(&base, DB_PW), &schema);
    let mut child = coordinator(
        &dir,
        &[
            ("FLEET_DATABASE_URL", &db_url),
            ("FLEET_API_TOKEN", TOKEN),
            ("FLEET_API_READ_TOKEN", READ_TOKEN),
            ("FLEET_LISTEN", "127.0.0.1:0"),
            // Everything the coordinator would say, not only what it says by default.
            ("RUST_LOG", "debug"),
            ("NO_COLOR", "1"),
        ],
    );
    // Every stderr line, kept until the process ends.
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel::<(String, String)>();
    let reader = {
        let log = log.clone();
        let stderr = child.stderr.take().unwrap();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            let mut addr_tx = Some(addr_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("coordinator running")
                    && let Some(tx) = addr_tx.take()
                {
                    let field = |k: &str| {
                        line.split(&format!("{k}=")[..])
                            .nth(1)
                            .and_then(|s| s.split_whitespace().next())
                            .unwrap_or_default()
                            .to_owned()
                    };
                    let _ = tx.send((field("api"), field("admin")));
                }
                let mut l = log.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        })
    };
    let started = tokio::time::timeout(BOUND, addr_rx).await;
    let Ok(Ok((api, admin))) = started else {
        let _ = child.start_kill();
        let _ = tokio::time::timeout(BOUND, child.wait()).await;
        panic!("the coordinator did not start:\n{}", log.lock().unwrap());
    };
    let api: std::net::SocketAddr = api.parse().expect("api address in the log");
    let admin: std::net::SocketAddr = admin.parse().expect("admin address in the log");
    // Requests that log: a submission, a read, a wrong token, a read token trying to write.
    let body = submission(Some("ps"), &["a"]).to_string();
    let (s, b) = common::http_at(
        api,
        "POST",
        "/v1/pipelines",
        Some(&body),
        &[("Authorization", &format!("Bearer {TOKEN}"))],
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let read = format!("Bearer {READ_TOKEN}");
    let (s, _) = common::http_at(
        api,
        "GET",
        "/v1/pipelines/ps",
        None,
        &[("Authorization", &read)],
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = common::http_at(
        api,
        "POST",
        "/v1/pipelines",
        Some(&body),
        &[("Authorization", &read)],
    )
    .await;
    assert_eq!(s, 403);
    let (s, _) = common::http_at(
        api,
        "GET",
        "/v1/pipelines",
        None,
        &[("Authorization", "Bearer S3CRET-wrong")],
    )
    .await;
    assert_eq!(s, 401);
    let (s, metrics) = common::http_at(admin, "GET", "/metrics", None, &[]).await;
    assert_eq!(s, 200, "{metrics}");
    let _ = child.start_kill();
    let _ = tokio::time::timeout(BOUND, child.wait()).await;
    let _ = tokio::time::timeout(BOUND, reader).await;
    let _ = admin_store
        .execute(&format!("DROP SCHEMA {schema} CASCADE"), &[])
        .await;
    let _ = std::fs::remove_dir_all(&dir);
    let log = log.lock().unwrap().clone();
    assert!(
        log.contains("coordinator running") && metrics.contains("fleet_"),
        "the run produced logs and metrics:\n{log}\n{metrics}"
    );
    for secret in [DB_PW, TOKEN, READ_TOKEN, "S3CRET-wrong"] {
        assert!(!log.contains(secret), "the log shows {secret}:\n{log}");
        assert!(
            !metrics.contains(secret),
            "/metrics shows {secret}:\n{metrics}"
        );
    }
}

/// Starts the coordinator with `env`, reads its stderr until `lines_wanted` lines contain
/// `marker` (bounded), stops it and returns everything it logged.
async fn log_until(env: &[(&str, &str)], marker: &str, lines_wanted: usize) -> String {
    let dir = temp_dir("secret-retry");
    let mut child = coordinator(&dir, env);
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    let _ = tokio::time::timeout(BOUND, async {
        let mut found = 0;
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push_str(&line);
            seen.push('\n');
            found += usize::from(line.contains(marker));
            if found >= lines_wanted {
                return;
            }
        }
    })
    .await;
    let _ = child.start_kill();
    let _ = tokio::time::timeout(BOUND, child.wait()).await;
    let _ = std::fs::remove_dir_all(&dir);
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_broker_and_database_are_logged_without_their_passwords() {
    // Ports of this test's range where nothing listens: the coordinator retries and logs
    // the (redacted) URL it is trying on every attempt.
    let broker = log_until(
        &[
            (
                "FLEET_BROKER_URL",
                "amqp://u:S3CRET-broker@127.0.0.1:33001/%2f",
            ),
            ("FLEET_API_TOKEN", "S3CRET-token"),
            ("NO_COLOR", "1"),
        ],
        "retrying",
        2,
    )
    .await;
    assert!(
        broker.contains("127.0.0.1:33001") && broker.contains("***"),
        "the broker URL is named, redacted:\n{broker}"
    );
    assert!(
        !broker.contains("S3CRET"),
        "the log shows a secret:\n{broker}"
    );
    let database = log_until(
        &[
            (
                "FLEET_DATABASE_URL",
                "postgres://u:S3CRET-db@127.0.0.1:33002/x?password=S3CRET-query",
            ),
            ("FLEET_API_TOKEN", "S3CRET-token"),
            ("NO_COLOR", "1"),
        ],
        "retrying",
        2,
    )
    .await;
    assert!(
        database.contains("127.0.0.1:33002") && database.contains("***"),
        "the database URL is named, redacted:\n{database}"
    );
    assert!(
        !database.contains("S3CRET"),
        "the log shows a secret:\n{database}"
    );
}

/// The API address a running coordinator logs (with NO_COLOR=1); its stderr keeps being drained in the background.
async fn api_addr_of(child: &mut tokio::process::Child) -> std::net::SocketAddr {
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    let addr = tokio::time::timeout(BOUND, async {
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("coordinator running") {
                return line
                    .split("api=")
                    .nth(1)
                    .and_then(|s| s.split_whitespace().next())
                    .and_then(|s| s.parse().ok());
            }
        }
        None
    })
    .await
    .ok()
    .flatten();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    addr.unwrap_or_else(|| panic!("the coordinator did not start:\n{seen}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_token_comes_from_its_file() {
    let dir = temp_dir("read-token-file");
    let file = dir.join("read-token");
    std::fs::write(&file, "file-read-token\n").unwrap();
    let file_s = file.display().to_string();
    // Its content (without the newline) is the read token: it reads, it cannot write.
    let mut child = coordinator(
        &dir,
        &[
            ("FLEET_LISTEN", "127.0.0.1:0"),
            ("FLEET_API_TOKEN", "writer-token"),
            ("FLEET_API_READ_TOKEN_FILE", &file_s),
            // Plain log lines: the address is read from them.
            ("NO_COLOR", "1"),
        ],
    );
    let api = api_addr_of(&mut child).await;
    let read = [("Authorization", "Bearer file-read-token")];
    let (read_status, _) = common::http_at(api, "GET", "/v1/pipelines", None, &read).await;
    let body = submission(Some("pr"), &["a"]).to_string();
    let (write_status, _) = common::http_at(api, "POST", "/v1/pipelines", Some(&body), &read).await;
    let (path_status, _) = common::http_at(
        api,
        "GET",
        "/v1/pipelines",
        None,
        &[("Authorization", &format!("Bearer {file_s}"))],
    )
    .await;
    let _ = child.start_kill();
    let _ = tokio::time::timeout(BOUND, child.wait()).await;
    assert_eq!(read_status, 200, "the file's token reads");
    assert_eq!(write_status, 403, "the file's token is a read token");
    assert_eq!(path_status, 401, "the path itself is not the token");
    // A missing file: the error names the setting and the path.
    let (ok, err) = run_to_end(
        &dir,
        &[
            ("FLEET_BROKER_URL", "memory://"),
            ("FLEET_API_READ_TOKEN_FILE", "/nonexistent/read-token"),
        ],
        &[],
    )
    .await;
    assert!(
        !ok && err.contains("FLEET_API_READ_TOKEN_FILE=/nonexistent/read-token")
            && err.contains("cannot read it"),
        "{err}"
    );
    // Both the variable and its file: an error naming both.
    let (ok, err) = run_to_end(
        &dir,
        &[
            ("FLEET_BROKER_URL", "memory://"),
            ("FLEET_API_READ_TOKEN", "x"),
            ("FLEET_API_READ_TOKEN_FILE", &file_s),
        ],
        &[],
    )
    .await;
    assert!(
        !ok && err.contains("both FLEET_API_READ_TOKEN and FLEET_API_READ_TOKEN_FILE"),
        "{err}"
    );
    assert!(!err.contains("file-read-token"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
