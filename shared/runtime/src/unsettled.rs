//! Deliveries this worker holds and has not settled yet: the `fleet_deliveries_unsettled`
//! gauge. Every delivery is handed to its task with a [`Held`] mark that lowers the gauge when
//! it is dropped, which is when the task ends: after the delivery's settlement went out, or
//! when it was given up (e.g. with a lost connection: the broker redelivers it). A worker with
//! the gauge at 0 owes the broker nothing, whatever its concurrency slots say.
//!
//! The mark travels beside the delivery's [`fleet_core::Acker`] rather than wrapping it, so
//! counting costs no allocation per delivery (a wrapper costs a box, and a boxed future per
//! settlement call).

use metrics::Gauge;

use crate::telemetry::names;

/// The gauge of one stage, registered once (no registry look-up per delivery).
#[derive(Clone)]
pub struct Unsettled {
    gauge: Gauge,
}

impl Unsettled {
    /// The gauge for `stage`, at its current value.
    pub fn new(stage: &str) -> Unsettled {
        Unsettled {
            gauge: metrics::gauge!(names::DELIVERIES_UNSETTLED, "stage" => stage.to_owned()),
        }
    }

    /// Counts one delivery as unsettled until the returned mark is dropped.
    pub fn hold(&self) -> Held {
        self.gauge.increment(1.0);
        Held {
            gauge: self.gauge.clone(),
        }
    }
}

/// One unsettled delivery: lowers the gauge when dropped (settled, or given up).
pub struct Held {
    gauge: Gauge,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
    }
}
