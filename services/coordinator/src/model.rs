//! The coordinator's vocabulary: pipeline, item, job and stall states with
//! their wire names (the strings stored in the database and shown by the API).

use serde::{Deserialize, Serialize};

macro_rules! wire_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $var:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vm])* $var),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$var),+];

            /// The snake_case wire name.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$var => $s),+ }
            }

            /// Parses a wire name.
            pub fn parse(s: &str) -> Option<$name> {
                match s { $($s => Some($name::$var),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wire_enum! {
    /// Where a pipeline stands; everything but `running` is final.
    PipelineState {
        /// Items are still being processed.
        Running => "running",
        /// Every item succeeded.
        Completed => "completed",
        /// Some items succeeded, some did not.
        PartialSuccess => "partial_success",
        /// No item succeeded.
        Failed => "failed",
        /// Cancelled on request.
        Cancelled => "cancelled",
        /// The deadline passed before every item finished.
        TimedOut => "timed_out",
    }
}

impl PipelineState {
    /// True for every state but `running`.
    pub fn is_final(self) -> bool {
        self != PipelineState::Running
    }
}

wire_enum! {
    /// Where one item stands.
    ItemState {
        /// Some stage of its route is still ahead.
        Running => "running",
        /// The last stage of its route succeeded (optional stages may have been skipped).
        Succeeded => "succeeded",
        /// A required stage was dead-lettered.
        Failed => "failed",
        /// Its job was dropped because the pipeline was cancelled.
        Cancelled => "cancelled",
        /// Its job was dropped because the deadline passed.
        Expired => "expired",
        /// The pipeline timed out while the item was unfinished.
        TimedOut => "timed_out",
    }
}

impl ItemState {
    /// True for every state but `running`.
    pub fn is_terminal(self) -> bool {
        self != ItemState::Running
    }
}

wire_enum! {
    /// Where one job (one stage of one item) stands.
    JobState {
        /// Published, not yet started.
        Queued => "queued",
        /// An attempt runs.
        Running => "running",
        /// An attempt failed; another follows after a delay.
        Retrying => "retrying",
        /// Done.
        Succeeded => "succeeded",
        /// Given up; the message is in the stage's DLQ.
        DeadLettered => "dead_lettered",
        /// Never ran: a required stage before it failed.
        Skipped => "skipped",
        /// Dropped because the pipeline was cancelled.
        Cancelled => "cancelled",
        /// Dropped because the deadline passed.
        Expired => "expired",
    }
}

impl JobState {
    /// True for states nothing follows (except `succeeded` superseding another terminal).
    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            JobState::Queued | JobState::Running | JobState::Retrying
        )
    }
}

wire_enum! {
    /// Why a job is reported stalled (DESIGN §6).
    StallKind {
        /// Its worker's heartbeats stopped.
        WorkerLost => "worker_lost",
        /// Its worker is alive but the job reported no progress within the stall window.
        NoProgress => "no_progress",
        /// Queued longer than the scale-up allowance and no live worker serves the stage.
        NoConsumer => "no_consumer",
        /// Its pipeline is past its deadline.
        Overdue => "overdue",
    }
}

/// Milliseconds since the Unix epoch: how the store keeps every time.
pub type Millis = i64;

/// Converts a store time to a UTC timestamp.
pub fn to_time(ms: Millis) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// The store time of a UTC timestamp.
pub fn to_millis(t: chrono::DateTime<chrono::Utc>) -> Millis {
    t.timestamp_millis()
}

/// Now, as a store time.
pub fn now_ms() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_round_trip() {
        for s in PipelineState::ALL {
            assert_eq!(PipelineState::parse(s.as_str()), Some(*s));
        }
        for s in JobState::ALL {
            assert_eq!(JobState::parse(s.as_str()), Some(*s));
        }
        for s in ItemState::ALL {
            assert_eq!(ItemState::parse(s.as_str()), Some(*s));
        }
        for s in StallKind::ALL {
            assert_eq!(StallKind::parse(s.as_str()), Some(*s));
        }
        assert_eq!(
            serde_json::to_value(PipelineState::PartialSuccess).unwrap(),
            "partial_success"
        );
        assert!(JobState::Skipped.is_terminal() && !JobState::Retrying.is_terminal());
        assert!(PipelineState::TimedOut.is_final() && !PipelineState::Running.is_final());
    }
}
