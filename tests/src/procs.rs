//! The real service binaries as separate OS processes: spawn with output captured to a
//! file, SIGKILL, wait until ready. Used by the cross-service fault tests (`tests/faults.rs`).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use fleet_test_support::wait_for;
use tokio::process::{Child, Command};

/// The service binaries the fault tests run.
pub const BINARIES: [&str; 4] = [
    "fleet-coordinator",
    "fleet-analyzer",
    "fleet-summarizer",
    "fleet-writer",
];

/// Where cargo put the binaries of this build: the test executable lives in
/// `target/<profile>/deps/`, the binaries one level up.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let deps = exe.parent().expect("the test executable has a directory");
    match deps.file_name() {
        Some(n) if n == "deps" => deps.parent().unwrap_or(deps).to_path_buf(),
        _ => deps.to_path_buf(),
    }
}

/// The path of service binary `name`; panics with what to run when it was not built.
pub fn bin_path(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "service binary {} is missing: run `cargo build --workspace` first (the fault tests \
         run the real service binaries found next to the test executable)",
        path.display(),
    );
    path
}

/// A free loopback port right now (bound, then released for the child to take).
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    l.local_addr().expect("local address")
}

/// One running service process; killed when dropped.
pub struct Proc {
    /// A name for messages (`summarizer-2`).
    pub name: String,
    /// Its admin address (`/readyz`, `/metrics`).
    pub admin: SocketAddr,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
    child: Child,
}

impl Proc {
    /// Spawns `binary` with `args`, output appended to `log`, no `FLEET_*` variables inherited.
    pub fn spawn(name: &str, binary: &str, args: &[String], admin: SocketAddr, log: &Path) -> Proc {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("creating the log file {}: {e}", log.display()));
        let err = out.try_clone().expect("clone the log file handle");
        let mut cmd = Command::new(bin_path(binary));
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .env("RUST_LOG", "info");
        // The developer's own environment must not reconfigure the services under test.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("FLEET_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {binary}: {e}"));
        Proc {
            name: name.to_owned(),
            admin,
            log: log.to_owned(),
            child,
        }
    }

    /// The OS process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// `kill -9` and reap it.
    pub async fn kill(&mut self) {
        // tokio's start_kill sends SIGKILL on Unix: no drain, no acks, no goodbye.
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }

    /// Sends SIGKILL without waiting (for `Drop` paths).
    pub fn start_kill(&mut self) {
        let _ = self.child.start_kill();
    }

    /// The exit status, if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits until `GET /readyz` on the admin address answers 200; panics with the log when
    /// the process exits or never gets ready.
    pub async fn wait_ready(&mut self, within: Duration) {
        let name = self.name.clone();
        let admin = self.admin;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = self.exited() {
                panic!(
                    "{name} exited ({status}) before it was ready; its output:\n{}",
                    tail(&self.log, 80)
                );
            }
            if let Ok((200, _)) = http(admin, "GET", "/readyz", None).await {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "{name} not ready at {admin} within {within:?}; its output:\n{}",
                    tail(&self.log, 80)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The value of one Prometheus sample of this process (`name{labels…}`), 0 when absent.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let Ok((200, text)) = http(self.admin, "GET", "/metrics", None).await else {
            return 0.0;
        };
        sample_sum(&text, name, labels)
    }
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("(unreadable: {e})"));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One bounded HTTP request (see [`fleet_test_support::http::request`]).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    fleet_test_support::http::request(addr, method, path, body, &[]).await
}

/// Waits until every service binary exists (a clear failure before anything starts).
pub fn check_binaries() {
    for b in BINARIES {
        bin_path(b);
    }
}

/// Polls `GET url` on `addr` until it answers `status` (bounded).
pub async fn wait_http(addr: SocketAddr, path: &str, status: u16, within: Duration) {
    wait_for(
        &format!("GET {path} on {addr} → {status}"),
        within,
        || async { matches!(http(addr, "GET", path, None).await, Ok((s, _)) if s == status) },
    )
    .await;
}

/// The sum of one metric's samples in an exposition text (`name{labels…} value`), filtered
/// by `labels`; 0 when absent.
pub fn sample_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
