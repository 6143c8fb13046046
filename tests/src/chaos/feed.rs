//! Submitting the campaign's pipeline: created open, mixed items appended in batches (all
//! at once, or at a steady rate), then sealed. Every request is retried on whichever
//! coordinator replica is up (appends are idempotent per item), within a bound.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_test_support::corpus;
use serde_json::{Value, json};

use crate::procs::http;

/// How long one request may keep failing (coordinators down, database unreachable).
const REQUEST_BOUND: Duration = Duration::from_secs(180);
/// Marker of an item that makes the analyzer crash its whole process (see [`super::poison`]).
pub const CRASH_MARKER: &str = "CHAOS-POISON-CRASH";
/// Marker of an item the analyzer refuses as malformed (see [`super::poison`]).
pub const MALFORMED_MARKER: &str = "CHAOS-POISON-MALFORMED";

/// What the feed shares with the scenario's control loop.
#[derive(Debug, Default)]
pub struct FeedState {
    /// The API addresses of the live coordinators (kept current by the control loop).
    pub apis: Mutex<Vec<SocketAddr>>,
    /// While true, 1 % of the items appended are poison.
    pub poison: AtomicBool,
    /// Items appended so far.
    pub appended: AtomicUsize,
    /// The poison items appended: `(item_id, marker)`.
    pub poisoned: Mutex<Vec<(String, &'static str)>>,
    /// Set once the pipeline is sealed.
    pub sealed: AtomicBool,
}

/// How the items are sent.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// Every item at once, in batches of 25.
    Burst,
    /// `batch` items every `every`.
    Steady {
        /// Items per append.
        batch: usize,
        /// Time between appends.
        every: Duration,
    },
}

/// The poison marker of item number `i`, when it is one (1 in 100, alternating kinds).
pub fn poison_marker(i: usize) -> Option<&'static str> {
    (i % 100 == 50).then(|| {
        if (i / 100).is_multiple_of(2) {
            CRASH_MARKER
        } else {
            MALFORMED_MARKER
        }
    })
}

/// One request to any live coordinator, retried until it answers 2xx, or a 4xx that
/// retrying cannot change, or the bound passes.
pub async fn call(
    state: &FeedState,
    method: &str,
    path: &str,
    body: &Value,
) -> Result<Value, String> {
    let body = body.to_string();
    let deadline = tokio::time::Instant::now() + REQUEST_BOUND;
    let mut last = String::new();
    loop {
        let apis = state.apis.lock().map(|a| a.clone()).unwrap_or_default();
        for api in apis {
            match http(api, method, path, Some(&body)).await {
                Ok((s, b)) if (200..300).contains(&s) => {
                    return Ok(serde_json::from_str(&b).unwrap_or(Value::Null));
                }
                Ok((s, b)) if (400..500).contains(&s) && ![408, 409, 429].contains(&s) => {
                    return Err(format!("{method} {path}: {s} {b}"));
                }
                Ok((s, b)) => last = format!("{s} {}", b.chars().take(200).collect::<String>()),
                Err(e) => last = e.to_string(),
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "{method} {path} failed for {REQUEST_BOUND:?}; last: {last}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Creates pipeline `pid` open, appends `items` mixed items (from `seed`) at `pace`, seals it.
pub async fn run(
    state: Arc<FeedState>,
    pid: String,
    items: usize,
    seed: u64,
    pace: Pace,
) -> Result<(), String> {
    let all = corpus::items(seed, items, 40);
    call(
        &state,
        "POST",
        "/v1/pipelines",
        &json!({"v": 1, "pipeline_id": pid, "items": [], "open": true}),
    )
    .await?;
    let (batch, every) = match pace {
        Pace::Burst => (25, Duration::ZERO),
        Pace::Steady { batch, every } => (batch.max(1), every),
    };
    let mut next = tokio::time::Instant::now();
    for (n, chunk) in all.chunks(batch).enumerate() {
        if !every.is_zero() {
            tokio::time::sleep_until(next).await;
            next += every;
        }
        let poison = state.poison.load(Ordering::SeqCst);
        let list: Vec<Value> = chunk
            .iter()
            .enumerate()
            .map(|(k, item)| {
                let i = n * batch + k;
                match poison_marker(i).filter(|_| poison) {
                    Some(marker) => {
                        if let Ok(mut p) = state.poisoned.lock() {
                            p.push((item.id.clone(), marker));
                        }
                        json!({"item_id": item.id, "text": format!("{}\n\n{marker}", item.text)})
                    }
                    None => json!({"item_id": item.id, "text": item.text}),
                }
            })
            .collect();
        call(
            &state,
            "POST",
            &format!("/v1/pipelines/{pid}/items"),
            &json!({"v": 1, "items": list}),
        )
        .await?;
        state.appended.fetch_add(chunk.len(), Ordering::SeqCst);
    }
    call(
        &state,
        "POST",
        &format!("/v1/pipelines/{pid}/seal"),
        &json!({"item_count": items}),
    )
    .await?;
    state.sealed.store(true, Ordering::SeqCst);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_in_a_hundred_is_poison_alternating() {
        let marks: Vec<_> = (0..400).filter_map(poison_marker).collect();
        assert_eq!(
            marks,
            [
                CRASH_MARKER,
                MALFORMED_MARKER,
                CRASH_MARKER,
                MALFORMED_MARKER
            ]
        );
    }
}
