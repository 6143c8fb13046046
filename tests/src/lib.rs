//! fleet-tests: the harness behind the broker conformance suite (`tests/conformance.rs`).
//!
//! [`Env`] gives every test a run-unique prefix on one backend (memory, RabbitMQ or
//! NATS), fresh broker connections per worker (so a worker can be "killed" by
//! closing its connection), an event collector, DLQ readers and cleanup.

pub mod env;
pub mod script;

pub use env::{Backend, Env, RunningWorker};
pub use script::{Script, ScriptedHandler};
