//! Stall classification (DESIGN §6), as a pure function of one job's facts:
//! `worker_lost` (heartbeats stopped), `no_progress` (heartbeats go on, the
//! job's progress does not), `no_consumer` (backlog older than the scale-up
//! allowance and no live worker of the stage), `overdue` (pipeline past its
//! deadline). `worker_lost` and `no_consumer` wait three heartbeat intervals
//! after the coordinator starts, so a restart does not report every job.

use crate::model::{JobState, Millis, StallKind};

/// Heartbeat intervals without a heartbeat after which a worker counts as lost.
pub const LOST_AFTER_HEARTBEATS: i64 = 3;

/// The facts about one non-terminal job, joined from jobs, workers and worker_jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobFacts {
    /// The job's state.
    pub state: JobState,
    /// When the job became queued (created or last retried).
    pub queued_at: Millis,
    /// When its last event arrived.
    pub last_event_at: Option<Millis>,
    /// Last heartbeat of the worker running it, if that worker ever sent one.
    pub worker_heartbeat_at: Option<Millis>,
    /// The job's `last_progress_at` from its worker's latest heartbeat, when listed there.
    pub heartbeat_progress_at: Option<Millis>,
    /// A live worker serves the job's stage.
    pub stage_has_live_worker: bool,
    /// The stage's stall window (default: the job's per-attempt timeout).
    pub stall_window_ms: i64,
    /// The pipeline's deadline.
    pub deadline_at: Option<Millis>,
}

/// The sweeper's clock and settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StallParams {
    /// Now.
    pub now: Millis,
    /// When this coordinator started (or took over).
    pub started_at: Millis,
    /// Workers' heartbeat interval.
    pub heartbeat_ms: i64,
    /// How long a backlog may wait for a scaler to start a worker.
    pub scale_up_allowance_ms: i64,
}

impl StallParams {
    /// The time before which a worker's last heartbeat means it is lost.
    pub fn lost_cutoff(&self) -> Millis {
        self.now - LOST_AFTER_HEARTBEATS * self.heartbeat_ms
    }

    /// True once the start-up grace for `worker_lost` and `no_consumer` is over.
    pub fn grace_over(&self) -> bool {
        self.now - self.started_at >= LOST_AFTER_HEARTBEATS * self.heartbeat_ms
    }
}

/// The job's stall kind and since when, if it is stalled.
pub fn classify(j: &JobFacts, p: &StallParams) -> Option<(StallKind, Millis)> {
    if j.state.is_terminal() {
        return None;
    }
    if let Some(d) = j.deadline_at.filter(|d| p.now >= *d) {
        return Some((StallKind::Overdue, d));
    }
    match j.state {
        JobState::Running => {
            let beat = j.worker_heartbeat_at.or(j.last_event_at);
            match beat {
                Some(b) if b >= p.lost_cutoff() => {
                    let progress = j.heartbeat_progress_at?;
                    (p.now - progress > j.stall_window_ms)
                        .then_some((StallKind::NoProgress, progress))
                }
                _ if !p.grace_over() => None,
                b => Some((StallKind::WorkerLost, b.unwrap_or(j.queued_at))),
            }
        }
        _ => {
            let since = match j.state {
                JobState::Retrying => j.last_event_at.unwrap_or(j.queued_at),
                _ => j.queued_at,
            };
            let waiting_too_long = p.now - since > p.scale_up_allowance_ms;
            (waiting_too_long && !j.stage_has_live_worker && p.grace_over())
                .then_some((StallKind::NoConsumer, since))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HB: i64 = 5_000;

    fn params(now: Millis) -> StallParams {
        StallParams {
            now,
            started_at: 0,
            heartbeat_ms: HB,
            scale_up_allowance_ms: 120_000,
        }
    }

    fn running(beat: Millis, progress: Option<Millis>) -> JobFacts {
        JobFacts {
            state: JobState::Running,
            queued_at: 0,
            last_event_at: Some(0),
            worker_heartbeat_at: Some(beat),
            heartbeat_progress_at: progress,
            stage_has_live_worker: true,
            stall_window_ms: 30_000,
            deadline_at: None,
        }
    }

    #[test]
    fn live_worker_with_progress_is_fine() {
        assert_eq!(
            classify(&running(99_000, Some(90_000)), &params(100_000)),
            None
        );
    }

    #[test]
    fn worker_lost_after_three_heartbeats() {
        assert_eq!(
            classify(&running(86_000, Some(86_000)), &params(100_000)),
            None
        );
        assert_eq!(
            classify(&running(84_000, Some(84_000)), &params(100_000)),
            Some((StallKind::WorkerLost, 84_000))
        );
    }

    #[test]
    fn no_progress_when_heartbeats_go_on() {
        assert_eq!(
            classify(&running(99_000, Some(60_000)), &params(100_000)),
            Some((StallKind::NoProgress, 60_000))
        );
        // Not listed in the heartbeat (finishing): no verdict.
        assert_eq!(classify(&running(99_000, None), &params(100_000)), None);
    }

    #[test]
    fn no_consumer_needs_age_no_worker_and_grace() {
        let mut q = running(0, None);
        q.state = JobState::Queued;
        q.queued_at = 0;
        q.stage_has_live_worker = false;
        assert_eq!(
            classify(&q, &params(100_000)),
            None,
            "younger than the allowance"
        );
        assert_eq!(
            classify(&q, &params(130_000)),
            Some((StallKind::NoConsumer, 0))
        );
        q.stage_has_live_worker = true;
        assert_eq!(classify(&q, &params(130_000)), None, "a worker is alive");
    }

    #[test]
    fn start_up_grace_holds_worker_lost_and_no_consumer() {
        let mut p = params(200_000);
        p.started_at = 190_000;
        assert_eq!(classify(&running(0, Some(0)), &p), None);
        let mut q = running(0, None);
        q.state = JobState::Queued;
        q.stage_has_live_worker = false;
        assert_eq!(classify(&q, &p), None);
        p.started_at = 180_000;
        assert!(classify(&q, &p).is_some());
    }

    #[test]
    fn overdue_past_deadline_and_terminal_never_stalls() {
        let mut j = running(99_000, Some(99_000));
        j.deadline_at = Some(50_000);
        assert_eq!(
            classify(&j, &params(100_000)),
            Some((StallKind::Overdue, 50_000))
        );
        j.state = JobState::Succeeded;
        assert_eq!(classify(&j, &params(100_000)), None);
    }
}
