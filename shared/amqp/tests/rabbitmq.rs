//! fleet-amqp's broker semantics against the real RabbitMQ at `FLEET_TEST_AMQP_URL`
//! (default `amqp://guest:guest@127.0.0.1:5672/%2f`): publish, fetch, ack, retry
//! ladder, release, dead letters, redelivery, declare, control fanout.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{SOON, STAGE, dead_letters, jobs, one, open, with_env, with_env_using};
use fleet_core::{
    Broker, BrokerError, Destination, OutMessage, Source, SubscribeOptions, Topology,
};
use fleet_protocol::{DeadLetterInfo, DeadLetterReason, ErrorKind, Names};
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_fetch_ack_leaves_queue_empty() {
    with_env(|env| async move {
        let mut msg = env.job("hello");
        msg.msg_id = Some("p/i/work".into());
        msg.headers = vec![("k".into(), "v".into())];
        env.broker.publish(msg).await.expect("publish");
        assert_eq!(env.depth(jobs()).await, 1);

        let mut sub = env.sub(jobs()).await;
        let d = one(&mut sub, SOON).await;
        assert_eq!((&d.body[..], d.attempt), (&b"hello"[..], 1));
        assert_eq!(d.header("k"), Some("v"));
        d.acker.ack().await.expect("ack");
        drop(sub);

        // Had the ack been lost, closing the channel would have put the message back
        // ahead of this marker.
        env.publish("marker").await;
        let mut sub = env.sub(jobs()).await;
        let d = one(&mut sub, SOON).await;
        assert_eq!(&d.body[..], b"marker");
        d.acker.ack().await.expect("ack marker");
        assert_eq!(env.depth(jobs()).await, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishers_and_acks() {
    with_env(|env| async move {
        const N: usize = 300;
        let publishers: Vec<_> = (0..N)
            .map(|i| {
                let (broker, msg) = (env.broker.clone(), env.job(&format!("m{i}")));
                tokio::spawn(async move { broker.publish(msg).await })
            })
            .collect();
        for p in publishers {
            p.await.expect("join").expect("publish");
        }
        let mut sub = env
            .broker
            .subscribe(jobs(), SubscribeOptions { prefetch: 100 })
            .await
            .expect("subscribe");
        let mut seen = HashSet::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while seen.len() < N {
            assert!(
                Instant::now() < deadline,
                "only {} of {N} delivered",
                seen.len()
            );
            let batch = sub.fetch(64, Duration::from_secs(2)).await.expect("fetch");
            let acks: Vec<_> = batch
                .into_iter()
                .map(|d| {
                    seen.insert(d.body.clone());
                    tokio::spawn(d.acker.ack())
                })
                .collect();
            for a in acks {
                a.await.expect("join").expect("ack");
            }
        }
        assert_eq!(env.depth(jobs()).await, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_right_after_acks_loses_none_of_them() {
    with_env(|env| async move {
        const N: usize = 200;
        for i in 0..N {
            env.publish(&format!("c{i}")).await;
        }
        let mut sub = env
            .broker
            .subscribe(jobs(), SubscribeOptions { prefetch: 256 })
            .await
            .expect("subscribe");
        let mut got = 0;
        let deadline = Instant::now() + Duration::from_secs(20);
        while got < N {
            assert!(Instant::now() < deadline, "only {got} of {N} delivered");
            for d in sub
                .fetch(N - got, Duration::from_secs(2))
                .await
                .expect("fetch")
            {
                d.acker.ack().await.expect("ack");
                got += 1;
            }
        }
        // Closing at once must not overtake the acks still on their way to the broker.
        sub.close().await;
        assert_eq!(env.depth(jobs()).await, 0, "every acked message is gone");
        let mut again = env.sub(jobs()).await;
        assert!(
            again
                .fetch(1, Duration::from_millis(300))
                .await
                .expect("fetch")
                .is_empty(),
            "nothing comes back"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_comes_back_after_the_ladder_step_with_attempt_2() {
    with_env(|env| async move {
        let mut msg = env.job("again");
        msg.msg_id = Some("id-1".into());
        msg.headers = vec![("k".into(), "v".into())];
        env.broker.publish(msg).await.expect("publish");
        let mut sub = env.sub(jobs()).await;
        let d = one(&mut sub, SOON).await;
        assert_eq!(d.attempt, 1);
        let start = Instant::now();
        let used = d
            .acker
            .retry(Duration::from_millis(300))
            .await
            .expect("retry");
        assert_eq!(
            used,
            Duration::from_secs(1),
            "below the first step: waits the first step"
        );

        let again = one(&mut sub, Duration::from_secs(10)).await;
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(950),
            "back after {waited:?}"
        );
        assert!(
            waited < Duration::from_secs(5),
            "back only after {waited:?}"
        );
        assert_eq!((&again.body[..], again.attempt), (&b"again"[..], 2));
        assert_eq!(again.header("k"), Some("v"));
        assert_eq!(again.header("fleet-attempt"), Some("1"));

        // A second retry counts on from the copy.
        again
            .acker
            .retry(Duration::from_secs(1))
            .await
            .expect("retry 2");
        let third = one(&mut sub, Duration::from_secs(10)).await;
        assert_eq!(third.attempt, 3);
        third.acker.ack().await.expect("ack");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_redelivers_with_attempt_2() {
    with_env(|env| async move {
        env.publish("back").await;
        let mut sub = env.sub(jobs()).await;
        let d = one(&mut sub, SOON).await;
        assert_eq!(d.attempt, 1);
        d.acker.release().await.expect("release");
        let again = one(&mut sub, SOON).await;
        assert_eq!((&again.body[..], again.attempt), (&b"back"[..], 2));
        assert_eq!(again.header("x-delivery-count"), Some("1"));
        again.acker.ack().await.expect("ack");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_keeps_body_and_gains_headers() {
    with_env(|env| async move {
        let mut msg = env.job("{\"broken\":true}");
        msg.headers = vec![("origin".into(), "test".into())];
        env.broker.publish(msg).await.expect("publish");
        let mut sub = env.sub(jobs()).await;
        let d = one(&mut sub, SOON).await;
        let info = DeadLetterInfo {
            reason: DeadLetterReason::PermanentError,
            last_error_kind: Some(ErrorKind::HandlerError),
            last_error: "cannot work".into(),
            attempts: d.attempt,
            stage: STAGE.into(),
            worker_id: "w-1".into(),
            at: chrono::Utc::now(),
            job_id: Some("p/i/work".into()),
        };
        d.acker.dead_letter(&info).await.expect("dead_letter");

        let mut dlq = env.sub(dead_letters()).await;
        let dead = one(&mut dlq, SOON).await;
        assert_eq!(&dead.body[..], b"{\"broken\":true}");
        assert_eq!(dead.header("origin"), Some("test"));
        // The job's attempts are in `fleet-attempts`; the dead letter's own deliveries (to the
        // archive) count from 1, so a failing archive parks it after its own attempts.
        assert_eq!(dead.header("fleet-attempt"), Some("0"));
        assert_eq!(dead.attempt, 1);
        let back = DeadLetterInfo::from_headers(|k| dead.header(k)).expect("dead-letter headers");
        assert_eq!(back.reason, DeadLetterReason::PermanentError);
        assert_eq!(back.last_error_kind, Some(ErrorKind::HandlerError));
        assert_eq!(
            (back.last_error.as_str(), back.attempts),
            ("cannot work", 1)
        );
        assert_eq!(back.stage, STAGE);
        assert_eq!(back.job_id.as_deref(), Some("p/i/work"));
        dead.acker.ack().await.expect("ack dead letter");
        assert_eq!(env.depth(jobs()).await, 0);
        assert_eq!(env.depth(dead_letters()).await, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_limit_backstop_dead_letters_with_a_marker() {
    with_env_using(
        |t| t.max_deliver = 1,
        |env| async move {
            env.publish("crashes every worker").await;
            let mut sub = env.sub(jobs()).await;
            // Limit 1: the first redelivery is allowed, the next return dead-letters it.
            for attempt in 1..=2 {
                let d = one(&mut sub, SOON).await;
                assert_eq!(d.attempt, attempt);
                d.acker.release().await.expect("release");
            }
            let mut dlq = env.sub(dead_letters()).await;
            let dead = one(&mut dlq, SOON).await;
            assert_eq!(&dead.body[..], b"crashes every worker");
            assert_eq!(dead.header("x-backstop"), Some("delivery-limit"));
            dead.acker.ack().await.expect("ack");
            assert!(
                sub.fetch(1, Duration::from_millis(100))
                    .await
                    .expect("fetch")
                    .is_empty()
            );
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_subscription_redelivers_with_higher_attempt() {
    with_env(|env| async move {
        env.publish("held").await;
        let mut sub = env.sub(jobs()).await;
        let held = one(&mut sub, SOON).await;
        assert_eq!(held.attempt, 1);
        drop(sub);

        let mut sub2 = env.sub(jobs()).await;
        let again = one(&mut sub2, SOON).await;
        assert_eq!((&again.body[..], again.attempt), (&b"held"[..], 2));
        // The first delivery's channel is gone: it cannot be settled any more.
        let err = held.acker.ack().await.expect_err("ack on a closed channel");
        assert!(matches!(err, BrokerError::ConnectionLost(_)), "{err}");
        again.acker.ack().await.expect("ack");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declare_twice_is_fine_and_a_conflict_is_a_config_error() {
    with_env(|env| async move {
        env.broker
            .declare(&env.topology)
            .await
            .expect("second declare");
        let mut changed = env.topology.clone();
        changed.max_deliver = 3;
        let err = env
            .broker
            .declare(&changed)
            .await
            .expect_err("conflicting declare");
        let BrokerError::Config(text) = &err else {
            panic!("not a config error: {err}")
        };
        let queue = env.topology.names.jobs(STAGE);
        assert!(text.contains(&queue), "names the queue: {text}");
        assert!(
            text.contains("delete") && text.contains("prefix"),
            "says what to do: {text}"
        );
        // The failed declare only cost its own channel.
        env.publish("still fine").await;
        assert_eq!(env.depth(jobs()).await, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_fanout_reaches_every_subscriber() {
    with_env(|env| async move {
        let mut a = env.sub(Source::Control).await;
        let mut b = env.sub(Source::Control).await;
        let cancel = OutMessage::new(
            Destination::Control {
                pipeline_id: "p-1".into(),
            },
            "p-1",
        );
        env.broker.publish(cancel).await.expect("publish control");
        for sub in [&mut a, &mut b] {
            let d = one(sub, SOON).await;
            assert_eq!(&d.body[..], b"p-1");
            d.acker.ack().await.expect("ack");
        }
        // A finalized pipeline with nobody listening is not an error.
        let done = OutMessage::new(
            Destination::Pipeline {
                state: "completed".into(),
            },
            "p-1",
        );
        env.broker.publish(done).await.expect("publish pipeline");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_and_undeclared_publishes_are_rejected() {
    with_env(|env| async move {
        let lost = OutMessage::new(
            Destination::Job {
                stage: "no-such-stage".into(),
            },
            "x",
        );
        let err = env
            .broker
            .publish(lost)
            .await
            .expect_err("no queue for that stage");
        assert!(matches!(err, BrokerError::Rejected(_)), "{err}");

        let other = open(&format!("{} (undeclared)", env.name)).await;
        other.use_topology(&Topology::new(Names::new("t-never-declared"), &[STAGE]));
        let err = other
            .publish(env.job("x"))
            .await
            .expect_err("exchange missing");
        assert!(
            matches!(err, BrokerError::Rejected(ref m) if m.contains("declare")),
            "{err}"
        );
        other.use_topology(&env.topology);
        other
            .publish(env.job("ok"))
            .await
            .expect("publish channel reopened");
        other.close().await;
        assert_eq!(env.depth(jobs()).await, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_queue_cancels_the_consumer() {
    with_env(|env| async move {
        let mut sub = env.sub(jobs()).await;
        assert!(
            sub.fetch(1, Duration::from_millis(50))
                .await
                .expect("fetch")
                .is_empty()
        );
        env.broker
            .delete_topology(&env.topology)
            .await
            .expect("delete");
        let deadline = Instant::now() + SOON;
        let err = loop {
            match sub.fetch(1, Duration::from_millis(200)).await {
                Err(e) => break e,
                Ok(got) => assert!(got.is_empty() && Instant::now() < deadline, "no cancel"),
            }
        };
        assert!(matches!(err, BrokerError::ConsumerCancelled(_)), "{err}");
        // It stays ended.
        assert!(sub.fetch(1, Duration::from_millis(10)).await.is_err());
    })
    .await;
}

#[test]
fn consumer_timeout_check_names_the_fix() {
    let min = Duration::from_secs(60);
    assert!(fleet_amqp::check_consumer_timeout(min * 10, min * 30, min).is_ok());
    let err = fleet_amqp::check_consumer_timeout(min * 30, min * 30, min).expect_err("too long");
    assert!(
        err.contains("consumer_timeout") && err.contains("rabbitmq.conf"),
        "{err}"
    );
}

/// Issue 9: a job waiting in a retry queue is not in the jobs queue's depth; `retrying` counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrying_counts_the_stage_retry_queues() {
    with_env(|env| async move {
        env.publish("a").await;
        env.publish("b").await;
        let mut sub = env.sub(jobs()).await;
        for _ in 0..2 {
            let d = one(&mut sub, SOON).await;
            d.acker
                .retry(Duration::from_secs(if d.body[..] == b"a"[..] {
                    30
                } else {
                    600
                }))
                .await
                .expect("retry");
        }
        assert_eq!(env.depth(jobs()).await, 0);
        assert_eq!(env.broker.retrying(STAGE).await.expect("retrying"), 2);
        assert_eq!(env.broker.retrying("other").await.expect("retrying"), 0);
        drop(sub);
    })
    .await;
}

/// `FLEET_QUORUM_GROUP_SIZE` is sent on every queue; a queue first declared with another
/// value (here: none) is refused with a message naming the setting and the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_group_size_is_set_and_a_change_is_explained() {
    with_env(|env| async move {
        let with_size = |size: u16| fleet_amqp::AmqpOptions {
            quorum_group_size: Some(size),
            ..common::options(&format!("{} (group {size})", env.name))
        };
        let url = fleet_test_support::amqp_url();
        let other = common::open_with(&url, with_size(3)).await;
        let err = other
            .declare(&env.topology)
            .await
            .expect_err("another replica count than the existing queues'");
        assert!(
            matches!(err, BrokerError::Config(ref m) if m.contains("FLEET_QUORUM_GROUP_SIZE")),
            "{err}"
        );
        other.close().await;
        // A fresh prefix declared with a size accepts the same size again.
        let mut fresh = env.topology.clone();
        fresh.names = Names::new(&fleet_test_support::unique_prefix("amqp-group"));
        for _ in 0..2 {
            let b = common::open_with(&url, with_size(3)).await;
            b.declare(&fresh).await.expect("declare with group size 3");
            b.close().await;
        }
        env.broker.delete_topology(&fresh).await.expect("delete");
    })
    .await;
}
