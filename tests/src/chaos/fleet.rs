//! The campaign's processes: two coordinator replicas and `replicas` of each worker,
//! supervised as an orchestrator would (a process that exits is started again) and
//! sampled for their resources.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::world::{ProcId, World};

use super::record::Target;
use super::rss::{Usage, usage};
use crate::procs::sample_sum;

/// The tokio task gauge every service exports (`shared/runtime/src/telemetry/names.rs`).
const TASKS: &str = "fleet_tokio_alive_tasks";
/// Bound of a readiness wait at start-up.
const READY: Duration = Duration::from_secs(60);
/// The worker kinds, in start order.
pub const WORKERS: [&str; 3] = ["analyzer", "summarizer", "writer"];

enum Ready {
    Yes,
    Exited,
    TimedOut,
}

/// Waits (bounded) until process `id` answers `/readyz` with 200, or exits.
async fn ready(world: &mut World, id: ProcId) -> Ready {
    let deadline = tokio::time::Instant::now() + READY;
    loop {
        if world.exited(id).is_some() {
            return Ready::Exited;
        }
        if let Ok((200, _)) = crate::procs::http(world.proc(id).admin, "GET", "/readyz", None).await
        {
            return Ready::Yes;
        }
        if tokio::time::Instant::now() >= deadline {
            return Ready::TimedOut;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    id: ProcId,
    /// Killed on purpose and not yet started again (a crashed coordinator).
    down: bool,
}

/// The flags of each kind of process (besides the world's shared runtime flags).
#[derive(Debug, Clone, Default)]
pub struct Flags {
    /// Per kind (`coordinator`, `analyzer`, …).
    pub by_kind: BTreeMap<String, Vec<String>>,
}

/// The running processes of one scenario.
pub struct Fleet {
    /// The world they run in.
    pub world: World,
    slots: Vec<Slot>,
    /// Processes that exited on their own and were started again: `name: status`.
    pub exits: Vec<String>,
    /// Processes the campaign SIGKILLed on purpose.
    pub kills: Vec<String>,
    /// Peak RSS per kind of process, bytes.
    pub peak_rss: BTreeMap<String, u64>,
    /// Every usage sample: `(seconds since start, kind, instance, usage)`.
    pub usage_log: Vec<(f64, String, String, Usage)>,
}

impl Fleet {
    /// Starts two coordinators and `replicas` of each worker, each with its `flags`, and
    /// waits until all are ready.
    pub async fn start(mut world: World, replicas: usize, flags: &Flags) -> Fleet {
        let of = |k: &str| flags.by_kind.get(k).cloned().unwrap_or_default();
        let mut kinds = vec!["coordinator"; 2];
        for kind in WORKERS {
            kinds.extend(std::iter::repeat_n(kind, replicas));
        }
        let mut ids = Vec::new();
        for kind in kinds {
            // One at a time: a port picked free may be taken by the time a process binds it
            // (then it exits at once and a replacement gets other ports).
            let mut id = world.launch(kind, &of(kind));
            let mut tries = 0;
            loop {
                match ready(&mut world, id).await {
                    Ready::Yes => break,
                    Ready::Exited if tries < 3 => {
                        tries += 1;
                        id = world.respawn(id);
                    }
                    _ => world.proc_mut(id).wait_ready(Duration::ZERO).await,
                }
            }
            ids.push(id);
        }
        world.api = world.listen(ids[0]);
        Fleet {
            world,
            slots: ids.into_iter().map(|id| Slot { id, down: false }).collect(),
            exits: Vec::new(),
            kills: Vec::new(),
            peak_rss: BTreeMap::new(),
            usage_log: Vec::new(),
        }
    }

    fn live(&self) -> impl Iterator<Item = ProcId> + '_ {
        self.slots.iter().filter(|s| !s.down).map(|s| s.id)
    }

    /// Starts again every process that exited on its own; returns what it found.
    pub fn supervise(&mut self) -> Vec<String> {
        let mut found = Vec::new();
        for i in 0..self.slots.len() {
            let slot = self.slots[i];
            if slot.down {
                continue;
            }
            if let Some(status) = self.world.exited(slot.id) {
                let name = self.world.proc(slot.id).name.clone();
                let new = self.world.respawn(slot.id);
                let msg = format!("{name} ({status}) → {}", self.world.proc(new).name.clone());
                self.slots[i].id = new;
                found.push(msg.clone());
                self.exits.push(msg);
            }
        }
        found
    }

    /// SIGKILLs a random worker and starts a new one of its kind at once; its name.
    pub async fn kill_random_worker(&mut self, pick: u64) -> Option<String> {
        let workers: Vec<usize> = (0..self.slots.len())
            .filter(|i| !self.slots[*i].down && self.world.kind(self.slots[*i].id) != "coordinator")
            .collect();
        if workers.is_empty() {
            return None;
        }
        let i = workers[(pick % workers.len() as u64) as usize];
        let id = self.slots[i].id;
        let name = self.world.proc(id).name.clone();
        self.world.kill(id).await;
        self.slots[i].id = self.world.respawn(id);
        self.kills.push(name.clone());
        Some(name)
    }

    /// SIGKILLs the first live coordinator replica (left down until [`Fleet::restart_down`]).
    pub async fn kill_coordinator(&mut self) -> Option<String> {
        let i = (0..self.slots.len()).find(|i| {
            !self.slots[*i].down && self.world.kind(self.slots[*i].id) == "coordinator"
        })?;
        let id = self.slots[i].id;
        let name = self.world.proc(id).name.clone();
        self.world.kill(id).await;
        self.slots[i].down = true;
        self.kills.push(name.clone());
        Some(name)
    }

    /// Starts again every process left down.
    pub fn restart_down(&mut self) {
        for i in 0..self.slots.len() {
            if self.slots[i].down {
                self.slots[i].id = self.world.respawn(self.slots[i].id);
                self.slots[i].down = false;
            }
        }
    }

    /// The API addresses of the live coordinators.
    pub fn apis(&self) -> Vec<SocketAddr> {
        self.live().filter_map(|id| self.world.listen(id)).collect()
    }

    /// Every live process as a scrape target.
    pub fn targets(&self) -> Vec<Target> {
        self.live()
            .map(|id| {
                let p = self.world.proc(id);
                (
                    format!("fleet-{}", self.world.kind(id)),
                    p.name.clone(),
                    p.admin,
                )
            })
            .collect()
    }

    /// Samples every live process's resources (peak RSS per kind, and the log): `/proc`,
    /// and the tokio task count from its `/metrics` (all scraped at once, each bounded).
    pub async fn sample_usage(&mut self, t: f64) {
        let ids: Vec<ProcId> = self.live().collect();
        let mut set = tokio::task::JoinSet::new();
        for (i, &id) in ids.iter().enumerate() {
            let admin = self.world.proc(id).admin;
            set.spawn(async move {
                let r = tokio::time::timeout(
                    Duration::from_secs(1),
                    crate::procs::http(admin, "GET", "/metrics", None),
                )
                .await;
                let tasks = match r {
                    Ok(Ok((200, text))) if text.contains(TASKS) => {
                        Some(sample_sum(&text, TASKS, &[]) as u64)
                    }
                    _ => None,
                };
                (i, tasks)
            });
        }
        // Each scrape is bounded (1 s), so this ends within about a second.
        let mut scrapes = vec![None; ids.len()];
        while let Some(r) = set.join_next().await {
            if let Ok((i, tasks)) = r {
                scrapes[i] = tasks;
            }
        }
        for (id, tasks) in ids.into_iter().zip(scrapes) {
            let Some(pid) = self.world.proc(id).pid() else {
                continue;
            };
            let Some(mut u) = usage(pid) else { continue };
            u.tasks = tasks;
            let kind = self.world.kind(id).to_owned();
            let peak = self.peak_rss.entry(kind.clone()).or_default();
            *peak = (*peak).max(u.rss);
            let name = self.world.proc(id).name.clone();
            self.usage_log.push((t, kind, name, u));
        }
    }

    /// Jobs in flight summed over the live workers (`fleet_jobs_in_flight`); `None` when a
    /// worker did not answer.
    pub async fn in_flight(&self) -> Option<f64> {
        let mut sum = 0.0;
        for (job, _, admin) in self.targets() {
            if job == "fleet-coordinator" {
                continue;
            }
            let r = tokio::time::timeout(
                Duration::from_secs(2),
                crate::procs::http(admin, "GET", "/metrics", None),
            )
            .await;
            match r {
                Ok(Ok((200, text))) => sum += sample_sum(&text, "fleet_jobs_in_flight", &[]),
                _ => return None,
            }
        }
        Some(sum)
    }

    /// Whether every live process answers `/readyz` with 200.
    pub async fn all_ready(&self) -> bool {
        for (_, _, admin) in self.targets() {
            let r = tokio::time::timeout(
                Duration::from_secs(2),
                crate::procs::http(admin, "GET", "/readyz", None),
            )
            .await;
            if !matches!(r, Ok(Ok((200, _)))) {
                return false;
            }
        }
        true
    }
}
