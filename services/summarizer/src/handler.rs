//! The `summarize` handler: take the item text and its chunks (from the
//! analysis when present), summarize, and pass the item on with `summary`.

use std::sync::Arc;

use async_trait::async_trait;
use fleet_analyzer::chunk::chunk_text;
use fleet_runtime::{
    Degradation, DegradationKind, Handler, JobContext, JobEnvelope, JobError, Output,
};
use serde_json::{Map, Value};

use crate::summarize::{Item, Summarizer};

/// Summarizes each item and adds `summary` to its payload.
#[derive(Debug, Clone)]
pub struct SummarizeHandler {
    summarizer: Arc<Summarizer>,
    chunk_chars: usize,
    max_attempts: u32,
}

impl SummarizeHandler {
    /// A handler over `summarizer`; `chunk_chars` chunks items without analysis chunks;
    /// `max_attempts` is the service's attempt ceiling (to spot a job's last attempt).
    pub fn new(
        summarizer: Arc<Summarizer>,
        chunk_chars: usize,
        max_attempts: u32,
    ) -> SummarizeHandler {
        SummarizeHandler {
            summarizer,
            chunk_chars,
            max_attempts,
        }
    }

    /// The summarizer (providers, breakers) behind this handler.
    pub fn summarizer(&self) -> &Arc<Summarizer> {
        &self.summarizer
    }
}

/// The chunk texts of `payload.analysis.chunks`, if any.
fn analysis_chunks(payload: &Value) -> Option<Vec<String>> {
    let chunks: Vec<String> = payload
        .pointer("/analysis/chunks")?
        .as_array()?
        .iter()
        .filter_map(|c| c.get("text").and_then(Value::as_str))
        .filter(|t| !t.trim().is_empty())
        .map(str::to_owned)
        .collect();
    (!chunks.is_empty()).then_some(chunks)
}

#[async_trait]
impl Handler for SummarizeHandler {
    async fn handle(&self, job: &JobEnvelope, ctx: &JobContext) -> Result<Output, JobError> {
        let text = job
            .payload
            .get("text")
            .and_then(Value::as_str)
            .ok_or_else(|| JobError::permanent("payload.text is missing or not a string"))?;
        let chunks = match analysis_chunks(&job.payload) {
            Some(c) => c,
            None => chunk_text(text, self.chunk_chars)
                .into_iter()
                .map(|c| c.text)
                .collect(),
        };
        let item = Item {
            text: Arc::from(text),
            chunks,
        };
        let last_attempt = ctx.attempt() >= job.max_attempts.min(self.max_attempts);
        let summary = self.summarizer.summarize(&item, ctx, last_attempt).await?;
        tracing::debug!(job_id = %job.job_id, provider = %summary.provider, fallback = summary.fallback, "summarized");
        let mut payload = match &job.payload {
            Value::Object(m) => m.clone(),
            _ => Map::new(),
        };
        payload.insert(
            "summary".into(),
            serde_json::to_value(&summary)
                .map_err(|e| JobError::Retryable(format!("serializing the summary: {e}")))?,
        );
        let out = Output::new(Value::Object(payload));
        // A fallback summary is a success, but the coordinator counts the item as degraded.
        Ok(if summary.fallback {
            out.degraded(Degradation::new(
                DegradationKind::SummaryFallback,
                &summary.provider,
            ))
        } else {
            out
        })
    }
}
