//! The `analyze` handler: built-in analysis off the reactor, then every
//! command analyzer concurrently, each with progress; the item goes on with
//! its `analysis` (partial when optional analyzers failed).

use std::sync::Arc;

use async_trait::async_trait;
use fleet_runtime::{
    Degradation, DegradationKind, Handler, JobContext, JobEnvelope, JobError, Output,
};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use serde_json::{Map, Value, json};

use crate::analysis::{AnalysisOptions, analyze_as};
use crate::command::{CommandResult, Failure, run_command};
use crate::config::AnalyzerSpec;
use crate::document::MediaType;

/// Runs the built-in analysis and the command analyzers over each item.
#[derive(Debug, Clone)]
pub struct AnalyzeHandler {
    opts: AnalysisOptions,
    analyzers: Arc<Vec<AnalyzerSpec>>,
}

impl AnalyzeHandler {
    /// A handler with these analysis knobs and command analyzers.
    pub fn new(opts: AnalysisOptions, analyzers: Vec<AnalyzerSpec>) -> AnalyzeHandler {
        AnalyzeHandler {
            opts,
            analyzers: Arc::new(analyzers),
        }
    }
}

/// The item text of a job payload (`payload.text`), or a permanent error.
pub fn item_text(payload: &Value) -> Result<&str, JobError> {
    payload
        .get("text")
        .and_then(Value::as_str)
        .ok_or_else(|| JobError::permanent("payload.text is missing or not a string"))
}

#[async_trait]
impl Handler for AnalyzeHandler {
    async fn handle(&self, job: &JobEnvelope, ctx: &JobContext) -> Result<Output, JobError> {
        let text: Arc<str> = Arc::from(item_text(&job.payload)?);
        let total = 1 + self.analyzers.len() as u64;
        let (t, opts) = (text.clone(), self.opts.clone());
        let media_type = MediaType::of_item(job.payload.get("metadata"), &text);
        let builtin = ctx
            .blocking(move || analyze_as(&t, media_type, &opts))
            .await?;
        ctx.progress(1, Some(total), "builtin analysis");

        let mut running: FuturesUnordered<_> = self
            .analyzers
            .iter()
            .map(|spec| {
                let text = text.clone();
                async move { (spec, run_command(spec, &text, ctx.cancelled()).await) }
            })
            .collect();
        let mut results: Vec<(&AnalyzerSpec, CommandResult)> = Vec::new();
        while let Some((spec, r)) = running.next().await {
            let note = format!(
                "analyzer {} {}",
                spec.name,
                if r.ok { "ok" } else { "failed" }
            );
            results.push((spec, r));
            ctx.progress(1 + results.len() as u64, Some(total), &note);
        }
        drop(running);

        let mut failed = Vec::new();
        let mut analyzers = Map::new();
        for (spec, r) in &results {
            if let Some(f) = r.failure {
                tracing::warn!(job_id = %job.job_id, analyzer = %spec.name, required = spec.required, error = ?r.error, "command analyzer failed");
                if spec.required {
                    let msg = format!(
                        "required analyzer `{}` failed: {}",
                        spec.name,
                        r.error.as_deref().unwrap_or("unknown error")
                    );
                    return Err(match f {
                        // Retrying runs the same program on the same input: no help.
                        Failure::Missing | Failure::TooLarge => JobError::Permanent(msg),
                        Failure::Failed | Failure::Cancelled => JobError::Retryable(msg),
                    });
                }
                failed.push(spec.name.clone());
            }
            analyzers.insert(
                spec.name.clone(),
                serde_json::to_value(r).unwrap_or(Value::Null),
            );
        }
        // Report failures in config order, independent of completion order.
        failed.sort_by_key(|n| self.analyzers.iter().position(|s| &s.name == n));

        let mut analysis = serde_json::to_value(&builtin)
            .map_err(|e| JobError::Retryable(format!("serializing the analysis: {e}")))?;
        analysis["analyzers"] = Value::Object(analyzers);
        analysis["failed_analyzers"] = json!(failed);
        let mut payload = match &job.payload {
            Value::Object(m) => m.clone(),
            _ => Map::new(),
        };
        payload.insert("analysis".into(), analysis);
        let out = Output::new(Value::Object(payload));
        // The item goes on, but the coordinator counts it as degraded and names the analyzers.
        Ok(if failed.is_empty() {
            out
        } else {
            out.degraded(Degradation::new(
                DegradationKind::AnalyzersFailed,
                &failed.join(", "),
            ))
        })
    }
}
