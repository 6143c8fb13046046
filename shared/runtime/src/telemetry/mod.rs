//! Telemetry: the metric catalog, the Prometheus recorder, the admin HTTP server
//! (`/metrics`, `/healthz`, `/readyz`), the watchdog and log set-up.

pub mod admin;
pub mod logging;
pub mod names;
pub mod stage;

pub use admin::{AdminServer, Health, Resubscribing};
