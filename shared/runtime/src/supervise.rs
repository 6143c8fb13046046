//! Supervision of a process's long-lived tasks (DESIGN §7): one mechanism for the
//! coordinator and every worker.
//!
//! A task spawned through a [`Supervisor`] has a name. If it ends (returns `Ok`, returns an
//! error or panics) before shutdown was requested, the process is broken: the supervisor logs
//! `task <name> ended before shutdown: <why>` at ERROR, marks `/readyz` and `/healthz` 503,
//! cancels [`Supervisor::token`] so every other part stops, and [`Supervisor::finish`] returns
//! the failure, so `run` returns an error naming the task and `main` exits non-zero.
//!
//! Tests kill a task by name with `FLEET_TEST_FAIL_TASK=<name>[:panic]` (see
//! [`Supervisor::new`]): the named task fails shortly after it starts.

use std::collections::BTreeSet;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::FutureExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::telemetry::Health;

/// The environment variable (and hidden flag) that injects a task failure in tests.
pub const FAIL_TASK_ENV: &str = "FLEET_TEST_FAIL_TASK";
/// How long after its start an injected failure ends the task.
const INJECT_AFTER: Duration = Duration::from_millis(200);
/// How long the admin server (the last to stop) may take to stop.
const LAST_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A task that ended before shutdown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("task {task} ended before shutdown: {why}")]
pub struct TaskFailure {
    /// The task's name (`events`, `heartbeats`, …).
    pub task: String,
    /// Why: its error, its panic message, or that it returned.
    pub why: String,
}

/// How an injected failure ends its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Injected {
    Error,
    Panic,
}

struct State {
    /// Shutdown requested from outside (signal, test): tasks ending after it are expected.
    shutdown: CancellationToken,
    /// What tasks watch: cancelled on shutdown and on the first failure.
    stop: CancellationToken,
    /// What the admin server watches: cancelled by `finish` once the rest stopped.
    last: CancellationToken,
    health: Arc<Health>,
    failure: Mutex<Option<TaskFailure>>,
    /// Names of the tasks still running, for the "did not stop in time" message.
    running: Mutex<BTreeSet<String>>,
    inject: Option<(String, Injected)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Short, non-async locks over plain data: a panic elsewhere leaves the data usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl State {
    /// Called when task `name` ends; a task ending before shutdown is a failure.
    fn ended(&self, name: &str, outcome: Result<anyhow::Result<()>, String>) {
        lock(&self.running).remove(name);
        let why = match &outcome {
            Ok(Ok(())) => "it returned".to_owned(),
            Ok(Err(e)) => format!("{e:#}"),
            Err(panic) => format!("it panicked: {panic}"),
        };
        if !self.stop.is_cancelled() {
            self.fail(name, why);
        } else if !matches!(outcome, Ok(Ok(()))) {
            tracing::warn!(task = name, "task {name} failed while stopping: {why}");
        }
    }

    fn fail(&self, name: &str, why: String) {
        tracing::error!(
            task = name,
            "task {name} ended before shutdown: {why}; stopping the process (exit non-zero)"
        );
        self.health
            .set_failed(format!("task {name} ended before shutdown: {why}"));
        lock(&self.failure).get_or_insert_with(|| TaskFailure {
            task: name.to_owned(),
            why,
        });
        self.stop.cancel();
    }
}

/// The named long-lived tasks of one process, the shutdown token they watch and its health.
pub struct Supervisor {
    tasks: JoinSet<()>,
    last: JoinSet<()>,
    state: Arc<State>,
}

impl Supervisor {
    /// A supervisor under `shutdown` (the process's stop request) that marks `health` on failure.
    ///
    /// `inject` (`FLEET_TEST_FAIL_TASK`, tests only) names a task to fail 200 ms after it
    /// starts: `<name>` returns an error, `<name>:panic` panics.
    pub fn new(
        health: Arc<Health>,
        shutdown: &CancellationToken,
        inject: Option<&str>,
    ) -> Supervisor {
        let inject = inject
            .filter(|s| !s.is_empty())
            .map(|s| match s.strip_suffix(":panic") {
                Some(name) => (name.to_owned(), Injected::Panic),
                None => (s.to_owned(), Injected::Error),
            });
        if let Some((name, how)) = &inject {
            tracing::warn!(task = %name, ?how, "{FAIL_TASK_ENV} is set: this task will fail on purpose");
        }
        Supervisor {
            tasks: JoinSet::new(),
            last: JoinSet::new(),
            state: Arc::new(State {
                shutdown: shutdown.clone(),
                stop: shutdown.child_token(),
                last: CancellationToken::new(),
                health,
                failure: Mutex::new(None),
                running: Mutex::new(BTreeSet::new()),
                inject,
            }),
        }
    }

    /// The token every supervised task stops on: shutdown, or another task's failure.
    pub fn token(&self) -> CancellationToken {
        self.state.stop.clone()
    }

    /// The token of the tasks that stop last (the admin server): cancelled by [`Self::finish`].
    pub fn last_token(&self) -> CancellationToken {
        self.state.last.clone()
    }

    /// The health flags this supervisor marks.
    pub fn health(&self) -> Arc<Health> {
        self.state.health.clone()
    }

    /// True once shutdown was requested from outside (not because a task failed).
    pub fn shutdown_requested(&self) -> bool {
        self.state.shutdown.is_cancelled()
    }

    /// The first task that ended before shutdown, if any.
    pub fn failure(&self) -> Option<TaskFailure> {
        lock(&self.state.failure).clone()
    }

    /// Waits until shutdown is requested or a task failed.
    pub async fn stopped(&self) {
        self.state.stop.cancelled().await;
    }

    /// Spawns task `name`: it must run until [`Self::token`] is cancelled.
    pub fn spawn<F>(&mut self, name: impl Into<String>, fut: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let name = name.into();
        let task = self.wrap(name, fut);
        self.tasks.spawn(task);
    }

    /// Spawns task `name` that runs until [`Self::last_token`] (after every other task stopped).
    pub fn spawn_last<F>(&mut self, name: impl Into<String>, fut: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let name = name.into();
        let task = self.wrap(name, fut);
        self.last.spawn(task);
    }

    /// Runs `fut` in place as supervised task `name` (e.g. a worker's consume loop): an error
    /// before shutdown is a failure like a spawned task's; the result is handed back.
    pub async fn run<T, F>(&self, name: &str, fut: F) -> anyhow::Result<T>
    where
        F: Future<Output = anyhow::Result<T>>,
    {
        lock(&self.state.running).insert(name.to_owned());
        let run = async {
            match self.injection(name) {
                Some(how) => inject(how, fut).await,
                None => fut.await,
            }
        };
        let out = AssertUnwindSafe(run)
            .catch_unwind()
            .await
            .unwrap_or_else(|p| {
                Err(anyhow::anyhow!(
                    "it panicked: {}",
                    panic_message(p.as_ref())
                ))
            });
        let outcome = match &out {
            Ok(_) => Ok(Ok(())),
            Err(e) => Ok(Err(anyhow::anyhow!("{e:#}"))),
        };
        self.state.ended(name, outcome);
        out
    }

    fn injection(&self, name: &str) -> Option<Injected> {
        self.state
            .inject
            .as_ref()
            .filter(|(n, _)| n == name)
            .map(|(_, how)| *how)
    }

    fn wrap<F>(&self, name: String, fut: F) -> impl Future<Output = ()> + Send + 'static
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        lock(&self.state.running).insert(name.clone());
        let state = self.state.clone();
        let how = self.injection(&name);
        async move {
            let run = async move {
                match how {
                    Some(how) => inject(how, fut).await,
                    None => fut.await,
                }
            };
            let outcome = AssertUnwindSafe(run)
                .catch_unwind()
                .await
                .map_err(|p| panic_message(p.as_ref()));
            state.ended(&name, outcome);
        }
    }

    /// Waits (at most `timeout`) for every task but the last ones to end; aborts the rest.
    /// Call it once they were told to stop (shutdown, or their own stop token).
    pub async fn join(&mut self, timeout: Duration) {
        join_bounded(&mut self.tasks, &self.state, timeout, "").await;
    }

    /// Stops everything: waits for the tasks (bounded by `timeout`), then stops the last ones
    /// (the admin server). Returns the first task that ended before shutdown.
    pub async fn finish(mut self, timeout: Duration) -> Result<(), TaskFailure> {
        self.state.stop.cancel();
        join_bounded(&mut self.tasks, &self.state, timeout, "").await;
        self.state.last.cancel();
        join_bounded(&mut self.last, &self.state, LAST_STOP_TIMEOUT, " (last)").await;
        match self.failure() {
            Some(f) => Err(f),
            None => Ok(()),
        }
    }
}

async fn join_bounded(set: &mut JoinSet<()>, state: &State, timeout: Duration, which: &str) {
    let drain = async { while set.join_next().await.is_some() {} };
    if tokio::time::timeout(timeout, drain).await.is_err() {
        let names: Vec<String> = lock(&state.running).iter().cloned().collect();
        tracing::warn!(
            tasks = ?names,
            "tasks{which} did not stop within {}; aborting them",
            humantime::format_duration(timeout)
        );
        set.abort_all();
        while set.join_next().await.is_some() {}
    }
}

/// Runs `fut`, but ends it with an injected failure after [`INJECT_AFTER`].
async fn inject<T, F>(how: Injected, fut: F) -> anyhow::Result<T>
where
    F: Future<Output = anyhow::Result<T>>,
{
    tokio::select! {
        r = fut => r,
        () = tokio::time::sleep(INJECT_AFTER) => match how {
            Injected::Error => Err(anyhow::anyhow!("injected failure ({FAIL_TASK_ENV})")),
            Injected::Panic => panic!("injected panic ({FAIL_TASK_ENV})"),
        },
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sup(inject: Option<&str>) -> (Supervisor, CancellationToken, Arc<Health>) {
        let health = Arc::new(Health::default());
        health.set_ready(true);
        health.tick();
        let shutdown = CancellationToken::new();
        (
            Supervisor::new(health.clone(), &shutdown, inject),
            shutdown,
            health,
        )
    }

    async fn until(stop: CancellationToken) -> anyhow::Result<()> {
        stop.cancelled().await;
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn clean_shutdown_is_no_failure() {
        let (mut s, shutdown, health) = sup(None);
        s.spawn("a", until(s.token()));
        s.spawn_last("admin", until(s.last_token()));
        shutdown.cancel();
        assert_eq!(s.finish(Duration::from_secs(1)).await, Ok(()));
        assert!(health.failure().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_returns_early_fails_the_process() {
        let (mut s, _shutdown, health) = sup(None);
        let others = s.token();
        s.spawn("steady", until(s.token()));
        s.spawn("quitter", async { Ok(()) });
        tokio::time::timeout(Duration::from_secs(1), others.cancelled())
            .await
            .expect("the others are told to stop");
        assert!(!health.is_ready() && !health.is_healthy());
        let f = s.finish(Duration::from_secs(1)).await.unwrap_err();
        assert_eq!(f.task, "quitter");
        assert!(f.to_string().contains("task quitter ended before shutdown"));
    }

    #[tokio::test(start_paused = true)]
    async fn errors_and_panics_are_named() {
        let (mut s, _sd, _h) = sup(None);
        s.spawn("broken", async { Err(anyhow::anyhow!("disk on fire")) });
        s.stopped().await;
        let f = s.finish(Duration::from_secs(1)).await.unwrap_err();
        assert_eq!(
            (f.task.as_str(), f.why.as_str()),
            ("broken", "disk on fire")
        );

        let (mut s, _sd, _h) = sup(None);
        s.spawn("crashy", async {
            if true {
                panic!("boom");
            }
            Ok(())
        });
        s.stopped().await;
        let f = s.finish(Duration::from_secs(1)).await.unwrap_err();
        assert_eq!(f.task, "crashy");
        assert!(f.why.contains("panicked: boom"), "{}", f.why);
    }

    #[tokio::test(start_paused = true)]
    async fn injected_failures_hit_only_the_named_task() {
        for (inject, why) in [("b", "injected failure"), ("b:panic", "injected panic")] {
            let (mut s, _sd, _h) = sup(Some(inject));
            s.spawn("a", until(s.token()));
            s.spawn("b", until(s.token()));
            s.stopped().await;
            let f = s.finish(Duration::from_secs(1)).await.unwrap_err();
            assert_eq!(f.task, "b");
            assert!(f.why.contains(why), "{}", f.why);
        }
        let (s, _sd, _h) = sup(Some("inline"));
        let r: anyhow::Result<u8> = s.run("inline", std::future::pending()).await;
        assert!(r.is_err());
        assert_eq!(s.failure().map(|f| f.task).as_deref(), Some("inline"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_run_in_place_that_panics_is_a_failure() {
        let (s, _sd, health) = sup(None);
        let r: anyhow::Result<()> = s
            .run("consumer", async {
                if true {
                    panic!("inline boom");
                }
                Ok(())
            })
            .await;
        assert!(format!("{:#}", r.unwrap_err()).contains("inline boom"));
        assert_eq!(s.failure().map(|f| f.task).as_deref(), Some("consumer"));
        assert!(!health.is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_does_not_stop_is_aborted_in_bounded_time() {
        let (mut s, shutdown, _h) = sup(None);
        s.spawn("stubborn", std::future::pending());
        shutdown.cancel();
        let t = tokio::time::Instant::now();
        assert_eq!(s.finish(Duration::from_secs(3)).await, Ok(()));
        assert!(t.elapsed() < Duration::from_secs(4));
    }
}
