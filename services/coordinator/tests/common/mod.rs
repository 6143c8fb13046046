//! Test harness: a coordinator on a broker and a store, a tiny HTTP client,
//! and helpers that play the workers' side (events, heartbeats, dead letters).
#![allow(dead_code, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use fleet_coordinator::{Config, Running};
use fleet_core::{Broker, Destination, MemoryBroker, OutMessage, Source, SubscribeOptions};
use fleet_protocol::{Event, EventBatch, EventKind, Heartbeat, InFlightJob, JobEnvelope};
use fleet_store::{Store, StoreOptions};
use fleet_test_support::{unique_prefix, wait_for};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Which broker and store a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Memory broker + SQLite file.
    Memory,
    /// RabbitMQ + PostgreSQL.
    Rabbit,
    /// NATS + PostgreSQL.
    Nats,
}

/// RabbitMQ tests run one at a time: each declares ~30 quorum queues, and several at once
/// overload a 2-core broker.
static RABBIT_SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub struct Harness {
    pub backend: Backend,
    _serial: Option<tokio::sync::MutexGuard<'static, ()>>,
    pub prefix: String,
    pub broker: Arc<dyn Broker>,
    pub memory: Option<MemoryBroker>,
    pub db_url: Option<String>,
    pub schema: Option<String>,
    pub sqlite: Option<std::path::PathBuf>,
    pub coordinators: Vec<(Running, CancellationToken)>,
    pub extra: Vec<String>,
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

impl Harness {
    /// A fresh world; `extra` are coordinator flags. Fails loudly when a service is unreachable.
    pub async fn new(backend: Backend, tag: &str, extra: &[&str]) -> Harness {
        init_logs();
        let serial = match backend {
            Backend::Rabbit => Some(RABBIT_SERIAL.lock().await),
            _ => None,
        };
        let prefix = unique_prefix(tag);
        let (broker, memory): (Arc<dyn Broker>, _) = match backend {
            Backend::Memory => {
                let m = MemoryBroker::new();
                (Arc::new(m.clone()), Some(m))
            }
            Backend::Rabbit | Backend::Nats => {
                let url = if backend == Backend::Rabbit {
                    fleet_test_support::amqp_url()
                } else {
                    fleet_test_support::nats_url()
                };
                let rc = fleet_runtime::RuntimeConfig::parse_from([
                    "t".to_owned(),
                    format!("--broker-url={url}"),
                    format!("--prefix={prefix}"),
                    "--broker-heartbeat=2s".into(),
                    "--confirm-timeout=5s".into(),
                ])
                .expect("runtime config");
                let b = fleet_runtime::connect::connect(&rc)
                    .await
                    .unwrap_or_else(|e| {
                        panic!("cannot reach the {backend:?} broker at {url}: {e}")
                    });
                (b, None)
            }
        };
        let (db_url, schema, sqlite) = match backend {
            Backend::Memory => {
                let dir = std::env::temp_dir().join(format!("{prefix}.sqlite"));
                (None, None, Some(dir))
            }
            _ => {
                let base = fleet_test_support::postgres_url();
                let schema = prefix.replace('-', "_");
                let store = Store::connect(
                    Some(&base),
                    std::path::Path::new(""),
                    StoreOptions::default(),
                )
                .await
                .expect("PostgreSQL URL");
                store
                    .execute(&format!("CREATE SCHEMA {schema}"), &[])
                    .await
                    .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {base}: {e}"));
                (
                    Some(fleet_store::pg_url_with_schema(&base, &schema)),
                    Some(schema),
                    None,
                )
            }
        };
        let mut h = Harness {
            backend,
            _serial: serial,
            prefix,
            broker,
            memory,
            db_url,
            schema,
            sqlite,
            coordinators: Vec::new(),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        };
        h.start_coordinator().await;
        if h.memory.is_none() {
            // The test's own connection learns the names (and finds the streams) by declaring.
            h.broker
                .declare(&fleet_coordinator::topology(&h.config()))
                .await
                .expect("declare the test topology");
        }
        h
    }

    pub fn config(&self) -> Config {
        let mut args = vec![
            "fleet-coordinator".to_owned(),
            format!("--prefix={}", self.prefix),
            "--listen=127.0.0.1:0".into(),
            "--admin-addr=127.0.0.1:0".into(),
            "--tick=100ms".into(),
            "--heartbeat-interval=1s".into(),
            "--deadline-grace=0s".into(),
            "--broker-heartbeat=2s".into(),
            "--confirm-timeout=5s".into(),
        ];
        match self.backend {
            Backend::Memory => args.push("--broker-url=memory://".into()),
            Backend::Rabbit => {
                args.push(format!("--broker-url={}", fleet_test_support::amqp_url()))
            }
            Backend::Nats => args.push(format!("--broker-url={}", fleet_test_support::nats_url())),
        }
        if let Some(u) = &self.db_url {
            args.push(format!("--database-url={u}"));
        }
        if let Some(p) = &self.sqlite {
            args.push(format!("--sqlite-path={}", p.display()));
        }
        args.extend(self.extra.iter().cloned());
        Config::parse_args(args).expect("coordinator config")
    }

    /// Starts one more coordinator on the same broker and store (its own broker connection on real brokers).
    pub async fn start_coordinator(&mut self) -> usize {
        let broker: Arc<dyn Broker> = match &self.memory {
            Some(m) => Arc::new(m.clone()),
            None => {
                let cfg = self.config();
                fleet_runtime::connect::connect(&cfg.runtime)
                    .await
                    .expect("coordinator broker connection")
            }
        };
        let stop = CancellationToken::new();
        let running = fleet_coordinator::start(self.config(), broker, stop.clone())
            .await
            .expect("coordinator starts");
        self.coordinators.push((running, stop));
        self.coordinators.len() - 1
    }

    pub fn api(&self) -> SocketAddr {
        self.coordinators[0].0.api_addr
    }

    pub fn store(&self) -> Store {
        self.coordinators[0].0.app.store.clone()
    }

    pub async fn cleanup(self) {
        let topo = fleet_coordinator::topology(&self.config());
        for (r, stop) in self.coordinators {
            stop.cancel();
            r.wait().await.expect("the coordinator stops cleanly");
        }
        let _ = self.broker.delete_topology(&topo).await;
        self.broker.close().await;
        if let Some(schema) = &self.schema {
            let base = fleet_test_support::postgres_url();
            if let Ok(store) = Store::connect(
                Some(&base),
                std::path::Path::new(""),
                StoreOptions::default(),
            )
            .await
            {
                let _ = store
                    .execute(&format!("DROP SCHEMA {schema} CASCADE"), &[])
                    .await;
            }
        }
        if let Some(p) = &self.sqlite {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", p.display()));
            }
        }
    }

    // ---- HTTP ----

    pub async fn http(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> (u16, String) {
        http_at(
            self.api(),
            method,
            path,
            body.map(|b| b.to_string()).as_deref(),
            headers,
        )
        .await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let (s, b) = self.http("GET", path, None, &[]).await;
        (s, serde_json::from_str(&b).unwrap_or(Value::String(b)))
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (s, b) = self.http("POST", path, Some(body), &[]).await;
        (s, serde_json::from_str(&b).unwrap_or(Value::String(b)))
    }

    pub async fn submit(&self, id: &str, items: &[&str], extra: Value) -> Value {
        let mut body = submission(Some(id), items);
        if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
            b.extend(e);
        }
        let (s, v) = self.post("/v1/pipelines", &body).await;
        assert_eq!(s, 201, "{v}");
        v
    }

    pub async fn report(&self, id: &str) -> Value {
        let (s, v) = self.get(&format!("/v1/pipelines/{id}")).await;
        assert_eq!(s, 200, "{v}");
        v
    }

    pub async fn wait_state(&self, id: &str, state: &str, within: Duration) -> Value {
        wait_for(&format!("pipeline {id} to be {state}"), within, || async {
            let r = self.report(id).await;
            if r["state"] == state {
                Ok(r)
            } else {
                Err(r["state"].to_string())
            }
        })
        .await
    }

    // ---- the workers' side ----

    pub async fn send(&self, stage: &str, events: Vec<Event>, heartbeat: Option<Heartbeat>) {
        let batch = EventBatch {
            v: 1,
            worker_id: "test-worker".into(),
            stage: stage.into(),
            events,
            heartbeat,
        };
        self.broker
            .publish(OutMessage::new(
                Destination::Events {
                    stage: stage.into(),
                },
                serde_json::to_vec(&batch).expect("batch"),
            ))
            .await
            .expect("publish events");
    }

    /// Sends `started` + `kind` for each item at `stage` (attempt 1).
    pub async fn finish(&self, pid: &str, items: &[&str], stage: &str, kind: EventKind) {
        let mut events = Vec::new();
        for it in items {
            let job = fleet_protocol::job_id(pid, it, stage);
            events.push(event(&job, pid, stage, 1, 0, EventKind::Started));
            events.push(event(&job, pid, stage, 1, 1, kind.clone()));
        }
        self.send(stage, events, None).await;
    }

    /// Dead-letters `item`'s `stage` job (payload `payload`, next stage `write`) as the broker's
    /// delivery-limit backstop does: no fleet headers, no event, only `x-backstop`.
    pub async fn backstop_dead_letter(&self, pid: &str, item: &str, stage: &str, payload: Value) {
        let mut job = JobEnvelope::new(pid, item, stage, payload);
        job.route = vec![fleet_protocol::RouteStep {
            stage: "write".into(),
            required: true,
        }];
        let mut msg = OutMessage::new(
            Destination::DeadLetter {
                stage: stage.into(),
            },
            job.to_bytes(),
        );
        msg.headers = vec![("x-backstop".into(), "delivery-limit".into())];
        self.broker
            .publish(msg)
            .await
            .expect("publish the dead letter");
    }

    /// Takes up to `n` jobs from a stage queue (acking them).
    pub async fn take_jobs(&self, stage: &str, n: usize, within: Duration) -> Vec<JobEnvelope> {
        let mut sub = self
            .broker
            .subscribe(
                Source::Jobs {
                    stage: stage.into(),
                },
                SubscribeOptions { prefetch: 64 },
            )
            .await
            .expect("subscribe jobs");
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + within;
        while out.len() < n && tokio::time::Instant::now() < deadline {
            for d in sub
                .fetch(n - out.len(), Duration::from_millis(300))
                .await
                .expect("fetch")
            {
                out.push(fleet_protocol::decode_job(&d.body, usize::MAX).expect("job envelope"));
                d.acker.ack().await.expect("ack");
            }
        }
        assert_eq!(out.len(), n, "jobs taken from {stage}");
        out
    }

    pub fn memory(&self) -> &MemoryBroker {
        self.memory.as_ref().expect("memory backend")
    }

    /// Rows in the outbox for finalization messages of `pid`.
    pub async fn final_messages(&self, pid: &str) -> i64 {
        self.store()
            .query_one(
                "SELECT COUNT(*) AS n FROM coord_outbox WHERE dest_kind = 'pipeline' AND msg_id = $1",
                fleet_store::params![format!("{pid}/final")],
            )
            .await
            .expect("count")
            .get("n")
            .expect("n")
    }
}

pub fn submission(id: Option<&str>, items: &[&str]) -> Value {
    let items: Vec<Value> = items
        .iter()
        .map(|i| json!({"item_id": i, "text": format!("text of {i}")}))
        .collect();
    let mut v = json!({"v": 1, "items": items});
    if let Some(id) = id {
        v["pipeline_id"] = id.into();
    }
    v
}

pub fn event(
    job_id: &str,
    pid: &str,
    stage: &str,
    attempt: u32,
    seq: u32,
    kind: EventKind,
) -> Event {
    Event {
        job_id: job_id.into(),
        pipeline_id: pid.into(),
        stage: stage.into(),
        attempt,
        seq,
        worker_id: "test-worker".into(),
        at: Utc::now(),
        kind,
        degraded: None,
    }
}

pub fn heartbeat(worker: &str, stage: &str, in_flight: &[(&str, &str)]) -> Heartbeat {
    Heartbeat {
        worker_id: worker.into(),
        stage: stage.into(),
        at: Utc::now(),
        slots: 4,
        paused: None,
        in_flight: in_flight
            .iter()
            .map(|(job, pid)| InFlightJob {
                job_id: (*job).into(),
                pipeline_id: (*pid).into(),
                attempt: 1,
                started_at: Utc::now(),
                last_progress_at: Utc::now(),
            })
            .collect(),
    }
}

/// One bounded HTTP request to `addr`; panics when it cannot be made.
pub async fn http_at(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, String) {
    fleet_test_support::http::request(addr, method, path, body, headers)
        .await
        .unwrap_or_else(|e| panic!("{method} {path} at {addr}: {e}"))
}
