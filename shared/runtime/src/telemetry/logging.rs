//! Log set-up: `tracing` events, JSON in containers or pretty for a terminal.

use clap::ValueEnum;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (containers).
    Json,
    /// Human-readable.
    Pretty,
}

/// Default filter. lapin logs every message the broker returns (unroutable) at `warn` with its
/// whole body; the adapter already turns a return into the publisher's error, which callers
/// log rate-limited, so those lines only flood the log (issue 8: ~19 MB a minute).
pub const DEFAULT_FILTER: &str = "info,lapin::returned_messages=error";

/// Installs the global subscriber; `RUST_LOG` filters (default [`DEFAULT_FILTER`]). Safe to call twice.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}
