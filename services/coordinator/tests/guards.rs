//! API guards on the memory broker and SQLite: a route naming an unknown stage,
//! DLQ selections that are empty by accident, NUL characters, idempotent DLQ
//! replay; and the outbox's promise that a broker outage delays rows without
//! counting their attempts (the refused-row case needs RabbitMQ: `real.rs`).
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod common;

use std::time::Duration;

use common::{Backend, Harness, submission};
use fleet_core::{Destination, OutMessage};
use fleet_protocol::{DeadLetterInfo, DeadLetterReason, JobEnvelope, RouteStep};
use fleet_test_support::wait_for;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(10);

/// Archives one dead letter (stage `analyze`) per item of pipeline `pid`; returns their archive ids.
async fn dead_letters(h: &Harness, pid: &str, items: &[&str]) -> Vec<i64> {
    for it in items {
        let mut job = JobEnvelope::new(pid, it, "analyze", json!({"text": "t"}));
        job.route = vec![RouteStep {
            stage: "write".into(),
            required: true,
        }];
        let info = DeadLetterInfo {
            reason: DeadLetterReason::AttemptsExhausted,
            last_error_kind: None,
            last_error: "boom".into(),
            attempts: 3,
            stage: "analyze".into(),
            worker_id: "w".into(),
            at: chrono::Utc::now(),
            job_id: Some(job.job_id.clone()),
        };
        let mut msg = OutMessage::new(
            Destination::DeadLetter {
                stage: "analyze".into(),
            },
            job.to_bytes(),
        );
        msg.headers = info.to_headers();
        h.broker.publish(msg).await.unwrap();
    }
    let path = format!("/v1/dlq?pipeline_id={pid}");
    let list = wait_for("the dead letters archived", T, || async {
        let (_, v) = h.get(&path).await;
        (v["dead_letters"].as_array().map_or(0, Vec::len) == items.len()).then_some(v)
    })
    .await;
    list["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_i64().unwrap())
        .collect()
}

async fn archived(h: &Harness) -> usize {
    let (s, v) = h.get("/v1/dlq?limit=1000").await;
    assert_eq!(s, 200, "{v}");
    v["dead_letters"].as_array().unwrap().len()
}

#[tokio::test]
async fn route_with_an_unknown_stage_is_refused_with_the_known_stages() {
    let h = Harness::new(Backend::Memory, "unknown-stage", &[]).await;
    let mut body = submission(Some("pu"), &["a"]);
    body["route"] = json!([{"stage": "analyze"}, {"stage": "nowhere"}]);
    let (s, v) = h.post("/v1/pipelines", &body).await;
    assert_eq!(s, 400, "{v}");
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains("nowhere"), "{v}");
    assert!(msg.contains("analyze, summarize, write"), "{v}");
    let (_, list) = h.get("/v1/pipelines").await;
    assert_eq!(list["pipelines"], json!([]), "nothing was stored");
    // A route over known stages is still accepted.
    body["route"] = json!([{"stage": "summarize", "required": false}, {"stage": "write"}]);
    let (s, v) = h.post("/v1/pipelines", &body).await;
    assert_eq!(s, 201, "{v}");
    h.cleanup().await;
}

#[tokio::test]
async fn empty_dlq_selections_are_refused_and_all_true_purges() {
    let h = Harness::new(Backend::Memory, "selections", &[]).await;
    dead_letters(&h, "pq", &["a", "b"]).await;
    for bad in [
        json!({"stage": ""}),
        json!({"pipeline_id": "  "}),
        json!({"reason": ""}),
        json!({"ids": []}),
        json!({}),
        json!({"stage": null}),
        json!({"all": true, "stage": "analyze"}),
        json!({"all": false}),
    ] {
        let (s, v) = h.post("/v1/dlq/purge", &bad).await;
        assert_eq!(s, 400, "purge {bad}: {v}");
        assert!(v["hint"].is_string(), "{v}");
    }
    for bad in [json!({"stage": ""}), json!({"all": true}), json!({})] {
        let (s, v) = h.post("/v1/dlq/replay", &bad).await;
        assert_eq!(s, 400, "replay {bad}: {v}");
    }
    let (s, v) = h.get("/v1/dlq?stage=").await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(archived(&h).await, 2, "nothing was deleted");
    let (s, v) = h
        .post("/v1/dlq/purge", &json!({"all": true, "dry_run": true}))
        .await;
    assert_eq!((s, v["purged"].clone()), (200, json!(2)), "{v}");
    assert_eq!(archived(&h).await, 2);
    let (s, v) = h.post("/v1/dlq/purge", &json!({"all": true})).await;
    assert_eq!((s, v["purged"].clone()), (200, json!(2)), "{v}");
    assert_eq!(archived(&h).await, 0);
    h.cleanup().await;
}

#[tokio::test]
async fn nul_in_any_text_field_is_a_400() {
    let h = Harness::new(Backend::Memory, "nul", &[]).await;
    let mut body = submission(Some("pn"), &["a"]);
    body["items"][0]["text"] = "a\u{0}b".into();
    let (s, v) = h.post("/v1/pipelines", &body).await;
    assert_eq!(s, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("NUL"), "{v}");
    let mut body = submission(Some("pn"), &["a"]);
    body["items"][0]["metadata"] = json!({"k\u{0}": 1});
    let (s, v) = h.post("/v1/pipelines", &body).await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = h
        .post("/v1/dlq/purge", &json!({"pipeline_id": "p\u{0}"}))
        .await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = h.get("/v1/dlq?stage=a%00").await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = h.get("/v1/pipelines/a%00b").await;
    assert_eq!(s, 400, "{v}");
    // A backslash followed by the text `u0000` is ordinary text.
    let mut body = submission(Some("pn"), &["a"]);
    body["items"][0]["text"] = "C:\\u0000".into();
    let (s, v) = h.post("/v1/pipelines", &body).await;
    assert_eq!(s, 201, "{v}");
    h.cleanup().await;
}

#[tokio::test]
async fn dlq_replay_with_the_same_key_makes_one_pipeline() {
    let h = Harness::new(Backend::Memory, "replay-key", &[]).await;
    let ids = dead_letters(&h, "pq", &["a", "b"]).await;
    let key = [("Idempotency-Key", "replay-1")];
    let body = json!({"ids": [ids[0]]}).to_string();
    let mut answers: Vec<Value> = Vec::new();
    for _ in 0..2 {
        let (s, b) = common::http_at(h.api(), "POST", "/v1/dlq/replay", Some(&body), &key).await;
        assert_eq!(s, 200, "{b}");
        answers.push(serde_json::from_str(&b).unwrap());
    }
    assert_eq!(answers[0]["pipeline_id"], "replay-1", "{}", answers[0]);
    assert_eq!(answers[0]["created"], true);
    assert_eq!(answers[1]["pipeline_id"], "replay-1", "{}", answers[1]);
    assert_eq!(answers[1]["created"], false);
    assert_eq!(answers[1]["items"], answers[0]["items"]);
    assert_eq!(answers[1]["items"].as_array().unwrap().len(), 1);
    // Without a key, two concurrent identical requests still make one pipeline.
    let other = json!({"ids": [ids[1]]}).to_string();
    let (x, y) = tokio::join!(
        common::http_at(h.api(), "POST", "/v1/dlq/replay", Some(&other), &[]),
        common::http_at(h.api(), "POST", "/v1/dlq/replay", Some(&other), &[]),
    );
    assert_eq!((x.0, y.0), (200, 200), "{x:?} {y:?}");
    let (_, list) = h.get("/v1/pipelines?limit=100").await;
    let pipelines = list["pipelines"].as_array().unwrap();
    assert_eq!(pipelines.len(), 2, "one replay per selection: {list}");
    // The key is a pipeline id: another pipeline's id is a conflict, not a replay.
    h.submit("taken", &["a"], json!({})).await;
    let (s, b) = common::http_at(
        h.api(),
        "POST",
        "/v1/dlq/replay",
        Some(&body),
        &[("Idempotency-Key", "taken")],
    )
    .await;
    assert_eq!(s, 409, "{b}");
    h.cleanup().await;
}

#[tokio::test]
async fn a_broker_outage_delays_outbox_rows_without_failing_them() {
    // One attempt allowed: a counted failure would abandon the row and fail the item at once.
    let h = Harness::new(Backend::Memory, "outage", &["--outbox-max-attempts=1"]).await;
    h.memory().set_connected(false);
    h.submit("po", &["a"], json!({})).await;
    // Let the relay (every 250 ms) fail a few times against the disconnected broker.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let row = h
        .store()
        .query_one(
            "SELECT attempts, failed_at, published_at FROM coord_outbox WHERE msg_id = 'po/a/analyze'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<i64>("attempts").unwrap(), 0);
    assert_eq!(row.get::<Option<i64>>("failed_at").unwrap(), None);
    assert_eq!(row.get::<Option<i64>>("published_at").unwrap(), None);
    assert_eq!(h.report("po").await["items"][0]["state"], "running");
    h.memory().set_connected(true);
    let jobs = h.take_jobs("analyze", 1, T).await;
    assert_eq!(jobs[0].job_id, "po/a/analyze");
    h.cleanup().await;
}
