//! The writer's configuration: runtime flags plus the database, batching,
//! timeouts and breaker settings; every problem reported at once.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use fleet_runtime::{BreakerConfig, RuntimeConfig};
use fleet_store::StoreOptions;

/// Default jobs per transaction: large enough to amortize a commit, small enough to keep
/// a failed batch cheap to retry.
pub const DEFAULT_BATCH_SIZE: usize = 32;
/// Default wait to fill a batch: bounds the latency a quiet pipeline adds.
pub const DEFAULT_BATCH_LINGER: &str = "200ms";
/// Default statement timeout: a batch insert takes milliseconds; a hung database must
/// pause intake within seconds.
pub const DEFAULT_DB_STATEMENT_TIMEOUT: &str = "10s";
/// Default pool checkout / connect timeout.
pub const DEFAULT_DB_CHECKOUT_TIMEOUT: &str = "5s";
/// Default pool size: the runtime runs at most two batches at once (prefetch = 2 × batch).
pub const DEFAULT_DB_POOL_SIZE: usize = 4;
/// Default consecutive failed batches that open the database breaker.
pub const DEFAULT_DB_BREAKER_FAILURES: u32 = 3;
/// Default time the breaker stays open before a probe batch.
pub const DEFAULT_DB_BREAKER_OPEN_FOR: &str = "5s";
/// Largest batch: keeps one multi-row INSERT under SQLite's and PostgreSQL's parameter limits.
pub const MAX_BATCH_SIZE: usize = 1000;

/// fleet-writer: consumes `write` jobs and stores each finished item in the
/// `fleet_results` table (PostgreSQL, or an embedded SQLite file by default),
/// one transaction per batch, first write wins, acked only after commit.
#[derive(Debug, Clone, Parser)]
#[command(name = "fleet-writer", version)]
pub struct Config {
    /// Runtime options shared by every worker.
    #[command(flatten)]
    pub runtime: RuntimeConfig,

    /// PostgreSQL URL (postgres://user:pass@host/db) or sqlite:///path; when absent the
    /// embedded SQLite file at --sqlite-path is used (a single replica).
    #[arg(long, env = "FLEET_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// SQLite file used when no database URL is given.
    #[arg(long, env = "FLEET_SQLITE_PATH", default_value = "fleet.sqlite")]
    pub sqlite_path: PathBuf,

    /// PEM file of the CA that signed PostgreSQL's certificate, for sslmode=verify-full
    /// (or verify-ca) in the database URL.
    #[arg(long, env = "FLEET_DATABASE_CA_FILE")]
    pub database_ca_file: Option<PathBuf>,

    /// Jobs written per transaction (at most 1000). The prefetch defaults to twice this.
    #[arg(long, env = "FLEET_BATCH_SIZE", default_value_t = DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,

    /// Longest wait to fill a batch before writing what is there.
    #[arg(long, env = "FLEET_BATCH_LINGER", default_value = DEFAULT_BATCH_LINGER, value_parser = humantime::parse_duration)]
    pub batch_linger: Duration,

    /// Longest a database statement (including COMMIT) may run.
    #[arg(long, env = "FLEET_DB_STATEMENT_TIMEOUT", default_value = DEFAULT_DB_STATEMENT_TIMEOUT, value_parser = humantime::parse_duration)]
    pub db_statement_timeout: Duration,

    /// Longest wait for a pooled database connection (also the connect timeout).
    #[arg(long, env = "FLEET_DB_CHECKOUT_TIMEOUT", default_value = DEFAULT_DB_CHECKOUT_TIMEOUT, value_parser = humantime::parse_duration)]
    pub db_checkout_timeout: Duration,

    /// PostgreSQL connection pool size.
    #[arg(long, env = "FLEET_DB_POOL_SIZE", default_value_t = DEFAULT_DB_POOL_SIZE)]
    pub db_pool_size: usize,

    /// Consecutive failed batches that open the database breaker (intake pauses).
    #[arg(long, env = "FLEET_DB_BREAKER_FAILURES", default_value_t = DEFAULT_DB_BREAKER_FAILURES)]
    pub db_breaker_failures: u32,

    /// How long the database breaker stays open before a probe batch runs.
    #[arg(long, env = "FLEET_DB_BREAKER_OPEN_FOR", default_value = DEFAULT_DB_BREAKER_OPEN_FOR, value_parser = humantime::parse_duration)]
    pub db_breaker_open_for: Duration,
}

impl Config {
    /// Reads every `FLEET_*_FILE` secret (broker URL, database URL); call after parsing.
    pub fn load_secret_files(&mut self) -> Result<(), fleet_runtime::secret::SecretError> {
        self.runtime.load_secret_files()?;
        fleet_runtime::secret::load_into("FLEET_DATABASE_URL", &mut self.database_url)
    }
    /// Parses from `args` (tests); the first item is the program name.
    pub fn parse_args<I, T>(args: I) -> Result<Config, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Config::try_parse_from(args)
    }

    /// Checks the writer's own rules (the runtime checks its own) and reports all at once.
    pub fn validate(&self) -> Result<(), fleet_runtime::config::ConfigErrors> {
        let mut errs = Vec::new();
        if self.batch_size == 0 || self.batch_size > MAX_BATCH_SIZE {
            errs.push(format!(
                "FLEET_BATCH_SIZE ({}) must be between 1 and {MAX_BATCH_SIZE}",
                self.batch_size
            ));
        }
        if self.db_pool_size == 0 {
            errs.push("FLEET_DB_POOL_SIZE must be at least 1".into());
        }
        if self.db_statement_timeout.is_zero() || self.db_checkout_timeout.is_zero() {
            errs.push(
                "FLEET_DB_STATEMENT_TIMEOUT and FLEET_DB_CHECKOUT_TIMEOUT must be positive (no unbounded waits)"
                    .into(),
            );
        }
        if self.db_breaker_failures == 0 {
            errs.push("FLEET_DB_BREAKER_FAILURES must be at least 1".into());
        }
        if self.db_statement_timeout + self.db_checkout_timeout >= self.runtime.max_timeout {
            errs.push(format!(
                "FLEET_DB_STATEMENT_TIMEOUT + FLEET_DB_CHECKOUT_TIMEOUT ({}) must stay below FLEET_MAX_TIMEOUT ({}) so a slow database fails the batch before the runtime cuts it",
                humantime::format_duration(self.db_statement_timeout + self.db_checkout_timeout),
                humantime::format_duration(self.runtime.max_timeout)
            ));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(fleet_runtime::config::ConfigErrors(errs))
        }
    }

    /// The runtime config with the writer's defaults applied: prefetch = 2 × batch size
    /// unless set (the runtime requires at least that).
    pub fn runtime_config(&self) -> RuntimeConfig {
        let mut rt = self.runtime.clone();
        if rt.prefetch.is_none() {
            rt.prefetch = Some(u16::try_from(2 * self.batch_size).unwrap_or(u16::MAX));
        }
        rt
    }

    /// Store timeouts and pool size.
    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            statement_timeout: self.db_statement_timeout,
            checkout_timeout: self.db_checkout_timeout,
            pool_size: self.db_pool_size,
            ca_file: self.database_ca_file.clone(),
        }
    }

    /// The database breaker's settings.
    pub fn breaker_config(&self) -> BreakerConfig {
        BreakerConfig {
            failure_threshold: self.db_breaker_failures,
            open_for: self.db_breaker_open_for,
            half_open_probes: 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_prefetch_follows_the_batch() {
        let c = Config::parse_args(["fleet-writer"]).expect("defaults parse");
        c.validate().expect("defaults are valid");
        assert_eq!(c.runtime_config().prefetch, Some(64));
        c.runtime_config()
            .validate(Some(c.batch_size))
            .expect("runtime accepts the batch");
        let bad = Config::parse_args([
            "fleet-writer",
            "--batch-size=0",
            "--db-pool-size=0",
            "--db-breaker-failures=0",
            "--db-statement-timeout=20m",
        ])
        .expect("parses");
        let e = bad.validate().expect_err("invalid");
        assert_eq!(e.0.len(), 4, "{e}");
    }
}
