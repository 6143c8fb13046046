//! A hung database (every byte blackholed) through a fault proxy, with the writer
//! on the in-process broker so the held backlog can be inspected: intake pauses,
//! nothing is acked or lost, every job lands exactly once after it returns.

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_hung_then_restored_on_memory_broker() {
    common::outage(
        fleet_tests::Backend::Memory,
        common::Fault::Blackhole,
        "writer-outage-mem",
    )
    .await;
}
