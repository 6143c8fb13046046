//! The in-process baseline: the same items through the same code the services run for each
//! job (the analyzer's built-in analysis, the extractive summarizer, and the JSON encode and
//! decode of the three stage envelopes), in one thread, with no broker, runtime or database.
//! What the services need on top of this is the cost of the queue and database path.

use std::time::Duration;

use anyhow::Context as _;
use fleet_analyzer::analysis::{AnalysisOptions, analyze};
use fleet_protocol::{DEFAULT_MAX_MESSAGE_BYTES, JobEnvelope, decode_job};
use fleet_summarizer::extractive::{ExtractiveOptions, summarize};
use serde_json::{Value, json};

use super::corpus::{Item, Size};

/// Where the baseline thread spent its time.
#[derive(Debug, Clone, Default)]
pub struct Baseline {
    /// Items processed.
    pub items: usize,
    /// Wall time of the whole loop (one thread).
    pub total: Duration,
    /// Built-in analysis, per size class (small, large).
    pub analyze: [Duration; 2],
    /// Extractive summary, per size class.
    pub summarize: [Duration; 2],
    /// Envelope JSON encode + decode of the three stage jobs, per size class.
    pub json: [Duration; 2],
    /// Items per size class.
    pub count: [usize; 2],
    /// Mean summary length in characters.
    pub mean_summary_chars: f64,
}

fn class(s: Size) -> usize {
    match s {
        Size::Small => 0,
        Size::Large => 1,
    }
}

/// One wire hop: encode the envelope and decode it as the next worker does.
fn hop(job: &JobEnvelope) -> anyhow::Result<JobEnvelope> {
    decode_job(&job.to_bytes(), DEFAULT_MAX_MESSAGE_BYTES).context("decoding a job envelope")
}

/// Runs every item through analysis, summary and the three envelope hops, timing each part.
pub fn run(items: &[Item]) -> anyhow::Result<Baseline> {
    let (aopts, sopts) = (AnalysisOptions::default(), ExtractiveOptions::default());
    let mut b = Baseline {
        items: items.len(),
        ..Baseline::default()
    };
    let mut summary_chars = 0usize;
    let started = std::time::Instant::now();
    for item in items {
        let c = class(item.size);
        b.count[c] += 1;
        let job = super::measure::envelope("baseline", item);

        let t = std::time::Instant::now();
        let job = hop(&job)?;
        b.json[c] += t.elapsed();

        let t = std::time::Instant::now();
        let text = job
            .payload
            .get("text")
            .and_then(Value::as_str)
            .unwrap_or("");
        let analysis = serde_json::to_value(analyze(text, &aopts))?;
        b.analyze[c] += t.elapsed();

        let t = std::time::Instant::now();
        let mut payload = job.payload.clone();
        payload["analysis"] = analysis;
        let next = job.next_job(payload).context("route ended early")?;
        let next = hop(&next)?;
        b.json[c] += t.elapsed();

        let t = std::time::Instant::now();
        let text = next
            .payload
            .get("text")
            .and_then(Value::as_str)
            .unwrap_or("");
        let summary = summarize(text, &sopts);
        b.summarize[c] += t.elapsed();
        summary_chars += summary.chars().count();
        anyhow::ensure!(!summary.trim().is_empty(), "empty summary for {}", item.id);

        let t = std::time::Instant::now();
        let mut payload = next.payload.clone();
        payload["summary"] = json!({"text": summary, "provider": "extractive"});
        let write = next.next_job(payload).context("route ended early")?;
        std::hint::black_box(hop(&write)?);
        b.json[c] += t.elapsed();
    }
    b.total = started.elapsed();
    b.mean_summary_chars = summary_chars as f64 / items.len().max(1) as f64;
    Ok(b)
}
