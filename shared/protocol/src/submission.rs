//! A pipeline submission: what producers send to the coordinator (HTTP or submit queue).
//!
//! The static rules of the contract live here once, as schemars attributes (so
//! the JSON Schemas in `schema/` state them) and in [`decode_submission`] /
//! [`Submission::validate`] (so every decoder refuses the same documents);
//! `services/coordinator/openapi.yaml` repeats them and a test
//! (`tests/examples.rs`) feeds the same documents to all three.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::PROTOCOL_VERSION;
use crate::envelope::RouteStep;

/// Longest pipeline id, item id or stage name, in characters.
pub const MAX_ID_CHARS: usize = 200;
/// The syntax of pipeline ids and stage names (they appear in broker subjects:
/// no dots, wildcards or spaces).
pub const NAME_PATTERN: &str = "^[A-Za-z0-9_-]{1,200}$";
/// The syntax of item ids: 1 to 200 characters, no control characters (they may be paths).
pub const ITEM_ID_PATTERN: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]{1,200}$";

/// One item to process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SubmitItem {
    /// Unique within the pipeline: 1 to 200 characters, no control characters.
    #[schemars(regex(pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]{1,200}$"))]
    pub item_id: String,
    /// The item's text (UTF-8 text or Markdown).
    pub text: String,
    /// Free-form metadata passed along.
    #[serde(default)]
    pub metadata: serde_json::Value,
}

/// Per-stage limits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StageOptions {
    /// Per-attempt timeout in milliseconds (at least 1).
    #[schemars(range(min = 1))]
    pub timeout_ms: Option<u64>,
    /// Attempts allowed (at least 1).
    #[schemars(range(min = 1))]
    pub max_attempts: Option<u32>,
}

/// A pipeline to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("anyOf" = [
    {"required": ["open"], "properties": {"open": {"enum": [true]}}},
    {"properties": {"items": {"minItems": 1}}}
]))]
pub struct Submission {
    /// Wire format major version (`1`).
    #[schemars(extend("enum" = [1]))]
    pub v: u32,
    /// Client-chosen id for idempotent submission; generated when absent.
    #[serde(default)]
    #[schemars(regex(pattern = "^[A-Za-z0-9_-]{1,200}$"))]
    pub pipeline_id: Option<String>,
    /// The items: at least one, unless the pipeline is created `open`.
    pub items: Vec<SubmitItem>,
    /// Stages every item goes through; default `analyze → summarize → write`.
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub route: Option<Vec<RouteStep>>,
    /// Per-stage limits by stage name.
    #[serde(default)]
    pub stages: BTreeMap<String, StageOptions>,
    /// Absolute deadline for the whole pipeline.
    #[serde(default)]
    pub deadline_at: Option<DateTime<Utc>>,
    /// The pipeline this one replays (DLQ replay).
    #[serde(default)]
    pub replay_of: Option<String>,
    /// Create the pipeline open: more items follow with `POST /v1/pipelines/{id}/items`
    /// and `POST /v1/pipelines/{id}/seal` ends the list. `items` may then be empty.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub open: bool,
}

/// A batch of items appended to an open pipeline (`POST /v1/pipelines/{id}/items`).
///
/// Idempotent by `item_id`: an item already in the pipeline with the same
/// content is a no-op, with other content a conflict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ItemBatch {
    /// Wire format major version (`1`).
    #[schemars(extend("enum" = [1]))]
    pub v: u32,
    /// The items (at least one).
    #[schemars(length(min = 1))]
    pub items: Vec<SubmitItem>,
}

/// Closes an open pipeline's item list (`POST /v1/pipelines/{id}/seal`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Seal {
    /// How many items the client sent in all; the seal is refused when the
    /// coordinator holds another number (a batch went missing).
    #[serde(default)]
    pub item_count: Option<u64>,
}

/// Why a submission (or item batch) breaks the contract: what is wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SubmissionError {
    /// What was wrong.
    pub message: String,
    /// What to do about it.
    pub hint: String,
}

fn refuse(message: impl Into<String>, hint: impl Into<String>) -> SubmissionError {
    SubmissionError {
        message: message.into(),
        hint: hint.into(),
    }
}

/// True when `s` is a valid pipeline id or stage name ([`NAME_PATTERN`]).
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_CHARS
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// True when `s` is a valid item id ([`ITEM_ID_PATTERN`]).
pub fn is_item_id(s: &str) -> bool {
    let n = s.chars().count();
    (1..=MAX_ID_CHARS).contains(&n) && !s.chars().any(char::is_control)
}

fn check_name(what: &str, s: &str) -> Result<(), SubmissionError> {
    if is_name(s) {
        Ok(())
    } else {
        Err(refuse(
            format!("invalid {what} `{}`", s.escape_debug()),
            format!("a {what} is 1 to {MAX_ID_CHARS} characters of letters, digits, `-` and `_`"),
        ))
    }
}

fn check_version(v: u32, what: &str) -> Result<(), SubmissionError> {
    if v == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(refuse(
            format!("unsupported {what} version {v}"),
            format!("send \"v\": {PROTOCOL_VERSION} (this build reads version {PROTOCOL_VERSION})"),
        ))
    }
}

/// Checks item ids (syntax only; duplicates and sizes are the coordinator's).
pub fn check_items(items: &[SubmitItem]) -> Result<(), SubmissionError> {
    for it in items {
        if !is_item_id(&it.item_id) {
            return Err(refuse(
                format!("invalid item_id `{}`", it.item_id.escape_debug()),
                format!("an item_id is 1 to {MAX_ID_CHARS} characters without control characters"),
            ));
        }
    }
    Ok(())
}

impl Submission {
    /// The contract's static rules: version, at least one item unless `open`,
    /// id and stage syntax, a non-empty route, positive stage limits.
    pub fn validate(&self) -> Result<(), SubmissionError> {
        check_version(self.v, "submission")?;
        if let Some(id) = &self.pipeline_id {
            check_name("pipeline_id", id)?;
        }
        if self.items.is_empty() && !self.open {
            return Err(refuse(
                "a pipeline needs at least one item",
                "add items: [{\"item_id\": \"a\", \"text\": \"...\"}], or create it with \"open\": true and append items later",
            ));
        }
        check_items(&self.items)?;
        if let Some(route) = &self.route {
            if route.is_empty() {
                return Err(refuse(
                    "the route is empty",
                    "omit `route` for the default, or list stages: [{\"stage\": \"analyze\"}]",
                ));
            }
            for step in route {
                check_name("stage", &step.stage)?;
            }
        }
        for (stage, o) in &self.stages {
            if o.timeout_ms == Some(0) || o.max_attempts == Some(0) {
                return Err(refuse(
                    format!("stage `{stage}`: timeout_ms and max_attempts must be positive"),
                    "omit them for the defaults",
                ));
            }
        }
        Ok(())
    }
}

impl ItemBatch {
    /// The contract's static rules: version, at least one item, item id syntax.
    pub fn validate(&self) -> Result<(), SubmissionError> {
        check_version(self.v, "item batch")?;
        if self.items.is_empty() {
            return Err(refuse(
                "the batch has no items",
                "send at least one item, or seal the pipeline with POST /v1/pipelines/{id}/seal",
            ));
        }
        check_items(&self.items)
    }
}

/// Decodes and validates a submission body.
pub fn decode_submission(body: &[u8]) -> Result<Submission, SubmissionError> {
    let sub: Submission = serde_json::from_slice(body).map_err(|e| {
        refuse(
            format!("the body is not a valid submission: {e}"),
            "send {\"v\": 1, \"items\": [{\"item_id\": \"a\", \"text\": \"...\"}]}; see GET /v1/openapi.yaml",
        )
    })?;
    sub.validate()?;
    Ok(sub)
}

/// Decodes and validates an item batch body.
pub fn decode_item_batch(body: &[u8]) -> Result<ItemBatch, SubmissionError> {
    let batch: ItemBatch = serde_json::from_slice(body).map_err(|e| {
        refuse(
            format!("the body is not a valid item batch: {e}"),
            "send {\"v\": 1, \"items\": [{\"item_id\": \"a\", \"text\": \"...\"}]}; see GET /v1/openapi.yaml",
        )
    })?;
    batch.validate()?;
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_item_ids() {
        assert!(is_name("a-b_C9") && !is_name("a.b") && !is_name("") && !is_name(&"a".repeat(201)));
        assert!(is_item_id("docs/README.md") && is_item_id(&"é".repeat(200)));
        assert!(!is_item_id("a\nb") && !is_item_id("") && !is_item_id(&"é".repeat(201)));
        assert!(!is_item_id("a\u{85}b"));
    }
}
