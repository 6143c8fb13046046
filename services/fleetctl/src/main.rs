//! fleetctl: the command-line client of fleet-coordinator: `submit`, `watch`,
//! `status`, `list`, `cancel`, `dlq list|show|replay|purge`, `queues`, and
//! `demo` (coordinator + workers in one process on an in-memory broker).
//!
//! # Exit codes
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | runtime error |
//! | 2 | usage error: bad flags or arguments, unreadable input file, input the coordinator rejected (4xx), missing or wrong API token (401) |
//! | 3 | coordinator unreachable |
//! | 4 | not found: unknown pipeline or dead letter |
//! | 5 | the pipeline finished but not `completed` (`watch`, `submit --watch`, `demo`) |

mod batches;
mod cli;
mod client;
mod demo;
mod dlq;
mod exit;
mod report;
mod submit;
mod watch;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser as _;

use crate::cli::{Cli, Command};
use crate::client::{Client, Lookup, encode, query};
use crate::exit::Failure;

fn main() -> ExitCode {
    // clap exits 2 on usage errors and 0 for --help / --version.
    let mut cli = Cli::try_parse().unwrap_or_else(|e| e.exit());
    // The token may come from a file (FLEET_API_TOKEN_FILE), as for the coordinator.
    if let Err(e) = fleet_runtime::secret::load_into("FLEET_API_TOKEN", &mut cli.conn.token) {
        eprintln!("fleetctl: error: {e}");
        return ExitCode::from(exit::USAGE);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleetctl: error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::RUNTIME);
        }
    };
    let out = rt.block_on(run(cli));
    rt.shutdown_timeout(Duration::from_secs(2));
    match out {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            match e.chain().find_map(|c| c.downcast_ref::<Failure>()) {
                Some(f) => eprintln!("fleetctl: error: {f}"),
                None => eprintln!("fleetctl: error: {e:#}"),
            }
            ExitCode::from(exit::code_of(&e))
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    if let Command::Demo(args) = &cli.command {
        return demo::run(args).await;
    }
    let client = Client::new(&cli.conn)?;
    match &cli.command {
        Command::Submit(args) => submit::run(&client, args).await,
        Command::Watch(args) => watch::run(&client, &args.id, args.json).await,
        Command::Status(args) => {
            let r: report::Report = client
                .get(
                    &format!("/v1/pipelines/{}", encode(&args.id)),
                    Some(Lookup::pipeline(&args.id)),
                )
                .await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!("{}", report::render(&r, args.all_items));
            }
            Ok(exit::OK)
        }
        Command::List(args) => {
            let q = query(&[
                ("state", args.state.clone()),
                ("limit", Some(args.limit.to_string())),
                ("after", args.after.clone()),
            ]);
            let v: serde_json::Value = client.get(&format!("/v1/pipelines{q}"), None).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{}", report::render_list(&v));
            }
            Ok(exit::OK)
        }
        Command::Cancel(args) => {
            let (_, v): (_, serde_json::Value) = client
                .post(
                    &format!("/v1/pipelines/{}/cancel", encode(&args.id)),
                    &serde_json::json!({}),
                    &[],
                    Some(Lookup::pipeline(&args.id)),
                )
                .await?;
            println!(
                "pipeline {}: cancellation requested; state now {}",
                args.id,
                report::text(&v["state"])
            );
            Ok(exit::OK)
        }
        Command::Dlq(cmd) => dlq::run(&client, cmd).await,
        Command::Queues(args) => {
            let v: serde_json::Value = client.get("/v1/queues", None).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{}", report::render_queues(&v));
            }
            Ok(exit::OK)
        }
        Command::Parked(cli::ParkedCommand::Replay(args)) => {
            let (_, v): (_, serde_json::Value) = client
                .post(
                    "/v1/parked/replay",
                    &serde_json::json!({"max": args.max}),
                    &[],
                    None,
                )
                .await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "replayed {} parked message(s); {} still parked",
                    report::text(&v["replayed"]),
                    report::text(&v["parked"])
                );
            }
            Ok(exit::OK)
        }
        Command::Demo(_) => unreachable!("handled above"),
    }
}
