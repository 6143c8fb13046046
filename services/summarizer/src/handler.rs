//! The `summarize` handler: take the item text and its chunks (from the
//! analysis when present), summarize, and pass the item on with `summary`.

use std::sync::Arc;

use async_trait::async_trait;
use fleet_analyzer::chunk::chunk_text;
use fleet_analyzer::document::MediaType;
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

/// The chunk texts of `payload.analysis.chunks`, if any: `text[start..end]` by
/// the byte offsets the analyzer sends (a chunk's own `text`, from older
/// analyzers, is used when present).
fn analysis_chunks(payload: &Value, text: &str) -> Option<Vec<String>> {
    let offset = |c: &Value, k: &str| {
        c.get(k)
            .and_then(Value::as_u64)
            .and_then(|n| usize::try_from(n).ok())
    };
    let chunks: Vec<String> = payload
        .pointer("/analysis/chunks")?
        .as_array()?
        .iter()
        .filter_map(|c| match c.get("text").and_then(Value::as_str) {
            Some(t) => Some(t),
            None => text.get(offset(c, "start")?..offset(c, "end")?),
        })
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
        let chunks = match analysis_chunks(&job.payload, text) {
            Some(c) => c,
            None => chunk_text(text, self.chunk_chars)
                .into_iter()
                .map(|c| c.text)
                .collect(),
        };
        let item = Item {
            text: Arc::from(text),
            chunks,
            // The analyzer's reading wins; without an analysis, the same rules.
            media_type: job
                .payload
                .pointer("/analysis/media_type")
                .and_then(Value::as_str)
                .and_then(MediaType::from_name)
                .unwrap_or_else(|| MediaType::of_item(job.payload.get("metadata"), text)),
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

#[cfg(test)]
mod tests {
    use super::analysis_chunks;
    use serde_json::json;

    #[test]
    fn chunks_are_sliced_by_offsets_or_taken_as_sent() {
        let text = "héllo world. second part";
        let by_offsets = json!({"analysis": {"chunks": [
            {"index": 0, "start": 0, "end": 13},
            {"index": 1, "start": 14, "end": 25},
            {"index": 2, "start": 3, "end": 99}
        ]}});
        assert_eq!(
            analysis_chunks(&by_offsets, text).unwrap(),
            ["héllo world.", "second part"]
        );
        let with_text = json!({"analysis": {"chunks": [{"index": 0, "start": 0, "end": 1, "text": "as sent"}]}});
        assert_eq!(analysis_chunks(&with_text, text).unwrap(), ["as sent"]);
        assert!(analysis_chunks(&json!({}), text).is_none());
    }
}
