//! Test helpers: run the real `fleetctl` binary, start a coordinator in-process
//! on the memory broker with a SQLite temp file, make temp directories.
#![allow(dead_code, missing_docs)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fleet_core::{Broker, MemoryBroker};
use tokio_util::sync::CancellationToken;

/// What one `fleetctl` run printed and returned.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn all(&self) -> String {
        format!(
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `fleetctl args…` with a clean environment for its own variables, bounded.
pub async fn fleetctl(args: &[&str]) -> Run {
    fleetctl_in(args, None).await
}

/// Same, in directory `cwd`.
pub async fn fleetctl_in(args: &[&str], cwd: Option<&std::path::Path>) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleetctl"));
    cmd.args(args)
        .env_remove("FLEET_COORDINATOR_URL")
        .env_remove("FLEET_API_TOKEN")
        .env_remove("FLEET_DATABASE_URL")
        .kill_on_drop(true);
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("fleetctl finished within 120s")
        .expect("fleetctl runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A fresh directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "fleetctl-{tag}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Writes `files` (name, text) into a new temp dir.
pub fn text_files(tag: &str, files: &[(&str, &str)]) -> PathBuf {
    let d = temp_dir(tag);
    for (name, text) in files {
        std::fs::write(d.join(name), text).expect("write file");
    }
    d
}

/// A port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A coordinator running in this process on the memory broker and a SQLite file.
pub struct Coordinator {
    pub addr: SocketAddr,
    pub broker: Arc<dyn Broker>,
    pub dir: PathBuf,
    stop: CancellationToken,
    running: Option<fleet_coordinator::Running>,
}

impl Coordinator {
    /// Starts one; `extra` are more coordinator flags.
    pub async fn start(extra: &[&str]) -> Coordinator {
        // fleet-runtime's `prometheus()` is not atomic on first use: parallel tests that
        // start coordinators at once could both try to install the global recorder.
        static RECORDER: std::sync::Once = std::sync::Once::new();
        RECORDER.call_once(|| {
            fleet_runtime::telemetry::admin::prometheus().expect("metrics recorder");
        });
        let dir = temp_dir("coordinator");
        let mut args = vec![
            "fleet-coordinator".to_owned(),
            "--listen=127.0.0.1:0".into(),
            "--admin-addr=127.0.0.1:0".into(),
            format!("--sqlite-path={}", dir.join("coordinator.sqlite").display()),
            "--tick=100ms".into(),
            "--heartbeat-interval=1s".into(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut config = fleet_coordinator::Config::parse_args(args).expect("coordinator config");
        config.database_url = None;
        let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
        let stop = CancellationToken::new();
        let running = fleet_coordinator::start(config, broker.clone(), stop.clone())
            .await
            .expect("coordinator starts");
        Coordinator {
            addr: running.api_addr,
            broker,
            dir,
            stop,
            running: Some(running),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops it and removes its directory.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(r) = self.running.take() {
            r.wait().await.expect("the coordinator stops cleanly");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
