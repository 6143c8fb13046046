//! A handler whose behaviour each job scripts through its payload `{"mode": …}`,
//! recording calls, attempts and concurrency so tests can assert end states.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use fleet_core::JobError;
use fleet_runtime::{Handler, JobContext, JobEnvelope, Output};
use tokio::sync::Notify;

/// Shared record of what the handler did.
#[derive(Default)]
pub struct Script {
    /// Attempts seen per job id, in order.
    pub calls: Mutex<HashMap<String, Vec<u32>>>,
    /// Handler invocations running now.
    pub running: AtomicI64,
    /// Highest concurrency seen.
    pub peak: AtomicI64,
    /// Set while the scripted dependency is down (`mode: dependency`).
    pub dependency_down: AtomicBool,
    /// Notified whenever a handler starts.
    pub started: Notify,
}

impl Script {
    /// A fresh script.
    pub fn new() -> Arc<Script> {
        Arc::new(Script::default())
    }
    /// Attempts seen for `job_id`.
    pub fn attempts(&self, job_id: &str) -> Vec<u32> {
        self.calls
            .lock()
            .expect("calls")
            .get(job_id)
            .cloned()
            .unwrap_or_default()
    }
    /// All calls.
    pub fn total_calls(&self) -> usize {
        self.calls
            .lock()
            .expect("calls")
            .values()
            .map(Vec::len)
            .sum()
    }
}

/// The scripted handler.
#[derive(Clone)]
pub struct ScriptedHandler(pub Arc<Script>);

struct Running(Arc<Script>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl Handler for ScriptedHandler {
    async fn handle(&self, job: &JobEnvelope, ctx: &JobContext) -> Result<Output, JobError> {
        let s = &self.0;
        s.calls
            .lock()
            .expect("calls")
            .entry(job.job_id.clone())
            .or_default()
            .push(ctx.attempt());
        let now = s.running.fetch_add(1, Ordering::SeqCst) + 1;
        s.peak.fetch_max(now, Ordering::SeqCst);
        let _running = Running(s.clone());
        s.started.notify_waiters();
        let p = &job.payload;
        let ms = |k: &str| Duration::from_millis(p[k].as_u64().unwrap_or(0));
        match p["mode"].as_str().unwrap_or("ok") {
            "ok" => Ok(Output::new(serde_json::json!({"done": job.item_id}))),
            "sleep" => {
                tokio::time::sleep(ms("ms")).await;
                Ok(Output::default())
            }
            "fail_until" => {
                if ctx.attempt() < p["ok_at"].as_u64().unwrap_or(2) as u32 {
                    match p["retry_after_ms"].as_u64() {
                        Some(d) => Err(JobError::RetryAfter {
                            delay: Duration::from_millis(d),
                            message: "scripted".into(),
                        }),
                        None => Err(JobError::Retryable("scripted failure".into())),
                    }
                } else {
                    Ok(Output::default())
                }
            }
            "fail" => Err(JobError::Retryable("scripted failure".into())),
            "permanent" => Err(JobError::Permanent("scripted permanent failure".into())),
            "hang" => std::future::pending().await,
            "ignore_cancel" => loop {
                // Never looks at ctx.cancelled(); only dropping the future stops it.
                tokio::time::sleep(Duration::from_millis(50)).await;
            },
            "blocking" => {
                let d = ms("ms");
                ctx.blocking(move || std::thread::sleep(d)).await?;
                Ok(Output::default())
            }
            "stuck_thread" => {
                // Blocks its runtime thread without yielding (a handler that misuses the
                // runtime): the deadline must still settle the job and free its slot.
                std::thread::sleep(ms("ms"));
                Ok(Output::default())
            }
            "panic" => panic!("scripted panic"),
            "dependency" => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if s.dependency_down.load(Ordering::SeqCst) {
                    Err(JobError::Retryable("dependency down".into()))
                } else {
                    Ok(Output::default())
                }
            }
            other => Err(JobError::Permanent(format!(
                "unknown scripted mode {other}"
            ))),
        }
    }
}
