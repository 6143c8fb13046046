//! Deliveries this worker holds and has not settled yet: the `fleet_deliveries_unsettled`
//! gauge. Every delivery's [`Acker`] is wrapped on arrival; the wrapper lowers the gauge when
//! it is dropped, which is after its settlement went out (or when the delivery was given up,
//! e.g. with a lost connection: the broker redelivers it). A worker with the gauge at 0 owes
//! the broker nothing, whatever its concurrency slots say.

use std::time::Duration;

use async_trait::async_trait;
use fleet_core::{Acker, BrokerError, Delivery, ParkInfo};
use fleet_protocol::DeadLetterInfo;
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

    /// Counts `deliveries` as unsettled until each one's acker is dropped (one gauge update
    /// per fetch on the way in).
    pub fn track(&self, deliveries: &mut [Delivery]) {
        if deliveries.is_empty() {
            return;
        }
        self.gauge.increment(deliveries.len() as f64);
        for d in deliveries {
            let inner = std::mem::replace(&mut d.acker, Box::new(Settled));
            d.acker = Box::new(Tracked {
                inner,
                gauge: self.gauge.clone(),
            });
        }
    }
}

/// A wrapped acker: lowers the gauge when dropped (settled, or given up).
struct Tracked {
    inner: Box<dyn Acker>,
    gauge: Gauge,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
    }
}

#[async_trait]
impl Acker for Tracked {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        let (inner, _done) = (*self).split();
        inner.ack().await
    }
    async fn retry(self: Box<Self>, delay: Duration) -> Result<Duration, BrokerError> {
        let (inner, _done) = (*self).split();
        inner.retry(delay).await
    }
    async fn dead_letter(self: Box<Self>, info: &DeadLetterInfo) -> Result<(), BrokerError> {
        let (inner, _done) = (*self).split();
        inner.dead_letter(info).await
    }
    async fn release(self: Box<Self>) -> Result<(), BrokerError> {
        let (inner, _done) = (*self).split();
        inner.release().await
    }
    async fn release_uncounted(self: Box<Self>) -> Result<(), BrokerError> {
        let (inner, _done) = (*self).split();
        inner.release_uncounted().await
    }
    async fn park(self: Box<Self>, info: &ParkInfo) -> Result<(), BrokerError> {
        let (inner, _done) = (*self).split();
        inner.park(info).await
    }
    async fn extend(&self) -> Result<(), BrokerError> {
        self.inner.extend().await
    }
    fn lease(&self) -> Option<Duration> {
        self.inner.lease()
    }
}

impl Tracked {
    /// The inner acker, and a guard that lowers the gauge once the settlement call returned.
    fn split(mut self) -> (Box<dyn Acker>, Tracked) {
        let inner = std::mem::replace(&mut self.inner, Box::new(Settled));
        (inner, self)
    }
}

/// The placeholder left behind by [`Unsettled::track`] and [`Tracked::split`]; never settles
/// anything.
struct Settled;

#[async_trait]
impl Acker for Settled {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        Ok(())
    }
    async fn retry(self: Box<Self>, delay: Duration) -> Result<Duration, BrokerError> {
        Ok(delay)
    }
    async fn dead_letter(self: Box<Self>, _info: &DeadLetterInfo) -> Result<(), BrokerError> {
        Ok(())
    }
    async fn release(self: Box<Self>) -> Result<(), BrokerError> {
        Ok(())
    }
    async fn park(self: Box<Self>, _info: &ParkInfo) -> Result<(), BrokerError> {
        Ok(())
    }
    async fn extend(&self) -> Result<(), BrokerError> {
        Ok(())
    }
    fn lease(&self) -> Option<Duration> {
        None
    }
}
