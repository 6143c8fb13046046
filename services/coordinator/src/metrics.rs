//! The coordinator's metrics (DESIGN §7), with their descriptions. Labels come
//! from closed sets (states, stages, stall kinds, reasons); never an id.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Gauge `{state}`: pipelines by state.
pub const PIPELINES: &str = "fleet_pipelines";
/// Counter `{state}`: pipelines finalized, by final state.
pub const PIPELINES_FINALIZED: &str = "fleet_pipelines_finalized_total";
/// Counter: pipelines accepted (new, not idempotent repeats).
pub const PIPELINES_SUBMITTED: &str = "fleet_pipelines_submitted_total";
/// Gauge `{stage,kind}`: stalled jobs by stall kind.
pub const JOBS_STALLED: &str = "fleet_jobs_stalled";
/// Gauge `{stage}`: workers whose heartbeats are current.
pub const WORKERS_ALIVE: &str = "fleet_workers_alive";
/// Gauge `{stage,health}`: unfinished jobs, split into healthy and stalled.
pub const STAGE_BACKLOG: &str = "fleet_stage_backlog";
/// Counter: sweeper ticks that ran (held the lock and committed).
pub const SWEEPER_TICKS: &str = "fleet_sweeper_ticks_total";
/// Counter `{result}`: sweeper ticks that were skipped (another replica held the lock) or failed.
pub const SWEEPER_SKIPPED: &str = "fleet_sweeper_skipped_total";
/// Histogram: sweeper tick duration.
pub const SWEEP_DURATION: &str = "fleet_sweeper_duration_seconds";
/// Counter `{stage,reason}`: dead letters archived.
pub const DEAD_LETTERS: &str = "fleet_dead_letters_total";
/// Counter `{result}`: event batches ingested (`ok`) or rejected (`invalid`).
pub const EVENT_BATCHES: &str = "fleet_coordinator_event_batches_total";
/// Counter `{result}`: submissions from the submit queue (`created`, `existing`, `rejected`).
pub const QUEUE_SUBMISSIONS: &str = "fleet_coordinator_queue_submissions_total";
/// Gauge: control messages waiting in the parked queue/stream (replay them once fixed).
pub const PARKED_MESSAGES: &str = "fleet_parked_messages";
/// Counter `{source,reason}`: control messages this coordinator parked.
pub const PARKED: &str = "fleet_coordinator_parked_total";
/// Counter `{source}`: control messages retried after a backoff.
pub const CONTROL_RETRIES: &str = "fleet_coordinator_control_retries_total";
/// Counter: late results (after finalization).
pub const LATE_EVENTS: &str = "fleet_late_events_total";
/// Counter `{kind}`: outbox publish attempts that failed, by destination kind.
pub const OUTBOX_PUBLISH_FAILURES: &str = "fleet_outbox_publish_failures_total";
/// Counter `{kind}`: outbox rows given up after their last attempt (a job row fails its item).
pub const OUTBOX_ABANDONED: &str = "fleet_outbox_abandoned_total";
/// Gauge `{state}`: unpublished outbox rows: `pending`, `retrying` (backing off), `abandoned`.
pub const OUTBOX_ROWS: &str = "fleet_outbox_rows";

/// Gauge: event streams (SSE) open now.
pub const API_EVENT_STREAMS: &str = "fleet_api_event_streams";
/// Counter: event streams refused (503) because FLEET_API_MAX_EVENT_STREAMS were open.
pub const API_EVENT_STREAMS_REFUSED: &str = "fleet_api_event_streams_refused_total";
/// Counter: API requests answered 503 because they ran past FLEET_API_REQUEST_TIMEOUT.
pub const API_REQUEST_TIMEOUTS: &str = "fleet_api_request_timeouts_total";

/// Counter `{table}`: rows deleted by retention (FLEET_RETENTION).
pub const RETENTION_DELETED: &str = "fleet_retention_deleted_total";

/// Registers HELP text for every coordinator metric.
pub fn describe() {
    describe_gauge!(PIPELINES, "Pipelines in the store, by state.");
    describe_gauge!(API_EVENT_STREAMS, "Event streams (SSE) open now.");
    describe_counter!(
        RETENTION_DELETED,
        "Rows deleted by retention (finalized pipelines older than FLEET_RETENTION), by table."
    );
    describe_counter!(
        API_EVENT_STREAMS_REFUSED,
        "Event streams refused with 503 because FLEET_API_MAX_EVENT_STREAMS were open."
    );
    describe_counter!(
        API_REQUEST_TIMEOUTS,
        "API requests answered 503 because they ran past FLEET_API_REQUEST_TIMEOUT."
    );
    describe_counter!(PIPELINES_FINALIZED, "Pipelines finalized, by final state.");
    describe_counter!(PIPELINES_SUBMITTED, "New pipelines accepted.");
    describe_gauge!(
        JOBS_STALLED,
        "Unfinished jobs reported stalled, by stage and kind (worker_lost, no_progress, no_consumer, overdue)."
    );
    describe_gauge!(WORKERS_ALIVE, "Workers with a current heartbeat, by stage.");
    describe_gauge!(
        STAGE_BACKLOG,
        "Unfinished jobs by stage, split into healthy and stalled (scale on the healthy part)."
    );
    describe_counter!(SWEEPER_TICKS, "Sweeper ticks that ran to completion.");
    describe_counter!(
        SWEEPER_SKIPPED,
        "Sweeper ticks that did not run: another replica held the lock, or the tick failed."
    );
    describe_histogram!(SWEEP_DURATION, Unit::Seconds, "Sweeper tick duration.");
    describe_counter!(DEAD_LETTERS, "Dead letters archived, by stage and reason.");
    describe_counter!(EVENT_BATCHES, "Event batches ingested, by result.");
    describe_counter!(
        QUEUE_SUBMISSIONS,
        "Submissions read from the submit queue, by result."
    );
    describe_gauge!(
        PARKED_MESSAGES,
        "Control messages (event batches, submissions, dead letters) parked for replay."
    );
    describe_counter!(
        PARKED,
        "Control messages parked by this coordinator, by source and reason."
    );
    describe_counter!(
        CONTROL_RETRIES,
        "Control messages retried after a backoff, by source (events, submit, dlq)."
    );
    describe_counter!(
        OUTBOX_PUBLISH_FAILURES,
        "Outbox publish attempts that failed, by destination kind (job, control, pipeline, ...)."
    );
    describe_counter!(
        OUTBOX_ABANDONED,
        "Outbox rows given up after FLEET_OUTBOX_MAX_ATTEMPTS failed publishes, by destination kind; a job row's item ends failed (publish_failed)."
    );
    describe_gauge!(
        OUTBOX_ROWS,
        "Unpublished outbox rows by state: pending, retrying (backing off after a failed publish), abandoned (given up, or dropped by a cancellation; kept one hour)."
    );
    describe_counter!(
        LATE_EVENTS,
        "Job results that arrived after their pipeline was finalized."
    );
}

/// Registers `fleet_pipelines_finalized_total` at 0 for every final state, so the first
/// finalization of a state is an increase Prometheus sees (a counter series that appears
/// already at 1 has no `increase()`, and `FleetPipelinesFailing` would miss a lone failure).
pub fn register_zero_counters() {
    for state in crate::model::PipelineState::ALL
        .iter()
        .filter(|s| s.is_final())
    {
        metrics::counter!(PIPELINES_FINALIZED, "state" => state.as_str()).increment(0);
    }
}
