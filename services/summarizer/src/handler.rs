//! The `summarize` handler: take the item text and its chunks (from the
//! analysis when present), summarize, and pass the item on with `summary`.

use std::sync::Arc;

use async_trait::async_trait;
use fleet_analyzer::analysis::CHUNK_BASIS_PROSE;
use fleet_analyzer::chunk::{ChunkSize, chunk_prose};
use fleet_analyzer::document::{MediaType, parse};
use fleet_runtime::{
    Degradation, DegradationKind, Handler, JobContext, JobEnvelope, JobError, Output,
};
use serde_json::{Map, Value};

use crate::summarize::{Item, Summarizer};

/// Summarizes each item and adds `summary` to its payload.
#[derive(Debug, Clone)]
pub struct SummarizeHandler {
    summarizer: Arc<Summarizer>,
    chunk: ChunkSize,
    max_attempts: u32,
}

impl SummarizeHandler {
    /// A handler over `summarizer`; `chunk` bounds the chunks of items without analysis
    /// chunks; `max_attempts` is the service's attempt ceiling (to spot a job's last attempt).
    pub fn new(
        summarizer: Arc<Summarizer>,
        chunk: ChunkSize,
        max_attempts: u32,
    ) -> SummarizeHandler {
        SummarizeHandler {
            summarizer,
            chunk,
            max_attempts,
        }
    }

    /// The summarizer (providers, breakers) behind this handler.
    pub fn summarizer(&self) -> &Arc<Summarizer> {
        &self.summarizer
    }
}

/// The chunk texts of `analysis.chunks` (given as `chunks`), if any: `text[start..end]`
/// by the byte offsets the analyzer sends (a chunk's own `text`, from older
/// analyzers, is used when present).
fn analysis_chunks(chunks: &Value, text: &str) -> Option<Vec<String>> {
    let offset = |c: &Value, k: &str| {
        c.get(k)
            .and_then(Value::as_u64)
            .and_then(|n| usize::try_from(n).ok())
    };
    let chunks: Vec<String> = chunks
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
        // The analyzer's reading wins; without an analysis, the same rules.
        let media_type = job
            .payload
            .pointer("/analysis/media_type")
            .and_then(Value::as_str)
            .and_then(MediaType::from_name)
            .unwrap_or_else(|| MediaType::of_item(job.payload.get("metadata"), text));
        let (t, chunk) = (Arc::<str>::from(text), self.chunk.clone());
        let prose_basis = job
            .payload
            .pointer("/analysis/chunk_basis")
            .and_then(Value::as_str)
            == Some(CHUNK_BASIS_PROSE);
        let sent = job.payload.pointer("/analysis/chunks").cloned();
        // Parsing and token counting are CPU work: off the reactor.
        let item = ctx
            .blocking(move || {
                let doc = parse(&t, media_type);
                let chunks = match sent
                    .as_ref()
                    .and_then(|c| analysis_chunks(c, if prose_basis { &doc.prose } else { &t }))
                {
                    Some(c) => c,
                    None => chunk_prose(&doc.prose, &doc.sections, &chunk)
                        .into_iter()
                        .map(|c| c.text)
                        .collect(),
                };
                Item {
                    text: Arc::from(doc.prose),
                    chunks,
                }
            })
            .await?;
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
        // A fallback or mixed summary is a success, but the coordinator counts the item
        // as degraded.
        Ok(if summary.fallback {
            out.degraded(Degradation::new(
                DegradationKind::SummaryFallback,
                &summary.provider,
            ))
        } else if summary.mixed {
            out.degraded(Degradation::new(
                DegradationKind::SummaryMixed,
                &format!(
                    "{}: {} of {} chunks extractive{}",
                    summary.provider,
                    summary.extractive_chunks,
                    summary.chunks,
                    if summary.extractive_reduce {
                        ", combined extractively"
                    } else {
                        ""
                    }
                ),
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
        let by_offsets = json!({"chunks": [
            {"index": 0, "start": 0, "end": 13},
            {"index": 1, "start": 14, "end": 25},
            {"index": 2, "start": 3, "end": 99}
        ]});
        assert_eq!(
            analysis_chunks(&by_offsets["chunks"], text).unwrap(),
            ["héllo world.", "second part"]
        );
        let with_text = json!([{"index": 0, "start": 0, "end": 1, "text": "as sent"}]);
        assert_eq!(analysis_chunks(&with_text, text).unwrap(), ["as sent"]);
        assert!(analysis_chunks(&json!({}), text).is_none());
        assert!(analysis_chunks(&json!([]), text).is_none());
    }
}
