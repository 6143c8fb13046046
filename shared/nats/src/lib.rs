//! fleet's NATS JetStream backend: the only crate that depends on async-nats.
//!
//! [`connect`] gives a [`NatsBroker`], which implements [`fleet_core::Broker`] with the
//! semantics of DESIGN §3: file-backed streams (`<P>_JOBS` with WorkQueue retention), one durable
//! pull consumer per stage with explicit acks, pulls of exactly as many messages as the worker
//! has free slots, delayed retries parked in `<P>_RETRY` outside the jobs consumer's pending
//! window and moved back when due (see [`retry`]), confirmed `+WPI` (Progress) to extend a
//! running job's lease, and dead-lettering as a confirmed copy to `<p>.dlq.<stage>` followed by
//! `Term`. The attempt number is the server's delivery count, never reported lower than one
//! more than a count this subscription saw before (older servers can count backwards). A consumer found with another
//! config than declared is logged, updated where the server allows, and counted
//! ([`NatsBroker::config_drift_count`]); it never stops start-up. See [`topology`] for the
//! streams and consumers, and [`subscription`] for how pulls behave.
//!
//! Where NATS differs from the other backends:
//!
//! * `SubscribeOptions::prefetch` is not used: a `fetch(max, wait)` never has more than `max`
//!   requested or buffered (see `pull`), so the caller's free slots are its prefetch.
//! * `depth` is the consumer's `num_pending` (not yet delivered). A job waiting for a delayed
//!   retry is in `<P>_RETRY`, so it is not in `depth` but in `retrying` (the memory broker counts
//!   delayed retries in both). For `Source::Control` it is the number of kept cancellations.
//! * A confirmed settlement proves the server received it, not that the delivery still held the
//!   message: `extend` cannot see a lease that already expired, and an `ack` from an expired
//!   delivery still removes the redelivered message (the memory broker refuses both).
//! * A job that reaches `max_deliver` stays stored in `<P>_JOBS` (WorkQueue retention removes
//!   only acked or termed messages) and the server publishes a `MAX_DELIVERIES` advisory, which
//!   `<P>_BACKSTOP` keeps. A `Source::DeadLetters` subscription turns its stage's advisories into
//!   dead letters (`poison`, copied to the DLQ, deleted from `<P>_JOBS`) before each pull: see
//!   [`backstop`]. The other backends dead-letter such jobs by themselves.
//! * Header values cannot carry CR/LF on NATS: they are replaced by spaces.

mod ack_info;
mod acker;
mod attempts;
pub mod backstop;
mod broker;
mod conn;
mod connect;
mod copies;
mod pull;
pub mod retry;
mod shared;
pub mod subscription;
pub mod topology;
mod wire;

pub use broker::NatsBroker;
pub use conn::{BROKER_DISCONNECTS, NatsOptions};
pub use connect::connect;
