//! The coordinator's tables (component `coordinator` in fleet-store's
//! migration table). Portable SQL except the serial ids of the event log, the
//! outbox and the dead-letter archive, chosen by backend.
//!
//! Times are `BIGINT` unix milliseconds; JSON is `JSONB` (text on SQLite).
//! Tables are prefixed `coord_` so they can share a database with the writer.

use fleet_store::{Migration, StoreKind};

macro_rules! v1 {
    ($serial:literal) => {
        concat!(
            "CREATE TABLE coord_pipelines (
                pipeline_id TEXT PRIMARY KEY,
                state TEXT NOT NULL,
                body_hash TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                deadline_at BIGINT,
                finalized_at BIGINT,
                reason TEXT,
                replay_of TEXT,
                stages JSONB NOT NULL,
                cancel_requested_at BIGINT
            );
            CREATE INDEX coord_pipelines_state ON coord_pipelines (state, created_at);
            CREATE INDEX coord_pipelines_created ON coord_pipelines (created_at, pipeline_id);
            CREATE TABLE coord_items (
                pipeline_id TEXT NOT NULL,
                item_id TEXT NOT NULL,
                state TEXT NOT NULL,
                outcome TEXT,
                failed_stage TEXT,
                reason TEXT,
                route JSONB NOT NULL,
                updated_at BIGINT NOT NULL,
                PRIMARY KEY (pipeline_id, item_id)
            );
            CREATE TABLE coord_jobs (
                job_id TEXT PRIMARY KEY,
                pipeline_id TEXT NOT NULL,
                item_id TEXT NOT NULL,
                stage TEXT NOT NULL,
                required BOOLEAN NOT NULL,
                state TEXT NOT NULL,
                attempt BIGINT NOT NULL,
                seq BIGINT NOT NULL,
                worker_id TEXT,
                queued_at BIGINT NOT NULL,
                last_event_at BIGINT,
                last_progress_at BIGINT,
                timeout_ms BIGINT NOT NULL,
                max_attempts BIGINT NOT NULL,
                dl_reason TEXT,
                error TEXT,
                superseded BOOLEAN NOT NULL DEFAULT FALSE,
                late BOOLEAN NOT NULL DEFAULT FALSE,
                stall_kind TEXT,
                stall_since BIGINT
            );
            CREATE INDEX coord_jobs_item ON coord_jobs (pipeline_id, item_id);
            CREATE INDEX coord_jobs_state ON coord_jobs (state, stage);
            CREATE TABLE coord_events (
                id ", $serial, ",
                pipeline_id TEXT NOT NULL,
                at BIGINT NOT NULL,
                body JSONB NOT NULL
            );
            CREATE INDEX coord_events_pipeline ON coord_events (pipeline_id, id);
            CREATE TABLE coord_workers (
                worker_id TEXT PRIMARY KEY,
                stage TEXT NOT NULL,
                last_heartbeat_at BIGINT NOT NULL,
                slots BIGINT NOT NULL,
                in_flight BIGINT NOT NULL
            );
            CREATE INDEX coord_workers_stage ON coord_workers (stage, last_heartbeat_at);
            CREATE TABLE coord_worker_jobs (
                worker_id TEXT NOT NULL,
                job_id TEXT NOT NULL,
                attempt BIGINT NOT NULL,
                started_at BIGINT NOT NULL,
                last_progress_at BIGINT NOT NULL,
                PRIMARY KEY (worker_id, job_id)
            );
            CREATE INDEX coord_worker_jobs_job ON coord_worker_jobs (job_id);
            CREATE TABLE coord_outbox (
                id ", $serial, ",
                dest_kind TEXT NOT NULL,
                dest_key TEXT NOT NULL,
                msg_id TEXT,
                body TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                published_at BIGINT
            );
            CREATE INDEX coord_outbox_pending ON coord_outbox (id) WHERE published_at IS NULL;
            CREATE TABLE coord_dead_letters (
                id ", $serial, ",
                dedup_key TEXT NOT NULL UNIQUE,
                job_id TEXT,
                pipeline_id TEXT,
                item_id TEXT,
                stage TEXT NOT NULL,
                reason TEXT NOT NULL,
                last_error_kind TEXT,
                last_error TEXT NOT NULL,
                attempts BIGINT NOT NULL,
                worker_id TEXT NOT NULL,
                at BIGINT NOT NULL,
                body TEXT NOT NULL,
                body_encoding TEXT NOT NULL,
                headers JSONB NOT NULL,
                replayed_in TEXT,
                archived_at BIGINT NOT NULL
            );
            CREATE INDEX coord_dead_letters_pipeline ON coord_dead_letters (pipeline_id, stage)"
        )
    };
}

/// v2: per-row publish attempts, so a row that cannot be published backs off on its own
/// (healthy rows pass it: the relay claims only rows due at `next_attempt_at`) and is
/// abandoned (`failed_at`) after a bound instead of blocking the relay's head forever.
const V2_OUTBOX_ATTEMPTS: &str =
    "ALTER TABLE coord_outbox ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE coord_outbox ADD COLUMN next_attempt_at BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE coord_outbox ADD COLUMN last_error TEXT;
    ALTER TABLE coord_outbox ADD COLUMN failed_at BIGINT;
    CREATE INDEX coord_outbox_due ON coord_outbox (next_attempt_at, id) \
        WHERE published_at IS NULL AND failed_at IS NULL";

/// v3: open pipelines (items appended in batches, then sealed): `sealed_at` is NULL
/// while the item list is open, `seal_by` is when an unsealed pipeline times out,
/// `route` is what appended items take; `item_hash` makes appends idempotent
/// per item. Pipelines from before were submitted whole, so they count as sealed.
const V3_OPEN_PIPELINES: &str = "ALTER TABLE coord_pipelines ADD COLUMN sealed_at BIGINT;
    ALTER TABLE coord_pipelines ADD COLUMN seal_by BIGINT;
    ALTER TABLE coord_pipelines ADD COLUMN route JSONB;
    UPDATE coord_pipelines SET sealed_at = created_at;
    ALTER TABLE coord_items ADD COLUMN item_hash TEXT";

/// v4: degradation notes: a job's note from its `succeeded` event (JSON), an item's in words.
const V4_DEGRADED: &str = "ALTER TABLE coord_jobs ADD COLUMN degraded TEXT;
    ALTER TABLE coord_items ADD COLUMN degraded TEXT";

/// Every migration in order; only v1's id column differs between the backends.
macro_rules! migrations {
    ($id:literal) => {
        &[
            Migration {
                version: 1,
                name: "coordinator tables",
                sql: v1!($id),
            },
            Migration {
                version: 2,
                name: "outbox attempts",
                sql: V2_OUTBOX_ATTEMPTS,
            },
            Migration {
                version: 3,
                name: "open pipelines",
                sql: V3_OPEN_PIPELINES,
            },
            Migration {
                version: 4,
                name: "degradation notes",
                sql: V4_DEGRADED,
            },
        ]
    };
}

const PG: &[Migration] = migrations!("BIGSERIAL PRIMARY KEY");

const SQLITE: &[Migration] = migrations!("INTEGER PRIMARY KEY AUTOINCREMENT");

/// The migrations for `kind`.
pub fn migrations(kind: StoreKind) -> &'static [Migration] {
    match kind {
        StoreKind::Postgres => PG,
        StoreKind::Sqlite => SQLITE,
    }
}

/// The component name under which the migrations are recorded.
pub const COMPONENT: &str = "coordinator";
