//! The summarizer's own metrics (labels from closed sets: provider names come
//! from the config, outcomes from [`OUTCOMES`]).

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Counter `{provider,outcome}`: LLM requests by result.
pub const LLM_REQUESTS: &str = "fleet_llm_requests_total";
/// Histogram `{provider}`: LLM request wall time (requests that were sent).
pub const LLM_REQUEST_DURATION: &str = "fleet_llm_request_duration_seconds";
/// Gauge `{provider}`: LLM requests running now.
pub const LLM_IN_FLIGHT: &str = "fleet_llm_requests_in_flight";
/// Counter `{provider,fallback}`: summaries produced, by who produced them and whether it was a fallback.
pub const SUMMARIES: &str = "fleet_summaries_total";

/// The closed set of `outcome` values of [`LLM_REQUESTS`].
pub const OUTCOMES: [&str; 6] = [
    "ok",
    "error",
    "timeout",
    "rate_limited",
    "malformed",
    "breaker_open",
];

/// Registers HELP text for the summarizer's metrics. Call after the recorder is
/// installed (the runtime installs it when the worker starts).
pub fn describe() {
    describe_counter!(
        LLM_REQUESTS,
        "LLM requests by provider and outcome (ok, error, timeout, rate_limited, malformed, breaker_open)."
    );
    describe_histogram!(
        LLM_REQUEST_DURATION,
        Unit::Seconds,
        "LLM request wall time, by provider."
    );
    describe_gauge!(LLM_IN_FLIGHT, "LLM requests running now, by provider.");
    describe_counter!(
        SUMMARIES,
        "Summaries produced, by the provider that produced them and whether it was a fallback."
    );
}
