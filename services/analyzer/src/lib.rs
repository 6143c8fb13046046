//! fleet-analyzer: the `analyze` stage (DESIGN §6). It runs the built-in text
//! analysis and the configured command analyzers over each item and passes
//! the item on to the next stage of its route.
//!
//! # Payload contract
//!
//! Input (the `analyze` job's payload, from the coordinator's submission item):
//!
//! ```json
//! {"text": "...", "metadata": {...}}
//! ```
//!
//! Output (the next job's payload, normally `summarize`): the input object,
//! every field kept (including `skipped_stages`), plus `analysis`:
//!
//! ```json
//! {"text": "...", "metadata": {...},
//!  "analysis": {"bytes": 1234, "words": 200, "sentences": 12, "reading_time_s": 53,
//!               "language": "en", "keywords": ["message queue", "..."],
//!               "media_type": "text/markdown",
//!               "outline": [{"level": 1, "text": "Fleet"}],
//!               "skipped": {"code_blocks": 3, "tables": 2, "front_matter": 0, "boilerplate": 0},
//!               "chunks": [{"index": 0, "start": 0, "end": 1234}], "chunk_basis": "prose",
//!               "analyzers": {"word_count": {"ok": true, "exit_code": 0, "output": 200,
//!                             "reason": null, "stderr_tail": "", "error": null,
//!                             "duration_ms": 3}},
//!               "failed_analyzers": []}}
//! ```
//!
//! The media type is `metadata.media_type`, else the extension of
//! `metadata.source`, else a sniff (see [`document`]). Markdown and HTML are
//! read as documents: words, sentences, language and keywords count only the
//! prose (code blocks, tables, front matter and HTML boilerplate are counted
//! in `skipped`, headings listed in `outline`, capped at 64). The prose itself
//! is not sent: the summarizer re-parses `text` (cheap) rather than every item
//! growing by a second copy of its text.
//!
//! Chunks are byte offsets into the prose (`chunk_basis: "prose"`; for plain
//! text the prose is `text` itself), not copies, so the output is the input plus
//! a bounded analysis: the coordinator's item limit relies on that. They are
//! sized in tokens of `FLEET_CHUNK_MODEL` when `FLEET_CHUNK_TOKENS` is set,
//! else in characters (`FLEET_CHUNK_CHARS`).
//!
//! An optional command analyzer that fails is listed in `failed_analyzers`
//! (the result is partial); a required one fails the job: retryable, or
//! permanent when its program does not exist or its stdout passes
//! `max_output_bytes` (reason `output_too_large`; none of that output is kept). A payload without a string
//! `text` is a permanent error.

pub mod analysis;
pub mod chunk;
pub mod command;
pub mod config;
pub mod document;
pub mod guard;
pub mod handler;
pub mod text;

pub use config::Config;
pub use handler::AnalyzeHandler;

use tokio_util::sync::CancellationToken;

/// The stage this service consumes by default.
pub const STAGE: &str = "analyze";

/// Runs the analyzer until `shutdown`, then drains (DESIGN §5 step 9).
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    // Every configuration error at once: the runtime's and the analyzers file's.
    let (analyzers, opts) = config.runtime.validate_with(
        None,
        config
            .load_analyzers()
            .and_then(|a| Ok((a, config.analysis()?))),
    )?;
    tracing::info!(
        analyzers = analyzers.len(),
        names = ?analyzers.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
        "command analyzers loaded"
    );
    let handler = AnalyzeHandler::new(opts, analyzers);
    fleet_runtime::Worker::new(config.runtime, STAGE)
        .run(handler, shutdown)
        .await
}
