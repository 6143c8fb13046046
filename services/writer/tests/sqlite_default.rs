//! Without a database URL the writer uses an embedded SQLite file.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{count_rows, result_payload, row_of, sqlite_path, writer_config};
use fleet_store::{Store, StoreKind, StoreOptions};
use fleet_test_support::wait_for;
use fleet_tests::{Backend, Env};

#[tokio::test]
async fn sqlite_file_is_the_default_database() {
    let path = sqlite_path("writer-sqlite");
    let env = Env::new(Backend::Rabbit, "writer-sqlite").await;
    let writer = fleet_writer::Writer::new(writer_config(&env, None, path.clone()))
        .await
        .unwrap();
    assert_eq!(writer.store().kind(), StoreKind::Sqlite);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(writer.run(shutdown.clone()));
    for i in 0..12 {
        env.publish(&env.job(&format!("item-{i}"), result_payload("text.", "first")))
            .await;
    }
    env.publish(&env.job("item-0", result_payload("text.", "dup")))
        .await;
    // A second connection to the same file (WAL lets it read while the writer writes).
    let reader = Store::connect(None, &path, StoreOptions::default())
        .await
        .unwrap();
    wait_for(
        "12 rows in the SQLite file",
        Duration::from_secs(30),
        || async { count_rows(&reader).await == 12 },
    )
    .await;
    env.wait_empty(Duration::from_secs(30)).await;
    let id = env.job("item-0", serde_json::Value::Null).job_id;
    assert_eq!(row_of(&reader, &id).await, (Some("first".into()), 1));
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    env.cleanup().await;
    if let Some(dir) = path.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
}
