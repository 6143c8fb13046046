//! The broker conformance suite: the same cases against `memory`, `rabbitmq` and
//! `nats` (real servers on loopback). Each case asserts an end state: every job
//! terminal, nothing lost, nothing left in the queue, in-flight back to zero.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use fleet_core::JobError;
use fleet_protocol::deadletter::headers;
use fleet_protocol::{DeadLetterReason, EventKind};
use fleet_runtime::{
    BatchHandler, Breaker, BreakerConfig, BreakerPolicy, JobContext, JobEnvelope, Output,
};
use fleet_test_support::{FaultProxy, wait_for};
use fleet_tests::env::is_succeeded;
use fleet_tests::{Backend, Env, Script, ScriptedHandler};
use serde_json::json;

const T: Duration = Duration::from_secs(30);

fn header<'a>(d: &'a fleet_core::Delivery, k: &str) -> &'a str {
    d.header(k)
        .unwrap_or_else(|| panic!("dead letter lacks header {k}: {:?}", d.headers))
}

async fn ack_after_success(b: Backend) {
    let env = Env::new(b, "ack").await;
    let script = Script::new();
    let w = env.start(ScriptedHandler(script.clone()), &[]).await;
    let mut jobs = Vec::new();
    for i in 0..5 {
        let mut j = env.job(&format!("i{i}"), json!({"mode": "ok"}));
        if i == 0 {
            j.route = vec![fleet_protocol::RouteStep {
                stage: "next".into(),
                required: true,
            }];
        }
        env.publish(&j).await;
        jobs.push(j);
    }
    for j in &jobs {
        assert!(is_succeeded(&env.terminal(&j.job_id, T).await));
    }
    env.wait_empty(T).await;
    w.stop().await.expect("clean exit");
    assert_eq!(script.total_calls(), 5, "each job ran once");
    assert_eq!(script.running.load(Ordering::SeqCst), 0);
    // The first job's output went to the next stage of its route.
    let next = env
        .control
        .depth(&fleet_core::Source::Jobs {
            stage: "next".into(),
        })
        .await
        .unwrap();
    assert_eq!(next, 1);
    env.cleanup().await;
}

async fn delayed_retry(b: Backend) {
    let env = Env::new(b, "retry").await;
    let script = Script::new();
    let w = env.start(ScriptedHandler(script.clone()), &[]).await;
    let j = env.job(
        "r",
        json!({"mode": "fail_until", "ok_at": 2, "retry_after_ms": 1000}),
    );
    let t0 = tokio::time::Instant::now();
    env.publish(&j).await;
    let end = env.terminal(&j.job_id, T).await;
    assert!(is_succeeded(&end));
    assert_eq!(end.attempt, 2, "the retry counts as an attempt");
    assert!(
        t0.elapsed() >= Duration::from_secs(1),
        "retry honoured its delay"
    );
    let retrying: Vec<_> = env
        .job_events(&j.job_id)
        .into_iter()
        .filter(|e| matches!(e.kind, EventKind::Retrying { .. }))
        .collect();
    assert_eq!(retrying.len(), 1);
    if let EventKind::Retrying { delay_ms, .. } = &retrying[0].kind {
        assert!(*delay_ms >= 1000, "RetryAfter is a minimum: {delay_ms}");
    }
    assert_eq!(script.attempts(&j.job_id), vec![1, 2]);
    env.wait_empty(T).await;
    w.stop().await.unwrap();
    env.cleanup().await;
}

async fn attempts_exhausted_to_dlq(b: Backend) {
    let env = Env::new(b, "exh").await;
    let script = Script::new();
    let w = env.start(ScriptedHandler(script.clone()), &[]).await;
    let j = env.job("x", json!({"mode": "fail"}));
    env.publish(&j).await;
    let end = env.terminal(&j.job_id, T).await;
    assert!(
        matches!(
            end.kind,
            EventKind::DeadLettered {
                reason: DeadLetterReason::AttemptsExhausted,
                ..
            }
        ),
        "{end:?}"
    );
    let dl = env.dead_letters(1, T).await;
    assert_eq!(
        dl[0].body.as_ref(),
        j.to_bytes().as_slice(),
        "original body intact"
    );
    assert_eq!(header(&dl[0], headers::REASON), "attempts_exhausted");
    assert_eq!(header(&dl[0], headers::LAST_ERROR_KIND), "handler_error");
    assert_eq!(header(&dl[0], headers::ATTEMPTS), "3");
    assert_eq!(header(&dl[0], headers::STAGE), "work");
    assert!(header(&dl[0], headers::LAST_ERROR).contains("scripted failure"));
    assert_eq!(script.attempts(&j.job_id), vec![1, 2, 3]);
    env.wait_empty(T).await;
    w.stop().await.unwrap();
    env.cleanup().await;
}

async fn permanent_to_dlq(b: Backend) {
    let env = Env::new(b, "perm").await;
    let script = Script::new();
    let w = env.start(ScriptedHandler(script.clone()), &[]).await;
    let j = env.job("p", json!({"mode": "permanent"}));
    env.publish(&j).await;
    let dl = env.dead_letters(1, T).await;
    assert_eq!(header(&dl[0], headers::REASON), "permanent_error");
    assert_eq!(header(&dl[0], headers::ATTEMPTS), "1");
    assert_eq!(script.attempts(&j.job_id), vec![1], "not retried");
    env.terminal(&j.job_id, T).await;
    env.wait_empty(T).await;
    w.stop().await.unwrap();
    env.cleanup().await;
}

async fn optional_stage_skips_forward(b: Backend) {
    let env = Env::new(b, "skip").await;
    let script = Script::new();
    let w = env.start(ScriptedHandler(script.clone()), &[]).await;
    let mut j = env.job("opt", json!({"mode": "permanent", "text": "kept"}));
    j.required = false;
    j.route = vec![fleet_protocol::RouteStep {
        stage: "after".into(),
        required: true,
    }];
    env.publish(&j).await;
    let dl = env.dead_letters(1, T).await;
    assert_eq!(header(&dl[0], headers::REASON), "permanent_error");
    // The item went on to the next stage with a skipped marker.
    let mut sub = env
        .control
        .subscribe(
            fleet_core::Source::Jobs {
                stage: "after".into(),
            },
            fleet_core::SubscribeOptions { prefetch: 4 },
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + T;
    while got.is_empty() && tokio::time::Instant::now() < deadline {
        got = sub.fetch(1, Duration::from_millis(500)).await.unwrap();
    }
    let got = got.pop().expect("the skipped item reached the next stage");
    let next: JobEnvelope = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(next.payload["text"], "kept");
    assert_eq!(next.payload["skipped_stages"][0]["stage"], "work");
    got.acker.ack().await.unwrap();
    w.stop().await.unwrap();
    env.cleanup().await;
}

async fn bad_bodies_to_dlq(b: Backend) {
    let env = Env::new(b, "bad").await;
    let script = Script::new();
    let w = env
        .start(
            ScriptedHandler(script.clone()),
            &["--max-message-bytes=2000"],
        )
        .await;
    let mut v2: serde_json::Value =
        serde_json::from_slice(&env.job("v", json!({})).to_bytes()).unwrap();
    v2["v"] = json!(2);
    let bodies = vec![
        b"not json at all".to_vec(),
        serde_json::to_vec(&v2).unwrap(),
        env.job("big", json!({"text": "x".repeat(5000)})).to_bytes(),
    ];
    for body in &bodies {
        env.publish_raw(body.clone()).await;
    }
    let dl = env.dead_letters(3, T).await;
    let mut reasons: Vec<_> = dl
        .iter()
        .map(|d| header(d, headers::REASON).to_owned())
        .collect();
    reasons.sort();
    assert_eq!(reasons, ["decode_error", "poison", "unsupported_version"]);
    for d in &dl {
        assert!(
            bodies.iter().any(|b| b.as_slice() == d.body.as_ref()),
            "body intact"
        );
    }
    assert_eq!(script.total_calls(), 0, "no handler ran");
    env.wait_empty(T).await;
    w.stop().await.unwrap();
    env.cleanup().await;
}

async fn hang_cut_at_deadline(b: Backend) {
    let env = Env::new(b, "hang").await;
    let script = Script::new();
    let w = env
        .start(ScriptedHandler(script.clone()), &["--concurrency=1"])
        .await;
    let mut j = env.job("h", json!({"mode": "hang"}));
    j.timeout_ms = 300;
    j.max_attempts = 2;
    env.publish(&j).await;
    // With one slot, this job can only run after the hanging one freed it.
    let ok = env.job("after", json!({"mode": "ok"}));
    env.publish(&ok).await;
    let end = env.terminal(&j.job_id, T).await;
    assert!(matches!(end.kind, EventKind::DeadLettered { .. }));
    let dl = env.dead_letters(1, T).await;
    assert_eq!(header(&dl[0], headers::LAST_ERROR_KIND), "timeout");
    assert!(is_succeeded(&env.terminal(&ok.job_id, T).await));
    wait_for("in-flight back to zero", T, || async {
        script.running.load(Ordering::SeqCst) == 0
    })
    .await;
    env.wait_empty(T).await;
    w.stop().await.unwrap();
    env.cleanup().await;
}

async fn panic_handler(b: Backend) {
    let env = Env::new(b, "panic").await;
    let script = Script::new();
    let w = env.start(ScriptedHandler(script.clone()), &[]).await;
    let mut j = env.job("boom", json!({"mode": "panic"}));
    j.max_attempts = 2;
    env.publish(&j).await;
    let dl = env.dead_letters(1, T).await;
    assert_eq!(header(&dl[0], headers::LAST_ERROR_KIND), "panic");
    assert_eq!(script.attempts(&j.job_id), vec![1, 2]);
    assert_eq!(script.running.load(Ordering::SeqCst), 0);
    // The worker survived its handler's panics.
    let ok = env.job("ok", json!({"mode": "ok"}));
    env.publish(&ok).await;
    assert!(is_succeeded(&env.terminal(&ok.job_id, T).await));
    w.stop().await.unwrap();
    env.cleanup().await;
}

async fn ignoring_cancellation_loses_slot(b: Backend) {
    let env = Env::new(b, "ign").await;
    let script = Script::new();
    let w = env
        .start(ScriptedHandler(script.clone()), &["--concurrency=1"])
        .await;
    for (item, mode) in [
        ("spin", json!({"mode": "ignore_cancel"})),
        ("cpu", json!({"mode": "blocking", "ms": 4000})),
        ("stuck", json!({"mode": "stuck_thread", "ms": 4000})),
    ] {
        let mut j = env.job(item, mode);
        j.timeout_ms = 300;
        j.max_attempts = 1;
        env.publish(&j).await;
    }
    let ok = env.job("ok", json!({"mode": "ok"}));
    env.publish(&ok).await;
    let t0 = tokio::time::Instant::now();
    // The blocking jobs still run on their threads, but their slots went back at the deadline
    // (the stuck one's from the shared deadline timer: its own task cannot see the stop).
    assert!(is_succeeded(&env.terminal(&ok.job_id, T).await));
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "the slot was released at the deadline, not when the work ended"
    );
    env.dead_letters(3, T).await;
    w.stop().await.unwrap();
    env.cleanup().await;
}

async fn long_job_keeps_lease(b: Backend) {
    let env = Env::new(b, "long").await;
    let script = Script::new();
    // ack wait 3s, job runs 7s inside its 20s timeout.
    let w = env.start(ScriptedHandler(script.clone()), &[]).await;
    let w2 = env.start(ScriptedHandler(script.clone()), &[]).await;
    let mut j = env.job("long", json!({"mode": "sleep", "ms": 7000}));
    j.timeout_ms = 20_000;
    env.publish(&j).await;
    assert!(is_succeeded(&env.terminal(&j.job_id, T).await));
    assert_eq!(
        script.attempts(&j.job_id),
        vec![1],
        "never redelivered while running"
    );
    env.wait_empty(T).await;
    w.stop().await.unwrap();
    w2.stop().await.unwrap();
    env.cleanup().await;
}

async fn killed_worker_redelivered(b: Backend) {
    let env = Env::new(b, "kill").await;
    let script = Script::new();
    let a = env.start(ScriptedHandler(script.clone()), &[]).await;
    let mut j = env.job("k", json!({"mode": "sleep", "ms": 60000}));
    j.timeout_ms = 120_000;
    env.publish(&j).await;
    wait_for("the job to start on worker A", T, || async {
        script.running.load(Ordering::SeqCst) == 1
    })
    .await;
    a.kill().await;
    // Worker B picks it up once the broker notices (connection close or ack wait).
    let fast = Script::new();
    let b2 = env.start(ScriptedHandler(fast.clone()), &[]).await;
    // B's copy runs quickly: rewrite mode is not possible (body immutable), so B's script
    // sleeps too; we only wait for B to receive it with a higher attempt.
    let attempts = wait_for("redelivery to worker B", T, || async {
        let a = fast.attempts(&j.job_id);
        (!a.is_empty()).then_some(a)
    })
    .await;
    assert!(
        attempts[0] >= 2,
        "a lost worker's delivery counts as an attempt: {attempts:?}"
    );
    b2.kill().await;
    env.cleanup().await;
}

async fn poison_kills_every_worker(b: Backend) {
    let env = Env::new(b, "poison").await;
    let mut j = env.job("poison", json!({"mode": "sleep", "ms": 60000}));
    j.timeout_ms = 120_000;
    j.max_attempts = 2;
    env.publish(&j).await;
    // Each delivery "kills" its worker; after 2 attempts the third delivery is dead-lettered
    // before running.
    for round in 0..3 {
        let script = Script::new();
        let w = env.start(ScriptedHandler(script.clone()), &[]).await;
        let got = wait_for("a delivery or a dead letter", T, || async {
            if script.running.load(Ordering::SeqCst) == 1 {
                Some(true)
            } else if env
                .job_events(&j.job_id)
                .iter()
                .any(|e| e.kind.is_terminal())
            {
                Some(false)
            } else {
                None
            }
        })
        .await;
        w.kill().await;
        if !got {
            assert_eq!(round, 2, "dead-lettered after exactly two attempts");
            break;
        }
    }
    let end = env.terminal(&j.job_id, T).await;
    assert!(
        matches!(end.kind, EventKind::DeadLettered { .. }),
        "{end:?}"
    );
    let dl = env.dead_letters(1, T).await;
    let reason = header(&dl[0], headers::REASON);
    assert!(
        reason == "poison" || reason == "attempts_exhausted",
        "{reason}"
    );
    assert_eq!(header(&dl[0], headers::LAST_ERROR_KIND), "lost");
    env.cleanup().await;
}

async fn expired_and_cancelled_acked(b: Backend) {
    let env = Env::new(b, "expc").await;
    let script = Script::new();
    let mut expired = env.job("old", json!({"mode": "ok"}));
    expired.deadline_at = Some(chrono::Utc::now() - chrono::Duration::seconds(5));
    env.publish(&expired).await;
    let mut cancelled = JobEnvelope::new(
        &format!("{}-cancelled", env.prefix),
        "c",
        fleet_tests::env::STAGE,
        json!({"mode": "sleep", "ms": 60000}),
    );
    cancelled.max_attempts = 3;
    cancelled.timeout_ms = 120_000;
    let cancel = fleet_core::OutMessage::new(
        fleet_core::Destination::Control {
            pipeline_id: cancelled.pipeline_id.clone(),
        },
        serde_json::to_vec(&json!({"pipeline_id": cancelled.pipeline_id})).unwrap(),
    );
    env.control.publish(cancel.clone()).await.unwrap();
    // The worker starts after the cancellation and must still drop the job: NATS replays the
    // kept cancellation; on RabbitMQ the coordinator re-broadcasts it every tick (done here).
    let w = env.start(ScriptedHandler(script.clone()), &[]).await;
    let control = env.control.clone();
    let rebroadcast = tokio::spawn(async move {
        loop {
            let _ = control.publish(cancel.clone()).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    env.publish(&cancelled).await;
    assert_eq!(
        env.terminal(&expired.job_id, T).await.kind,
        EventKind::Expired
    );
    // Dropped before running, or cancelled while running: either way acked as cancelled.
    assert_eq!(
        env.terminal(&cancelled.job_id, T).await.kind,
        EventKind::Cancelled
    );
    rebroadcast.abort();
    env.wait_empty(T).await;
    assert!(
        script.attempts(&expired.job_id).is_empty(),
        "an expired job never runs"
    );
    env.dead_letters(0, Duration::from_millis(500)).await;
    w.stop().await.unwrap();
    env.cleanup().await;
}

/// A pipeline id used again later (e.g. by a coordinator on a fresh database) is not hit by the
/// kept cancellation of its earlier life: cancellations are scoped to the pipeline's creation
/// time. A job of the earlier life is still cancelled.
async fn reused_pipeline_id_not_cancelled(b: Backend) {
    let env = Env::new(b, "reuse").await;
    let script = Script::new();
    let pid = format!("{}-reused", env.prefix);
    let old = chrono::DateTime::from_timestamp_millis(1_700_000_000_000).unwrap();
    let new = old + chrono::Duration::days(1);
    let job = |item: &str, born, payload| {
        let mut j = JobEnvelope::new(&pid, item, fleet_tests::env::STAGE, payload);
        j.pipeline_created_at = Some(born);
        j.max_attempts = 3;
        j.timeout_ms = 120_000;
        j
    };
    let cancel = fleet_core::OutMessage::new(
        fleet_core::Destination::Control {
            pipeline_id: pid.clone(),
        },
        fleet_protocol::control::cancellation(&pid, Some(old)),
    );
    env.control.publish(cancel.clone()).await.unwrap();
    let w = env.start(ScriptedHandler(script.clone()), &[]).await;
    let control = env.control.clone();
    let rebroadcast = tokio::spawn(async move {
        loop {
            let _ = control.publish(cancel.clone()).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let fresh = job("fresh", new, json!({"mode": "ok"}));
    let stale = job("stale", old, json!({"mode": "sleep", "ms": 60000}));
    env.publish(&fresh).await;
    env.publish(&stale).await;
    let end = env.terminal(&fresh.job_id, T).await;
    assert!(is_succeeded(&end), "the new life of the id runs: {end:?}");
    assert_eq!(script.attempts(&fresh.job_id).len(), 1);
    assert_eq!(
        env.terminal(&stale.job_id, T).await.kind,
        EventKind::Cancelled,
        "the cancelled life of the id is still cancelled"
    );
    rebroadcast.abort();
    env.wait_empty(T).await;
    w.stop().await.unwrap();
    env.cleanup().await;
}

async fn breaker_pause_holds(b: Backend) {
    let env = Env::new(b, "pause").await;
    let script = Script::new();
    script.dependency_down.store(true, Ordering::SeqCst);
    let breaker = Arc::new(Breaker::new(
        "dep",
        BreakerPolicy::Pause,
        BreakerConfig {
            failure_threshold: 1,
            open_for: Duration::from_millis(500),
            half_open_probes: 1,
        },
    ));
    let w = env
        .start_paused(
            ScriptedHandler(script.clone()),
            &["--max-attempts=2"],
            breaker.clone(),
        )
        .await;
    let jobs: Vec<_> = (0..3)
        .map(|i| env.job(&format!("d{i}"), json!({"mode": "dependency"})))
        .collect();
    for j in &jobs {
        env.publish(j).await;
    }
    wait_for("the breaker to open", T, || async {
        breaker.state() != fleet_runtime::BreakerState::Closed
    })
    .await;
    // While the dependency is down, probes keep failing but no attempt is burned.
    tokio::time::sleep(Duration::from_secs(2)).await;
    script.dependency_down.store(false, Ordering::SeqCst);
    for j in &jobs {
        let end = env.terminal(&j.job_id, T).await;
        assert!(is_succeeded(&end), "{end:?}");
        assert_eq!(end.attempt, 1, "held deliveries do not burn attempts");
    }
    assert_eq!(breaker.state(), fleet_runtime::BreakerState::Closed);
    env.wait_empty(T).await;
    env.dead_letters(0, Duration::from_millis(500)).await;
    w.stop().await.unwrap();
    env.cleanup().await;
}

/// Commits batches into a shared set after a delay; records each commit.
struct SlowCommit {
    committed: Arc<std::sync::Mutex<Vec<String>>>,
    script: Arc<Script>,
}

#[async_trait]
impl BatchHandler for SlowCommit {
    async fn handle_batch(
        &self,
        jobs: &[JobEnvelope],
        _ctx: &JobContext,
    ) -> Vec<Result<Output, JobError>> {
        self.script.running.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut c = self.committed.lock().unwrap();
        for j in jobs {
            if !c.contains(&j.job_id) {
                c.push(j.job_id.clone());
            }
        }
        self.script.running.fetch_sub(1, Ordering::SeqCst);
        jobs.iter().map(|_| Ok(Output::default())).collect()
    }
}

async fn batch_acks_after_commit(b: Backend) {
    let env = Env::new(b, "batch").await;
    let committed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let jobs: Vec<_> = (0..6)
        .map(|i| env.job(&format!("b{i}"), json!({})))
        .collect();
    for j in &jobs {
        env.publish(j).await;
    }
    // Worker A takes a batch and is killed before its commit returns: nothing was acked.
    let script = Script::new();
    let h = SlowCommit {
        committed: Arc::new(std::sync::Mutex::new(Vec::new())),
        script: script.clone(),
    };
    let a = env
        .start_with(&["--prefetch=8"], None, |w, s| async move {
            w.run_batch(h, 4, Duration::from_millis(200), s).await
        })
        .await;
    wait_for("worker A to be inside a batch", T, || async {
        script.running.load(Ordering::SeqCst) == 1
    })
    .await;
    a.kill().await;
    let h = SlowCommit {
        committed: committed.clone(),
        script: Script::new(),
    };
    let w = env
        .start_with(&["--prefetch=8"], None, |w, s| async move {
            w.run_batch(h, 4, Duration::from_millis(200), s).await
        })
        .await;
    for j in &jobs {
        assert!(is_succeeded(&env.terminal(&j.job_id, T).await));
    }
    env.wait_empty(T).await;
    assert_eq!(
        committed.lock().unwrap().len(),
        6,
        "every job committed exactly once by B"
    );
    w.stop().await.unwrap();
    env.cleanup().await;
}

async fn drain_loses_nothing(b: Backend) {
    let env = Env::new(b, "drain").await;
    let script = Script::new();
    let w = env
        .start(
            ScriptedHandler(script.clone()),
            &["--concurrency=2", "--drain-deadline=1s"],
        )
        .await;
    let jobs: Vec<_> = (0..6)
        .map(|i| env.job(&format!("s{i}"), json!({"mode": "sleep", "ms": 2500})))
        .collect();
    for j in &jobs {
        env.publish(j).await;
    }
    wait_for("two jobs running", T, || async {
        script.running.load(Ordering::SeqCst) == 2
    })
    .await;
    w.stop().await.expect("drain exits cleanly");
    assert_eq!(script.running.load(Ordering::SeqCst), 0);
    let w2 = env
        .start(ScriptedHandler(script.clone()), &["--concurrency=6"])
        .await;
    for j in &jobs {
        assert!(is_succeeded(&env.terminal(&j.job_id, T).await));
    }
    env.wait_empty(T).await;
    env.dead_letters(0, Duration::from_millis(500)).await;
    // Issue 9: a job returned at the drain deadline never had its full chance, so its next
    // delivery is the same attempt (RabbitMQ used to say 3, NATS 2).
    for j in &jobs {
        let attempts = script.attempts(&j.job_id);
        assert!(
            attempts.iter().all(|a| *a == 1),
            "{}: a drain must cost no attempt, ran as {attempts:?}",
            j.job_id
        );
        assert_eq!(env.terminal(&j.job_id, T).await.attempt, 1);
    }
    let released = jobs
        .iter()
        .filter(|j| script.attempts(&j.job_id).len() == 2)
        .count();
    assert_eq!(
        released, 2,
        "the two running jobs were released and ran again"
    );
    w2.stop().await.unwrap();
    env.cleanup().await;
}

/// Issue 8: a control message that keeps failing is redelivered after a backoff (never an
/// immediate requeue that spins), then parked with where it came from, and can be replayed.
async fn control_retry_backs_off_then_parks(b: Backend) {
    use fleet_core::{Destination, OutMessage, ParkInfo, Source, SubscribeOptions};
    use fleet_protocol::deadletter::headers as h;
    const PARK_AT: u32 = 3;
    let env = Env::new(b, "park").await;
    let broker = env.connect().await;
    let mut msg = OutMessage::new(Destination::Submit, "a submission that cannot be stored");
    msg.headers = vec![("kept".into(), "yes".into())];
    broker.publish(msg).await.unwrap();
    let mut sub = broker
        .subscribe(Source::Submit, SubscribeOptions { prefetch: 4 })
        .await
        .unwrap();
    let t0 = tokio::time::Instant::now();
    let mut seen = Vec::new();
    while seen.len() < PARK_AT as usize && t0.elapsed() < T {
        for d in sub.fetch(4, Duration::from_millis(200)).await.unwrap() {
            seen.push((t0.elapsed(), d.attempt));
            if d.attempt >= PARK_AT {
                let info = ParkInfo {
                    reason: "attempts_exhausted".into(),
                    error: "database down".into(),
                    attempts: d.attempt,
                };
                d.acker.park(&info).await.unwrap();
            } else {
                d.acker.retry(Duration::from_secs(1)).await.unwrap();
            }
        }
    }
    let attempts: Vec<u32> = seen.iter().map(|(_, a)| *a).collect();
    assert_eq!(attempts, [1, 2, 3], "one delivery per attempt: {seen:?}");
    for pair in seen.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            gap >= Duration::from_millis(900),
            "redelivered after {gap:?}: {seen:?}"
        );
    }
    // Nothing spins meanwhile: no further delivery once parked.
    assert!(
        sub.fetch(4, Duration::from_millis(1500))
            .await
            .unwrap()
            .is_empty()
    );
    wait_for("the message to be parked", T, || async {
        broker.parked().await.unwrap() == 1
    })
    .await;
    assert_eq!(broker.depth(&Source::Submit).await.unwrap(), 0);
    assert_eq!(broker.replay_parked(100).await.unwrap(), 1);
    assert_eq!(broker.parked().await.unwrap(), 0);
    let mut back = Vec::new();
    let t1 = tokio::time::Instant::now();
    while back.is_empty() && t1.elapsed() < T {
        back = sub.fetch(4, Duration::from_millis(500)).await.unwrap();
    }
    assert_eq!(back.len(), 1, "the replayed message is back in its queue");
    let d = back.pop().unwrap();
    assert_eq!(d.attempt, 1, "a replay starts afresh");
    assert_eq!(d.header("kept"), Some("yes"));
    assert_eq!(d.header(h::PARKED_FROM), None);
    assert_eq!(&d.body[..], b"a submission that cannot be stored");
    d.acker.ack().await.unwrap();
    drop(sub);
    broker.close().await;
    env.cleanup().await;
}

async fn reconnect_after_cut(b: Backend) {
    let mut env = Env::new(b, "cut").await;
    let proxy = match b {
        Backend::Memory => None,
        _ => {
            let upstream = fleet_test_support::url_addr(&env.url).unwrap();
            let p = FaultProxy::start(upstream).await.unwrap();
            env.url = fleet_test_support::url_with_addr(&env.url, p.addr()).unwrap();
            Some(p)
        }
    };
    let script = Script::new();
    let w = env.start(ScriptedHandler(script.clone()), &[]).await;
    let mut first = env.job("during", json!({"mode": "sleep", "ms": 1500}));
    first.timeout_ms = 10_000;
    env.publish(&first).await;
    wait_for("the job to start", T, || async {
        script.running.load(Ordering::SeqCst) == 1
    })
    .await;
    // Cut the connection under a running job: its terminal event and ack cannot go out,
    // so it must come back (never acked without its event, never lost).
    match (&proxy, env.memory()) {
        (Some(p), _) => {
            p.set_refuse(true);
            p.cut();
        }
        (None, Some(m)) => m.set_connected(false),
        _ => unreachable!(),
    }
    wait_for("the worker to notice", T, || async { !w.health.is_ready() }).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    match (&proxy, env.memory()) {
        (Some(p), _) => p.set_refuse(false),
        (None, Some(m)) => m.set_connected(true),
        _ => unreachable!(),
    }
    let later = env.job("after", json!({"mode": "ok"}));
    env.publish(&later).await;
    assert!(is_succeeded(&env.terminal(&later.job_id, T).await));
    assert!(is_succeeded(
        &env.terminal(&first.job_id, Duration::from_secs(60)).await
    ));
    wait_for("ready again", T, || async { w.health.is_ready() }).await;
    env.wait_empty(Duration::from_secs(60)).await;
    w.stop().await.unwrap();
    env.cleanup().await;
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod memory { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $case() { super::$case(fleet_tests::Backend::Memory).await } )* }
        mod rabbitmq { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $case() { super::$case(fleet_tests::Backend::Rabbit).await } )* }
        mod nats { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $case() { super::$case(fleet_tests::Backend::Nats).await } )* }
    };
}

conformance!(
    ack_after_success,
    delayed_retry,
    attempts_exhausted_to_dlq,
    permanent_to_dlq,
    bad_bodies_to_dlq,
    optional_stage_skips_forward,
    hang_cut_at_deadline,
    panic_handler,
    ignoring_cancellation_loses_slot,
    long_job_keeps_lease,
    killed_worker_redelivered,
    poison_kills_every_worker,
    expired_and_cancelled_acked,
    reused_pipeline_id_not_cancelled,
    breaker_pause_holds,
    batch_acks_after_commit,
    drain_loses_nothing,
    control_retry_backs_off_then_parks,
    reconnect_after_cut,
);
