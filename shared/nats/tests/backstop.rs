//! The `max_deliver` backstop against the real nats-server (JetStream) at `FLEET_TEST_NATS_URL`
//! (default `nats://127.0.0.1:4222`): a job the server gives up on reaches the stage's DLQ
//! through its `MAX_DELIVERIES` advisory, once, with the dead-letter headers, and leaves the
//! jobs stream. These tests fail, never skip, when the server is unreachable; each uses its own
//! random prefix and deletes its streams at the end.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::time::{Duration, Instant};

use bytes::Bytes;
use fleet_core::{Broker, Delivery, Destination, OutMessage, Source, Subscription};
use fleet_nats::backstop::{BACKSTOP_HEADER, BACKSTOP_VALUE};
use fleet_nats::topology::max_deliveries_subject;
use fleet_protocol::deadletter::headers;
use fleet_protocol::{DeadLetterInfo, DeadLetterReason, ErrorKind, JobEnvelope};

mod common;

use common::{Fixture, STAGE, topology};

const T: Duration = Duration::from_secs(15);

impl Fixture {
    /// A topology whose jobs are given up on after 2 deliveries.
    async fn new() -> Fixture {
        Fixture::declare(topology(Duration::from_secs(10), 2)).await
    }

    async fn dlq(&self) -> Box<dyn Subscription> {
        self.sub(Source::DeadLetters {
            stage: STAGE.into(),
        })
        .await
    }

    /// Publishes a job envelope with an extra header; returns its body.
    async fn publish_job(&self, item: &str) -> Bytes {
        let job = JobEnvelope::new("p", item, STAGE, serde_json::json!({"n": 1}));
        let body = Bytes::from(job.to_bytes());
        let mut msg = OutMessage::new(
            Destination::Job {
                stage: STAGE.into(),
            },
            body.clone(),
        );
        msg.headers = vec![("x-orig".into(), "kept".into())];
        msg.msg_id = Some(job.job_id.clone());
        self.broker.publish(msg).await.expect("publish job");
        body
    }

    /// Messages stored in a stream of this topology.
    async fn stored(&self, stream: &str) -> u64 {
        self.broker
            .jetstream()
            .get_stream(stream)
            .await
            .expect("stream")
            .cached_info()
            .state
            .messages
    }

    /// Publishes an advisory as the server would (a repeat, or one for a crafted case).
    async fn advisory(&self, seq: u64, deliveries: u64, timestamp: &str) {
        let body = serde_json::json!({
            "type": "io.nats.jetstream.advisory.v1.max_deliver",
            "id": uuid::Uuid::new_v4().simple().to_string(),
            "timestamp": timestamp,
            "stream": self.topo.names.jobs_stream(),
            "consumer": STAGE,
            "stream_seq": seq,
            "deliveries": deliveries,
        });
        self.broker
            .jetstream()
            .publish(
                max_deliveries_subject(&self.topo.names, STAGE),
                body.to_string().into(),
            )
            .await
            .expect("publish advisory")
            .await
            .expect("advisory stored");
    }

    /// Fetches from `dlq` (which drains the advisories) until `done` holds; returns every
    /// dead letter fetched meanwhile, acked.
    async fn drain_until<F, Fut>(
        &self,
        dlq: &mut Box<dyn Subscription>,
        what: &str,
        mut done: F,
    ) -> Vec<(Bytes, Vec<(String, String)>)>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + T;
        let mut got = Vec::new();
        loop {
            for d in dlq
                .fetch(10, Duration::from_millis(300))
                .await
                .expect("fetch")
            {
                got.push((d.body.clone(), d.headers.clone()));
                d.acker.ack().await.expect("ack dead letter");
            }
            if done().await {
                return got;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
        }
    }
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

async fn fetch_one(sub: &mut Box<dyn Subscription>) -> Delivery {
    let deadline = Instant::now() + T;
    loop {
        let mut got = sub
            .fetch(1, Duration::from_millis(500))
            .await
            .expect("fetch");
        if let Some(d) = got.pop() {
            return d;
        }
        assert!(Instant::now() < deadline, "no delivery within {T:?}");
    }
}

#[tokio::test]
async fn a_job_reaching_max_deliver_lands_in_the_dlq_once_and_leaves_the_jobs_stream() {
    let f = Fixture::new().await;
    let names = f.topo.names.clone();
    let body = f.publish_job("a").await;
    let mut jobs = f
        .sub(Source::Jobs {
            stage: STAGE.into(),
        })
        .await;
    // Two deliveries that never report an outcome (as a worker killed on each attempt).
    for attempt in 1..=2 {
        let d = fetch_one(&mut jobs).await;
        assert_eq!(d.attempt, attempt);
        d.acker.release().await.expect("release");
    }
    // The next pull makes the server give up: nothing is delivered, an advisory is raised.
    assert!(
        jobs.fetch(1, Duration::from_millis(500))
            .await
            .expect("fetch")
            .is_empty()
    );
    assert_eq!(f.stored(&names.jobs_stream()).await, 1, "still stored");

    let mut dlq = f.dlq().await;
    let got = f
        .drain_until(&mut dlq, "the job to leave the jobs stream", || async {
            f.stored(&names.jobs_stream()).await == 0
                && f.stored(&names.backstop_stream()).await == 0
        })
        .await;
    // And nothing more arrives afterwards.
    let mut more = Vec::new();
    let settle = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < settle {
        for d in dlq
            .fetch(10, Duration::from_millis(300))
            .await
            .expect("fetch")
        {
            more.push(d.body.clone());
            d.acker.ack().await.expect("ack");
        }
    }
    let all: Vec<_> = got
        .into_iter()
        .chain(more.into_iter().map(|b| (b, Vec::new())))
        .collect();
    assert_eq!(all.len(), 1, "exactly one dead letter");
    let (dead_body, h) = &all[0];
    assert_eq!(dead_body, &body, "body unchanged");
    assert_eq!(header(h, headers::REASON), Some("poison"));
    assert_eq!(header(h, headers::LAST_ERROR_KIND), Some("lost"));
    assert_eq!(header(h, headers::ATTEMPTS), Some("2"));
    assert_eq!(header(h, headers::STAGE), Some(STAGE));
    assert_eq!(header(h, headers::JOB_ID), Some("p/a/s"));
    assert_eq!(header(h, BACKSTOP_HEADER), Some(BACKSTOP_VALUE));
    assert_eq!(header(h, "x-orig"), Some("kept"));
    let msg_id = format!("dlq-{}-1", names.jobs_stream());
    assert_eq!(header(h, "Nats-Msg-Id"), Some(msg_id.as_str()));
    let info = DeadLetterInfo::from_headers(|k| header(h, k)).expect("dead-letter headers");
    assert_eq!(info.reason, DeadLetterReason::Poison);
    assert_eq!(info.last_error_kind, Some(ErrorKind::Lost));
    assert!(
        info.last_error.contains("max_deliver"),
        "{}",
        info.last_error
    );
    assert_eq!(f.stored(&names.dlq_stream()).await, 1);

    // The same advisory again (redelivered after a crash before its ack): the job is gone, so it
    // is acked and nothing is dead-lettered twice.
    f.advisory(1, 2, &chrono::Utc::now().to_rfc3339()).await;
    let again = f
        .drain_until(&mut dlq, "the repeated advisory to be acked", || async {
            f.stored(&names.backstop_stream()).await == 0
        })
        .await;
    assert!(again.is_empty(), "a repeat dead-letters nothing");
    assert_eq!(f.stored(&names.dlq_stream()).await, 1);

    // Deleting the topology deletes the advisory stream too.
    f.broker
        .delete_topology(&f.topo)
        .await
        .expect("delete_topology");
    assert!(
        f.broker
            .jetstream()
            .get_stream(names.backstop_stream())
            .await
            .is_err(),
        "{} deleted",
        names.backstop_stream()
    );
    f.cleanup().await;
}

#[tokio::test]
async fn repeated_and_stale_advisories_dead_letter_a_job_at_most_once() {
    let f = Fixture::new().await;
    let names = f.topo.names.clone();
    let body = f.publish_job("b").await;
    let mut dlq = f.dlq().await;

    // An advisory raised before the message at its sequence was stored (the jobs stream was
    // recreated since) is dropped: the job stays.
    f.advisory(1, 2, "2001-01-01T00:00:00Z").await;
    let stale = f
        .drain_until(&mut dlq, "the stale advisory to be acked", || async {
            f.stored(&names.backstop_stream()).await == 0
        })
        .await;
    assert!(stale.is_empty());
    assert_eq!(f.stored(&names.jobs_stream()).await, 1, "the job stays");

    // A crash after publishing the DLQ copy, before deleting the job: the copy is there, the
    // advisory comes again (twice here). The de-duplication id keeps one copy.
    let mut earlier = OutMessage::new(
        Destination::DeadLetter {
            stage: STAGE.into(),
        },
        body.clone(),
    );
    earlier.msg_id = Some(format!("dlq-{}-1", names.jobs_stream()));
    f.broker.publish(earlier).await.expect("earlier copy");
    let now = chrono::Utc::now().to_rfc3339();
    f.advisory(1, 3, &now).await;
    f.advisory(1, 3, &now).await;
    let got = f
        .drain_until(&mut dlq, "the advisories to be handled", || async {
            f.stored(&names.backstop_stream()).await == 0
                && f.stored(&names.jobs_stream()).await == 0
        })
        .await;
    assert_eq!(f.stored(&names.dlq_stream()).await, 1, "one copy");
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, body);

    // An advisory for a sequence that never existed is acked and ignored.
    f.advisory(999, 2, &chrono::Utc::now().to_rfc3339()).await;
    let none = f
        .drain_until(&mut dlq, "the unknown advisory to be acked", || async {
            f.stored(&names.backstop_stream()).await == 0
        })
        .await;
    assert!(none.is_empty());
    f.cleanup().await;
}
