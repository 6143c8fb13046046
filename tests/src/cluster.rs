//! Shared pieces of the node-loss tests on three-node broker clusters
//! (`tests/cluster_nats.rs`, `tests/cluster_rabbitmq.rs`): running a cluster script, sampling
//! readiness and completions while a node is down, and the failover figures.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_store::params;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::procs::http;

/// Runs a cluster script (`scripts/nats-cluster.sh`, `scripts/rabbitmq-cluster.sh`; each bounds
/// its own waits) with `args`; its trimmed output, or a panic with its error output.
pub fn script(path: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("bash")
        .arg(path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", path.display()));
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Samples every process's `/readyz` until `stop`: per process, how many samples were not 200.
pub fn sample_readiness(
    procs: Vec<(String, SocketAddr)>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<BTreeMap<String, usize>> {
    tokio::spawn(async move {
        let mut unready: BTreeMap<String, usize> =
            procs.iter().map(|(n, _)| (n.clone(), 0)).collect();
        while !stop.is_cancelled() {
            for (name, admin) in &procs {
                let ok = matches!(
                    tokio::time::timeout(
                        Duration::from_millis(500),
                        http(*admin, "GET", "/readyz", None)
                    )
                    .await,
                    Ok(Ok((200, _)))
                );
                if !ok {
                    *unready.entry(name.clone()).or_default() += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        unready
    })
}

/// `(when, rows written)`, one entry per change of the count.
pub type Completions = Arc<Mutex<Vec<(Instant, i64)>>>;

/// Records `(when, rows)` each time the writer's row count for `pid` changes, until `stop`.
pub fn sample_completions(
    store: fleet_store::Store,
    pid: String,
    stop: CancellationToken,
) -> (Completions, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Vec::<(Instant, i64)>::new()));
    let out = seen.clone();
    let task = tokio::spawn(async move {
        let mut last = -1;
        let mut errors = 0u32;
        while !stop.is_cancelled() {
            let counted = tokio::time::timeout(
                Duration::from_secs(2),
                store.query_one(
                    "SELECT COUNT(*) AS n FROM fleet_results WHERE pipeline_id = $1",
                    params![pid.clone()],
                ),
            )
            .await;
            match counted {
                Ok(Ok(row)) => {
                    let n: i64 = row.get("n").unwrap_or(last);
                    if n != last {
                        out.lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push((Instant::now(), n));
                        last = n;
                    }
                }
                Ok(Err(e)) if errors < 3 && last >= 0 => {
                    errors += 1;
                    eprintln!("counting rows failed: {e}");
                }
                Err(_) if errors < 3 => {
                    errors += 1;
                    eprintln!("counting rows took over 2 s");
                }
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    });
    (seen, task)
}

/// From the completions and the moment of the kill: the failover time (last completion before
/// the kill, or `started`, → first after) and the longest pause between completions from the
/// kill on. Panics when nothing completed after the kill (the run ended before it).
pub fn failover(c: &Completions, killed_at: Instant, started: Instant) -> (Duration, Duration) {
    let c = c.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let before = c
        .iter()
        .rev()
        .find(|(t, _)| *t <= killed_at)
        .map(|(t, _)| *t);
    let after = c.iter().find(|(t, _)| *t > killed_at).map(|(t, _)| *t);
    let failover = after
        .unwrap_or_else(|| {
            panic!(
                "no item was written after the kill: the run was over before it; raise \
                 FLEET_CLUSTER_ITEMS"
            )
        })
        .duration_since(before.unwrap_or(started));
    let from_kill: Vec<Instant> = std::iter::once(killed_at)
        .chain(c.iter().map(|(t, _)| *t).filter(|t| *t > killed_at))
        .collect();
    let longest = from_kill
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap_or_default();
    (failover, longest)
}
