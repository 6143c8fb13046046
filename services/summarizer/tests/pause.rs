//! The summarizer without its extractive fallback when its provider is down: intake
//! pauses instead of burning attempts (DESIGN §6), and the measurement behind that.

mod stub;
mod world;

use std::time::Duration;

use fleet_protocol::EventKind;
use fleet_runtime::BreakerState;
use fleet_test_support::wait_for;
use stub::{Reply, Stub};
use tokio::time::Instant;
use world::{TEXT, World, provider, summary};

/// The only provider is down and there is no extractive fallback: the worker pauses intake
/// and holds its jobs (no attempt burned, nothing retried or dead-lettered, `/readyz` 503
/// with the reason, `fleet_intake_paused` 1) until a timer-driven probe succeeds; then
/// everything completes on its first attempt.
#[tokio::test]
async fn a_down_provider_without_fallback_pauses_intake_and_burns_no_attempts() {
    let s = Stub::start(Reply::Status(503, None)).await;
    let p = provider("only", &s, |p| {
        p.breaker_failures = 1;
        p.breaker_open_for = Duration::from_millis(700);
    });
    let mut w = World::start_with(vec![p], 2, false, true).await;
    let jobs = 6;
    for i in 0..jobs {
        w.submit(&format!("down{i}"), TEXT, 20_000).await;
    }
    let breaker = w.provider(0).breaker().clone();
    wait_for("the breaker to open", Duration::from_secs(10), || async {
        breaker.state() != BreakerState::Closed
    })
    .await;
    let (code, body) = w.readyz().await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("intake paused") && body.contains("llm:only"),
        "{body}"
    );
    assert!(
        w.metrics()
            .await
            .contains("fleet_intake_paused{stage=\"summarize\"} 1"),
        "{}",
        w.metrics().await
    );
    // Heartbeats tell the coordinator why this worker takes nothing.
    let until = Instant::now() + Duration::from_secs(5);
    let paused_beat = |w: &World| {
        w.seen_heartbeats
            .iter()
            .any(|h| h.paused.as_deref().is_some_and(|p| p.contains("llm:only")))
    };
    while !paused_beat(&w) && Instant::now() < until {
        w.pump_events().await;
    }
    assert!(paused_beat(&w), "{:?}", w.seen_heartbeats);
    // Down for a while: several timer-driven probes fail, nothing is retried.
    let down_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < down_until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(w.dead_letters().await, 0);
    }
    let probes = s.requests();
    assert!(
        (2..=8).contains(&probes),
        "about one request per probe time, not one per job attempt: {probes}"
    );
    // Back up: the next probe closes the breaker and every job completes.
    s.set_default(Reply::Answer("Up again.".into()));
    let mut done = std::collections::HashSet::new();
    while done.len() < jobs {
        let out = w.next_output(Duration::from_secs(10)).await;
        assert_eq!(summary(&out)["provider"], "only");
        assert!(
            done.insert(out.item_id.clone()),
            "duplicate {}",
            out.item_id
        );
    }
    assert_eq!(breaker.state(), BreakerState::Closed);
    wait_for("/readyz 200", Duration::from_secs(5), || async {
        w.readyz().await.0 == 200
    })
    .await;
    assert!(
        w.metrics()
            .await
            .contains("fleet_intake_paused{stage=\"summarize\"} 0")
    );
    assert_eq!(w.dead_letters().await, 0);
    let until = Instant::now() + Duration::from_secs(5);
    let succeeded = |w: &World| {
        w.seen_events
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Succeeded))
            .count()
    };
    while succeeded(&w) < jobs && Instant::now() < until {
        w.pump_events().await;
    }
    assert_eq!(succeeded(&w), jobs, "{:?}", w.seen_events);
    let retried = w
        .seen_events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Retrying { .. }))
        .count();
    assert_eq!(retried, 0, "no attempt was burned: {:?}", w.seen_events);
    assert!(
        w.seen_events.iter().all(|e| e.attempt == 1),
        "every job ran on its first attempt"
    );
    w.stop().await;
}

/// The measurement, checked: 20 jobs, the only provider down for 10 s (the scenario's
/// length, not a synchronization), no extractive fallback, default breaker (5 failures, here
/// 3 s open): attempts burned with and without the pause gate, on memory, RabbitMQ and NATS
/// (about 70 s; `--no-capture` prints the figures). Without the gate jobs are dead-lettered;
/// with it none is, and only the failures that open the breaker become retries.
#[tokio::test]
async fn measure_attempts_burned_while_the_provider_is_down() {
    let urls = [
        "memory://".to_owned(),
        fleet_test_support::amqp_url(),
        fleet_test_support::nats_url(),
    ];
    for (url, gate) in urls.iter().flat_map(|u| [(u, false), (u, true)]) {
        let s = Stub::start(Reply::Status(503, None)).await;
        let p = provider("only", &s, |p| {
            p.breaker_open_for = Duration::from_secs(3);
        });
        let mut w = World::start_on(url, vec![p], 4, false, gate).await;
        for i in 0..20 {
            w.submit(&format!("m{i}"), TEXT, 20_000).await;
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
        w.pump_events().await;
        let retrying = w
            .seen_events
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Retrying { .. }))
            .count();
        let dead = w.dead_letters().await;
        let requests = s.requests();
        eprintln!(
            "MEASURE {} gate={gate}: 20 jobs, provider down 10 s: retrying events {retrying}, dead-lettered {dead}, provider requests {requests}",
            url.split("://").next().unwrap_or_default()
        );
        if gate {
            assert_eq!(dead, 0, "{url}: the pause gate dead-letters nothing");
            assert!(
                retrying <= 5,
                "{url}: only the breaker's threshold retries ({retrying})"
            );
        } else {
            assert!(
                dead > 0,
                "{url}: without the gate the outage burns every attempt"
            );
        }
        w.stop().await;
    }
}
