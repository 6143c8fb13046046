//! The coordinator on the real brokers (RabbitMQ, NATS JetStream) and
//! PostgreSQL (a schema per test). Fails loudly when a service is unreachable.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod common;

use std::time::Duration;

use common::{Backend, Harness, event, heartbeat, submission};
use fleet_core::{Destination, OutMessage, Source, SubscribeOptions};
use fleet_protocol::{EventKind, JobEnvelope};
use fleet_test_support::wait_for;
use serde_json::json;

const STAGES: [&str; 3] = ["analyze", "summarize", "write"];
const T: Duration = Duration::from_secs(20);

async fn completes(backend: Backend) {
    let h = Harness::new(backend, "complete", &[]).await;
    let items = ["a", "b", "c"];
    h.submit("p1", &items, json!({})).await;
    let jobs = h.take_jobs("analyze", 3, T).await;
    assert!(
        jobs.iter()
            .all(|j| j.pipeline_id == "p1" && j.route.len() == 2)
    );
    for stage in STAGES {
        h.finish("p1", &items, stage, EventKind::Succeeded).await;
    }
    let r = h.wait_state("p1", "completed", T).await;
    assert_eq!(r["items_terminal"], 3);
    wait_for("the final message published", T, || async {
        h.store()
            .query_one(
                "SELECT COUNT(*) AS n FROM coord_outbox WHERE published_at IS NULL",
                &[],
            )
            .await
            .unwrap()
            .get::<i64>("n")
            .unwrap()
            == 0
    })
    .await;
    assert_eq!(h.final_messages("p1").await, 1);
    h.cleanup().await;
}

async fn two_replicas(backend: Backend) {
    let mut h = Harness::new(backend, "replicas", &[]).await;
    let second = h.start_coordinator().await;
    let other = h.coordinators[second].0.api_addr;
    // The same submission to both replicas at once makes one pipeline.
    let body = submission(Some("dup"), &["a"]).to_string();
    let (a, b) = tokio::join!(
        common::http_at(h.api(), "POST", "/v1/pipelines", Some(&body), &[]),
        common::http_at(other, "POST", "/v1/pipelines", Some(&body), &[]),
    );
    let mut codes = [a.0, b.0];
    codes.sort_unstable();
    assert_eq!(codes, [200, 201], "{a:?} {b:?}");
    let ids: Vec<String> = (0..8).map(|i| format!("r{i}")).collect();
    for id in &ids {
        h.submit(id, &["a", "b"], json!({})).await;
    }
    for id in ids.iter().chain(std::iter::once(&"dup".to_owned())) {
        let items: &[&str] = if id == "dup" { &["a"] } else { &["a", "b"] };
        for stage in STAGES {
            h.finish(id, items, stage, EventKind::Succeeded).await;
        }
    }
    for id in &ids {
        h.wait_state(id, "completed", T).await;
    }
    h.wait_state("dup", "completed", T).await;
    // Let both sweepers run a few more ticks, then count finalization messages.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows = h
        .store()
        .query(
            "SELECT msg_id, COUNT(*) AS n FROM coord_outbox WHERE dest_kind = 'pipeline' GROUP BY msg_id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), ids.len() + 1);
    for r in rows {
        assert_eq!(
            r.get::<i64>("n").unwrap(),
            1,
            "{:?}",
            r.get::<String>("msg_id")
        );
    }
    h.cleanup().await;
}

async fn submit_queue_twice(backend: Backend) {
    let h = Harness::new(backend, "submitq", &[]).await;
    let body = serde_json::to_vec(&submission(None, &["a", "b"])).unwrap();
    for _ in 0..2 {
        h.broker
            .publish(OutMessage::new(Destination::Submit, body.clone()))
            .await
            .unwrap();
    }
    h.broker
        .publish(OutMessage::new(Destination::Submit, b"nope".to_vec()))
        .await
        .unwrap();
    wait_for("the rejected submission archived", T, || async {
        let (_, v) = h.get("/v1/dlq?stage=submit&reason=decode_error").await;
        v["dead_letters"].as_array().map_or(0, Vec::len) == 1
    })
    .await;
    let jobs = h.take_jobs("analyze", 2, T).await;
    assert_eq!(jobs[0].pipeline_id, jobs[1].pipeline_id);
    let (_, list) = h.get("/v1/pipelines").await;
    assert_eq!(list["pipelines"].as_array().unwrap().len(), 1, "{list}");
    h.cleanup().await;
}

/// The value of an unlabelled metric (or the sum over its label sets) in a Prometheus text page.
fn metric(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Issue 8: an event batch that keeps failing in the database is retried with backoff (no
/// spinning), parked after `--control-max-attempts`, reported by the coordinator, and replayed
/// once the database is fixed.
async fn failing_batch_backs_off_then_parks(backend: Backend) {
    let h = Harness::new(backend, "park", &["--control-max-attempts=3"]).await;
    let store = h.store();
    // A broken table: every heartbeat fails to apply, whatever the delivery.
    store
        .execute(
            "ALTER TABLE coord_workers RENAME TO coord_workers_away",
            &[],
        )
        .await
        .unwrap();
    let t0 = std::time::Instant::now();
    h.send(
        "analyze",
        Vec::new(),
        Some(heartbeat("w-park", "analyze", &[])),
    )
    .await;
    let admin = h.coordinators[0].0.admin_addr;
    let scrape = || async move { common::http_at(admin, "GET", "/metrics", None, &[]).await.1 };
    wait_for("the batch to be parked", T, || async {
        metric(&scrape().await, "fleet_coordinator_parked_total") == 1.0
    })
    .await;
    let took = t0.elapsed();
    let page = scrape().await;
    // Three deliveries, two backoffs of at least 1 s each: never an immediate requeue.
    assert!(took >= Duration::from_millis(1900), "parked after {took:?}");
    assert_eq!(
        metric(&page, "fleet_coordinator_control_retries_total"),
        2.0,
        "{page}"
    );
    assert_eq!(h.broker.depth(&Source::Events).await.unwrap(), 0);
    // Nothing spins while parked.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        metric(&scrape().await, "fleet_coordinator_control_retries_total"),
        2.0
    );

    store
        .execute(
            "ALTER TABLE coord_workers_away RENAME TO coord_workers",
            &[],
        )
        .await
        .unwrap();
    let (_, q) = h.get("/v1/queues").await;
    assert_eq!(q["parked"], 1, "{q}");
    assert_eq!(metric(&scrape().await, "fleet_parked_messages"), 1.0);
    let (s, v) = h.post("/v1/parked/replay", &json!({})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["replayed"], 1, "{v}");
    wait_for("the replayed heartbeat ingested", T, || async {
        store
            .query_one(
                "SELECT COUNT(*) AS n FROM coord_workers WHERE worker_id = 'w-park'",
                &[],
            )
            .await
            .unwrap()
            .get::<i64>("n")
            .unwrap()
            == 1
    })
    .await;
    let (_, q) = h.get("/v1/queues").await;
    assert_eq!(q["parked"], 0, "{q}");
    h.cleanup().await;
}

async fn cancel_broadcasts(backend: Backend) {
    let h = Harness::new(backend, "cancel", &[]).await;
    let mut control = h
        .broker
        .subscribe(Source::Control, SubscribeOptions { prefetch: 8 })
        .await
        .unwrap();
    h.submit("pc", &["a"], json!({})).await;
    let (s, v) = h.post("/v1/pipelines/pc/cancel", &json!({})).await;
    assert_eq!((s, v["state"].clone()), (202, json!("cancelled")), "{v}");
    let mut got = false;
    let until = tokio::time::Instant::now() + T;
    while !got && tokio::time::Instant::now() < until {
        for d in control.fetch(8, Duration::from_millis(500)).await.unwrap() {
            got |= String::from_utf8_lossy(&d.body).contains("pc");
            let _ = d.acker.ack().await;
        }
    }
    assert!(got, "a control message for pc");
    assert_eq!(h.final_messages("pc").await, 1);
    h.cleanup().await;
}

/// A pipeline id used again after the coordinator's store lost the first pipeline (a fresh
/// database, a restored backup): its jobs carry the new creation time, so the cancellation the
/// broker still keeps (NATS replays it to every new subscriber) does not apply to them.
async fn reused_id_is_a_new_life(backend: Backend) {
    let h = Harness::new(backend, "reuse", &[]).await;
    h.submit("pr", &["a"], json!({})).await;
    let (s, v) = h.post("/v1/pipelines/pr/cancel", &json!({})).await;
    assert_eq!((s, v["state"].clone()), (202, json!("cancelled")), "{v}");
    let store = h.store();
    for table in [
        "coord_items",
        "coord_jobs",
        "coord_events",
        "coord_pipelines",
    ] {
        store
            .execute(
                &format!("DELETE FROM {table} WHERE pipeline_id = $1"),
                fleet_store::params!["pr"],
            )
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(5)).await; // a later millisecond than the first life
    h.submit("pr", &["a"], json!({})).await;
    let bodies: Vec<JobEnvelope> = store
        .query(
            "SELECT body FROM coord_outbox WHERE msg_id = $1 ORDER BY id",
            fleet_store::params!["pr/a/analyze"],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| serde_json::from_str(&r.get::<String>("body").unwrap()).unwrap())
        .collect();
    assert_eq!(bodies.len(), 2, "one first job per life");
    let (old, new) = (&bodies[0], &bodies[1]);
    assert!(new.pipeline_created_at > old.pipeline_created_at);
    // A worker that subscribes now is replayed the kept cancellation (RabbitMQ keeps none).
    if backend != Backend::Rabbit {
        let mut control = h
            .broker
            .subscribe(Source::Control, SubscribeOptions { prefetch: 8 })
            .await
            .unwrap();
        let until = tokio::time::Instant::now() + T;
        let mut cancel = None;
        while cancel.is_none() && tokio::time::Instant::now() < until {
            for d in control.fetch(8, Duration::from_millis(200)).await.unwrap() {
                cancel = cancel.or(fleet_protocol::control::parse_cancellation(&d.body)
                    .filter(|c| c.pipeline_id == "pr"));
            }
        }
        let cancel = cancel.expect("the kept cancellation of pr is replayed");
        assert!(cancel.applies_to_job(old), "the first life stays cancelled");
        assert!(!cancel.applies_to_job(new), "the new life is not cancelled");
    }
    for stage in STAGES {
        h.finish("pr", &["a"], stage, EventKind::Succeeded).await;
    }
    h.wait_state("pr", "completed", T).await;
    h.cleanup().await;
}

async fn stalls_and_deadline(backend: Backend) {
    let h = Harness::new(
        backend,
        "stalls",
        &["--heartbeat-interval=300ms", "--scale-up-allowance=500ms"],
    )
    .await;
    h.submit("ps", &["a"], json!({})).await;
    wait_for("no_consumer", T, || async {
        h.report("ps").await["stalled"][0]["kind"] == "no_consumer"
    })
    .await;
    let j = "ps/a/analyze";
    h.send(
        "analyze",
        vec![event(j, "ps", "analyze", 1, 0, EventKind::Started)],
        Some(heartbeat("w-1", "analyze", &[(j, "ps")])),
    )
    .await;
    wait_for("worker_lost", T, || async {
        h.report("ps").await["stalled"][0]["kind"] == "worker_lost"
    })
    .await;
    let deadline = (chrono::Utc::now() + chrono::Duration::milliseconds(500)).to_rfc3339();
    h.submit("pd", &["a"], json!({"deadline_at": deadline}))
        .await;
    h.wait_state("pd", "timed_out", T).await;
    h.cleanup().await;
}

/// A job whose every delivery dies without an outcome hits the NATS `max_deliver` backstop: the
/// coordinator archives it (via the advisory) as `poison` and the pipeline is finalized.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_postgres_max_deliver_backstop_ends_the_item() {
    let h = Harness::new(
        Backend::Nats,
        "backstop",
        &["--max-attempts=1", "--max-deliver=2"],
    )
    .await;
    h.submit("pb", &["a"], json!({})).await;
    let mut jobs = h
        .broker
        .subscribe(
            Source::Jobs {
                stage: "analyze".into(),
            },
            SubscribeOptions { prefetch: 1 },
        )
        .await
        .unwrap();
    let mut delivered = 0;
    let until = tokio::time::Instant::now() + T;
    // Two deliveries given back without an outcome (as a worker killed on each attempt); the
    // pull after them makes the server give up.
    while delivered < 3 && tokio::time::Instant::now() < until {
        let got = jobs.fetch(1, Duration::from_millis(500)).await.unwrap();
        if got.is_empty() && delivered == 2 {
            delivered = 3;
        }
        for d in got {
            delivered += 1;
            d.acker.release().await.unwrap();
        }
    }
    assert_eq!(delivered, 3, "two deliveries, then none");
    let r = h.wait_state("pb", "failed", T).await;
    assert_eq!(r["items"][0]["failed_stage"], "analyze", "{r}");
    let (_, list) = h.get("/v1/dlq?pipeline_id=pb").await;
    let entries = list["dead_letters"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{list}");
    assert_eq!(entries[0]["reason"], "poison");
    assert_eq!(entries[0]["stage"], "analyze");
    assert_eq!(entries[0]["attempts"], 2);
    h.cleanup().await;
}

/// 300 outbox rows the broker refuses (their stage has no queue, written past the API's route
/// check as an older coordinator or a changed FLEET_ROUTE would leave them) neither stop a healthy
/// pipeline nor stay forever: they back off on their own, and after the configured attempts their
/// items end `failed` with `publish_failed` and their pipeline finalizes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_postgres_unpublishable_rows_do_not_stop_other_pipelines() {
    use fleet_coordinator::plan::{NewItem, NewPipeline, StageLimits};
    use fleet_protocol::RouteStep;
    let h = Harness::new(
        Backend::Rabbit,
        "outbox-wedge",
        &["--outbox-max-attempts=3", "--outbox-retry-backoff=2s"],
    )
    .await;
    let count = |sql: &'static str| {
        let store = h.store();
        async move {
            store
                .query_one(sql, &[])
                .await
                .unwrap()
                .get::<i64>("n")
                .unwrap()
        }
    };
    let route = vec![RouteStep {
        stage: "nowhere".into(),
        required: true,
    }];
    let bad = NewPipeline {
        pipeline_id: "bad".into(),
        body_hash: "bad".into(),
        deadline_at: None,
        replay_of: None,
        stages: [(
            "nowhere".to_owned(),
            StageLimits {
                timeout_ms: 60_000,
                max_attempts: 3,
            },
        )]
        .into(),
        items: (0..300)
            .map(|i| NewItem {
                item_id: format!("i{i}"),
                route: route.clone(),
                payload: json!({"item_id": format!("i{i}"), "text": "t"}),
            })
            .collect(),
    };
    fleet_coordinator::submit::store_pipeline(&h.store(), &bad)
        .await
        .unwrap();
    h.coordinators[0].0.app.relay.notify_one();
    wait_for("every refused row tried once", T, || async {
        count("SELECT COUNT(*) AS n FROM coord_outbox WHERE attempts >= 1").await == 300
    })
    .await;
    // A healthy pipeline goes out while the refused rows back off.
    h.submit("good", &["a", "b", "c"], json!({})).await;
    let jobs = h.take_jobs("analyze", 3, T).await;
    assert!(jobs.iter().all(|j| j.pipeline_id == "good"));
    // The queue overview still answers; the stage without a queue says so.
    let (s, q) = h.get("/v1/queues").await;
    assert_eq!(s, 200, "{q}");
    let nowhere = q["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["stage"] == "nowhere")
        .cloned()
        .unwrap_or_default();
    assert!(
        nowhere["depth"].is_null() && nowhere["depth_error"].is_string(),
        "{q}"
    );
    let r = h.wait_state("bad", "failed", T).await;
    let items = r["items"].as_array().unwrap();
    assert_eq!(items.len(), 300);
    for it in items {
        assert_eq!(it["state"], "failed", "{it}");
        assert_eq!(it["outcome"], "publish_failed", "{it}");
        let reason = it["reason"].as_str().unwrap();
        assert!(
            reason.contains("publish_failed") && reason.contains("no queue is bound"),
            "{reason}"
        );
    }
    assert_eq!(
        count(
            "SELECT COUNT(*) AS n FROM coord_outbox WHERE failed_at IS NOT NULL AND attempts = 3"
        )
        .await,
        300
    );
    for stage in STAGES {
        h.finish("good", &["a", "b", "c"], stage, EventKind::Succeeded)
            .await;
    }
    h.wait_state("good", "completed", T).await;
    // Cancelling a pipeline drops its unpublished jobs at once: no retries, nothing abandoned.
    let cancelled = NewPipeline {
        pipeline_id: "bad2".into(),
        items: bad.items[..5].to_vec(),
        ..bad.clone()
    };
    fleet_coordinator::submit::store_pipeline(&h.store(), &cancelled)
        .await
        .unwrap();
    let (s, v) = h.post("/v1/pipelines/bad2/cancel", &json!({})).await;
    assert_eq!((s, v["state"].clone()), (202, json!("cancelled")), "{v}");
    wait_for("bad2's rows dropped", T, || async {
        count(
            "SELECT COUNT(*) AS n FROM coord_outbox WHERE dest_kind = 'job' AND msg_id LIKE 'bad2/%' \
             AND failed_at IS NOT NULL AND last_error LIKE 'pipeline cancelled%'",
        )
        .await
            == 5
    })
    .await;
    // PostgreSQL cannot store NUL in text: the API refuses it up front (it answered 500).
    let (s, v) = h
        .post("/v1/dlq/purge", &json!({"pipeline_id": "p\u{0}"}))
        .await;
    assert_eq!(s, 400, "{v}");
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_postgres_pipeline_completes() {
    completes(Backend::Rabbit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_postgres_pipeline_completes() {
    completes(Backend::Nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_postgres_two_replicas_never_double_finalize() {
    two_replicas(Backend::Rabbit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_postgres_two_replicas_never_double_finalize() {
    two_replicas(Backend::Nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_postgres_submit_queue_twice_makes_one_pipeline() {
    submit_queue_twice(Backend::Rabbit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_postgres_submit_queue_twice_makes_one_pipeline() {
    submit_queue_twice(Backend::Nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_postgres_failing_batch_backs_off_then_parks() {
    failing_batch_backs_off_then_parks(Backend::Rabbit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_postgres_failing_batch_backs_off_then_parks() {
    failing_batch_backs_off_then_parks(Backend::Nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_postgres_cancel_broadcasts() {
    cancel_broadcasts(Backend::Rabbit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_postgres_cancel_broadcasts() {
    cancel_broadcasts(Backend::Nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_postgres_reused_id_is_a_new_life() {
    reused_id_is_a_new_life(Backend::Nats).await;
}

#[tokio::test]
async fn memory_sqlite_reused_id_is_a_new_life() {
    reused_id_is_a_new_life(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_postgres_stalls_and_deadline() {
    stalls_and_deadline(Backend::Rabbit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_postgres_stalls_and_deadline() {
    stalls_and_deadline(Backend::Nats).await;
}
