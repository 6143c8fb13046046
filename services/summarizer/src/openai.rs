//! An `openai` provider: one OpenAI-compatible `/v1/chat/completions` endpoint
//! with its pooled HTTP client, a concurrency limit whose wait is bounded by
//! the caller's deadline, connect / request / idle-read timeouts, and a
//! circuit breaker (policy `route`). Every request ends in one outcome metric.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fleet_runtime::breaker::Admission;
use fleet_runtime::{Breaker, BreakerConfig, BreakerPolicy};
use futures::StreamExt as _;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::config::{ProviderConfig, Secret};
use crate::telemetry;

/// Bytes of an error body quoted in an error message.
const ERROR_BODY_QUOTE: usize = 200;
/// Retry-After values above this are clamped (a misbehaving server must not park a job for a day).
/// Largest answer read from an LLM endpoint (a JSON completion, or a whole SSE stream): far
/// above any summary; a bigger one is a misbehaving endpoint, failed as `malformed` rather
/// than read until the summarizer runs out of memory.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
/// Longest SSE line kept while assembling a stream (one chunk is a few hundred bytes).
pub const MAX_SSE_LINE_BYTES: usize = 64 * 1024;
/// Bytes of an error body read to quote it (only the first ERROR_BODY_QUOTE characters are kept).
const ERROR_BODY_READ: usize = 8 * 1024;
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// Why a provider call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The breaker is open (or its half-open probe is taken).
    #[error("circuit breaker open")]
    BreakerOpen,
    /// No concurrency slot freed up in time.
    #[error("no free request slot within the deadline")]
    Busy,
    /// Connect, request or idle-read timeout (or the job deadline).
    #[error("timed out: {0}")]
    Timeout(String),
    /// HTTP 429.
    #[error("rate limited (HTTP 429{})", .retry_after.map(|d| format!(", retry after {}s", d.as_secs())).unwrap_or_default())]
    RateLimited {
        /// The `Retry-After` header, when present.
        retry_after: Option<Duration>,
    },
    /// Any other non-success status.
    #[error("HTTP {status}: {body}")]
    Http {
        /// Status code.
        status: u16,
        /// Start of the body.
        body: String,
    },
    /// Connection refused or reset, TLS failure, broken stream.
    #[error("transport error: {0}")]
    Transport(String),
    /// A response that is not a chat completion (bad JSON, no content, stream cut short).
    #[error("malformed response: {0}")]
    Malformed(String),
}

impl CallError {
    /// The `outcome` label of `fleet_llm_requests_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            CallError::BreakerOpen => "breaker_open",
            CallError::Busy | CallError::Timeout(_) => "timeout",
            CallError::RateLimited { .. } => "rate_limited",
            CallError::Http { .. } | CallError::Transport(_) => "error",
            CallError::Malformed(_) => "malformed",
        }
    }
}

/// One configured OpenAI-compatible provider.
pub struct OpenAiProvider {
    cfg: ProviderConfig,
    key: Option<Secret>,
    url: String,
    client: reqwest::Client,
    slots: Arc<Semaphore>,
    breaker: Arc<Breaker>,
    in_flight: Arc<AtomicUsize>,
}

impl std::fmt::Debug for OpenAiProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiProvider")
            .field("name", &self.cfg.name)
            .field("url", &self.url)
            .field("model", &self.cfg.model)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// Ends a request's bookkeeping on every path, including the future being dropped (job
/// deadline, a sibling chunk failed): frees the in-flight count and settles the breaker
/// admission (a dropped probe is handed back, so a half-open breaker never waits for a
/// probe that is gone).
struct CallGuard<'a> {
    provider: &'a OpenAiProvider,
    admission: Option<Admission>,
}

impl CallGuard<'_> {
    fn finish(mut self, ok: bool) {
        if let Some(a) = self.admission.take() {
            self.provider.breaker.record(a, ok);
        }
    }
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        self.provider.in_flight.fetch_sub(1, Ordering::SeqCst);
        metrics::gauge!(telemetry::LLM_IN_FLIGHT, "provider" => self.provider.cfg.name.clone())
            .decrement(1.0);
        if let Some(a) = self.admission.take() {
            // Dropped mid-call (sibling chunk failed, job ended): no evidence either way.
            self.provider.breaker.cancel_probe(a);
        }
    }
}

impl OpenAiProvider {
    /// Builds the provider: its client (pooled, with connect and pool-idle timeouts),
    /// its slots and its breaker. Reads the API key now, so a missing key fails start-up.
    pub fn new(cfg: ProviderConfig) -> anyhow::Result<OpenAiProvider> {
        let key = cfg.api_key()?;
        let client = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .pool_idle_timeout(cfg.pool_idle_timeout)
            .timeout(cfg.request_timeout)
            .user_agent(concat!("fleet-summarizer/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let breaker = Arc::new(Breaker::new(
            &format!("llm:{}", cfg.name),
            BreakerPolicy::Route,
            BreakerConfig {
                failure_threshold: cfg.breaker_failures,
                open_for: cfg.breaker_open_for,
                half_open_probes: 1,
            },
        ));
        Ok(OpenAiProvider {
            url: format!("{}/chat/completions", cfg.base_url.trim_end_matches('/')),
            slots: Arc::new(Semaphore::new(cfg.max_concurrency)),
            key,
            client,
            breaker,
            in_flight: Arc::default(),
            cfg,
        })
    }

    /// The provider's name.
    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// Its configuration.
    pub fn config(&self) -> &ProviderConfig {
        &self.cfg
    }

    /// Its circuit breaker (dependency `llm:<name>` in `fleet_circuit_state`).
    pub fn breaker(&self) -> &Arc<Breaker> {
        &self.breaker
    }

    /// Requests running now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Free concurrency slots now.
    pub fn free_slots(&self) -> usize {
        self.slots.available_permits()
    }

    fn count(&self, outcome: &'static str) {
        metrics::counter!(telemetry::LLM_REQUESTS, "provider" => self.cfg.name.clone(), "outcome" => outcome)
            .increment(1);
    }

    /// One chat completion (`system` + `user` messages), finished before `deadline`.
    pub async fn complete(
        &self,
        system: &str,
        user: &str,
        deadline: Instant,
    ) -> Result<String, CallError> {
        let Some(admission) = self.breaker.admit() else {
            self.count("breaker_open");
            return Err(CallError::BreakerOpen);
        };
        let permit = match tokio::time::timeout_at(deadline, self.slots.acquire()).await {
            Ok(Ok(p)) => p,
            _ => {
                self.breaker.cancel_probe(admission);
                self.count("timeout");
                return Err(CallError::Busy);
            }
        };
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        metrics::gauge!(telemetry::LLM_IN_FLIGHT, "provider" => self.cfg.name.clone())
            .increment(1.0);
        let guard = CallGuard {
            provider: self,
            admission: Some(admission),
        };
        let started = Instant::now();
        let bound = deadline.min(started + self.cfg.request_timeout);
        let result = match tokio::time::timeout_at(bound, self.request(system, user, bound)).await {
            Ok(r) => r,
            Err(_) => Err(CallError::Timeout(format!(
                "no complete answer within {:?}",
                bound.saturating_duration_since(started)
            ))),
        };
        metrics::histogram!(telemetry::LLM_REQUEST_DURATION, "provider" => self.cfg.name.clone())
            .record(started.elapsed().as_secs_f64());
        self.count(match &result {
            Ok(_) => "ok",
            Err(e) => e.outcome(),
        });
        guard.finish(result.is_ok());
        drop(permit);
        result
    }

    async fn request(&self, system: &str, user: &str, bound: Instant) -> Result<String, CallError> {
        let mut body = json!({
            "model": self.cfg.model,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": user},
            ],
            "stream": self.cfg.stream,
        });
        if let Some(t) = self.cfg.max_tokens {
            body["max_tokens"] = json!(t);
        }
        if let Some(t) = self.cfg.temperature {
            body["temperature"] = json!(t);
        }
        let mut req = self
            .client
            .post(&self.url)
            .timeout(bound.saturating_duration_since(Instant::now()))
            .json(&body);
        if let Some(k) = &self.key {
            req = req.bearer_auth(k.expose());
        }
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        if status.as_u16() == 429 {
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
            return Err(CallError::RateLimited { retry_after });
        }
        if !status.is_success() {
            let text = tokio::time::timeout(
                self.cfg.idle_read_timeout,
                read_prefix(resp, ERROR_BODY_READ),
            )
            .await
            .unwrap_or_default();
            return Err(CallError::Http {
                status: status.as_u16(),
                body: quote(&text),
            });
        }
        let is_sse = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if is_sse {
            self.read_stream(resp).await
        } else {
            let bytes = read_capped(resp, MAX_RESPONSE_BYTES).await?;
            parse_completion(&bytes)
        }
    }

    /// Reads an SSE stream of `chat.completion.chunk`s, each within `idle_read_timeout`.
    async fn read_stream(&self, resp: reqwest::Response) -> Result<String, CallError> {
        let mut stream = resp.bytes_stream();
        let mut sse = SseAssembler::default();
        let mut read = 0usize;
        loop {
            let next = tokio::time::timeout(self.cfg.idle_read_timeout, stream.next())
                .await
                .map_err(|_| {
                    CallError::Timeout(format!(
                        "stream stalled: no data for {:?} (idle_read_timeout)",
                        self.cfg.idle_read_timeout
                    ))
                })?;
            match next {
                None => return sse.finish(),
                Some(Err(e)) => return Err(transport(e)),
                Some(Ok(bytes)) => {
                    read += bytes.len();
                    if read > MAX_RESPONSE_BYTES {
                        return Err(too_long(MAX_RESPONSE_BYTES));
                    }
                    if sse.feed(&bytes)? {
                        return sse.finish();
                    }
                }
            }
        }
    }
}

/// The whole body, failing `Malformed` once it passes `cap` bytes (nothing past it is read).
async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Result<Vec<u8>, CallError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > cap {
            return Err(too_long(cap));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// At most the first `max` bytes of the body, as text (errors: what was read so far).
async fn read_prefix(mut resp: reqwest::Response, max: usize) -> String {
    let mut body = Vec::new();
    while body.len() < max {
        match resp.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(max);
    String::from_utf8_lossy(&body).into_owned()
}

fn too_long(cap: usize) -> CallError {
    CallError::Malformed(format!(
        "the answer exceeds {cap} bytes; the endpoint misbehaves"
    ))
}

fn transport(e: reqwest::Error) -> CallError {
    if e.is_timeout() {
        CallError::Timeout(e.to_string())
    } else {
        CallError::Transport(e.to_string())
    }
}

fn quote(s: &str) -> String {
    let end = s
        .char_indices()
        .nth(ERROR_BODY_QUOTE)
        .map_or(s.len(), |(i, _)| i);
    s[..end].trim().to_owned()
}

/// The message content of a non-streamed chat completion.
pub fn parse_completion(body: &[u8]) -> Result<String, CallError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| CallError::Malformed(format!("not JSON: {e}")))?;
    let content = v["choices"][0]["message"]["content"]
        .as_str()
        .ok_or_else(|| CallError::Malformed("no choices[0].message.content".into()))?;
    non_empty(content)
}

fn non_empty(s: &str) -> Result<String, CallError> {
    let t = s.trim();
    if t.is_empty() {
        Err(CallError::Malformed("empty completion".into()))
    } else {
        Ok(t.to_owned())
    }
}

/// Assembles the content of an SSE stream of chat completion chunks.
#[derive(Debug, Default)]
pub struct SseAssembler {
    line: Vec<u8>,
    content: String,
    finished: bool,
}

impl SseAssembler {
    /// Feeds bytes; true once `data: [DONE]` arrived.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<bool, CallError> {
        for &b in bytes {
            if b != b'\n' {
                if self.line.len() >= MAX_SSE_LINE_BYTES {
                    return Err(CallError::Malformed(format!(
                        "a stream line exceeds {MAX_SSE_LINE_BYTES} bytes; the endpoint misbehaves"
                    )));
                }
                self.line.push(b);
                continue;
            }
            let line = std::mem::take(&mut self.line);
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches('\r');
            let Some(data) = line.strip_prefix("data:") else {
                continue; // comments, event:, id:, blank separators
            };
            let data = data.trim();
            if data == "[DONE]" {
                self.finished = true;
                return Ok(true);
            }
            let v: Value = serde_json::from_str(data)
                .map_err(|e| CallError::Malformed(format!("bad stream chunk: {e}")))?;
            if let Some(err) = v.get("error") {
                return Err(CallError::Http {
                    status: 200,
                    body: quote(&err.to_string()),
                });
            }
            if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
                self.content.push_str(c);
            }
            if v["choices"][0]["finish_reason"].is_string() {
                self.finished = true;
            }
        }
        Ok(false)
    }

    /// The assembled content; the stream must have finished (`[DONE]` or a finish_reason).
    pub fn finish(self) -> Result<String, CallError> {
        if !self.finished {
            return Err(CallError::Malformed(
                "stream ended before [DONE] or a finish_reason".into(),
            ));
        }
        non_empty(&self.content)
    }

    /// Whether `[DONE]` or a `finish_reason` was seen.
    pub fn saw_finish(&self) -> bool {
        self.finished
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_assembly_across_split_chunks() {
        let mut a = SseAssembler::default();
        let part1 = b"data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\ndata: {\"choi";
        let part2 = b"ces\":[{\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\r\n\r\n: keepalive\ndata: [DONE]\n\n";
        assert!(!a.feed(part1).unwrap());
        assert!(a.feed(part2).unwrap());
        assert!(a.saw_finish());
        assert_eq!(a.finish().unwrap(), "Hello");
        let mut bad = SseAssembler::default();
        assert!(matches!(
            bad.feed(b"data: {nope\n"),
            Err(CallError::Malformed(_))
        ));
        assert!(matches!(
            SseAssembler::default().finish(),
            Err(CallError::Malformed(_))
        ));
    }

    #[test]
    fn completion_parsing() {
        let ok = br#"{"choices":[{"message":{"role":"assistant","content":" Sum. "}}]}"#;
        assert_eq!(parse_completion(ok).unwrap(), "Sum.");
        assert!(matches!(
            parse_completion(b"{\"choices\":[]}"),
            Err(CallError::Malformed(_))
        ));
        assert!(matches!(
            parse_completion(b"<html>"),
            Err(CallError::Malformed(_))
        ));
        assert_eq!(
            CallError::RateLimited { retry_after: None }.outcome(),
            "rate_limited"
        );
    }
}
