//! Control messages: cancellations, and the sync marker that ends a RabbitMQ re-broadcast.
//!
//! A cancellation is `{"v":1,"pipeline_id":"…","pipeline_created_at":"…"}`. The creation time
//! scopes it to one life of the pipeline id: a job whose envelope carries another
//! `pipeline_created_at` (a later pipeline that reuses the id, e.g. after the coordinator's
//! database was replaced) is not cancelled by it. Older bodies without the time (and the bare
//! pipeline id) are still read; they match the id alone, as before.
//!
//! On RabbitMQ nothing is kept for late subscribers, so the coordinator re-broadcasts the active
//! cancellations every tick and then sends the sync marker `{"v":1,"sync":true}`: a worker that
//! has seen one marker has seen every cancellation active when it subscribed.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::JobEnvelope;

/// How long a cancellation is kept after it was issued: the NATS control stream's `max_age`, and
/// how long a worker remembers one it no longer hears. A cancelled pipeline is finalized at once,
/// but its jobs may still wait in queues and retry ladders; a week covers a stage left without
/// workers over a weekend. Past it, a leftover job of a cancelled pipeline runs and its result is
/// recorded `late` (it changes nothing).
pub const RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// A decoded cancellation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cancellation {
    /// The cancelled pipeline.
    pub pipeline_id: String,
    /// When that pipeline was created (absent in bodies of older coordinators).
    pub pipeline_created_at: Option<DateTime<Utc>>,
}

impl Cancellation {
    /// True when this cancellation is about the pipeline life `job` belongs to: same id, and the
    /// same creation time when both sides carry one.
    pub fn applies_to(&self, pipeline_id: &str, created_at: Option<DateTime<Utc>>) -> bool {
        self.pipeline_id == pipeline_id
            && match (self.pipeline_created_at, created_at) {
                (Some(a), Some(b)) => a.timestamp_millis() == b.timestamp_millis(),
                _ => true,
            }
    }

    /// True when this cancellation is about `job`'s pipeline life.
    pub fn applies_to_job(&self, job: &JobEnvelope) -> bool {
        self.applies_to(&job.pipeline_id, job.pipeline_created_at)
    }
}

/// The body of a cancellation of `pipeline_id`, created at `created_at`.
pub fn cancellation(pipeline_id: &str, created_at: Option<DateTime<Utc>>) -> Vec<u8> {
    let mut v = serde_json::json!({"v": crate::PROTOCOL_VERSION, "pipeline_id": pipeline_id});
    if let Some(at) = created_at {
        v["pipeline_created_at"] = serde_json::json!(at);
    }
    v.to_string().into_bytes()
}

/// The body of the sync marker that follows each re-broadcast round.
pub fn sync_marker() -> Vec<u8> {
    serde_json::json!({"v": crate::PROTOCOL_VERSION, "sync": true})
        .to_string()
        .into_bytes()
}

/// The cancellation in a control message: the JSON body, or the raw pipeline id (old form).
pub fn parse_cancellation(body: &[u8]) -> Option<Cancellation> {
    #[derive(Deserialize)]
    struct Msg {
        pipeline_id: String,
        #[serde(default)]
        pipeline_created_at: Option<DateTime<Utc>>,
    }
    if let Ok(m) = serde_json::from_slice::<Msg>(body) {
        return Some(Cancellation {
            pipeline_id: m.pipeline_id,
            pipeline_created_at: m.pipeline_created_at,
        });
    }
    let text = std::str::from_utf8(body).ok()?.trim();
    (!text.is_empty() && !text.starts_with('{')).then(|| Cancellation {
        pipeline_id: text.to_owned(),
        pipeline_created_at: None,
    })
}

/// The pipeline id in a control message: `{"pipeline_id": …}` or the raw text.
pub fn cancelled_pipeline(body: &[u8]) -> Option<String> {
    parse_cancellation(body).map(|c| c.pipeline_id)
}

/// True for the sync marker.
pub fn is_sync_marker(body: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Msg {
        #[serde(default)]
        sync: bool,
    }
    serde_json::from_slice::<Msg>(body).is_ok_and(|m| m.sync)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip() {
        assert_eq!(
            cancelled_pipeline(&cancellation("p1", None)).as_deref(),
            Some("p1")
        );
        assert_eq!(
            cancelled_pipeline(br#"{"pipeline_id":"p1","v":1}"#).as_deref(),
            Some("p1")
        );
        assert_eq!(cancelled_pipeline(b"p2").as_deref(), Some("p2"));
        assert_eq!(cancelled_pipeline(b"{bad"), None);
        assert_eq!(cancelled_pipeline(&sync_marker()), None);
        assert!(is_sync_marker(&sync_marker()));
        assert!(!is_sync_marker(&cancellation("p1", None)));
        assert!(!is_sync_marker(b"p3"));
    }

    #[test]
    fn a_cancellation_is_scoped_to_one_life_of_the_pipeline_id() {
        let old = DateTime::from_timestamp_millis(1_000).unwrap();
        let new = DateTime::from_timestamp_millis(2_000).unwrap();
        let c = parse_cancellation(&cancellation("p", Some(old))).unwrap();
        assert_eq!(c.pipeline_created_at, Some(old));
        assert!(c.applies_to("p", Some(old)));
        assert!(
            !c.applies_to("p", Some(new)),
            "a reused id is not cancelled"
        );
        assert!(!c.applies_to("q", Some(old)));
        // Jobs of older coordinators carry no time: the id alone decides, as before.
        assert!(c.applies_to("p", None));
        // Bodies of older coordinators carry no time either.
        let legacy = parse_cancellation(br#"{"v":1,"pipeline_id":"p"}"#).unwrap();
        assert!(legacy.applies_to("p", Some(new)));
        assert!(parse_cancellation(b"p").unwrap().applies_to("p", Some(new)));
    }
}
