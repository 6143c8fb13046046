//! fleet-summarizer: the `summarize` stage (DESIGN §6). Each item is
//! summarized by the first working provider: the configured OpenAI-compatible
//! endpoints in order (routed by item length, skipped while their breaker is
//! open), finally the built-in `extractive` TextRank summarizer, which is also
//! the default when no provider is configured.
//!
//! # Payload contract
//!
//! Input (the `summarize` job's payload, from the analyzer): `{"text", "metadata",
//! "analysis": {…, "chunks": [{index, start, end}], "chunk_basis": "prose", …}}`.
//! Only `text` is required; without `analysis.chunks` the item's prose is chunked
//! here. Chunk offsets index the prose (the text parsed for its media type) when
//! `chunk_basis` is `prose`, else (older analyzers) the text.
//!
//! Output (the next job's payload, normally `write`): the input object, every
//! field kept (including `skipped_stages`), plus `summary`:
//!
//! ```json
//! {"text": "...", "metadata": {...}, "analysis": {...},
//!  "summary": {"text": "...", "provider": "extractive", "fallback": true,
//!              "fallback_reason": "local: timed out: ...", "chunks": 1,
//!              "mixed": false, "extractive_chunks": 0, "extractive_reduce": false,
//!              "duration_ms": 12}}
//! ```
//!
//! A failed chunk call is retried within the attempt (`FLEET_CHUNK_RETRIES`,
//! bounded by the deadline); a chunk still failing is summarized extractively
//! and the summary is `mixed` (`extractive_chunks` says how many), with the
//! degradation `summary_mixed`: one bad call costs one chunk, not the item.
//! A reduce call still failing after its retries combines the LLM's chunk
//! summaries extractively (`extractive_reduce: true`, also `mixed`).
//!
//! `provider` is `extractive` or a configured provider's name; `fallback` is
//! true when a configured provider failed (error, timeout, open breaker) and
//! a later one produced the summary. A 429 with `Retry-After` from the last
//! provider becomes `JobError::RetryAfter` (on the job's last attempt the
//! extractive fallback is used instead, so the item is not lost).

pub mod config;
pub mod extractive;
pub mod handler;
pub mod openai;
pub mod summarize;
pub mod telemetry;

use std::sync::Arc;

pub use config::Config;
pub use handler::SummarizeHandler;
pub use summarize::{Summarizer, Summary};

use tokio_util::sync::CancellationToken;

/// The stage this service consumes by default.
pub const STAGE: &str = "summarize";

/// Builds the handler described by `config` (providers, breakers, clients).
pub fn build_handler(config: &Config) -> anyhow::Result<SummarizeHandler> {
    let providers = config
        .providers()?
        .into_iter()
        .map(|p| openai::OpenAiProvider::new(p).map(Arc::new))
        .collect::<anyhow::Result<Vec<_>>>()?;
    tracing::info!(
        providers = ?providers.iter().map(|p| p.name()).collect::<Vec<_>>(),
        extractive_fallback = config.extractive_fallback,
        "{}",
        if config.extractive_fallback {
            "summary providers (then extractive)"
        } else {
            "summary providers (no extractive fallback: intake pauses while none is usable)"
        }
    );
    let mut summarizer = Summarizer::new(providers, config.extractive(), config.map_concurrency)
        .with_chunk_retries(config.chunk_retries);
    if !config.extractive_fallback {
        summarizer = summarizer.without_fallback();
    }
    Ok(SummarizeHandler::new(
        Arc::new(summarizer),
        config.chunk_size()?,
        config.runtime.max_attempts,
    ))
}

/// Runs the summarizer until `shutdown`, then drains (DESIGN §5 step 9).
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    // Install the process-wide recorder now (the worker would on start) so the HELP texts
    // and the breakers' initial `fleet_circuit_state` are recorded, not lost.
    fleet_runtime::telemetry::admin::prometheus()?;
    telemetry::describe();
    // Every configuration error at once: the runtime's and the providers'.
    let handler = config.runtime.validate_with(None, build_handler(&config))?;
    let mut worker = fleet_runtime::Worker::new(config.runtime, STAGE);
    if let Some(gate) = pause_gate(&handler) {
        worker = worker.pause_when(gate);
    }
    worker.run(handler, shutdown).await
}

/// With the extractive fallback off, nothing is left once every provider's breaker is open:
/// the worker then pauses intake (DESIGN §6) instead of failing jobs into retries.
pub fn pause_gate(handler: &SummarizeHandler) -> Option<Arc<dyn fleet_runtime::IntakeGate>> {
    let s = handler.summarizer();
    if s.has_fallback() || s.providers().is_empty() {
        return None;
    }
    let breakers = s.providers().iter().map(|p| p.breaker().clone()).collect();
    Some(Arc::new(fleet_runtime::pause::AnyOf::new(
        breakers,
        "summary provider (the extractive fallback is off)",
    )))
}
