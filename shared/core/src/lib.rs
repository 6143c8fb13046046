//! The broker abstraction every fleet backend implements, the handler error
//! type, and `memory`, the in-process broker used by the demo and by fast
//! deterministic tests.
//!
//! Handlers never see these broker types: the runtime owns every [`Acker`].

pub mod broker;
pub mod error;
pub mod memory;
pub mod settlement;

pub use broker::{
    Acker, Broker, BrokerKind, Delivery, Destination, Headers, OutMessage, ParkInfo, Source,
    SubscribeOptions, Subscription, Topology,
};
pub use error::{BrokerError, JobError};
pub use memory::MemoryBroker;
pub use settlement::{Applied, Settlement};
