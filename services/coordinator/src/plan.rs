//! Turning a [`Submission`] into a validated [`NewPipeline`] (pure): ids,
//! limits, routes, per-stage options, the body hash that makes submission
//! idempotent, and the first-stage job envelopes.

use std::collections::{BTreeMap, HashSet};

use axum::http::StatusCode;
use chrono::Utc;
use fleet_protocol::{JobEnvelope, RouteStep, Submission};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::model::{Millis, to_millis};

/// Longest pipeline, item or stage id.
pub const MAX_ID_BYTES: usize = 200;

pub use fleet_protocol::StageLimits;

/// One item of a new pipeline: its route from its first stage on and the first job's payload.
#[derive(Debug, Clone, PartialEq)]
pub struct NewItem {
    /// Unique within the pipeline.
    pub item_id: String,
    /// The stages it goes through, in order (non-empty).
    pub route: Vec<RouteStep>,
    /// Payload of its first job.
    pub payload: serde_json::Value,
}

/// A validated pipeline ready to be stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NewPipeline {
    /// Its id.
    pub pipeline_id: String,
    /// SHA-256 of the canonical submission: same id + same hash is the same pipeline.
    pub body_hash: String,
    /// Absolute deadline.
    pub deadline_at: Option<Millis>,
    /// The pipeline this one replays.
    pub replay_of: Option<String>,
    /// Limits of every stage any item goes through.
    pub stages: BTreeMap<String, StageLimits>,
    /// The items.
    pub items: Vec<NewItem>,
}

impl NewPipeline {
    /// The first-stage job of `item`, with `route` = the stages after it, in the pipeline
    /// created (stored) at `created_at`: the time scopes cancellations to this pipeline's life.
    pub fn first_job(&self, item: &NewItem, created_at: Millis) -> JobEnvelope {
        let (first, rest) = item
            .route
            .split_first()
            .map_or((None, &[][..]), |(f, r)| (Some(f), r));
        let stage = first.map_or("", |f| f.stage.as_str());
        let mut job = JobEnvelope::new(
            &self.pipeline_id,
            &item.item_id,
            stage,
            item.payload.clone(),
        );
        job.required = first.is_none_or(|f| f.required);
        if let Some(l) = self.stages.get(stage) {
            job.timeout_ms = l.timeout_ms;
            job.max_attempts = l.max_attempts;
        }
        // Each later stage gets its own limits when the job for it is made (next_job).
        job.stage_limits = rest
            .iter()
            .filter_map(|s| Some((s.stage.clone(), *self.stages.get(&s.stage)?)))
            .collect();
        job.route = rest.to_vec();
        job.deadline_at = self.deadline_at.map(crate::model::to_time);
        job.pipeline_created_at = Some(crate::model::to_time(created_at));
        job
    }
}

/// Defaults and limits that apply to every submission.
#[derive(Debug, Clone)]
pub struct PlanLimits {
    /// Route when the submission names none.
    pub default_route: Vec<RouteStep>,
    /// Default per-attempt timeout.
    pub default_timeout_ms: u64,
    /// Default attempts.
    pub default_max_attempts: u32,
    /// Largest item (text + metadata).
    pub max_item_bytes: usize,
}

/// Checks an id or stage name: 1..=200 bytes of `[A-Za-z0-9_-]` (they appear in
/// broker subjects, so no dots, wildcards or spaces).
pub fn check_name(what: &str, s: &str) -> Result<(), ApiError> {
    let ok = !s.is_empty()
        && s.len() <= MAX_ID_BYTES
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            format!("invalid {what} `{s}`"),
            format!("a {what} is 1 to {MAX_ID_BYTES} characters of letters, digits, `-` and `_`"),
        ))
    }
}

fn check_item_id(s: &str) -> Result<(), ApiError> {
    if s.is_empty() || s.len() > MAX_ID_BYTES || s.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            format!("invalid item_id `{}`", s.escape_debug()),
            format!("an item_id is 1 to {MAX_ID_BYTES} bytes without control characters"),
        ));
    }
    Ok(())
}

/// The SHA-256 (hex) of `value` serialized with sorted object keys.
pub fn canonical_hash(value: &serde_json::Value) -> String {
    fn write(v: &serde_json::Value, out: &mut String) {
        match v {
            serde_json::Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::Value::String((*k).clone()).to_string());
                    out.push(':');
                    write(&m[*k], out);
                }
                out.push('}');
            }
            serde_json::Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(x, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut s = String::new();
    write(value, &mut s);
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Validates `sub` and plans the pipeline. The id comes from the body, else from
/// `idempotency_key`, else a new UUID.
pub fn plan(
    sub: &Submission,
    idempotency_key: Option<&str>,
    limits: &PlanLimits,
) -> Result<NewPipeline, ApiError> {
    if sub.v != fleet_protocol::PROTOCOL_VERSION {
        return Err(ApiError::bad_request(
            format!("unsupported submission version {}", sub.v),
            format!(
                "send \"v\": {} (this coordinator reads version {})",
                fleet_protocol::PROTOCOL_VERSION,
                fleet_protocol::PROTOCOL_VERSION
            ),
        ));
    }
    let pipeline_id = match (sub.pipeline_id.as_deref(), idempotency_key) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::bad_request(
                format!("pipeline_id `{a}` and Idempotency-Key `{b}` differ"),
                "send one of them, or the same value in both",
            ));
        }
        (Some(id), _) | (None, Some(id)) => id.to_owned(),
        (None, None) => uuid::Uuid::new_v4().to_string(),
    };
    check_name("pipeline_id", &pipeline_id)?;
    if sub.items.is_empty() {
        return Err(ApiError::bad_request(
            "a pipeline needs at least one item",
            "add items: [{\"item_id\": \"a\", \"text\": \"...\"}]",
        ));
    }
    let route = sub
        .route
        .clone()
        .unwrap_or_else(|| limits.default_route.clone());
    if route.is_empty() {
        return Err(ApiError::bad_request(
            "the route is empty",
            "omit `route` for the default, or list stages: [{\"stage\": \"analyze\"}]",
        ));
    }
    let mut seen = HashSet::new();
    for step in &route {
        check_name("stage", &step.stage)?;
        if !seen.insert(step.stage.as_str()) {
            return Err(ApiError::bad_request(
                format!("stage `{}` appears twice in the route", step.stage),
                "list each stage once",
            ));
        }
    }
    let mut stages = BTreeMap::new();
    for step in &route {
        let opts = sub.stages.get(&step.stage).cloned().unwrap_or_default();
        let l = StageLimits {
            timeout_ms: opts.timeout_ms.unwrap_or(limits.default_timeout_ms),
            max_attempts: opts.max_attempts.unwrap_or(limits.default_max_attempts),
        };
        if l.timeout_ms == 0 || l.max_attempts == 0 {
            return Err(ApiError::bad_request(
                format!(
                    "stage `{}`: timeout_ms and max_attempts must be positive",
                    step.stage
                ),
                "omit them for the defaults",
            ));
        }
        stages.insert(step.stage.clone(), l);
    }
    if let Some(unknown) = sub.stages.keys().find(|k| !seen.contains(k.as_str())) {
        return Err(ApiError::bad_request(
            format!("`stages` names `{unknown}`, which is not in the route"),
            "set options only for stages of the route",
        ));
    }
    if let Some(d) = sub.deadline_at
        && d <= Utc::now()
    {
        return Err(ApiError::bad_request(
            format!("deadline_at {} is in the past", d.to_rfc3339()),
            "give a future RFC 3339 time, or omit it",
        ));
    }
    let mut ids = HashSet::new();
    let mut items = Vec::with_capacity(sub.items.len());
    for it in &sub.items {
        check_item_id(&it.item_id)?;
        if !ids.insert(it.item_id.as_str()) {
            return Err(ApiError::bad_request(
                format!("item_id `{}` appears twice", it.item_id),
                "give every item a unique item_id",
            ));
        }
        let size = it.text.len()
            + if it.metadata.is_null() {
                0
            } else {
                it.metadata.to_string().len()
            };
        if size > limits.max_item_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "item `{}` is {size} bytes; the limit is {} bytes",
                    it.item_id, limits.max_item_bytes
                ),
                "split the item into smaller items, or raise FLEET_MAX_ITEM_BYTES (and the workers' FLEET_MAX_MESSAGE_BYTES)",
            ));
        }
        items.push(NewItem {
            item_id: it.item_id.clone(),
            route: route.clone(),
            payload: serde_json::json!({
                "item_id": it.item_id,
                "text": it.text,
                "metadata": it.metadata,
            }),
        });
    }
    let mut canonical = sub.clone();
    canonical.pipeline_id = Some(pipeline_id.clone());
    let body_hash = canonical_hash(&serde_json::to_value(&canonical).map_err(ApiError::internal)?);
    Ok(NewPipeline {
        pipeline_id,
        body_hash,
        deadline_at: sub.deadline_at.map(to_millis),
        replay_of: sub.replay_of.clone(),
        stages,
        items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_protocol::SubmitItem;

    fn limits() -> PlanLimits {
        PlanLimits {
            default_route: crate::config::parse_route("analyze,summarize?,write"),
            default_timeout_ms: 60_000,
            default_max_attempts: 3,
            max_item_bytes: 100,
        }
    }

    fn sub(items: &[&str]) -> Submission {
        Submission {
            v: 1,
            pipeline_id: None,
            items: items
                .iter()
                .map(|i| SubmitItem {
                    item_id: (*i).into(),
                    text: format!("text of {i}"),
                    metadata: serde_json::Value::Null,
                })
                .collect(),
            route: None,
            stages: BTreeMap::new(),
            deadline_at: None,
            replay_of: None,
        }
    }

    #[test]
    fn plans_first_jobs_with_remaining_route() {
        let mut s = sub(&["a", "b"]);
        s.pipeline_id = Some("p1".into());
        s.stages.insert(
            "analyze".into(),
            fleet_protocol::StageOptions {
                timeout_ms: Some(5000),
                max_attempts: None,
            },
        );
        s.stages.insert(
            "summarize".into(),
            fleet_protocol::StageOptions {
                timeout_ms: Some(7000),
                max_attempts: Some(5),
            },
        );
        let p = plan(&s, None, &limits()).unwrap();
        assert_eq!(p.pipeline_id, "p1");
        let job = p.first_job(&p.items[0], 1_000);
        assert_eq!(job.job_id, "p1/a/analyze");
        assert_eq!(job.pipeline_created_at.unwrap().timestamp_millis(), 1_000);
        assert_eq!(job.route.len(), 2);
        assert!(!job.route[0].required);
        assert_eq!((job.timeout_ms, job.max_attempts), (5000, 3));
        assert_eq!(job.payload["text"], "text of a");
        // Later stages get their own limits, not the first stage's.
        let summarize = job.next_job(serde_json::json!({})).unwrap();
        assert_eq!(summarize.stage, "summarize");
        assert_eq!((summarize.timeout_ms, summarize.max_attempts), (7000, 5));
        let write = summarize.next_job(serde_json::json!({})).unwrap();
        assert_eq!((write.timeout_ms, write.max_attempts), (60_000, 3));
    }

    #[test]
    fn id_sources_and_hash_stability() {
        let s = sub(&["a"]);
        let by_key = plan(&s, Some("k1"), &limits()).unwrap();
        assert_eq!(by_key.pipeline_id, "k1");
        let mut with_id = s.clone();
        with_id.pipeline_id = Some("k1".into());
        assert_eq!(
            plan(&with_id, None, &limits()).unwrap().body_hash,
            by_key.body_hash
        );
        let mut other = with_id.clone();
        other.items[0].text = "changed".into();
        assert_ne!(
            plan(&other, None, &limits()).unwrap().body_hash,
            by_key.body_hash
        );
        assert!(plan(&with_id, Some("k2"), &limits()).is_err());
        let fresh = plan(&s, None, &limits()).unwrap();
        assert_eq!(fresh.pipeline_id.len(), 36);
    }

    #[test]
    fn canonical_hash_ignores_key_order() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"a":1,"b":{"y":2,"x":[1,2]}}"#).unwrap();
        let b: serde_json::Value =
            serde_json::from_str(r#"{"b":{"x":[1,2],"y":2},"a":1}"#).unwrap();
        assert_eq!(canonical_hash(&a), canonical_hash(&b));
    }

    #[test]
    fn validation_errors() {
        let l = limits();
        assert!(plan(&sub(&[]), None, &l).is_err());
        assert!(plan(&sub(&["a", "a"]), None, &l).is_err());
        let mut big = sub(&["a"]);
        big.items[0].text = "x".repeat(101);
        assert_eq!(
            plan(&big, None, &l).unwrap_err().status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        let mut v2 = sub(&["a"]);
        v2.v = 2;
        assert!(plan(&v2, None, &l).unwrap_err().message.contains("version"));
        assert!(plan(&sub(&["a"]), Some("has space"), &l).is_err());
        assert!(plan(&sub(&["a"]), Some("dots.no"), &l).is_err());
        let mut past = sub(&["a"]);
        past.deadline_at = Some(Utc::now() - chrono::Duration::seconds(1));
        assert!(plan(&past, None, &l).is_err());
        let mut unknown = sub(&["a"]);
        unknown.stages.insert("nope".into(), Default::default());
        assert!(plan(&unknown, None, &l).is_err());
        let mut dup = sub(&["a"]);
        dup.route = Some(crate::config::parse_route("a,a"));
        assert!(plan(&dup, None, &l).is_err());
        let mut ctl = sub(&["a"]);
        ctl.items[0].item_id = "a\nb".into();
        assert!(plan(&ctl, None, &l).is_err());
        let mut path = sub(&["docs/README.md"]);
        path.pipeline_id = Some("p".into());
        assert_eq!(
            plan(&path, None, &l).unwrap().items[0].item_id,
            "docs/README.md"
        );
    }
}
