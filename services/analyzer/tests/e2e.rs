//! End to end on the real brokers: `fleet_analyzer::run` consumes analyze jobs
//! routed to `[summarize]`; every job yields exactly one summarize job with
//! its analysis (built-in and a command analyzer, plus a failing optional
//! one), and the analyze queue ends empty.

use std::collections::HashMap;
use std::time::Duration;

use clap::Parser;
use fleet_analyzer::Config;
use fleet_core::{Destination, OutMessage, Source, SubscribeOptions, Topology};
use fleet_protocol::{
    Degradation, DegradationKind, EventBatch, EventKind, JobEnvelope, Names, RouteStep, decode_job,
};
use fleet_test_support::{amqp_url, nats_url, unique_prefix, wait_for};
use tokio_util::sync::CancellationToken;

const ITEMS: usize = 6;

const ANALYZERS: &str = r#"
[[analyzer]]
name = "word_count"
program = "wc"
args = ["-w"]
timeout = "5s"

[[analyzer]]
name = "broken"
program = "sh"
args = ["-c", "echo bad >&2; exit 2"]
timeout = "5s"
"#;

async fn end_to_end(url: &str, tag: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    let prefix = unique_prefix(tag);
    let analyzers = std::env::temp_dir().join(format!("{prefix}-analyzers.toml"));
    std::fs::write(&analyzers, ANALYZERS).expect("write analyzers config");
    let config = Config::try_parse_from([
        "fleet-analyzer".to_owned(),
        format!("--broker-url={url}"),
        format!("--prefix={prefix}"),
        "--admin-addr=127.0.0.1:0".into(),
        "--ack-wait=5s".into(),
        "--broker-heartbeat=2s".into(),
        "--heartbeat-interval=1s".into(),
        // No coordinator here: nothing would ever sync the cancellations on RabbitMQ.
        "--control-sync-wait=0s".into(),
        "--drain-deadline=5s".into(),
        "--concurrency=3".into(),
        format!("--analyzers-config={}", analyzers.display()),
    ])
    .expect("config parses");

    let control = fleet_runtime::connect::connect(&config.runtime)
        .await
        .unwrap_or_else(|e| panic!("cannot reach the broker at {url}: {e}"));
    let topology = Topology::new(Names::new(&prefix), &["analyze", "summarize"]);
    control.declare(&topology).await.expect("declare");

    let shutdown = CancellationToken::new();
    let service = tokio::spawn(fleet_analyzer::run(config, shutdown.clone()));

    let pipeline = format!("{prefix}-p");
    for i in 0..ITEMS {
        let text = format!(
            "Item number {i} talks about message queues. The consumer fleet reads jobs from the queue. \
             Each job has a deadline.\n\nA second paragraph closes item {i}."
        );
        let mut job = JobEnvelope::new(
            &pipeline,
            &format!("item-{i}"),
            "analyze",
            // Item 0 says it is Markdown (the same prose): the analyzer reads it by that type.
            if i == 0 {
                serde_json::json!({"text": text, "metadata": {"n": i, "media_type": "text/markdown"}})
            } else {
                serde_json::json!({"text": text, "metadata": {"n": i}})
            },
        );
        job.route = vec![RouteStep {
            stage: "summarize".into(),
            required: true,
        }];
        job.timeout_ms = 20_000;
        control
            .publish(OutMessage::new(
                Destination::Job {
                    stage: "analyze".into(),
                },
                job.to_bytes(),
            ))
            .await
            .expect("publish");
    }

    let mut sub = control
        .subscribe(
            Source::Jobs {
                stage: "summarize".into(),
            },
            SubscribeOptions { prefetch: 32 },
        )
        .await
        .expect("subscribe summarize");
    let mut seen: HashMap<String, serde_json::Value> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < ITEMS && tokio::time::Instant::now() < deadline {
        for d in sub
            .fetch(ITEMS, Duration::from_millis(500))
            .await
            .expect("fetch")
        {
            let job = decode_job(&d.body, 1 << 22).expect("a summarize job");
            assert_eq!(job.stage, "summarize");
            assert!(job.route.is_empty());
            assert!(
                seen.insert(job.item_id.clone(), job.payload).is_none(),
                "duplicate summarize job"
            );
            d.acker.ack().await.expect("ack");
        }
    }
    assert_eq!(
        seen.len(),
        ITEMS,
        "every analyze job produced a summarize job"
    );
    let extra = sub
        .fetch(16, Duration::from_millis(700))
        .await
        .expect("fetch");
    assert!(extra.is_empty(), "{} extra summarize jobs", extra.len());

    for (item, p) in &seen {
        let a = &p["analysis"];
        let n: usize = item
            .trim_start_matches("item-")
            .parse()
            .expect("item number");
        assert_eq!(p["metadata"]["n"], n, "metadata kept");
        assert!(
            p["text"]
                .as_str()
                .is_some_and(|t| t.contains("message queues"))
        );
        assert_eq!(a["language"], "en", "{a}");
        if n == 0 {
            assert_eq!(a["media_type"], "text/markdown", "{a}");
            assert_eq!(a["skipped"]["code_blocks"], 0, "{a}");
        } else {
            assert_eq!(a["media_type"], "text/plain", "{a}");
            assert!(
                a.get("skipped").is_none() && a.get("outline").is_none(),
                "{a}"
            );
        }
        assert_eq!(a["sentences"], 4, "{a}");
        assert!(a["words"].as_u64().unwrap_or(0) > 20, "{a}");
        assert!(!a["keywords"].as_array().expect("keywords").is_empty());
        assert_eq!(a["chunks"].as_array().expect("chunks").len(), 1);
        assert_eq!(a["analyzers"]["word_count"]["ok"], true, "{a}");
        assert_eq!(a["analyzers"]["word_count"]["output"], a["words"], "{a}");
        assert_eq!(a["analyzers"]["broken"]["exit_code"], 2);
        assert_eq!(a["analyzers"]["broken"]["stderr_tail"], "bad\n");
        assert_eq!(a["failed_analyzers"], serde_json::json!(["broken"]));
    }

    // Every analyze job's `succeeded` event says the item is degraded and names the analyzer.
    let mut events = control
        .subscribe(Source::Events, SubscribeOptions { prefetch: 64 })
        .await
        .expect("subscribe events");
    let mut degraded: HashMap<String, Option<Degradation>> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while degraded.len() < ITEMS && tokio::time::Instant::now() < deadline {
        for d in events
            .fetch(64, Duration::from_millis(500))
            .await
            .expect("fetch events")
        {
            let batch: EventBatch = serde_json::from_slice(&d.body).expect("an event batch");
            for e in batch.events {
                if e.kind == EventKind::Succeeded {
                    degraded.insert(e.job_id, e.degraded);
                }
            }
            d.acker.ack().await.expect("ack");
        }
    }
    assert_eq!(degraded.len(), ITEMS, "a succeeded event per job");
    for (job, note) in &degraded {
        let note = note
            .clone()
            .unwrap_or_else(|| panic!("{job} is not marked degraded"));
        assert_eq!(note.kind, DegradationKind::AnalyzersFailed, "{job}");
        assert_eq!(note.detail, "broken", "{job}");
    }
    drop(events);

    wait_for(
        "the analyze queue to be empty",
        Duration::from_secs(10),
        || async {
            control
                .depth(&Source::Jobs {
                    stage: "analyze".into(),
                })
                .await
                .ok()
                == Some(0)
        },
    )
    .await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), service)
        .await
        .expect("the service drains")
        .expect("join")
        .expect("run() returns Ok after shutdown");
    drop(sub);
    let _ = control.delete_topology(&topology).await;
    control.close().await;
    let _ = std::fs::remove_file(analyzers);
}

#[tokio::test]
async fn end_to_end_rabbitmq() {
    end_to_end(&amqp_url(), "analyzer-e2e-amqp").await;
}

#[tokio::test]
async fn end_to_end_nats() {
    end_to_end(&nats_url(), "analyzer-e2e-nats").await;
}
