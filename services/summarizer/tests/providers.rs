//! The summarizer's handler through a real Worker on the memory broker
//! against a scripted stub LLM server on loopback: answers (JSON and SSE),
//! hangs, stalls, errors, 429s, malformed bodies; the breaker's life cycle;
//! fallback marking; map-reduce of long items with progress.

mod stub;
mod world;

use std::time::Duration;

use fleet_protocol::EventKind;
use fleet_runtime::BreakerState;
use fleet_test_support::wait_for;
use stub::{Reply, Stub};
use tokio::time::Instant;
use world::{TEXT, World, provider, summary};

#[tokio::test]
async fn answers_json_and_sse_and_keeps_the_payload() {
    let s = Stub::start(Reply::Answer("A short JSON summary.".into())).await;
    s.script([Reply::Stream("A streamed summary of the item.".into())]);
    let mut w = World::start(vec![provider("stub", &s, |_| {})], 4).await;
    let mut job = w.job(
        "i1",
        serde_json::json!({"text": TEXT, "metadata": {"k": 1}, "analysis": {"language": "en"},
                           "skipped_stages": [{"stage": "analyze", "reason": "x", "error": "y"}]}),
        10_000,
    );
    w.publish(&job).await;
    let first = w.next_output(Duration::from_secs(10)).await;
    assert_eq!(first.stage, "write");
    assert_eq!(summary(&first)["provider"], "stub");
    assert_eq!(summary(&first)["fallback"], false);
    assert_eq!(w.succeeded(&job.job_id).await.degraded, None);
    assert_eq!(summary(&first)["text"], "A streamed summary of the item.");
    assert_eq!(first.payload["metadata"]["k"], 1);
    assert_eq!(first.payload["analysis"]["language"], "en");
    assert_eq!(first.payload["skipped_stages"][0]["stage"], "analyze");
    job.item_id = "i2".into();
    job.job_id = format!("{}/i2/summarize", job.pipeline_id);
    w.publish(&job).await;
    let second = w.next_output(Duration::from_secs(10)).await;
    assert_eq!(summary(&second)["text"], "A short JSON summary.");
    // The request is a streamed chat completion with the configured model.
    let body = &s.bodies()[0];
    assert_eq!(body["model"], "stub-model");
    assert_eq!(body["stream"], true);
    assert!(
        body["messages"][1]["content"]
            .as_str()
            .is_some_and(|c| c.contains("Message queues"))
    );
    w.stop().await;
}

#[tokio::test]
async fn hanging_provider_costs_at_most_its_timeout_and_frees_its_slot() {
    let s = Stub::start(Reply::Hang).await;
    let p = provider("hang", &s, |p| {
        p.request_timeout = Duration::from_secs(1);
        p.max_concurrency = 1;
        p.breaker_failures = 100;
    });
    let mut w = World::start(vec![p], 4).await;
    let started = Instant::now();
    for i in 0..3 {
        w.submit(&format!("h{i}"), TEXT, 15_000).await;
    }
    for _ in 0..3 {
        let out = w.next_output(Duration::from_secs(10)).await;
        assert_eq!(summary(&out)["provider"], "extractive");
        assert_eq!(summary(&out)["fallback"], true);
        let reason = summary(&out)["fallback_reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(reason.contains("hang: timed out"), "{reason}");
        assert!(
            !summary(&out)["text"]
                .as_str()
                .unwrap_or_default()
                .is_empty()
        );
    }
    // One slot, three jobs, one second each at most (plus scheduling slack).
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(w.provider(0).in_flight(), 0);
    assert_eq!(w.provider(0).free_slots(), 1);
    // The slot is usable again: another job completes through the provider.
    s.set_default(Reply::Answer("Recovered.".into()));
    w.submit("h-after", TEXT, 15_000).await;
    let out = w.next_output(Duration::from_secs(10)).await;
    assert_eq!(summary(&out)["provider"], "hang");
    assert_eq!(summary(&out)["fallback"], false);
    w.stop().await;
}

#[tokio::test]
async fn a_hang_is_cut_before_the_job_deadline_and_falls_back() {
    let s = Stub::start(Reply::Hang).await;
    let p = provider("slow", &s, |p| p.request_timeout = Duration::from_secs(120));
    let mut w = World::start(vec![p], 2).await;
    let started = Instant::now();
    w.submit("d1", TEXT, 2_000).await;
    let out = w.next_output(Duration::from_secs(10)).await;
    // The provider gave up before the 2 s deadline, leaving time for the extractive fallback.
    assert!(
        started.elapsed() < Duration::from_millis(2_500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(summary(&out)["provider"], "extractive");
    assert_eq!(summary(&out)["fallback"], true);
    assert_eq!(w.provider(0).in_flight(), 0);
    // The success is marked degraded, so the coordinator counts the item.
    let done = w
        .succeeded(&format!("{}/d1/summarize", out.pipeline_id))
        .await;
    let note = done.degraded.expect("a fallback summary is degraded");
    assert_eq!(note.kind, fleet_protocol::DegradationKind::SummaryFallback);
    assert_eq!(note.detail, "extractive");
    w.stop().await;
}

#[tokio::test]
async fn breaker_opens_half_opens_and_closes() {
    let s = Stub::start(Reply::Status(500, None)).await;
    let p = provider("flaky", &s, |p| {
        p.breaker_failures = 2;
        p.breaker_open_for = Duration::from_millis(1500);
    });
    let mut w = World::start(vec![p], 1).await;
    for i in 0..2 {
        w.submit(&format!("b{i}"), TEXT, 10_000).await;
        let out = w.next_output(Duration::from_secs(10)).await;
        assert_eq!(summary(&out)["provider"], "extractive");
        assert!(
            summary(&out)["fallback_reason"]
                .as_str()
                .unwrap_or_default()
                .contains("HTTP 500")
        );
    }
    let breaker = w.provider(0).breaker().clone();
    assert_eq!(breaker.state(), BreakerState::Open);
    assert_eq!(s.requests(), 2);
    // While open the provider is routed around without a request.
    w.submit("b-open", TEXT, 10_000).await;
    let out = w.next_output(Duration::from_secs(10)).await;
    assert_eq!(summary(&out)["provider"], "extractive");
    assert_eq!(summary(&out)["fallback"], true);
    assert!(
        summary(&out)["fallback_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("circuit breaker open")
    );
    assert_eq!(s.requests(), 2);
    // The timer half-opens it; one successful probe closes it.
    s.set_default(Reply::Answer("Back again.".into()));
    wait_for(
        "the breaker to half-open",
        Duration::from_secs(5),
        || async { breaker.state() == BreakerState::HalfOpen },
    )
    .await;
    w.submit("b-probe", TEXT, 10_000).await;
    let out = w.next_output(Duration::from_secs(10)).await;
    assert_eq!(summary(&out)["provider"], "flaky");
    assert_eq!(breaker.state(), BreakerState::Closed);
    // All of it is visible on /metrics.
    let metrics = w.metrics().await;
    let sample = |name: &str, labels: &[&str]| {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|x| l.contains(x)))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    let requests = "fleet_llm_requests_total";
    assert_eq!(
        sample(requests, &["provider=\"flaky\"", "outcome=\"error\""]),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            requests,
            &["provider=\"flaky\"", "outcome=\"breaker_open\""]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(requests, &["provider=\"flaky\"", "outcome=\"ok\""]),
        Some(1.0)
    );
    assert_eq!(
        sample("fleet_circuit_state", &["dependency=\"llm:flaky\""]),
        Some(0.0)
    );
    assert!(
        metrics.contains("fleet_llm_request_duration_seconds_count{provider=\"flaky\"} 3"),
        "{metrics}"
    );
    w.stop().await;
}

#[tokio::test]
async fn fallback_chain_over_malformed_and_stalled_providers() {
    let a = Stub::start(Reply::Malformed).await;
    let b = Stub::start(Reply::StallMidStream).await;
    let pa = provider("first", &a, |_| {});
    let pb = provider("second", &b, |p| {
        p.idle_read_timeout = Duration::from_millis(300)
    });
    let mut w = World::start(vec![pa, pb], 2).await;
    w.submit("f1", TEXT, 10_000).await;
    let out = w.next_output(Duration::from_secs(10)).await;
    assert_eq!(summary(&out)["provider"], "extractive");
    assert_eq!(summary(&out)["fallback"], true);
    let reason = summary(&out)["fallback_reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(reason.contains("first: malformed"), "{reason}");
    assert!(
        reason.contains("second: timed out: stream stalled"),
        "{reason}"
    );
    // The first fails, the second answers: its summary is a marked fallback.
    a.set_default(Reply::Status(503, None));
    b.set_default(Reply::Stream("Second provider summary.".into()));
    w.submit("f2", TEXT, 10_000).await;
    let out = w.next_output(Duration::from_secs(10)).await;
    assert_eq!(summary(&out)["provider"], "second");
    assert_eq!(summary(&out)["fallback"], true);
    assert_eq!(summary(&out)["text"], "Second provider summary.");
    assert_eq!(w.provider(1).in_flight(), 0);
    w.stop().await;
}

#[tokio::test]
async fn rate_limit_on_the_last_provider_retries_after_the_delay() {
    let s = Stub::start(Reply::Answer("After the rate limit.".into())).await;
    s.script([Reply::Status(429, Some(1))]);
    let mut w = World::start(vec![provider("limited", &s, |_| {})], 2).await;
    let started = Instant::now();
    let job = w.submit("r1", TEXT, 10_000).await;
    let out = w.next_output(Duration::from_secs(15)).await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(summary(&out)["provider"], "limited");
    assert_eq!(summary(&out)["fallback"], false);
    assert_eq!(s.requests(), 2);
    w.pump_events().await;
    let retried = w
        .seen_events
        .iter()
        .any(|e| e.job_id == job.job_id && matches!(e.kind, EventKind::Retrying { .. }));
    assert!(retried, "a retrying event for the 429");
    w.stop().await;
}

#[tokio::test]
async fn long_items_are_mapped_and_reduced_with_progress_and_routed_by_length() {
    let s = Stub::start(Reply::Answer("Partial summary.".into())).await;
    let big = Stub::start(Reply::Answer("Should not be asked.".into())).await;
    let small = provider("small", &big, |p| p.max_input_chars = Some(100));
    let wide = provider("wide", &s, |_| {});
    let mut w = World::start(vec![small, wide], 2).await;
    let chunks: Vec<serde_json::Value> = (0..3)
        .map(|i| serde_json::json!({"index": i, "start": 0, "end": 0, "text": format!("Chunk {i} text. {TEXT}")}))
        .collect();
    let text = format!("{TEXT}\n\n{TEXT}\n\n{TEXT}");
    let job = w.job(
        "m1",
        serde_json::json!({"text": text, "analysis": {"chunks": chunks}}),
        10_000,
    );
    w.publish(&job).await;
    let out = w.next_output(Duration::from_secs(10)).await;
    assert_eq!(summary(&out)["provider"], "wide");
    assert_eq!(summary(&out)["chunks"], 3);
    // Routing by length is not a failure: no fallback, but the reason is recorded.
    assert_eq!(summary(&out)["fallback"], false);
    assert!(
        summary(&out)["fallback_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("max_input_chars")
    );
    assert_eq!(big.requests(), 0);
    assert_eq!(s.requests(), 4, "three map calls and one reduce");
    let reduce = &s.bodies()[3]["messages"][1]["content"];
    assert!(
        reduce
            .as_str()
            .is_some_and(|c| c.matches("Partial summary.").count() == 3),
        "{reduce}"
    );
    let until = Instant::now() + Duration::from_secs(5);
    let progress = loop {
        w.pump_events().await;
        let n = w
            .seen_events
            .iter()
            .filter(|e| e.job_id == job.job_id && matches!(e.kind, EventKind::Progress { .. }))
            .count();
        if n >= 4 || Instant::now() >= until {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        progress >= 4,
        "one progress event per chunk and one for the reduce, got {progress}"
    );
    w.stop().await;
}

#[tokio::test]
async fn endless_answers_are_cut_at_the_size_cap() {
    let a = Stub::start(Reply::EndlessJson).await;
    let b = Stub::start(Reply::EndlessStream).await;
    let pa = provider("json", &a, |p| p.request_timeout = Duration::from_secs(30));
    let pb = provider("sse", &b, |p| p.request_timeout = Duration::from_secs(30));
    let mut w = World::start(vec![pa, pb], 2).await;
    let started = Instant::now();
    w.submit("e1", TEXT, 60_000).await;
    let out = w.next_output(Duration::from_secs(30)).await;
    let took = started.elapsed();
    assert_eq!(summary(&out)["provider"], "extractive");
    let reason = summary(&out)["fallback_reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let cap = fleet_summarizer::openai::MAX_RESPONSE_BYTES;
    // Both answers were cut by size (not by the 30 s request timeout).
    assert!(
        reason.contains(&format!(
            "json: malformed response: the answer exceeds {cap} bytes"
        )),
        "{reason}"
    );
    assert!(
        reason.contains(&format!(
            "sse: malformed response: the answer exceeds {cap} bytes"
        )),
        "{reason}"
    );
    assert!(took < Duration::from_secs(30), "{took:?}");
    eprintln!("two endless answers cut at {cap} bytes in {took:?}");
    assert_eq!(w.provider(0).in_flight(), 0);
    assert_eq!(w.provider(1).in_flight(), 0);
    w.stop().await;
}
