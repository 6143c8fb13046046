//! The dead-letter archive: consumes every stage's DLQ (and `submit`'s),
//! stores each dead letter with its headers and body, and marks its job
//! `dead_lettered` through the state machine, so a job dead-lettered by the
//! broker's own backstop (RabbitMQ `x-delivery-limit`, no fleet headers) still
//! ends its item: missing headers mean reason `poison`.
//!
//! On NATS a job that reaches `max_deliver` is not moved by the server: the
//! fleet-nats `DeadLetters` subscription turns the stage's `MAX_DELIVERIES`
//! advisories into DLQ copies (headers `fleet-reason: poison`, `x-backstop`)
//! before each pull, so they arrive here like any other dead letter. The
//! runtime normally dead-letters first (`max_deliver` exceeds `max_attempts`);
//! the backstop catches jobs whose every delivery died without an outcome.

use std::sync::Arc;

use chrono::Utc;
use fleet_core::{Delivery, Settlement, Source};
use fleet_protocol::{DeadLetterInfo, DeadLetterReason, decode_job};
use fleet_runtime::telemetry::Health;
use fleet_store::{StoreError, params};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::consumer::consume;
use crate::ingest::{JobUpdate, apply_update};
use crate::metrics as m;
use crate::model::{JobState, now_ms, to_millis};

/// What the archive stores about one dead letter.
#[derive(Debug, Clone, PartialEq)]
pub struct Archived {
    /// Headers as read (or defaulted for a broker backstop).
    pub info: DeadLetterInfo,
    /// Job id, pipeline id and item id, when the body is a job.
    pub job: Option<(String, String, String)>,
    /// Body as stored: UTF-8 text, or hex.
    pub body: (String, &'static str),
    /// Identity of this dead letter, for idempotent archiving of redeliveries.
    pub dedup_key: String,
}

/// Reads a dead letter of `stage` (pure).
pub fn read(stage: &str, d_body: &[u8], headers: &[(String, String)], attempt: u32) -> Archived {
    let get = |k: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.as_str())
    };
    let job = decode_job(d_body, usize::MAX).ok();
    let info = DeadLetterInfo::from_headers(get).unwrap_or_else(|| DeadLetterInfo {
        reason: DeadLetterReason::Poison,
        last_error_kind: None,
        last_error: "dead-lettered by the broker's delivery limit (no fleet headers)".into(),
        attempts: get("x-delivery-count")
            .and_then(|c| c.parse().ok())
            .unwrap_or(attempt),
        stage: stage.to_owned(),
        worker_id: String::new(),
        at: Utc::now(),
        job_id: job.as_ref().map(|j| j.job_id.clone()),
    });
    let body = match std::str::from_utf8(d_body) {
        Ok(s) => (s.to_owned(), "utf8"),
        Err(_) => (hex::encode(d_body), "hex"),
    };
    let mut h = Sha256::new();
    h.update(stage.as_bytes());
    h.update([0]);
    let mut sorted: Vec<&(String, String)> = headers.iter().collect();
    sorted.sort();
    for (k, v) in sorted {
        h.update(k.as_bytes());
        h.update([1]);
        h.update(v.as_bytes());
        h.update([2]);
    }
    h.update(d_body);
    Archived {
        info,
        job: job.map(|j| (j.job_id, j.pipeline_id, j.item_id)),
        body,
        dedup_key: hex::encode(h.finalize()),
    }
}

async fn archive(app: &App, stage: &str, d: &Delivery) -> Result<bool, StoreError> {
    let a = read(stage, &d.body, &d.headers, d.attempt);
    let now = now_ms();
    let headers: serde_json::Map<String, serde_json::Value> = d
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().into()))
        .collect();
    let (job_id, pipeline_id, item_id) = match &a.job {
        Some((j, p, i)) => (Some(j.clone()), Some(p.clone()), Some(i.clone())),
        None => (a.info.job_id.clone(), None, None),
    };
    let mut tx = app.store.begin().await?;
    let inserted = tx
        .execute(
            "INSERT INTO coord_dead_letters (dedup_key, job_id, pipeline_id, item_id, stage, reason, \
             last_error_kind, last_error, attempts, worker_id, at, body, body_encoding, headers, archived_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
             ON CONFLICT (dedup_key) DO NOTHING",
            params![
                a.dedup_key.as_str(),
                job_id.clone(),
                pipeline_id.clone(),
                item_id,
                stage,
                a.info.reason.as_str(),
                a.info.last_error_kind.map(|k| k.as_str()),
                a.info.last_error.as_str(),
                a.info.attempts,
                a.info.worker_id.as_str(),
                to_millis(a.info.at),
                a.body.0.as_str(),
                a.body.1,
                serde_json::Value::Object(headers).to_string(),
                now
            ],
        )
        .await?;
    if let (Some(job_id), Some(pipeline_id)) = (job_id, pipeline_id) {
        let update = JobUpdate {
            log: serde_json::json!({
                "type": "job", "event": "dead_lettered", "source": "archive",
                "job_id": job_id, "pipeline_id": pipeline_id, "stage": stage,
                "reason": a.info.reason, "error": a.info.last_error, "attempt": a.info.attempts,
            }),
            job_id,
            pipeline_id,
            stage: stage.to_owned(),
            attempt: a.info.attempts,
            seq: u32::MAX,
            worker_id: (!a.info.worker_id.is_empty()).then(|| a.info.worker_id.clone()),
            at: to_millis(a.info.at),
            target: JobState::DeadLettered,
            dl_reason: Some(a.info.reason.as_str().to_owned()),
            error: Some(a.info.last_error.clone()),
            degraded: None,
        };
        apply_update(&mut tx, &update, &app.ingest, now).await?;
    }
    tx.commit().await?;
    if inserted > 0 {
        metrics::counter!(m::DEAD_LETTERS, "stage" => stage.to_owned(), "reason" => a.info.reason.as_str())
            .increment(1);
    }
    Ok(inserted > 0)
}

/// Archives one stage's dead letters until `shutdown`.
pub async fn run(
    app: App,
    stage: String,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let a = app.clone();
    let source = Source::DeadLetters {
        stage: stage.clone(),
    };
    consume(&app, health, source, "dlq", 32, shutdown, move |ds| {
        let a = a.clone();
        let stage = stage.clone();
        async move {
            let mut settled = Vec::with_capacity(ds.len());
            for d in ds {
                let s = match archive(&a, &stage, &d).await {
                    Ok(_) => Settlement::Ack,
                    Err(e) => {
                        tracing::warn!(error = %e, stage, attempt = d.attempt, "archiving a dead letter failed; retrying after a backoff");
                        let max = a.config.control_max_attempts;
                        crate::park::retry_or_park(d.attempt, &e.to_string(), max)
                    }
                };
                settled.push((d, s));
            }
            settled
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backstop_dead_letter_without_headers_is_poison() {
        let job = fleet_protocol::JobEnvelope::new("p", "i", "analyze", serde_json::json!({}));
        let a = read(
            "analyze",
            &job.to_bytes(),
            &[("x-delivery-count".into(), "7".into())],
            1,
        );
        assert_eq!(a.info.reason, DeadLetterReason::Poison);
        assert_eq!(a.info.attempts, 7);
        assert_eq!(a.job.unwrap().0, "p/i/analyze");
        assert_eq!(a.body.1, "utf8");
    }

    #[test]
    fn headers_are_read_and_binary_bodies_kept() {
        let info = DeadLetterInfo {
            reason: DeadLetterReason::AttemptsExhausted,
            last_error_kind: None,
            last_error: "boom".into(),
            attempts: 3,
            stage: "write".into(),
            worker_id: "w".into(),
            at: Utc::now(),
            job_id: None,
        };
        let a = read("write", &[0xff, 0x00], &info.to_headers(), 1);
        assert_eq!(a.info.reason, DeadLetterReason::AttemptsExhausted);
        assert_eq!(a.body, ("ff00".to_owned(), "hex"));
        assert!(a.job.is_none());
        let b = read("write", &[0xff, 0x00], &info.to_headers(), 2);
        assert_eq!(
            a.dedup_key, b.dedup_key,
            "a redelivery is the same dead letter"
        );
    }
}
