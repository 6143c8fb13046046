//! fleet-bench: jobs per second of the fleet runtime next to the plain client loop on the
//! same broker, in the same run, at the same prefetch (DESIGN §8, "Benchmarks").
//!
//! `cargo run --release -p fleet-bench -- --broker all --jobs 100000 --prefetch 256`
//!
//! For each broker: declare a run-unique topology, pre-load N no-op jobs, consume them with
//! the raw client (lapin / async-nats), pre-load N more, consume them with a
//! [`fleet_runtime::Worker`] running a no-op handler, print both rates, delete the topology.
//!
//! `cargo run --release -p fleet-bench -- mixed --broker rabbitmq --items 1000` runs the
//! three real service binaries on mixed text items instead (see [`mixed`]).

mod alloc;
mod cpu;
mod load;
mod mixed;
mod probe;
mod raw_amqp;
mod raw_floor;
mod raw_nats;
mod report;
mod runtime_side;
mod scenario;

use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Which brokers to benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Which {
    /// RabbitMQ only.
    Rabbitmq,
    /// NATS JetStream only.
    Nats,
    /// RabbitMQ, then NATS.
    All,
}

/// The command line: the runtime-vs-raw benchmark's options, or a subcommand.
#[derive(Debug, Clone, Parser)]
#[command(
    about = "fleet throughput benchmarks: runtime vs raw client loop (default), or `mixed`",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// Another benchmark than runtime vs raw loop.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of the runtime-vs-raw benchmark.
    #[command(flatten)]
    pub args: Args,
}

/// The other benchmarks.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// 1,000 mixed text items through the real analyzer, summarizer (extractive) and writer
    /// (PostgreSQL) binaries on one broker: items/s, end-to-end latency, CPU and peak RSS.
    Mixed(mixed::MixedArgs),
}

/// Options of the runtime-vs-raw benchmark.
#[derive(Debug, Clone, Parser)]
pub struct Args {
    /// Brokers to benchmark.
    #[arg(long, value_enum, default_value = "all")]
    pub broker: Which,
    /// Jobs consumed by each side (raw loop and runtime).
    #[arg(long, default_value_t = 100_000)]
    pub jobs: u64,
    /// Prefetch of both sides; also the runtime's concurrency.
    #[arg(long, default_value_t = 256)]
    pub prefetch: u16,
    /// RabbitMQ URL.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub amqp_url: String,
    /// NATS URL.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Also time the runtime's pulls, event batches and acks (wraps its broker) and print them.
    #[arg(long)]
    pub probe: bool,
    /// Bound on every wait (loading, consuming, draining), in seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
}

impl Args {
    /// The bound on every wait.
    pub fn limit(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }
}

/// Counts allocations, for allocations per job.
#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    fleet_runtime::telemetry::logging::init(fleet_runtime::telemetry::logging::LogFormat::Pretty);
    if let Some(Command::Mixed(m)) = cli.command {
        return mixed::main(m).await;
    }
    let args = cli.args;
    anyhow::ensure!(args.jobs > 0, "--jobs must be at least 1");
    anyhow::ensure!(args.prefetch > 0, "--prefetch must be at least 1");
    let brokers: &[load::Kind] = match args.broker {
        Which::Rabbitmq => &[load::Kind::RabbitMq],
        Which::Nats => &[load::Kind::Nats],
        Which::All => &[load::Kind::RabbitMq, load::Kind::Nats],
    };
    // How busy the box is before we start: results on a loaded machine are not comparable.
    let before = cpu::Snapshot::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = cpu::busy_cores(&before, &cpu::Snapshot::now());
    let mut rows = Vec::new();
    for kind in brokers {
        rows.push(scenario::run(*kind, &args).await?);
    }
    report::print(&args, &rows, idle);
    Ok(())
}
