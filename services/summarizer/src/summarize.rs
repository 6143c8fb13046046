//! Routing and fallback: try each `openai` provider in order (skipping those
//! whose `max_input_chars` the item exceeds), map-reduce long items over
//! their chunks with bounded concurrency, and fall back to `extractive`,
//! recording who produced the summary and why a fallback happened.

use std::sync::Arc;
use std::time::Duration;

use fleet_runtime::{JobContext, JobError};
use futures::StreamExt as _;
use serde::Serialize;
use tokio::time::Instant;

use crate::extractive::{self, ExtractiveOptions};
use crate::openai::{CallError, OpenAiProvider};
use crate::telemetry;
use fleet_analyzer::document::MediaType;

/// The provider name of the built-in summarizer.
pub const EXTRACTIVE: &str = "extractive";
/// Time kept back from the job deadline for the extractive fallback, at most.
const FALLBACK_RESERVE_MAX: Duration = Duration::from_secs(2);
/// Time kept back from the job deadline for the extractive fallback, at least.
const FALLBACK_RESERVE_MIN: Duration = Duration::from_millis(200);

/// The `summary` object of the output payload.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// The summary text.
    pub text: String,
    /// Who produced it: `extractive` or an `openai` provider's name.
    pub provider: String,
    /// True when a configured provider failed (error, timeout, open breaker) and a later
    /// one (finally `extractive`) produced the summary.
    pub fallback: bool,
    /// Why providers were skipped or failed, `provider: reason; …` (none when the first worked).
    pub fallback_reason: Option<String>,
    /// Chunks summarized (1 for a direct summary).
    pub chunks: usize,
    /// Wall time of the whole summarization.
    pub duration_ms: u64,
}

/// What to summarize: the item text and its chunks (from the analysis, or computed).
#[derive(Debug, Clone)]
pub struct Item {
    /// The whole text.
    pub text: Arc<str>,
    /// Its chunks, in order (one chunk: summarized directly).
    pub chunks: Vec<String>,
    /// How the text is read: the extractive summary picks sentences of its prose only.
    pub media_type: MediaType,
}

/// Summaries through the configured providers, then `extractive`.
#[derive(Debug)]
pub struct Summarizer {
    providers: Vec<Arc<OpenAiProvider>>,
    extractive: ExtractiveOptions,
    map_concurrency: usize,
    fallback: bool,
}

const SYSTEM_MAP: &str = "You summarize documents. Answer with the summary only: plain prose, \
    no preamble, no lists, in the document's language.";
const SYSTEM_REDUCE: &str = "You combine partial summaries of one document into a single \
    summary. Answer with the summary only: plain prose, no preamble, in the document's language.";

impl Summarizer {
    /// A summarizer over `providers` (in fallback order).
    pub fn new(
        providers: Vec<Arc<OpenAiProvider>>,
        extractive: ExtractiveOptions,
        map_concurrency: usize,
    ) -> Summarizer {
        Summarizer {
            providers,
            extractive,
            map_concurrency: map_concurrency.max(1),
            fallback: true,
        }
    }

    /// Without the extractive fallback: when every provider fails, the job fails (retryable).
    pub fn without_fallback(mut self) -> Summarizer {
        self.fallback = false;
        self
    }

    /// True when the extractive summarizer runs after every provider failed.
    pub fn has_fallback(&self) -> bool {
        self.fallback
    }

    /// The configured providers, in order.
    pub fn providers(&self) -> &[Arc<OpenAiProvider>] {
        &self.providers
    }

    fn prompt(&self, text: &str) -> String {
        format!(
            "Summarize the following text in at most {} sentences (about {} characters).\n\n{text}",
            self.extractive.target_sentences, self.extractive.target_chars
        )
    }

    /// Summarizes `item`. `last_attempt` turns a final 429 into a fallback instead of a retry.
    pub async fn summarize(
        &self,
        item: &Item,
        ctx: &JobContext,
        last_attempt: bool,
    ) -> Result<Summary, JobError> {
        let started = Instant::now();
        let chars = item.text.chars().count();
        let mut reasons: Vec<String> = Vec::new();
        let mut failed = false;
        // Providers must give up early enough for the extractive fallback to finish.
        let reserve = (ctx.remaining() / 5).clamp(FALLBACK_RESERVE_MIN, FALLBACK_RESERVE_MAX);
        let call_deadline = ctx.deadline() - reserve;
        let eligible: Vec<&Arc<OpenAiProvider>> = self
            .providers
            .iter()
            .filter(|p| match p.config().max_input_chars {
                Some(max) if chars > max => {
                    reasons.push(format!(
                        "{}: item of {chars} chars exceeds max_input_chars {max}",
                        p.name()
                    ));
                    false
                }
                _ => true,
            })
            .collect();
        for (i, p) in eligible.iter().enumerate() {
            if Instant::now() >= call_deadline {
                reasons.push(format!("{}: no time left before the deadline", p.name()));
                failed = true;
                continue;
            }
            match self.with_provider(p, item, ctx, call_deadline).await {
                Ok((text, chunks)) => {
                    return Ok(self.done(text, p.name(), failed, reasons, chunks, started));
                }
                Err(CallError::RateLimited {
                    retry_after: Some(delay),
                }) if i + 1 == eligible.len() && !last_attempt => {
                    return Err(JobError::RetryAfter {
                        delay,
                        message: format!("provider {} rate limited (HTTP 429)", p.name()),
                    });
                }
                Err(e) => {
                    if matches!(e, CallError::BreakerOpen) {
                        // The breaker logged its opening once; a refusal per job is noise.
                        tracing::debug!(provider = %p.name(), "provider skipped: circuit breaker open");
                    } else if i + 1 < eligible.len() || self.fallback {
                        tracing::warn!(provider = %p.name(), error = %e, "provider failed; falling back");
                    } else {
                        tracing::warn!(provider = %p.name(), error = %e, "provider failed; no fallback left (the extractive fallback is off)");
                    }
                    reasons.push(format!("{}: {e}", p.name()));
                    failed = true;
                }
            }
        }
        if !self.fallback {
            return Err(JobError::Retryable(format!(
                "every provider failed and the extractive fallback is off: {}",
                reasons.join("; ")
            )));
        }
        let (text, opts, media_type) = (item.text.clone(), self.extractive, item.media_type);
        let summary = ctx
            .blocking(move || extractive::summarize_document(&text, media_type, &opts))
            .await?;
        ctx.progress(1, Some(1), "extractive summary");
        Ok(self.done(summary, EXTRACTIVE, failed, reasons, 1, started))
    }

    fn done(
        &self,
        text: String,
        provider: &str,
        failed: bool,
        reasons: Vec<String>,
        chunks: usize,
        started: Instant,
    ) -> Summary {
        metrics::counter!(telemetry::SUMMARIES, "provider" => provider.to_owned(), "fallback" => failed.to_string())
            .increment(1);
        Summary {
            text,
            provider: provider.to_owned(),
            fallback: failed,
            fallback_reason: (!reasons.is_empty()).then(|| reasons.join("; ")),
            chunks,
            duration_ms: started.elapsed().as_millis() as u64,
        }
    }

    /// Direct summary, or map (chunks, bounded concurrency, progress each) then reduce.
    async fn with_provider(
        &self,
        p: &OpenAiProvider,
        item: &Item,
        ctx: &JobContext,
        deadline: Instant,
    ) -> Result<(String, usize), CallError> {
        if item.chunks.len() <= 1 {
            let s = p
                .complete(SYSTEM_MAP, &self.prompt(&item.text), deadline)
                .await?;
            ctx.progress(1, Some(1), &format!("summarized by {}", p.name()));
            return Ok((s, 1));
        }
        let total = item.chunks.len() as u64 + 1;
        let mut mapped: Vec<Option<String>> = vec![None; item.chunks.len()];
        // Indices, not `&String` items: a borrowed stream item trips the higher-ranked
        // lifetime check of `async_trait`'s `Send` future.
        let chunks = &item.chunks;
        let mut calls = futures::stream::iter(0..chunks.len())
            .map(move |i| async move {
                let prompt = self.prompt(&chunks[i]);
                (i, p.complete(SYSTEM_MAP, &prompt, deadline).await)
            })
            .buffer_unordered(self.map_concurrency);
        let mut done = 0u64;
        while let Some((i, r)) = calls.next().await {
            // The first failing chunk fails this provider; dropping `calls` stops the others.
            mapped[i] = Some(r?);
            done += 1;
            ctx.progress(
                done,
                Some(total),
                &format!("chunk {i} summarized by {}", p.name()),
            );
        }
        drop(calls);
        let joined = mapped
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("\n\n");
        let reduce = format!(
            "Combine these partial summaries into one summary of at most {} sentences:\n\n{joined}",
            self.extractive.target_sentences
        );
        let s = p.complete(SYSTEM_REDUCE, &reduce, deadline).await?;
        ctx.progress(total, Some(total), &format!("reduced by {}", p.name()));
        Ok((s, item.chunks.len()))
    }
}
