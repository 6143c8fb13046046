//! The job envelope: one unit of work for one stage, immutable once published.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::PROTOCOL_VERSION;

/// One stage still ahead of an item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RouteStep {
    /// Stage name, e.g. `summarize`.
    #[schemars(regex(pattern = "^[A-Za-z0-9_-]{1,200}$"))]
    pub stage: String,
    /// When false, a failure of this stage passes the item on with a `skipped` marker.
    #[serde(default = "default_true")]
    pub required: bool,
}

/// Per-stage limits fixed at submission, after defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StageLimits {
    /// Per-attempt timeout in milliseconds.
    pub timeout_ms: u64,
    /// Attempts allowed.
    pub max_attempts: u32,
}

fn default_true() -> bool {
    true
}

/// A job for one stage of one item of one pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobEnvelope {
    /// Wire format major version (`1`).
    #[schemars(extend("enum" = [1]))]
    pub v: u32,
    /// Deterministic id `{pipeline_id}/{item_id}/{stage}`; also the publish de-duplication id.
    pub job_id: String,
    /// Pipeline this job belongs to.
    pub pipeline_id: String,
    /// Item within the pipeline.
    pub item_id: String,
    /// Stage that must run this job.
    pub stage: String,
    /// Stages still ahead after this one, in order.
    #[serde(default)]
    pub route: Vec<RouteStep>,
    /// Whether this stage is required: when false, a dead-lettered job still passes the
    /// item on to the next stage with a `skipped_stages` marker in the payload.
    #[serde(default = "default_true")]
    pub required: bool,
    /// Attempts allowed (clamped to the service maximum).
    pub max_attempts: u32,
    /// Per-attempt timeout in milliseconds (clamped to the service maximum).
    pub timeout_ms: u64,
    /// Absolute pipeline deadline; attempts are cut here and later jobs are acked `expired`.
    #[serde(default)]
    pub deadline_at: Option<DateTime<Utc>>,
    /// Limits of the later stages by stage name, so each next job gets its own (a stage not
    /// listed inherits this job's `timeout_ms` and `max_attempts`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stage_limits: BTreeMap<String, StageLimits>,
    /// When the job was created.
    pub created_at: DateTime<Utc>,
    /// When the pipeline was created: with `pipeline_id` it names one life of the pipeline, so a
    /// cancellation of an earlier pipeline with the same id does not hit this job (absent in
    /// envelopes of older coordinators; then the id alone matches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_created_at: Option<DateTime<Utc>>,
    /// Stage input: free-form JSON.
    #[serde(default)]
    pub payload: serde_json::Value,
}

impl JobEnvelope {
    /// Builds a version-1 envelope with a deterministic job id.
    pub fn new(
        pipeline_id: &str,
        item_id: &str,
        stage: &str,
        payload: serde_json::Value,
    ) -> JobEnvelope {
        JobEnvelope {
            v: PROTOCOL_VERSION,
            job_id: crate::job_id(pipeline_id, item_id, stage),
            pipeline_id: pipeline_id.to_owned(),
            item_id: item_id.to_owned(),
            stage: stage.to_owned(),
            route: Vec::new(),
            required: true,
            max_attempts: 3,
            timeout_ms: 30_000,
            deadline_at: None,
            stage_limits: BTreeMap::new(),
            created_at: Utc::now(),
            pipeline_created_at: None,
            payload,
        }
    }

    /// The next stage's job after this optional stage failed: this job's payload with
    /// `{stage, reason, error}` appended to its `skipped_stages` list.
    pub fn skip_forward(&self, reason: &str, error: &str) -> Option<JobEnvelope> {
        let mut payload = match &self.payload {
            serde_json::Value::Object(m) => m.clone(),
            other => {
                let mut m = serde_json::Map::new();
                m.insert("input".into(), other.clone());
                m
            }
        };
        let marker = serde_json::json!({"stage": self.stage, "reason": reason, "error": error});
        match payload
            .get_mut("skipped_stages")
            .and_then(serde_json::Value::as_array_mut)
        {
            Some(list) => list.push(marker),
            None => {
                payload.insert("skipped_stages".into(), serde_json::json!([marker]));
            }
        }
        self.next_job(serde_json::Value::Object(payload))
    }

    /// Serializes the envelope to its JSON wire form.
    pub fn to_bytes(&self) -> Vec<u8> {
        // A struct of strings, numbers and a serde_json::Value cannot fail to serialize.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The job for the next stage of the route, carrying `payload`, or `None` at the end.
    pub fn next_job(&self, payload: serde_json::Value) -> Option<JobEnvelope> {
        let (next, rest) = self.route.split_first()?;
        let mut job = JobEnvelope::new(&self.pipeline_id, &self.item_id, &next.stage, payload);
        job.route = rest.to_vec();
        job.required = next.required;
        let limits = self.stage_limits.get(&next.stage).copied();
        job.max_attempts = limits.map_or(self.max_attempts, |l| l.max_attempts);
        job.timeout_ms = limits.map_or(self.timeout_ms, |l| l.timeout_ms);
        job.deadline_at = self.deadline_at;
        job.pipeline_created_at = self.pipeline_created_at;
        job.stage_limits.clone_from(&self.stage_limits);
        Some(job)
    }
}

/// Why a body could not become a job.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The body is bigger than the configured maximum.
    #[error("message of {size} bytes exceeds the maximum of {max} bytes")]
    Oversize {
        /// Body size.
        size: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The body is not a valid envelope.
    #[error("malformed job envelope: {0}")]
    Malformed(String),
    /// The envelope's major version is not one this build reads.
    #[error("unsupported wire version {0} (this build reads version {PROTOCOL_VERSION})")]
    UnsupportedVersion(u64),
}

#[derive(Deserialize)]
struct VersionProbe {
    v: Option<serde_json::Value>,
}

/// Decodes a job body: size check first, then the version, then the fields.
pub fn decode_job(body: &[u8], max_bytes: usize) -> Result<JobEnvelope, DecodeError> {
    if body.len() > max_bytes {
        return Err(DecodeError::Oversize {
            size: body.len(),
            max: max_bytes,
        });
    }
    // One parse on the hot path: a current envelope decodes at once; only a body that does not
    // is probed for its version, to tell an unsupported version from a malformed body.
    if let Ok(job) = serde_json::from_slice::<JobEnvelope>(body)
        && job.v == PROTOCOL_VERSION
    {
        return Ok(job);
    }
    let probe: VersionProbe =
        serde_json::from_slice(body).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    match probe.v.as_ref().and_then(serde_json::Value::as_u64) {
        Some(v) if v == u64::from(PROTOCOL_VERSION) => {}
        Some(v) => return Err(DecodeError::UnsupportedVersion(v)),
        None => {
            return Err(DecodeError::Malformed(
                "missing or non-integer field `v`".into(),
            ));
        }
    }
    serde_json::from_slice(body).map_err(|e| DecodeError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_unknown_fields_ignored() {
        let mut job = JobEnvelope::new("p", "i", "analyze", serde_json::json!({"text": "hi"}));
        job.route = vec![RouteStep {
            stage: "summarize".into(),
            required: false,
        }];
        let mut value: serde_json::Value = serde_json::from_slice(&job.to_bytes()).unwrap();
        value["some_future_field"] = serde_json::json!(42);
        let body = serde_json::to_vec(&value).unwrap();
        assert_eq!(decode_job(&body, 1 << 20).unwrap(), job);
    }

    #[test]
    fn version_and_size_checks() {
        assert_eq!(
            decode_job(br#"{"v":2,"job_id":"x"}"#, 1024),
            Err(DecodeError::UnsupportedVersion(2))
        );
        assert!(matches!(
            decode_job(b"not json", 1024),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            decode_job(br#"{"job_id":"x"}"#, 1024),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            decode_job(&[b' '; 10], 5),
            Err(DecodeError::Oversize { size: 10, max: 5 })
        ));
    }

    #[test]
    fn optional_stage_skips_forward_with_marker() {
        let mut job = JobEnvelope::new("p", "i", "summarize", serde_json::json!({"text": "t"}));
        job.required = false;
        job.route = vec![RouteStep {
            stage: "write".into(),
            required: true,
        }];
        let next = job.skip_forward("attempts_exhausted", "boom").unwrap();
        assert_eq!(next.payload["text"], "t");
        assert_eq!(next.payload["skipped_stages"][0]["stage"], "summarize");
        assert!(next.required);
        let mut last = next.clone();
        last.route.clear();
        assert!(last.skip_forward("x", "y").is_none());
    }

    #[test]
    fn next_job_follows_route() {
        let mut job = JobEnvelope::new("p", "i", "analyze", serde_json::Value::Null);
        job.route = vec![
            RouteStep {
                stage: "summarize".into(),
                required: true,
            },
            RouteStep {
                stage: "write".into(),
                required: true,
            },
        ];
        job.pipeline_created_at = DateTime::from_timestamp_millis(1_000);
        let next = job.next_job(serde_json::json!(1)).unwrap();
        assert_eq!(next.job_id, "p/i/summarize");
        assert_eq!(next.pipeline_created_at, job.pipeline_created_at);
        assert_eq!(next.route.len(), 1);
        assert!(
            next.next_job(serde_json::Value::Null)
                .unwrap()
                .next_job(serde_json::Value::Null)
                .is_none()
        );
    }
}
