//! The `write` batch handler: one transaction per batch, a multi-row
//! `INSERT … ON CONFLICT (job_id) DO NOTHING`, results only after commit.
//!
//! A database failure (outage, timeout, lock conflict) fails every job of the batch
//! as retryable, which the runtime records on the `database` pause breaker. A data
//! error (the database refuses one row) is isolated by writing the batch's rows one
//! by one, so only the offending job is dead-lettered.

use std::collections::HashSet;
use std::time::Instant;

use async_trait::async_trait;
use chrono::Utc;
use fleet_runtime::{BatchHandler, JobContext, JobEnvelope, JobError, Output};
use fleet_store::{Store, StoreError};

use crate::schema::{ResultRow, insert_sql};
use crate::telemetry;

/// Writes batches of finished items to `fleet_results`.
#[derive(Debug, Clone)]
pub struct WriteHandler {
    store: Store,
    worker_id: String,
}

impl WriteHandler {
    /// A handler writing through `store`, recording `worker_id` on each row.
    pub fn new(store: Store, worker_id: &str) -> WriteHandler {
        WriteHandler {
            store,
            worker_id: worker_id.to_owned(),
        }
    }

    /// Writes `rows` in one transaction; returns the job ids actually inserted (the
    /// others already had a row: first write wins).
    pub async fn write(&self, rows: &[ResultRow]) -> Result<HashSet<String>, StoreError> {
        if rows.is_empty() {
            return Ok(HashSet::new());
        }
        let started = Instant::now();
        let params: Vec<_> = rows.iter().flat_map(|r| r.values.iter().cloned()).collect();
        let sql = insert_sql(rows.len());
        let mut tx = self.store.begin().await?;
        let inserted = tx.query(&sql, &params).await?;
        tx.commit().await?;
        metrics::histogram!(telemetry::COMMIT_DURATION).record(started.elapsed().as_secs_f64());
        inserted
            .iter()
            .map(|r| r.get::<String>(0))
            .collect::<Result<HashSet<_>, _>>()
    }

    /// Builds the rows and writes them: one result per job, in order.
    pub async fn write_jobs(
        &self,
        jobs: &[JobEnvelope],
        attempt: u32,
    ) -> Vec<Result<Output, JobError>> {
        let now = Utc::now();
        let rows: Vec<ResultRow> = jobs
            .iter()
            .map(|j| ResultRow::from_job(j, attempt, &self.worker_id, now))
            .collect();
        match self.write(&rows).await {
            Ok(inserted) => {
                metrics::counter!(telemetry::BATCHES, "outcome" => "committed").increment(1);
                jobs.iter()
                    .zip(&rows)
                    .map(|(job, row)| Ok(self.done(job, inserted.contains(&row.job_id))))
                    .collect()
            }
            Err(e) if e.is_transient() || jobs.len() == 1 => {
                metrics::counter!(telemetry::BATCHES, "outcome" => "failed").increment(1);
                tracing::warn!(error = %e, jobs = jobs.len(), "writing a batch failed");
                jobs.iter().map(|_| Err(job_error(&e))).collect()
            }
            Err(e) => {
                metrics::counter!(telemetry::BATCHES, "outcome" => "failed").increment(1);
                tracing::warn!(error = %e, jobs = jobs.len(), "the database refused a batch; writing its rows one by one");
                let mut out = Vec::with_capacity(jobs.len());
                for (job, row) in jobs.iter().zip(&rows) {
                    out.push(match self.write(std::slice::from_ref(row)).await {
                        Ok(inserted) => Ok(self.done(job, inserted.contains(&row.job_id))),
                        Err(e) => {
                            tracing::warn!(job_id = %job.job_id, pipeline_id = %job.pipeline_id, error = %e, "writing a row failed");
                            Err(job_error(&e))
                        }
                    });
                }
                out
            }
        }
    }

    fn done(&self, job: &JobEnvelope, inserted: bool) -> Output {
        let result = if inserted { "inserted" } else { "duplicate" };
        metrics::counter!(telemetry::ROWS, "result" => result).increment(1);
        tracing::debug!(job_id = %job.job_id, pipeline_id = %job.pipeline_id, item_id = %job.item_id, result, "written");
        Output::new(job.payload.clone())
    }
}

/// Transient database trouble is retryable (and blames the dependency); a refused row is
/// permanent (retrying the same data cannot succeed).
fn job_error(e: &StoreError) -> JobError {
    if e.is_transient() {
        JobError::Retryable(format!("database: {e}"))
    } else {
        JobError::Permanent(format!("database refused the result: {e}"))
    }
}

#[async_trait]
impl BatchHandler for WriteHandler {
    async fn handle_batch(
        &self,
        jobs: &[JobEnvelope],
        ctx: &JobContext,
    ) -> Vec<Result<Output, JobError>> {
        // The runtime gives one context per batch: its attempt is the first job's.
        self.write_jobs(jobs, ctx.attempt()).await
    }
}
