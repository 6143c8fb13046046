//! Command-line definition (clap): global connection flags and every subcommand.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Default coordinator URL.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

const LONG_ABOUT: &str = "\
fleetctl talks to fleet-coordinator's HTTP API: submit pipelines of text and
Markdown files, watch them with live per-stage progress, read their reports,
cancel them, work the dead-letter archive, and see queue depths.

`fleetctl demo` runs the coordinator and the three workers in this process on
an in-memory broker and an embedded SQLite file: nothing to install.";

/// fleetctl: submit, watch, status, cancel, dlq, queues, demo.
#[derive(Debug, Parser)]
#[command(
    name = "fleetctl",
    version,
    about = "Operate a fleet pipeline coordinator: submit, watch, status, list, cancel, dlq, queues, demo",
    long_about = LONG_ABOUT,
    after_long_help = crate::exit::TABLE
)]
pub struct Cli {
    /// Connection to the coordinator.
    #[command(flatten)]
    pub conn: Connection,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Where the coordinator is and how long to wait for it.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// Coordinator base URL.
    #[arg(long, global = true, env = "FLEET_COORDINATOR_URL", default_value = DEFAULT_URL)]
    pub url: String,
    /// Bearer token for the coordinator's API (its FLEET_API_TOKEN).
    #[arg(long, global = true, env = "FLEET_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Longest wait to connect to the coordinator.
    #[arg(long, global = true, default_value = "5s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// Longest wait for one API request (streams use it as their idle limit).
    #[arg(long, global = true, default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Submit files, directories, JSONL or stdin (`-`) as a new pipeline.
    Submit(SubmitArgs),
    /// Follow a pipeline with live per-stage progress until it finishes.
    Watch(WatchArgs),
    /// Show a pipeline's report.
    Status(StatusArgs),
    /// List pipelines, newest first.
    List(ListArgs),
    /// Cancel a running pipeline.
    Cancel(IdArg),
    /// Work the dead-letter archive.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Show queue depth and live workers per stage, and the parked control messages.
    Queues(JsonFlag),
    /// Work the parked control messages (event batches, submissions, dead letters the
    /// coordinator gave up on).
    #[command(subcommand)]
    Parked(ParkedCommand),
    /// Run coordinator + workers in this process and process some files.
    Demo(DemoArgs),
}

/// `fleetctl parked`.
#[derive(Debug, Clone, Subcommand)]
pub enum ParkedCommand {
    /// Move parked messages back to the queue or subject they came from (fix the cause first).
    Replay(ParkedReplayArgs),
}

/// `fleetctl parked replay`.
#[derive(Debug, Clone, Args)]
pub struct ParkedReplayArgs {
    /// Most messages to move (default: up to 10000).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub max: Option<u64>,
    /// Print the API's JSON answer.
    #[arg(long)]
    pub json: bool,
}

/// `--json` alone.
#[derive(Debug, Clone, Args)]
pub struct JsonFlag {
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One pipeline id.
#[derive(Debug, Clone, Args)]
pub struct IdArg {
    /// The pipeline id.
    pub id: String,
}

/// `fleetctl submit`.
#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Inputs: text, Markdown or HTML files (item_id = the relative path), directories \
(searched recursively for .txt/.md/.markdown/.rst/.text/.html/.htm/.jsonl files; hidden entries skipped; each file item gets metadata media_type from its extension), \
.jsonl/.ndjson files (one {\"item_id\", \"text\", \"metadata\"} object per line), or `-` for stdin \
(JSONL when every line is such an object, else one item `stdin`)."
)]
pub struct SubmitArgs {
    /// Files, directories, or `-` for stdin.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Pipeline id (letters, digits, `-`, `_`): re-submitting the same id and content is a no-op.
    #[arg(long)]
    pub pipeline_id: Option<String>,
    /// Route of stages, e.g. `analyze,summarize:optional,write` (`stage?` also marks an
    /// optional stage); default: the coordinator's route.
    #[arg(long, value_name = "STAGES")]
    pub route: Option<String>,
    /// Pipeline deadline: a duration from now (`30m`, `2h`) or an RFC 3339 time.
    /// A duration makes each run a different body (an absolute time is sent).
    #[arg(long, value_parser = parse_deadline)]
    pub deadline: Option<chrono::DateTime<chrono::Utc>>,
    /// Per-attempt timeout of every stage (e.g. `2m`); default: the coordinator's.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// Attempts per stage; default: the coordinator's.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: Option<u32>,
    /// Largest request body to send; a bigger submission goes as an open pipeline
    /// with its items in batches, then sealed. Default: 90 % of the coordinator's
    /// limit (GET /v1/limits).
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(usize))]
    pub max_request_bytes: Option<usize>,
    /// Watch the pipeline after submitting (exit 5 when it does not complete).
    #[arg(long)]
    pub watch: bool,
    /// Print the API's JSON answer.
    #[arg(long)]
    pub json: bool,
}

/// `fleetctl watch`.
#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// The pipeline id.
    pub id: String,
    /// Print the final report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `fleetctl status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// The pipeline id.
    pub id: String,
    /// Print the API's JSON.
    #[arg(long)]
    pub json: bool,
    /// List every item, not just the first 50 / the unsuccessful ones.
    #[arg(long)]
    pub all_items: bool,
}

/// `fleetctl list`.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Only pipelines in this state.
    #[arg(long, value_parser = ["running", "completed", "partial_success", "failed", "cancelled", "timed_out"])]
    pub state: Option<String>,
    /// Page size.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Cursor of the next page (printed under the table).
    #[arg(long)]
    pub after: Option<String>,
    /// Print the API's JSON.
    #[arg(long)]
    pub json: bool,
}

/// Dead-letter selection shared by `list`, `replay` and `purge`.
#[derive(Debug, Clone, Default, Args)]
pub struct DlqFilter {
    /// Dead letters of this pipeline.
    #[arg(long)]
    pub pipeline_id: Option<String>,
    /// Dead letters of this stage.
    #[arg(long)]
    pub stage: Option<String>,
    /// Dead letters with this reason (attempts_exhausted, permanent_error, decode_error, unsupported_version, poison).
    #[arg(long)]
    pub reason: Option<String>,
}

/// `fleetctl dlq …`.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List archived dead letters, newest first.
    List {
        /// Which dead letters.
        #[command(flatten)]
        filter: DlqFilter,
        /// How many at most.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter with its headers and body.
    Show {
        /// The dead letter's archive id.
        id: i64,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-run dead-lettered items as a new pipeline (`replay_of` the old one), from their failed stage on.
    Replay(ChangeArgs),
    /// Delete dead letters from the archive.
    Purge(ChangeArgs),
}

/// Options of `dlq replay` and `dlq purge`.
#[derive(Debug, Clone, Args)]
pub struct ChangeArgs {
    /// Archive ids; or select with the filters.
    pub ids: Vec<i64>,
    /// Which dead letters (when no ids are given).
    #[command(flatten)]
    pub filter: DlqFilter,
    /// Only report what would happen (the default unless --yes; wins over --yes).
    #[arg(long)]
    pub dry_run: bool,
    /// Do it (turns the default dry run off).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Purge the whole archive (purge only; without ids or filters nothing is selected otherwise).
    #[arg(long)]
    pub all: bool,
    /// Replay at most this many items per second, e.g. `10/s`, `100/m` (replay only).
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Print the API's JSON answers.
    #[arg(long)]
    pub json: bool,
}

impl ChangeArgs {
    /// Whether this is a dry run: `--dry-run`, or no `--yes`.
    pub fn is_dry_run(&self) -> bool {
        self.dry_run || !self.yes
    }
}

/// `fleetctl demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Files or directories to process (default: ./docs and ./README.md).
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Directory for the SQLite files (default: a new temporary directory, kept afterwards).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Pipeline deadline.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub deadline: Duration,
    /// Print the final report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Keep the coordinator and workers running after the pipeline ends, so the web console
    /// (printed URL) can be looked around in; stop with Ctrl-C.
    #[arg(long)]
    pub keep: bool,
    /// Address of the coordinator's API and console (default: a free loopback port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub listen: std::net::SocketAddr,
}

/// Parses a deadline: a duration from now, or an RFC 3339 time.
pub fn parse_deadline(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(d) = humantime::parse_duration(s) {
        let d = chrono::Duration::from_std(d).map_err(|e| format!("`{s}`: {e}"))?;
        return Ok(chrono::Utc::now() + d);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|_| format!("`{s}`: expected a duration (30m, 2h) or an RFC 3339 time"))
}

/// Parses `10`, `10/s`, `600/m`, `600/min`, `3600/h` into items per second.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let (n, per) = s.split_once('/').unwrap_or((s, "s"));
    let n: f64 = n
        .trim()
        .parse()
        .map_err(|_| format!("`{s}`: expected a number per second, e.g. 10/s"))?;
    let secs = match per.trim() {
        "s" | "sec" | "second" => 1.0,
        "m" | "min" | "minute" => 60.0,
        "h" | "hour" => 3600.0,
        other => return Err(format!("`{s}`: unknown unit `{other}`; use /s, /m or /h")),
    };
    if !(n > 0.0 && n.is_finite()) {
        return Err(format!("`{s}`: the rate must be positive"));
    }
    Ok(n / secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("10/s"), Ok(10.0));
        assert_eq!(parse_rate("5"), Ok(5.0));
        assert_eq!(parse_rate("120/m"), Ok(2.0));
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("x").is_err());
        assert!(parse_rate("1/week").is_err());
    }

    #[test]
    fn dry_run_defaults() {
        let c = Cli::try_parse_from(["fleetctl", "dlq", "purge", "--stage", "write"]).unwrap();
        let Command::Dlq(DlqCommand::Purge(a)) = c.command else {
            panic!()
        };
        assert!(a.is_dry_run());
        let c = Cli::try_parse_from(["fleetctl", "dlq", "purge", "--yes", "1"]).unwrap();
        let Command::Dlq(DlqCommand::Purge(a)) = c.command else {
            panic!()
        };
        assert!(!a.is_dry_run());
        let c =
            Cli::try_parse_from(["fleetctl", "dlq", "replay", "--yes", "--dry-run", "1"]).unwrap();
        let Command::Dlq(DlqCommand::Replay(a)) = c.command else {
            panic!()
        };
        assert!(a.is_dry_run());
    }
}
