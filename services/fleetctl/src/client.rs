//! The coordinator's HTTP API client: bearer token, connect and request
//! timeouts on every call, and errors turned into what the user should do.

use std::time::Duration;

use anyhow::Context as _;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cli::Connection;
use crate::exit::{self, Failure};

/// What a 404 means for one call, e.g. `("pipeline", "p1")`.
#[derive(Debug, Clone, Copy)]
pub struct Lookup<'a> {
    /// The kind of thing looked up.
    pub what: &'a str,
    /// Its id.
    pub id: &'a str,
    /// The command that lists such things.
    pub list_with: &'a str,
}

impl<'a> Lookup<'a> {
    /// A pipeline lookup.
    pub fn pipeline(id: &'a str) -> Lookup<'a> {
        Lookup {
            what: "pipeline",
            id,
            list_with: "fleetctl list",
        }
    }
}

/// A client of one coordinator.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    request_timeout: Duration,
}

impl Client {
    /// A client for `conn`; a malformed URL is a usage error.
    pub fn new(conn: &Connection) -> anyhow::Result<Client> {
        let base = conn.url.trim_end_matches('/').to_owned();
        let parsed = reqwest::Url::parse(&base).map_err(|e| {
            Failure::usage(format!("--url `{}` is not a URL: {e}", conn.url))
                .hint("give the coordinator's base URL, e.g. http://127.0.0.1:8080")
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(
                Failure::usage(format!("--url `{}` is not an http(s) URL", conn.url))
                    .hint("give the coordinator's base URL, e.g. http://127.0.0.1:8080")
                    .into(),
            );
        }
        let http = reqwest::Client::builder()
            .connect_timeout(conn.connect_timeout)
            .user_agent(concat!("fleetctl/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client")?;
        let token = conn.token.clone().filter(|t| !t.trim().is_empty());
        Ok(Client {
            http,
            base,
            token,
            request_timeout: conn.request_timeout,
        })
    }

    /// The per-request timeout (also the idle limit of streams).
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    fn builder(&self, method: Method, path: &str) -> RequestBuilder {
        let rb = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// `GET path` → JSON.
    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        lookup: Option<Lookup<'_>>,
    ) -> anyhow::Result<T> {
        let rb = self.builder(Method::GET, path);
        let resp = self.send(rb.timeout(self.request_timeout), lookup).await?;
        self.json(resp, path).await
    }

    /// `GET path` → JSON, or `None` when the coordinator has no such endpoint (404).
    pub async fn get_if_exists<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> anyhow::Result<Option<T>> {
        let rb = self
            .builder(Method::GET, path)
            .timeout(self.request_timeout);
        let resp = rb.send().await.map_err(|e| self.transport(&e))?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(self.refusal(resp, None).await.into());
        }
        self.json(resp, path).await.map(Some)
    }

    /// `POST path` with a JSON body and extra headers → `(status, JSON)`.
    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
        headers: &[(&str, &str)],
        lookup: Option<Lookup<'_>>,
    ) -> anyhow::Result<(StatusCode, T)> {
        let mut rb = self.builder(Method::POST, path).json(body);
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        let resp = self.send(rb.timeout(self.request_timeout), lookup).await?;
        let status = resp.status();
        Ok((status, self.json(resp, path).await?))
    }

    /// Opens a Server-Sent Events stream: only the response head is bounded by the
    /// request timeout; the caller bounds each read.
    pub async fn stream(&self, path: &str, lookup: Option<Lookup<'_>>) -> anyhow::Result<Response> {
        let rb = self
            .builder(Method::GET, path)
            .header(reqwest::header::ACCEPT, "text/event-stream");
        match tokio::time::timeout(self.request_timeout, self.send(rb, lookup)).await {
            Ok(r) => r,
            Err(_) => Err(self.timed_out().into()),
        }
    }

    async fn send(
        &self,
        rb: RequestBuilder,
        lookup: Option<Lookup<'_>>,
    ) -> anyhow::Result<Response> {
        let resp = rb.send().await.map_err(|e| self.transport(&e))?;
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(self.refusal(resp, lookup).await.into())
        }
    }

    async fn json<T: DeserializeOwned>(&self, resp: Response, path: &str) -> anyhow::Result<T> {
        let bytes = resp.bytes().await.map_err(|e| self.transport(&e))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            Failure::new(
                exit::RUNTIME,
                format!("unexpected answer from {}{path}: {e}", self.base),
            )
            .hint("is --url pointing at fleet-coordinator?")
            .into()
        })
    }

    fn timed_out(&self) -> Failure {
        Failure::new(
            exit::UNREACHABLE,
            format!(
                "the coordinator at {} did not answer within {}",
                self.base,
                humantime::format_duration(self.request_timeout)
            ),
        )
        .hint("is fleet-coordinator running and healthy there? raise --request-timeout if it is just slow")
    }

    /// Maps a transport error (no HTTP answer).
    pub fn transport(&self, e: &reqwest::Error) -> Failure {
        if e.is_timeout() && !e.is_connect() {
            return self.timed_out();
        }
        let cause = if e.is_connect() {
            root_cause(e)
        } else {
            error_chain(e)
        };
        if e.is_connect() || e.is_request() || e.is_timeout() {
            Failure::new(
                exit::UNREACHABLE,
                format!("cannot reach the coordinator at {}: {cause}", self.base),
            )
            .hint(format!(
                "is fleet-coordinator running at {}? set --url/FLEET_COORDINATOR_URL",
                self.base
            ))
        } else {
            Failure::new(
                exit::RUNTIME,
                format!(
                    "talking to the coordinator at {} failed: {cause}",
                    self.base
                ),
            )
        }
    }

    /// Maps a non-2xx answer.
    async fn refusal(&self, resp: Response, lookup: Option<Lookup<'_>>) -> Failure {
        let status = resp.status();
        let text = tokio::time::timeout(self.request_timeout, resp.text())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let (error, hint) = match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(v) => (
                v["error"].as_str().map(str::to_owned),
                v["hint"].as_str().map(str::to_owned),
            ),
            Err(_) => (None, None),
        };
        let error = error.unwrap_or_else(|| {
            let t = text.trim();
            if t.is_empty() {
                status.to_string()
            } else {
                format!("{status}: {}", truncate(t, 300))
            }
        });
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Failure::usage(format!(
                "the coordinator at {} refused the request: {error}",
                self.base
            ))
            .hint("set FLEET_API_TOKEN (or --token) to the coordinator's API token"),
            StatusCode::NOT_FOUND => match lookup {
                Some(l) => Failure::new(
                    exit::NOT_FOUND,
                    format!("no {} `{}` at {}", l.what, l.id, self.base),
                )
                .hint(format!("check the id; `{}` shows them", l.list_with)),
                None => Failure::new(exit::NOT_FOUND, error).hint(hint.unwrap_or_else(|| {
                    "is --url pointing at fleet-coordinator (and is it up to date)?".into()
                })),
            },
            s if s.is_client_error() => {
                let f = Failure::usage(format!("the coordinator rejected the request: {error}"));
                match hint {
                    Some(h) => f.hint(h),
                    None => f,
                }
            }
            _ => {
                let f = Failure::new(exit::RUNTIME, format!("the coordinator failed: {error}"));
                f.hint(hint.unwrap_or_else(|| "retry shortly; see the coordinator's logs".into()))
            }
        }
    }
}

/// The innermost source of `e` (e.g. `Connection refused (os error 111)`).
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// `e` and its sources, joined with `: `, without repeats.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    parts.join(": ")
}

/// At most `n` characters of `s`, with `…` when cut.
pub fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(n.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// Percent-encodes one path segment or query value.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `?k=v&…` from the pairs whose value is set (empty when none).
pub fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_and_queries() {
        assert_eq!(encode("a b/ü"), "a%20b%2F%C3%BC");
        assert_eq!(query(&[("a", None), ("b", Some("x y".into()))]), "?b=x%20y");
        assert_eq!(query(&[("a", None)]), "");
    }

    #[test]
    fn truncation() {
        assert_eq!(truncate("hello", 10), "hello");
        assert_eq!(truncate("hello world", 6), "hello…");
    }
}
