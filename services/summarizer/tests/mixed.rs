//! One bad chunk does not sink an item: 60 long items (4 chunks each) through a
//! real Worker on the memory broker against a stub LLM on loopback that fails
//! 15 % of its requests. Without chunk retries (the behaviour before: any
//! failed chunk call cost the item its LLM summary) most items lose their
//! LLM summary; with the default retries none falls back entirely. Prints
//! the figure.

mod stub;
mod world;

use std::time::Duration;

use stub::{Reply, Stub};
use world::{World, provider, summary};

const ITEMS: usize = 60;
/// Per-request failure rate, in percent.
const FAIL_PERCENT: u64 = 15;

/// Four paragraphs of about 3,000 characters: with 4,000-character chunks, 4 chunks.
fn long_text(i: usize) -> String {
    (0..4)
        .map(|p| {
            format!(
                "Item {i} paragraph {p} starts here. {}",
                "Queues keep the work while workers come and go. ".repeat(60)
            )
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// A fixed pseudo-random script: request k fails with HTTP 500 when its hash says so.
fn script(n: usize) -> Vec<Reply> {
    (0..n as u64)
        .map(|k| {
            let h = k.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) % 100;
            if h < FAIL_PERCENT {
                Reply::Status(500, None)
            } else {
                Reply::Answer("The partial summary says queues keep work.".into())
            }
        })
        .collect()
}

/// (items whose summary fell back entirely to extractive, mixed items, requests).
async fn run(retries: u32) -> (usize, usize, usize) {
    let s = Stub::start(Reply::Answer("A summary.".into())).await;
    s.script(script(2000));
    let p = provider("flaky", &s, |p| {
        // The breaker is not under test: 15 % failures must not open it.
        p.breaker_failures = 10_000;
        p.max_concurrency = 8;
    });
    let mut w = World::start_retrying("memory://", vec![p], 4, true, true, retries).await;
    for i in 0..ITEMS {
        let job = w.job(
            &format!("i{i}"),
            serde_json::json!({"text": long_text(i)}),
            30_000,
        );
        w.publish(&job).await;
    }
    let (mut fallback, mut mixed) = (0, 0);
    for _ in 0..ITEMS {
        let out = w.next_output(Duration::from_secs(60)).await;
        let sm = summary(&out);
        assert!(
            sm["chunks"].as_u64().unwrap_or(1) > 1 || sm["provider"] == "extractive",
            "{sm}"
        );
        if sm["provider"] == "extractive" {
            fallback += 1;
        } else if sm["mixed"] == true {
            mixed += 1;
            assert!(
                sm["extractive_chunks"].as_u64().is_some_and(|n| n >= 1)
                    || sm["extractive_reduce"] == true,
                "{sm}"
            );
        }
    }
    let requests = s.requests();
    w.stop().await;
    (fallback, mixed, requests)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_chunk_costs_a_chunk_not_the_item() {
    // Before: no retries, and a failed chunk call failed the provider for the whole item
    // (an item with any failed chunk is counted as lost: fallen back or mixed at 0 retries).
    let (fb0, mixed0, req0) = run(0).await;
    let lost_before = fb0 + mixed0;
    let (fb, mixed, req) = run(2).await;
    println!(
        "items losing their LLM summary at {FAIL_PERCENT} % per-request failures: \
         {lost_before}/{ITEMS} before (no chunk retry: any failed chunk call cost the item) → \
         {fb}/{ITEMS} after (FLEET_CHUNK_RETRIES=2; {mixed} mixed); requests {req0} → {req}"
    );
    assert!(
        lost_before >= ITEMS / 4,
        "{lost_before}: the stub fails too rarely"
    );
    assert_eq!(fb, 0, "an item fell back entirely despite chunk retries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_reduce_keeps_the_chunk_summaries() {
    // Four chunk calls answer, then the reduce fails on every try (1 + 2 retries): the
    // LLM's chunk summaries are combined extractively instead of the item falling back.
    let s = Stub::start(Reply::Answer("A summary.".into())).await;
    let mut replies =
        vec![Reply::Answer("Queues keep the work while workers come and go.".into()); 4];
    replies.extend((0..3).map(|_| Reply::Status(500, None)));
    s.script(replies);
    let p = provider("flaky", &s, |p| p.breaker_failures = 10_000);
    let mut w = World::start_retrying("memory://", vec![p], 1, true, true, 2).await;
    let job = w.job("r0", serde_json::json!({"text": long_text(0)}), 30_000);
    w.publish(&job).await;
    let out = w.next_output(Duration::from_secs(60)).await;
    let sm = summary(&out);
    assert_eq!(sm["provider"], "flaky", "{sm}");
    assert_eq!(sm["fallback"], false, "{sm}");
    assert_eq!(sm["mixed"], true, "{sm}");
    assert_eq!(sm["extractive_reduce"], true, "{sm}");
    assert_eq!(sm["extractive_chunks"], 0, "{sm}");
    assert_eq!(sm["chunks"], 4, "{sm}");
    assert_eq!(s.requests(), 7);
    w.stop().await;
}
