//! fleet's consumer runtime: everything between a broker delivery and its ack,
//! in one place (DESIGN §5).
//!
//! A service builds a [`Handler`] (or [`BatchHandler`]) and hands it to a
//! [`Worker`]. The runtime decodes, checks attempts before running, drops
//! expired and cancelled jobs with their event, runs the handler under a hard
//! deadline with its lease extended, retries with jittered backoff under a
//! retry budget, dead-letters with reasons, sends events by group commit,
//! reconnects, drains on SIGTERM, and serves `/metrics`, `/healthz`, `/readyz`.
//!
//! The order of the layers around a handler, outermost first, and why:
//! 1. slot (permit + in-flight gauge): taken before anything runs so intake is bounded;
//! 2. admit: decode and attempt checks happen before the handler can crash the worker;
//! 3. pause gate (a `pause` breaker, or several routed dependencies): holds deliveries without burning attempts while a dependency is down;
//! 4. guard: deadline, cancellation, drain and lease extension around the handler, by one
//!    timer for all running jobs (`inflight`) that settles a stuck job from outside (`run`);
//! 5. settle: the single place that turns the result into ack / retry / dead letter.

pub mod admit;
pub mod background;
pub mod backoff;
pub mod breaker;
pub mod budget;
pub mod config;
pub mod connect;
pub mod consume;
pub mod context;
pub mod events;
pub mod guard;
pub mod handler;
pub mod inflight;
pub mod outcome;
pub mod pause;
pub mod process;
pub mod resubscribe;
pub mod run;
pub mod runaways;
pub mod secret;
pub mod serve;
pub mod settle;
pub mod shared;
pub mod shutdown;
pub mod slot;
pub mod supervise;
pub mod telemetry;
pub mod unsettled;
pub mod worker;

pub use breaker::{Breaker, BreakerConfig, BreakerPolicy, BreakerState};
pub use config::RuntimeConfig;
pub use context::JobContext;
pub use fleet_core::JobError;
pub use fleet_protocol::{Degradation, DegradationKind, JobEnvelope};
pub use handler::{BatchHandler, Handler, Output};
pub use pause::IntakeGate;
pub use supervise::{Supervisor, TaskFailure};
pub use worker::Worker;
