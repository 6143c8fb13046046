//! Fixtures for the writer tests: a PostgreSQL schema per test, writer configs
//! on a test [`Env`], result payloads, and row readers.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_store::{Store, StoreOptions, params};
use fleet_tests::Env;
use fleet_writer::Config;
use serde_json::json;

/// A unique PostgreSQL schema (dropped by [`Schema::drop`]).
pub struct Schema {
    /// Schema name.
    pub name: String,
    /// URL whose sessions use the schema.
    pub url: String,
    /// A direct store on the schema (not through any proxy).
    pub store: Store,
    admin: Store,
}

impl Schema {
    /// Creates the schema; panics loudly when PostgreSQL is unreachable.
    pub async fn create(tag: &str) -> Schema {
        let base = fleet_test_support::postgres_url();
        let admin = Store::connect(Some(&base), Path::new("unused"), StoreOptions::default())
            .await
            .unwrap();
        if let Err(e) = admin.ping().await {
            panic!(
                "PostgreSQL at {base} is unreachable ({e}); start it or set FLEET_TEST_DATABASE_URL"
            );
        }
        let name = fleet_test_support::unique_prefix(tag).replace('-', "_");
        admin
            .execute(&format!("CREATE SCHEMA {name}"), &[])
            .await
            .unwrap();
        let url = fleet_store::pg_url_with_schema(&base, &name);
        let store = Store::connect(Some(&url), Path::new("unused"), StoreOptions::default())
            .await
            .unwrap();
        Schema {
            name,
            url,
            store,
            admin,
        }
    }

    /// Drops the schema.
    pub async fn drop(self) {
        self.admin
            .execute(&format!("DROP SCHEMA {} CASCADE", self.name), &[])
            .await
            .unwrap();
    }
}

/// A writer config on `env`'s broker, consuming the test stage, with short timeouts.
pub fn writer_config(env: &Env, database_url: Option<String>, sqlite_path: PathBuf) -> Config {
    Config {
        runtime: env.cfg(&[
            &format!("--stage={}", fleet_tests::env::STAGE),
            "--max-attempts=5",
        ]),
        database_url,
        sqlite_path,
        database_ca_file: None,
        batch_size: 8,
        batch_linger: Duration::from_millis(100),
        db_statement_timeout: Duration::from_secs(2),
        db_checkout_timeout: Duration::from_secs(1),
        db_pool_size: 2,
        db_breaker_failures: 2,
        db_breaker_open_for: Duration::from_secs(1),
    }
}

/// A finished item's payload as the summarizer emits it.
pub fn result_payload(text: &str, summary: &str) -> serde_json::Value {
    json!({
        "text": text,
        "metadata": {"source": "test"},
        "analysis": {"words": text.split_whitespace().count(), "failed_analyzers": [],
                     "chunks": [{"index": 0, "start": 0, "end": text.len(), "text": text}]},
        "summary": {"text": summary, "provider": "extractive", "fallback": false,
                    "fallback_reason": null, "chunks": 1, "duration_ms": 1}
    })
}

/// Rows in `fleet_results` (0 when the table does not exist yet).
pub async fn count_rows(store: &Store) -> i64 {
    match store
        .query_one("SELECT COUNT(*) FROM fleet_results", &[])
        .await
    {
        Ok(r) => r.get(0).unwrap(),
        Err(_) => 0,
    }
}

/// Rows for `job_id`: `(summary, count)`.
pub async fn row_of(store: &Store, job_id: &str) -> (Option<String>, i64) {
    let rows = store
        .query(
            "SELECT summary FROM fleet_results WHERE job_id = $1",
            params![job_id],
        )
        .await
        .unwrap();
    let first = rows
        .first()
        .and_then(|r| r.get::<Option<String>>(0).unwrap());
    (first, rows.len() as i64)
}

/// A fresh SQLite path in its own temp directory.
pub fn sqlite_path(tag: &str) -> PathBuf {
    std::env::temp_dir()
        .join(fleet_test_support::unique_prefix(tag))
        .join("fleet.sqlite")
}

/// How the database is taken away in an outage test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Reset open connections and refuse new ones (database down).
    Refuse,
    /// Hold every byte (a hung database or a partition): only timeouts notice.
    Blackhole,
}

/// Jobs per phase of the outage test.
const HALF: usize = 20;

/// The outage scenario: write, take the database away through a [`FaultProxy`], check
/// that intake pauses and nothing is acked, restore it, check everything lands once.
///
/// [`FaultProxy`]: fleet_test_support::FaultProxy
pub async fn outage(backend: fleet_tests::Backend, fault: Fault, tag: &str) {
    use fleet_runtime::BreakerState;
    use fleet_test_support::{FaultProxy, url_addr, url_with_addr, wait_for};

    let schema = Schema::create(tag).await;
    let proxy = FaultProxy::start(url_addr(&fleet_test_support::postgres_url()).unwrap())
        .await
        .unwrap();
    let db_url = url_with_addr(&schema.url, proxy.addr()).unwrap();
    let env = Env::new(backend, tag).await;
    let mut writer = fleet_writer::Writer::new(writer_config(&env, Some(db_url), "unused".into()))
        .await
        .unwrap();
    if backend == fleet_tests::Backend::Memory {
        writer = writer.with_broker(env.connect().await);
    }
    let breaker = writer.breaker();
    let health = writer.health();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(writer.run(shutdown.clone()));
    let job_ids: Vec<String> = (0..2 * HALF)
        .map(|i| {
            env.job(&format!("item-{i}"), serde_json::Value::Null)
                .job_id
        })
        .collect();

    // Phase 1: the database is up.
    for i in 0..HALF {
        env.publish(&env.job(&format!("item-{i}"), result_payload("before.", "s")))
            .await;
    }
    wait_for(
        "the first half written",
        Duration::from_secs(30),
        || async { count_rows(&schema.store).await == HALF as i64 },
    )
    .await;

    // Phase 2: the database goes away mid-run.
    match fault {
        Fault::Refuse => {
            proxy.set_refuse(true);
            proxy.cut();
        }
        Fault::Blackhole => proxy.set_blackhole(true),
    }
    for i in HALF..2 * HALF {
        env.publish(&env.job(&format!("item-{i}"), result_payload("during.", "s")))
            .await;
    }
    wait_for(
        "the database breaker to open",
        Duration::from_secs(30),
        || async { breaker.state() == BreakerState::Open },
    )
    .await;
    wait_for(
        "fleet_circuit_state{dependency=\"database\"} 2",
        Duration::from_secs(30),
        || async {
            let text = fleet_runtime::telemetry::admin::prometheus()
                .unwrap()
                .render();
            text.lines()
                .any(|l| l.starts_with("fleet_circuit_state{dependency=\"database\"} 2"))
        },
    )
    .await;
    wait_for(
        "/readyz false while the database is down",
        Duration::from_secs(30),
        || async { !health.is_ready() },
    )
    .await;
    // Observe a window: nothing of the second half is acked (no `succeeded`) or written,
    // and on the memory broker every job is still held by the broker (ready or leased).
    let window = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < window {
        for id in &job_ids[HALF..] {
            assert!(
                !env.job_events(id)
                    .iter()
                    .any(fleet_tests::env::is_succeeded),
                "{id} was acked while the database was down"
            );
        }
        assert_eq!(count_rows(&schema.store).await, HALF as i64);
        if let Some(m) = env.memory() {
            let queue = fleet_protocol::Names::new(&env.prefix).jobs(fleet_tests::env::STAGE);
            assert_eq!(m.queue_len(&queue), HALF, "the broker keeps the backlog");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Phase 3: the database returns; the writer resumes by itself.
    match fault {
        Fault::Refuse => proxy.set_refuse(false),
        Fault::Blackhole => proxy.set_blackhole(false),
    }
    wait_for("every job written", Duration::from_secs(60), || async {
        count_rows(&schema.store).await == 2 * HALF as i64
    })
    .await;
    env.wait_empty(Duration::from_secs(30)).await;
    wait_for("the breaker to close", Duration::from_secs(30), || async {
        breaker.state() == BreakerState::Closed
    })
    .await;
    wait_for("/readyz true again", Duration::from_secs(30), || async {
        health.is_ready()
    })
    .await;
    for id in &job_ids {
        assert_eq!(
            row_of(&schema.store, id).await.1,
            1,
            "{id} has exactly one row"
        );
        wait_for(&format!("{id} acked"), Duration::from_secs(10), || async {
            env.job_events(id)
                .iter()
                .any(fleet_tests::env::is_succeeded)
        })
        .await;
    }
    if let Some(m) = env.memory() {
        let queue = fleet_protocol::Names::new(&env.prefix).jobs(fleet_tests::env::STAGE);
        wait_for("nothing left leased", Duration::from_secs(10), || async {
            m.queue_len(&queue) == 0
        })
        .await;
    }
    env.dead_letters(0, Duration::from_millis(500)).await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    env.cleanup().await;
    drop(proxy);
    schema.drop().await;
}
