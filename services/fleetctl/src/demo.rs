//! `fleetctl demo`: the coordinator and the three workers in this process on
//! one in-memory broker, with embedded SQLite files; submits some files, shows
//! live progress, and ends with the report and where the results are.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser as _;
use fleet_core::{Broker, MemoryBroker};
use fleet_store::Value;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cli::{Connection, DemoArgs, SubmitArgs};
use crate::client::{Client, truncate};
use crate::exit::{self, Failure};
use crate::watch::{self, Display};
use crate::{report, submit};

/// The stages the demo runs, in route order.
const ROUTE: &str = "analyze,summarize,write";
/// Heartbeat interval of the demo's workers and coordinator.
const HEARTBEAT: &str = "1s";
/// Longest wait for everything to stop at the end.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Result rows printed at the end.
const SHOWN_RESULTS: usize = 5;

/// The default inputs: `./docs` and `./README.md`, whichever exist.
pub fn default_paths(cwd: &Path) -> Result<Vec<PathBuf>, Failure> {
    let found: Vec<PathBuf> = [PathBuf::from("docs"), PathBuf::from("README.md")]
        .into_iter()
        .filter(|p| cwd.join(p).exists())
        .collect();
    if found.is_empty() {
        return Err(Failure::usage(format!(
            "nothing to process: neither docs/ nor README.md exists in {}",
            cwd.display()
        ))
        .hint("run it from the fleet repository's root, or pass files: fleetctl demo PATH..."));
    }
    Ok(found)
}

fn arg(k: &str, v: impl std::fmt::Display) -> String {
    format!("--{k}={v}")
}

/// `fleetctl demo`.
pub async fn run(args: &DemoArgs) -> anyhow::Result<u8> {
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let paths = if args.paths.is_empty() {
        default_paths(&cwd)?
    } else {
        args.paths.clone()
    };
    // Read the inputs first: a typo must not start anything.
    let items = submit::load(&paths)?;
    let data = match &args.data {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!(
            "fleet-demo-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        )),
    };
    std::fs::create_dir_all(&data).map_err(|e| {
        Failure::usage(format!(
            "cannot create the data directory {}: {e}",
            data.display()
        ))
        .hint("pass a writable directory with --data")
    })?;
    let data = data.canonicalize().unwrap_or(data);
    if std::env::var_os("RUST_LOG").is_some() {
        fleet_runtime::telemetry::logging::init(
            fleet_runtime::telemetry::logging::LogFormat::Pretty,
        );
    }
    // One process-wide metrics recorder, installed before the workers race to install it.
    fleet_runtime::telemetry::admin::prometheus()?;

    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
    let shutdown = CancellationToken::new();
    let mut tasks: JoinSet<(&'static str, anyhow::Result<()>)> = JoinSet::new();
    let out = run_in(
        args,
        &data,
        items,
        &paths,
        broker.clone(),
        &shutdown,
        &mut tasks,
    )
    .await;
    shutdown.cancel();
    let stopped = tokio::time::timeout(STOP_TIMEOUT, async {
        while let Some(r) = tasks.join_next().await {
            if let Ok((name, Err(e))) = r {
                eprintln!("note: the {name} stopped with an error: {e:#}");
            }
        }
    })
    .await;
    if stopped.is_err() {
        tasks.abort_all();
    }
    out
}

async fn run_in(
    args: &DemoArgs,
    data: &Path,
    items: Vec<fleet_protocol::SubmitItem>,
    paths: &[PathBuf],
    broker: Arc<dyn Broker>,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<(&'static str, anyhow::Result<()>)>,
) -> anyhow::Result<u8> {
    let coordinator_db = data.join("coordinator.sqlite");
    let results_db = data.join("results.sqlite");

    // The coordinator, on port 0. Environment that would point it elsewhere is overridden.
    let mut cc = fleet_coordinator::Config::parse_args([
        "fleet-coordinator".to_owned(),
        arg("listen", args.listen),
        arg("admin-addr", "127.0.0.1:0"),
        arg("sqlite-path", coordinator_db.display()),
        arg("tick", "250ms"),
        arg("heartbeat-interval", HEARTBEAT),
        arg("route", ROUTE),
    ])
    .context("coordinator configuration (check FLEET_* variables)")?;
    cc.database_url = None;
    cc.api_token = None;
    cc.api_read_token = None;
    cc.api_auth = fleet_coordinator::config::ApiAuth::Token;
    cc.sqlite_path.clone_from(&coordinator_db);
    cc.route = ROUTE.to_owned();
    demo_runtime(&mut cc.runtime);
    let running = fleet_coordinator::start(cc, broker.clone(), shutdown.clone())
        .await
        .context("starting the coordinator")?;
    let api = running.api_addr;
    // It runs until the demo stops, or until one of its tasks fails (named in the error).
    tasks.spawn(async move { ("coordinator", running.wait().await) });

    // The analyzer: built-in analysis only.
    let mut ac = fleet_analyzer::Config::try_parse_from(["fleet-analyzer"])
        .context("analyzer configuration (check FLEET_* variables)")?;
    ac.analyzers_config = None;
    demo_runtime(&mut ac.runtime);
    let handler = fleet_analyzer::AnalyzeHandler::new(ac.analysis()?, Vec::new());
    let worker =
        fleet_runtime::Worker::new(ac.runtime, fleet_analyzer::STAGE).with_broker(broker.clone());
    let stop = shutdown.clone();
    tasks.spawn(async move { ("analyzer", worker.run(handler, stop).await) });

    // The summarizer: the built-in extractive summarizer, no model needed.
    let mut sc = fleet_summarizer::Config::try_parse_from(["fleet-summarizer"])
        .context("summarizer configuration (check FLEET_* variables)")?;
    sc.providers_config = None;
    sc.openai_base_url = None;
    demo_runtime(&mut sc.runtime);
    let handler = fleet_summarizer::build_handler(&sc)?;
    let worker =
        fleet_runtime::Worker::new(sc.runtime, fleet_summarizer::STAGE).with_broker(broker.clone());
    let stop = shutdown.clone();
    tasks.spawn(async move { ("summarizer", worker.run(handler, stop).await) });

    // The writer, into its own SQLite file.
    let mut wc = fleet_writer::Config::parse_args([
        "fleet-writer".to_owned(),
        arg("sqlite-path", results_db.display()),
    ])
    .context("writer configuration (check FLEET_* variables)")?;
    wc.database_url = None;
    wc.sqlite_path.clone_from(&results_db);
    demo_runtime(&mut wc.runtime);
    let writer = fleet_writer::Writer::new(wc)
        .await
        .context("starting the writer")?
        .with_broker(broker.clone());
    let results = writer.store().clone();
    let stop = shutdown.clone();
    tasks.spawn(async move { ("writer", writer.run(stop).await) });

    let url = format!("http://{api}");
    println!(
        "fleet demo: coordinator API at {url}, in-memory broker, data in {}",
        data.display()
    );
    println!("web console: {url}/ui (no login: the demo API is open on loopback)");
    let client = Client::new(&Connection {
        url: url.clone(),
        token: None,
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(30),
    })?;
    let sub_args = SubmitArgs {
        paths: paths.to_vec(),
        pipeline_id: None,
        route: None,
        deadline: Some(chrono::Utc::now() + chrono::Duration::from_std(args.deadline)?),
        timeout: None,
        max_attempts: None,
        max_request_bytes: None,
        watch: false,
        json: false,
    };
    let n = items.len();
    let sub = submit::build(&sub_args, items)?;
    let done = submit::post(&client, &sub).await?;
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    println!(
        "submitted {n} items from {} as pipeline {}",
        shown.join(", "),
        done.pipeline_id
    );

    let mut display = Display::new(&done.pipeline_id);
    let followed = tokio::select! {
        r = watch::follow(&client, &done.pipeline_id, &mut display) => r,
        Some(Ok((name, r))) = tasks.join_next() => {
            display.finish();
            return Err(match r {
                Err(e) => e.context(format!("the {name} stopped during the demo")),
                Ok(()) => anyhow::anyhow!("the {name} stopped during the demo"),
            });
        }
        _ = tokio::signal::ctrl_c() => {
            display.finish();
            return Err(Failure::new(exit::RUNTIME, "interrupted; stopping the demo").into());
        }
    };
    display.finish();
    let final_report = followed?;
    watch::print_final(&final_report, args.json)?;
    if !args.json {
        show_results(
            &results,
            &final_report.pipeline_id,
            &results_db,
            &coordinator_db,
        )
        .await;
    }
    if args.keep {
        println!(
            "\nkeeping the coordinator and workers running; look around at {url}/ui/pipelines/{} — Ctrl-C stops",
            final_report.pipeline_id
        );
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            Some(Ok((name, r))) = tasks.join_next() => {
                return Err(match r {
                    Err(e) => e.context(format!("the {name} stopped while kept running")),
                    Ok(()) => anyhow::anyhow!("the {name} stopped while kept running"),
                });
            }
        }
    }
    Ok(exit::for_state(&final_report.state))
}

/// Settings every in-process component shares: ephemeral admin ports, fast heartbeats,
/// and nothing from the environment that would send it elsewhere.
fn demo_runtime(rt: &mut fleet_runtime::RuntimeConfig) {
    rt.broker_url = "memory://".into();
    rt.prefix = "fleet".into();
    rt.stage = None;
    rt.worker_id = None;
    rt.admin_addr = ([127, 0, 0, 1], 0).into();
    rt.heartbeat_interval = humantime::parse_duration(HEARTBEAT).unwrap_or(Duration::from_secs(1));
}

async fn show_results(
    store: &fleet_store::Store,
    pipeline_id: &str,
    results_db: &Path,
    coordinator_db: &Path,
) {
    let rows = store
        .query(
            "SELECT item_id, outcome, summary_provider, summary FROM fleet_results \
             WHERE pipeline_id = $1 ORDER BY item_id",
            &[Value::from(pipeline_id)],
        )
        .await;
    println!();
    match rows {
        Ok(rows) => {
            println!("results: {} rows in {}", rows.len(), results_db.display());
            let table_rows: Vec<Vec<String>> = rows
                .iter()
                .take(SHOWN_RESULTS)
                .map(|r| {
                    let get = |k: &str| {
                        r.get::<Option<String>>(k)
                            .ok()
                            .flatten()
                            .unwrap_or_default()
                    };
                    vec![
                        get("item_id"),
                        get("outcome"),
                        get("summary_provider"),
                        truncate(&get("summary").replace('\n', " "), 80),
                    ]
                })
                .collect();
            if !table_rows.is_empty() {
                println!(
                    "{}",
                    report::table(&["ITEM", "OUTCOME", "PROVIDER", "SUMMARY"], &table_rows)
                );
            }
            if rows.len() > SHOWN_RESULTS {
                println!("({} more rows)", rows.len() - SHOWN_RESULTS);
            }
        }
        Err(e) => println!(
            "results: {} (reading them failed: {e})",
            results_db.display()
        ),
    }
    println!(
        "see them all:\n  sqlite3 {} \"SELECT item_id, outcome, summary_provider, substr(summary, 1, 80) FROM fleet_results WHERE pipeline_id = '{pipeline_id}' ORDER BY item_id\"",
        results_db.display()
    );
    println!(
        "coordinator state (pipelines, jobs, events): {}",
        coordinator_db.display()
    );
}
