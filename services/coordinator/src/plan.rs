//! Turning a [`Submission`] into a validated [`NewPipeline`] (pure): ids,
//! limits, routes, per-stage options, the body hash that makes submission
//! idempotent, and the first-stage job envelopes.

use std::collections::{BTreeMap, HashSet};

use axum::http::StatusCode;
use chrono::Utc;
use fleet_protocol::{JobEnvelope, RouteStep, Submission, SubmitItem};
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
    fleet_protocol::submission::check_items(std::slice::from_ref(&SubmitItem {
        item_id: s.to_owned(),
        text: String::new(),
        metadata: serde_json::Value::Null,
    }))
    .map_err(contract)
}

/// A broken contract rule as a 400.
fn contract(e: fleet_protocol::SubmissionError) -> ApiError {
    ApiError::bad_request(e.message, e.hint)
}

/// Refuses a route naming a stage outside `known` (the coordinator's configured route): no
/// queue exists for it, so its jobs could never be published or consumed.
pub fn check_known_stages(route: &[RouteStep], known: &[RouteStep]) -> Result<(), ApiError> {
    let unknown: Vec<&str> = route
        .iter()
        .map(|s| s.stage.as_str())
        .filter(|s| !known.iter().any(|k| k.stage == *s))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = known.iter().map(|k| k.stage.as_str()).collect();
    Err(ApiError::bad_request(
        format!(
            "the route names stage(s) this coordinator does not know: {}; known stages: {}",
            unknown.join(", "),
            names.join(", ")
        ),
        format!(
            "use only the known stages ({}), or add the stage to the coordinator's FLEET_ROUTE and deploy its workers",
            names.join(", ")
        ),
    ))
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
    plan_with_route(sub, idempotency_key, limits).map(|(p, _)| p)
}

/// [`plan`], also returning the route every item takes (what an open pipeline
/// stores for the items appended later). For an open submission (`open: true`)
/// items may be empty and the body hash covers everything but the items: the
/// items are idempotent one by one instead (see `append`).
pub fn plan_with_route(
    sub: &Submission,
    idempotency_key: Option<&str>,
    limits: &PlanLimits,
) -> Result<(NewPipeline, Vec<RouteStep>), ApiError> {
    // The contract's static rules (the same as the JSON Schema's and openapi.yaml's).
    sub.validate().map_err(contract)?;
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
    if sub.items.is_empty() && !sub.open {
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
    check_known_stages(&route, &limits.default_route)?;
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
    let items = plan_items(&sub.items, &route, limits.max_item_bytes)?;
    let mut canonical = sub.clone();
    canonical.pipeline_id = Some(pipeline_id.clone());
    if sub.open {
        canonical.items.clear();
    }
    let body_hash = canonical_hash(&serde_json::to_value(&canonical).map_err(ApiError::internal)?);
    let planned = NewPipeline {
        pipeline_id,
        body_hash,
        deadline_at: sub.deadline_at.map(to_millis),
        replay_of: sub.replay_of.clone(),
        stages,
        items,
    };
    Ok((planned, route))
}

/// Validates a list of items (ids, duplicates within the list, sizes) and gives
/// each the `route`. Used for a whole submission and for each appended batch.
pub fn plan_items(
    list: &[SubmitItem],
    route: &[RouteStep],
    max_item_bytes: usize,
) -> Result<Vec<NewItem>, ApiError> {
    let mut ids = HashSet::new();
    let mut items = Vec::with_capacity(list.len());
    for it in list {
        check_item_id(&it.item_id)?;
        if !ids.insert(it.item_id.as_str()) {
            return Err(ApiError::bad_request(
                format!("item_id `{}` appears twice", it.item_id),
                "give every item a unique item_id",
            ));
        }
        let size = crate::item_limit::item_size(&it.text, &it.metadata);
        if size > max_item_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "item `{}` is {size} bytes (JSON-encoded text plus metadata); the limit is {max_item_bytes} bytes, what every stage can carry",
                    it.item_id
                ),
                "split the item into smaller items (GET /v1/limits gives the limit); an operator raises it with FLEET_MAX_MESSAGE_BYTES on the coordinator and every worker",
            ));
        }
        items.push(NewItem {
            item_id: it.item_id.clone(),
            route: route.to_vec(),
            payload: serde_json::json!({
                "item_id": it.item_id,
                "text": it.text,
                "metadata": it.metadata,
            }),
        });
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            open: false,
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
        dup.route = Some(crate::config::parse_route("analyze,analyze"));
        assert!(plan(&dup, None, &l).unwrap_err().message.contains("twice"));
        let mut nowhere = sub(&["a"]);
        nowhere.route = Some(crate::config::parse_route("analyze,nowhere"));
        let e = plan(&nowhere, None, &l).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(
            e.message.contains("nowhere") && e.message.contains("analyze, summarize, write"),
            "{e}"
        );
        let mut subset = sub(&["a"]);
        subset.route = Some(crate::config::parse_route("summarize?,write"));
        assert!(plan(&subset, None, &l).is_ok());
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
