//! A private broker for the broker-restart scenario: the machine's shared brokers are never
//! restarted, so the scenario runs on a broker of its own, used by nothing else:
//!
//! * NATS: a nats-server (port 31222, monitoring 31822, store in a scratch directory),
//!   stopped (SIGTERM, as an orderly shutdown) and started again on the same store;
//! * RabbitMQ: a single node `fleet-chaos1@localhost` (AMQP 31672, distribution 31682, its
//!   own cookie, config and data under `target/tmp/fleet-chaos-rabbitmq`) started by
//!   `scripts/rabbitmq-cluster.sh` (`FLEET_RABBIT_CLUSTER_NODES=1`), restarted with
//!   `rabbitmqctl stop_app` / `start_app` (the Erlang VM stays up, the queues' data stays on
//!   disk) and stopped (and its directory removed) at the end.

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

/// AMQP port of the private RabbitMQ node (its distribution port is this + 10).
pub const RABBIT_PORT: u16 = 31672;
/// Bound of one `scripts/rabbitmq-cluster.sh` call (the script bounds its own waits at 120 s).
const RABBIT_CTL: Duration = Duration::from_secs(180);

/// A private single-node RabbitMQ, driven by `scripts/rabbitmq-cluster.sh`.
pub struct PrivateRabbit {
    dir: PathBuf,
    running: bool,
}

impl PrivateRabbit {
    /// The repository root (the script's location and the default data directory's base).
    fn repo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap_or(Path::new("."))
            .to_owned()
    }

    /// Its data directory: `FLEET_CHAOS_RABBIT_DIR`, else `target/tmp/fleet-chaos-rabbitmq`.
    fn default_dir() -> PathBuf {
        std::env::var_os("FLEET_CHAOS_RABBIT_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Self::repo().join("target/tmp/fleet-chaos-rabbitmq"))
    }

    /// Runs `scripts/rabbitmq-cluster.sh <args>` for this node (bounded); its output on error.
    async fn script(&self, args: &[&str]) -> Result<(), String> {
        let script = Self::repo().join("scripts/rabbitmq-cluster.sh");
        let out = Command::new("bash")
            .arg(&script)
            .args(args)
            .env("FLEET_RABBIT_CLUSTER_DIR", &self.dir)
            .env("FLEET_RABBIT_CLUSTER_PORT", RABBIT_PORT.to_string())
            .env("FLEET_RABBIT_CLUSTER_NODES", "1")
            .env("FLEET_RABBIT_CLUSTER_NAME", "fleet-chaos")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(RABBIT_CTL, out).await {
            Ok(Ok(o)) if o.status.success() => Ok(()),
            Ok(Ok(o)) => Err(format!(
                "{} {} failed ({}): {}{}",
                script.display(),
                args.join(" "),
                o.status,
                String::from_utf8_lossy(&o.stdout).trim(),
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Ok(Err(e)) => Err(format!("cannot run {}: {e}", script.display())),
            Err(_) => Err(format!(
                "{} {} did not finish within {RABBIT_CTL:?}",
                script.display(),
                args.join(" ")
            )),
        }
    }

    /// Starts the node (data under `FLEET_CHAOS_RABBIT_DIR` or `target/tmp/…`) and waits
    /// (bounded) until it runs; a node left by an earlier run is stopped and wiped first.
    pub async fn start() -> Result<PrivateRabbit, String> {
        let mut p = PrivateRabbit {
            dir: Self::default_dir(),
            running: false,
        };
        // A crashed earlier run may have left its node up: start from a clean slate.
        let _ = p.script(&["stop"]).await;
        p.running = true;
        if let Err(e) = p.script(&["start"]).await {
            let _ = p.script(&["stop"]).await;
            return Err(format!(
                "{e} (is port {RABBIT_PORT} or {} free?)",
                RABBIT_PORT + 10
            ));
        }
        Ok(p)
    }

    /// Its AMQP URL (guest/guest: a fresh node allows it from loopback).
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{RABBIT_PORT}/%2f")
    }

    /// `rabbitmqctl stop_app`: every connection closed, the listener gone, the VM up.
    pub async fn down(&mut self) -> Result<(), String> {
        self.script(&["stop-app", "1"]).await
    }

    /// `rabbitmqctl start_app`, waiting until the node runs again.
    pub async fn up(&mut self) -> Result<(), String> {
        self.script(&["start-app", "1"]).await
    }

    /// Stops the node (bounded; killed if it does not stop) and deletes its directory.
    pub async fn remove(mut self) {
        if self.running {
            self.running = false;
            let _ = self.script(&["stop"]).await;
        }
    }
}

impl Drop for PrivateRabbit {
    /// A scenario that panicked still stops its node (blocking, bounded by `timeout`).
    fn drop(&mut self) {
        if self.running {
            let _ = std::process::Command::new("timeout")
                .arg(RABBIT_CTL.as_secs().to_string())
                .arg("bash")
                .arg(Self::repo().join("scripts/rabbitmq-cluster.sh"))
                .arg("stop")
                .env("FLEET_RABBIT_CLUSTER_DIR", &self.dir)
                .env("FLEET_RABBIT_CLUSTER_PORT", RABBIT_PORT.to_string())
                .env("FLEET_RABBIT_CLUSTER_NODES", "1")
                .env("FLEET_RABBIT_CLUSTER_NAME", "fleet-chaos")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The scenario's private broker, of either kind.
pub enum Private {
    /// A private nats-server.
    Nats(PrivateNats),
    /// A private RabbitMQ node.
    Rabbit(PrivateRabbit),
}

impl Private {
    /// Its client URL.
    pub fn url(&self) -> String {
        match self {
            Private::Nats(p) => p.url(),
            Private::Rabbit(p) => p.url(),
        }
    }

    /// Takes the broker down (NATS: the process stopped; RabbitMQ: `stop_app`).
    pub async fn down(&mut self) -> Result<(), String> {
        match self {
            Private::Nats(p) => {
                p.down().await;
                Ok(())
            }
            Private::Rabbit(p) => p.down().await,
        }
    }

    /// Brings it back on the same store (NATS: started again; RabbitMQ: `start_app`).
    pub async fn up(&mut self) -> Result<(), String> {
        match self {
            Private::Nats(p) => p.up().await,
            Private::Rabbit(p) => p.up().await,
        }
    }

    /// Stops it for good and deletes its data.
    pub async fn remove(self) {
        match self {
            Private::Nats(p) => p.remove().await,
            Private::Rabbit(p) => p.remove().await,
        }
    }
}
