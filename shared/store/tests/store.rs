//! fleet-store against the machine's real PostgreSQL and SQLite temp files:
//! the same portable cases on both, then PostgreSQL-only concurrency and timeouts.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use common::{Schema, cleanup_sqlite, opts, sqlite_path};
use fleet_store::{Migration, Store, StoreError, StoreKind, StoreOptions, Value, params};

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "create items",
        sql: "CREATE TABLE items (
            id TEXT PRIMARY KEY,
            n BIGINT NOT NULL,
            f DOUBLE PRECISION,
            ok BOOLEAN NOT NULL,
            doc JSONB,
            at BIGINT NOT NULL
        )",
    },
    Migration {
        version: 2,
        name: "index items by n",
        sql: "CREATE INDEX items_n ON items (n); ALTER TABLE items ADD COLUMN note TEXT",
    },
];

/// The portable cases, run on each backend.
async fn portable_cases(store: &Store) {
    // Migrations: applied once, then a no-op; an edited name is refused.
    assert_eq!(store.migrate("test", MIGRATIONS).await.unwrap(), vec![1, 2]);
    assert!(store.migrate("test", MIGRATIONS).await.unwrap().is_empty());
    let edited = [Migration {
        version: 1,
        name: "something else",
        sql: "SELECT 1",
    }];
    assert!(matches!(
        store.migrate("test", &edited).await,
        Err(StoreError::Migration(_))
    ));
    let recorded = store
        .query(
            "SELECT version, name, applied_at FROM fleet_schema_migrations WHERE component = $1 ORDER BY version",
            params!["test"],
        )
        .await
        .unwrap();
    assert_eq!(recorded.len(), 2);
    assert_eq!(recorded[1].get::<u32>("version").unwrap(), 2);
    let applied: DateTime<Utc> = recorded[0].get("applied_at").unwrap();
    assert!((Utc::now() - applied).num_seconds().abs() < 60);

    // Round trip of every value kind.
    let at = Utc.timestamp_millis_opt(1_700_000_000_123).unwrap();
    let doc = serde_json::json!({"k": [1, 2, "x"], "nested": {"b": true}});
    let mut tx = store.begin().await.unwrap();
    let n = tx
        .execute(
            "INSERT INTO items (id, n, f, ok, doc, at, note) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            params!["a", 42, 1.5, true, doc.clone(), at, None::<String>],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    // First write wins.
    let n = tx
        .execute(
            "INSERT INTO items (id, n, ok, at) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
            params!["a", 7, false, at],
        )
        .await
        .unwrap();
    assert_eq!(n, 0);
    tx.commit().await.unwrap();
    let row = store
        .query_one(
            "SELECT id, n, f, ok, doc, at, note FROM items WHERE id = $1 AND n = $2",
            params!["a", 42],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<String>("id").unwrap(), "a");
    assert_eq!(row.get::<i64>("n").unwrap(), 42);
    assert!((row.get::<f64>("f").unwrap() - 1.5).abs() < f64::EPSILON);
    assert!(row.get::<bool>("ok").unwrap());
    assert_eq!(row.get::<serde_json::Value>("doc").unwrap(), doc);
    assert_eq!(row.get::<DateTime<Utc>>("at").unwrap(), at);
    assert_eq!(row.get::<Option<String>>("note").unwrap(), None);

    // Aggregates and a repeated placeholder.
    let row = store
        .query_one(
            "SELECT COUNT(*) AS c, SUM(n) AS s FROM items WHERE n >= $1 OR n = $1",
            params![0],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<i64>("c").unwrap(), 1);
    assert_eq!(row.get::<i64>("s").unwrap(), 42);

    // Rollback: explicit, by drop, and by a failed statement (poisoned transaction).
    let mut tx = store.begin().await.unwrap();
    tx.execute(
        "INSERT INTO items (id, n, ok, at) VALUES ($1, 1, $2, $3)",
        params!["rb1", false, at],
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    {
        let mut tx = store.begin().await.unwrap();
        tx.execute(
            "INSERT INTO items (id, n, ok, at) VALUES ($1, 1, $2, $3)",
            params!["rb2", false, at],
        )
        .await
        .unwrap();
    }
    let mut tx = store.begin().await.unwrap();
    tx.execute(
        "INSERT INTO items (id, n, ok, at) VALUES ($1, 1, $2, $3)",
        params!["rb3", false, at],
    )
    .await
    .unwrap();
    let dup = tx
        .execute(
            "INSERT INTO items (id, n, ok, at) VALUES ($1, 1, $2, $3)",
            params!["a", false, at],
        )
        .await
        .unwrap_err();
    assert!(dup.is_unique_violation(), "{dup}");
    assert!(
        tx.commit().await.is_err(),
        "a poisoned transaction must not commit"
    );
    // The closure form rolls back on Err.
    let r: Result<(), StoreError> = store
        .transaction(|tx| {
            Box::pin(async move {
                tx.execute(
                    "INSERT INTO items (id, n, ok, at) VALUES ($1, 1, $2, $3)",
                    params!["rb4", false, at],
                )
                .await?;
                Err(StoreError::Config("abort".into()))
            })
        })
        .await;
    assert!(r.is_err());
    let ids: Vec<String> = store
        .query("SELECT id FROM items ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0).unwrap())
        .collect();
    assert_eq!(ids, vec!["a".to_owned()], "every rolled-back row is gone");

    // The closure form commits on Ok and the row count comes back.
    let n = store
        .transaction(|tx| {
            Box::pin(async move {
                tx.execute(
                    "INSERT INTO items (id, n, ok, at) VALUES ($1, 2, $2, $3)",
                    params!["b", true, at],
                )
                .await
            })
        })
        .await
        .unwrap();
    assert_eq!(n, 1);
    let row = store
        .query_opt(
            &format!("SELECT id FROM items WHERE n = $1{}", store.skip_locked()),
            params![2],
        )
        .await
        .unwrap();
    assert!(row.is_some());
    assert!(
        store
            .query_opt("SELECT id FROM items WHERE n = $1", params![99])
            .await
            .unwrap()
            .is_none()
    );
    store.ping().await.unwrap();

    // Advisory locks are always granted on SQLite; see the PostgreSQL test for exclusivity.
    let mut tx = store.begin().await.unwrap();
    assert!(store.try_advisory_xact_lock(&mut tx, 77).await.unwrap());
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn sqlite_portable_cases() {
    let path = sqlite_path("store-sqlite");
    let store = Store::connect(None, &path, opts()).await.unwrap();
    assert_eq!(store.kind(), StoreKind::Sqlite);
    assert!(path.exists(), "the SQLite file is created");
    assert_eq!(store.skip_locked(), "");
    portable_cases(&store).await;
    // A second store on the same file sees the data (WAL; a restarted process).
    drop(store);
    let url = format!("sqlite://{}", path.display());
    let again = Store::connect(Some(&url), std::path::Path::new("ignored"), opts())
        .await
        .unwrap();
    let row = again
        .query_one("SELECT COUNT(*) FROM items", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<i64>(0).unwrap(), 2);
    let mode = again.query_one("PRAGMA journal_mode", &[]).await.unwrap();
    assert_eq!(mode.get::<String>(0).unwrap(), "wal");
    cleanup_sqlite(&path);
}

#[tokio::test]
async fn postgres_portable_cases() {
    let schema = Schema::create("store-pg").await;
    let store = schema.store(opts()).await;
    assert_eq!(store.kind(), StoreKind::Postgres);
    assert_eq!(store.skip_locked(), " FOR UPDATE SKIP LOCKED");
    portable_cases(&store).await;
    schema.drop().await;
}

#[tokio::test]
async fn postgres_concurrent_migrate_applies_once() {
    let schema = Schema::create("store-migrate").await;
    let mut starters = Vec::new();
    for _ in 0..6 {
        let store = schema.store(opts()).await;
        starters.push(tokio::spawn(async move {
            store.migrate("test", MIGRATIONS).await
        }));
    }
    let mut applied = Vec::new();
    for s in starters {
        applied.extend(s.await.unwrap().unwrap());
    }
    applied.sort_unstable();
    assert_eq!(
        applied,
        vec![1, 2],
        "each migration ran exactly once across starters"
    );
    let store = schema.store(opts()).await;
    let row = store
        .query_one("SELECT COUNT(*) FROM fleet_schema_migrations", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<i64>(0).unwrap(), 2);
    schema.drop().await;
}

#[tokio::test]
async fn postgres_advisory_lock_is_exclusive_across_connections() {
    let schema = Schema::create("store-lock").await;
    let store = schema.store(opts()).await;
    let key = i64::from(rand_key());
    let mut a = store.begin().await.unwrap();
    let mut b = store.begin().await.unwrap();
    assert!(store.try_advisory_xact_lock(&mut a, key).await.unwrap());
    assert!(
        !store.try_advisory_xact_lock(&mut b, key).await.unwrap(),
        "held by the other transaction"
    );
    assert!(
        store.try_advisory_xact_lock(&mut b, key + 1).await.unwrap(),
        "another key is free"
    );
    a.commit().await.unwrap();
    // Released at the end of the holder's transaction.
    assert!(store.try_advisory_xact_lock(&mut b, key).await.unwrap());
    b.rollback().await.unwrap();
    schema.drop().await;
}

fn rand_key() -> u32 {
    uuid::Uuid::new_v4().as_fields().0
}

#[tokio::test]
async fn postgres_statement_timeout_cuts_a_slow_query_and_the_pool_recovers() {
    let schema = Schema::create("store-timeout").await;
    let store = schema
        .store(StoreOptions {
            statement_timeout: Duration::from_millis(200),
            checkout_timeout: Duration::from_secs(2),
            pool_size: 1,
            ca_file: None,
        })
        .await;
    let started = Instant::now();
    let err = store.execute("SELECT pg_sleep(5)", &[]).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Timeout {
                what: "statement",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.is_transient());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "cut at ~200ms, took {:?}",
        started.elapsed()
    );
    // Inside a transaction too; the transaction cannot commit afterwards.
    let mut tx = store.begin().await.unwrap();
    let err = tx.query("SELECT pg_sleep(5)", &[]).await.unwrap_err();
    assert!(matches!(err, StoreError::Timeout { .. }), "{err}");
    assert!(tx.commit().await.is_err());
    // The single pooled connection (or its replacement) still works.
    store.ping().await.unwrap();
    schema.drop().await;
}

#[tokio::test]
async fn postgres_checkout_times_out_when_the_pool_is_exhausted() {
    let schema = Schema::create("store-checkout").await;
    let store = schema
        .store(StoreOptions {
            statement_timeout: Duration::from_secs(5),
            checkout_timeout: Duration::from_millis(300),
            pool_size: 1,
            ca_file: None,
        })
        .await;
    let held = store.begin().await.unwrap();
    let started = Instant::now();
    let err = store.begin().await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Timeout {
                what: "checkout",
                ..
            }
        ),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    held.rollback().await.unwrap();
    store.begin().await.unwrap().commit().await.unwrap();
    schema.drop().await;
}

#[tokio::test]
async fn postgres_unreachable_is_a_transient_error_not_a_hang() {
    // A port nothing listens on: connect is refused quickly and reported as transient.
    let store = Store::connect(
        Some("postgres://postgres@127.0.0.1:1/test"),
        std::path::Path::new("unused"),
        StoreOptions {
            checkout_timeout: Duration::from_millis(500),
            ..opts()
        },
    )
    .await
    .unwrap();
    let started = Instant::now();
    let err = store.ping().await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn sqlite_statement_timeout_interrupts_a_long_query() {
    let path = sqlite_path("store-sqlite-timeout");
    let store = Store::connect(
        None,
        &path,
        StoreOptions {
            statement_timeout: Duration::from_millis(200),
            ..opts()
        },
    )
    .await
    .unwrap();
    let started = Instant::now();
    let err = store
        .query_one(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT MAX(x) FROM c",
            &[],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Timeout {
                what: "statement",
                ..
            }
        ),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    store.ping().await.unwrap();
    // A transaction abandoned mid-statement (caller cancelled) is rolled back for the next caller.
    store
        .execute("CREATE TABLE t (id TEXT PRIMARY KEY)", &[])
        .await
        .unwrap();
    {
        let mut tx = store.begin().await.unwrap();
        tx.execute("INSERT INTO t (id) VALUES ($1)", params!["x"])
            .await
            .unwrap();
        let slow = tx.query(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000000) SELECT MAX(x) FROM c",
            &[],
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(20), slow)
                .await
                .is_err()
        );
    }
    let row = store
        .query_one("SELECT COUNT(*) FROM t", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<i64>(0).unwrap(), 0);
    let _ = Value::Null;
    cleanup_sqlite(&path);
}

#[tokio::test]
async fn bad_urls_are_config_errors() {
    let err = Store::connect(Some("mysql://x"), std::path::Path::new("x"), opts())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Config(_)), "{err}");
    assert!(!err.is_transient());
}
