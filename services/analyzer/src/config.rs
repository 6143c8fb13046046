//! The analyzer's configuration: runtime flags, analysis knobs, and the TOML
//! file of command analyzers (`[[analyzer]]` tables).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use fleet_runtime::RuntimeConfig;
use serde::{Deserialize, Deserializer};

use crate::analysis::{AnalysisOptions, DEFAULT_KEYWORDS, DEFAULT_WORDS_PER_MINUTE};
use crate::chunk::{ChunkSize, DEFAULT_CHUNK_CHARS, DEFAULT_CHUNK_MODEL};

/// Default per-analyzer timeout: a command analyzer is a quick external check.
pub const DEFAULT_ANALYZER_TIMEOUT: Duration = Duration::from_secs(30);
/// Default stdout cap: enough for a JSON report, small enough for a message payload.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 64 * 1024;

/// fleet-analyzer: consumes `analyze` jobs, runs the built-in text analysis and the
/// configured command analyzers, and passes the item on with its `analysis`.
#[derive(Debug, Clone, Parser)]
#[command(name = "fleet-analyzer", version)]
pub struct Config {
    /// Runtime options shared by every fleet worker.
    #[command(flatten)]
    pub runtime: RuntimeConfig,

    /// TOML file of command analyzers (`[[analyzer]]` tables; see deploy/analyzers.sample.toml).
    /// Without it only the built-in analysis runs.
    #[arg(long, env = "FLEET_ANALYZERS_CONFIG", help_heading = "Analyzer")]
    pub analyzers_config: Option<PathBuf>,

    /// Upper bound of a chunk handed to the summarizer, in characters (used when
    /// FLEET_CHUNK_TOKENS is not set).
    #[arg(long, env = "FLEET_CHUNK_CHARS", default_value_t = DEFAULT_CHUNK_CHARS, help_heading = "Analyzer")]
    pub chunk_chars: usize,

    /// Upper bound of a chunk in tokens of FLEET_CHUNK_MODEL's encoding; unset: chunks are
    /// sized in characters (FLEET_CHUNK_CHARS).
    #[arg(long, env = "FLEET_CHUNK_TOKENS", help_heading = "Analyzer")]
    pub chunk_tokens: Option<usize>,

    /// Model whose tokenizer counts FLEET_CHUNK_TOKENS (an OpenAI model name, e.g. gpt-4o,
    /// gpt-4; pick the closest for other models).
    #[arg(long, env = "FLEET_CHUNK_MODEL", default_value = DEFAULT_CHUNK_MODEL, help_heading = "Analyzer")]
    pub chunk_model: String,

    /// Keywords reported per item.
    #[arg(long, env = "FLEET_KEYWORDS", default_value_t = DEFAULT_KEYWORDS, help_heading = "Analyzer")]
    pub keywords: usize,

    /// Reading speed used for the reading-time estimate, in words per minute.
    #[arg(long, env = "FLEET_WORDS_PER_MINUTE", default_value_t = DEFAULT_WORDS_PER_MINUTE, help_heading = "Analyzer")]
    pub words_per_minute: u32,
}

impl Config {
    /// The built-in analysis knobs; an error names a chunk model without a tokenizer.
    pub fn analysis(&self) -> anyhow::Result<AnalysisOptions> {
        Ok(AnalysisOptions {
            words_per_minute: self.words_per_minute,
            keywords: self.keywords,
            chunk: ChunkSize::from_settings(self.chunk_chars, self.chunk_tokens, &self.chunk_model)
                .map_err(anyhow::Error::msg)?,
        })
    }

    /// Loads the command analyzers (none without `--analyzers-config`).
    pub fn load_analyzers(&self) -> anyhow::Result<Vec<AnalyzerSpec>> {
        match &self.analyzers_config {
            Some(path) => load_analyzers(path),
            None => Ok(Vec::new()),
        }
    }
}

/// How a command analyzer receives the item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum InputMode {
    /// The item text on standard input.
    #[default]
    Stdin,
    /// The path of a temporary file holding the item, appended as the last argument.
    File,
}

/// One `[[analyzer]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalyzerSpec {
    /// Name in the result (`analysis.analyzers.<name>`); unique.
    pub name: String,
    /// Program to run (looked up in `PATH`).
    pub program: String,
    /// Arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// `stdin` (default) or `file`.
    #[serde(default)]
    pub input: InputMode,
    /// Wall-time limit (human duration, e.g. `5s`); the whole process group is killed after it.
    #[serde(default = "default_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Stdout beyond this many bytes is discarded and the output marked truncated.
    #[serde(default = "default_max_output")]
    pub max_output_bytes: usize,
    /// When true, this analyzer failing fails the job (retried); else the result is partial.
    #[serde(default)]
    pub required: bool,
    /// Names of extra environment variables passed to the command (beyond
    /// [`crate::command::ENV_ALLOW_LIST`]); every other variable is withheld.
    #[serde(default)]
    pub env: Vec<String>,
}

fn default_timeout() -> Duration {
    DEFAULT_ANALYZER_TIMEOUT
}

fn default_max_output() -> usize {
    DEFAULT_MAX_OUTPUT_BYTES
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(serde::de::Error::custom)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnalyzersFile {
    #[serde(default)]
    analyzer: Vec<AnalyzerSpec>,
}

/// Reads and validates an analyzers file; every problem is reported at once.
pub fn load_analyzers(path: &Path) -> anyhow::Result<Vec<AnalyzerSpec>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the analyzers config {}", path.display()))?;
    parse_analyzers(&text).with_context(|| format!("in {}", path.display()))
}

/// Parses and validates the TOML text of an analyzers file.
pub fn parse_analyzers(text: &str) -> anyhow::Result<Vec<AnalyzerSpec>> {
    let file: AnalyzersFile = toml::from_str(text)?;
    let mut errs = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, a) in file.analyzer.iter().enumerate() {
        if a.name.trim().is_empty() {
            errs.push(format!("analyzer #{}: `name` is empty", i + 1));
        } else if !names.insert(a.name.as_str()) {
            errs.push(format!("analyzer `{}`: duplicate name", a.name));
        }
        if a.program.trim().is_empty() {
            errs.push(format!("analyzer `{}`: `program` is empty", a.name));
        }
        if a.timeout.is_zero() {
            errs.push(format!("analyzer `{}`: `timeout` must be positive", a.name));
        }
        if a.max_output_bytes == 0 {
            errs.push(format!(
                "analyzer `{}`: `max_output_bytes` must be positive",
                a.name
            ));
        }
    }
    if !errs.is_empty() {
        anyhow::bail!("invalid analyzers config:\n  - {}", errs.join("\n  - "));
    }
    Ok(file.analyzer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sample_and_reports_all_errors() {
        let sample = include_str!("../../../deploy/analyzers.sample.toml");
        let specs = parse_analyzers(sample).unwrap();
        assert!(!specs.is_empty());
        let bad = r#"
            [[analyzer]]
            name = "a"
            program = ""
            timeout = "0s"
            [[analyzer]]
            name = "a"
            program = "wc"
        "#;
        let e = parse_analyzers(bad).unwrap_err().to_string();
        assert!(
            e.contains("duplicate") && e.contains("program") && e.contains("timeout"),
            "{e}"
        );
        let unknown = "[[analyzer]]\nname='x'\nprogram='wc'\ntimeot='1s'\n";
        assert!(parse_analyzers(unknown).is_err());
        let one = parse_analyzers("[[analyzer]]\nname='x'\nprogram='wc'\ninput='file'\n").unwrap();
        assert_eq!(one[0].input, InputMode::File);
        assert_eq!(one[0].timeout, DEFAULT_ANALYZER_TIMEOUT);
        assert!(!one[0].required);
    }
}
