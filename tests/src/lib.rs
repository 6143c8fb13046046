//! fleet-tests: the harness behind the broker conformance suite (`tests/conformance.rs`).
//!
//! [`Env`] gives every test a run-unique prefix on one backend (memory, RabbitMQ or
//! NATS), fresh broker connections per worker (so a worker can be "killed" by
//! closing its connection), an event collector, DLQ readers and cleanup.
//!
//! [`World`] runs the real service binaries as separate processes ([`procs`]) on a real
//! broker and PostgreSQL for the cross-service fault tests (`tests/faults.rs`), with a
//! stub LLM ([`llm`]).
//!
//! [`chaos`] is the fault campaign (`fleet-chaos`, `tests/chaos.rs`) built on [`World`].

pub mod chaos;
pub mod cluster;
pub mod env;
pub mod llm;
pub mod procs;
pub mod script;
pub mod world;

pub use env::{Backend, Env, RunningWorker};
pub use script::{Script, ScriptedHandler};
pub use world::World;
