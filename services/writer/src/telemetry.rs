//! The writer's own metrics (labels from closed sets only).

/// Rows handled, by `result`: `inserted` or `duplicate` (an earlier write won).
pub const ROWS: &str = "fleet_writer_rows_total";
/// Batches, by `outcome`: `committed` or `failed`.
pub const BATCHES: &str = "fleet_writer_batches_total";
/// Time from BEGIN to COMMIT of a batch.
pub const COMMIT_DURATION: &str = "fleet_writer_commit_duration_seconds";
/// 1 while the last database ping succeeded, else 0.
pub const DATABASE_UP: &str = "fleet_database_up";

/// Registers help texts (call after the recorder is installed).
pub fn describe() {
    metrics::describe_counter!(
        ROWS,
        "Result rows handled by the writer, by result (inserted, duplicate)."
    );
    metrics::describe_counter!(BATCHES, "Write batches, by outcome (committed, failed).");
    metrics::describe_histogram!(
        COMMIT_DURATION,
        metrics::Unit::Seconds,
        "Time from BEGIN to COMMIT of a write batch."
    );
    metrics::describe_gauge!(
        DATABASE_UP,
        "1 while the writer's last database ping succeeded."
    );
}
