//! One fault test's world of real processes: the coordinator and the workers as separate
//! binaries on one broker (RabbitMQ or NATS) and PostgreSQL, under a run-unique prefix and
//! database schema, with the test's own broker connection and store for assertions.
//!
//! On a failing test (a panic), `Drop` prints every process's output and removes the
//! broker objects and the schema; a passing test calls [`World::cleanup`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fleet_core::broker::default_retry_ladder;
use fleet_core::{Broker, Source, Topology};
use fleet_protocol::Names;
use fleet_runtime::RuntimeConfig;
use fleet_store::{Store, StoreOptions, params};
use fleet_test_support::{unique_prefix, wait_for};
use serde_json::{Value, json};

use crate::Backend;
use crate::procs::{self, Proc};

/// The stages of the default route, plus the coordinator's `submit` (its DLQ).
pub const STAGES: [&str; 3] = ["analyze", "summarize", "write"];
/// How long a process may take to become ready.
const READY: Duration = Duration::from_secs(20);
/// Workers' and the coordinator's heartbeat interval: `worker_lost` after three of them.
pub const HEARTBEAT: &str = "300ms";

/// Attempt limits every process of a world shares (RabbitMQ fixes `x-delivery-limit` at
/// the first declaration, so they must agree).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Runtime `--max-attempts` of every service.
    pub max_attempts: u32,
    /// Broker backstop `--max-deliver` (RabbitMQ `x-delivery-limit`, NATS `max_deliver`).
    pub max_deliver: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_attempts: 3,
            max_deliver: 4,
        }
    }
}

/// A test's world of processes.
pub struct World {
    /// The broker.
    pub backend: Backend,
    /// Run-unique prefix of every queue, stream and the schema.
    pub prefix: String,
    /// Broker URL.
    pub url: String,
    /// The database schema (PostgreSQL).
    pub schema: String,
    /// PostgreSQL URL with `search_path` set to the schema.
    pub db_url: String,
    /// The test's own broker connection (depths, crash-simulating consumers).
    pub control: Arc<dyn Broker>,
    /// The test's own store in the schema (the coordinator's and the writer's tables).
    pub store: Store,
    /// Shared attempt limits.
    pub limits: Limits,
    /// More runtime flags every process gets (e.g. `--quorum-group-size=3` on a cluster).
    pub extra_args: Vec<String>,
    /// The current coordinator's API address.
    pub api: Option<SocketAddr>,
    /// `--heartbeat-interval` of every process started from now on ([`HEARTBEAT`] by default).
    pub heartbeat: String,
    dir: PathBuf,
    procs: Vec<Proc>,
    launches: Vec<Launch>,
    started: BTreeMap<String, usize>,
    cleaned: bool,
}

/// How a process was started, so that a replacement starts the same way (fresh ports).
#[derive(Debug, Clone)]
struct Launch {
    kind: String,
    extra: Vec<String>,
    listen: Option<SocketAddr>,
}

/// A handle on a process of the world.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcId(usize);

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

impl World {
    /// A fresh world with default limits; fails loudly when a service is unreachable or a
    /// binary is missing.
    pub async fn new(backend: Backend, tag: &str) -> World {
        World::with_limits(backend, tag, Limits::default()).await
    }

    /// A fresh world whose processes all use `limits`.
    pub async fn with_limits(backend: Backend, tag: &str, limits: Limits) -> World {
        let url = match backend {
            Backend::Rabbit => fleet_test_support::amqp_url(),
            Backend::Nats => fleet_test_support::nats_url(),
            Backend::Memory => panic!("the fault tests run separate processes on a real broker"),
        };
        World::on(backend, tag, limits, url, Vec::new()).await
    }

    /// A world on the broker at `url` (e.g. a cluster's comma-separated node list) whose
    /// processes all get `extra_args` besides the shared runtime flags.
    pub async fn on(
        backend: Backend,
        tag: &str,
        limits: Limits,
        url: String,
        extra_args: Vec<String>,
    ) -> World {
        init_logs();
        procs::check_binaries();
        let prefix = unique_prefix(tag);
        let base = fleet_test_support::postgres_url();
        let schema = prefix.replace('-', "_");
        let admin = Store::connect(
            Some(&base),
            "unused.sqlite".as_ref(),
            StoreOptions::default(),
        )
        .await
        .expect("a PostgreSQL URL");
        admin
            .execute(&format!("CREATE SCHEMA {schema}"), &[])
            .await
            .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {base}: {e}"));
        let db_url = fleet_store::pg_url_with_schema(&base, &schema);
        let store = Store::connect(
            Some(&db_url),
            "unused.sqlite".as_ref(),
            StoreOptions::default(),
        )
        .await
        .expect("the schema's store");
        let cfg = control_config_with(&url, &prefix, &extra_args);
        let control = fleet_runtime::connect::connect(&cfg)
            .await
            .unwrap_or_else(|e| panic!("cannot reach the {backend:?} broker at {url}: {e}"));
        let dir = std::env::temp_dir().join(format!("fleet-faults-{prefix}"));
        std::fs::create_dir_all(&dir).expect("log directory");
        let w = World {
            backend,
            prefix,
            url,
            schema,
            db_url,
            control,
            store,
            limits,
            extra_args,
            api: None,
            heartbeat: HEARTBEAT.to_owned(),
            dir,
            procs: Vec::new(),
            launches: Vec::new(),
            started: BTreeMap::new(),
            cleaned: false,
        };
        // Declared with the services' own limits (RabbitMQ refuses a differing redeclaration);
        // on NATS the test's connection also learns the stream names this way.
        w.control
            .declare(&w.topology())
            .await
            .expect("declare the test topology");
        w
    }

    /// Every broker object of the world: the default route's stages and `submit`.
    pub fn topology(&self) -> Topology {
        let mut stages: Vec<String> = STAGES.iter().map(|s| (*s).to_owned()).collect();
        stages.push("submit".into());
        Topology {
            names: Names::new(&self.prefix),
            stages,
            ack_wait: Duration::from_secs(3),
            max_deliver: self.limits.max_deliver,
            max_ack_pending: 1024,
            retry_ladder: default_retry_ladder(),
        }
    }

    /// The runtime flags every process shares (short heartbeats and ack wait: fast tests).
    fn runtime_args(&self, admin: SocketAddr) -> Vec<String> {
        vec![
            format!("--broker-url={}", self.url),
            format!("--prefix={}", self.prefix),
            format!("--admin-addr={admin}"),
            format!("--heartbeat-interval={}", self.heartbeat),
            "--ack-wait=3s".into(),
            format!("--max-attempts={}", self.limits.max_attempts),
            format!("--max-deliver={}", self.limits.max_deliver),
            "--retry-base=100ms".into(),
            "--retry-max=1s".into(),
            "--drain-deadline=2s".into(),
            "--broker-heartbeat=2s".into(),
            "--confirm-timeout=5s".into(),
            "--max-timeout=2m".into(),
        ]
        .into_iter()
        .chain(nats_replicas_arg(&self.url))
        .chain(self.extra_args.iter().cloned())
        .collect()
    }

    /// A path in the world's scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn spawn(&mut self, kind: &str, binary: &str, args: Vec<String>, admin: SocketAddr) -> ProcId {
        let n = self.started.entry(kind.to_owned()).or_default();
        *n += 1;
        let name = format!("{kind}-{n}");
        let log = self.dir.join(format!("{name}.log"));
        self.procs
            .push(Proc::spawn(&name, binary, &args, admin, &log));
        ProcId(self.procs.len() - 1)
    }

    /// Spawns a process of `kind` (`coordinator`, `analyzer`, …) with the shared flags plus
    /// `extra`, on fresh ports, without waiting for it to be ready.
    pub fn launch(&mut self, kind: &str, extra: &[String]) -> ProcId {
        let admin = procs::free_addr();
        let mut args = self.runtime_args(admin);
        let mut listen = None;
        if kind == "coordinator" {
            let l = procs::free_addr();
            args.extend([
                format!("--listen={l}"),
                format!("--database-url={}", self.db_url),
                "--tick=100ms".into(),
            ]);
            if !extra.iter().any(|a| a.starts_with("--deadline-grace")) {
                args.push("--deadline-grace=1s".into());
            }
            listen = Some(l);
        }
        args.extend(extra.iter().cloned());
        let id = self.spawn(kind, &format!("fleet-{kind}"), args, admin);
        self.launches.push(Launch {
            kind: kind.to_owned(),
            extra: extra.to_vec(),
            listen,
        });
        id
    }

    /// Spawns a replacement for `id` (same kind and flags, fresh ports), not waiting for it;
    /// `id` itself is left as it is (kill it first).
    pub fn respawn(&mut self, id: ProcId) -> ProcId {
        let l = self.launches[id.0].clone();
        self.launch(&l.kind, &l.extra)
    }

    /// The kind of a process (`coordinator`, `analyzer`, …).
    pub fn kind(&self, id: ProcId) -> &str {
        &self.launches[id.0].kind
    }

    /// A coordinator's API address.
    pub fn listen(&self, id: ProcId) -> Option<SocketAddr> {
        self.launches[id.0].listen
    }

    /// Starts a coordinator (a new API port each time) and waits until it is ready; it
    /// becomes the one [`World::api`] talks to. `extra` are more flags.
    pub async fn start_coordinator(&mut self, extra: &[&str]) -> ProcId {
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        let id = self.launch("coordinator", &extra);
        let listen = self.listen(id).expect("a coordinator listens");
        self.procs[id.0].wait_ready(READY).await;
        procs::wait_http(listen, "/v1/pipelines", 200, READY).await;
        self.api = Some(listen);
        id
    }

    /// Starts a worker binary (`fleet-analyzer`, …) with the shared flags plus `extra`.
    pub async fn start_worker(&mut self, kind: &str, extra: &[String]) -> ProcId {
        let id = self.launch(kind, extra);
        self.procs[id.0].wait_ready(READY).await;
        id
    }

    /// Starts the analyzer.
    pub async fn start_analyzer(&mut self) -> ProcId {
        self.start_worker("analyzer", &[]).await
    }

    /// Starts the writer on the world's schema.
    pub async fn start_writer(&mut self) -> ProcId {
        let db = format!("--database-url={}", self.db_url);
        self.start_worker("writer", &[db, "--batch-size=4".into()])
            .await
    }

    /// Starts a summarizer with `extra` flags (e.g. a provider).
    pub async fn start_summarizer(&mut self, extra: &[String]) -> ProcId {
        self.start_worker("summarizer", extra).await
    }

    /// SIGKILLs a process and reaps it.
    pub async fn kill(&mut self, id: ProcId) {
        self.procs[id.0].kill().await;
    }

    /// Every process's admin address, by name (`/readyz`, `/metrics`).
    pub fn admins(&self) -> Vec<(String, SocketAddr)> {
        self.procs
            .iter()
            .map(|p| (p.name.clone(), p.admin))
            .collect()
    }

    /// A process of the world.
    pub fn proc(&self, id: ProcId) -> &Proc {
        &self.procs[id.0]
    }

    /// Mutable access to a process of the world (readiness waits).
    pub fn proc_mut(&mut self, id: ProcId) -> &mut Proc {
        &mut self.procs[id.0]
    }

    /// The exit status of a process of the world, if it has exited.
    pub fn exited(&mut self, id: ProcId) -> Option<std::process::ExitStatus> {
        self.procs[id.0].exited()
    }

    // ---- the coordinator's API ----

    fn api(&self) -> SocketAddr {
        self.api.expect("a coordinator was started")
    }

    /// One request to the current coordinator; the body parsed as JSON when it is.
    pub async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let body = body.map(Value::to_string);
        let (s, b) = procs::http(self.api(), method, path, body.as_deref())
            .await
            .unwrap_or_else(|e| panic!("{method} {path} on the coordinator: {e}"));
        (s, serde_json::from_str(&b).unwrap_or(Value::String(b)))
    }

    /// Submits a pipeline (201 expected) and returns the answer.
    pub async fn submit(&self, body: &Value) -> Value {
        let (s, v) = self.call("POST", "/v1/pipelines", Some(body)).await;
        assert_eq!(s, 201, "submission refused: {v}");
        v
    }

    /// `GET /v1/pipelines/{id}`.
    pub async fn report(&self, pid: &str) -> Value {
        let (s, v) = self
            .call("GET", &format!("/v1/pipelines/{pid}"), None)
            .await;
        assert_eq!(s, 200, "report of {pid}: {v}");
        v
    }

    /// Waits until the pipeline is in `state` and returns its report.
    pub async fn wait_state(&self, pid: &str, state: &str, within: Duration) -> Value {
        wait_for(&format!("pipeline {pid} to be {state}"), within, || async {
            let (s, r) = self
                .call("GET", &format!("/v1/pipelines/{pid}"), None)
                .await;
            if s == 200 && r["state"] == state {
                Ok(r)
            } else {
                Err(format!("state {} items {}", r["state"], r["items"]))
            }
        })
        .await
    }

    /// Waits until the report lists `job_id` as stalled with `kind`; returns that entry.
    pub async fn wait_stall(&self, pid: &str, job_id: &str, kind: &str, within: Duration) -> Value {
        wait_for(
            &format!("{job_id} reported stalled as {kind}"),
            within,
            || async {
                let r = self.report(pid).await;
                let hit = r["stalled"]
                    .as_array()
                    .and_then(|a| {
                        a.iter()
                            .find(|s| s["job_id"] == job_id && s["kind"] == kind)
                    })
                    .cloned();
                hit.ok_or(format!("stalled: {}", r["stalled"]))
            },
        )
        .await
    }

    // ---- end states ----

    /// Waits until the jobs queue (and DLQ) of every stage is empty.
    pub async fn wait_queues_empty(&self, within: Duration) {
        for stage in STAGES {
            for source in [
                Source::Jobs {
                    stage: stage.into(),
                },
                Source::DeadLetters {
                    stage: stage.into(),
                },
            ] {
                wait_for(&format!("{source:?} to be empty"), within, || async {
                    match self.control.depth(&source).await {
                        Ok(0) => Ok(()),
                        Ok(n) => Err(format!("{n} waiting")),
                        Err(e) => {
                            // The test's own connection may have lost its broker node too.
                            if e.is_connection() {
                                let _ = self.control.reconnect().await;
                            }
                            Err(e.to_string())
                        }
                    }
                })
                .await;
            }
        }
    }

    /// Rows the writer stored per item of `pid` (empty when the writer never ran).
    pub async fn rows(&self, pid: &str) -> BTreeMap<String, i64> {
        let exists = self
            .store
            .query_one("SELECT to_regclass('fleet_results') IS NOT NULL AS t", &[])
            .await
            .expect("look up fleet_results")
            .get::<bool>("t")
            .expect("t");
        if !exists {
            return BTreeMap::new();
        }
        self.store
            .query(
                "SELECT item_id, COUNT(*) AS n FROM fleet_results WHERE pipeline_id = $1 GROUP BY item_id",
                params![pid],
            )
            .await
            .expect("count rows")
            .iter()
            .map(|r| (r.get("item_id").expect("item_id"), r.get("n").expect("n")))
            .collect()
    }

    /// Asserts exactly one stored row for each of `items` and none for any other item.
    pub async fn assert_rows(&self, pid: &str, items: &[&str]) {
        let rows = self.rows(pid).await;
        let want: BTreeMap<String, i64> = items.iter().map(|i| ((*i).to_owned(), 1)).collect();
        assert_eq!(rows, want, "rows written for {pid} (item → count)");
    }

    /// Finalization messages written to the outbox for `pid` (exactly once: 1), after
    /// waiting until the outbox relay has published everything.
    pub async fn final_messages(&self, pid: &str) -> i64 {
        wait_for("the outbox relay to publish everything", READY, || async {
            self.store
                .query_one(
                    "SELECT COUNT(*) AS n FROM coord_outbox WHERE published_at IS NULL",
                    &[],
                )
                .await
                .ok()?
                .get::<i64>("n")
                .ok()
                .filter(|n| *n == 0)
        })
        .await;
        self.store
            .query_one(
                "SELECT COUNT(*) AS n FROM coord_outbox WHERE dest_kind = 'pipeline' AND msg_id = $1",
                params![format!("{pid}/final")],
            )
            .await
            .expect("count final messages")
            .get("n")
            .expect("n")
    }

    /// Asserts the end state shared by every test: the report is final with `state`, every
    /// item terminal, nothing stalled, and exactly one finalization message.
    pub async fn assert_final(&self, pid: &str, state: &str) -> Value {
        let r = self.report(pid).await;
        assert_eq!(r["state"], state, "{r}");
        assert_eq!(r["items_terminal"], r["items_total"], "{r}");
        for item in r["items"].as_array().expect("items") {
            assert_ne!(item["state"], "running", "item not terminal: {item}");
        }
        assert_eq!(
            r["stalled"].as_array().map_or(0, Vec::len),
            0,
            "nothing stalled at the end: {r}"
        );
        assert_eq!(self.final_messages(pid).await, 1, "finalized exactly once");
        r
    }

    /// Removes the broker objects and the schema, stops the processes and deletes the logs.
    pub async fn cleanup(mut self) {
        for p in &mut self.procs {
            p.kill().await;
        }
        // Bounded: a wedged broker or database must not hang the test after its assertions.
        let _ = tokio::time::timeout(Duration::from_secs(20), async {
            let _ = self.control.delete_topology(&self.topology()).await;
            self.control.close().await;
            drop_schema(&self.schema).await;
        })
        .await;
        let _ = std::fs::remove_dir_all(&self.dir);
        self.cleaned = true;
    }
}

/// Drops a test's PostgreSQL schema, best effort (cleanup must not fail a test).
async fn drop_schema(schema: &str) {
    let base = fleet_test_support::postgres_url();
    if let Ok(admin) = Store::connect(
        Some(&base),
        "unused.sqlite".as_ref(),
        StoreOptions::default(),
    )
    .await
    {
        let _ = admin
            .execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"), &[])
            .await;
    }
}

/// The runtime config of the test's own connections.
pub fn control_config(url: &str, prefix: &str) -> RuntimeConfig {
    control_config_with(url, prefix, &[])
}

/// [`control_config`] with more runtime flags (those every process of the world gets).
pub fn control_config_with(url: &str, prefix: &str, extra: &[String]) -> RuntimeConfig {
    let mut args = vec![
        "test".to_owned(),
        format!("--broker-url={url}"),
        format!("--prefix={prefix}"),
        "--broker-heartbeat=2s".into(),
        "--confirm-timeout=5s".into(),
    ];
    args.extend(extra.iter().cloned());
    RuntimeConfig::parse_from(args.into_iter().chain(nats_replicas_arg(url)))
        .expect("runtime config")
}

/// Environment variable: `FLEET_NATS_REPLICAS` of every process and connection of a world on
/// NATS (the cluster tests set 3; unset means the services' default).
pub const NATS_REPLICAS_ENV: &str = "FLEET_TEST_NATS_REPLICAS";

/// `--nats-replicas=N` when [`NATS_REPLICAS_ENV`] is set and `url` is a NATS URL.
fn nats_replicas_arg(url: &str) -> Option<String> {
    let n = std::env::var(NATS_REPLICAS_ENV).ok()?;
    (url.starts_with("nats://") || url.starts_with("tls://"))
        .then(|| format!("--nats-replicas={}", n.trim()))
}

impl Drop for World {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        for p in &mut self.procs {
            p.start_kill();
        }
        if std::thread::panicking() {
            for p in &self.procs {
                eprintln!(
                    "\n===== {} (pid {:?}, log {}) =====\n{}",
                    p.name,
                    p.pid(),
                    p.log.display(),
                    procs::tail(&p.log, 150)
                );
            }
        }
        // Best effort, from a thread with its own runtime: the test's runtime is unwinding.
        let (url, prefix, schema, topology, extra) = (
            self.url.clone(),
            self.prefix.clone(),
            self.schema.clone(),
            self.topology(),
            self.extra_args.clone(),
        );
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let cleanup = async {
                    if let Ok(b) =
                        fleet_runtime::connect::connect(&control_config_with(&url, &prefix, &extra))
                            .await
                    {
                        let _ = b.declare(&topology).await;
                        let _ = b.delete_topology(&topology).await;
                        b.close().await;
                    }
                    drop_schema(&schema).await;
                };
                let _ = tokio::time::timeout(Duration::from_secs(20), cleanup).await;
            });
        })
        .join();
    }
}

/// A submission body: `items` as `(item_id, text)`, plus `extra` fields merged in.
pub fn submission(pid: &str, items: &[(&str, String)], extra: Value) -> Value {
    let items: Vec<Value> = items
        .iter()
        .map(|(id, text)| json!({"item_id": id, "text": text}))
        .collect();
    let mut v = json!({"v": 1, "pipeline_id": pid, "items": items});
    if let (Value::Object(b), Value::Object(e)) = (&mut v, extra) {
        b.extend(e);
    }
    v
}

/// A few sentences of text mentioning `marker` (so the stub LLM can tell items apart).
pub fn text(marker: &str) -> String {
    format!(
        "This item is {marker}. Queues decouple producers from consumers. A worker that hangs \
         must not wedge the pool. Deadlines cut every attempt, and retries come back later."
    )
}
