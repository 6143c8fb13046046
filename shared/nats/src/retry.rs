//! Delayed retries outside the jobs consumer's pending window: the retry stream and its movers.
//!
//! A `Nak(delay)` keeps the message ack-pending on the stage's jobs consumer until it is
//! redelivered, so enough waiting retries fill `max_ack_pending` and the stage stops receiving
//! fresh work (issue 9: 1,034 parked naks idled two healthy summarizers for five minutes).
//! nats-server 2.9 has no message scheduling (`Nats-Schedule` arrived in 2.12), so fleet uses the
//! same fixed ladder of delays as RabbitMQ's TTL queues, one subject per step:
//!
//! 1. `retry(delay)` rounds `delay` to the ladder ([`fleet_core::broker::ladder_step`]) and
//!    publishes a copy (confirmed) to stream `<P>_RETRY`, subject `<p>.retry.<stage>.<step>`,
//!    with `fleet-attempt` = the attempts made so far and a `Nats-Msg-Id` unique per attempt
//!    (`<job id>~a<attempt>`), then acks the original (WorkQueue: removed). A crash between the
//!    two leaves the original to be redelivered: at worst one extra attempt, never a loss.
//! 2. Every subscription to a stage's jobs runs one mover per ladder step. The movers of all
//!    replicas share the durable consumer `retry-<stage>-<step>` (filter
//!    `<p>.retry.<stage>.<step>`). Every message of one step waits the same delay, so they come
//!    due in arrival order: a mover pulls up to [`MOVE_BATCH`] in order, waits until the head is
//!    due (its stream timestamp + the step; the held ones are kept alive with `+WPI`), then
//!    publishes it (confirmed, same `Nats-Msg-Id`, so a mover that dies between publish and ack
//!    is de-duplicated) to `<p>.jobs.<stage>` and acks it. Not-yet-due messages are never
//!    nak'd: they stay in the stream, not in any consumer's pending window, so the only pending
//!    work the retry consumers hold is the movers' bounded batches, and the jobs consumer's
//!    `max_ack_pending` only ever counts jobs that workers run.
//! 3. The moved copy is a new stream message (delivery count 1): its attempt is `fleet-attempt`
//!    plus the server's delivery count, like RabbitMQ's. `max_deliver` (the backstop) counts
//!    per copy, while the runtime's `attempt > max_attempts` check counts across copies.
//!
//! A mover stopped while it holds messages (drain, crash) leaves them to another replica's mover
//! after [`RETRY_ACK_WAIT`]; with no worker of the stage running, retries wait in the stream and
//! nothing is lost. A zero delay (immediate retry) still uses `Nak` (nothing waits). The ladder is stage-level:
//! every service that consumes a stage must use the same one (the movers serve the steps of their
//! own ladder). Due times compare the server's timestamp with the mover's clock, so clock skew
//! between them shifts a retry by that much.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::stream::{self, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, AckKind};
use fleet_core::broker::ladder_label;
use fleet_core::{BrokerError, Topology};
use fleet_protocol::Names;
use futures::TryStreamExt;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::shared::Shared;
use crate::subscription::{pull_once, release_all};
use crate::topology::{DUPLICATE_WINDOW, WantedConsumer, durable};
use crate::wire::{bounded, check_token};

/// `ack_wait` of the retry consumers: a mover that dies holding messages gives them back after it.
pub const RETRY_ACK_WAIT: Duration = Duration::from_secs(30);
/// `max_ack_pending` of each retry consumer: room for 16 replicas' batches of [`MOVE_BATCH`].
pub const RETRY_MAX_ACK_PENDING: i64 = 1024;
/// Most messages one mover holds while waiting for them to come due.
pub const MOVE_BATCH: usize = 64;
/// How long one mover pull waits for a message.
const MOVER_PULL_WAIT: Duration = Duration::from_secs(5);
/// How often held messages are kept alive (`+WPI`), well inside [`RETRY_ACK_WAIT`].
const EXTEND_EVERY: Duration = Duration::from_secs(10);
/// Longest pause between a mover's failed rounds.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Least time between two logged mover failures of one step.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Counter of failed mover rounds, by stage.
pub const MOVER_ERRORS: &str = "fleet_retry_mover_errors_total";

/// Name of the durable consumer that moves a stage's retries of one ladder step.
pub fn retry_consumer(stage: &str, step: Duration) -> String {
    format!("retry-{stage}-{}", ladder_label(step))
}

/// The retry stream of a prefix: WorkQueue (a moved retry is deleted), file storage.
pub(crate) fn retry_stream_config(names: &Names) -> stream::Config {
    stream::Config {
        name: names.retry_stream(),
        subjects: vec![format!("{}.retry.>", names.prefix())],
        retention: RetentionPolicy::WorkQueue,
        storage: StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    }
}

/// The retry consumers of a topology: one per stage and ladder step (filters never overlap,
/// as a WorkQueue stream requires).
pub(crate) fn retry_consumer_configs(
    topology: &Topology,
) -> Result<Vec<WantedConsumer>, BrokerError> {
    let names = &topology.names;
    let mut out = Vec::new();
    for stage in &topology.stages {
        check_token("stage", stage).map_err(|e| BrokerError::Config(e.to_string()))?;
        for step in &topology.retry_ladder {
            out.push(WantedConsumer {
                stream: names.retry_stream(),
                config: durable(
                    &retry_consumer(stage, *step),
                    names.retry_queue(stage, &ladder_label(*step)),
                    RETRY_ACK_WAIT,
                    -1,
                    RETRY_MAX_ACK_PENDING,
                ),
            });
        }
    }
    Ok(out)
}

/// Jobs of `stage` waiting in the retry stream (0 when the stream does not exist yet).
pub(crate) async fn waiting(shared: &Shared, stage: &str) -> Result<u64, BrokerError> {
    check_token("stage", stage)?;
    let names = shared.names();
    let what = format!("counting retries of {stage} in {}", names.retry_stream());
    let limit = shared.outer_limit();
    let filter = format!("{}.retry.{stage}.>", names.prefix());
    let counted = bounded(limit, async {
        let stream = shared.js.get_stream_no_info(names.retry_stream()).await?;
        let mut subjects = stream.info_with_subjects(filter).await?;
        let mut n = 0u64;
        while let Some((_, count)) = subjects.try_next().await? {
            n += count as u64;
        }
        Ok::<u64, async_nats::Error>(n)
    })
    .await?;
    match counted {
        Ok(n) => Ok(n),
        Err(e) if e.to_string().to_lowercase().contains("stream not found") => Ok(0),
        Err(e) => Err(shared.or_lost(&what, BrokerError::Rejected(format!("{what}: {e}")))),
    }
}

/// The movers of one stage (one task per ladder step); dropping them stops them.
pub(crate) struct Movers(Vec<JoinHandle<()>>);

impl Drop for Movers {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Starts the movers of `stage` for the ladder in use.
pub(crate) fn spawn_movers(shared: &Arc<Shared>, stage: &str) -> Movers {
    let ladder = shared.ladder();
    Movers(
        ladder
            .iter()
            .map(|step| tokio::spawn(run_mover(shared.clone(), stage.to_owned(), *step)))
            .collect(),
    )
}

/// One step's mover: bounded rounds, with backoff, a metric and a rate-limited log on failure.
async fn run_mover(shared: Arc<Shared>, stage: String, step: Duration) {
    let names = shared.names();
    let stream = names.retry_stream();
    let name = retry_consumer(&stage, step);
    let target = names.jobs(&stage);
    let what = format!("moving retries from consumer {name} on {stream}");
    let mut consumer: Option<PullConsumer> = None;
    let mut failures: u32 = 0;
    let mut logged: Option<Instant> = None;
    loop {
        let round = async {
            let bound = match &consumer {
                Some(c) => c.clone(),
                None => {
                    let c = bind(&shared, &stream, &name, &what).await?;
                    consumer = Some(c.clone());
                    c
                }
            };
            move_batch(&shared, &bound, &what, step, &target).await
        }
        .await;
        match round {
            Ok(()) => failures = 0,
            Err(e) => {
                consumer = None;
                failures = failures.saturating_add(1);
                metrics::counter!(MOVER_ERRORS, "stage" => stage.clone()).increment(1);
                if logged.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
                    logged = Some(Instant::now());
                    tracing::warn!(
                        stage = %stage,
                        consumer = %name,
                        failures,
                        error = %e,
                        "nats: moving due retries back to the jobs stream failed; retrying with \
                         backoff (the retries wait in {stream} meanwhile; if the consumer is \
                         missing, restart a worker of the stage to declare it)"
                    );
                }
                let backoff = Duration::from_millis(100)
                    .saturating_mul(2u32.saturating_pow(failures.min(10)))
                    .min(MAX_BACKOFF);
                tokio::time::sleep(backoff).await;
            }
        }
    }
}

/// Binds to the existing retry consumer.
async fn bind(
    shared: &Shared,
    stream: &str,
    name: &str,
    what: &str,
) -> Result<PullConsumer, BrokerError> {
    if !shared.is_up() {
        return Err(shared.lost(what));
    }
    let handle = shared
        .js
        .get_stream_no_info(stream)
        .await
        .map_err(|e| BrokerError::Rejected(format!("{what}: {e}")))?;
    bounded(
        shared.outer_limit(),
        handle.get_consumer::<jetstream::consumer::pull::Config>(name),
    )
    .await
    .map_err(|e| shared.or_lost(what, e))?
    .map_err(|e| shared.or_lost(what, BrokerError::Rejected(format!("{what}: {e}"))))
}

/// When a retry copy is due: its stream timestamp plus the step (now if it has no metadata).
fn due_at(msg: &jetstream::Message, step: Duration) -> SystemTime {
    msg.info()
        .map(|i| SystemTime::from(i.published) + step)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// One pull of up to [`MOVE_BATCH`] retries; each is moved once due, in order.
async fn move_batch(
    shared: &Shared,
    consumer: &PullConsumer,
    what: &str,
    step: Duration,
    target: &str,
) -> Result<(), BrokerError> {
    let msgs = pull_once(shared, consumer, what, MOVE_BATCH, MOVER_PULL_WAIT).await?;
    let mut held: VecDeque<jetstream::Message> = msgs.into();
    let mut extended = Instant::now();
    while let Some(head) = held.front() {
        let wait = due_at(head, step)
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        if !wait.is_zero() {
            let extend_at = extended + EXTEND_EVERY;
            tokio::time::sleep_until((Instant::now() + wait).min(extend_at)).await;
            if Instant::now() >= extend_at {
                for m in &held {
                    // Plain: a lost `+WPI` at worst lets another mover take the message over.
                    if let Ok(Err(e)) =
                        bounded(shared.outer_limit(), m.ack_with(AckKind::Progress)).await
                    {
                        tracing::debug!(error = %e, "nats: could not extend a held retry");
                    }
                }
                extended = Instant::now();
            }
            continue;
        }
        let Some(msg) = held.pop_front() else { break };
        let headers = msg.headers.clone().unwrap_or_default();
        if let Err(e) = shared
            .publish_raw(target.to_owned(), headers, msg.payload.clone())
            .await
        {
            held.push_front(msg);
            release_all(shared, held.into()).await;
            return Err(e);
        }
        // Plain ack: a lost one redelivers the copy, whose republish the jobs stream
        // de-duplicates by its `Nats-Msg-Id`.
        if let Ok(Err(e)) = bounded(shared.outer_limit(), msg.ack()).await {
            tracing::debug!(error = %e, "nats: could not ack a moved retry");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_retry_consumer_per_stage_and_step() {
        let t = Topology::new(Names::new("ab"), &["s1", "s2"]);
        let c = retry_consumer_configs(&t).expect("configs");
        assert_eq!(c.len(), 2 * t.retry_ladder.len());
        assert_eq!(c[0].stream, "AB_RETRY");
        assert_eq!(c[0].config.durable_name.as_deref(), Some("retry-s1-1s"));
        assert_eq!(c[0].config.filter_subject, "ab.retry.s1.1s");
        assert_eq!(retry_stream_config(&t.names).subjects, vec!["ab.retry.>"]);
    }
}
