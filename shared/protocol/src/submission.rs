//! A pipeline submission: what producers send to the coordinator (HTTP or submit queue).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::envelope::RouteStep;

/// One item to process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SubmitItem {
    /// Unique within the pipeline.
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
    /// Per-attempt timeout in milliseconds.
    pub timeout_ms: Option<u64>,
    /// Attempts allowed.
    pub max_attempts: Option<u32>,
}

/// A pipeline to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Submission {
    /// Wire format major version (`1`).
    pub v: u32,
    /// Client-chosen id for idempotent submission; generated when absent.
    #[serde(default)]
    pub pipeline_id: Option<String>,
    /// The items.
    pub items: Vec<SubmitItem>,
    /// Stages every item goes through; default `analyze → summarize → write`.
    #[serde(default)]
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
}
