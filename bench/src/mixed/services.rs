//! The three real service binaries as child processes: found next to this executable,
//! started with the run's prefix and database, watched through their admin port
//! (`/readyz`, `/metrics`) and `/proc` (CPU time, peak RSS), stopped with SIGTERM and,
//! on every other path, killed when dropped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// The command that builds what this benchmark runs.
pub const BUILD_HINT: &str =
    "cargo build --release -p fleet-bench -p fleet-analyzer -p fleet-summarizer -p fleet-writer";

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`, 100 on every Linux ABI).
const USER_HZ: f64 = 100.0;

/// One fleet service under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// fleet-analyzer (stage `analyze`).
    Analyzer,
    /// fleet-summarizer (stage `summarize`, extractive provider).
    Summarizer,
    /// fleet-writer (stage `write`, PostgreSQL).
    Writer,
}

impl Service {
    /// All three, in pipeline order.
    pub const ALL: [Service; 3] = [Service::Analyzer, Service::Summarizer, Service::Writer];

    /// The binary's file name.
    pub fn binary(self) -> &'static str {
        match self {
            Service::Analyzer => "fleet-analyzer",
            Service::Summarizer => "fleet-summarizer",
            Service::Writer => "fleet-writer",
        }
    }

    /// The stage it consumes.
    pub fn stage(self) -> &'static str {
        match self {
            Service::Analyzer => "analyze",
            Service::Summarizer => "summarize",
            Service::Writer => "write",
        }
    }
}

/// The release binaries next to this executable, or an error saying how to build them.
pub fn locate() -> anyhow::Result<BTreeMap<&'static str, PathBuf>> {
    let exe = std::env::current_exe().context("locating the fleet-bench executable")?;
    let dir = exe
        .parent()
        .context("the fleet-bench executable has no directory")?;
    let mut found = BTreeMap::new();
    let mut missing = Vec::new();
    for s in Service::ALL {
        let p = dir.join(s.binary());
        if p.is_file() {
            found.insert(s.binary(), p);
        } else {
            missing.push(p.display().to_string());
        }
    }
    if !missing.is_empty() {
        bail!(
            "service binaries not found next to fleet-bench: {}\nbuild them first: {BUILD_HINT}",
            missing.join(", ")
        );
    }
    Ok(found)
}

/// A running service process (SIGKILLed if dropped before [`Running::stop`]).
pub struct Running {
    /// Which service.
    pub service: Service,
    /// Its admin address (`/readyz`, `/metrics`).
    pub admin: std::net::SocketAddr,
    /// Its log file (stdout and stderr).
    pub log: PathBuf,
    child: Child,
    pid: u32,
}

/// Starts `service` from `binary` with `args` (runtime flags and the service's own);
/// inherited `FLEET_*` variables are removed so that only these flags configure it.
pub fn spawn(
    service: Service,
    binary: &Path,
    args: &[String],
    log_dir: &Path,
) -> anyhow::Result<Running> {
    let admin = free_port()?;
    let log = log_dir.join(format!("{}.log", service.binary()));
    let out = std::fs::File::create(&log)
        .with_context(|| format!("creating the log file {}", log.display()))?;
    let err = out.try_clone().context("duplicating the log file handle")?;
    let mut cmd = Command::new(binary);
    cmd.args(args)
        .arg(format!("--admin-addr={admin}"))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // Every exit path of the benchmark that does not stop the child kills it.
        .kill_on_drop(true);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("FLEET_") {
            cmd.env_remove(k);
        }
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let pid = child.id().context("the child exited at once")?;
    Ok(Running {
        service,
        admin,
        log,
        child,
        pid,
    })
}

/// A port free right now on loopback (the child binds it a moment later).
fn free_port() -> anyhow::Result<std::net::SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    l.local_addr().context("reading the free port")
}

/// CPU time and memory of a process, from `/proc`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStats {
    /// User + system CPU time so far.
    pub cpu: Duration,
    /// Peak resident set size (`VmHWM`), in KiB.
    pub peak_rss_kib: u64,
}

impl Running {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Fails if the process has exited (it must run until stopped).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited early with {status}; see {}",
                self.service.binary(),
                self.log.display()
            );
        }
        Ok(())
    }

    /// CPU time and memory now.
    pub fn stats(&self) -> anyhow::Result<ProcStats> {
        proc_stats(self.pid).with_context(|| format!("reading /proc/{}", self.pid))
    }

    /// True when `/readyz` answers 200.
    pub async fn ready(&self) -> bool {
        matches!(http_get(self.admin, "/readyz").await, Ok((200, _)))
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> anyhow::Result<Metrics> {
        let (status, body) = http_get(self.admin, "/metrics").await?;
        if status != 200 {
            bail!("{} /metrics answered {status}", self.service.binary());
        }
        Ok(Metrics::parse(&body))
    }

    /// SIGTERM, then waits up to `grace` for a clean exit (status 0); kills it otherwise.
    pub async fn stop(mut self, grace: Duration) -> anyhow::Result<()> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid).context("pid")?);
        if let Err(e) = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM) {
            bail!("SIGTERM to {}: {e}", self.service.binary());
        }
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => bail!(
                "{} exited with {status} after SIGTERM; see {}",
                self.service.binary(),
                self.log.display()
            ),
            Ok(Err(e)) => Err(e).context("waiting for the child"),
            Err(_) => {
                let _ = self.child.kill().await;
                bail!(
                    "{} did not exit within {grace:?} of SIGTERM (killed)",
                    self.service.binary()
                )
            }
        }
    }
}

/// Waits until every service answers `/readyz` with 200 (each stays alive meanwhile).
pub async fn wait_ready(services: &mut [Running], limit: Duration) -> anyhow::Result<()> {
    let until = Instant::now() + limit;
    loop {
        let mut all = true;
        for s in services.iter_mut() {
            s.check_alive()?;
            all &= s.ready().await;
        }
        if all {
            return Ok(());
        }
        if Instant::now() >= until {
            bail!("the services were not ready within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn proc_stats(pid: u32) -> Option<ProcStats> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields are counted after the command name's closing parenthesis (it may hold spaces).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some(ProcStats {
        cpu: Duration::from_secs_f64(ticks as f64 / USER_HZ),
        peak_rss_kib: kib("VmHWM:")?,
    })
}

/// A minimal HTTP/1.0 GET on loopback (bounded): status and body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let work = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .with_context(|| format!("GET {path} on {addr} timed out"))??;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no HTTP status from {addr}{path}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((status, body))
}

/// Samples of one Prometheus text exposition, keyed by `name{labels}` as printed.
#[derive(Debug, Clone, Default)]
pub struct Metrics(BTreeMap<String, f64>);

impl Metrics {
    /// Parses every sample line (comments skipped).
    pub fn parse(text: &str) -> Metrics {
        Metrics(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let (key, value) = l.rsplit_once(' ')?;
                    Some((key.trim().to_owned(), value.trim().parse().ok()?))
                })
                .collect(),
        )
    }

    /// Sum of the samples of `name` whose labels contain every `k="v"` in `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(k, _)| {
                let (n, rest) = k.split_once('{').unwrap_or((k.as_str(), ""));
                n == name
                    && labels
                        .iter()
                        .all(|(lk, lv)| rest.contains(&format!("{lk}=\"{lv}\"")))
            })
            .map(|(_, v)| v)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_sums_by_label() {
        let m = Metrics::parse(
            "# HELP x y\nfleet_jobs_finished_total{stage=\"analyze\",outcome=\"succeeded\"} 10\n\
             fleet_jobs_finished_total{stage=\"analyze\",outcome=\"retried\"} 2\n\
             fleet_job_duration_seconds_sum{stage=\"analyze\",outcome=\"succeeded\"} 1.5\n",
        );
        assert_eq!(
            m.sum("fleet_jobs_finished_total", &[("stage", "analyze")]),
            12.0
        );
        assert_eq!(
            m.sum("fleet_jobs_finished_total", &[("outcome", "retried")]),
            2.0
        );
        assert_eq!(m.sum("fleet_job_duration_seconds_sum", &[]), 1.5);
        assert_eq!(m.sum("missing", &[]), 0.0);
    }

    #[test]
    fn own_proc_stats() {
        if cfg!(target_os = "linux") {
            let s = proc_stats(std::process::id()).expect("own /proc");
            assert!(s.peak_rss_kib > 0);
        }
    }
}
