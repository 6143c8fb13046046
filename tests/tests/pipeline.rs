//! Cross-service test: a few dozen items through the real analyzer, summarizer and
//! writer services (their `run` functions, each with its own broker connection) on
//! RabbitMQ and on NATS, writing to PostgreSQL. End state: exactly one row per item,
//! non-empty summaries, every stage queue empty, no dead letters.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use clap::Parser;
use fleet_core::{Destination, OutMessage, Source, SubscribeOptions, Topology};
use fleet_protocol::{JobEnvelope, Names, RouteStep};
use fleet_store::{Store, StoreOptions};
use fleet_test_support::{postgres_url, unique_prefix, wait_for};
use fleet_tests::Backend;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const ITEMS: usize = 36;
const STAGES: [&str; 3] = ["analyze", "summarize", "write"];

fn text(i: usize) -> String {
    let para = "Queues decouple producers from consumers. A worker that hangs must not wedge the pool. \
                Deadlines cut every attempt, and retries come back later with backoff. ";
    format!("Item {i}. {}", para.repeat(1 + i % 7))
}

async fn items_through_all_services(backend: Backend) {
    let prefix = unique_prefix("pipe");
    let url = match backend {
        Backend::Rabbit => fleet_test_support::amqp_url(),
        Backend::Nats => fleet_test_support::nats_url(),
        Backend::Memory => unreachable!("the cross-service test runs on real brokers"),
    };
    let schema = prefix.replace('-', "_");
    let admin = Store::connect(
        Some(&postgres_url()),
        "unused.sqlite".as_ref(),
        StoreOptions::default(),
    )
    .await
    .expect("PostgreSQL must be reachable at FLEET_TEST_DATABASE_URL");
    admin
        .execute(&format!("CREATE SCHEMA {schema}"), &[])
        .await
        .unwrap();
    let db_url = fleet_store::pg_url_with_schema(&postgres_url(), &schema);

    let common = |stage: &str| {
        vec![
            format!("fleet-{stage}"),
            format!("--broker-url={url}"),
            format!("--prefix={prefix}"),
            "--admin-addr=127.0.0.1:0".to_owned(),
            "--heartbeat-interval=1s".to_owned(),
            // No coordinator here: nothing would ever sync the cancellations on RabbitMQ.
            "--control-sync-wait=0s".to_owned(),
            "--ack-wait=10s".to_owned(),
            "--drain-deadline=5s".to_owned(),
        ]
    };
    let shutdown = CancellationToken::new();
    let analyzer = fleet_analyzer::Config::try_parse_from(common("analyzer")).unwrap();
    let summarizer = fleet_summarizer::Config::try_parse_from(common("summarizer")).unwrap();
    let mut w = common("writer");
    w.push(format!("--database-url={db_url}"));
    w.push("--batch-size=8".into());
    let writer = fleet_writer::Config::try_parse_from(w).unwrap();
    let tasks = vec![
        tokio::spawn(fleet_analyzer::run(analyzer, shutdown.clone())),
        tokio::spawn(fleet_summarizer::run(summarizer, shutdown.clone())),
        tokio::spawn(fleet_writer::run(writer, shutdown.clone())),
    ];

    // The test's own connection publishes the first jobs, like the coordinator's outbox.
    let cfg =
        fleet_runtime::RuntimeConfig::parse_from(["t", &format!("--broker-url={url}")]).unwrap();
    let broker = fleet_runtime::connect::connect(&cfg)
        .await
        .expect("broker reachable");
    let mut topology = Topology::new(Names::new(&prefix), &STAGES);
    topology.ack_wait = Duration::from_secs(10);
    broker.declare(&topology).await.unwrap();
    let pipeline = format!("{prefix}-p");
    for i in 0..ITEMS {
        let mut job = JobEnvelope::new(
            &pipeline,
            &format!("item-{i:02}"),
            "analyze",
            json!({"text": text(i), "metadata": {"n": i}}),
        );
        job.route = vec![
            RouteStep {
                stage: "summarize".into(),
                required: true,
            },
            RouteStep {
                stage: "write".into(),
                required: true,
            },
        ];
        job.timeout_ms = 30_000;
        let msg = OutMessage {
            msg_id: Some(job.job_id.clone()),
            ..OutMessage::new(
                Destination::Job {
                    stage: "analyze".into(),
                },
                job.to_bytes(),
            )
        };
        broker.publish(msg).await.unwrap();
    }

    // One store for the whole wait, and every poll says where the items are, so a
    // timeout names the stage that stalled; a service that ended early fails at once.
    let db = admin_in(&db_url).await;
    let count_sql = "SELECT COUNT(*) FROM fleet_results WHERE pipeline_id = $1";
    wait_for("every item written", Duration::from_secs(120), || async {
        if let Some(i) = tasks.iter().position(|t| t.is_finished()) {
            panic!("service {} ended before the items were written", STAGES[i]);
        }
        let written = match db.query_one(count_sql, &[pipeline.clone().into()]).await {
            Ok(row) => row.get::<i64>(0).unwrap_or(-1),
            Err(e) => return Err(format!("count query failed: {e:#}")),
        };
        if written == ITEMS as i64 {
            return Ok(());
        }
        let mut depths = Vec::new();
        for stage in STAGES {
            let src = Source::Jobs {
                stage: stage.into(),
            };
            depths.push(format!("{stage}={:?}", broker.depth(&src).await.ok()));
        }
        Err(format!(
            "{written} of {ITEMS} rows; queue depths {}",
            depths.join(" ")
        ))
    })
    .await;
    let rows = db
        .query("SELECT item_id, summary, COUNT(*) OVER (PARTITION BY item_id) FROM fleet_results WHERE pipeline_id = $1", &[pipeline.clone().into()])
        .await
        .unwrap();
    assert_eq!(rows.len(), ITEMS, "exactly one row per item");
    for r in &rows {
        assert_eq!(r.get::<i64>(2).unwrap(), 1, "no duplicate rows");
        let summary: String = r.get(1).unwrap();
        assert!(
            !summary.trim().is_empty(),
            "summary of {} is empty",
            r.get::<String>(0).unwrap()
        );
    }
    for stage in STAGES {
        let depth = broker
            .depth(&Source::Jobs {
                stage: stage.into(),
            })
            .await
            .unwrap();
        assert_eq!(depth, 0, "stage {stage} queue is empty");
        let mut dlq = broker
            .subscribe(
                Source::DeadLetters {
                    stage: stage.into(),
                },
                SubscribeOptions { prefetch: 4 },
            )
            .await
            .unwrap();
        assert!(
            dlq.fetch(4, Duration::from_millis(300))
                .await
                .unwrap()
                .is_empty(),
            "no dead letters on {stage}"
        );
    }

    shutdown.cancel();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("service drained in time")
            .unwrap()
            .expect("service exited cleanly");
    }
    let _ = broker.delete_topology(&topology).await;
    broker.close().await;
    admin
        .execute(&format!("DROP SCHEMA {schema} CASCADE"), &[])
        .await
        .unwrap();
}

async fn admin_in(url: &str) -> Store {
    Store::connect(Some(url), "unused.sqlite".as_ref(), StoreOptions::default())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_items_through_all_services() {
    items_through_all_services(Backend::Rabbit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_items_through_all_services() {
    items_through_all_services(Backend::Nats).await;
}
