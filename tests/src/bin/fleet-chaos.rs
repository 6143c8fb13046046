//! fleet-chaos: the fault campaign of issue 10 (see `docs/reliability.md`).
//!
//! Runs the real service binaries as processes (two coordinator replicas on PostgreSQL, two
//! replicas of each worker) on RabbitMQ and/or NATS, pushes one pipeline of mixed items
//! (40 % ~2.5 KB, 60 % ~25 KB) through them while injecting faults, prints one table row
//! per scenario and exits non-zero when any end-state assertion fails.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use fleet_tests::Backend;
use fleet_tests::chaos::run::broker_name;
use fleet_tests::chaos::{Options, Scenario, soak, table};

/// The fault campaign: faults injected into a real fleet while one pipeline of mixed items
/// runs, the end state asserted (every item terminal, rows = succeeded items, no
/// duplicates, dead letters = failed items, in-flight back to 0, finalized exactly once).
///
/// Scenarios: llm-hang (the stub LLM hangs on 10 % of requests, 500 on 5 %), worker-loss
/// (SIGKILL a random worker every --kill-every, start a new one), broker-cut (every broker
/// connection cut and refused for 20 s through a proxy), broker-restart (a private broker
/// restarted on its store: a nats-server on port 31222 stopped and started again, or a
/// RabbitMQ node fleet-chaos1@localhost on port 31672 put through `rabbitmqctl stop_app` /
/// `start_app`), db-outage (PostgreSQL unreachable for 30 s for the writers and coordinators), poison (1 % of items: half malformed, half crashing the
/// analyzer process), coordinator-crash (SIGKILL a coordinator replica, start it again
/// after 5 s), all-at-once (all of these, the broker fault as the cut).
///
/// Needs the service binaries built next to this one (`cargo build --bins`, or
/// `cargo build --release --bins` for a release run), and RabbitMQ, NATS and PostgreSQL on
/// loopback (FLEET_TEST_AMQP_URL, FLEET_TEST_NATS_URL, FLEET_TEST_DATABASE_URL override).
#[derive(Debug, Parser)]
#[command(name = "fleet-chaos", version)]
struct Args {
    /// Brokers: rabbitmq, nats or all (one after the other).
    #[arg(long, default_value = "all")]
    broker: String,
    /// Scenarios, comma-separated names, or `all` for every scenario in order.
    #[arg(long, default_value = "all")]
    scenario: String,
    /// Items of the pipeline (burst mode).
    #[arg(long, default_value_t = 1000)]
    items: usize,
    /// Seed of the items and of the random choices.
    #[arg(long, default_value_t = 3)]
    seed: u64,
    /// Replicas of each worker (there are always two coordinators).
    #[arg(long, default_value_t = 2)]
    replicas: usize,
    /// Where recordings (series.jsonl, phases.jsonl) and tables go.
    #[arg(long, default_value = "target/chaos")]
    outdir: PathBuf,
    /// Recording mode for the alert tests: a steady feed at --rate instead of a burst, 60 s
    /// of healthy processing before the first fault, continuous faults for 90 s, and 180 s
    /// of recording after the last fault ended.
    #[arg(long)]
    record: bool,
    /// Items per second of a steady feed (--record, --soak).
    #[arg(long, default_value_t = 3.0)]
    rate: f64,
    /// Interval between worker kills (worker-loss, all-at-once, soak).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    kill_every: Duration,
    /// Bound on one scenario; past it the scenario stops and fails.
    #[arg(long, default_value = "20m", value_parser = humantime::parse_duration)]
    bound: Duration,
    /// Run the soak instead of the scenarios: a steady feed at --rate for this long with
    /// faults 1 and 2 on, RSS / open fds / threads sampled per service, slopes printed.
    #[arg(long, value_parser = humantime::parse_duration)]
    soak: Option<Duration>,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
}

fn brokers(s: &str) -> Result<Vec<Backend>, String> {
    match s {
        "all" => Ok(vec![Backend::Rabbit, Backend::Nats]),
        "rabbitmq" => Ok(vec![Backend::Rabbit]),
        "nats" => Ok(vec![Backend::Nats]),
        _ => Err(format!("unknown broker {s:?}: rabbitmq, nats or all")),
    }
}

fn scenarios(s: &str) -> Result<Vec<Scenario>, String> {
    if s == "all" {
        return Ok(Scenario::EVERY.to_vec());
    }
    s.split(',')
        .map(|n| Scenario::parse(n.trim()).ok_or_else(|| format!("unknown scenario {n:?}")))
        .collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let (brokers, mut scenarios) = match (brokers(&args.broker), scenarios(&args.scenario)) {
        (Ok(b), Ok(s)) => (b, s),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("fleet-chaos: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if args.soak.is_some() {
        scenarios = vec![Scenario::Soak];
    }
    let _ = std::fs::create_dir_all(&args.outdir);
    let mut lines = vec![table::header()];
    let mut failed = false;
    println!("{}", table::header());
    for backend in brokers {
        for scenario in &scenarios {
            let mut o = Options::new(backend, *scenario);
            o.items = args.items;
            o.seed = args.seed;
            o.replicas = args.replicas;
            o.outdir = args.outdir.clone();
            o.record = args.record;
            o.rate = args.rate;
            o.kill_every = args.kill_every;
            o.bound = args.bound;
            o.soak = args.soak;
            o.verbose = !args.quiet;
            // A panic (a process that never got ready) fails this scenario, not the campaign.
            let task = tokio::spawn({
                let o = o.clone();
                async move { fleet_tests::chaos::run_scenario(&o).await }
            });
            let out = match task.await {
                Ok(out) => out,
                Err(e) => {
                    eprintln!(
                        "fleet-chaos: {} {scenario} panicked: {e}",
                        broker_name(backend)
                    );
                    failed = true;
                    lines.push(format!(
                        "| {} | {scenario} | – | panicked: {e} |",
                        broker_name(backend)
                    ));
                    continue;
                }
            };
            let line = table::line(&out.row);
            println!("{line}");
            failed |= !out.row.violations().is_empty();
            lines.push(line.clone());
            if let Some(d) = args.soak {
                let warmup = 60.0_f64.min(d.as_secs_f64() / 5.0);
                let trends = soak::trends(&out.usage_log, warmup);
                let t = soak::table(&trends);
                println!(
                    "\nsoak {} for {d:?} (after {warmup:.0} s warm-up):\n{t}",
                    broker_name(backend)
                );
                let _ = std::fs::write(
                    args.outdir
                        .join(format!("soak-{}.md", broker_name(backend))),
                    format!("{}\n{}\n\n{t}", table::header(), line),
                );
            }
        }
    }
    let _ = std::fs::write(args.outdir.join("table.md"), lines.join("\n") + "\n");
    if failed {
        eprintln!(
            "fleet-chaos: at least one scenario broke an end-state assertion (see the table)"
        );
        std::process::ExitCode::from(1)
    } else {
        std::process::ExitCode::SUCCESS
    }
}
