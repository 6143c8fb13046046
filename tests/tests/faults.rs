//! Cross-service fault tests: the real `fleet-coordinator`, `fleet-analyzer`,
//! `fleet-summarizer` and `fleet-writer` binaries as separate OS processes on RabbitMQ and
//! on NATS JetStream, with PostgreSQL (a schema per test) and a stub LLM on loopback.
//! Each test breaks something for real (SIGKILL, a hanging LLM, no consumer, a job the
//! broker's delivery limit gives up on, a cancellation before any worker runs, a
//! coordinator killed mid-pipeline) and asserts the end state: the expected final state,
//! every item terminal, exactly one finalization, the rows written, the queues empty.
//!
//! The binaries must be built (`cargo build --workspace`); a missing broker, database or
//! binary fails the test with what to do.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the failure report

use std::time::Duration;

use fleet_core::{Source, SubscribeOptions};
use fleet_protocol::job_id;
use fleet_test_support::wait_for;
use fleet_tests::Backend;
use fleet_tests::llm::{Behavior, StubLlm};
use fleet_tests::world::{Limits, World, control_config, submission, text};
use serde_json::{Value, json};

/// Bound of each wait: generous, as these run real processes on a busy 2-core box (they take
/// 1–11 s when nothing is wrong).
const T: Duration = Duration::from_secs(40);

/// Summarizer flags for one OpenAI-compatible provider at `stub` (from a providers file:
/// its breaker must not open on the failures a test provokes on purpose).
fn summarizer_flags(
    w: &World,
    stub: &StubLlm,
    request_timeout: &str,
    fallback: bool,
) -> Vec<String> {
    let file = w.path("providers.toml");
    std::fs::write(
        &file,
        format!(
            "[[provider]]\nname = \"stub\"\nbase_url = \"{}\"\nmodel = \"stub\"\nstream = false\n\
             request_timeout = \"{request_timeout}\"\nmax_concurrency = 16\nbreaker_failures = 1000\n",
            stub.base_url()
        ),
    )
    .unwrap();
    vec![
        format!("--providers-config={}", file.display()),
        format!("--extractive-fallback={fallback}"),
    ]
}

/// The report entry of one item.
fn item<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["items"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["item_id"] == id))
        .unwrap_or_else(|| panic!("item {id} in {report}"))
}

/// 1. A summarizer SIGKILLed mid-job is reported `worker_lost`; a second summarizer then
///    finishes the job and the pipeline completes with one row per item.
async fn worker_killed_mid_job(backend: Backend) {
    let mut w = World::new(backend, "lost").await;
    let stub = StubLlm::start().await;
    // Item b's first request hangs: its summarizer is mid-job when it is killed.
    stub.rule("SLOW-b", Behavior::HangFirst(1));
    w.start_coordinator(&[]).await;
    w.start_analyzer().await;
    w.start_writer().await;
    let flags = summarizer_flags(&w, &stub, "30s", true);
    let first = w.start_summarizer(&flags).await;
    let pid = "lost";
    w.submit(&submission(
        pid,
        &[
            ("a", text("plain a")),
            ("b", text("SLOW-b")),
            ("c", text("plain c")),
        ],
        json!({"stages": {"summarize": {"timeout_ms": 30_000}}}),
    ))
    .await;
    wait_for("the summarizer to be mid-job on b", T, || async {
        stub.requests_for("SLOW-b") == 1
    })
    .await;
    w.kill(first).await;
    let job = job_id(pid, "b", "summarize");
    let stall = w.wait_stall(pid, &job, "worker_lost", T).await;
    assert!(
        stall["worker_id"].is_string(),
        "the lost worker is named: {stall}"
    );

    w.start_summarizer(&flags).await;
    w.wait_state(pid, "completed", T).await;
    let r = w.assert_final(pid, "completed").await;
    for id in ["a", "b", "c"] {
        assert_eq!(item(&r, id)["state"], "succeeded", "{r}");
    }
    assert_eq!(
        stub.requests_for("SLOW-b"),
        2,
        "b was summarized again by the second summarizer"
    );
    w.assert_rows(pid, &["a", "b", "c"]).await;
    w.wait_queues_empty(T).await;
    w.cleanup().await;
}

/// 2. An LLM that hangs for some items, without the extractive fallback: each hanging
///    `summarize` job times out, is retried, then dead-lettered. Required stage: those items
///    fail and are named (`partial_success`; `failed` when no item succeeds). Optional
///    stage: those items skip it and are still written (DESIGN §5: an item with a skipped
///    optional stage succeeded, so the pipeline is `completed`, the items named
///    `completed_with_skips`).
async fn hanging_llm_without_fallback(backend: Backend) {
    let mut w = World::new(backend, "hang").await;
    let stub = StubLlm::start().await;
    stub.rule("HANG", Behavior::Hang);
    w.start_coordinator(&[]).await;
    w.start_analyzer().await;
    w.start_writer().await;
    let flags = summarizer_flags(&w, &stub, "1s", false);
    w.start_summarizer(&flags).await;
    let stages = json!({"summarize": {"timeout_ms": 2_000, "max_attempts": 2}});
    let optional = json!([
        {"stage": "analyze"}, {"stage": "summarize", "required": false}, {"stage": "write"}
    ]);
    w.submit(&submission(
        "opt",
        &[("ok-1", text("fine")), ("hang-1", text("HANG"))],
        json!({"stages": stages, "route": optional}),
    ))
    .await;
    w.submit(&submission(
        "req",
        &[
            ("ok-2", text("fine")),
            ("hang-2", text("HANG")),
            ("hang-3", text("HANG")),
        ],
        json!({"stages": stages}),
    ))
    .await;
    w.submit(&submission(
        "all",
        &[("hang-4", text("HANG")), ("hang-5", text("HANG"))],
        json!({"stages": stages}),
    ))
    .await;

    w.wait_state("req", "partial_success", T).await;
    let r = w.assert_final("req", "partial_success").await;
    assert_eq!(item(&r, "ok-2")["state"], "succeeded", "{r}");
    for id in ["hang-2", "hang-3"] {
        let i = item(&r, id);
        assert_eq!(i["state"], "failed", "{r}");
        assert_eq!(i["failed_stage"], "summarize", "{r}");
        assert_eq!(i["outcome"], "dead_lettered", "{r}");
    }
    assert_eq!(r["stages"]["write"]["skipped"], 2, "{r}");

    w.wait_state("all", "failed", T).await;
    let r = w.assert_final("all", "failed").await;
    for id in ["hang-4", "hang-5"] {
        assert_eq!(item(&r, id)["failed_stage"], "summarize", "{r}");
    }

    w.wait_state("opt", "completed", T).await;
    let r = w.assert_final("opt", "completed").await;
    assert_eq!(item(&r, "ok-1")["outcome"], "completed", "{r}");
    let skipped = item(&r, "hang-1");
    assert_eq!(skipped["outcome"], "completed_with_skips", "{r}");
    assert!(
        skipped["reason"]
            .as_str()
            .unwrap_or("")
            .contains("summarize"),
        "{r}"
    );

    // Each hanging job was tried twice (no fallback, no third try) and archived once.
    assert_eq!(
        stub.requests_for("HANG"),
        10,
        "5 hanging items × 2 attempts"
    );
    let (_, dlq) = w.call("GET", "/v1/dlq?stage=summarize", None).await;
    let mut dead: Vec<String> = dlq["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["item_id"].as_str().unwrap().to_owned())
        .collect();
    dead.sort();
    assert_eq!(
        dead,
        ["hang-1", "hang-2", "hang-3", "hang-4", "hang-5"],
        "{dlq}"
    );
    w.assert_rows("opt", &["hang-1", "ok-1"]).await;
    w.assert_rows("req", &["ok-2"]).await;
    w.assert_rows("all", &[]).await;
    w.wait_queues_empty(T).await;
    w.cleanup().await;
}

/// 3. A backlog on `summarize` with no summarizer running is reported `no_consumer`;
///    starting one completes the pipeline.
async fn no_consumer_until_a_worker_starts(backend: Backend) {
    let mut w = World::new(backend, "nocons").await;
    w.start_coordinator(&["--scale-up-allowance=500ms"]).await;
    w.start_analyzer().await;
    w.start_writer().await;
    let pid = "nocons";
    w.submit(&submission(
        pid,
        &[("a", text("a")), ("b", text("b"))],
        json!({}),
    ))
    .await;
    for it in ["a", "b"] {
        let s = w
            .wait_stall(pid, &job_id(pid, it, "summarize"), "no_consumer", T)
            .await;
        assert_eq!(s["stage"], "summarize", "{s}");
    }
    let r = w.report(pid).await;
    assert_eq!(r["state"], "running", "{r}");
    assert_eq!(r["stages"]["analyze"]["succeeded"], 2, "{r}");

    w.start_summarizer(&[]).await;
    w.wait_state(pid, "completed", T).await;
    w.assert_final(pid, "completed").await;
    w.assert_rows(pid, &["a", "b"]).await;
    w.wait_queues_empty(T).await;
    w.cleanup().await;
}

/// 4. A job the broker's own delivery limit gives up on (RabbitMQ `x-delivery-limit`,
///    NATS `max_deliver` + `MAX_DELIVERIES` advisory) still ends its item. Its summarizer
///    is SIGKILLed mid-job, then every further delivery "kills" its consumer before the
///    runtime can even look at it (the test's own connection takes it and drops dead), so
///    only the broker's backstop can end it.
async fn broker_backstop_ends_the_item(backend: Backend) {
    let limits = Limits {
        max_attempts: 2,
        max_deliver: 3,
    };
    let mut w = World::with_limits(backend, "backstop", limits).await;
    let stub = StubLlm::start().await;
    stub.rule("POISON", Behavior::Hang);
    w.start_coordinator(&[]).await;
    w.start_analyzer().await;
    w.start_writer().await;
    let summarizer = w
        .start_summarizer(&summarizer_flags(&w, &stub, "30s", true))
        .await;
    let pid = "backstop";
    w.submit(&submission(
        pid,
        &[("good", text("fine")), ("poison", text("POISON"))],
        json!({"stages": {"summarize": {"timeout_ms": 30_000}}}),
    ))
    .await;
    wait_for("good summarized and poison mid-job", T, || async {
        let r = w.report(pid).await;
        item(&r, "good")["state"] == "succeeded" && stub.requests_for("POISON") == 1
    })
    .await;
    w.kill(summarizer).await;

    // Each round: a consumer takes the delivery and dies with it (connection dropped, no
    // settlement), until the broker stops delivering it and dead-letters it.
    let crashes = std::sync::atomic::AtomicUsize::new(0);
    let cfg = control_config(&w.url, &w.prefix);
    wait_for(
        "the broker's backstop to end the poison item",
        Duration::from_secs(40),
        || async {
            let conn = fleet_runtime::connect::connect(&cfg)
                .await
                .expect("connect");
            conn.declare(&w.topology()).await.expect("declare");
            let mut sub = conn
                .subscribe(
                    Source::Jobs {
                        stage: "summarize".into(),
                    },
                    SubscribeOptions { prefetch: 1 },
                )
                .await
                .expect("subscribe");
            let got = sub.fetch(1, Duration::from_secs(1)).await.expect("fetch");
            if !got.is_empty() {
                crashes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            drop(got);
            drop(sub);
            conn.close().await;
            let r = w.report(pid).await;
            item(&r, "poison")["state"] != "running"
        },
    )
    .await;
    assert!(
        crashes.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "the poison job was redelivered after the kill"
    );

    w.wait_state(pid, "partial_success", T).await;
    let r = w.assert_final(pid, "partial_success").await;
    assert_eq!(item(&r, "good")["state"], "succeeded", "{r}");
    let poison = item(&r, "poison");
    assert_eq!(poison["state"], "failed", "{r}");
    assert_eq!(poison["failed_stage"], "summarize", "{r}");
    let (_, dlq) = w.call("GET", "/v1/dlq?stage=summarize", None).await;
    let dead = dlq["dead_letters"].as_array().unwrap();
    assert_eq!(dead.len(), 1, "{dlq}");
    assert_eq!(dead[0]["item_id"], "poison", "{dlq}");
    let (_, shown) = w
        .call("GET", &format!("/v1/dlq/{}", dead[0]["id"]), None)
        .await;
    assert!(
        shown.to_string().contains("delivery-limit"),
        "dead-lettered by the broker's backstop (x-backstop: delivery-limit): {shown}"
    );
    w.assert_rows(pid, &["good"]).await;
    w.wait_queues_empty(T).await;
    w.cleanup().await;
}

/// 5. A pipeline cancelled while no worker runs: workers started afterwards drop its
///    queued jobs (acked as `cancelled`, nothing passed on, nothing written).
async fn cancelled_before_workers_start(backend: Backend) {
    let mut w = World::new(backend, "cancel").await;
    w.start_coordinator(&[]).await;
    let pid = "cancelled";
    let items = ["a", "b", "c"];
    let list: Vec<(&str, String)> = items.iter().map(|i| (*i, text(i))).collect();
    w.submit(&submission(pid, &list, json!({}))).await;
    wait_for("the first jobs published", T, || async {
        w.control
            .depth(&Source::Jobs {
                stage: "analyze".into(),
            })
            .await
            .ok()
            == Some(3)
    })
    .await;
    let (s, v) = w
        .call(
            "POST",
            &format!("/v1/pipelines/{pid}/cancel"),
            Some(&json!({})),
        )
        .await;
    assert_eq!((s, &v["state"]), (202, &json!("cancelled")), "{v}");

    let analyzer = w.start_analyzer().await;
    let a = w.proc(analyzer);
    let finished = |outcome: &'static str| async move {
        a.metric(
            "fleet_jobs_finished_total",
            &[("stage", "analyze"), ("outcome", outcome)],
        )
        .await
    };
    wait_for(
        "the analyzer to drop the 3 jobs as cancelled",
        T,
        || async {
            let (dropped, ran) = (finished("cancelled").await, finished("succeeded").await);
            if dropped == 3.0 {
                Ok(())
            } else {
                Err(format!(
                    "{dropped} dropped as cancelled, {ran} run to success"
                ))
            }
        },
    )
    .await;
    assert_eq!(finished("succeeded").await, 0.0, "no cancelled job ran");
    w.start_summarizer(&[]).await;
    w.start_writer().await;
    // Give the later stages time to receive anything that was (wrongly) passed on.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = w.assert_final(pid, "cancelled").await;
    for id in items {
        assert_eq!(item(&r, id)["state"], "cancelled", "{r}");
    }
    w.assert_rows(pid, &[]).await;
    w.wait_queues_empty(T).await;
    w.cleanup().await;
}

/// 6. The coordinator SIGKILLed right after accepting a pipeline and again mid-pipeline,
///    restarted each time: the pipeline completes, finalized exactly once, every item
///    terminal, one row per item.
async fn coordinator_killed_mid_pipeline(backend: Backend) {
    let mut w = World::new(backend, "coordkill").await;
    let stub = StubLlm::start().await;
    stub.rule("SLOW", Behavior::Slow(Duration::from_millis(800)));
    let first = w.start_coordinator(&[]).await;
    w.start_analyzer().await;
    w.start_writer().await;
    w.start_summarizer(&summarizer_flags(&w, &stub, "30s", true))
        .await;
    let pid = "coordkill";
    let items: Vec<String> = (0..6).map(|i| format!("i{i}")).collect();
    let list: Vec<(&str, String)> = items.iter().map(|i| (i.as_str(), text("SLOW"))).collect();
    w.submit(&submission(pid, &list, json!({}))).await;
    // Killed at once: the first jobs may or may not have left the outbox.
    w.kill(first).await;
    let second = w.start_coordinator(&[]).await;
    wait_for("summarize mid-flight", T, || async {
        stub.requests_for("SLOW") >= 2
    })
    .await;
    assert_eq!(w.report(pid).await["state"], "running");
    w.kill(second).await;
    // Workers go on while no coordinator runs; their events wait in the broker.
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.start_coordinator(&[]).await;
    // Event batches a killed coordinator had fetched but not acked come back when the broker's
    // ack wait ends: at once on RabbitMQ (the connection closed), after the coordinator
    // consumers' `ack_wait` on NATS (`fleet_nats::topology::COORDINATOR_ACK_WAIT`, 30 s).
    let bound = match backend {
        Backend::Nats => Duration::from_secs(50),
        _ => T,
    };
    let restarted = std::time::Instant::now();
    w.wait_state(pid, "completed", bound).await;
    eprintln!("completed {:?} after the last restart", restarted.elapsed());
    // A few more sweeper ticks must not finalize again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = w.assert_final(pid, "completed").await;
    assert_eq!(r["stages"]["summarize"]["succeeded"], 6, "{r}");
    let refs: Vec<&str> = items.iter().map(String::as_str).collect();
    w.assert_rows(pid, &refs).await;
    w.wait_queues_empty(T).await;
    w.cleanup().await;
}

/// 7. A job stuck in a hanging LLM call while its worker keeps heartbeating is `no_progress`;
///    a job still queued when the pipeline's deadline passes is `overdue`; the pipeline then
///    ends `timed_out`, and a worker started later acks the expired job without running it.
async fn stuck_then_overdue_then_timed_out(backend: Backend) {
    let mut w = World::new(backend, "stuck").await;
    let stub = StubLlm::start().await;
    stub.rule("STUCK", Behavior::Hang);
    // The grace keeps the overdue job visible for a while before the pipeline is finalized
    // (8 s: a CI run on a loaded 2-core box missed a 4 s window once).
    w.start_coordinator(&["--stall-window=summarize=1s", "--deadline-grace=8s"])
        .await;
    w.start_analyzer().await;
    let flags = summarizer_flags(&w, &stub, "60s", true);
    w.start_summarizer(&flags).await;
    // No writer yet: item q gets through summarize and waits in `write` past the deadline.
    let pid = "stuck";
    // Long enough for q to reach `write` on a loaded machine before the deadline passes.
    let deadline = (chrono::Utc::now() + chrono::Duration::seconds(10)).to_rfc3339();
    w.submit(&submission(
        pid,
        &[("s", text("STUCK")), ("q", text("plain q"))],
        json!({"deadline_at": deadline, "stages": {"summarize": {"timeout_ms": 60_000}}}),
    ))
    .await;
    let stuck = w
        .wait_stall(pid, &job_id(pid, "s", "summarize"), "no_progress", T)
        .await;
    assert!(
        stuck["worker_id"].is_string(),
        "the worker is named: {stuck}"
    );
    w.wait_stall(pid, &job_id(pid, "q", "write"), "overdue", T)
        .await;
    w.wait_state(pid, "timed_out", T).await;
    // The queued write job is past its deadline: a writer acks it `expired`, writes nothing.
    w.start_writer().await;
    w.wait_queues_empty(T).await;
    let r = w.assert_final(pid, "timed_out").await;
    for id in ["s", "q"] {
        assert_ne!(item(&r, id)["state"], "succeeded", "{r}");
    }
    w.assert_rows(pid, &[]).await;
    assert_eq!(
        stub.requests_for("STUCK"),
        1,
        "the stuck call was not retried"
    );
    w.cleanup().await;
}

/// 8. An item exactly at the advertised limit (`GET /v1/limits`) goes through
///    analyze → summarize → write (the limit is what every stage can carry within
///    FLEET_MAX_MESSAGE_BYTES), and one byte more is refused at submission with a 413
///    that names the limit.
async fn item_exactly_at_the_limit(backend: Backend) {
    let mut w = World::new(backend, "limit").await;
    w.start_coordinator(&[]).await;
    w.start_analyzer().await;
    w.start_summarizer(&[]).await;
    w.start_writer().await;
    let (s, limits) = w.call("GET", "/v1/limits", None).await;
    assert_eq!(s, 200, "{limits}");
    let limit = limits["max_item_bytes"].as_u64().unwrap() as usize;
    let message = limits["max_message_bytes"].as_u64().unwrap() as usize;
    assert!(limit > message / 2 && limit < message, "{limits}");
    // Prose with paragraphs and quotes (escapes count toward the limit), padded to the byte.
    let escaped = |s: &str| serde_json::to_string(s).unwrap().len() - 2;
    let para = format!("{} \"Quoted\" words.\n\n", text("at-limit"));
    let mut big = String::with_capacity(limit);
    let mut size = 0;
    while size + escaped(&para) <= limit {
        big.push_str(&para);
        size += escaped(&para);
    }
    big.push_str(&"x".repeat(limit - size));
    assert_eq!(escaped(&big), limit);

    let (s, v) = w
        .call(
            "POST",
            "/v1/pipelines",
            Some(&submission(
                "over",
                &[("big", format!("{big}y"))],
                json!({}),
            )),
        )
        .await;
    assert_eq!(s, 413, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains(&limit.to_string()),
        "{v}"
    );

    let pid = "atlimit";
    w.submit(&submission(pid, &[("big", big)], json!({}))).await;
    w.wait_state(pid, "completed", T).await;
    w.assert_final(pid, "completed").await;
    w.assert_rows(pid, &["big"]).await;
    w.wait_queues_empty(T).await;
    w.cleanup().await;
}

macro_rules! on_both_brokers {
    ($($case:ident),* $(,)?) => {
        mod rabbitmq {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(Backend::Rabbit).await;
                }
            )*
        }
        mod nats {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(Backend::Nats).await;
                }
            )*
        }
    };
}

on_both_brokers!(
    worker_killed_mid_job,
    hanging_llm_without_fallback,
    no_consumer_until_a_worker_starts,
    broker_backstop_ends_the_item,
    cancelled_before_workers_start,
    coordinator_killed_mid_pipeline,
    stuck_then_overdue_then_timed_out,
    item_exactly_at_the_limit,
);
