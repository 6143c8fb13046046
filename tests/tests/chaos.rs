//! The short form of the fault campaign (issue 10; the full one is `fleet-chaos`, see
//! `docs/reliability.md`): on each broker, the "all at once" scenario on 100 mixed items —
//! the LLM hanging on 10 % of requests and failing 5 %, a random worker SIGKILLed every
//! 5 s and replaced, every broker connection cut for 20 s through a proxy, PostgreSQL
//! unreachable for 30 s for the writers and coordinators, 1 % poison items, and a
//! coordinator replica SIGKILLed and started again — and the end state asserted: every
//! item terminal, rows = succeeded items, no duplicates, dead letters = failed items,
//! in-flight back to 0, the pipeline finalized exactly once.
//!
//! Everything runs under a run-unique prefix and schema, behind the test's own proxies:
//! the shared broker and database are never restarted. The service binaries must be built
//! (`cargo build --workspace`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the failure report

use std::time::Duration;

use fleet_test_support::unique_prefix;
use fleet_tests::Backend;
use fleet_tests::chaos::{Options, Scenario, run_scenario, table};

async fn all_at_once(backend: Backend) {
    let mut o = Options::new(backend, Scenario::All);
    o.items = 100;
    o.bound = Duration::from_secs(200);
    o.outdir = std::env::temp_dir().join(unique_prefix("chaos-short"));
    let out = run_scenario(&o).await;
    let line = table::line(&out.row);
    eprintln!("{}\n{line}", table::header());
    let violations = out.row.violations();
    assert!(
        violations.is_empty(),
        "end-state violations: {violations:#?}\nrecording and logs: {}",
        o.outdir.display()
    );
    assert!(
        out.row.kills >= 2,
        "workers and a coordinator were killed: {line}"
    );
    let _ = std::fs::remove_dir_all(&o.outdir);
}

mod rabbitmq {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn all_at_once() {
        super::all_at_once(fleet_tests::Backend::Rabbit).await;
    }
}

mod nats {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn all_at_once() {
        super::all_at_once(fleet_tests::Backend::Nats).await;
    }
}
