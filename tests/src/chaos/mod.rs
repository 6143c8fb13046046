//! The fault campaign of issue 10: the real service binaries as processes (two coordinator
//! replicas on PostgreSQL, `replicas` of each worker) on a real broker, one pipeline of
//! mixed items, faults injected while it runs, and the end state checked: every item
//! terminal, rows = succeeded items, no duplicates, dead letters = failed items, in-flight
//! back to 0, the pipeline finalized exactly once.
//!
//! * [`scenario`]: the scenarios and their faults;
//! * [`run`]: one scenario's control loop (processes, feed, faults, sampling, checks);
//! * [`fleet`]: the supervised processes; [`feed`]: the submission; [`poison`]: the
//!   poison analyzer; [`check`]: the end state; [`record`]: the metric recording;
//! * [`table`]: the printed table; [`rss`] and [`soak`]: resources and their trend.
//!
//! The binary is `fleet-chaos` (`cargo run -p fleet-tests --bin fleet-chaos -- --help`); the
//! short form runs in CI as `tests/chaos.rs`.

pub mod check;
pub mod feed;
pub mod fleet;
pub mod poison;
pub mod private;
pub mod record;
pub mod rss;
pub mod run;
pub mod scenario;
pub mod soak;
pub mod table;

pub use run::{Options, Outcome, run_scenario};
pub use scenario::Scenario;
