//! Acks settled as `basic.ack(multiple=true)` over the contiguous run of finished deliveries,
//! against the real RabbitMQ: out-of-order acks from many tasks leave nothing unacked with
//! far fewer frames than deliveries; a held delivery neither blocks the acks above it nor is
//! covered by them; a retry, a dead letter and a release in the middle are never covered.
//!
//! "Nothing unacked" is checked the way the broker would show it: closing the channel puts
//! every unacked delivery back, so the queue must stay empty and a new consumer get nothing.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{SOON, STAGE, dead_letters, jobs, one, with_env};
use fleet_core::{Broker, Delivery, SubscribeOptions, Subscription};
use fleet_protocol::{DeadLetterInfo, DeadLetterReason, ErrorKind};
use fleet_test_support::corpus::Rng;
use tokio::time::Instant;

/// Bound on every ack of these tests: a cover wait is milliseconds, this only catches a hang.
const ACK_BOUND: Duration = Duration::from_secs(2);

/// Publishes `n` jobs `{tag}0`, `{tag}1`, … concurrently (each confirmed).
async fn publish_n(env: &'static common::Env, tag: &str, n: usize) {
    let publishers: Vec<_> = (0..n)
        .map(|i| {
            let (broker, msg) = (env.broker.clone(), env.job(&format!("{tag}{i}")));
            tokio::spawn(async move { broker.publish(msg).await })
        })
        .collect();
    for p in publishers {
        p.await.expect("join").expect("publish");
    }
}

/// Fetches exactly `n` deliveries (in delivery-tag order), bounded.
async fn fetch_n(sub: &mut Box<dyn Subscription>, n: usize) -> Vec<Delivery> {
    let mut got = Vec::with_capacity(n);
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} delivered",
            got.len()
        );
        got.extend(
            sub.fetch(n - got.len(), Duration::from_secs(2))
                .await
                .expect("fetch"),
        );
    }
    got
}

/// A shuffled copy of `0..n` (deterministic).
fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = Rng::new(seed);
    for i in (1..n).rev() {
        order.swap(i, rng.range(0, i));
    }
    order
}

/// Acks every delivery from its own task, all released at once, in the order given.
async fn ack_all_concurrently(deliveries: Vec<Delivery>) {
    let start = Arc::new(tokio::sync::Barrier::new(deliveries.len() + 1));
    let tasks: Vec<_> = deliveries
        .into_iter()
        .map(|d| {
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                tokio::time::timeout(ACK_BOUND, d.acker.ack()).await
            })
        })
        .collect();
    start.wait().await;
    for t in tasks {
        t.await
            .expect("join")
            .expect("an ack waited longer than its bound")
            .expect("ack");
    }
}

/// Awaits `fut` for at most [`ACK_BOUND`].
async fn bounded<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(ACK_BOUND, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} waited longer than its bound"))
}

/// The channel survived (a double ack would have closed it), the queue is empty, and once
/// the channel is closed (which returns every unacked delivery) it is still empty and a new
/// consumer gets nothing.
async fn assert_nothing_unacked(env: &'static common::Env, mut sub: Box<dyn Subscription>) {
    let more = sub
        .fetch(1, Duration::from_millis(500))
        .await
        .expect("the consuming channel is still open");
    assert!(more.is_empty(), "nothing more was expected");
    sub.close().await;
    assert_eq!(env.depth(jobs()).await, 0, "nothing left unacked");
    let mut again = env.sub(jobs()).await;
    let left = again
        .fetch(1, Duration::from_millis(500))
        .await
        .expect("fetch");
    assert!(left.is_empty(), "a delivery came back: it was never acked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shuffled_concurrent_acks_go_out_in_few_frames() {
    with_env(|env| async move {
        const N: usize = 500;
        publish_n(env, "s", N).await;
        let mut sub = env
            .broker
            .subscribe(jobs(), SubscribeOptions { prefetch: N as u16 })
            .await
            .expect("subscribe");
        let mut deliveries: Vec<Option<Delivery>> =
            fetch_n(&mut sub, N).await.into_iter().map(Some).collect();
        let bodies: HashSet<Bytes> = deliveries
            .iter()
            .flatten()
            .map(|d| d.body.clone())
            .collect();
        assert_eq!(bodies.len(), N, "no delivery twice");
        let before = env.broker.ack_stats();
        let order: Vec<Delivery> = shuffled(N, 12)
            .into_iter()
            .filter_map(|i| deliveries[i].take())
            .collect();
        ack_all_concurrently(order).await;
        let stats = env.broker.ack_stats();
        let (frames, acked) = (
            stats.frames - before.frames,
            stats.deliveries - before.deliveries,
        );
        eprintln!("{N} acks went out in {frames} frames");
        assert_eq!(acked, N as u64, "every delivery acked exactly once");
        assert!(
            frames <= N as u64 / 4,
            "{frames} ack frames for {N} deliveries: the runs were not acked together"
        );
        assert_nothing_unacked(env, sub).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_held_delivery_neither_blocks_nor_is_covered() {
    with_env(|env| async move {
        const N: usize = 50;
        publish_n(env, "h", N).await;
        let mut sub = env
            .broker
            .subscribe(jobs(), SubscribeOptions { prefetch: 64 })
            .await
            .expect("subscribe");
        let mut deliveries = fetch_n(&mut sub, N).await;
        // In the middle: the acks below it form runs that must stop before it, the acks above
        // it can never join a run while it is held.
        let held = deliveries.remove(N / 2);
        let before = env.broker.ack_stats();
        ack_all_concurrently(deliveries).await;
        let mid = env.broker.ack_stats();
        assert_eq!(
            mid.deliveries - before.deliveries,
            N as u64 - 1,
            "the held delivery was not acked with the others"
        );
        // Had a multiple ack covered it, this second ack of its tag would close the channel
        // (PRECONDITION_FAILED, unknown delivery tag), which the check below sees.
        tokio::time::timeout(ACK_BOUND, held.acker.ack())
            .await
            .expect("the held delivery's ack waited longer than its bound")
            .expect("ack the held delivery");
        assert_nothing_unacked(env, sub).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retry_dead_letter_and_release_in_the_middle_are_never_covered() {
    with_env(|env| async move {
        const N: usize = 60;
        publish_n(env, "m", N).await;
        let mut sub = env
            .broker
            .subscribe(jobs(), SubscribeOptions { prefetch: 64 })
            .await
            .expect("subscribe");
        let mut deliveries: Vec<Option<Delivery>> =
            fetch_n(&mut sub, N).await.into_iter().map(Some).collect();
        let body = |d: &Option<Delivery>| d.as_ref().map(|d| d.body.clone()).expect("present");
        let (retried, dead, released, held) = (
            body(&deliveries[20]),
            body(&deliveries[21]),
            body(&deliveries[22]),
            body(&deliveries[30]),
        );
        let take = |ds: &mut Vec<Option<Delivery>>, i: usize| ds[i].take().expect("present");
        let (d_retry, d_dead, d_release, d_held) = (
            take(&mut deliveries, 20),
            take(&mut deliveries, 21),
            take(&mut deliveries, 22),
            take(&mut deliveries, 30),
        );
        let info = DeadLetterInfo {
            reason: DeadLetterReason::PermanentError,
            last_error_kind: Some(ErrorKind::HandlerError),
            last_error: "cannot work".into(),
            attempts: 1,
            stage: STAGE.into(),
            worker_id: "w-1".into(),
            at: chrono::Utc::now(),
            job_id: None,
        };
        let retry = async {
            bounded("retry", d_retry.acker.retry(Duration::from_secs(1)))
                .await
                .expect("retry");
        };
        let dead_letter = async {
            bounded("dead_letter", d_dead.acker.dead_letter(&info))
                .await
                .expect("dead_letter");
        };
        let release = async {
            bounded("release", d_release.acker.release())
                .await
                .expect("release");
        };
        let order: Vec<Delivery> = shuffled(N, 7)
            .into_iter()
            .filter_map(|i| deliveries[i].take())
            .collect();
        tokio::join!(ack_all_concurrently(order), retry, dead_letter, release);
        // The held one last, given back: it must come back, so no ack covered it.
        bounded("release", d_held.acker.release())
            .await
            .expect("release the held delivery");

        // Back on this consumer: the two released at once, the retried one after its 1 s step.
        let mut back: HashMap<Bytes, u32> = HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(15);
        while back.len() < 3 {
            assert!(
                Instant::now() < deadline,
                "only {:?} came back",
                back.keys()
            );
            for d in sub.fetch(4, Duration::from_secs(1)).await.expect("fetch") {
                assert!(
                    back.insert(d.body.clone(), d.attempt).is_none(),
                    "{:?} came back twice",
                    d.body
                );
                d.acker.ack().await.expect("ack a returned delivery");
            }
        }
        let expected: HashMap<Bytes, u32> = HashMap::from([(retried, 2), (released, 2), (held, 2)]);
        assert_eq!(
            back, expected,
            "exactly the retried and released ones, once each"
        );

        let mut dlq = env.sub(dead_letters()).await;
        let d = one(&mut dlq, SOON).await;
        assert_eq!(d.body, dead);
        d.acker.ack().await.expect("ack the dead letter");
        assert_nothing_unacked(env, sub).await;
    })
    .await;
}
