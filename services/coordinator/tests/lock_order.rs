//! The store's lock order on PostgreSQL: many concurrent event-ingestion transactions (each
//! applying several batches over the same pipelines, in different orders) and sweeps (stall
//! churn on overdue jobs, then finalization) over the same pipelines never deadlock (`40P01`),
//! and every pipeline still ends `completed`.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use fleet_coordinator::ingest::{IngestCtx, apply_batches};
use fleet_coordinator::plan::{PlanLimits, plan};
use fleet_coordinator::submit::store_pipeline;
use fleet_coordinator::sweeper::{SweepConfig, sweep_once};
use fleet_coordinator::{model, schema};
use fleet_protocol::{Event, EventBatch, EventKind, RouteStep, Submission, SubmitItem};
use fleet_store::{Store, StoreError, StoreOptions, params};
use fleet_test_support::{unique_prefix, wait_for};

const PIPELINES: usize = 8;
const ITEMS: usize = 3;
const ROUNDS: usize = 3;
const INGESTERS: usize = 4;
const FETCHES: u32 = 6;
const STAGE: &str = "analyze";

/// Counts errors by kind: deadlocks apart from anything else.
#[derive(Default)]
struct Errors {
    deadlocks: AtomicU64,
    other: AtomicU64,
}

impl Errors {
    fn record(&self, what: &str, e: &StoreError) {
        if e.code() == Some("40P01") {
            eprintln!("{what}: {e}");
            self.deadlocks.fetch_add(1, Ordering::SeqCst);
        } else {
            eprintln!("{what} failed otherwise: {e}");
            self.other.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A small deterministic shuffle (no dependency needed for a test's order).
fn shuffled<T: Clone>(v: &[T], seed: u64) -> Vec<T> {
    let mut out = v.to_vec();
    let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    for i in (1..out.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.swap(i, (x % (i as u64 + 1)) as usize);
    }
    out
}

fn event(pid: &str, item: &str, attempt: u32, seq: u32, kind: EventKind) -> Event {
    Event {
        job_id: fleet_protocol::job_id(pid, item, STAGE),
        pipeline_id: pid.into(),
        stage: STAGE.into(),
        attempt,
        seq,
        worker_id: "w-lock-order".into(),
        at: Utc::now(),
        kind,
        degraded: None,
    }
}

/// One fetch of an ingester: three batches, each over every job in its own order, so the
/// batches of one transaction touch the same pipelines in different orders.
fn fetch(pids: &[String], seed: u64, attempt: u32, last: bool) -> Vec<EventBatch> {
    let jobs: Vec<(String, String)> = pids
        .iter()
        .flat_map(|p| (0..ITEMS).map(move |i| (p.clone(), format!("i{i}"))))
        .collect();
    (0..3u64)
        .map(|b| {
            let events = shuffled(&jobs, seed * 7 + b)
                .into_iter()
                .map(|(p, i)| match (last, b) {
                    (true, _) => event(&p, &i, 100, 1, EventKind::Succeeded),
                    (false, 0) => event(&p, &i, attempt, 0, EventKind::Started),
                    (false, _) => event(
                        &p,
                        &i,
                        attempt,
                        b as u32,
                        EventKind::Progress {
                            done: b,
                            total: Some(3),
                            note: String::new(),
                        },
                    ),
                })
                .collect();
            EventBatch {
                v: 1,
                worker_id: "w-lock-order".into(),
                stage: STAGE.into(),
                events,
                heartbeat: None,
            }
        })
        .collect()
}

async fn ingest(store: &Store, batches: &[EventBatch], ctx: &IngestCtx) -> Result<(), StoreError> {
    let refs: Vec<&EventBatch> = batches.iter().collect();
    let mut tx = store.begin().await?;
    apply_batches(&mut tx, &refs, ctx, model::now_ms()).await?;
    tx.commit().await
}

async fn create_round(store: &Store, round: usize) -> Vec<String> {
    let limits = PlanLimits {
        default_route: vec![RouteStep {
            stage: STAGE.into(),
            required: true,
        }],
        default_timeout_ms: 60_000,
        default_max_attempts: 200,
        max_item_bytes: 1 << 20,
    };
    let mut pids = Vec::new();
    for p in 0..PIPELINES {
        let pid = format!("r{round}-p{p}");
        let sub = Submission {
            v: 1,
            pipeline_id: Some(pid.clone()),
            items: (0..ITEMS)
                .map(|i| SubmitItem {
                    item_id: format!("i{i}"),
                    text: "x".into(),
                    metadata: serde_json::Value::Null,
                })
                .collect(),
            route: None,
            stages: BTreeMap::new(),
            deadline_at: None,
            replay_of: None,
            open: false,
        };
        store_pipeline(store, &plan(&sub, None, &limits).unwrap())
            .await
            .unwrap();
        pids.push(pid);
    }
    // Past the deadline (the grace keeps them running): every open job is `overdue`, so each
    // sweep rewrites the stall marks that each event clears.
    store
        .execute(
            "UPDATE coord_pipelines SET deadline_at = $1 WHERE pipeline_id LIKE $2",
            params![model::now_ms() - 1000, format!("r{round}-%")],
        )
        .await
        .unwrap();
    pids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_ingestion_and_sweeps_never_deadlock() {
    let base = fleet_test_support::postgres_url();
    let schema_name = unique_prefix("lockorder").replace('-', "_");
    let admin = Store::connect(
        Some(&base),
        std::path::Path::new(""),
        StoreOptions::default(),
    )
    .await
    .unwrap();
    admin
        .execute(&format!("CREATE SCHEMA {schema_name}"), &[])
        .await
        .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {base}: {e}"));
    let opts = StoreOptions {
        pool_size: INGESTERS + 4,
        ..StoreOptions::default()
    };
    let store = Store::connect(
        Some(&fleet_store::pg_url_with_schema(&base, &schema_name)),
        std::path::Path::new(""),
        opts,
    )
    .await
    .unwrap();
    store
        .migrate(schema::COMPONENT, schema::migrations(store.kind()))
        .await
        .unwrap();
    let ctx = IngestCtx {
        heartbeat_ms: 1000,
        default_timeout_ms: 60_000,
        default_max_attempts: 200,
    };
    let sweep = SweepConfig {
        heartbeat: Duration::from_secs(1),
        scale_up_allowance: Duration::ZERO,
        deadline_grace: Duration::from_secs(3600),
        stall_windows: Default::default(),
        stages: vec![STAGE.into()],
        started_at: 0,
        retention: None,
    };
    let errors = Arc::new(Errors::default());
    let mut finalized = 0usize;
    let mut sweeps = 0u64;
    for round in 0..ROUNDS {
        let pids = create_round(&store, round).await;
        let stop = Arc::new(AtomicBool::new(false));
        let sweeper = {
            let (store, sweep, errors, stop) =
                (store.clone(), sweep.clone(), errors.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    match sweep_once(&store, &sweep).await {
                        Ok(r) => n += u64::from(r.ran),
                        Err(e) => errors.record("sweep", &e),
                    }
                }
                n
            })
        };
        let ingesters: Vec<_> = (0..INGESTERS)
            .map(|t| {
                let (store, pids, errors) = (store.clone(), pids.clone(), errors.clone());
                tokio::spawn(async move {
                    for f in 0..=FETCHES {
                        let seed = (round * 1000 + t * 100) as u64 + u64::from(f);
                        let batches = fetch(&pids, seed, f + 1, f == FETCHES);
                        // A failed fetch is redelivered, as the event consumer does.
                        for _ in 0..5 {
                            match ingest(&store, &batches, &ctx).await {
                                Ok(()) => break,
                                Err(e) => errors.record("ingest", &e),
                            }
                        }
                    }
                })
            })
            .collect();
        for i in ingesters {
            i.await.unwrap();
        }
        let done = || async {
            store
                .query_one(
                    "SELECT COUNT(*) AS n FROM coord_pipelines WHERE pipeline_id LIKE $1 AND state = 'completed'",
                    params![format!("r{round}-%")],
                )
                .await
                .unwrap()
                .get::<i64>("n")
                .unwrap()
        };
        wait_for(
            "every pipeline of the round completed",
            Duration::from_secs(30),
            || async { done().await == PIPELINES as i64 },
        )
        .await;
        stop.store(true, Ordering::SeqCst);
        sweeps += sweeper.await.unwrap();
        finalized += usize::try_from(done().await).unwrap();
    }
    eprintln!(
        "{ROUNDS} rounds, {} ingestion transactions, {sweeps} sweeps, {finalized} pipelines completed, {} deadlocks, {} other errors",
        ROUNDS * INGESTERS * (FETCHES as usize + 1),
        errors.deadlocks.load(Ordering::SeqCst),
        errors.other.load(Ordering::SeqCst)
    );
    assert_eq!(
        errors.deadlocks.load(Ordering::SeqCst),
        0,
        "PostgreSQL found deadlocks"
    );
    assert_eq!(errors.other.load(Ordering::SeqCst), 0);
    assert_eq!(finalized, ROUNDS * PIPELINES);
    assert!(sweeps > 0, "the sweeper ran");
    let open = store
        .query_one(
            "SELECT COUNT(*) AS n FROM coord_items WHERE state <> 'succeeded'",
            &[],
        )
        .await
        .unwrap()
        .get::<i64>("n")
        .unwrap();
    assert_eq!(open, 0, "every item succeeded");
    drop(store);
    admin
        .execute(&format!("DROP SCHEMA {schema_name} CASCADE"), &[])
        .await
        .unwrap();
}
