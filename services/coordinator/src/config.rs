//! The coordinator's typed config: the workers' runtime flags (broker URL and
//! prefix, heartbeat interval, admin address… with the same `FLEET_*`
//! variables, so one environment serves both) plus the coordinator's own.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use fleet_protocol::RouteStep;
use fleet_runtime::RuntimeConfig;

/// Default API address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// Default SQLite file when no database URL is given (a single-replica coordinator).
pub const DEFAULT_SQLITE_PATH: &str = "fleet-coordinator.sqlite";
/// Default sweeper tick: "within one tick of the last terminal event" means about a second.
pub const DEFAULT_TICK: &str = "1s";
/// Default time a backlog may wait for a scaler before `no_consumer` (KEDA scales in ~1 min).
pub const DEFAULT_SCALE_UP_ALLOWANCE: &str = "2m";
/// Default grace after a deadline before `timed_out`: workers' `expired` events arrive first.
pub const DEFAULT_DEADLINE_GRACE: &str = "5s";
/// Default request body limit: room for a few thousand small items.
pub const DEFAULT_MAX_BODY_BYTES: usize = 10 * 1024 * 1024;
/// Default route; a `?` suffix marks an optional stage (`analyze,summarize?,write`).
pub const DEFAULT_ROUTE: &str = "analyze,summarize,write";
/// Default per-attempt timeout of a stage when the submission names none.
pub const DEFAULT_STAGE_TIMEOUT: &str = "5m";
/// Default attempts of a stage when the submission names none.
pub const DEFAULT_STAGE_MAX_ATTEMPTS: u32 = 5;
/// Default publish attempts of one outbox row before it is abandoned and its job failed
/// (with the default backoff, about four minutes of refusals).
pub const DEFAULT_OUTBOX_MAX_ATTEMPTS: u32 = 10;
/// Default first retry delay of an outbox row that failed to publish (doubles per attempt, capped at 1 min).
pub const DEFAULT_OUTBOX_RETRY_BACKOFF: &str = "1s";
/// Default open-pipeline timeout: an open pipeline that gets neither an append nor
/// its seal for this long is finalized `timed_out` (its client went away); long
/// enough for a slow uploader between two batches.
pub const DEFAULT_OPEN_PIPELINE_TIMEOUT: &str = "10m";
/// The analyzer's default chunk size (fleet-analyzer's `DEFAULT_CHUNK_CHARS`).
pub const DEFAULT_CHUNK_CHARS: usize = 4000;
/// Default deliveries of a control message (event batch, submission, dead letter) before the
/// coordinator parks it: with backoff 1s, 2s, 4s… capped at 30s (RabbitMQ: 1s, 5s, 30s steps),
/// about 8 minutes of database outage are ridden out before anything is parked.
pub const DEFAULT_CONTROL_MAX_ATTEMPTS: u32 = 20;
/// How long a cancellation is re-broadcast on RabbitMQ (which keeps no messages for late subscribers).
pub const DEFAULT_CANCEL_REBROADCAST: &str = "1h";

/// Default longest a client may take to send request headers (slow-loris bound; also closes
/// idle keep-alive connections after this long).
pub const DEFAULT_API_HEADER_TIMEOUT: &str = "10s";
/// Default longest an API request may run (event streams excepted): longer than any statement
/// timeout plus a pool checkout, so a slow database answers 503 rather than hanging the client.
pub const DEFAULT_API_REQUEST_TIMEOUT: &str = "30s";
/// Default API connections served at once (more get a 503 and are closed): well below the
/// container's file-descriptor limit.
pub const DEFAULT_API_MAX_CONNECTIONS: usize = 1024;
/// Default API requests handled at once (event streams excepted; more wait, within the
/// request timeout): a few per database connection, so API load cannot starve ingestion.
pub const DEFAULT_API_MAX_CONCURRENT_REQUESTS: usize = 64;
/// Default simultaneous event streams (each polls the database twice a second).
pub const DEFAULT_API_MAX_EVENT_STREAMS: usize = 256;

/// Default retention of finalized pipelines: a month of history for reports and DLQ replay.
pub const DEFAULT_RETENTION: &str = "30d";

/// How the API authenticates (`FLEET_API_AUTH`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ApiAuth {
    /// Bearer tokens as configured; refused start on a non-loopback address without one.
    Token,
    /// No authentication at all: an explicit operator decision, warned at every start.
    None,
}

/// Every option of `fleet-coordinator`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "fleet-coordinator",
    version,
    about = "fleet coordinator: pipelines, events, sweeper, outbox, HTTP API",
    args_override_self = true
)]
pub struct Config {
    /// Broker, heartbeat, admin and logging options shared with the workers.
    #[command(flatten)]
    pub runtime: RuntimeConfig,

    /// PostgreSQL URL (postgres://…); absent: an embedded SQLite file (single replica).
    #[arg(long, env = "FLEET_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// SQLite file used when no database URL is given.
    #[arg(long, env = "FLEET_SQLITE_PATH", default_value = DEFAULT_SQLITE_PATH)]
    pub sqlite_path: PathBuf,

    /// PEM file of the CA that signed PostgreSQL's certificate, for sslmode=verify-full
    /// (or verify-ca) in the database URL.
    #[arg(long, env = "FLEET_DATABASE_CA_FILE")]
    pub database_ca_file: Option<PathBuf>,

    /// Address of the HTTP API.
    #[arg(long, env = "FLEET_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Bearer token for every API call (read and write); required when FLEET_LISTEN is
    /// not a loopback address, unless FLEET_API_AUTH=none.
    #[arg(long, env = "FLEET_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,

    /// Read-only bearer token: GET requests only (no submit, cancel, replay or purge).
    #[arg(long, env = "FLEET_API_READ_TOKEN", hide_env_values = true)]
    pub api_read_token: Option<String>,

    /// `token` (default): tokens as configured, and a non-loopback FLEET_LISTEN needs
    /// FLEET_API_TOKEN; `none`: an API without authentication, on purpose (warned at every start).
    #[arg(long, env = "FLEET_API_AUTH", value_enum, default_value_t = ApiAuth::Token)]
    pub api_auth: ApiAuth,

    /// Sweeper tick: stall detection and finalization run this often.
    #[arg(long, env = "FLEET_TICK", default_value = DEFAULT_TICK, value_parser = humantime::parse_duration)]
    pub tick: Duration,

    /// Stall window per stage for `no_progress` (`stage=duration`, repeatable); default: the job's timeout.
    #[arg(long, env = "FLEET_STALL_WINDOW", value_delimiter = ',', value_parser = parse_stage_duration)]
    pub stall_window: Vec<(String, Duration)>,

    /// How long a backlog may wait for a worker before `no_consumer`.
    #[arg(long, env = "FLEET_SCALE_UP_ALLOWANCE", default_value = DEFAULT_SCALE_UP_ALLOWANCE, value_parser = humantime::parse_duration)]
    pub scale_up_allowance: Duration,

    /// Grace after a pipeline's deadline before it is finalized `timed_out`.
    #[arg(long, env = "FLEET_DEADLINE_GRACE", default_value = DEFAULT_DEADLINE_GRACE, value_parser = humantime::parse_duration)]
    pub deadline_grace: Duration,

    /// Largest accepted request body.
    #[arg(long, env = "FLEET_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,

    /// Largest accepted item (JSON-encoded text plus metadata); default and maximum:
    /// what every stage can carry within FLEET_MAX_MESSAGE_BYTES (see `item_limit`).
    #[arg(long, env = "FLEET_MAX_ITEM_BYTES")]
    pub max_item_bytes: Option<usize>,

    /// The analyzer's chunk size in characters (the same variable the workers read):
    /// it bounds how much the analysis adds to an item, hence the item limit.
    #[arg(long, env = "FLEET_CHUNK_CHARS", default_value_t = DEFAULT_CHUNK_CHARS)]
    pub chunk_chars: usize,

    /// An open pipeline with no append and no seal for this long is finalized `timed_out`.
    #[arg(long, env = "FLEET_OPEN_PIPELINE_TIMEOUT", default_value = DEFAULT_OPEN_PIPELINE_TIMEOUT, value_parser = humantime::parse_duration)]
    pub open_pipeline_timeout: Duration,

    /// Default route when a submission names none; `stage?` marks an optional stage.
    #[arg(long, env = "FLEET_ROUTE", default_value = DEFAULT_ROUTE)]
    pub route: String,

    /// Default per-attempt timeout of every stage.
    #[arg(long, env = "FLEET_STAGE_TIMEOUT", default_value = DEFAULT_STAGE_TIMEOUT, value_parser = humantime::parse_duration)]
    pub stage_timeout: Duration,

    /// Default attempts of every stage.
    #[arg(long, env = "FLEET_STAGE_MAX_ATTEMPTS", default_value_t = DEFAULT_STAGE_MAX_ATTEMPTS)]
    pub stage_max_attempts: u32,

    /// Deliveries of an event batch, submission or dead letter that keeps failing before it is
    /// parked (2..=40; below the brokers' control delivery limit of 50).
    #[arg(long, env = "FLEET_CONTROL_MAX_ATTEMPTS", default_value_t = DEFAULT_CONTROL_MAX_ATTEMPTS,
          value_parser = clap::value_parser!(u32).range(2..=40))]
    pub control_max_attempts: u32,

    /// How long a cancellation is re-broadcast every tick on RabbitMQ.
    #[arg(long, env = "FLEET_CANCEL_REBROADCAST", default_value = DEFAULT_CANCEL_REBROADCAST, value_parser = humantime::parse_duration)]
    pub cancel_rebroadcast: Duration,

    /// Publish attempts of one outbox row before it is abandoned (its job ends `failed`, reason `publish_failed`).
    #[arg(long, env = "FLEET_OUTBOX_MAX_ATTEMPTS", default_value_t = DEFAULT_OUTBOX_MAX_ATTEMPTS)]
    pub outbox_max_attempts: u32,

    /// First retry delay of an outbox row that failed to publish; doubles per attempt up to 1 min.
    #[arg(long, env = "FLEET_OUTBOX_RETRY_BACKOFF", default_value = DEFAULT_OUTBOX_RETRY_BACKOFF, value_parser = humantime::parse_duration)]
    pub outbox_retry_backoff: Duration,

    /// Longest a client may take to send a request's headers; idle keep-alive connections close after it too.
    #[arg(long, env = "FLEET_API_HEADER_TIMEOUT", default_value = DEFAULT_API_HEADER_TIMEOUT, value_parser = humantime::parse_duration)]
    pub api_header_timeout: Duration,

    /// Longest an API request may run before it is answered 503 (event streams are not cut).
    #[arg(long, env = "FLEET_API_REQUEST_TIMEOUT", default_value = DEFAULT_API_REQUEST_TIMEOUT, value_parser = humantime::parse_duration)]
    pub api_request_timeout: Duration,

    /// API connections served at once; more are answered 503 and closed.
    #[arg(long, env = "FLEET_API_MAX_CONNECTIONS", default_value_t = DEFAULT_API_MAX_CONNECTIONS)]
    pub api_max_connections: usize,

    /// API requests handled at once (event streams not counted); more wait within the request timeout.
    #[arg(long, env = "FLEET_API_MAX_CONCURRENT_REQUESTS", default_value_t = DEFAULT_API_MAX_CONCURRENT_REQUESTS)]
    pub api_max_concurrent_requests: usize,

    /// Simultaneous event streams (GET /v1/pipelines/{id}/events); more are answered 503.
    #[arg(long, env = "FLEET_API_MAX_EVENT_STREAMS", default_value_t = DEFAULT_API_MAX_EVENT_STREAMS)]
    pub api_max_event_streams: usize,

    /// Finalized pipelines older than this are deleted with their items, jobs, events and dead letters (`0`/`off`: never).
    #[arg(long, env = "FLEET_RETENTION", default_value = DEFAULT_RETENTION, value_parser = crate::retention::parse)]
    pub retention: crate::retention::Keep,

    /// Database connections in the pool (PostgreSQL).
    #[arg(long, env = "FLEET_DATABASE_POOL", default_value_t = 8)]
    pub database_pool: usize,

    /// Longest any single database statement may run.
    #[arg(long, env = "FLEET_STATEMENT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub statement_timeout: Duration,
}

fn parse_stage_duration(s: &str) -> Result<(String, Duration), String> {
    let (stage, d) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected stage=duration, e.g. summarize=10m"))?;
    let d = humantime::parse_duration(d.trim()).map_err(|e| format!("`{s}`: {e}"))?;
    Ok((stage.trim().to_owned(), d))
}

/// Parses a route like `analyze,summarize?,write`.
pub fn parse_route(s: &str) -> Vec<RouteStep> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.strip_suffix('?') {
            Some(stage) => RouteStep {
                stage: stage.to_owned(),
                required: false,
            },
            None => RouteStep {
                stage: p.to_owned(),
                required: true,
            },
        })
        .collect()
}

impl Config {
    /// Parses flags and environment from `args` (tests).
    pub fn parse_args<I, T>(args: I) -> Result<Config, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Config::try_parse_from(args)
    }

    /// Reads every `FLEET_*_FILE` secret (broker URL, database URL, API tokens); call after parsing.
    pub fn load_secret_files(&mut self) -> Result<(), fleet_runtime::secret::SecretError> {
        use fleet_runtime::secret::load_into;
        self.runtime.load_secret_files()?;
        load_into("FLEET_DATABASE_URL", &mut self.database_url)?;
        load_into("FLEET_API_TOKEN", &mut self.api_token)?;
        load_into("FLEET_API_READ_TOKEN", &mut self.api_read_token)
    }

    /// The default route.
    pub fn default_route(&self) -> Vec<RouteStep> {
        parse_route(&self.route)
    }

    /// The largest item every stage can carry within FLEET_MAX_MESSAGE_BYTES.
    pub fn carried_item_bytes(&self) -> usize {
        crate::item_limit::derived_max_item_bytes(self.runtime.max_message_bytes, self.chunk_chars)
    }

    /// The item limit in force: FLEET_MAX_ITEM_BYTES when set, else what every stage can carry.
    pub fn item_limit(&self) -> usize {
        self.max_item_bytes
            .unwrap_or_else(|| self.carried_item_bytes())
    }

    /// The stall window configured for `stage`, if any.
    pub fn stall_window_for(&self, stage: &str) -> Option<Duration> {
        self.stall_window
            .iter()
            .find(|(s, _)| s == stage)
            .map(|(_, d)| *d)
    }

    /// Checks every rule and reports all problems at once.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut errs = Vec::new();
        if let Err(e) = self.runtime.validate(None) {
            errs.extend(e.0);
        }
        let route = self.default_route();
        if route.is_empty() {
            errs.push("FLEET_ROUTE must name at least one stage".into());
        }
        for step in &route {
            if let Err(e) = crate::submit::check_name("stage", &step.stage) {
                errs.push(format!("FLEET_ROUTE: {}", e.message));
            }
        }
        if self.tick.is_zero() {
            errs.push("FLEET_TICK must be positive".into());
        }
        if self.heartbeat().is_zero() {
            errs.push("FLEET_HEARTBEAT_INTERVAL must be positive".into());
        }
        if self.stage_max_attempts == 0 {
            errs.push("FLEET_STAGE_MAX_ATTEMPTS must be at least 1".into());
        }
        if self.outbox_max_attempts == 0 {
            errs.push("FLEET_OUTBOX_MAX_ATTEMPTS must be at least 1".into());
        }
        if self.outbox_retry_backoff.is_zero() {
            errs.push("FLEET_OUTBOX_RETRY_BACKOFF must be positive".into());
        }
        let carried = self.carried_item_bytes();
        if self.max_item_bytes.is_some_and(|n| n > carried) {
            errs.push(format!(
                "FLEET_MAX_ITEM_BYTES ({}) exceeds what every stage can carry within FLEET_MAX_MESSAGE_BYTES ({}): {carried} bytes; lower it or raise FLEET_MAX_MESSAGE_BYTES on the coordinator and every worker",
                self.max_item_bytes.unwrap_or_default(),
                self.runtime.max_message_bytes
            ));
        }
        if self.item_limit() == 0 {
            errs.push(format!(
                "FLEET_MAX_MESSAGE_BYTES ({}) leaves no room for an item; raise it",
                self.runtime.max_message_bytes
            ));
        }
        if self.item_limit() > self.max_body_bytes {
            errs.push("the item limit must not exceed FLEET_MAX_BODY_BYTES".into());
        }
        for (name, zero) in [
            (
                "FLEET_API_HEADER_TIMEOUT",
                self.api_header_timeout.is_zero(),
            ),
            (
                "FLEET_API_REQUEST_TIMEOUT",
                self.api_request_timeout.is_zero(),
            ),
            ("FLEET_API_MAX_CONNECTIONS", self.api_max_connections == 0),
            (
                "FLEET_API_MAX_CONCURRENT_REQUESTS",
                self.api_max_concurrent_requests == 0,
            ),
            (
                "FLEET_API_MAX_EVENT_STREAMS",
                self.api_max_event_streams == 0,
            ),
        ] {
            if zero {
                errs.push(format!("{name} must be positive"));
            }
        }
        errs.extend(self.auth_errors());
        if errs.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("invalid configuration:\n  - {}", errs.join("\n  - "))
        }
    }

    /// The API-auth rules: a non-loopback API needs a token unless FLEET_API_AUTH=none.
    fn auth_errors(&self) -> Vec<String> {
        let mut errs = Vec::new();
        fn given(t: &Option<String>) -> Option<&str> {
            t.as_deref().map(str::trim)
        }
        for (name, t) in [
            ("FLEET_API_TOKEN", given(&self.api_token)),
            ("FLEET_API_READ_TOKEN", given(&self.api_read_token)),
        ] {
            if t == Some("") {
                errs.push(format!("{name} is set but empty: unset it or give a token"));
            }
        }
        let write = given(&self.api_token).filter(|t| !t.is_empty());
        let read = given(&self.api_read_token).filter(|t| !t.is_empty());
        match self.api_auth {
            ApiAuth::None if write.is_some() || read.is_some() => errs.push(
                "FLEET_API_AUTH=none turns authentication off, but an API token is set: unset FLEET_API_AUTH to use the token, or unset FLEET_API_TOKEN / FLEET_API_READ_TOKEN".into(),
            ),
            ApiAuth::None => {}
            ApiAuth::Token => {
                if read.is_some() && write.is_none() {
                    errs.push("FLEET_API_READ_TOKEN is set without FLEET_API_TOKEN: every write would be unauthenticated; set FLEET_API_TOKEN as well".into());
                }
                if read.is_some() && read == write {
                    errs.push("FLEET_API_READ_TOKEN equals FLEET_API_TOKEN: give the read-only token its own value".into());
                }
                if write.is_none() && !self.listen.ip().is_loopback() {
                    errs.push(format!(
                        "the API listens on {} (FLEET_LISTEN, not a loopback address) without a token: anyone who reaches it could cancel pipelines and purge the DLQ; set FLEET_API_TOKEN (or FLEET_API_TOKEN_FILE), or set FLEET_API_AUTH=none to run without authentication on purpose",
                        self.listen
                    ));
                }
            }
        }
        errs
    }

    /// The workers' heartbeat interval.
    pub fn heartbeat(&self) -> Duration {
        self.runtime.heartbeat_interval
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_validate() {
        let c = Config::parse_args(["fleet-coordinator", "--api-token=t"]).unwrap();
        c.validate().unwrap();
        assert_eq!(c.default_route().len(), 3);
        assert_eq!(c.tick, Duration::from_secs(1));
        assert_eq!(c.scale_up_allowance, Duration::from_secs(120));
        assert_eq!(c.max_body_bytes, 10 * 1024 * 1024);
    }

    #[test]
    fn route_and_stall_windows() {
        let r = parse_route("analyze, summarize?,write");
        assert!(r[0].required && !r[1].required && r[2].required);
        assert_eq!(r[1].stage, "summarize");
        let c = Config::parse_args([
            "x",
            "--stall-window",
            "summarize=10m,write=30s",
            "--route",
            "a,b?",
        ])
        .unwrap();
        assert_eq!(c.stall_window_for("write"), Some(Duration::from_secs(30)));
        assert_eq!(c.stall_window_for("a"), None);
        assert!(Config::parse_args(["x", "--stall-window", "nope"]).is_err());
        let bad = Config::parse_args(["x", "--route", "bad stage", "--tick", "0s"]).unwrap();
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("FLEET_ROUTE") && e.contains("FLEET_TICK"), "{e}");
    }

    #[test]
    fn a_non_loopback_api_needs_a_token_or_an_explicit_none() {
        let open = Config::parse_args(["x", "--listen=0.0.0.0:8080"]).unwrap();
        let e = open.validate().unwrap_err().to_string();
        assert!(
            e.contains("FLEET_API_TOKEN") && e.contains("FLEET_API_AUTH=none"),
            "{e}"
        );
        let none = Config::parse_args(["x", "--listen=0.0.0.0:8080", "--api-auth=none"]).unwrap();
        none.validate().unwrap();
        Config::parse_args(["x", "--listen=127.0.0.1:8080"])
            .unwrap()
            .validate()
            .unwrap();
        Config::parse_args(["x", "--listen=[::1]:8080"])
            .unwrap()
            .validate()
            .unwrap();
        let both = Config::parse_args(["x", "--api-auth=none", "--api-token=t"]).unwrap();
        assert!(both.validate().is_err());
        let read_only = Config::parse_args(["x", "--listen=127.0.0.1:1", "--api-read-token=r"])
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(read_only.contains("FLEET_API_READ_TOKEN"), "{read_only}");
        // Every problem at once: an empty token and a bad tick together.
        let e = Config::parse_args(["x", "--api-token= ", "--tick=0s"])
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("FLEET_API_TOKEN is set but empty") && e.contains("FLEET_TICK"),
            "{e}"
        );
    }
}
