//! An item's state derived from its route and its jobs (DESIGN §5 "Items and
//! pipelines"), as a pure function: the item is terminal when the last stage
//! of its route is terminal or a required stage failed (its remaining stages
//! are `skipped`); a failed optional stage passes the item on.

use std::collections::HashMap;

use fleet_protocol::{Degradation, DegradationKind, RouteStep};

use crate::model::{ItemState, JobState};

/// What the store knows about one job of the item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFact {
    /// Current state.
    pub state: JobState,
    /// Dead-letter reason or last error, when it failed.
    pub reason: Option<String>,
    /// The note of a degraded success, in words (e.g. `analyzers sleeper failed`).
    pub degraded: Option<String>,
}

/// The derived item and the job rows to create or change to match it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemView {
    /// The item's state.
    pub state: ItemState,
    /// `completed`, `completed_with_skips`, `dead_lettered`, `cancelled`, `expired`; none while running.
    pub outcome: Option<&'static str>,
    /// Stage that ended the item, when it did not succeed.
    pub failed_stage: Option<String>,
    /// Human-readable reason, when it did not simply succeed.
    pub reason: Option<String>,
    /// The stage whose job must exist and be `queued` (created, or reset from `skipped`).
    pub queue_stage: Option<(String, bool)>,
    /// Stages after a terminal failure whose jobs must be `skipped`.
    pub skip_stages: Vec<(String, bool)>,
    /// When the item succeeded with less than the full result: why, in words (its stages'
    /// degradation notes and skipped optional stages, in route order, ` + `-separated).
    pub degraded: Option<String>,
}

/// Dead-letter reason of a job whose message could never be published (the outbox sets it;
/// defined here, where items are derived, so the item logic needs nothing of the outbox).
pub const PUBLISH_FAILED: &str = "publish_failed";

/// True when the job ended because its message could never be published (outbox).
fn unpublished(fact: Option<&JobFact>) -> bool {
    fact.and_then(|f| f.reason.as_deref())
        .is_some_and(|r| r.starts_with(PUBLISH_FAILED))
}

/// True when a stage after `route[i]` has a job that is not merely `skipped`.
fn passed_on(route: &[RouteStep], i: usize, jobs: &HashMap<String, JobFact>) -> bool {
    route[i + 1..].iter().any(|s| {
        jobs.get(&s.stage)
            .is_some_and(|f| f.state != JobState::Skipped)
    })
}

/// Derives the item from `route` (all its stages, in order) and its jobs by stage.
pub fn derive(route: &[RouteStep], jobs: &HashMap<String, JobFact>) -> ItemView {
    let mut skipped_optional = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    for (i, step) in route.iter().enumerate() {
        let rest = || {
            route[i + 1..]
                .iter()
                .map(|s| (s.stage.clone(), s.required))
                .collect::<Vec<_>>()
        };
        let fact = jobs.get(&step.stage);
        let ended = |state: ItemState, outcome: &'static str, why: String| ItemView {
            state,
            outcome: Some(outcome),
            failed_stage: Some(step.stage.clone()),
            reason: Some(why),
            queue_stage: None,
            skip_stages: rest(),
            degraded: None,
        };
        match fact.map(|f| f.state) {
            Some(JobState::Succeeded) => {
                notes.extend(fact.and_then(|f| f.degraded.clone()));
            }
            // A job that was never published cannot pass its item on: nothing would
            // publish the next stage's job either.
            Some(JobState::DeadLettered) if !step.required && !unpublished(fact) => {
                skipped_optional.push(step.stage.clone());
                notes
                    .push(Degradation::new(DegradationKind::StageSkipped, &step.stage).to_string());
            }
            // A required stage whose dead letter sits behind a later stage's job that did more
            // than get skipped passed the item on: the dead letter is a redelivered copy of a
            // job whose earlier attempt succeeded, but whose ack and success event died with
            // its worker (a poison neighbour, a SIGKILL right after the next stage's job was
            // published). The item goes on with that later job (found by the fault campaign,
            // issue 10, as rows written for items reported failed).
            Some(JobState::DeadLettered) if !unpublished(fact) && passed_on(route, i, jobs) => {}
            Some(JobState::DeadLettered) => {
                let why = fact.and_then(|f| f.reason.clone()).unwrap_or_default();
                if unpublished(fact) {
                    return ended(
                        ItemState::Failed,
                        "publish_failed",
                        format!("stage {} could not be published: {why}", step.stage),
                    );
                }
                return ended(
                    ItemState::Failed,
                    "dead_lettered",
                    format!("required stage {} dead-lettered: {why}", step.stage),
                );
            }
            Some(JobState::Cancelled) => {
                return ended(
                    ItemState::Cancelled,
                    "cancelled",
                    "pipeline cancelled".into(),
                );
            }
            Some(JobState::Expired) => {
                return ended(
                    ItemState::Expired,
                    "expired",
                    "pipeline deadline passed".into(),
                );
            }
            None | Some(JobState::Skipped) => {
                return ItemView {
                    state: ItemState::Running,
                    outcome: None,
                    failed_stage: None,
                    reason: None,
                    queue_stage: Some((step.stage.clone(), step.required)),
                    skip_stages: Vec::new(),
                    degraded: None,
                };
            }
            Some(JobState::Queued | JobState::Running | JobState::Retrying) => {
                return ItemView {
                    state: ItemState::Running,
                    outcome: None,
                    failed_stage: None,
                    reason: None,
                    queue_stage: None,
                    skip_stages: Vec::new(),
                    degraded: None,
                };
            }
        }
    }
    let (outcome, reason) = if skipped_optional.is_empty() {
        ("completed", None)
    } else {
        (
            "completed_with_skips",
            Some(format!(
                "optional stage(s) skipped: {}",
                skipped_optional.join(", ")
            )),
        )
    };
    ItemView {
        state: ItemState::Succeeded,
        outcome: Some(outcome),
        failed_stage: None,
        reason,
        queue_stage: None,
        skip_stages: Vec::new(),
        degraded: (!notes.is_empty()).then(|| notes.join(" + ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route() -> Vec<RouteStep> {
        vec![
            RouteStep {
                stage: "analyze".into(),
                required: true,
            },
            RouteStep {
                stage: "summarize".into(),
                required: false,
            },
            RouteStep {
                stage: "write".into(),
                required: true,
            },
        ]
    }

    fn jobs(states: &[(&str, JobState)]) -> HashMap<String, JobFact> {
        states
            .iter()
            .map(|(s, st)| {
                (
                    (*s).to_owned(),
                    JobFact {
                        state: *st,
                        reason: Some("attempts_exhausted: boom".into()),
                        degraded: None,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn running_until_last_stage_succeeds() {
        let v = derive(&route(), &jobs(&[("analyze", JobState::Running)]));
        assert_eq!(v.state, ItemState::Running);
        assert_eq!(v.queue_stage, None);
        let v = derive(&route(), &jobs(&[("analyze", JobState::Succeeded)]));
        assert_eq!(v.state, ItemState::Running);
        assert_eq!(v.queue_stage, Some(("summarize".into(), false)));
        let v = derive(
            &route(),
            &jobs(&[
                ("analyze", JobState::Succeeded),
                ("summarize", JobState::Succeeded),
                ("write", JobState::Succeeded),
            ]),
        );
        assert_eq!(
            (v.state, v.outcome),
            (ItemState::Succeeded, Some("completed"))
        );
    }

    #[test]
    fn required_failure_ends_item_and_skips_the_rest() {
        let v = derive(&route(), &jobs(&[("analyze", JobState::DeadLettered)]));
        assert_eq!(v.state, ItemState::Failed);
        assert_eq!(v.failed_stage.as_deref(), Some("analyze"));
        assert!(v.reason.unwrap().contains("attempts_exhausted"));
        assert_eq!(
            v.skip_stages,
            vec![("summarize".into(), false), ("write".into(), true)]
        );
    }

    #[test]
    fn a_dead_letter_behind_a_later_stage_does_not_fail_the_item() {
        // analyze succeeded and passed the item on, then a redelivered copy of its job was
        // dead-lettered (its worker died before the ack): summarize ran, so the item goes on.
        let mut j = jobs(&[
            ("analyze", JobState::DeadLettered),
            ("summarize", JobState::Succeeded),
            ("write", JobState::Skipped),
        ]);
        let v = derive(&route(), &j);
        assert_eq!(v.state, ItemState::Running);
        assert_eq!(v.queue_stage, Some(("write".into(), true)));
        assert!(v.skip_stages.is_empty());
        j.get_mut("write").unwrap().state = JobState::Succeeded;
        let v = derive(&route(), &j);
        assert_eq!(v.state, ItemState::Succeeded, "{v:?}");
        // Later stages only skipped (the failure's own doing): still failed.
        let j = jobs(&[
            ("analyze", JobState::DeadLettered),
            ("summarize", JobState::Skipped),
            ("write", JobState::Skipped),
        ]);
        assert_eq!(derive(&route(), &j).state, ItemState::Failed);
    }

    #[test]
    fn optional_failure_passes_the_item_on() {
        let j = jobs(&[
            ("analyze", JobState::Succeeded),
            ("summarize", JobState::DeadLettered),
        ]);
        let v = derive(&route(), &j);
        assert_eq!(v.state, ItemState::Running);
        assert_eq!(v.queue_stage, Some(("write".into(), true)));
        let mut j = j;
        j.insert(
            "write".into(),
            JobFact {
                state: JobState::Succeeded,
                reason: None,
                degraded: None,
            },
        );
        let v = derive(&route(), &j);
        assert_eq!(v.state, ItemState::Succeeded);
        assert_eq!(v.outcome, Some("completed_with_skips"));
        assert!(v.reason.unwrap().contains("summarize"));
        assert_eq!(v.degraded.as_deref(), Some("skipped summarize"));
    }

    #[test]
    fn unpublished_job_fails_the_item_even_on_an_optional_stage() {
        let mut route = route();
        route[0].required = false;
        let mut j = HashMap::new();
        j.insert(
            "analyze".to_owned(),
            JobFact {
                state: JobState::DeadLettered,
                reason: Some("publish_failed: no queue is bound".into()),
                degraded: None,
            },
        );
        let v = derive(&route, &j);
        assert_eq!(
            (v.state, v.outcome),
            (ItemState::Failed, Some("publish_failed"))
        );
        assert_eq!(
            v.reason.as_deref(),
            Some("stage analyze could not be published: publish_failed: no queue is bound")
        );
        assert_eq!(v.skip_stages.len(), 2);
    }

    #[test]
    fn expired_and_cancelled_end_the_item() {
        let v = derive(
            &route(),
            &jobs(&[
                ("analyze", JobState::Succeeded),
                ("summarize", JobState::Expired),
            ]),
        );
        assert_eq!(v.state, ItemState::Expired);
        assert_eq!(v.skip_stages, vec![("write".into(), true)]);
        let v = derive(&route(), &jobs(&[("analyze", JobState::Cancelled)]));
        assert_eq!(v.state, ItemState::Cancelled);
    }

    #[test]
    fn superseding_success_reopens_a_skipped_stage() {
        // analyze flipped from dead_lettered to succeeded; summarize had been skipped.
        let v = derive(
            &route(),
            &jobs(&[
                ("analyze", JobState::Succeeded),
                ("summarize", JobState::Skipped),
                ("write", JobState::Skipped),
            ]),
        );
        assert_eq!(v.state, ItemState::Running);
        assert_eq!(v.queue_stage, Some(("summarize".into(), false)));
    }

    #[test]
    fn degraded_stages_make_a_degraded_item() {
        let mut j = jobs(&[
            ("analyze", JobState::Succeeded),
            ("summarize", JobState::Succeeded),
            ("write", JobState::Succeeded),
        ]);
        assert_eq!(derive(&route(), &j).degraded, None);
        j.get_mut("analyze").unwrap().degraded = Some("analyzers sleeper, exit1 failed".into());
        j.get_mut("summarize").unwrap().degraded = Some("summary by fallback extractive".into());
        let v = derive(&route(), &j);
        assert_eq!(v.state, ItemState::Succeeded);
        assert_eq!(
            v.degraded.as_deref(),
            Some("analyzers sleeper, exit1 failed + summary by fallback extractive")
        );
        // Not degraded while running: the note comes with the end.
        j.get_mut("write").unwrap().state = JobState::Running;
        assert_eq!(derive(&route(), &j).degraded, None);
    }
}
