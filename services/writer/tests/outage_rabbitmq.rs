//! A database outage (connections reset, new ones refused) through a fault proxy,
//! with the writer consuming from RabbitMQ: intake pauses, nothing is acked or lost,
//! and every job lands exactly once after the database returns.

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_refused_then_restored_on_rabbitmq() {
    common::outage(
        fleet_tests::Backend::Rabbit,
        common::Fault::Refuse,
        "writer-outage-rmq",
    )
    .await;
}
