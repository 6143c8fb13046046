//! Delayed retries on the real nats-server (`FLEET_TEST_NATS_URL`): parked retries wait in the retry
//! stream, outside the jobs consumer's `max_ack_pending`, so fresh jobs keep flowing; they come
//! back when due with their attempt counted on; and they are counted per stage (`retrying`).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use fleet_core::{Broker, Delivery, Destination, OutMessage, Source, Subscription};
use fleet_protocol::deadletter::headers::ATTEMPT;

mod common;

use common::{Fixture, STAGE, topology};

fn jobs() -> Source {
    Source::Jobs {
        stage: STAGE.into(),
    }
}

async fn publish_jobs(f: &Fixture, prefix: &str, n: usize) {
    let sends = (0..n).map(|i| {
        let mut m = OutMessage::new(
            Destination::Job {
                stage: STAGE.into(),
            },
            format!("{prefix}{i}"),
        );
        m.msg_id = Some(format!("{prefix}/{i}"));
        f.broker.publish(m)
    });
    for r in futures::future::join_all(sends).await {
        r.expect("publish");
    }
}

/// Fetches until `n` deliveries came or `total` passed.
async fn fetch_n(sub: &mut Box<dyn Subscription>, n: usize, total: Duration) -> Vec<Delivery> {
    let deadline = Instant::now() + total;
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < deadline {
        let max = (n - out.len()).min(64);
        out.extend(
            sub.fetch(max, Duration::from_millis(500))
                .await
                .expect("fetch"),
        );
    }
    out
}

/// Fetches and acks until `n` distinct bodies came (or `total` passed); panics on a duplicate
/// or an attempt other than `attempt`.
async fn consume_acking_attempt(
    sub: &mut Box<dyn Subscription>,
    n: usize,
    attempt: u32,
    total: Duration,
) -> HashSet<String> {
    let deadline = Instant::now() + total;
    let mut seen = HashSet::new();
    while seen.len() < n && Instant::now() < deadline {
        let got = sub
            .fetch(64, Duration::from_millis(500))
            .await
            .expect("fetch");
        let mut acks = Vec::new();
        for d in got {
            assert_eq!(d.attempt, attempt);
            let body = String::from_utf8_lossy(&d.body).into_owned();
            assert!(seen.insert(body.clone()), "duplicate {body}");
            acks.push(d.acker.ack());
        }
        for r in futures::future::join_all(acks).await {
            r.expect("ack");
        }
    }
    seen
}

async fn consume_acking(
    sub: &mut Box<dyn Subscription>,
    n: usize,
    total: Duration,
) -> HashSet<String> {
    consume_acking_attempt(sub, n, 1, total).await
}

/// Polls `retrying` until it is `want` (bounded).
async fn retrying_becomes(f: &Fixture, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = retrying(f).await;
        if n == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "retrying stayed {n}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Fetches every job of `prefix` (`n` of them) and parks each for a retry of `delay`.
async fn park_all(sub: &mut Box<dyn Subscription>, n: usize, delay: Duration) {
    let mut parked = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while parked < n {
        assert!(Instant::now() < deadline, "parked only {parked} of {n}");
        let got = sub
            .fetch(16, Duration::from_millis(500))
            .await
            .expect("fetch");
        let settles = got.into_iter().map(|d| {
            assert_eq!(d.attempt, 1);
            d.acker.retry(delay)
        });
        for r in futures::future::join_all(settles).await {
            r.expect("retry");
            parked += 1;
        }
    }
}

async fn retrying(f: &Fixture) -> u64 {
    f.broker.retrying(STAGE).await.expect("retrying")
}

/// Issue 9: 200 retries parked with a long delay on a consumer whose `max_ack_pending` is 16
/// (a `Nak(delay)` would keep all of them ack-pending) do not stop fresh jobs.
#[tokio::test]
async fn parked_retries_do_not_block_fresh_jobs() {
    let mut topo = topology(Duration::from_secs(10), 5);
    topo.max_ack_pending = 16;
    let f = Fixture::declare(topo).await;
    let mut sub = f.sub(jobs()).await;
    publish_jobs(&f, "old", 200).await;
    park_all(&mut sub, 200, Duration::from_secs(120)).await;
    assert_eq!(retrying(&f).await, 200, "every parked retry is counted");
    assert_eq!(f.broker.depth(&jobs()).await.expect("depth"), 0);

    // More fresh jobs than max_ack_pending, consumed as a worker would (settling as it goes).
    publish_jobs(&f, "fresh", 40).await;
    let started = Instant::now();
    let bodies = consume_acking(&mut sub, 40, Duration::from_secs(10)).await;
    let took = started.elapsed();
    assert_eq!(bodies.len(), 40, "fresh jobs flow past the parked retries");
    assert!(took < Duration::from_secs(5), "fresh jobs took {took:?}");
    assert!(bodies.iter().all(|b| b.starts_with("fresh")), "{bodies:?}");
    // The last fresh jobs' plain acks are not confirmed (DESIGN §5.6): the server applies them
    // a moment later, so wait (bounded) for the ack-pending count to come down.
    let settled_by = Instant::now() + Duration::from_secs(5);
    let info = loop {
        let info = f
            .broker
            .jetstream()
            .get_stream_no_info(f.topo.names.jobs_stream())
            .await
            .expect("stream")
            .consumer_info(STAGE)
            .await
            .expect("consumer info");
        if info.num_ack_pending == 0 || Instant::now() >= settled_by {
            break info;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        info.num_ack_pending, 0,
        "parked retries are not ack-pending"
    );
    assert_eq!(retrying(&f).await, 200, "still waiting, nothing lost");
    drop(sub);
    f.cleanup().await;
}

/// A parked retry comes back when due, as a new attempt, and its attempt keeps counting across
/// retries and redeliveries (`fleet-attempt` + the server's delivery count).
#[tokio::test]
async fn retries_come_back_when_due_and_count_attempts() {
    let f = Fixture::declare(topology(Duration::from_secs(2), 5)).await;
    let mut sub = f.sub(jobs()).await;
    publish_jobs(&f, "r", 1).await;
    let d = fetch_n(&mut sub, 1, Duration::from_secs(5)).await.remove(0);
    assert_eq!(d.attempt, 1);
    let start = Instant::now();
    assert_eq!(
        d.acker
            .retry(Duration::from_millis(300))
            .await
            .expect("retry"),
        Duration::from_secs(1),
        "rounded up to the ladder"
    );
    assert_eq!(retrying(&f).await, 1);
    let d = fetch_n(&mut sub, 1, Duration::from_secs(6)).await.remove(0);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "back after {waited:?}"
    );
    assert!(waited < Duration::from_secs(4), "back after {waited:?}");
    assert_eq!(d.attempt, 2);
    assert_eq!(d.header(ATTEMPT), Some("1"));
    retrying_becomes(&f, 0).await;
    // A lost lease on the copy counts too (as a crash would), then a second retry.
    drop(d);
    let d = fetch_n(&mut sub, 1, Duration::from_secs(6)).await.remove(0);
    assert_eq!(d.attempt, 3);
    d.acker.retry(Duration::from_secs(1)).await.expect("retry");
    let d = fetch_n(&mut sub, 1, Duration::from_secs(6)).await.remove(0);
    assert_eq!(d.attempt, 4);
    assert_eq!(d.header(ATTEMPT), Some("3"));
    assert_eq!(d.body.as_ref(), b"r0");
    d.acker.ack().await.expect("ack");
    assert!(
        sub.fetch(1, Duration::from_millis(300))
            .await
            .expect("fetch")
            .is_empty(),
        "exactly one copy came back each time"
    );
    assert_eq!(f.broker.depth(&jobs()).await.expect("depth"), 0);
    drop(sub);
    f.cleanup().await;
}

/// The ≥ 10,000 form of issue 9 (about 30 s): 10,000 jobs wait for a 5 s
/// retry while fresh jobs are consumed at once, then all 10,000 come back exactly once as
/// attempt 2.
#[tokio::test]
async fn ten_thousand_parked_retries() {
    const N: usize = 10_000;
    let mut topo = topology(Duration::from_secs(30), 5);
    topo.max_ack_pending = 64;
    let f = Fixture::declare(topo).await;
    let mut sub = f.sub(jobs()).await;
    let t0 = Instant::now();
    for chunk in 0..N / 500 {
        publish_jobs(&f, &format!("old{chunk}-"), 500).await;
    }
    park_all(&mut sub, N, Duration::from_secs(30)).await;
    let parked_in = t0.elapsed();
    publish_jobs(&f, "fresh", 200).await;
    let t1 = Instant::now();
    let fresh = consume_acking(&mut sub, 200, Duration::from_secs(10)).await;
    let fresh_in = t1.elapsed();
    assert_eq!(fresh.len(), 200);
    assert!(fresh.iter().all(|b| b.starts_with("fresh")));
    let waiting = retrying(&f).await;
    let t2 = Instant::now();
    let seen = consume_acking_attempt(&mut sub, N, 2, Duration::from_secs(300)).await;
    assert_eq!(seen.len(), N, "every parked retry came back");
    eprintln!(
        "parked {N} in {parked_in:?}; 200 fresh jobs in {fresh_in:?} while {waiting} waited; \
         all {N} back {:?} after the fresh ones",
        t2.elapsed()
    );
    retrying_becomes(&f, 0).await;
    drop(sub);
    f.cleanup().await;
}
