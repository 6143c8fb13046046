//! Runs a handler future under the attempt's hard limits: its deadline, its
//! pipeline's cancellation, the drain deadline, and the broker lease (extended
//! while it runs). Whatever ends it, the future is dropped and the task aborted.

use std::future::Future;
use std::time::Duration;

use fleet_core::Acker;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How a guarded run ended.
#[derive(Debug)]
pub enum Guarded<T> {
    /// The future completed.
    Done(T),
    /// The deadline passed first.
    TimedOut,
    /// The future panicked (message attached).
    Panicked(String),
    /// A lease extension failed: the broker may redeliver, so nothing may be published.
    LeaseLost(String),
    /// The job's pipeline was cancelled.
    Cancelled,
    /// The drain deadline passed during shutdown.
    Drained,
}

impl<T> Guarded<T> {
    /// The value when the future completed, else the stop reason (re-typed).
    pub fn into_done<U>(self) -> Result<T, Guarded<U>> {
        match self {
            Guarded::Done(v) => Ok(v),
            Guarded::TimedOut => Err(Guarded::TimedOut),
            Guarded::Panicked(s) => Err(Guarded::Panicked(s)),
            Guarded::LeaseLost(s) => Err(Guarded::LeaseLost(s)),
            Guarded::Cancelled => Err(Guarded::Cancelled),
            Guarded::Drained => Err(Guarded::Drained),
        }
    }
}

/// The stop signals of one run.
pub struct Limits<'a> {
    /// Hard deadline.
    pub deadline: Instant,
    /// Fires when the pipeline is cancelled.
    pub pipeline_cancel: &'a CancellationToken,
    /// Fires at the end of the drain period.
    pub drain: &'a CancellationToken,
    /// Cancelled when the run ends early, so cooperative handlers stop too.
    pub attempt_token: &'a CancellationToken,
}

/// Spawns `fut` and waits for it or for the first limit; extends every acker's lease meanwhile.
///
/// One timer per run: it sleeps until the earlier of the deadline and the next lease extension
/// (most runs end before either, so a run registers one timer entry, not two).
pub async fn run_guarded<T, F>(ackers: &[&dyn Acker], limits: Limits<'_>, fut: F) -> Guarded<T>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let mut task = tokio::spawn(fut);
    // Extend at a third of the lease so one lost extension still leaves time for the next.
    let every = ackers
        .iter()
        .filter_map(|a| a.lease())
        .min()
        .map(|l| (l / 3).max(Duration::from_millis(100)));
    let mut next_extend = every.map(|e| Instant::now() + e);
    let wake_at = |next: Option<Instant>| next.map_or(limits.deadline, |n| n.min(limits.deadline));
    let timer = tokio::time::sleep_until(wake_at(next_extend));
    tokio::pin!(timer);
    let out = loop {
        tokio::select! {
            r = &mut task => break match r {
                Ok(v) => Guarded::Done(v),
                Err(e) if e.is_panic() => Guarded::Panicked(panic_message(e.into_panic())),
                Err(e) => Guarded::Panicked(format!("handler task ended: {e}")),
            },
            () = &mut timer => {
                let now = Instant::now();
                if now >= limits.deadline {
                    break Guarded::TimedOut;
                }
                if let (Some(e), Some(at)) = (every, next_extend)
                    && now >= at
                {
                    if let Some(err) = extend_all(ackers, e).await {
                        break Guarded::LeaseLost(err);
                    }
                    next_extend = Some(at + e);
                }
                timer.as_mut().reset(wake_at(next_extend));
            }
            () = limits.pipeline_cancel.cancelled() => break Guarded::Cancelled,
            () = limits.drain.cancelled() => break Guarded::Drained,
        }
    };
    if !matches!(out, Guarded::Done(_)) {
        limits.attempt_token.cancel();
        task.abort();
    }
    out
}

async fn extend_all(ackers: &[&dyn Acker], wait: Duration) -> Option<String> {
    for a in ackers {
        match tokio::time::timeout(wait, a.extend()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Some(e.to_string()),
            Err(_) => return Some(format!("lease extension not confirmed within {wait:?}")),
        }
    }
    None
}

/// The text of a panic payload.
pub(crate) fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        format!("handler panicked: {s}")
    } else if let Some(s) = p.downcast_ref::<String>() {
        format!("handler panicked: {s}")
    } else {
        "handler panicked".to_owned()
    }
}
