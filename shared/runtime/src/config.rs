//! One typed config for the runtime part of every service: `FLEET_*` environment
//! variables or flags (clap), human-readable durations, every error reported at once.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use crate::telemetry::logging::LogFormat;

/// Default slots per worker: enough to overlap I/O-bound jobs on a small pod.
pub const DEFAULT_CONCURRENCY: u32 = 8;
/// Default attempts per job before dead-lettering.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// Default ceiling for a job's `timeout_ms`: long LLM jobs run 5–10 min.
pub const DEFAULT_MAX_TIMEOUT: &str = "10m";
/// Default broker ack wait / visibility timeout; running jobs extend it (NATS, memory).
pub const DEFAULT_ACK_WAIT: &str = "30s";
/// RabbitMQ's global `consumer_timeout` default (30 min); attempts must stay below it.
pub const DEFAULT_CONSUMER_TIMEOUT: &str = "30m";
/// Default bound on a consumer that cannot subscribe to a connected broker: a minute of
/// redeclaring and retrying fixes a deleted queue; longer means something an operator must see.
pub const DEFAULT_RESUBSCRIBE_LIMIT: &str = "60s";
/// Margin kept between the longest attempt and RabbitMQ's `consumer_timeout`.
pub const CONSUMER_TIMEOUT_MARGIN: Duration = Duration::from_secs(60);

/// Runtime settings shared by every fleet worker service.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Runtime")]
pub struct RuntimeConfig {
    /// Broker URL: amqp://, amqps://, nats://, tls:// or memory://.
    #[arg(
        long,
        env = "FLEET_BROKER_URL",
        default_value = "memory://",
        hide_env_values = true
    )]
    pub broker_url: String,

    /// PEM file of a CA to trust for amqps:// and tls:// broker URLs (besides the system roots).
    #[arg(long, env = "FLEET_BROKER_CA_FILE")]
    pub broker_ca_file: Option<std::path::PathBuf>,

    /// Prefix of every queue, exchange, stream and subject.
    #[arg(long, env = "FLEET_PREFIX", default_value = "fleet")]
    pub prefix: String,

    /// Stage this worker consumes (defaults to the service's own stage).
    #[arg(long, env = "FLEET_STAGE")]
    pub stage: Option<String>,

    /// Jobs run at once by this process.
    #[arg(long, env = "FLEET_CONCURRENCY", default_value_t = DEFAULT_CONCURRENCY)]
    pub concurrency: u32,

    /// Deliveries held unacked by this process (RabbitMQ basic_qos); default: concurrency.
    #[arg(long, env = "FLEET_PREFETCH")]
    pub prefetch: Option<u16>,

    /// Maximum attempts per job; a job's own max_attempts is clamped to it.
    #[arg(long, env = "FLEET_MAX_ATTEMPTS", default_value_t = DEFAULT_MAX_ATTEMPTS)]
    pub max_attempts: u32,

    /// Longest per-attempt timeout; a job's own timeout_ms is clamped to it.
    #[arg(long, env = "FLEET_MAX_TIMEOUT", default_value = DEFAULT_MAX_TIMEOUT, value_parser = humantime::parse_duration)]
    pub max_timeout: Duration,

    /// Broker ack wait (NATS ack_wait, memory visibility timeout); running jobs extend it.
    #[arg(long, env = "FLEET_ACK_WAIT", default_value = DEFAULT_ACK_WAIT, value_parser = humantime::parse_duration)]
    pub ack_wait: Duration,

    /// Broker-side delivery backstop (x-delivery-limit, max_deliver); must exceed max attempts.
    #[arg(long, env = "FLEET_MAX_DELIVER", default_value_t = 10)]
    pub max_deliver: u32,

    /// NATS stage-level max_ack_pending: all replicas' slots plus delayed retries.
    #[arg(long, env = "FLEET_MAX_ACK_PENDING", default_value_t = 1024)]
    pub max_ack_pending: i64,

    /// NATS: replicas of every stream fleet creates (1–5; 3 on a three-node cluster); consumers
    /// inherit it. More than 1 needs a clustered nats-server; an existing stream is not changed.
    #[arg(long, env = "FLEET_NATS_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub nats_replicas: u8,

    /// RabbitMQ's global consumer_timeout; every attempt must end a minute before it.
    #[arg(long, env = "FLEET_RABBITMQ_CONSUMER_TIMEOUT", default_value = DEFAULT_CONSUMER_TIMEOUT, value_parser = humantime::parse_duration)]
    pub rabbitmq_consumer_timeout: Duration,

    /// RabbitMQ: cluster nodes holding a replica of each quorum queue (capped by the
    /// cluster's size). Unset: the broker's `quorum_cluster_size` (3 on 3.10 and 4.x). Set it
    /// before the queues first exist: RabbitMQ refuses a redeclaration with another value.
    #[arg(long, env = "FLEET_QUORUM_GROUP_SIZE")]
    pub quorum_group_size: Option<u16>,

    /// First retry delay ceiling (exponential, full jitter).
    #[arg(long, env = "FLEET_RETRY_BASE", default_value = "1s", value_parser = humantime::parse_duration)]
    pub retry_base: Duration,

    /// Longest retry delay; used for every retry while the retry budget is exceeded.
    #[arg(long, env = "FLEET_RETRY_MAX", default_value = "5m", value_parser = humantime::parse_duration)]
    pub retry_max: Duration,

    /// Retries allowed per first attempt over a 10 s window.
    #[arg(long, env = "FLEET_RETRY_BUDGET_RATIO", default_value_t = 0.2)]
    pub retry_budget_ratio: f64,

    /// Retries per second always allowed, whatever the ratio.
    #[arg(long, env = "FLEET_RETRY_BUDGET_MIN_PER_SEC", default_value_t = 1.0)]
    pub retry_budget_min_per_sec: f64,

    /// On SIGTERM, how long in-flight jobs may finish before the rest go back to the broker.
    #[arg(long, env = "FLEET_DRAIN_DEADLINE", default_value = "25s", value_parser = humantime::parse_duration)]
    pub drain_deadline: Duration,

    /// Exit non-zero after this long without a broker.
    #[arg(long, env = "FLEET_MAX_OUTAGE", default_value = "5m", value_parser = humantime::parse_duration)]
    pub max_outage: Duration,

    /// A consumer that cannot subscribe while the broker is connected (redeclaring its queues
    /// between attempts) gives up after this long: the process turns unready and exits non-zero.
    #[arg(long, env = "FLEET_RESUBSCRIBE_LIMIT", default_value = DEFAULT_RESUBSCRIBE_LIMIT, value_parser = humantime::parse_duration)]
    pub resubscribe_limit: Duration,

    /// Tests only: the named supervised task fails 200 ms after it starts (`<task>[:panic]`).
    #[arg(long, env = crate::supervise::FAIL_TASK_ENV, hide = true)]
    pub test_fail_task: Option<String>,

    /// How often a worker heartbeat goes to the coordinator.
    #[arg(long, env = "FLEET_HEARTBEAT_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,

    /// Before taking jobs, wait at most this long to learn the active cancellations, so a
    /// worker started after a cancel drops that pipeline's jobs (RabbitMQ: until the
    /// coordinator's next re-broadcast, about one coordinator tick; NATS: the replay).
    /// `0s` takes jobs at once (e.g. no coordinator runs).
    #[arg(long, env = "FLEET_CONTROL_SYNC_WAIT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub control_sync_wait: Duration,

    /// Broker connection heartbeat (AMQP heartbeat, NATS ping interval).
    #[arg(long, env = "FLEET_BROKER_HEARTBEAT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub broker_heartbeat: Duration,

    /// How long to wait for the broker to confirm a publish.
    #[arg(long, env = "FLEET_CONFIRM_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub confirm_timeout: Duration,

    /// Largest accepted message; bigger ones are dead-lettered as poison.
    #[arg(long, env = "FLEET_MAX_MESSAGE_BYTES", default_value_t = fleet_protocol::DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,

    /// Blocking tasks still running past their deadline before /healthz fails.
    #[arg(long, env = "FLEET_MAX_RUNAWAY", default_value_t = 4)]
    pub max_runaway: usize,

    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "FLEET_ADMIN_ADDR", default_value = "0.0.0.0:9090")]
    pub admin_addr: SocketAddr,

    /// Log format.
    #[arg(long, env = "FLEET_LOG_FORMAT", value_enum, default_value = "pretty")]
    pub log_format: LogFormat,

    /// Worker id in events and heartbeats (default: <stage>-<random>, unique per start).
    #[arg(long, env = "FLEET_WORKER_ID")]
    pub worker_id: Option<String>,
}

impl RuntimeConfig {
    /// Parses only the runtime options from `args` (tests and examples).
    pub fn parse_from<I, T>(args: I) -> Result<RuntimeConfig, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        #[derive(clap::Parser)]
        #[command(args_override_self = true)]
        struct Wrap {
            #[command(flatten)]
            rt: RuntimeConfig,
        }
        <Wrap as clap::Parser>::try_parse_from(args).map(|w| w.rt)
    }

    /// Reads `FLEET_BROKER_URL_FILE` when set (a mounted Secret); call after parsing.
    pub fn load_secret_files(&mut self) -> Result<(), crate::secret::SecretError> {
        if let Some(url) = crate::secret::from_file("FLEET_BROKER_URL")? {
            self.broker_url = url;
        }
        Ok(())
    }

    /// The effective prefetch.
    pub fn effective_prefetch(&self) -> u16 {
        self.prefetch
            .unwrap_or_else(|| u16::try_from(self.concurrency).unwrap_or(u16::MAX))
    }

    /// [`Self::validate`] together with the service's own configuration result, so a
    /// service reports its errors and the runtime's in one message (never one after the other).
    pub fn validate_with<T>(
        &self,
        batch_size: Option<usize>,
        service: anyhow::Result<T>,
    ) -> Result<T, ConfigErrors> {
        let mut errs = self
            .validate(batch_size)
            .err()
            .map(|e| e.0)
            .unwrap_or_default();
        match service {
            Ok(v) if errs.is_empty() => Ok(v),
            Ok(_) => Err(ConfigErrors(errs)),
            Err(e) => {
                errs.push(format!("{e:#}"));
                Err(ConfigErrors(errs))
            }
        }
    }

    /// Checks every rule and reports all violations at once, each with what to change.
    pub fn validate(&self, batch_size: Option<usize>) -> Result<(), ConfigErrors> {
        let mut errs = Vec::new();
        let scheme = self.broker_url.split("://").next().unwrap_or_default();
        if !["amqp", "amqps", "nats", "tls", "memory"].contains(&scheme)
            || !self.broker_url.contains("://")
        {
            errs.push(format!(
                "FLEET_BROKER_URL `{}` has no known scheme: use amqp://, amqps://, nats://, tls:// or memory://",
                fleet_protocol::redact::redact_url(&self.broker_url)
            ));
        }
        if matches!(scheme, "amqp" | "amqps")
            && let Err(e) = fleet_amqp::check_urls(&self.broker_url)
        {
            errs.push(format!("FLEET_BROKER_URL: {e}"));
        }
        if self.quorum_group_size == Some(0) {
            errs.push(
                "FLEET_QUORUM_GROUP_SIZE must be at least 1 (3 for a three-node cluster)".into(),
            );
        }
        if self.concurrency == 0 {
            errs.push("FLEET_CONCURRENCY must be at least 1".into());
        }
        if self.max_attempts == 0 {
            errs.push("FLEET_MAX_ATTEMPTS must be at least 1".into());
        }
        if self.max_deliver <= self.max_attempts {
            errs.push(format!(
                "FLEET_MAX_DELIVER ({}) must exceed FLEET_MAX_ATTEMPTS ({}): the broker backstop must not cut a job before the runtime dead-letters it with a reason",
                self.max_deliver, self.max_attempts
            ));
        }
        if self.ack_wait < Duration::from_secs(3) {
            errs.push(
                "FLEET_ACK_WAIT must be at least 3s (leases are extended every third of it)".into(),
            );
        }
        if self.resubscribe_limit.is_zero() {
            errs.push("FLEET_RESUBSCRIBE_LIMIT must be positive (e.g. 60s)".into());
        }
        if self.retry_base > self.retry_max {
            errs.push("FLEET_RETRY_BASE must not exceed FLEET_RETRY_MAX".into());
        }
        if !(0.0..=10.0).contains(&self.retry_budget_ratio) {
            errs.push("FLEET_RETRY_BUDGET_RATIO must be between 0 and 10".into());
        }
        if matches!(scheme, "amqp" | "amqps")
            && self.max_timeout + CONSUMER_TIMEOUT_MARGIN >= self.rabbitmq_consumer_timeout
        {
            errs.push(format!(
                "FLEET_MAX_TIMEOUT ({}) plus a {}s margin must stay below RabbitMQ's consumer_timeout ({}), or the broker closes the channel under a running job: lower FLEET_MAX_TIMEOUT or raise consumer_timeout in rabbitmq.conf and FLEET_RABBITMQ_CONSUMER_TIMEOUT",
                humantime::format_duration(self.max_timeout),
                CONSUMER_TIMEOUT_MARGIN.as_secs(),
                humantime::format_duration(self.rabbitmq_consumer_timeout)
            ));
        }
        if let Some(n) = batch_size {
            let prefetch = usize::from(self.effective_prefetch());
            if prefetch < 2 * n {
                errs.push(format!(
                    "FLEET_PREFETCH ({prefetch}) must be at least twice the batch size ({n}) so the next batch fills while one commits"
                ));
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errs))
        }
    }
}

/// Every configuration problem found, one per line.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigErrors(pub Vec<String>);

/// The topology a worker with `cfg` declares for `stage`.
pub fn topology(
    cfg: &RuntimeConfig,
    names: &fleet_protocol::Names,
    stage: &str,
) -> fleet_core::Topology {
    fleet_core::Topology {
        names: names.clone(),
        stages: vec![stage.to_owned()],
        ack_wait: cfg.ack_wait,
        max_deliver: cfg.max_deliver,
        max_ack_pending: cfg.max_ack_pending,
        retry_ladder: fleet_core::broker::retry_ladder(cfg.retry_max),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_errors_are_collected() {
        let ok = RuntimeConfig::parse_from(["x"]).unwrap();
        ok.validate(None).unwrap();
        let bad = RuntimeConfig::parse_from([
            "x",
            "--broker-url",
            "amqp://h",
            "--max-timeout",
            "40m",
            "--concurrency",
            "0",
            "--max-deliver",
            "3",
            "--prefetch",
            "10",
        ])
        .unwrap();
        let e = bad.validate(Some(8)).unwrap_err();
        assert_eq!(e.0.len(), 4, "{e}");
        assert!(e.to_string().contains("consumer_timeout"));
        assert!(RuntimeConfig::parse_from(["x", "--ack-wait", "soon"]).is_err());
        assert!(RuntimeConfig::parse_from(["x", "--nats-replicas", "6"]).is_err());
        assert!(RuntimeConfig::parse_from(["x", "--nats-replicas", "0"]).is_err());
    }
}
