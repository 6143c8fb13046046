//! Pulls over one persistent inbox, against the real nats-server (see `common`): nothing lost or
//! duplicated, never more pulled than asked for, late arrivals kept for the next fetch, and what
//! is buffered given back at once when the subscription goes away.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use fleet_core::{Broker, Delivery, Destination, OutMessage, Source, Subscription};
use futures::future::join_all;

mod common;

use common::{Fixture, STAGE, topology};

/// A fixture whose jobs consumer holds up to `max_ack_pending` unacked jobs for `ack_wait`.
async fn fixture(ack_wait: Duration, max_ack_pending: i64) -> Fixture {
    let mut topo = topology(ack_wait, 5);
    topo.max_ack_pending = max_ack_pending;
    Fixture::declare(topo).await
}

fn jobs() -> Source {
    Source::Jobs {
        stage: STAGE.into(),
    }
}

/// Publishes `bodies`, a few hundred at a time.
async fn publish(f: &Fixture, bodies: impl IntoIterator<Item = String>) {
    let bodies: Vec<String> = bodies.into_iter().collect();
    for chunk in bodies.chunks(200) {
        let sent = join_all(chunk.iter().map(|b| {
            f.broker.publish(OutMessage::new(
                Destination::Job {
                    stage: STAGE.into(),
                },
                b.clone(),
            ))
        }))
        .await;
        for r in sent {
            r.expect("publish");
        }
    }
}

/// The jobs consumer's (ack pending, pending, waiting pull requests) once `done` holds for them,
/// or as they are after `limit`.
async fn consumer_counts(
    f: &Fixture,
    limit: Duration,
    done: impl Fn((usize, u64, usize)) -> bool,
) -> (usize, u64, usize) {
    let until = Instant::now() + limit;
    loop {
        let info = f
            .broker
            .jetstream()
            .get_stream_no_info(f.topo.names.jobs_stream())
            .await
            .expect("stream handle")
            .consumer_info(STAGE)
            .await
            .expect("consumer info");
        let counts = (info.num_ack_pending, info.num_pending, info.num_waiting);
        if done(counts) || Instant::now() >= until {
            return counts;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts a fetch for `max` on an empty stream and drops it while it waits: its pull request
/// stays open on the server.
async fn leave_a_request_open(sub: &mut Box<dyn Subscription>, max: usize) {
    let dropped = tokio::time::timeout(
        Duration::from_millis(300),
        sub.fetch(max, Duration::from_secs(5)),
    )
    .await;
    assert!(dropped.is_err(), "the fetch should still be waiting");
}

/// The gate: as many jobs as the consumer's max_ack_pending (`GATE`), fetched and held.
const GATE: usize = 10;

/// Publishes `GATE` jobs and fetches them: held unacked, they fill max_ack_pending, so the
/// server holds a pull request until they are acked and then serves it from what is pending,
/// all in one go.
async fn hold_the_gate(f: &Fixture, sub: &mut Box<dyn Subscription>) -> Vec<Delivery> {
    publish(f, (0..GATE).map(|i| format!("gate{i}"))).await;
    let mut held = Vec::new();
    let until = Instant::now() + Duration::from_secs(10);
    while held.len() < GATE && Instant::now() < until {
        let got = sub
            .fetch(GATE - held.len(), Duration::from_millis(500))
            .await
            .expect("fetch");
        held.extend(got);
    }
    assert_eq!(held.len(), GATE);
    held
}

fn bodies(got: &[Delivery]) -> Vec<String> {
    got.iter()
        .map(|d| String::from_utf8(d.body.to_vec()).expect("utf-8"))
        .collect()
}

async fn ack_all(got: Vec<Delivery>) {
    for d in got {
        d.acker.ack().await.expect("ack");
    }
}

#[tokio::test]
async fn two_thousand_jobs_in_pulls_of_one_to_64_arrive_once_over_one_inbox() {
    let f = fixture(Duration::from_secs(30), 1000).await;
    publish(&f, (0..2000).map(|i| format!("m{i}"))).await;
    let mut sub = f.sub(jobs()).await;
    let mut seen = HashSet::new();
    let until = Instant::now() + Duration::from_secs(60);
    for round in 0usize.. {
        let max = round % 64 + 1;
        let got = sub
            .fetch(max, Duration::from_millis(200))
            .await
            .expect("fetch");
        assert!(got.len() <= max, "asked for {max}, got {}", got.len());
        if got.is_empty() && seen.len() == 2000 {
            break;
        }
        assert!(Instant::now() < until, "only {} of 2000 came", seen.len());
        for body in bodies(&got) {
            assert!(seen.insert(body.clone()), "{body} came twice");
        }
        ack_all(got).await;
    }
    assert_eq!(seen.len(), 2000);
    let counts = consumer_counts(&f, Duration::from_secs(5), |(a, p, _)| a == 0 && p == 0).await;
    assert_eq!((counts.0, counts.1), (0, 0), "(ack pending, pending)");
    assert_eq!(f.broker.pull_inbox_count(), 1, "one inbox for every pull");
    drop(sub);
    f.cleanup().await;
}

#[tokio::test]
async fn late_arrivals_come_with_the_next_fetches_and_never_more_than_asked() {
    let f = fixture(Duration::from_secs(30), GATE as i64).await;
    let mut sub = f.sub(jobs()).await;
    let gate = hold_the_gate(&f, &mut sub).await;
    leave_a_request_open(&mut sub, 10).await;
    // The open request covers a caller that asks for 10 again: no second request goes out.
    let got = sub
        .fetch(10, Duration::from_millis(300))
        .await
        .expect("fetch");
    assert!(got.is_empty());
    let counts = consumer_counts(&f, Duration::ZERO, |_| true).await;
    assert_eq!(
        counts,
        (GATE, 0, 1),
        "(ack pending, pending, waiting requests)"
    );
    publish(&f, (0..12).map(|i| format!("m{i}"))).await;
    ack_all(gate).await;
    // The open request takes 10, which wait in the buffer; 2 stay on the server.
    let counts = consumer_counts(&f, Duration::from_secs(5), |(a, p, _)| a == 10 && p == 2).await;
    assert_eq!(
        counts,
        (10, 2, 0),
        "(ack pending, pending, waiting requests)"
    );
    let mut all = Vec::new();
    let until = Instant::now() + Duration::from_secs(10);
    while all.len() < 10 && Instant::now() < until {
        let got = sub.fetch(4, Duration::from_secs(1)).await.expect("fetch");
        assert!(
            got.len() <= 4,
            "the buffer serves up to max, not {}",
            got.len()
        );
        all.extend(got);
    }
    assert_eq!(all.len(), 10);
    let mut seen: HashSet<String> = bodies(&all).into_iter().collect();
    assert!(all.iter().all(|d| d.attempt == 1));
    ack_all(all).await;
    let rest = sub.fetch(10, Duration::from_secs(2)).await.expect("fetch");
    assert_eq!(rest.len(), 2);
    seen.extend(bodies(&rest));
    ack_all(rest).await;
    assert_eq!(seen.len(), 12, "12 distinct jobs");
    let counts = consumer_counts(&f, Duration::from_secs(5), |(a, p, _)| a == 0 && p == 0).await;
    assert_eq!((counts.0, counts.1), (0, 0));
    assert_eq!(f.broker.pull_inbox_count(), 1);
    drop(sub);
    f.cleanup().await;
}

#[tokio::test]
async fn buffered_jobs_are_given_back_at_once_when_the_subscription_goes() {
    // An ack_wait far longer than the test: whatever comes back was given back.
    let f = fixture(Duration::from_secs(120), GATE as i64).await;
    for (n, close) in [(5usize, false), (3, true)] {
        let mut sub = f.sub(jobs()).await;
        let gate = hold_the_gate(&f, &mut sub).await;
        leave_a_request_open(&mut sub, 10).await;
        publish(&f, (0..n).map(|i| format!("{close}-{i}"))).await;
        ack_all(gate).await;
        let counts = consumer_counts(&f, Duration::from_secs(5), |(a, _, _)| a == n).await;
        assert_eq!(
            (counts.0, counts.1),
            (n, 0),
            "all {n} buffered in the subscription"
        );
        if close {
            sub.close().await;
        } else {
            drop(sub);
        }
        let mut again = f.sub(jobs()).await;
        let mut got = Vec::new();
        let until = Instant::now() + Duration::from_secs(10);
        while got.len() < n && Instant::now() < until {
            got.extend(
                again
                    .fetch(10, Duration::from_millis(500))
                    .await
                    .expect("fetch"),
            );
        }
        assert_eq!(got.len(), n, "given back: {:?}", bodies(&got));
        assert!(
            got.iter().all(|d| d.attempt == 2),
            "a Nak counts the delivery"
        );
        ack_all(got).await;
        again.close().await;
    }
    let counts = consumer_counts(&f, Duration::from_secs(5), |(a, p, _)| a == 0 && p == 0).await;
    assert_eq!((counts.0, counts.1), (0, 0));
    f.cleanup().await;
}
