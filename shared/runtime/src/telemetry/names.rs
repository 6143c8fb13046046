//! Every metric a worker exports, with its description (DESIGN §7). Labels come
//! from closed sets; never a job id.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Counter `{stage}`: deliveries received.
pub const JOBS_RECEIVED: &str = "fleet_jobs_received_total";
/// Counter `{stage,outcome}`: jobs finished by outcome.
pub const JOBS_FINISHED: &str = "fleet_jobs_finished_total";
/// Histogram `{stage,outcome}`: handler wall time.
pub const JOB_DURATION: &str = "fleet_job_duration_seconds";
/// Gauge `{stage}`: jobs holding a slot now.
pub const JOBS_IN_FLIGHT: &str = "fleet_jobs_in_flight";
/// Gauge `{stage}`: deliveries received and not settled yet (acked, retried, dead-lettered,
/// released) or given up.
pub const DELIVERIES_UNSETTLED: &str = "fleet_deliveries_unsettled";
/// Counter `{stage}`: attempts cut at their deadline.
pub const DEADLINE_EXCEEDED: &str = "fleet_attempt_deadline_exceeded_total";
/// Counter `{stage}`: retries whose delay was stretched because the budget was exceeded.
pub const RETRY_BUDGET_EXHAUSTED: &str = "fleet_retry_budget_exhausted_total";
/// Gauge `{dependency}`: 0 closed, 1 half-open, 2 open.
pub const CIRCUIT_STATE: &str = "fleet_circuit_state";
/// Gauge `{stage}`: 1 while intake is paused because a needed dependency is unusable.
pub const INTAKE_PAUSED: &str = "fleet_intake_paused";
/// Gauge: 1 while the broker connection is up.
pub const BROKER_CONNECTED: &str = "fleet_broker_connected";
/// Counter: successful reconnects.
pub const BROKER_RECONNECTS: &str = "fleet_broker_reconnects_total";
/// Counter: declared broker objects found with another config (NATS consumer drift).
pub const BROKER_CONFIG_DRIFT: &str = "fleet_broker_config_drift_total";
/// Counter `{kind}`: non-terminal events dropped under pressure (started, progress, retrying, heartbeat, unconfirmed).
pub const EVENTS_DROPPED: &str = "fleet_events_dropped_total";
/// Gauge `{stage}`: unix time of the last progress report or job start.
pub const LAST_PROGRESS: &str = "fleet_last_progress_timestamp_seconds";
/// Gauge `{stage}`: blocking work still running past its deadline.
pub const RUNAWAY_TASKS: &str = "fleet_runaway_tasks";
/// Counter `{stage}`: event batches published.
pub const EVENT_BATCHES: &str = "fleet_event_batches_total";
/// Counter `{stage}`: handler panics.
pub const HANDLER_PANICS: &str = "fleet_handler_panics_total";
/// Counter `{stage}`: deliveries whose lease or channel was lost while running.
pub const LEASES_LOST: &str = "fleet_leases_lost_total";
/// Counter `{source}`: failed subscribes or fetches of a consumer (each is retried after redeclaring).
pub const SUBSCRIBE_FAILURES: &str = "fleet_subscribe_failures_total";
/// Gauge: tokio tasks alive in the process (sampled every second and at each scrape).
pub const TOKIO_ALIVE_TASKS: &str = "fleet_tokio_alive_tasks";

/// The closed set of `outcome` label values.
pub const OUTCOMES: [&str; 5] = [
    "succeeded",
    "retried",
    "dead_lettered",
    "expired",
    "cancelled",
];

/// Registers HELP text for every metric (promtool flags metrics without it).
pub fn describe() {
    describe_counter!(
        JOBS_RECEIVED,
        "Deliveries received from the broker, by stage."
    );
    describe_counter!(JOBS_FINISHED, "Jobs finished, by stage and outcome.");
    describe_histogram!(
        JOB_DURATION,
        Unit::Seconds,
        "Handler wall time, by stage and outcome."
    );
    describe_gauge!(JOBS_IN_FLIGHT, "Jobs holding a concurrency slot, by stage.");
    describe_gauge!(
        DELIVERIES_UNSETTLED,
        "Deliveries received and not settled yet, by stage."
    );
    describe_counter!(
        DEADLINE_EXCEEDED,
        "Attempts cut at their deadline, by stage."
    );
    describe_counter!(
        RETRY_BUDGET_EXHAUSTED,
        "Retries delayed to the maximum because the retry budget was exceeded."
    );
    describe_gauge!(
        CIRCUIT_STATE,
        "Circuit breaker state: 0 closed, 1 half-open, 2 open."
    );
    describe_gauge!(
        INTAKE_PAUSED,
        "1 while the stage pulls no jobs because a dependency it needs is unusable (breaker open or probing, no fallback left)."
    );
    describe_gauge!(BROKER_CONNECTED, "1 while the broker connection is up.");
    describe_gauge!(
        TOKIO_ALIVE_TASKS,
        "Tokio tasks alive in this process (spawned and not yet finished): a count that only grows is a task leak."
    );
    describe_counter!(BROKER_RECONNECTS, "Successful broker reconnects.");
    describe_counter!(
        BROKER_CONFIG_DRIFT,
        "Declared broker objects found with another config than declared (NATS)."
    );
    describe_counter!(
        EVENTS_DROPPED,
        "Progress events dropped under pressure, by kind."
    );
    describe_gauge!(
        LAST_PROGRESS,
        Unit::Seconds,
        "Unix time of the last job start or progress report, by stage."
    );
    describe_gauge!(
        RUNAWAY_TASKS,
        "Blocking work still running past its deadline."
    );
    describe_counter!(EVENT_BATCHES, "Event batches published and confirmed.");
    describe_counter!(
        HANDLER_PANICS,
        "Handler panics (each becomes a retry or a dead letter)."
    );
    describe_counter!(
        LEASES_LOST,
        "Deliveries whose lease or channel was lost while running."
    );
    describe_counter!(
        SUBSCRIBE_FAILURES,
        "Failed subscribes or fetches of a consumer, by source; each is retried after redeclaring."
    );
}

/// Histogram buckets for job durations, in seconds.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0, 600.0,
];
