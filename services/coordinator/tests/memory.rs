//! The coordinator on the memory broker and an embedded SQLite file: submission,
//! ingestion, finalization, stalls, cancellation, the DLQ archive and the API.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod common;

use std::time::{Duration, Instant};

use common::{Backend, Harness, event, heartbeat, submission};
use fleet_core::{Destination, OutMessage, Source, SubscribeOptions};
use fleet_protocol::{
    DeadLetterInfo, DeadLetterReason, Degradation, DegradationKind, EventKind, Names,
};
use fleet_test_support::wait_for;
use serde_json::json;

const STAGES: [&str; 3] = ["analyze", "summarize", "write"];
const T: Duration = Duration::from_secs(10);

fn dead(reason: DeadLetterReason) -> EventKind {
    EventKind::DeadLettered {
        reason,
        error: "boom".into(),
    }
}

#[tokio::test]
async fn http_submission_twice_makes_one_pipeline() {
    let h = Harness::new(Backend::Memory, "http-twice", &[]).await;
    let body = submission(Some("p1"), &["a", "b"]);
    let (s1, v1) = h.post("/v1/pipelines", &body).await;
    assert_eq!((s1, v1["created"].clone()), (201, json!(true)), "{v1}");
    let (s2, v2) = h.post("/v1/pipelines", &body).await;
    assert_eq!((s2, v2["created"].clone()), (200, json!(false)), "{v2}");
    let (s3, v3) = h
        .post("/v1/pipelines", &submission(Some("p1"), &["a"]))
        .await;
    assert_eq!(s3, 409, "{v3}");
    assert!(v3["hint"].as_str().is_some());
    // The Idempotency-Key header works the same way.
    let no_id = submission(None, &["x"]).to_string();
    let key = [("Idempotency-Key", "k-1")];
    let (a, _) = h
        .http(
            "POST",
            "/v1/pipelines",
            Some(&serde_json::from_str(&no_id).unwrap()),
            &key,
        )
        .await;
    let (b, _) = h
        .http(
            "POST",
            "/v1/pipelines",
            Some(&serde_json::from_str(&no_id).unwrap()),
            &key,
        )
        .await;
    assert_eq!((a, b), (201, 200));
    let (_, list) = h.get("/v1/pipelines").await;
    assert_eq!(list["pipelines"].as_array().unwrap().len(), 2, "{list}");
    // Exactly one first-stage job per item reached the broker.
    let jobs = h.take_jobs("analyze", 3, T).await;
    let mut ids: Vec<String> = jobs.iter().map(|j| j.job_id.clone()).collect();
    ids.sort();
    assert_eq!(ids, ["k-1/x/analyze", "p1/a/analyze", "p1/b/analyze"]);
    assert_eq!(jobs[0].route.len(), 2);
    h.cleanup().await;
}

#[tokio::test]
async fn submit_queue_is_idempotent_and_dead_letters_rejects() {
    let h = Harness::new(Backend::Memory, "submitq", &[]).await;
    let body = serde_json::to_vec(&submission(None, &["a", "b"])).unwrap();
    for _ in 0..2 {
        h.broker
            .publish(OutMessage::new(Destination::Submit, body.clone()))
            .await
            .unwrap();
    }
    h.broker
        .publish(OutMessage::new(Destination::Submit, b"{not json".to_vec()))
        .await
        .unwrap();
    h.broker
        .publish(OutMessage::new(
            Destination::Submit,
            serde_json::to_vec(&json!({"v": 1, "items": []})).unwrap(),
        ))
        .await
        .unwrap();
    let dlq = wait_for("two rejected submissions archived", T, || async {
        let (_, v) = h.get("/v1/dlq?stage=submit").await;
        let n = v["dead_letters"].as_array().map_or(0, Vec::len);
        (n == 2).then_some(v)
    })
    .await;
    let mut reasons: Vec<&str> = dlq["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["reason"].as_str().unwrap())
        .collect();
    reasons.sort_unstable();
    assert_eq!(reasons, ["decode_error", "permanent_error"]);
    let (_, list) = h.get("/v1/pipelines").await;
    let ps = list["pipelines"].as_array().unwrap();
    assert_eq!(ps.len(), 1, "{list}");
    assert_eq!(ps[0]["items_total"], 2);
    h.cleanup().await;
}

#[tokio::test]
async fn completes_within_one_tick_and_publishes_once() {
    let h = Harness::new(Backend::Memory, "complete", &[]).await;
    let items = ["a", "b", "c"];
    h.submit("pc", &items, json!({})).await;
    for stage in &STAGES[..2] {
        h.finish("pc", &items, stage, EventKind::Succeeded).await;
    }
    let r = h.report("pc").await;
    assert_eq!(r["state"], "running");
    h.finish("pc", &items, "write", EventKind::Succeeded).await;
    let sent = Instant::now();
    let r = h.wait_state("pc", "completed", T).await;
    // One tick is 100 ms here; allow ingestion and a second tick for scheduling noise.
    assert!(
        sent.elapsed() < Duration::from_millis(1500),
        "{:?}",
        sent.elapsed()
    );
    assert_eq!(r["items_terminal"], 3);
    assert_eq!(r["stages"]["write"]["succeeded"], 3);
    assert!(
        r["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["state"] == "succeeded")
    );
    wait_for("the final message to be published", T, || async {
        h.memory()
            .queue_len(&Names::new(&h.prefix).pipelines_exchange())
            == 1
    })
    .await;
    assert_eq!(h.final_messages("pc").await, 1);
    // A late result changes nothing.
    h.send(
        "write",
        vec![event(
            "pc/a/write",
            "pc",
            "write",
            2,
            0,
            dead(DeadLetterReason::Poison),
        )],
        None,
    )
    .await;
    wait_for("the late event to be recorded", T, || async {
        h.store()
            .query_one(
                "SELECT COUNT(*) AS n FROM coord_jobs WHERE late = TRUE",
                &[],
            )
            .await
            .unwrap()
            .get::<i64>("n")
            .unwrap()
            == 1
    })
    .await;
    assert_eq!(h.report("pc").await["state"], "completed");
    assert_eq!(h.final_messages("pc").await, 1);
    h.cleanup().await;
}

#[tokio::test]
async fn required_stage_dead_lettered_names_the_item() {
    let h = Harness::new(Backend::Memory, "required", &[]).await;
    h.submit("pp", &["ok", "bad"], json!({})).await;
    h.finish("pp", &["ok", "bad"], "analyze", EventKind::Succeeded)
        .await;
    h.finish(
        "pp",
        &["bad"],
        "summarize",
        dead(DeadLetterReason::AttemptsExhausted),
    )
    .await;
    h.finish("pp", &["ok"], "summarize", EventKind::Succeeded)
        .await;
    h.finish("pp", &["ok"], "write", EventKind::Succeeded).await;
    let r = h.wait_state("pp", "partial_success", T).await;
    let bad = r["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["item_id"] == "bad")
        .unwrap()
        .clone();
    assert_eq!(bad["state"], "failed");
    assert_eq!(bad["failed_stage"], "summarize");
    assert!(
        bad["reason"]
            .as_str()
            .unwrap()
            .contains("attempts_exhausted"),
        "{bad}"
    );
    assert_eq!(r["stages"]["write"]["skipped"], 1);
    // All items failing makes the pipeline failed.
    h.submit("pf", &["x"], json!({})).await;
    h.finish(
        "pf",
        &["x"],
        "analyze",
        dead(DeadLetterReason::PermanentError),
    )
    .await;
    h.wait_state("pf", "failed", T).await;
    h.cleanup().await;
}

#[tokio::test]
async fn optional_stage_failure_passes_the_item_on() {
    let h = Harness::new(Backend::Memory, "optional", &[]).await;
    let route = json!({"route": [{"stage": "analyze"}, {"stage": "summarize", "required": false}, {"stage": "write"}]});
    h.submit("po", &["a"], route).await;
    h.finish("po", &["a"], "analyze", EventKind::Succeeded)
        .await;
    h.finish(
        "po",
        &["a"],
        "summarize",
        dead(DeadLetterReason::AttemptsExhausted),
    )
    .await;
    h.finish("po", &["a"], "write", EventKind::Succeeded).await;
    let r = h.wait_state("po", "completed", T).await;
    assert_eq!(r["items"][0]["outcome"], "completed_with_skips");
    h.cleanup().await;
}

/// Items whose analyzers partly failed (and one whose optional summarize stage was skipped)
/// succeed, but the report counts them as degraded and the final reason names why.
#[tokio::test]
async fn degraded_items_are_counted_and_named_in_the_final_reason() {
    let h = Harness::new(Backend::Memory, "degraded", &[]).await;
    let route = json!({"route": [{"stage": "analyze"}, {"stage": "summarize", "required": false}, {"stage": "write"}]});
    h.submit("pd", &["a", "b", "c"], route).await;
    let mut events = Vec::new();
    for it in ["a", "b", "c"] {
        let job = fleet_protocol::job_id("pd", it, "analyze");
        let mut e = event(&job, "pd", "analyze", 1, 1, EventKind::Succeeded);
        e.degraded = Some(Degradation::new(
            DegradationKind::AnalyzersFailed,
            "sleeper, exit1",
        ));
        events.push(e);
    }
    h.send("analyze", events, None).await;
    h.finish("pd", &["a", "b"], "summarize", EventKind::Succeeded)
        .await;
    h.finish(
        "pd",
        &["c"],
        "summarize",
        dead(DeadLetterReason::AttemptsExhausted),
    )
    .await;
    h.finish("pd", &["a", "b", "c"], "write", EventKind::Succeeded)
        .await;
    let r = h.wait_state("pd", "completed", T).await;
    assert_eq!(r["items_degraded"], 3, "{r}");
    assert_eq!(
        r["reason"],
        "all 3 items succeeded, 3 items degraded: analyzers sleeper, exit1 failed (2); \
         analyzers sleeper, exit1 failed + skipped summarize (1)",
        "{r}"
    );
    assert_eq!(r["items"][0]["degraded"], "analyzers sleeper, exit1 failed");
    assert_eq!(
        r["items"][2]["degraded"],
        "analyzers sleeper, exit1 failed + skipped summarize"
    );
    h.cleanup().await;
}

#[tokio::test]
async fn reordered_and_duplicate_events_and_superseding_success() {
    let h = Harness::new(Backend::Memory, "order", &[]).await;
    h.submit("pr", &["a"], json!({"route": [{"stage": "analyze"}]}))
        .await;
    let j = "pr/a/analyze";
    // Terminal first, then older non-terminals, then duplicates.
    h.send(
        "analyze",
        vec![
            event(
                j,
                "pr",
                "analyze",
                2,
                1,
                dead(DeadLetterReason::AttemptsExhausted),
            ),
            event(j, "pr", "analyze", 1, 0, EventKind::Started),
            event(
                j,
                "pr",
                "analyze",
                1,
                1,
                EventKind::Retrying {
                    delay_ms: 1,
                    error: "x".into(),
                },
            ),
        ],
        None,
    )
    .await;
    // A zombie attempt 1 succeeds: succeeded wins over the dead letter (before finalization)…
    // …but the dead letter already finalized the pipeline within a tick, so it is late.
    let r = h.wait_state("pr", "failed", T).await;
    assert_eq!(r["stages"]["analyze"]["dead_lettered"], 1);
    h.cleanup().await;

    // Superseding within one batch, before any tick can finalize.
    let h = Harness::new(Backend::Memory, "supersede", &[]).await;
    h.submit("ps", &["a"], json!({"route": [{"stage": "analyze"}]}))
        .await;
    let j = "ps/a/analyze";
    h.send(
        "analyze",
        vec![
            event(
                j,
                "ps",
                "analyze",
                2,
                1,
                dead(DeadLetterReason::AttemptsExhausted),
            ),
            event(j, "ps", "analyze", 1, 2, EventKind::Succeeded),
            event(j, "ps", "analyze", 1, 2, EventKind::Succeeded),
        ],
        None,
    )
    .await;
    let r = h.wait_state("ps", "completed", T).await;
    assert_eq!(r["stages"]["analyze"]["succeeded"], 1);
    let superseded: i64 = h
        .store()
        .query_one(
            "SELECT COUNT(*) AS n FROM coord_jobs WHERE superseded = TRUE",
            &[],
        )
        .await
        .unwrap()
        .get("n")
        .unwrap();
    assert_eq!(superseded, 1);
    h.cleanup().await;
}

#[tokio::test]
async fn past_deadline_is_timed_out() {
    let h = Harness::new(Backend::Memory, "deadline", &[]).await;
    let deadline = (chrono::Utc::now() + chrono::Duration::milliseconds(800)).to_rfc3339();
    h.submit("pd", &["a", "b"], json!({"deadline_at": deadline}))
        .await;
    h.finish("pd", &["a"], "analyze", EventKind::Succeeded)
        .await;
    let r = h.wait_state("pd", "timed_out", T).await;
    assert!(
        r["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["state"] == "timed_out"),
        "{r}"
    );
    assert_eq!(h.final_messages("pd").await, 1);
    h.cleanup().await;
}

#[tokio::test]
async fn cancel_finalizes_and_broadcasts() {
    let h = Harness::new(Backend::Memory, "cancel", &[]).await;
    let mut control = h
        .broker
        .subscribe(Source::Control, SubscribeOptions { prefetch: 8 })
        .await
        .unwrap();
    h.submit("px", &["a", "b"], json!({})).await;
    let (s, v) = h.post("/v1/pipelines/px/cancel", &json!({})).await;
    assert_eq!((s, v["state"].clone()), (202, json!("cancelled")), "{v}");
    let mut msgs = Vec::new();
    let until = Instant::now() + T;
    while msgs.is_empty() && Instant::now() < until {
        msgs = control.fetch(1, Duration::from_millis(200)).await.unwrap();
    }
    assert!(!msgs.is_empty(), "no control message");
    let body: serde_json::Value = serde_json::from_slice(&msgs[0].body).unwrap();
    assert_eq!(body["pipeline_id"], "px");
    // Scoped to this life of the id: the jobs carry the same creation time.
    let cancel = fleet_protocol::control::parse_cancellation(&msgs[0].body).unwrap();
    let jobs = h.take_jobs("analyze", 2, T).await;
    assert!(cancel.pipeline_created_at.is_some(), "{body}");
    assert!(jobs.iter().all(|j| cancel.applies_to_job(j)), "{body}");
    let mut later = jobs[0].clone();
    later.pipeline_created_at =
        Some(later.pipeline_created_at.unwrap() + chrono::Duration::seconds(1));
    assert!(!cancel.applies_to_job(&later));
    let r = h.report("px").await;
    assert_eq!(r["stages"]["analyze"]["cancelled"], 2);
    assert_eq!(h.final_messages("px").await, 1);
    let (s, _) = h.post("/v1/pipelines/px/cancel", &json!({})).await;
    assert_eq!(s, 202, "cancelling twice is fine");
    let (s, v) = h.post("/v1/pipelines/nope/cancel", &json!({})).await;
    assert_eq!(s, 404, "{v}");
    h.cleanup().await;
}

#[tokio::test]
async fn no_consumer_then_worker_lost() {
    let h = Harness::new(
        Backend::Memory,
        "stalls",
        &["--heartbeat-interval=200ms", "--scale-up-allowance=300ms"],
    )
    .await;
    h.submit("pn", &["a"], json!({})).await;
    let r = wait_for("no_consumer to be reported", T, || async {
        let r = h.report("pn").await;
        (r["stalled"][0]["kind"] == "no_consumer").then_some(r)
    })
    .await;
    assert_eq!(r["stalled"][0]["job_id"], "pn/a/analyze");
    // A worker appears and starts the job: no stall while it heartbeats.
    let j = "pn/a/analyze";
    h.send(
        "analyze",
        vec![event(j, "pn", "analyze", 1, 0, EventKind::Started)],
        Some(heartbeat("test-worker", "analyze", &[(j, "pn")])),
    )
    .await;
    wait_for("the stall to clear", T, || async {
        h.report("pn").await["stalled"]
            .as_array()
            .is_some_and(Vec::is_empty)
    })
    .await;
    // Heartbeats stop: after three intervals the worker is lost.
    let r = wait_for("worker_lost to be reported", T, || async {
        let r = h.report("pn").await;
        (r["stalled"][0]["kind"] == "worker_lost").then_some(r)
    })
    .await;
    assert_eq!(r["stalled"][0]["worker_id"], "test-worker");
    h.cleanup().await;
}

/// A stage with backlog and no workers has a `fleet_workers_alive` series at 0 (so
/// `FleetStageNoConsumer` can fire) even when the sweeping coordinator's configured route
/// does not name it (pipelines routed before FLEET_ROUTE changed), and its gauges go back to
/// 0 once it drains instead of keeping their last value.
#[tokio::test]
async fn a_routed_stage_without_workers_exports_zero_workers() {
    use fleet_coordinator::gauges::{StageCounts, StageGauges};
    use fleet_coordinator::sweeper::{SweepConfig, sweep_once};

    let h = Harness::new(Backend::Memory, "ghost-stage", &[]).await;
    h.submit("pg", &["a", "b"], json!({})).await;
    // A coordinator that knows none of the route's stages sweeps the same store.
    let cfg = SweepConfig {
        heartbeat: Duration::from_secs(1),
        scale_up_allowance: Duration::from_secs(60),
        deadline_grace: Duration::ZERO,
        stall_windows: Default::default(),
        stages: Vec::new(),
        started_at: 0,
        retention: None,
    };
    let mut gauges = StageGauges::new(&cfg.stages);
    let value =
        |samples: &[fleet_coordinator::gauges::Sample], name: &str, want: &[(&str, &str)]| {
            samples
                .iter()
                .find(|(n, l, _)| {
                    *n == name
                        && l.len() == want.len()
                        && want
                            .iter()
                            .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
                })
                .map(|(_, _, v)| *v)
        };
    let report = wait_for("a sweep that holds the lock", T, || async {
        let r = sweep_once(&h.store(), &cfg).await.unwrap();
        r.ran.then_some(r)
    })
    .await;
    let samples = gauges.samples(&report.counts);
    assert_eq!(
        value(&samples, "fleet_workers_alive", &[("stage", "analyze")]),
        Some(0.0),
        "{samples:?}"
    );
    assert_eq!(
        value(
            &samples,
            "fleet_stage_backlog",
            &[("stage", "analyze"), ("health", "healthy")]
        ),
        Some(2.0),
        "{samples:?}"
    );
    // The pipeline ends: the stage drains and its backlog goes back to 0.
    let cancel = h.post("/v1/pipelines/pg/cancel", &json!({})).await;
    assert_eq!(cancel.0, 202, "{:?}", cancel.1);
    h.wait_state("pg", "cancelled", T).await;
    let report = wait_for("a sweep that holds the lock", T, || async {
        let r = sweep_once(&h.store(), &cfg).await.unwrap();
        r.ran.then_some(r)
    })
    .await;
    assert_eq!(
        report.counts,
        StageCounts::default(),
        "nothing runs any more"
    );
    let samples = gauges.samples(&report.counts);
    assert_eq!(
        value(
            &samples,
            "fleet_stage_backlog",
            &[("stage", "analyze"), ("health", "healthy")]
        ),
        Some(0.0),
        "{samples:?}"
    );
    assert_eq!(
        value(&samples, "fleet_workers_alive", &[("stage", "analyze")]),
        Some(0.0)
    );
    h.cleanup().await;
}

#[tokio::test]
async fn dlq_archive_ends_the_item_and_replay_makes_a_new_pipeline() {
    let h = Harness::new(Backend::Memory, "dlq", &[]).await;
    h.submit("pq", &["a", "b"], json!({})).await;
    h.finish("pq", &["a", "b"], "analyze", EventKind::Succeeded)
        .await;
    h.finish("pq", &["a"], "summarize", EventKind::Succeeded)
        .await;
    h.finish("pq", &["a"], "write", EventKind::Succeeded).await;
    // Item b's summarize job dies in the broker backstop: no fleet headers, no event.
    h.backstop_dead_letter("pq", "b", "summarize", json!({"text": "t", "analysis": 1}))
        .await;
    let r = h.wait_state("pq", "partial_success", T).await;
    let b = r["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["item_id"] == "b")
        .unwrap()
        .clone();
    assert_eq!(
        (b["state"].as_str(), b["failed_stage"].as_str()),
        (Some("failed"), Some("summarize"))
    );
    let (_, list) = h.get("/v1/dlq?pipeline_id=pq").await;
    let entry = list["dead_letters"][0].clone();
    assert_eq!(entry["reason"], "poison");
    let (s, shown) = h.get(&format!("/v1/dlq/{}", entry["id"])).await;
    assert_eq!(s, 200);
    assert_eq!(shown["body"]["payload"]["analysis"], 1);
    let (_, dry) = h
        .post(
            "/v1/dlq/replay",
            &json!({"pipeline_id": "pq", "dry_run": true}),
        )
        .await;
    assert_eq!(dry["items"], json!(["b"]));
    assert!(dry["pipeline_id"].is_null());
    let (s, rep) = h
        .post("/v1/dlq/replay", &json!({"ids": [entry["id"]]}))
        .await;
    assert_eq!(s, 200, "{rep}");
    let new_id = rep["pipeline_id"].as_str().unwrap().to_owned();
    let nr = h.report(&new_id).await;
    assert_eq!(nr["replay_of"], "pq");
    assert_eq!(nr["stages"]["summarize"]["queued"], 1);
    let jobs = h.take_jobs("summarize", 1, T).await;
    assert_eq!(jobs[0].payload["analysis"], 1);
    assert_eq!(jobs[0].route.len(), 1);
    let (_, purged) = h.post("/v1/dlq/purge", &json!({"pipeline_id": "pq"})).await;
    assert_eq!(purged["purged"], 1);
    // A dead letter with fleet headers keeps its reason.
    let info = DeadLetterInfo {
        reason: DeadLetterReason::PermanentError,
        last_error_kind: None,
        last_error: "nope".into(),
        attempts: 1,
        stage: "analyze".into(),
        worker_id: "w".into(),
        at: chrono::Utc::now(),
        job_id: Some("zz/a/analyze".into()),
    };
    let mut m2 = OutMessage::new(
        Destination::DeadLetter {
            stage: "analyze".into(),
        },
        b"\xff".to_vec(),
    );
    m2.headers = info.to_headers();
    h.broker.publish(m2).await.unwrap();
    wait_for("the binary dead letter archived", T, || async {
        let (_, v) = h.get("/v1/dlq?reason=permanent_error").await;
        v["dead_letters"].as_array().map_or(0, Vec::len) == 1
    })
    .await;
    h.cleanup().await;
}

#[tokio::test]
async fn sse_streams_progress_then_final() {
    let h = Harness::new(Backend::Memory, "sse", &[]).await;
    h.submit("pe", &["a"], json!({"route": [{"stage": "analyze"}]}))
        .await;
    h.finish("pe", &["a"], "analyze", EventKind::Succeeded)
        .await;
    h.wait_state("pe", "completed", T).await;
    let (s, body) = h.http("GET", "/v1/pipelines/pe/events", None, &[]).await;
    assert_eq!(s, 200);
    assert!(body.contains("event: progress"), "{body}");
    assert!(body.contains("\"succeeded\""), "{body}");
    let fin = body.find("event: final").expect("a final event");
    assert!(body[fin..].contains("\"completed\""));
    let (s, _) = h.http("GET", "/v1/pipelines/none/events", None, &[]).await;
    assert_eq!(s, 404);
    h.cleanup().await;
}

#[tokio::test]
async fn auth_limits_errors_queues_and_openapi() {
    let h = Harness::new(
        Backend::Memory,
        "api",
        &[
            "--api-token=s3cret",
            "--max-item-bytes=100",
            "--max-body-bytes=2000",
        ],
    )
    .await;
    let (s, b) = h.http("GET", "/v1/pipelines", None, &[]).await;
    assert_eq!(s, 401, "{b}");
    assert!(b.contains("hint"));
    let (s, _) = h
        .http(
            "GET",
            "/v1/pipelines",
            None,
            &[("Authorization", "Bearer wrong")],
        )
        .await;
    assert_eq!(s, 401);
    let auth = [("Authorization", "Bearer s3cret")];
    let (s, _) = h.http("GET", "/v1/pipelines", None, &auth).await;
    assert_eq!(s, 200);
    let big_item = json!({"v": 1, "items": [{"item_id": "a", "text": "x".repeat(150)}]});
    let (s, b) = h
        .http("POST", "/v1/pipelines", Some(&big_item), &auth)
        .await;
    assert_eq!(s, 413, "{b}");
    assert!(b.contains("limit is 100 bytes"), "{b}");
    let big_body = json!({"v": 1, "items": [{"item_id": "a", "text": "x".repeat(5000)}]});
    let (s, b) = h
        .http("POST", "/v1/pipelines", Some(&big_body), &auth)
        .await;
    assert_eq!(s, 413, "{b}");
    let (s, b) = h
        .http("POST", "/v1/pipelines", Some(&json!({"v": 1})), &auth)
        .await;
    assert_eq!(s, 400, "{b}");
    let (s, _) = h.http("GET", "/v1/pipelines/missing", None, &auth).await;
    assert_eq!(s, 404);
    let (s, b) = h
        .http("GET", "/v1/pipelines?state=bogus", None, &auth)
        .await;
    assert_eq!(s, 400, "{b}");
    let (s, b) = h.http("GET", "/v1/queues", None, &auth).await;
    assert_eq!(s, 200);
    let q: serde_json::Value = serde_json::from_str(&b).unwrap();
    assert_eq!(q["queues"].as_array().unwrap().len(), 3, "{q}");
    let (s, b) = h.http("GET", "/v1/openapi.yaml", None, &[]).await;
    assert_eq!(s, 200);
    assert!(b.contains("/v1/pipelines/{id}/events"));
    h.cleanup().await;
}

/// Issue 8: event batches of an unknown version or undecodable are parked (kept for a
/// coordinator that understands them), never acked and dropped.
#[tokio::test]
async fn unknown_version_batches_are_parked_not_dropped() {
    let h = Harness::new(Backend::Memory, "parkv", &[]).await;
    let batch = json!({"v": 2, "worker_id": "w-new", "stage": "analyze", "events": []});
    for body in [serde_json::to_vec(&batch).unwrap(), b"not json".to_vec()] {
        h.broker
            .publish(OutMessage::new(
                Destination::Events {
                    stage: "analyze".into(),
                },
                body,
            ))
            .await
            .unwrap();
    }
    wait_for("both batches parked", T, || async {
        let (_, q) = h.get("/v1/queues").await;
        q["parked"] == 2
    })
    .await;
    assert_eq!(h.broker.depth(&Source::Events).await.unwrap(), 0);
    // Replay sends them back; this coordinator still cannot read them, so they park again.
    let (s, v) = h.post("/v1/parked/replay", &json!({"max": 1})).await;
    assert_eq!((s, &v["replayed"]), (200, &json!(1)), "{v}");
    wait_for("the replayed batch parked again", T, || async {
        let (_, q) = h.get("/v1/queues").await;
        q["parked"] == 2
    })
    .await;
    h.cleanup().await;
}

#[tokio::test]
async fn list_is_paginated() {
    let h = Harness::new(Backend::Memory, "page", &[]).await;
    for i in 0..5 {
        h.submit(&format!("pg{i}"), &["a"], json!({})).await;
    }
    let (_, p1) = h.get("/v1/pipelines?limit=2").await;
    assert_eq!(p1["pipelines"].as_array().unwrap().len(), 2);
    let next = p1["next"].as_str().unwrap().to_owned();
    let (_, p2) = h.get(&format!("/v1/pipelines?limit=2&after={next}")).await;
    let (_, p3) = h
        .get(&format!(
            "/v1/pipelines?limit=2&after={}",
            p2["next"].as_str().unwrap()
        ))
        .await;
    assert_eq!(p3["pipelines"].as_array().unwrap().len(), 1);
    assert!(p3["next"].is_null());
    let mut all: Vec<String> = [&p1, &p2, &p3]
        .iter()
        .flat_map(|p| {
            p["pipelines"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x["pipeline_id"].as_str().unwrap().to_owned())
        })
        .collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 5);
    let (_, running) = h.get("/v1/pipelines?state=running").await;
    assert_eq!(running["pipelines"].as_array().unwrap().len(), 5);
    h.cleanup().await;
}

#[tokio::test]
async fn open_pipeline_takes_batches_idempotently_and_finalizes_only_when_sealed() {
    open_batches(Backend::Memory).await;
}

/// The same on NATS + PostgreSQL (the migration and the row locks of appends are backend-specific).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_pipeline_on_nats_and_postgres() {
    open_batches(Backend::Nats).await;
}

async fn open_batches(backend: Backend) {
    let h = Harness::new(backend, "open", &[]).await;
    let item = |id: &str, text: &str| json!({"item_id": id, "text": text});
    let (s, v) = h
        .post(
            "/v1/pipelines",
            &json!({"v": 1, "pipeline_id": "po", "open": true, "items": [item("a", "A")]}),
        )
        .await;
    assert_eq!(
        (s, v["created"].clone(), v["accepted"].clone()),
        (201, json!(true), json!(1)),
        "{v}"
    );
    let (s, v) = h
        .post(
            "/v1/pipelines/po/items",
            &json!({"v": 1, "items": [item("b", "B"), item("c", "C")]}),
        )
        .await;
    assert_eq!(
        (s, v["accepted"].clone(), v["existing"].clone()),
        (200, json!(2), json!(0)),
        "{v}"
    );
    // Re-sending a batch is a no-op; changed content for an existing item is a conflict.
    let (s, v) = h
        .post(
            "/v1/pipelines/po/items",
            &json!({"v": 1, "items": [item("a", "A"), item("b", "B")]}),
        )
        .await;
    assert_eq!(
        (s, v["accepted"].clone(), v["existing"].clone()),
        (200, json!(0), json!(2)),
        "{v}"
    );
    let (s, v) = h
        .post(
            "/v1/pipelines/po/items",
            &json!({"v": 1, "items": [item("a", "changed")]}),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("`a`"), "{v}");
    // Re-creating the open pipeline finds it.
    let (s, v) = h
        .post(
            "/v1/pipelines",
            &json!({"v": 1, "pipeline_id": "po", "open": true, "items": []}),
        )
        .await;
    assert_eq!((s, v["created"].clone()), (200, json!(false)), "{v}");
    // Every item finishes every stage before the seal: the pipeline must stay open.
    let items = ["a", "b", "c"];
    for stage in STAGES {
        h.finish("po", &items, stage, EventKind::Succeeded).await;
    }
    wait_for("the three items to be terminal", T, || async {
        h.report("po").await["items_terminal"] == 3
    })
    .await;
    let ticks = Instant::now();
    while ticks.elapsed() < Duration::from_millis(400) {
        assert_eq!(
            h.report("po").await["state"],
            "running",
            "finalized before its seal"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A seal that expects another count is refused (a batch went missing).
    let (s, v) = h
        .post("/v1/pipelines/po/seal", &json!({"item_count": 4}))
        .await;
    assert_eq!(s, 409, "{v}");
    let (s, v) = h
        .post("/v1/pipelines/po/seal", &json!({"item_count": 3}))
        .await;
    assert_eq!(
        (s, v["state"].clone(), v["newly_sealed"].clone()),
        (200, json!("completed"), json!(true)),
        "{v}"
    );
    let (s, v) = h
        .post("/v1/pipelines/po/seal", &json!({"item_count": 3}))
        .await;
    assert_eq!((s, v["newly_sealed"].clone()), (200, json!(false)), "{v}");
    // Sealed: the same items are still a no-op, a new one is refused.
    let (s, _) = h
        .post(
            "/v1/pipelines/po/items",
            &json!({"v": 1, "items": [item("c", "C")]}),
        )
        .await;
    assert_eq!(s, 200);
    let (s, v) = h
        .post(
            "/v1/pipelines/po/items",
            &json!({"v": 1, "items": [item("d", "D")]}),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    // Exactly one first-stage job per item reached the broker, and one final message.
    let jobs = h.take_jobs("analyze", 3, T).await;
    let mut ids: Vec<String> = jobs.iter().map(|j| j.job_id.clone()).collect();
    ids.sort();
    assert_eq!(ids, ["po/a/analyze", "po/b/analyze", "po/c/analyze"]);
    assert_eq!(h.final_messages("po").await, 1);
    // A pipeline submitted whole takes no batches; an unknown one is 404.
    h.submit("whole", &["x"], json!({})).await;
    let (s, _) = h
        .post(
            "/v1/pipelines/whole/items",
            &json!({"v": 1, "items": [item("y", "Y")]}),
        )
        .await;
    assert_eq!(s, 409);
    let (s, _) = h.post("/v1/pipelines/nope/seal", &json!({})).await;
    assert_eq!(s, 404);
    let (s, v) = h.get("/v1/limits").await;
    assert_eq!(
        (s, v["max_body_bytes"].clone()),
        (200, json!(10 * 1024 * 1024)),
        "{v}"
    );
    h.cleanup().await;
}

#[tokio::test]
async fn an_open_pipeline_never_sealed_times_out_with_a_reason() {
    let h = Harness::new(
        Backend::Memory,
        "open-timeout",
        &["--open-pipeline-timeout=600ms"],
    )
    .await;
    let (s, v) = h
        .post(
            "/v1/pipelines",
            &json!({"v": 1, "pipeline_id": "pn", "open": true, "items": [{"item_id": "a", "text": "x"}]}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    h.finish("pn", &["a"], "analyze", EventKind::Succeeded)
        .await;
    let r = h.wait_state("pn", "timed_out", T).await;
    assert!(
        r["reason"].as_str().unwrap().contains("never sealed"),
        "{r}"
    );
    assert!(
        r["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["state"] == "timed_out"),
        "{r}"
    );
    assert_eq!(h.final_messages("pn").await, 1);
    // Sealing it now says why not.
    let (s, v) = h.post("/v1/pipelines/pn/seal", &json!({})).await;
    assert_eq!(s, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("timed_out"), "{v}");
    h.cleanup().await;
}

/// Issue 9: jobs waiting for a delayed retry are not in the queue depth, so `/v1/queues` counts
/// them per stage (`retrying`).
#[tokio::test]
async fn queues_count_jobs_waiting_for_a_retry() {
    let h = Harness::new(Backend::Memory, "retryq", &[]).await;
    h.submit("pq", &["a"], json!({"route": [{"stage": "analyze"}]}))
        .await;
    let mut sub = h
        .broker
        .subscribe(
            Source::Jobs {
                stage: "analyze".into(),
            },
            SubscribeOptions { prefetch: 1 },
        )
        .await
        .unwrap();
    let deadline = Instant::now() + T;
    let job = loop {
        if let Some(d) = sub
            .fetch(1, Duration::from_millis(100))
            .await
            .unwrap()
            .pop()
        {
            break d;
        }
        assert!(
            Instant::now() < deadline,
            "the first job was never published"
        );
    };
    job.acker.retry(Duration::from_secs(600)).await.unwrap();
    let (s, q) = h.get("/v1/queues").await;
    assert_eq!(s, 200, "{q}");
    let analyze = q["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["stage"] == "analyze")
        .cloned()
        .unwrap_or_else(|| panic!("no analyze row: {q}"));
    assert_eq!(analyze["retrying"], 1, "{q}");
    assert!(
        q["queues"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["stage"] != "analyze")
            .all(|x| x["retrying"] == 0),
        "{q}"
    );
    drop(sub);
    h.cleanup().await;
}
