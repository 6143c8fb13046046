//! fleet-nats against the real nats-server (JetStream) at `FLEET_TEST_NATS_URL`
//! (default `nats://127.0.0.1:4222`). These tests fail, never skip, when it is unreachable.
//! Each test uses its own random prefix (so its own streams) and deletes them at the end.

use std::time::{Duration, Instant};

use bytes::Bytes;
use fleet_core::{
    Broker, BrokerError, Delivery, Destination, OutMessage, Source, SubscribeOptions, Subscription,
};
use fleet_nats::connect;
use fleet_protocol::deadletter::headers;
use fleet_protocol::{DeadLetterInfo, DeadLetterReason, ErrorKind, Names};

mod common;

use common::{Fixture, STAGE, broker, options, topology};

impl Fixture {
    async fn new(ack_wait: Duration) -> Fixture {
        Fixture::declare(topology(ack_wait, 5)).await
    }

    async fn jobs(&self) -> Box<dyn Subscription> {
        self.sub(Source::Jobs {
            stage: STAGE.into(),
        })
        .await
    }

    async fn publish_job(&self, body: &str) {
        self.broker
            .publish(OutMessage::new(
                Destination::Job {
                    stage: STAGE.into(),
                },
                body.to_owned(),
            ))
            .await
            .expect("publish");
    }

    async fn depth(&self) -> u64 {
        self.broker
            .depth(&Source::Jobs {
                stage: STAGE.into(),
            })
            .await
            .expect("depth")
    }

    async fn jobs_consumer(&self) -> async_nats::jetstream::consumer::Info {
        self.broker
            .jetstream()
            .get_stream_no_info(self.topo.names.jobs_stream())
            .await
            .expect("stream handle")
            .consumer_info(STAGE)
            .await
            .expect("consumer info")
    }

    /// The jobs consumer's info once nothing is ack-pending, or as it is after `limit`: a
    /// plain `+ACK` is not confirmed (DESIGN §5.6), so the server applies it a moment later.
    async fn jobs_consumer_settled(
        &self,
        limit: Duration,
    ) -> async_nats::jetstream::consumer::Info {
        let until = Instant::now() + limit;
        loop {
            let info = self.jobs_consumer().await;
            if info.num_ack_pending == 0 || Instant::now() >= until {
                return info;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Fetches until something comes or `total` passes.
async fn fetch_within(
    sub: &mut Box<dyn Subscription>,
    max: usize,
    total: Duration,
) -> Vec<Delivery> {
    let deadline = Instant::now() + total;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let got = sub
            .fetch(max, left.min(Duration::from_millis(500)))
            .await
            .expect("fetch");
        if !got.is_empty() || left.is_zero() {
            return got;
        }
    }
}

fn one(mut v: Vec<Delivery>) -> Delivery {
    assert_eq!(v.len(), 1, "expected exactly one delivery");
    v.remove(0)
}

#[tokio::test]
async fn publish_fetch_ack_leaves_depth_zero() {
    let f = Fixture::new(Duration::from_secs(10)).await;
    let mut msg = OutMessage::new(
        Destination::Job {
            stage: STAGE.into(),
        },
        "hello",
    );
    msg.headers = vec![("x-test".into(), "1".into())];
    msg.msg_id = Some("p/i/s".into());
    f.broker.publish(msg.clone()).await.expect("publish");
    // Same Nats-Msg-Id within the duplicate window: stored once.
    f.broker.publish(msg).await.expect("publish duplicate");
    assert_eq!(f.depth().await, 1);

    let mut sub = f.jobs().await;
    let d = one(fetch_within(&mut sub, 10, Duration::from_secs(3)).await);
    assert_eq!(d.body, Bytes::from("hello"));
    assert_eq!(d.header("x-test"), Some("1"));
    assert_eq!(d.header("Nats-Msg-Id"), Some("p/i/s"));
    assert_eq!(d.attempt, 1);
    assert_eq!(d.acker.lease(), Some(Duration::from_secs(10)));
    assert_eq!(f.depth().await, 0);
    d.acker.ack().await.expect("ack");

    let info = f.jobs_consumer_settled(Duration::from_secs(5)).await;
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0));
    let stream = f
        .broker
        .jetstream()
        .get_stream(f.topo.names.jobs_stream())
        .await
        .expect("jobs stream");
    assert_eq!(
        stream.cached_info().state.messages,
        0,
        "WorkQueue removes acked jobs"
    );
    assert!(
        sub.fetch(1, Duration::from_millis(200))
            .await
            .expect("fetch")
            .is_empty()
    );
    f.cleanup().await;
}

#[tokio::test]
async fn retry_naks_with_delay_and_redelivers_as_attempt_2() {
    let f = Fixture::new(Duration::from_secs(10)).await;
    f.publish_job("r").await;
    let mut sub = f.jobs().await;
    let d = one(fetch_within(&mut sub, 1, Duration::from_secs(3)).await);
    let start = Instant::now();
    let used = d.acker.retry(Duration::from_secs(1)).await.expect("retry");
    assert_eq!(used, Duration::from_secs(1));
    let again = one(fetch_within(&mut sub, 1, Duration::from_secs(5)).await);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "redelivered after {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(4),
        "redelivered after {waited:?}"
    );
    assert_eq!(again.attempt, 2);
    assert_eq!(again.body, Bytes::from("r"));
    again.acker.ack().await.expect("ack");
    f.cleanup().await;
}

#[tokio::test]
async fn release_redelivers_at_once_as_attempt_2() {
    let f = Fixture::new(Duration::from_secs(10)).await;
    f.publish_job("x").await;
    let mut sub = f.jobs().await;
    let d = one(fetch_within(&mut sub, 1, Duration::from_secs(3)).await);
    let start = Instant::now();
    d.acker.release().await.expect("release");
    let again = one(fetch_within(&mut sub, 1, Duration::from_secs(3)).await);
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(again.attempt, 2);
    again.acker.ack().await.expect("ack");
    f.cleanup().await;
}

#[tokio::test]
async fn dead_letter_copies_body_and_headers_to_dlq_and_stops_redelivery() {
    let f = Fixture::new(Duration::from_secs(2)).await;
    let mut msg = OutMessage::new(
        Destination::Job {
            stage: STAGE.into(),
        },
        "{\"v\":1}",
    );
    msg.headers = vec![("x-orig".into(), "kept".into())];
    f.broker.publish(msg).await.expect("publish");
    let mut sub = f.jobs().await;
    let d = one(fetch_within(&mut sub, 1, Duration::from_secs(3)).await);
    let info = DeadLetterInfo {
        reason: DeadLetterReason::PermanentError,
        last_error_kind: Some(ErrorKind::HandlerError),
        last_error: "line one\nline two".into(),
        attempts: d.attempt,
        stage: STAGE.into(),
        worker_id: "w1".into(),
        at: chrono::Utc::now(),
        job_id: Some("p/i/s".into()),
    };
    d.acker.dead_letter(&info).await.expect("dead_letter");

    let mut dlq = f
        .sub(Source::DeadLetters {
            stage: STAGE.into(),
        })
        .await;
    let dead = one(fetch_within(&mut dlq, 10, Duration::from_secs(3)).await);
    assert_eq!(dead.body, Bytes::from("{\"v\":1}"));
    assert_eq!(dead.header("x-orig"), Some("kept"));
    assert_eq!(dead.header(headers::REASON), Some("permanent_error"));
    assert_eq!(dead.header(headers::LAST_ERROR), Some("line one line two"));
    let back = DeadLetterInfo::from_headers(|k| dead.header(k)).expect("dead-letter headers");
    assert_eq!(back.reason, DeadLetterReason::PermanentError);
    assert_eq!(back.last_error_kind, Some(ErrorKind::HandlerError));
    assert_eq!(back.job_id.as_deref(), Some("p/i/s"));
    dead.acker.ack().await.expect("ack dead letter");

    // Term: not redelivered even after ack_wait (2 s) has passed.
    assert!(
        sub.fetch(1, Duration::from_millis(2500))
            .await
            .expect("fetch")
            .is_empty()
    );
    assert_eq!(f.depth().await, 0);
    assert_eq!(f.jobs_consumer().await.num_ack_pending, 0);
    let jobs = f
        .broker
        .jetstream()
        .get_stream(f.topo.names.jobs_stream())
        .await
        .expect("stream");
    assert_eq!(
        jobs.cached_info().state.messages,
        0,
        "Term removes the job from a WorkQueue"
    );
    f.cleanup().await;
}

#[tokio::test]
async fn max_deliver_is_a_backstop() {
    let f = Fixture::declare(topology(Duration::from_secs(10), 2)).await;
    f.publish_job("poison").await;
    let mut sub = f.jobs().await;
    for attempt in 1..=2 {
        let d = one(fetch_within(&mut sub, 1, Duration::from_secs(3)).await);
        assert_eq!(d.attempt, attempt);
        d.acker.release().await.expect("release");
    }
    assert!(
        sub.fetch(1, Duration::from_millis(500))
            .await
            .expect("fetch")
            .is_empty()
    );
    assert_eq!(f.depth().await, 0);
    let jobs = f
        .broker
        .jetstream()
        .get_stream(f.topo.names.jobs_stream())
        .await
        .expect("stream");
    eprintln!(
        "JOBS messages after max_deliver: {}",
        jobs.cached_info().state.messages
    );
    f.cleanup().await;
}

#[tokio::test]
async fn a_full_max_ack_pending_is_an_empty_fetch() {
    let mut topo = topology(Duration::from_secs(10), 5);
    topo.max_ack_pending = 1;
    let f = Fixture::declare(topo).await;
    f.publish_job("a").await;
    f.publish_job("b").await;
    let mut sub = f.jobs().await;
    let first = one(fetch_within(&mut sub, 2, Duration::from_secs(3)).await);
    let start = Instant::now();
    let got = sub
        .fetch(1, Duration::from_millis(500))
        .await
        .expect("fetch at max_ack_pending");
    assert!(got.is_empty());
    assert!(
        start.elapsed() >= Duration::from_millis(400),
        "took {:?}",
        start.elapsed()
    );
    first.acker.ack().await.expect("ack");
    let second = one(fetch_within(&mut sub, 2, Duration::from_secs(3)).await);
    second.acker.ack().await.expect("ack");
    f.cleanup().await;
}

#[tokio::test]
async fn extend_keeps_the_lease_past_ack_wait() {
    let f = Fixture::new(Duration::from_secs(2)).await;
    f.publish_job("long").await;
    let mut holder = f.jobs().await;
    let mut other = f.jobs().await;
    let d = one(fetch_within(&mut holder, 1, Duration::from_secs(3)).await);
    assert_eq!(d.acker.lease(), Some(Duration::from_secs(2)));
    let keep_alive = async {
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(700)).await;
            d.acker.extend().await.expect("extend");
        }
    };
    // 3.5 s held with a 2 s ack_wait: nobody else gets it.
    let (stolen, ()) = tokio::join!(other.fetch(1, Duration::from_millis(3500)), keep_alive);
    assert!(
        stolen.expect("fetch").is_empty(),
        "an extended job was redelivered"
    );
    d.acker.ack().await.expect("ack");
    assert!(
        other
            .fetch(1, Duration::from_millis(300))
            .await
            .expect("fetch")
            .is_empty()
    );
    f.cleanup().await;
}

#[tokio::test]
async fn without_extend_the_lease_expires_and_the_job_is_redelivered() {
    let f = Fixture::new(Duration::from_secs(2)).await;
    f.publish_job("long").await;
    let mut holder = f.jobs().await;
    let mut other = f.jobs().await;
    let start = Instant::now();
    let _held = one(fetch_within(&mut holder, 1, Duration::from_secs(3)).await);
    let again = one(fetch_within(&mut other, 1, Duration::from_secs(5)).await);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(1800),
        "redelivered after {waited:?}"
    );
    assert_eq!(again.attempt, 2);
    again.acker.ack().await.expect("ack");
    f.cleanup().await;
}

#[tokio::test]
async fn fetch_pulls_only_what_is_asked() {
    let f = Fixture::new(Duration::from_secs(10)).await;
    for i in 0..5 {
        f.publish_job(&format!("m{i}")).await;
    }
    let mut sub = f.jobs().await;
    let got = sub.fetch(2, Duration::from_secs(1)).await.expect("fetch");
    assert!(!got.is_empty() && got.len() <= 2, "got {}", got.len());
    // Nothing else left the server: the other 3 are still pending, not buffered or leased.
    let info = f.jobs_consumer().await;
    assert_eq!(info.num_ack_pending, got.len());
    assert_eq!(info.num_pending, 5 - got.len() as u64);
    assert_eq!(f.depth().await, 5 - got.len() as u64);
    let rest = sub.fetch(10, Duration::from_secs(1)).await.expect("fetch");
    assert_eq!(got.len() + rest.len(), 5);
    for d in got.into_iter().chain(rest) {
        d.acker.ack().await.expect("ack");
    }
    f.cleanup().await;
}

#[tokio::test]
async fn fetch_on_an_empty_stream_returns_after_about_wait() {
    let f = Fixture::new(Duration::from_secs(10)).await;
    let mut sub = f.jobs().await;
    for wait in [Duration::from_millis(100), Duration::from_millis(700)] {
        let start = Instant::now();
        let got = sub.fetch(4, wait).await.expect("fetch");
        let took = start.elapsed();
        assert!(got.is_empty());
        assert!(
            took >= wait.mul_f32(0.9),
            "{wait:?} returned after {took:?}"
        );
        assert!(
            took < wait + Duration::from_secs(1),
            "{wait:?} returned after {took:?}"
        );
    }
    // A zero wait polls once.
    let start = Instant::now();
    assert!(
        sub.fetch(4, Duration::ZERO)
            .await
            .expect("fetch")
            .is_empty()
    );
    assert!(start.elapsed() < Duration::from_secs(1));
    f.cleanup().await;
}

#[tokio::test]
async fn a_job_arriving_during_fetch_is_returned_at_once() {
    let f = Fixture::new(Duration::from_secs(10)).await;
    let mut sub = f.jobs().await;
    let publisher = f.broker.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        publisher
            .publish(OutMessage::new(
                Destination::Job {
                    stage: STAGE.into(),
                },
                "late",
            ))
            .await
            .expect("publish");
    });
    let start = Instant::now();
    let d = one(sub.fetch(5, Duration::from_secs(5)).await.expect("fetch"));
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
    d.acker.ack().await.expect("ack");
    f.cleanup().await;
}

#[tokio::test]
async fn concurrent_publishes_all_land() {
    let f = Fixture::new(Duration::from_secs(10)).await;
    let publishes = (0..200).map(|i| {
        let b = f.broker.clone();
        tokio::spawn(async move {
            let mut m = OutMessage::new(
                Destination::Job {
                    stage: STAGE.into(),
                },
                format!("{i}"),
            );
            m.msg_id = Some(format!("job-{i}"));
            b.publish(m).await
        })
    });
    for p in futures::future::join_all(publishes).await {
        p.expect("task").expect("publish");
    }
    assert_eq!(f.depth().await, 200);
    f.cleanup().await;
}

#[tokio::test]
async fn declare_twice_is_fine() {
    let f = Fixture::new(Duration::from_secs(10)).await;
    f.broker.declare(&f.topo).await.expect("second declare");
    let other = broker().await;
    other
        .declare(&f.topo)
        .await
        .expect("declare from another connection");
    assert_eq!(f.broker.config_drift_count(), 0);
    assert_eq!(other.config_drift_count(), 0);
    other.close().await;
    f.cleanup().await;
}

/// A control stream made before cancellations expired (no `max_age`) gets one in place, so
/// kept cancellations stop living forever without deleting the stream.
#[tokio::test]
async fn control_stream_without_max_age_gets_one_in_place() {
    let topo = topology(Duration::from_secs(10), 5);
    let client = async_nats::connect(common::url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let name = topo.names.control_stream();
    js.create_stream(async_nats::jetstream::stream::Config {
        name: name.clone(),
        subjects: vec![format!("{}.control.>", topo.names.prefix())],
        max_messages_per_subject: 1,
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .expect("create an old control stream");
    let f = Fixture::declare(topo).await;
    assert_eq!(f.broker.config_drift_count(), 0, "updated, not drifted");
    let mut stream = js.get_stream(&name).await.expect("control stream");
    let info = stream.info().await.expect("stream info");
    assert_eq!(info.config.max_age, fleet_protocol::control::RETENTION);
    f.cleanup().await;
}

/// A dead-letter stream made before it had an age limit (it only grew) gets one in place,
/// without drift and without losing what it holds.
#[tokio::test]
async fn dlq_stream_without_max_age_gets_one_in_place() {
    let topo = topology(Duration::from_secs(10), 5);
    let client = async_nats::connect(common::url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let name = topo.names.dlq_stream();
    js.create_stream(async_nats::jetstream::stream::Config {
        name: name.clone(),
        subjects: vec![format!("{}.dlq.>", topo.names.prefix())],
        storage: async_nats::jetstream::stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .expect("create an old DLQ stream");
    js.publish(format!("{}.dlq.s", topo.names.prefix()), "kept".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    let f = Fixture::declare(topo).await;
    assert_eq!(f.broker.config_drift_count(), 0, "updated, not drifted");
    let mut stream = js.get_stream(&name).await.expect("DLQ stream");
    let info = stream.info().await.expect("stream info");
    assert_eq!(info.config.max_age, fleet_nats::topology::ARCHIVE_MAX_AGE);
    assert_eq!(info.state.messages, 1, "nothing lost");
    f.cleanup().await;
}

#[tokio::test]
async fn consumer_with_other_ack_wait_is_reported_not_fatal() {
    let f = Fixture::new(Duration::from_secs(2)).await;
    let mut changed = f.topo.clone();
    changed.ack_wait = Duration::from_secs(3);
    let other = broker().await;
    other
        .declare(&changed)
        .await
        .expect("declare with drift must not fail");
    assert!(other.config_drift_count() >= 1);
    // What the runtime exports as `fleet_broker_config_drift_total`.
    assert_eq!(Broker::config_drift(&other), other.config_drift_count());
    // nats-server 2.9.10 accepts the update in place.
    assert_eq!(
        f.jobs_consumer().await.config.ack_wait,
        Duration::from_secs(3)
    );
    f.publish_job("after drift").await;
    let mut sub = other
        .subscribe(
            Source::Jobs {
                stage: STAGE.into(),
            },
            SubscribeOptions { prefetch: 1 },
        )
        .await
        .expect("subscribe");
    let d = one(fetch_within(&mut sub, 1, Duration::from_secs(3)).await);
    assert_eq!(d.acker.lease(), Some(Duration::from_secs(3)));
    d.acker.ack().await.expect("ack");
    other.close().await;
    f.cleanup().await;
}

#[tokio::test]
async fn control_replays_the_last_message_per_pipeline_to_a_late_subscriber() {
    let f = Fixture::new(Duration::from_secs(10)).await;
    let cancel = |p: &str, body: &str| {
        OutMessage::new(
            Destination::Control {
                pipeline_id: p.into(),
            },
            body.to_owned(),
        )
    };
    f.broker
        .publish(cancel("p1", "p1-old"))
        .await
        .expect("publish");
    f.broker
        .publish(cancel("p1", "p1-new"))
        .await
        .expect("publish");
    f.broker.publish(cancel("p2", "p2")).await.expect("publish");
    assert_eq!(f.broker.depth(&Source::Control).await.expect("depth"), 2);

    let mut sub = f.sub(Source::Control).await;
    let mut bodies = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while bodies.len() < 2 && Instant::now() < deadline {
        for d in sub
            .fetch(10, Duration::from_millis(500))
            .await
            .expect("fetch")
        {
            assert_eq!(d.acker.lease(), None);
            bodies.push(String::from_utf8_lossy(&d.body).into_owned());
            d.acker.ack().await.expect("ack is a no-op");
        }
    }
    bodies.sort();
    assert_eq!(bodies, ["p1-new", "p2"]);

    f.broker.publish(cancel("p3", "p3")).await.expect("publish");
    let d = one(fetch_within(&mut sub, 10, Duration::from_secs(3)).await);
    assert_eq!(d.body, Bytes::from("p3"));
    f.cleanup().await;
}

#[tokio::test]
async fn events_and_submissions_reach_the_coordinator_consumers() {
    let f = Fixture::new(Duration::from_secs(10)).await;
    f.broker
        .publish(OutMessage::new(
            Destination::Events {
                stage: STAGE.into(),
            },
            "ev",
        ))
        .await
        .expect("publish event");
    f.broker
        .publish(OutMessage::new(Destination::Submit, "sub"))
        .await
        .expect("publish submit");
    f.broker
        .publish(OutMessage::new(
            Destination::Pipeline {
                state: "completed".into(),
            },
            "done",
        ))
        .await
        .expect("publish pipeline");
    assert_eq!(f.broker.depth(&Source::Events).await.expect("depth"), 1);
    assert_eq!(f.broker.depth(&Source::Submit).await.expect("depth"), 1);
    for (source, body) in [(Source::Events, "ev"), (Source::Submit, "sub")] {
        let mut sub = f.sub(source.clone()).await;
        let d = one(fetch_within(&mut sub, 10, Duration::from_secs(3)).await);
        assert_eq!(d.body, Bytes::from(body));
        d.acker.ack().await.expect("ack");
        assert_eq!(f.broker.depth(&source).await.expect("depth"), 0);
    }
    f.cleanup().await;
}

#[tokio::test]
async fn a_deleted_consumer_is_reported_by_fetch() {
    let f = Fixture::new(Duration::from_secs(10)).await;
    let mut sub = f.jobs().await;
    let stream = f
        .broker
        .jetstream()
        .get_stream_no_info(f.topo.names.jobs_stream())
        .await
        .expect("stream handle");
    // Deleted while a pull waits: the server ends it with 409 Consumer Deleted.
    let deleter = stream.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        deleter
            .delete_consumer(STAGE)
            .await
            .expect("delete consumer");
    });
    let err = sub
        .fetch(1, Duration::from_secs(3))
        .await
        .expect_err("fetch must fail");
    assert!(matches!(err, BrokerError::ConsumerCancelled(_)), "{err:?}");
    // Already gone when the pull starts: the server stays silent; fetch checks and reports.
    let start = Instant::now();
    let err = sub
        .fetch(1, Duration::from_millis(300))
        .await
        .expect_err("fetch must fail");
    assert!(matches!(err, BrokerError::ConsumerCancelled(_)), "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(5));
    // Subscribing again fails the same way until the topology is declared again.
    let err = f
        .broker
        .subscribe(
            Source::Jobs {
                stage: STAGE.into(),
            },
            SubscribeOptions { prefetch: 1 },
        )
        .await
        .err()
        .expect("subscribe must fail");
    assert!(matches!(err, BrokerError::ConsumerCancelled(_)), "{err:?}");
    f.broker.declare(&f.topo).await.expect("redeclare");
    f.jobs().await;
    f.cleanup().await;
}

#[tokio::test]
async fn publishing_without_a_stream_is_rejected() {
    let b = broker().await;
    b.set_names(Names::new(&format!(
        "nostream{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )));
    let err = b
        .publish(OutMessage::new(
            Destination::Job {
                stage: STAGE.into(),
            },
            "x",
        ))
        .await
        .expect_err("no stream");
    assert!(matches!(err, BrokerError::Rejected(_)), "{err:?}");
    let err = b
        .publish(OutMessage::new(
            Destination::Job {
                stage: "a.b".into(),
            },
            "x",
        ))
        .await
        .expect_err("bad stage");
    assert!(matches!(err, BrokerError::Rejected(_)), "{err:?}");
    b.close().await;
}

#[tokio::test]
async fn connection_state_reconnect_and_close() {
    let b = broker().await;
    assert!(b.is_connected());
    b.reconnect().await.expect("already connected");
    b.close().await;
    assert!(!b.is_connected());
    assert!(matches!(
        b.reconnect().await,
        Err(BrokerError::ConnectionLost(_))
    ));
    let err = connect("http://127.0.0.1:4222", options())
        .await
        .expect_err("bad scheme");
    assert!(matches!(err, BrokerError::Config(_)), "{err:?}");
    let err = connect("nats://127.0.0.1:1", options())
        .await
        .expect_err("nothing listens");
    assert!(matches!(err, BrokerError::ConnectionLost(_)), "{err:?}");
}
