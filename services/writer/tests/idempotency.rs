//! First write wins: the same job written twice (in one batch, in two batches,
//! redelivered through RabbitMQ) leaves one row with the first content.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Schema, count_rows, result_payload, row_of, writer_config};
use fleet_protocol::JobEnvelope;
use fleet_store::params;
use fleet_test_support::wait_for;
use fleet_tests::{Backend, Env};
use fleet_writer::{WriteHandler, Writer};

fn job(item: &str, summary: &str) -> JobEnvelope {
    JobEnvelope::new(
        "p-idem",
        item,
        "write",
        result_payload("some text here.", summary),
    )
}

#[tokio::test]
async fn the_same_job_twice_in_one_batch_and_across_batches_keeps_the_first() {
    let schema = Schema::create("writer-idem").await;
    schema
        .store
        .migrate(
            fleet_writer::schema::COMPONENT,
            fleet_writer::schema::MIGRATIONS,
        )
        .await
        .unwrap();
    let h = WriteHandler::new(schema.store.clone(), "w-test");
    // Twice in one batch, plus another job: every job succeeds, one row each.
    let out = h
        .write_jobs(
            &[job("a", "first"), job("a", "second"), job("b", "only")],
            1,
        )
        .await;
    assert!(out.iter().all(Result::is_ok), "{out:?}");
    assert_eq!(
        row_of(&schema.store, "p-idem/a/write").await,
        (Some("first".into()), 1)
    );
    // Again in a later batch (a redelivery or a zombie attempt): still the first content.
    let out = h
        .write_jobs(&[job("a", "third"), job("b", "again")], 2)
        .await;
    assert!(out.iter().all(Result::is_ok), "{out:?}");
    assert_eq!(
        row_of(&schema.store, "p-idem/a/write").await,
        (Some("first".into()), 1)
    );
    assert_eq!(
        row_of(&schema.store, "p-idem/b/write").await,
        (Some("only".into()), 1)
    );
    assert_eq!(count_rows(&schema.store).await, 2);
    // The row answers "what happened to item a".
    let r = schema
        .store
        .query_one(
            "SELECT outcome, summary_provider, summary_fallback, attempts, worker_id, payload, analysis
             FROM fleet_results WHERE pipeline_id = $1 AND item_id = $2",
            params!["p-idem", "a"],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<String>("outcome").unwrap(), "complete");
    assert_eq!(r.get::<String>("summary_provider").unwrap(), "extractive");
    assert!(!r.get::<bool>("summary_fallback").unwrap());
    assert_eq!(r.get::<i64>("attempts").unwrap(), 1);
    assert_eq!(r.get::<String>("worker_id").unwrap(), "w-test");
    let payload: serde_json::Value = r.get("payload").unwrap();
    assert_eq!(payload["text"], "some text here.");
    assert!(payload.get("summary").is_none() && payload.get("analysis").is_none());
    let analysis: serde_json::Value = r.get("analysis").unwrap();
    assert!(
        analysis["chunks"][0].get("text").is_none(),
        "chunk texts are not stored twice"
    );
    schema.drop().await;
}

#[tokio::test]
async fn duplicates_through_rabbitmq_make_one_row_each() {
    let schema = Schema::create("writer-idem-rmq").await;
    let env = Env::new(Backend::Rabbit, "writer-idem").await;
    let cfg = writer_config(&env, Some(schema.url.clone()), "unused.sqlite".into());
    let writer = Writer::new(cfg).await.unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(writer.run(shutdown.clone()));

    // 20 items, each published twice back to back (duplicates in one batch or the next).
    for i in 0..20 {
        let item = format!("item-{i}");
        env.publish(&env.job(&item, result_payload("text.", "first")))
            .await;
        env.publish(&env.job(&item, result_payload("text.", "second")))
            .await;
    }
    wait_for("20 rows", Duration::from_secs(30), || async {
        count_rows(&schema.store).await == 20
    })
    .await;
    env.wait_empty(Duration::from_secs(30)).await;
    // Later redeliveries of items already written change nothing.
    for i in 0..5 {
        env.publish(&env.job(&format!("item-{i}"), result_payload("text.", "late")))
            .await;
    }
    env.wait_empty(Duration::from_secs(30)).await;
    for i in 0..20 {
        let job_id = env
            .job(&format!("item-{i}"), serde_json::Value::Null)
            .job_id;
        wait_for(
            &format!("a succeeded event for {job_id}"),
            Duration::from_secs(10),
            || async {
                env.job_events(&job_id)
                    .iter()
                    .filter(|e| fleet_tests::env::is_succeeded(e))
                    .count()
                    >= if i < 5 { 3 } else { 2 }
            },
        )
        .await;
        assert_eq!(
            row_of(&schema.store, &job_id).await,
            (Some("first".into()), 1),
            "{job_id}"
        );
    }
    assert_eq!(count_rows(&schema.store).await, 20);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    env.cleanup().await;
    schema.drop().await;
}
