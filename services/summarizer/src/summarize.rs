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
    /// True when some chunks' LLM calls kept failing and those chunks were summarized
    /// extractively (the rest by `provider`).
    pub mixed: bool,
    /// Chunks summarized extractively in a mixed summary (0 otherwise).
    pub extractive_chunks: usize,
    /// True when the reduce call kept failing and the LLM's chunk summaries were
    /// combined extractively (a mixed summary too).
    pub extractive_reduce: bool,
    /// Wall time of the whole summarization.
    pub duration_ms: u64,
}

/// What to summarize: the item's prose and its chunks (from the analysis, or computed).
#[derive(Debug, Clone)]
pub struct Item {
    /// The whole prose (the text parsed for its media type: no Markdown or HTML syntax).
    pub text: Arc<str>,
    /// Its chunks, in order (one chunk: summarized directly).
    pub chunks: Vec<String>,
}

/// An LLM summary: its text, chunks mapped, and how many of those were extractive.
struct Mapped {
    text: String,
    chunks: usize,
    extractive_chunks: usize,
    extractive_reduce: bool,
}

/// First delay between retries of a chunk call (full jitter, doubling).
const CHUNK_RETRY_BASE: Duration = Duration::from_millis(100);
/// Longest delay between retries of a chunk call.
const CHUNK_RETRY_MAX: Duration = Duration::from_secs(2);

/// Summaries through the configured providers, then `extractive`.
#[derive(Debug)]
pub struct Summarizer {
    providers: Vec<Arc<OpenAiProvider>>,
    extractive: ExtractiveOptions,
    map_concurrency: usize,
    fallback: bool,
    chunk_retries: u32,
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
            chunk_retries: crate::config::DEFAULT_CHUNK_RETRIES,
        }
    }

    /// Retries of a failed chunk call within one attempt (0: none).
    pub fn with_chunk_retries(mut self, retries: u32) -> Summarizer {
        self.chunk_retries = retries;
        self
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
                Ok(m) => {
                    let mut s = self.done(m.text, p.name(), failed, reasons, m.chunks, started);
                    s.mixed = m.extractive_chunks > 0 || m.extractive_reduce;
                    s.extractive_chunks = m.extractive_chunks;
                    s.extractive_reduce = m.extractive_reduce;
                    return Ok(s);
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
        let (text, opts) = (item.text.clone(), self.extractive);
        let summary = ctx
            .blocking(move || extractive::summarize(&text, &opts))
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
            mixed: false,
            extractive_chunks: 0,
            extractive_reduce: false,
            duration_ms: started.elapsed().as_millis() as u64,
        }
    }

    /// One call, retried on failure (full-jitter backoff) while retries remain and the
    /// next try can start before `deadline`. An open breaker is not retried.
    async fn call_with_retry(
        &self,
        p: &OpenAiProvider,
        system: &str,
        user: &str,
        deadline: Instant,
    ) -> Result<String, CallError> {
        let mut tries = 0u32;
        loop {
            let err = match p.complete(system, user, deadline).await {
                Ok(s) => return Ok(s),
                Err(e) => e,
            };
            tries += 1;
            if tries > self.chunk_retries || matches!(err, CallError::BreakerOpen) {
                return Err(err);
            }
            let delay = match &err {
                CallError::RateLimited {
                    retry_after: Some(d),
                } => *d,
                _ => fleet_runtime::backoff::full_jitter(
                    tries,
                    CHUNK_RETRY_BASE,
                    CHUNK_RETRY_MAX,
                    &mut rand::rng(),
                ),
            };
            if Instant::now() + delay >= deadline {
                return Err(err);
            }
            tracing::debug!(provider = %p.name(), error = %err, try_ = tries, "chunk call failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// Direct summary, or map (chunks, bounded concurrency, progress each) then reduce.
    /// Each chunk call is retried within the attempt; a chunk whose calls keep failing is
    /// summarized extractively (unless every chunk failed: then the provider failed).
    async fn with_provider(
        &self,
        p: &OpenAiProvider,
        item: &Item,
        ctx: &JobContext,
        deadline: Instant,
    ) -> Result<Mapped, CallError> {
        if item.chunks.len() <= 1 {
            // A direct summary is the whole item: a failure goes to the next provider (and
            // a 429 to the job's retry) as before, not retried here.
            let s = p
                .complete(SYSTEM_MAP, &self.prompt(&item.text), deadline)
                .await?;
            ctx.progress(1, Some(1), &format!("summarized by {}", p.name()));
            return Ok(Mapped {
                text: s,
                chunks: 1,
                extractive_chunks: 0,
                extractive_reduce: false,
            });
        }
        let total = item.chunks.len() as u64 + 1;
        let mut mapped: Vec<Option<String>> = vec![None; item.chunks.len()];
        // Indices, not `&String` items: a borrowed stream item trips the higher-ranked
        // lifetime check of `async_trait`'s `Send` future.
        let chunks = &item.chunks;
        let mut calls = futures::stream::iter(0..chunks.len())
            .map(move |i| async move {
                let prompt = self.prompt(&chunks[i]);
                (
                    i,
                    self.call_with_retry(p, SYSTEM_MAP, &prompt, deadline).await,
                )
            })
            .buffer_unordered(self.map_concurrency);
        let mut done = 0u64;
        let mut failed: Vec<(usize, CallError)> = Vec::new();
        while let Some((i, r)) = calls.next().await {
            match r {
                Ok(s) => mapped[i] = Some(s),
                Err(e) => {
                    tracing::warn!(provider = %p.name(), chunk = i, error = %e, "chunk call failed after retries; summarizing it extractively");
                    failed.push((i, e));
                }
            }
            done += 1;
            ctx.progress(
                done,
                Some(total),
                &format!("chunk {i} summarized by {}", p.name()),
            );
        }
        drop(calls);
        if failed.len() == chunks.len() {
            // Nothing came from this provider: the next one (or extractive) takes the item.
            return Err(failed.swap_remove(0).1);
        }
        for (i, _) in &failed {
            // One chunk (bounded by the chunk size): a few milliseconds of TextRank, so it
            // runs inline rather than through the blocking pool.
            mapped[*i] = Some(extractive::summarize(&chunks[*i], &self.extractive));
        }
        let joined = mapped
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("\n\n");
        let reduce = format!(
            "Combine these partial summaries into one summary of at most {} sentences:\n\n{joined}",
            self.extractive.target_sentences
        );
        // The reduce is retried like a chunk; if it still fails, the chunk summaries
        // (the LLM's work) are combined extractively rather than thrown away: one bad
        // call costs the combining step, not the item.
        let (text, extractive_reduce) = match self
            .call_with_retry(p, SYSTEM_REDUCE, &reduce, deadline)
            .await
        {
            Ok(s) => (s, false),
            Err(e) => {
                tracing::warn!(provider = %p.name(), error = %e, "reduce call failed after retries; combining the chunk summaries extractively");
                (extractive::summarize(&joined, &self.extractive), true)
            }
        };
        ctx.progress(total, Some(total), &format!("reduced by {}", p.name()));
        Ok(Mapped {
            text,
            chunks: item.chunks.len(),
            extractive_reduce,
            extractive_chunks: failed.len(),
        })
    }
}
