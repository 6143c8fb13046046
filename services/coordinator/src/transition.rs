//! The job state machine of DESIGN §5 "Event order", as a pure function.
//!
//! A job's events are ordered by `(attempt, seq)`. Any terminal event beats any
//! non-terminal one; among terminal events `succeeded` wins and the loser is
//! recorded `superseded`; otherwise the first terminal sticks. Duplicates and
//! reordering are harmless: the decision depends only on the stored snapshot
//! and the incoming event.

use fleet_protocol::EventKind;

use crate::model::JobState;

/// What the store knows about a job before an event is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobSnapshot {
    /// Current state.
    pub state: JobState,
    /// Attempt of the last applied event (0 before any).
    pub attempt: u32,
    /// Sequence of the last applied event within its attempt.
    pub seq: u32,
}

impl JobSnapshot {
    /// A job the coordinator created and published, before any event.
    pub fn queued() -> JobSnapshot {
        JobSnapshot {
            state: JobState::Queued,
            attempt: 0,
            seq: 0,
        }
    }
}

/// What to do with one incoming event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Move the job to `state` and record the event's `(attempt, seq)`.
    Apply(JobState),
    /// Progress within the current state: refresh `(attempt, seq)` and progress time only.
    Touch,
    /// A terminal `succeeded` replaces another terminal; the old one is recorded superseded.
    Supersede(JobState),
    /// A terminal event that loses to the current terminal; recorded superseded, no change.
    Superseded,
    /// Already applied (same event again); no change.
    Duplicate,
    /// Older than what is applied, or non-terminal after a terminal; no change.
    Stale,
}

impl Decision {
    /// True when the job's stored state changes.
    pub fn changes_state(self) -> bool {
        matches!(self, Decision::Apply(_) | Decision::Supersede(_))
    }
}

/// The job state an event kind leads to.
pub fn target_state(kind: &EventKind) -> JobState {
    match kind {
        EventKind::Started | EventKind::Progress { .. } => JobState::Running,
        EventKind::Retrying { .. } => JobState::Retrying,
        EventKind::Succeeded => JobState::Succeeded,
        EventKind::DeadLettered { .. } => JobState::DeadLettered,
        EventKind::Cancelled => JobState::Cancelled,
        EventKind::Expired => JobState::Expired,
    }
}

/// Decides how an event moving a job to `target` at `(attempt, seq)` applies to `current`
/// (`None`: the job has no row yet, e.g. its `started` overtook the previous stage's `succeeded`).
pub fn decide(current: Option<JobSnapshot>, target: JobState, attempt: u32, seq: u32) -> Decision {
    let Some(cur) = current else {
        return Decision::Apply(target);
    };
    let pos = (attempt, seq);
    let cur_pos = (cur.attempt, cur.seq);
    if !cur.state.is_terminal() {
        if target.is_terminal() {
            return Decision::Apply(target);
        }
        return match pos.cmp(&cur_pos) {
            std::cmp::Ordering::Greater if target == cur.state => Decision::Touch,
            std::cmp::Ordering::Greater => Decision::Apply(target),
            std::cmp::Ordering::Equal if target == cur.state => Decision::Duplicate,
            _ => Decision::Stale,
        };
    }
    if !target.is_terminal() {
        return Decision::Stale;
    }
    if target == cur.state && (attempt == cur.attempt || cur.attempt == 0) {
        return Decision::Duplicate;
    }
    if cur.state == JobState::Succeeded {
        return Decision::Superseded;
    }
    if target == JobState::Succeeded {
        return Decision::Supersede(target);
    }
    Decision::Superseded
}

#[cfg(test)]
mod tests {
    use super::*;
    use JobState::*;

    fn snap(state: JobState, attempt: u32, seq: u32) -> Option<JobSnapshot> {
        Some(JobSnapshot {
            state,
            attempt,
            seq,
        })
    }

    /// Applies a sequence of (target, attempt, seq) and returns the final snapshot.
    fn run(events: &[(JobState, u32, u32)]) -> JobSnapshot {
        let mut cur = JobSnapshot::queued();
        for &(t, a, s) in events {
            match decide(Some(cur), t, a, s) {
                Decision::Apply(st) | Decision::Supersede(st) => {
                    cur = JobSnapshot {
                        state: st,
                        attempt: a,
                        seq: s,
                    }
                }
                Decision::Touch => {
                    cur.attempt = a;
                    cur.seq = s;
                }
                _ => {}
            }
        }
        cur
    }

    #[test]
    fn every_forward_transition_from_queued() {
        for t in JobState::ALL {
            if *t == Queued || *t == Skipped {
                continue;
            }
            assert_eq!(
                decide(Some(JobSnapshot::queued()), *t, 1, 0),
                Decision::Apply(*t),
                "{t}"
            );
        }
    }

    #[test]
    fn normal_lifecycle_with_retry() {
        let s = run(&[
            (Running, 1, 0),
            (Running, 1, 1),
            (Retrying, 1, 2),
            (Running, 2, 0),
            (Succeeded, 2, 1),
        ]);
        assert_eq!((s.state, s.attempt, s.seq), (Succeeded, 2, 1));
    }

    #[test]
    fn progress_touches_and_old_events_are_stale() {
        assert_eq!(decide(snap(Running, 1, 0), Running, 1, 3), Decision::Touch);
        assert_eq!(
            decide(snap(Running, 1, 3), Running, 1, 3),
            Decision::Duplicate
        );
        assert_eq!(decide(snap(Running, 2, 0), Retrying, 1, 2), Decision::Stale);
        assert_eq!(decide(snap(Retrying, 1, 2), Running, 1, 1), Decision::Stale);
        assert_eq!(
            decide(snap(Retrying, 1, 2), Running, 2, 0),
            Decision::Apply(Running)
        );
    }

    #[test]
    fn reordered_events_end_in_the_same_state() {
        let ordered = [
            (Running, 1, 0),
            (Retrying, 1, 1),
            (Running, 2, 0),
            (DeadLettered, 2, 1),
        ];
        let mut reversed = ordered;
        reversed.reverse();
        assert_eq!(run(&ordered).state, DeadLettered);
        assert_eq!(run(&reversed).state, DeadLettered);
        let shuffled = [ordered[2], ordered[0], ordered[3], ordered[1]];
        assert_eq!(run(&shuffled).state, DeadLettered);
    }

    #[test]
    fn terminal_is_sticky_against_non_terminal() {
        for t in [Succeeded, DeadLettered, Cancelled, Expired, Skipped] {
            for n in [Running, Retrying] {
                assert_eq!(
                    decide(snap(t, 1, 5), n, 9, 9),
                    Decision::Stale,
                    "{t} <- {n}"
                );
            }
        }
    }

    #[test]
    fn duplicates_are_no_ops() {
        assert_eq!(
            decide(snap(Succeeded, 2, 1), Succeeded, 2, 1),
            Decision::Duplicate
        );
        assert_eq!(
            decide(snap(DeadLettered, 3, 4), DeadLettered, 3, 4),
            Decision::Duplicate
        );
        let twice = run(&[(Running, 1, 0), (Succeeded, 1, 1), (Succeeded, 1, 1)]);
        assert_eq!(twice.state, Succeeded);
    }

    #[test]
    fn succeeded_beats_other_terminals_of_other_attempts() {
        // A zombie attempt 1 succeeds after attempt 2 was dead-lettered.
        assert_eq!(
            decide(snap(DeadLettered, 2, 3), Succeeded, 1, 2),
            Decision::Supersede(Succeeded)
        );
        assert_eq!(
            decide(snap(Expired, 1, 0), Succeeded, 1, 1),
            Decision::Supersede(Succeeded)
        );
        assert_eq!(
            decide(snap(Skipped, 0, 0), Succeeded, 1, 1),
            Decision::Supersede(Succeeded)
        );
        // The other way round the late failure loses.
        for t in [DeadLettered, Cancelled, Expired] {
            assert_eq!(decide(snap(Succeeded, 1, 2), t, 2, 1), Decision::Superseded);
        }
        // Between two non-succeeded terminals the first sticks.
        assert_eq!(
            decide(snap(DeadLettered, 2, 1), Expired, 3, 0),
            Decision::Superseded
        );
    }

    #[test]
    fn first_event_for_an_unknown_job_creates_it() {
        assert_eq!(decide(None, Running, 1, 0), Decision::Apply(Running));
        assert_eq!(decide(None, Succeeded, 1, 1), Decision::Apply(Succeeded));
    }

    #[test]
    fn archive_dead_letter_after_event_is_duplicate() {
        // The DLQ archive reports attempt 0 when it has no header; the event came first.
        assert_eq!(
            decide(snap(DeadLettered, 3, 2), DeadLettered, 3, u32::MAX),
            Decision::Duplicate
        );
        assert_eq!(
            decide(snap(DeadLettered, 0, 0), DeadLettered, 3, 2),
            Decision::Duplicate
        );
    }

    #[test]
    fn target_states() {
        assert_eq!(target_state(&EventKind::Started), Running);
        assert_eq!(
            target_state(&EventKind::Progress {
                done: 1,
                total: None,
                note: String::new()
            }),
            Running
        );
        assert_eq!(
            target_state(&EventKind::Retrying {
                delay_ms: 1,
                error: String::new()
            }),
            Retrying
        );
        assert_eq!(target_state(&EventKind::Cancelled), Cancelled);
        assert_eq!(target_state(&EventKind::Expired), Expired);
        assert!(Decision::Supersede(Succeeded).changes_state() && !Decision::Touch.changes_state());
    }
}
