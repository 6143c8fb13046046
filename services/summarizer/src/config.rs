//! The summarizer's configuration: runtime flags, summary targets, and the
//! `openai` providers (a TOML file of `[[provider]]` tables and/or one
//! provider from flags). API keys come from an env var or a secret file and
//! are never printed: [`Secret`]'s `Debug` redacts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use fleet_runtime::RuntimeConfig;
use serde::{Deserialize, Deserializer};

use crate::extractive::{DEFAULT_TARGET_CHARS, DEFAULT_TARGET_SENTENCES, ExtractiveOptions};

/// Default TCP+TLS connect bound: a reachable endpoint connects in well under this.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default bound on one completion request (long generations on slow local models).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Default bound between two streamed chunks: a stalled stream is cut after this.
pub const DEFAULT_IDLE_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default idle time after which pooled connections are closed.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Default concurrent requests per provider (a small local server serves a few at once).
pub const DEFAULT_MAX_CONCURRENCY: usize = 4;
/// Default consecutive failures that open a provider's breaker.
pub const DEFAULT_BREAKER_FAILURES: u32 = 5;
/// Default time a provider's breaker stays open before a probe.
pub const DEFAULT_BREAKER_OPEN_FOR: Duration = Duration::from_secs(30);
/// Default chunks summarized at once per item (map step).
pub const DEFAULT_MAP_CONCURRENCY: usize = 4;

/// fleet-summarizer: consumes `summarize` jobs and summarizes each item through its
/// providers (OpenAI-compatible endpoints, in order), falling back to the built-in
/// extractive summarizer.
#[derive(Debug, Clone, Parser)]
#[command(name = "fleet-summarizer", version)]
pub struct Config {
    /// Runtime options shared by every fleet worker.
    #[command(flatten)]
    pub runtime: RuntimeConfig,

    /// TOML file of `[[provider]]` tables (OpenAI-compatible endpoints, tried in order).
    #[arg(long, env = "FLEET_PROVIDERS_CONFIG", help_heading = "Summarizer")]
    pub providers_config: Option<PathBuf>,

    /// Base URL (…/v1) of one OpenAI-compatible provider given by flags (tried after the file's).
    #[arg(long, env = "FLEET_OPENAI_BASE_URL", help_heading = "Summarizer")]
    pub openai_base_url: Option<String>,

    /// Name of the flag-configured provider (metrics label, `summary.provider`).
    #[arg(
        long,
        env = "FLEET_OPENAI_NAME",
        default_value = "openai",
        help_heading = "Summarizer"
    )]
    pub openai_name: String,

    /// Model of the flag-configured provider.
    #[arg(
        long,
        env = "FLEET_OPENAI_MODEL",
        default_value = "gpt-4o-mini",
        help_heading = "Summarizer"
    )]
    pub openai_model: String,

    /// Environment variable holding the flag-configured provider's API key.
    #[arg(long, env = "FLEET_OPENAI_API_KEY_ENV", help_heading = "Summarizer")]
    pub openai_api_key_env: Option<String>,

    /// File holding the flag-configured provider's API key (e.g. a mounted secret).
    #[arg(long, env = "FLEET_OPENAI_API_KEY_FILE", help_heading = "Summarizer")]
    pub openai_api_key_file: Option<PathBuf>,

    /// Request timeout of the flag-configured provider.
    #[arg(long, env = "FLEET_OPENAI_REQUEST_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration, help_heading = "Summarizer")]
    pub openai_request_timeout: Duration,

    /// Concurrent requests to the flag-configured provider.
    #[arg(long, env = "FLEET_OPENAI_MAX_CONCURRENCY", default_value_t = DEFAULT_MAX_CONCURRENCY, help_heading = "Summarizer")]
    pub openai_max_concurrency: usize,

    /// Most sentences in a summary.
    #[arg(long, env = "FLEET_TARGET_SENTENCES", default_value_t = DEFAULT_TARGET_SENTENCES, help_heading = "Summarizer")]
    pub target_sentences: usize,

    /// Most characters in an extractive summary (also asked of LLM providers).
    #[arg(long, env = "FLEET_TARGET_CHARS", default_value_t = DEFAULT_TARGET_CHARS, help_heading = "Summarizer")]
    pub target_chars: usize,

    /// Chunk size for long items without analysis chunks, in characters.
    #[arg(long, env = "FLEET_CHUNK_CHARS", default_value_t = fleet_analyzer::chunk::DEFAULT_CHUNK_CHARS, help_heading = "Summarizer")]
    pub chunk_chars: usize,

    /// Chunk size for long items without analysis chunks, in tokens of FLEET_CHUNK_MODEL's
    /// encoding; unset: characters (FLEET_CHUNK_CHARS).
    #[arg(long, env = "FLEET_CHUNK_TOKENS", help_heading = "Summarizer")]
    pub chunk_tokens: Option<usize>,

    /// Model whose tokenizer counts FLEET_CHUNK_TOKENS (an OpenAI model name, e.g. gpt-4o).
    #[arg(long, env = "FLEET_CHUNK_MODEL", default_value = fleet_analyzer::chunk::DEFAULT_CHUNK_MODEL, help_heading = "Summarizer")]
    pub chunk_model: String,

    /// Retries of a failed chunk call within one attempt (bounded by the attempt's
    /// deadline); a chunk still failing is summarized extractively (a `mixed` summary).
    #[arg(long, env = "FLEET_CHUNK_RETRIES", default_value_t = DEFAULT_CHUNK_RETRIES, help_heading = "Summarizer")]
    pub chunk_retries: u32,

    /// Chunks of one item summarized at once (map step of long items).
    #[arg(long, env = "FLEET_MAP_CONCURRENCY", default_value_t = DEFAULT_MAP_CONCURRENCY, help_heading = "Summarizer")]
    pub map_concurrency: usize,

    /// Fall back to the built-in extractive summarizer when every provider fails; `false`:
    /// the job fails (retried, then dead-lettered) so an LLM summary is never replaced silently.
    #[arg(long, env = "FLEET_EXTRACTIVE_FALLBACK", default_value_t = true, action = clap::ArgAction::Set, help_heading = "Summarizer")]
    pub extractive_fallback: bool,
}

/// Default retries of a failed chunk call: at a 15 % per-request failure rate two retries
/// leave about 1 chunk in 300 to the extractive fallback.
pub const DEFAULT_CHUNK_RETRIES: u32 = 2;

impl Config {
    /// The chunk bound for items without analysis chunks; an error names a model
    /// without a tokenizer.
    pub fn chunk_size(&self) -> anyhow::Result<fleet_analyzer::chunk::ChunkSize> {
        fleet_analyzer::chunk::ChunkSize::from_settings(
            self.chunk_chars,
            self.chunk_tokens,
            &self.chunk_model,
        )
        .map_err(anyhow::Error::msg)
    }

    /// The extractive summary target.
    pub fn extractive(&self) -> ExtractiveOptions {
        ExtractiveOptions {
            target_sentences: self.target_sentences,
            target_chars: self.target_chars,
        }
    }

    /// Every configured provider: the file's, then the one from flags.
    pub fn providers(&self) -> anyhow::Result<Vec<ProviderConfig>> {
        let mut out = match &self.providers_config {
            Some(p) => load_providers(p)?,
            None => Vec::new(),
        };
        if let Some(base_url) = &self.openai_base_url {
            if let Some(file) = &self.openai_api_key_file {
                if self.openai_api_key_env.is_some() {
                    anyhow::bail!(
                        "both FLEET_OPENAI_API_KEY_ENV and FLEET_OPENAI_API_KEY_FILE are set: keep only one"
                    );
                }
                check_key_file(file)?;
            }
            out.push(ProviderConfig {
                api_key_env: self.openai_api_key_env.clone(),
                api_key_file: self.openai_api_key_file.clone(),
                request_timeout: self.openai_request_timeout,
                max_concurrency: self.openai_max_concurrency,
                ..ProviderConfig::new(&self.openai_name, base_url, &self.openai_model)
            });
        }
        validate(&out)?;
        if !self.extractive_fallback && out.is_empty() {
            anyhow::bail!(
                "FLEET_EXTRACTIVE_FALLBACK=false needs at least one provider \
                 (FLEET_PROVIDERS_CONFIG or FLEET_OPENAI_BASE_URL)"
            );
        }
        Ok(out)
    }
}

/// Checks that FLEET_OPENAI_API_KEY_FILE can be used, so the start-up error names that
/// setting and the fix (the provider's own error only says `api_key_file`). Never shows the key.
fn check_key_file(file: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        anyhow::anyhow!(
            "FLEET_OPENAI_API_KEY_FILE={}: cannot read it ({e}); check the path and the mount",
            file.display()
        )
    })?;
    if text.trim().is_empty() {
        anyhow::bail!(
            "FLEET_OPENAI_API_KEY_FILE={}: the file is empty; put the API key in it",
            file.display()
        );
    }
    Ok(())
}

/// An API key. `Debug` and `Display` print `***`; use [`Secret::expose`] to send it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a key.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    /// The key itself, for the `Authorization` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// One OpenAI-compatible provider (`[[provider]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Name: metrics label, breaker dependency, `summary.provider`.
    pub name: String,
    /// Base URL ending in `/v1` (`/chat/completions` is appended).
    pub base_url: String,
    /// Model name sent with each request.
    pub model: String,
    /// Environment variable holding the API key (none: no `Authorization` header).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// File holding the API key (trimmed).
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// TCP(+TLS) connect bound.
    #[serde(default = "d_connect", deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    /// Whole-request bound (also capped by the job deadline).
    #[serde(default = "d_request", deserialize_with = "de_duration")]
    pub request_timeout: Duration,
    /// Longest wait between two chunks of a streamed response.
    #[serde(default = "d_idle", deserialize_with = "de_duration")]
    pub idle_read_timeout: Duration,
    /// Pooled connections idle longer than this are closed.
    #[serde(default = "d_pool_idle", deserialize_with = "de_duration")]
    pub pool_idle_timeout: Duration,
    /// Concurrent requests to this provider from this process.
    #[serde(default = "d_concurrency")]
    pub max_concurrency: usize,
    /// Items longer than this (characters) skip this provider (routing by length).
    #[serde(default)]
    pub max_input_chars: Option<usize>,
    /// Ask for a streamed (SSE) response, read with `idle_read_timeout` per chunk.
    #[serde(default = "d_true")]
    pub stream: bool,
    /// `max_tokens` sent with each request.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// `temperature` sent with each request.
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Consecutive failures that open this provider's breaker.
    #[serde(default = "d_breaker_failures")]
    pub breaker_failures: u32,
    /// How long the breaker stays open before one probe is let through.
    #[serde(default = "d_breaker_open", deserialize_with = "de_duration")]
    pub breaker_open_for: Duration,
}

fn d_connect() -> Duration {
    DEFAULT_CONNECT_TIMEOUT
}
fn d_request() -> Duration {
    DEFAULT_REQUEST_TIMEOUT
}
fn d_idle() -> Duration {
    DEFAULT_IDLE_READ_TIMEOUT
}
fn d_pool_idle() -> Duration {
    DEFAULT_POOL_IDLE_TIMEOUT
}
fn d_concurrency() -> usize {
    DEFAULT_MAX_CONCURRENCY
}
fn d_true() -> bool {
    true
}
fn d_breaker_failures() -> u32 {
    DEFAULT_BREAKER_FAILURES
}
fn d_breaker_open() -> Duration {
    DEFAULT_BREAKER_OPEN_FOR
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(serde::de::Error::custom)
}

impl ProviderConfig {
    /// A provider with every limit at its default.
    pub fn new(name: &str, base_url: &str, model: &str) -> ProviderConfig {
        ProviderConfig {
            name: name.to_owned(),
            base_url: base_url.to_owned(),
            model: model.to_owned(),
            api_key_env: None,
            api_key_file: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            idle_read_timeout: DEFAULT_IDLE_READ_TIMEOUT,
            pool_idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
            max_input_chars: None,
            stream: true,
            max_tokens: None,
            temperature: None,
            breaker_failures: DEFAULT_BREAKER_FAILURES,
            breaker_open_for: DEFAULT_BREAKER_OPEN_FOR,
        }
    }

    /// Reads the API key from its env var or file (none configured: `None`).
    pub fn api_key(&self) -> anyhow::Result<Option<Secret>> {
        if let Some(var) = &self.api_key_env {
            let v = std::env::var(var).with_context(|| {
                format!(
                    "provider `{}`: environment variable {var} (api_key_env) is not set",
                    self.name
                )
            })?;
            return Ok(Some(Secret::new(v.trim())));
        }
        if let Some(path) = &self.api_key_file {
            let v = std::fs::read_to_string(path).with_context(|| {
                format!(
                    "provider `{}`: reading api_key_file {}",
                    self.name,
                    path.display()
                )
            })?;
            return Ok(Some(Secret::new(v.trim())));
        }
        Ok(None)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProvidersFile {
    #[serde(default)]
    provider: Vec<ProviderConfig>,
}

/// Reads a providers file.
pub fn load_providers(path: &Path) -> anyhow::Result<Vec<ProviderConfig>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the providers config {}", path.display()))?;
    parse_providers(&text).with_context(|| format!("in {}", path.display()))
}

/// Parses (and validates) the TOML text of a providers file.
pub fn parse_providers(text: &str) -> anyhow::Result<Vec<ProviderConfig>> {
    let file: ProvidersFile = toml::from_str(text)?;
    validate(&file.provider)?;
    Ok(file.provider)
}

/// Checks every provider; reports all problems at once.
pub fn validate(providers: &[ProviderConfig]) -> anyhow::Result<()> {
    let mut errs = Vec::new();
    let mut names = std::collections::HashSet::new();
    for p in providers {
        if p.name.trim().is_empty() || p.name == "extractive" {
            errs.push(format!("provider name `{}` is empty or reserved", p.name));
        } else if !names.insert(p.name.as_str()) {
            errs.push(format!("provider `{}`: duplicate name", p.name));
        }
        if !(p.base_url.starts_with("http://") || p.base_url.starts_with("https://")) {
            errs.push(format!(
                "provider `{}`: base_url must start with http:// or https://",
                p.name
            ));
        }
        if p.max_concurrency == 0 {
            errs.push(format!(
                "provider `{}`: max_concurrency must be at least 1",
                p.name
            ));
        }
        if p.api_key_env.is_some() && p.api_key_file.is_some() {
            errs.push(format!(
                "provider `{}`: set api_key_env or api_key_file, not both",
                p.name
            ));
        }
        if p.breaker_failures == 0 {
            errs.push(format!(
                "provider `{}`: breaker_failures must be at least 1",
                p.name
            ));
        }
        for (what, d) in [
            ("connect_timeout", p.connect_timeout),
            ("request_timeout", p.request_timeout),
            ("idle_read_timeout", p.idle_read_timeout),
        ] {
            if d.is_zero() {
                errs.push(format!("provider `{}`: {what} must be positive", p.name));
            }
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("invalid providers config:\n  - {}", errs.join("\n  - "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_extractive_fallback_needs_a_provider() {
        let c = Config::try_parse_from(["s", "--extractive-fallback=false"]).unwrap();
        let e = c.providers().unwrap_err().to_string();
        assert!(e.contains("FLEET_EXTRACTIVE_FALLBACK"), "{e}");
        let c = Config::try_parse_from([
            "s",
            "--extractive-fallback=false",
            "--openai-base-url=http://127.0.0.1:1/v1",
        ])
        .unwrap();
        assert!(!c.extractive_fallback);
        assert_eq!(c.providers().unwrap().len(), 1);
    }

    #[test]
    fn parses_providers_and_redacts_keys() {
        let text = r#"
            [[provider]]
            name = "local"
            base_url = "http://127.0.0.1:8000/v1"
            model = "llama3"
            request_timeout = "30s"
            max_input_chars = 8000
            [[provider]]
            name = "hosted"
            base_url = "https://api.example.com/v1"
            model = "gpt-4o-mini"
            api_key_env = "FLEET_TEST_NO_SUCH_VAR"
            stream = false
        "#;
        let p = parse_providers(text).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].request_timeout, Duration::from_secs(30));
        assert_eq!(p[0].max_input_chars, Some(8000));
        assert!(p[0].stream && !p[1].stream);
        assert!(p[1].api_key().is_err());
        let s = Secret::new("sk-very-secret");
        assert!(!format!("{s:?} {s}").contains("very"));
        let bad =
            "[[provider]]\nname='extractive'\nbase_url='ftp://x'\nmodel='m'\nmax_concurrency=0\n";
        let e = parse_providers(bad).unwrap_err().to_string();
        assert!(
            e.contains("reserved") && e.contains("base_url") && e.contains("max_concurrency"),
            "{e}"
        );
    }
}
