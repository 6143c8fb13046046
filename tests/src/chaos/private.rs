//! A private broker for the broker-restart scenario: the machine's shared brokers are never
//! restarted, so the scenario runs on a nats-server of its own (port 31222, monitoring
//! 31822, store in a scratch directory), stopped (SIGTERM, as an orderly shutdown) and
//! started again on the same store.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::procs::http;

/// Client port of the private nats-server (the campaign's fixed ports are 31000–31999).
pub const NATS_PORT: u16 = 31222;
/// Its monitoring port.
pub const NATS_MONITOR: u16 = 31822;

/// A private nats-server with JetStream.
pub struct PrivateNats {
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateNats {
    /// The `nats-server` binary: `FLEET_CHAOS_NATS_SERVER`, else the one on `PATH`.
    fn binary() -> String {
        std::env::var("FLEET_CHAOS_NATS_SERVER").unwrap_or_else(|_| "nats-server".into())
    }

    /// Starts it with its store under `dir` and waits (bounded) until JetStream answers.
    pub async fn start(dir: &Path) -> Result<PrivateNats, String> {
        let mut p = PrivateNats {
            dir: dir.to_owned(),
            child: None,
        };
        std::fs::create_dir_all(dir.join("store")).map_err(|e| e.to_string())?;
        p.up().await?;
        Ok(p)
    }

    /// Its client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{NATS_PORT}")
    }

    /// Starts the server (again) on the same store.
    pub async fn up(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("nats-server.log"))
            .map_err(|e| e.to_string())?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(Self::binary())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &NATS_PORT.to_string(),
                "-m",
                &NATS_MONITOR.to_string(),
                "-js",
                "-sd",
                &self.dir.join("store").display().to_string(),
                "-n",
                "fleet-chaos",
            ])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", Self::binary()))?;
        self.child = Some(child);
        let monitor = SocketAddr::from(([127, 0, 0, 1], NATS_MONITOR));
        for _ in 0..200 {
            if let Ok((200, _)) = http(monitor, "GET", "/healthz?js-enabled-only=true", None).await
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!(
            "the private nats-server did not get ready on port {NATS_PORT} within 20 s (is the port free?)"
        ))
    }

    /// Stops the server in order (SIGTERM, SIGKILL after 10 s) and reaps it.
    pub async fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Some(pid) = c.id() {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
            if tokio::time::timeout(Duration::from_secs(10), c.wait())
                .await
                .is_err()
            {
                let _ = c.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(5), c.wait()).await;
            }
        }
    }

    /// Stops it and deletes its store.
    pub async fn remove(mut self) {
        self.down().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
