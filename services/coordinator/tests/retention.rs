//! Retention: finalized pipelines older than FLEET_RETENTION go with their items, jobs,
//! events and dead letters; recent finalized ones and old-but-running ones stay. On SQLite
//! and PostgreSQL.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod common;

use std::time::Duration;

use common::{Backend, Harness};
use fleet_store::params;
use serde_json::json;

const DAY_MS: i64 = 86_400_000;

async fn rows(h: &Harness, table: &str, pipeline: &str) -> i64 {
    let r = h
        .store()
        .query_opt(
            &format!("SELECT COUNT(*) AS n FROM {table} WHERE pipeline_id = $1"),
            params![pipeline],
        )
        .await
        .unwrap()
        .unwrap();
    r.get("n").unwrap()
}

async fn old_data_goes_and_live_data_stays(backend: Backend) {
    // Retention off in the coordinator itself: the test runs it explicitly, once.
    let h = Harness::new(backend, "retention", &["--retention=off"]).await;
    let now = chrono::Utc::now().timestamp_millis();
    for id in ["old-done", "new-done", "old-running"] {
        h.submit(id, &["a", "b"], json!({})).await;
    }
    let store = h.store();
    // Finalize two; age two by 40 days (created and, for the finalized one, finalized).
    for (id, finalized_at) in [("old-done", now - 40 * DAY_MS), ("new-done", now)] {
        store
            .execute(
                "UPDATE coord_pipelines SET state = 'completed', finalized_at = $1, created_at = $1 WHERE pipeline_id = $2",
                params![finalized_at, id],
            )
            .await
            .unwrap();
    }
    store
        .execute(
            "UPDATE coord_pipelines SET created_at = $1 WHERE pipeline_id = 'old-running'",
            params![now - 40 * DAY_MS],
        )
        .await
        .unwrap();
    for id in ["old-done", "new-done", "old-running"] {
        store
            .execute(
                "INSERT INTO coord_events (pipeline_id, at, body) VALUES ($1, $2, $3)",
                params![id, now, json!({"k": "started"})],
            )
            .await
            .unwrap();
    }
    assert!(rows(&h, "coord_items", "old-done").await > 0);
    assert!(rows(&h, "coord_jobs", "old-done").await > 0);

    let pruned = fleet_coordinator::retention::prune(&store, Duration::from_secs(30 * 86_400))
        .await
        .unwrap();
    assert_eq!(pruned.pipelines, 1, "{pruned:?}");
    for table in [
        "coord_pipelines",
        "coord_items",
        "coord_jobs",
        "coord_events",
        "coord_dead_letters",
    ] {
        assert_eq!(rows(&h, table, "old-done").await, 0, "{table} of old-done");
    }
    for id in ["new-done", "old-running"] {
        assert_eq!(rows(&h, "coord_pipelines", id).await, 1, "{id}");
        assert!(rows(&h, "coord_items", id).await > 0, "{id}");
        assert!(rows(&h, "coord_events", id).await >= 1, "{id}");
    }
    // A second run finds nothing more.
    let again = fleet_coordinator::retention::prune(&store, Duration::from_secs(30 * 86_400))
        .await
        .unwrap();
    assert_eq!(again.pipelines, 0);
    let (s, _) = h.get("/v1/pipelines/old-done").await;
    assert_eq!(s, 404);
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_old_finalized_pipelines_go_live_ones_stay() {
    old_data_goes_and_live_data_stays(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_old_finalized_pipelines_go_live_ones_stay() {
    old_data_goes_and_live_data_stays(Backend::Nats).await;
}
