//! Finalization rules (DESIGN §5): when a running pipeline becomes final, and
//! which final state it gets, as a pure function the sweeper applies with a
//! conditional update.

use crate::model::{Millis, PipelineState};

/// The counts and flags the decision needs, read in the sweeper's transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PipelineFacts {
    /// Items in the pipeline.
    pub items_total: i64,
    /// Items in a terminal state.
    pub items_terminal: i64,
    /// Items that succeeded.
    pub items_succeeded: i64,
    /// Items whose jobs expired at the deadline.
    pub items_expired: i64,
    /// Cancellation was requested.
    pub cancel_requested: bool,
    /// The pipeline's deadline.
    pub deadline_at: Option<Millis>,
    /// Its item list is complete (submitted whole, or open and then sealed).
    pub sealed: bool,
    /// When an unsealed pipeline times out (its client stopped appending).
    pub seal_by: Option<Millis>,
}

/// A final state and its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The final state.
    pub state: PipelineState,
    /// Why, for people.
    pub reason: String,
}

/// Decides whether a running pipeline is final at `now`.
///
/// Order: an explicit cancellation wins; then, when every item is terminal,
/// `completed` / `timed_out` (some item expired at the deadline) /
/// `partial_success` / `failed`; then, `grace` after the deadline, `timed_out`.
pub fn decide(f: &PipelineFacts, now: Millis, grace_ms: i64) -> Option<Verdict> {
    let verdict = |state, reason: String| Some(Verdict { state, reason });
    if f.cancel_requested {
        return verdict(PipelineState::Cancelled, "cancelled on request".into());
    }
    let (n, ok) = (f.items_total, f.items_succeeded);
    if !f.sealed
        && let Some(by) = f.seal_by
        && now >= by
    {
        // More items were announced and never came: whatever arrived cannot be the whole.
        return verdict(
            PipelineState::TimedOut,
            format!(
                "never sealed: {n} items arrived, then no append or seal before the open-pipeline timeout"
            ),
        );
    }
    if f.sealed && n > 0 && f.items_terminal >= n {
        return if ok == n {
            verdict(PipelineState::Completed, format!("all {n} items succeeded"))
        } else if f.items_expired > 0 {
            verdict(
                PipelineState::TimedOut,
                format!(
                    "deadline passed: {} of {n} items expired, {ok} succeeded",
                    f.items_expired
                ),
            )
        } else if ok > 0 {
            verdict(
                PipelineState::PartialSuccess,
                format!("{ok} of {n} items succeeded, {} failed", n - ok),
            )
        } else {
            verdict(
                PipelineState::Failed,
                format!("no item succeeded ({n} failed)"),
            )
        };
    }
    match f.deadline_at {
        Some(d) if now >= d.saturating_add(grace_ms) => verdict(
            PipelineState::TimedOut,
            format!(
                "deadline passed with {} of {n} items unfinished",
                n - f.items_terminal
            ),
        ),
        _ => None,
    }
}

/// Distinct degradation notes named in a final reason (the report lists every item's).
pub const REASON_NOTES: usize = 3;

/// A verdict's reason with its degraded items named:
/// `all 3 items succeeded, 3 items degraded: analyzers sleeper, exit1 failed`. `notes` are the
/// distinct item notes with their item counts, most frequent first (one more than
/// [`REASON_NOTES`] means "and more"); counts are shown when the notes differ.
pub fn with_degradation(reason: &str, degraded: i64, notes: &[(String, i64)]) -> String {
    if degraded <= 0 {
        return reason.to_owned();
    }
    let counted = notes.len() > 1;
    let mut shown: Vec<String> = notes
        .iter()
        .take(REASON_NOTES)
        .map(|(note, n)| {
            if counted {
                format!("{note} ({n})")
            } else {
                note.clone()
            }
        })
        .collect();
    if notes.len() > REASON_NOTES {
        shown.push("…".into());
    }
    let items = if degraded == 1 { "item" } else { "items" };
    if shown.is_empty() {
        format!("{reason}, {degraded} {items} degraded")
    } else {
        format!(
            "{reason}, {degraded} {items} degraded: {}",
            shown.join("; ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(total: i64, terminal: i64, ok: i64) -> PipelineFacts {
        PipelineFacts {
            items_total: total,
            items_terminal: terminal,
            items_succeeded: ok,
            sealed: true,
            ..PipelineFacts::default()
        }
    }

    #[test]
    fn running_until_every_item_is_terminal() {
        assert_eq!(decide(&facts(3, 2, 2), 0, 0), None);
    }

    #[test]
    fn outcome_states() {
        let s = |f: PipelineFacts| decide(&f, 0, 0).unwrap().state;
        assert_eq!(s(facts(3, 3, 3)), PipelineState::Completed);
        assert_eq!(s(facts(3, 3, 1)), PipelineState::PartialSuccess);
        assert_eq!(s(facts(3, 3, 0)), PipelineState::Failed);
        let mut expired = facts(3, 3, 1);
        expired.items_expired = 2;
        assert_eq!(s(expired), PipelineState::TimedOut);
        let v = decide(&facts(3, 3, 1), 0, 0).unwrap();
        assert_eq!(v.reason, "1 of 3 items succeeded, 2 failed");
    }

    #[test]
    fn degraded_items_are_named_in_the_reason() {
        let notes = vec![("analyzers sleeper, exit1 failed".to_owned(), 3)];
        assert_eq!(
            with_degradation("all 3 items succeeded", 3, &notes),
            "all 3 items succeeded, 3 items degraded: analyzers sleeper, exit1 failed"
        );
        assert_eq!(with_degradation("x", 0, &notes), "x");
        let many: Vec<(String, i64)> = (0..5).map(|i| (format!("n{i}"), 5 - i)).collect();
        assert_eq!(
            with_degradation("r", 15, &many[..4]),
            "r, 15 items degraded: n0 (5); n1 (4); n2 (3); …"
        );
    }

    #[test]
    fn cancellation_wins() {
        let mut f = facts(3, 3, 3);
        f.cancel_requested = true;
        assert_eq!(decide(&f, 0, 0).unwrap().state, PipelineState::Cancelled);
    }

    #[test]
    fn deadline_with_grace() {
        let mut f = facts(4, 1, 1);
        f.deadline_at = Some(1000);
        assert_eq!(decide(&f, 999, 0), None);
        assert_eq!(decide(&f, 1500, 1000), None);
        let v = decide(&f, 2000, 1000).unwrap();
        assert_eq!(v.state, PipelineState::TimedOut);
        assert!(v.reason.contains("3 of 4 items unfinished"), "{}", v.reason);
        // Finished before the deadline: the outcome rules win.
        let mut done = facts(2, 2, 2);
        done.deadline_at = Some(0);
        assert_eq!(
            decide(&done, 10, 0).unwrap().state,
            PipelineState::Completed
        );
    }

    #[test]
    fn an_open_pipeline_waits_for_its_seal_or_times_out() {
        let mut f = facts(2, 2, 2);
        f.sealed = false;
        f.seal_by = Some(1000);
        // Every item so far is done, but more may come: not final.
        assert_eq!(decide(&f, 999, 0), None);
        let v = decide(&f, 1000, 0).unwrap();
        assert_eq!(v.state, PipelineState::TimedOut);
        assert!(v.reason.contains("never sealed"), "{}", v.reason);
        // The deadline applies to an open pipeline too.
        f.seal_by = Some(10_000);
        f.deadline_at = Some(500);
        assert_eq!(decide(&f, 600, 0).unwrap().state, PipelineState::TimedOut);
        // Cancellation still wins.
        f.cancel_requested = true;
        assert_eq!(decide(&f, 0, 0).unwrap().state, PipelineState::Cancelled);
        // Sealed: the outcome rules apply.
        let mut sealed = facts(2, 2, 2);
        sealed.seal_by = Some(0);
        assert_eq!(
            decide(&sealed, 10, 0).unwrap().state,
            PipelineState::Completed
        );
    }
}
