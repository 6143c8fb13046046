//! The campaign's recording (read by the alert rule tests, so the format is fixed):
//! `<outdir>/<broker>-<scenario>/series.jsonl`, one line per process per scrape,
//! `{"t": secs, "job": "fleet-coordinator", "instance": "coordinator-1", "text": "<exposition>"}`,
//! and `phases.jsonl`, `{"t": secs, "event": "start"|"submitted"|"fault_start"|"fault_end"|
//! "all_terminal"|"finalized"|"end", "fault": name or null}`; `t` is seconds since the
//! scenario started.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use crate::procs::http;

/// A scrape target: `(job, instance, admin address)`.
pub type Target = (String, String, SocketAddr);

/// Bound of one `/metrics` scrape (a wedged process must not stall the recording).
const SCRAPE: Duration = Duration::from_secs(2);

/// Writes one scenario's `series.jsonl` and `phases.jsonl`.
pub struct Recorder {
    /// The scenario's directory.
    pub dir: PathBuf,
    t0: Instant,
    series: BufWriter<File>,
    phases: BufWriter<File>,
}

impl Recorder {
    /// Creates (truncates) the files in `dir`; `t0` is the scenario's start.
    pub fn create(dir: &Path, t0: Instant) -> std::io::Result<Recorder> {
        std::fs::create_dir_all(dir)?;
        Ok(Recorder {
            dir: dir.to_owned(),
            t0,
            series: BufWriter::new(File::create(dir.join("series.jsonl"))?),
            phases: BufWriter::new(File::create(dir.join("phases.jsonl"))?),
        })
    }

    /// Seconds since the scenario's start.
    pub fn t(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    /// Appends one phase event (flushed at once: a crashed run keeps what it saw).
    pub fn phase(&mut self, event: &str, fault: Option<&str>) {
        let line = json!({"t": round3(self.t()), "event": event, "fault": fault});
        let _ = writeln!(self.phases, "{line}");
        let _ = self.phases.flush();
    }

    /// Scrapes every target's `/metrics` at once (each bounded) and appends what answered.
    pub async fn scrape(&mut self, targets: &[Target]) {
        let t = round3(self.t());
        let got = futures_join(targets).await;
        for ((job, instance, _), text) in targets.iter().zip(got) {
            if let Some(text) = text {
                let line = json!({"t": t, "job": job, "instance": instance, "text": text});
                let _ = writeln!(self.series, "{line}");
            }
        }
        let _ = self.series.flush();
    }
}

/// `/metrics` of every target, concurrently; `None` where it did not answer 200 in time.
async fn futures_join(targets: &[Target]) -> Vec<Option<String>> {
    let tasks: Vec<_> = targets
        .iter()
        .map(|(_, _, addr)| {
            let addr = *addr;
            tokio::spawn(async move {
                match tokio::time::timeout(SCRAPE, http(addr, "GET", "/metrics", None)).await {
                    Ok(Ok((200, text))) => Some(text),
                    _ => None,
                }
            })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.ok().flatten());
    }
    out
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procs::sample_sum;

    #[test]
    fn sums_samples_by_label() {
        let text = "# HELP x\nfleet_jobs_in_flight{stage=\"analyze\"} 2\n\
                    fleet_jobs_in_flight{stage=\"write\"} 1\nfleet_jobs_in_flight_other 9\n";
        assert_eq!(sample_sum(text, "fleet_jobs_in_flight", &[]), 3.0);
        assert_eq!(
            sample_sum(text, "fleet_jobs_in_flight", &[("stage", "write")]),
            1.0
        );
        assert_eq!(sample_sum(text, "absent", &[]), 0.0);
    }

    #[tokio::test]
    async fn phases_are_json_lines() {
        let dir = std::env::temp_dir().join(format!("chaos-rec-{}", std::process::id()));
        let mut r = Recorder::create(&dir, Instant::now()).expect("create");
        r.phase("start", None);
        r.phase("fault_start", Some("llm-hang"));
        let text = std::fs::read_to_string(dir.join("phases.jsonl")).expect("read");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        assert_eq!(lines[0]["event"], "start");
        assert!(lines[0]["fault"].is_null());
        assert_eq!(lines[1]["fault"], "llm-hang");
        let _ = std::fs::remove_dir_all(dir);
    }
}
