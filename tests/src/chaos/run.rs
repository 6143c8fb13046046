//! One scenario from start to end state: the world, the proxies in front of the broker and
//! PostgreSQL, the stub LLM, the processes, the feed, the fault schedule, the recording,
//! and the checks. One control loop does the supervising, the faults and the sampling, so
//! nothing races on the processes; every wait in it is bounded.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fleet_core::Source;
use fleet_test_support::corpus::Rng;
use fleet_test_support::{FaultProxy, url_addr, url_with_addr};
use tokio::time::Instant;

use crate::Backend;
use crate::llm::StubLlm;
use crate::world::{Limits, STAGES, World};

use super::check::end_state;
use super::feed::{self, FeedState, Pace};
use super::fleet::{Flags, Fleet};
use super::private::{Private, PrivateNats, PrivateRabbit};
use super::record::Recorder;
use super::scenario::{Faults, Scenario};
use super::table::Row;
use super::{poison, rss::Usage};

/// Healthy processing before the first fault when recording for the alert tests.
pub const HEALTHY: Duration = Duration::from_secs(60);
/// How long a continuous fault (LLM, worker loss, poison) lasts when recording.
pub const FAULT_WINDOW: Duration = Duration::from_secs(90);
/// Recording kept after the last fault ended (alerts must resolve).
pub const RESOLVE_TAIL: Duration = Duration::from_secs(180);
/// Broker connections cut and refused for this long.
pub const BROKER_CUT: Duration = Duration::from_secs(20);
/// PostgreSQL unreachable for this long.
pub const DB_OUTAGE: Duration = Duration::from_secs(30);
/// A crashed coordinator replica is started again after this long.
pub const COORDINATOR_DOWN: Duration = Duration::from_secs(5);
/// Scrape interval of the recording.
const SCRAPE_EVERY: Duration = Duration::from_secs(5);
/// Control loop tick.
const TICK: Duration = Duration::from_millis(250);

/// How one scenario runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The broker.
    pub backend: Backend,
    /// The scenario.
    pub scenario: Scenario,
    /// Items of the pipeline (burst mode; steady modes derive it from the rate).
    pub items: usize,
    /// Seed of the items and of the random choices.
    pub seed: u64,
    /// Replicas of each worker.
    pub replicas: usize,
    /// Where the recordings go (`<outdir>/<broker>-<scenario>/`).
    pub outdir: PathBuf,
    /// Recording mode: a steady feed, ≥ 60 s healthy before the first fault, faults of
    /// 90 s, and 180 s of recording after the last fault ended.
    pub record: bool,
    /// Items per second of a steady feed (recording, soak).
    pub rate: f64,
    /// Interval of the worker kills.
    pub kill_every: Duration,
    /// Bound on the whole scenario; past it the run stops and fails.
    pub bound: Duration,
    /// Soak: a steady feed for this long with the scenario's faults on all the time.
    pub soak: Option<Duration>,
    /// Progress lines on stderr.
    pub verbose: bool,
}

impl Options {
    /// Defaults for `scenario` on `backend`.
    pub fn new(backend: Backend, scenario: Scenario) -> Options {
        Options {
            backend,
            scenario,
            items: 1000,
            seed: 3,
            replicas: 2,
            outdir: PathBuf::from("target/chaos"),
            record: false,
            rate: 3.0,
            kill_every: Duration::from_secs(5),
            bound: Duration::from_secs(20 * 60),
            soak: None,
            verbose: true,
        }
    }
}

/// What a scenario produced.
pub struct Outcome {
    /// Its table row.
    pub row: Row,
    /// Every resource sample: `(seconds, kind, instance, usage)`.
    pub usage_log: Vec<(f64, String, String, Usage)>,
}

/// The broker's name in the table and the recording directory.
pub fn broker_name(b: Backend) -> &'static str {
    match b {
        Backend::Rabbit => "rabbitmq",
        Backend::Nats => "nats",
        Backend::Memory => "memory",
    }
}

/// One fault's window, relative to the trigger.
#[derive(Debug)]
struct Window {
    fault: &'static str,
    at: Duration,
    /// `None`: until every item is terminal.
    len: Option<Duration>,
    started: Option<Instant>,
    ended: bool,
}

fn plan(f: Faults, continuous: Option<Duration>, staggered: bool) -> Vec<Window> {
    let at = |secs: u64| {
        if staggered {
            Duration::from_secs(secs)
        } else {
            Duration::ZERO
        }
    };
    let mut w = Vec::new();
    let mut add = |on: bool, fault, at, len| {
        if on {
            w.push(Window {
                fault,
                at,
                len,
                started: None,
                ended: false,
            });
        }
    };
    add(f.llm, "llm-hang", Duration::ZERO, continuous);
    add(f.kill_workers, "worker-loss", Duration::ZERO, continuous);
    add(f.poison, "poison", Duration::ZERO, continuous);
    add(f.broker_cut, "broker-cut", at(5), Some(BROKER_CUT));
    add(
        f.broker_restart,
        "broker-restart",
        at(5),
        Some(Duration::from_secs(10)),
    );
    add(f.db_outage, "db-outage", at(15), Some(DB_OUTAGE));
    add(
        f.coordinator_crash,
        "coordinator-crash",
        at(25),
        Some(COORDINATOR_DOWN),
    );
    w
}

fn summarizer_flags(dir: &std::path::Path, stub: &StubLlm) -> Vec<String> {
    let file = dir.join("providers.toml");
    let _ = std::fs::write(
        &file,
        format!(
            "[[provider]]\nname = \"stub\"\nbase_url = \"{}\"\nmodel = \"stub\"\nstream = false\n\
             request_timeout = \"5s\"\nmax_concurrency = 16\n",
            stub.base_url()
        ),
    );
    vec![
        format!("--providers-config={}", file.display()),
        "--extractive-fallback=true".into(),
    ]
}

/// Progress of the pipeline as the coordinator's tables say: `(items stored, terminal, state)`.
async fn progress(w: &World, pid: &str) -> Option<(i64, i64, String)> {
    let p = [fleet_store::Value::from(pid)];
    let q = w.store.query_one(
        "SELECT (SELECT COUNT(*) FROM coord_items WHERE pipeline_id = $1) AS total, \
         (SELECT COUNT(*) FROM coord_items WHERE pipeline_id = $1 AND state <> 'running') AS done, \
         (SELECT state FROM coord_pipelines WHERE pipeline_id = $1) AS state",
        &p,
    );
    let r = tokio::time::timeout(Duration::from_secs(3), q)
        .await
        .ok()?
        .ok()?;
    Some((
        r.get("total").ok()?,
        r.get("done").ok()?,
        r.get::<Option<String>>("state")
            .ok()
            .flatten()
            .unwrap_or_default(),
    ))
}

/// Waits (bounded) until every stage's jobs queue and DLQ is empty; the non-empty ones.
async fn queues_left(w: &World, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        let mut left = Vec::new();
        for stage in STAGES {
            for source in [
                Source::Jobs {
                    stage: stage.into(),
                },
                Source::DeadLetters {
                    stage: stage.into(),
                },
            ] {
                match w.control.depth(&source).await {
                    Ok(0) => {}
                    Ok(n) => left.push(format!("{source:?}: {n}")),
                    Err(e) => {
                        if e.is_connection() {
                            let _ = w.control.reconnect().await;
                        }
                        left.push(format!("{source:?}: {e}"));
                    }
                }
            }
        }
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Runs one scenario; never panics on a fault's effect (violations go in the row).
pub async fn run_scenario(o: &Options) -> Outcome {
    let started = Instant::now();
    let broker = broker_name(o.backend);
    let name = o.scenario.name();
    let faults = o.scenario.faults();
    let say = |msg: String| {
        if o.verbose {
            eprintln!(
                "[{broker} {name} {:>6.1}s] {msg}",
                started.elapsed().as_secs_f64()
            );
        }
    };
    let mut errors = Vec::new();

    // The world, with every service behind a proxy (broker and database).
    // The broker-restart scenario runs on a private broker (the shared one is never restarted).
    let mut private = None;
    if faults.broker_restart {
        let started = match o.backend {
            Backend::Nats => {
                let dir =
                    std::env::temp_dir().join(format!("fleet-chaos-nats-{}", std::process::id()));
                PrivateNats::start(&dir).await.map(Private::Nats)
            }
            Backend::Rabbit => {
                say("starting a private RabbitMQ node".into());
                PrivateRabbit::start().await.map(Private::Rabbit)
            }
            Backend::Memory => Err("broker-restart needs a real broker".into()),
        };
        match started {
            Ok(p) => private = Some(p),
            Err(e) => errors.push(e),
        }
    }
    let url = match (&private, o.backend) {
        (Some(p), _) => p.url(),
        (None, Backend::Rabbit) => fleet_test_support::amqp_url(),
        (None, Backend::Nats) => fleet_test_support::nats_url(),
        (None, Backend::Memory) => panic!("the campaign runs on a real broker"),
    };
    let limits = Limits {
        max_attempts: 3,
        max_deliver: 5,
    };
    let mut world = World::on(o.backend, "chaos", limits, url.clone(), Vec::new()).await;
    world.heartbeat = "1s".into();
    let broker_proxy = FaultProxy::start(url_addr(&url).expect("broker address"))
        .await
        .expect("broker proxy");
    world.url = url_with_addr(&url, broker_proxy.addr()).expect("proxied broker URL");
    let pg = fleet_test_support::postgres_url();
    let db_proxy = FaultProxy::start(url_addr(&pg).expect("database address"))
        .await
        .expect("database proxy");
    let pg_proxied = url_with_addr(&pg, db_proxy.addr()).expect("proxied database URL");
    world.db_url = fleet_store::pg_url_with_schema(&pg_proxied, &world.schema);
    let stub = StubLlm::start().await;

    let mut flags = Flags::default();
    flags.by_kind.insert(
        "summarizer".into(),
        summarizer_flags(&world.path(""), &stub),
    );
    flags.by_kind.insert(
        "writer".into(),
        vec![format!("--database-url={}", world.db_url)],
    );
    if faults.poison {
        flags.by_kind.insert(
            "analyzer".into(),
            poison::analyzer_flags(&world.path("")).expect("poison analyzer config"),
        );
    }
    let mut fleet = Fleet::start(world, o.replicas, &flags).await;
    say(format!(
        "{} processes ready (prefix {})",
        fleet.targets().len(),
        fleet.world.prefix
    ));

    // Recording starts with the fleet ready.
    let t0 = Instant::now();
    let dir = o.outdir.join(format!("{broker}-{name}"));
    let mut rec = Recorder::create(&dir, t0).expect("recording directory");
    rec.phase("start", None);

    // The feed.
    let steady = o.record || o.soak.is_some();
    let feed_len = match o.soak {
        Some(d) => d,
        None => HEALTHY + FAULT_WINDOW + Duration::from_secs(30),
    };
    let (items, pace) = if steady {
        let every = Duration::from_secs(2);
        let batch = ((o.rate * every.as_secs_f64()).round() as usize).max(1);
        let n = (feed_len.as_secs_f64() / every.as_secs_f64()).ceil() as usize * batch;
        (n, Pace::Steady { batch, every })
    } else {
        (o.items, Pace::Burst)
    };
    let pid = format!("chaos-{name}");
    let state = Arc::new(FeedState::default());
    *state.apis.lock().expect("apis") = fleet.apis();
    state
        .poison
        .store(faults.poison && !o.record, Ordering::SeqCst);
    let feed = tokio::spawn(feed::run(state.clone(), pid.clone(), items, o.seed, pace));

    let continuous = match (o.soak, o.record) {
        (Some(d), _) => Some(d),
        (None, true) => Some(FAULT_WINDOW),
        (None, false) => None,
    };
    let mut windows = plan(faults, continuous, o.scenario == Scenario::All);
    let mut rng = Rng::new(o.seed ^ 0x5eed);
    let mut trigger: Option<Instant> = None;
    let mut killing = false;
    let mut next_kill = Instant::now();
    let (mut last_scrape, mut last_usage, mut last_log) =
        (None::<Instant>, None::<Instant>, Instant::now());
    let (mut last_done, mut last_change, mut longest) = (-1i64, Instant::now(), Duration::ZERO);
    let (mut all_terminal, mut finalized) = (None::<Instant>, None::<Instant>);
    let mut feed_result: Option<Result<(), String>> = None;
    let mut feed = Some(feed);
    let mut last_fault_end: Option<Instant> = None;

    loop {
        let now = Instant::now();
        for exit in fleet.supervise() {
            say(format!("exited on its own, started again: {exit}"));
        }
        *state.apis.lock().expect("apis") = fleet.apis();

        if feed
            .as_ref()
            .is_some_and(tokio::task::JoinHandle::is_finished)
            && let Some(f) = feed.take()
        {
            let r = f
                .await
                .unwrap_or_else(|e| Err(format!("feed panicked: {e}")));
            if let Err(e) = &r {
                say(format!("feed failed: {e}"));
            } else {
                rec.phase("submitted", None);
                say("sealed".into());
            }
            feed_result = Some(r);
        }

        // Progress, and the longest window with a backlog and no completion.
        if let Some((total, done, pstate)) = progress(&fleet.world, &pid).await {
            if done != last_done {
                last_done = done;
                last_change = now;
            } else if total > done {
                longest = longest.max(now - last_change);
            } else {
                last_change = now;
            }
            let sealed = state.sealed.load(Ordering::SeqCst);
            if all_terminal.is_none() && sealed && total as usize == items && done == total {
                all_terminal = Some(now);
                rec.phase("all_terminal", None);
                say(format!("all {items} items terminal"));
            }
            if finalized.is_none() && !pstate.is_empty() && pstate != "running" {
                finalized = Some(now);
                rec.phase("finalized", None);
                say(format!("finalized: {pstate}"));
            }
            if trigger.is_none() {
                let fire = if o.soak.is_some() {
                    true
                } else if o.record {
                    now - t0 >= HEALTHY
                } else {
                    done as usize >= (items / 20).max(1) || now - t0 >= Duration::from_secs(20)
                };
                if fire {
                    trigger = Some(now);
                }
            }
            if now - last_log >= Duration::from_secs(10) {
                last_log = now;
                say(format!(
                    "appended {} terminal {done}/{total} ({pstate}) exits {} kills {}",
                    state.appended.load(Ordering::SeqCst),
                    fleet.exits.len(),
                    fleet.kills.len()
                ));
            }
        }

        // The fault schedule.
        if let Some(tr) = trigger {
            for w in windows.iter_mut() {
                if w.started.is_none() && now >= tr + w.at {
                    w.started = Some(now);
                    rec.phase("fault_start", Some(w.fault));
                    say(format!("fault start: {}", w.fault));
                    match w.fault {
                        "llm-hang" => stub.set_chaos(10, 5),
                        "worker-loss" => {
                            killing = true;
                            next_kill = now;
                        }
                        "poison" => state.poison.store(true, Ordering::SeqCst),
                        "broker-cut" => {
                            broker_proxy.set_refuse(true);
                            broker_proxy.cut();
                        }
                        "db-outage" => {
                            db_proxy.set_refuse(true);
                            db_proxy.cut();
                        }
                        "coordinator-crash" => {
                            if let Some(n) = fleet.kill_coordinator().await {
                                say(format!("SIGKILL {n}"));
                            }
                        }
                        "broker-restart" if private.is_some() => {
                            if let Some(p) = private.as_mut() {
                                let t = Instant::now();
                                match p.down().await {
                                    Ok(()) => say(format!(
                                        "private broker down (took {:.1} s)",
                                        t.elapsed().as_secs_f64()
                                    )),
                                    Err(e) => errors.push(e),
                                }
                            }
                        }
                        _ => errors.push(format!("fault {} is not available", w.fault)),
                    }
                }
                let over = match (w.started, w.len) {
                    (Some(s), Some(len)) => now >= s + len,
                    (Some(_), None) => all_terminal.is_some(),
                    _ => false,
                };
                if over && !w.ended {
                    w.ended = true;
                    last_fault_end = Some(now);
                    rec.phase("fault_end", Some(w.fault));
                    say(format!("fault end: {}", w.fault));
                    match w.fault {
                        "llm-hang" => stub.set_chaos(0, 0),
                        "worker-loss" => killing = false,
                        "poison" if o.record => state.poison.store(false, Ordering::SeqCst),
                        "broker-cut" => broker_proxy.set_refuse(false),
                        "db-outage" => db_proxy.set_refuse(false),
                        "coordinator-crash" => fleet.restart_down(),
                        "broker-restart" => {
                            if let Some(p) = private.as_mut() {
                                let t = Instant::now();
                                match p.up().await {
                                    Ok(()) => say(format!(
                                        "private broker up again (took {:.1} s)",
                                        t.elapsed().as_secs_f64()
                                    )),
                                    Err(e) => errors.push(e),
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        if killing && now >= next_kill {
            next_kill = now + o.kill_every;
            if let Some(n) = fleet.kill_random_worker(rng.next_u64()).await {
                say(format!("SIGKILL {n}, started a new one"));
            }
        }

        // Sampling.
        if last_usage.is_none_or(|t| now - t >= Duration::from_secs(2)) {
            last_usage = Some(now);
            fleet.sample_usage((now - t0).as_secs_f64()).await;
        }
        if last_scrape.is_none_or(|t| now - t >= SCRAPE_EVERY) {
            last_scrape = Some(now);
            rec.scrape(&fleet.targets()).await;
        }

        // The end.
        let faults_over = windows.iter().all(|w| w.ended);
        let tail_over = !o.record || last_fault_end.is_some_and(|t| now - t >= RESOLVE_TAIL);
        let feed_over = feed_result.is_some();
        if feed_over && finalized.is_some() && faults_over && tail_over {
            break;
        }
        if matches!(feed_result, Some(Err(_))) && faults_over && now - t0 > Duration::from_secs(30)
        {
            break;
        }
        if started.elapsed() >= o.bound {
            errors.push(format!("not finished within {:?}", o.bound));
            break;
        }
        tokio::time::sleep(TICK).await;
    }
    if let Some(Err(e)) = &feed_result {
        errors.push(format!("submission: {e}"));
    }
    if let Some(f) = feed.take() {
        f.abort();
    }
    // Whatever is still broken is repaired before the end state is read.
    stub.set_chaos(0, 0);
    broker_proxy.set_refuse(false);
    db_proxy.set_refuse(false);
    fleet.restart_down();
    let _ = fleet.supervise();

    let left = queues_left(&fleet.world, Duration::from_secs(60)).await;
    if !left.is_empty() {
        errors.push(format!("queues not empty: {}", left.join(", ")));
    }
    let mut in_flight = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let _ = fleet.supervise();
        in_flight = fleet.in_flight().await;
        if in_flight == Some(0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    rec.scrape(&fleet.targets()).await;
    let mut end = end_state(&fleet.world, &pid, items, in_flight).await;
    // A dead letter whose archiving met the database outage waits in the coordinator's
    // control retry ladder (up to 30 s a step), not in its DLQ: the archive may still be
    // catching up with the failed items after the queues are empty (seen on RabbitMQ).
    let archive_deadline = Instant::now() + Duration::from_secs(90);
    while end.unarchived > 0 && Instant::now() < archive_deadline {
        tokio::time::sleep(Duration::from_secs(2)).await;
        end = end_state(&fleet.world, &pid, items, in_flight).await;
    }
    rec.phase("end", None);

    let row = Row {
        broker: broker.into(),
        scenario: name.into(),
        end,
        longest_stall: longest,
        exits: fleet.exits.clone(),
        kills: fleet.kills.len(),
        peak_rss: fleet.peak_rss.clone(),
        took: started.elapsed(),
        errors,
    };
    let failed = !row.violations().is_empty();
    // A process that exited on its own says why only in its log: keep the logs then too
    // (found this way: a shared-broker sweep by another test run deleting the scenario's queues).
    if failed || !row.exits.is_empty() {
        // Keep the services' logs next to the recording.
        let logs = dir.join("logs");
        let _ = std::fs::create_dir_all(&logs);
        if let Ok(rd) = std::fs::read_dir(fleet.world.path("")) {
            for e in rd.flatten() {
                let _ = std::fs::copy(e.path(), logs.join(e.file_name()));
            }
        }
        let why = if failed { "FAILED" } else { "processes exited" };
        say(format!("{why}; logs kept in {}", logs.display()));
    }
    let usage_log = std::mem::take(&mut fleet.usage_log);
    let mut world = fleet.world;
    world.url = url;
    world.cleanup().await;
    drop(broker_proxy);
    drop(db_proxy);
    if let Some(p) = private {
        p.remove().await;
    }
    Outcome { row, usage_log }
}
