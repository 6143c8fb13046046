//! The table of jobs running on this worker, with its one deadline timer: feeds heartbeats
//! (liveness plus each job's last progress), lets a cancellation reach running jobs, and stops
//! a job whose deadline passed or whose lease is due for an extension.
//!
//! One timer serves every job ([`InFlight::watch`], a supervised task): the table keeps the
//! jobs' next wake times in order and the task sleeps until the earliest. A job costs an
//! entry in two maps, not a timer and a guard task of its own; a stop is a call on the job's
//! [`Stoppable`], which settles it from outside when its handler does not give way.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use fleet_protocol::control::Cancellation;
use fleet_protocol::{InFlightJob, JobEnvelope};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::telemetry::names;

/// Why a running job is stopped from outside its handler.
#[derive(Debug, Clone)]
pub enum Stop {
    /// Its deadline passed.
    TimedOut,
    /// Its pipeline was cancelled.
    Cancelled,
    /// The drain deadline passed during shutdown.
    Drained,
    /// A lease extension failed (the broker may redeliver it).
    LeaseLost(String),
}

/// A running job as the table sees it: something to stop, or whose lease to extend.
pub trait Stoppable: Send + Sync {
    /// Stops the job for `why` (the first stop wins; later ones are ignored).
    fn stop(self: Arc<Self>, why: Stop);
    /// Extends the job's lease (bounded by `within`); a failure stops it.
    fn extend(self: Arc<Self>, within: Duration);
}

/// When an armed job wakes the timer.
struct Wake {
    deadline: Instant,
    /// The lease extension period and the next extension, when the broker leases deliveries.
    extend: Option<(Duration, Instant)>,
    /// The key of this wake in the ordered index.
    at: Instant,
}

impl Wake {
    fn next(&self) -> Instant {
        self.extend
            .map_or(self.deadline, |(_, at)| at.min(self.deadline))
    }
}

struct Entry {
    /// The running job (shared, not copied: its ids are read when a heartbeat is built).
    job: Arc<JobEnvelope>,
    attempt: u32,
    started_at: DateTime<Utc>,
    last_progress_at: DateTime<Utc>,
    run: Arc<dyn Stoppable>,
    /// Set while its handler runs under a deadline.
    wake: Option<Wake>,
}

impl Entry {
    fn report(&self) -> InFlightJob {
        InFlightJob {
            job_id: self.job.job_id.clone(),
            pipeline_id: self.job.pipeline_id.clone(),
            attempt: self.attempt,
            started_at: self.started_at,
            last_progress_at: self.last_progress_at,
        }
    }
}

#[derive(Default)]
struct Table {
    jobs: HashMap<u64, Entry>,
    /// Armed jobs by next wake time.
    index: BTreeSet<(Instant, u64)>,
    /// What the timer sleeps until (an earlier wake must wake it).
    armed: Option<Instant>,
}

/// Running jobs by a process-local key, and their deadlines.
pub struct InFlight {
    /// `fleet_last_progress_timestamp_seconds{stage}`, registered once.
    last_progress: metrics::Gauge,
    next: AtomicU64,
    table: Mutex<Table>,
    /// Wakes the timer when a job is armed earlier than it sleeps.
    earlier: Notify,
}

/// What a due wake asks of a job.
enum Due {
    /// Stop it: its deadline passed.
    Deadline(Arc<dyn Stoppable>),
    /// Extend its lease (within the period).
    Extend(Arc<dyn Stoppable>, Duration),
}

impl InFlight {
    /// An empty registry for `stage`.
    pub fn new(stage: &str) -> Arc<InFlight> {
        Arc::new(InFlight {
            last_progress: metrics::gauge!(names::LAST_PROGRESS, "stage" => stage.to_owned()),
            next: AtomicU64::new(0),
            table: Mutex::new(Table::default()),
            earlier: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A fresh key for [`InFlight::insert`].
    pub fn key(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a running attempt under `key` (see [`InFlight::key`]); it stays until
    /// [`InFlight::remove`].
    pub fn insert(&self, key: u64, job: &Arc<JobEnvelope>, attempt: u32, run: Arc<dyn Stoppable>) {
        let now = Utc::now();
        self.lock().jobs.insert(
            key,
            Entry {
                job: job.clone(),
                attempt,
                started_at: now,
                last_progress_at: now,
                run,
                wake: None,
            },
        );
        self.export(now);
    }

    /// Removes a job (idempotent).
    pub fn remove(&self, key: u64) {
        let mut t = self.lock();
        if let Some(e) = t.jobs.remove(&key)
            && let Some(w) = e.wake
        {
            t.index.remove(&(w.at, key));
        }
    }

    /// Puts a registered job under `deadline`, with its lease extended every `extend` (if any).
    pub fn arm(&self, key: u64, deadline: Instant, extend: Option<Duration>) {
        let extend = extend.map(|e| (e, Instant::now() + e));
        let mut t = self.lock();
        let t = &mut *t;
        let Some(e) = t.jobs.get_mut(&key) else {
            return;
        };
        let mut wake = Wake {
            deadline,
            extend,
            at: deadline,
        };
        let at = wake.next();
        wake.at = at;
        if let Some(old) = e.wake.replace(wake) {
            t.index.remove(&(old.at, key));
        }
        t.index.insert((at, key));
        if t.armed.is_none_or(|a| at < a) {
            self.earlier.notify_one();
        }
    }

    /// Takes a job out of the timer's reach (its handler returned).
    pub fn disarm(&self, key: u64) {
        let mut t = self.lock();
        if let Some(w) = t.jobs.get_mut(&key).and_then(|e| e.wake.take()) {
            t.index.remove(&(w.at, key));
        }
    }

    /// Records progress now.
    pub fn touch(&self, key: u64) {
        let now = Utc::now();
        if let Some(e) = self.lock().jobs.get_mut(&key) {
            e.last_progress_at = now;
        }
        self.export(now);
    }

    fn export(&self, now: DateTime<Utc>) {
        self.last_progress
            .set(now.timestamp_millis() as f64 / 1000.0);
    }

    /// A snapshot for the heartbeat.
    pub fn snapshot(&self) -> Vec<InFlightJob> {
        self.lock().jobs.values().map(Entry::report).collect()
    }

    /// Number of running attempts.
    pub fn len(&self) -> usize {
        self.lock().jobs.len()
    }

    /// True when nothing runs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Cancels every running job of the pipeline life `c` is about.
    pub fn cancel_pipeline(&self, c: &Cancellation) -> usize {
        let hits: Vec<_> = self
            .lock()
            .jobs
            .values()
            .filter(|e| c.applies_to(&e.job.pipeline_id, e.job.pipeline_created_at))
            .map(|e| e.run.clone())
            .collect();
        let n = hits.len();
        for run in hits {
            run.stop(Stop::Cancelled);
        }
        n
    }

    /// Stops every running job (the drain deadline passed).
    fn stop_all(&self, why: &Stop) {
        let all: Vec<_> = self.lock().jobs.values().map(|e| e.run.clone()).collect();
        for run in all {
            run.stop(why.clone());
        }
    }

    /// Takes the wakes due at `now` out of the index (extensions are put back at their next
    /// time); returns the jobs to act on and the next wake.
    fn due(&self, now: Instant) -> (Vec<Due>, Option<Instant>) {
        let mut t = self.lock();
        let t = &mut *t;
        let mut out = Vec::new();
        while let Some(&(at, key)) = t.index.first() {
            if at > now {
                break;
            }
            t.index.pop_first();
            let Some(e) = t.jobs.get_mut(&key) else {
                continue;
            };
            let Some(w) = e.wake.as_mut() else { continue };
            if now >= w.deadline {
                e.wake = None;
                out.push(Due::Deadline(e.run.clone()));
                continue;
            }
            if let Some((every, next)) = w.extend.as_mut() {
                *next += *every;
                out.push(Due::Extend(e.run.clone(), *every));
            }
            w.at = w.next();
            t.index.insert((w.at, key));
        }
        t.armed = t.index.first().map(|(at, _)| *at);
        (out, t.armed)
    }

    /// The timer of every running job, until `stop`: stops the jobs whose deadline passed,
    /// has the leases extended that are due, and stops every job once `drain` fires.
    pub async fn watch(self: Arc<Self>, drain: CancellationToken, stop: CancellationToken) {
        // Far enough to mean "nothing armed", near enough to stay a valid instant.
        const IDLE: Duration = Duration::from_secs(3600);
        let mut drained = false;
        loop {
            let (due, next) = self.due(Instant::now());
            for d in due {
                match d {
                    Due::Deadline(run) => run.stop(Stop::TimedOut),
                    Due::Extend(run, every) => run.extend(every),
                }
            }
            let sleep = tokio::time::sleep_until(next.unwrap_or_else(|| Instant::now() + IDLE));
            tokio::select! {
                () = sleep => {}
                () = self.earlier.notified() => {}
                () = drain.cancelled(), if !drained => {
                    drained = true;
                    self.stop_all(&Stop::Drained);
                }
                () = stop.cancelled() => return,
            }
        }
    }
}
