//! A delivery's concurrency slot: taken by the consume loop before the delivery is handed
//! over, released after its settlement on every path.

use tokio::sync::OwnedSemaphorePermit;

use crate::unsettled::Held;
use fleet_core::Delivery;

/// A delivery as the consume loop hands it over: its concurrency permit, and its mark on the
/// unsettled-deliveries gauge (both released when the task that settles it ends).
pub struct Taken {
    /// The delivery.
    pub delivery: Delivery,
    /// Its concurrency permit.
    pub permit: OwnedSemaphorePermit,
    /// Its mark on `fleet_deliveries_unsettled`.
    pub held: Held,
}

/// A concurrency slot: the permit, the in-flight gauge and the unsettled mark, released on
/// every path (after the settlement, which happens while the slot is held).
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    _held: Held,
    in_flight: metrics::Gauge,
}

impl Slot {
    /// Takes ownership of a permit and a mark for one delivery (`in_flight`: the stage's gauge
    /// handle).
    pub fn new(in_flight: &metrics::Gauge, permit: OwnedSemaphorePermit, held: Held) -> Slot {
        in_flight.increment(1.0);
        Slot {
            _permit: permit,
            _held: held,
            in_flight: in_flight.clone(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.in_flight.decrement(1.0);
    }
}
