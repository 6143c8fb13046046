//! Streams and durable consumers: what fleet declares, get-or-create, and drift reporting.
//!
//! | stream | subjects | retention | consumers |
//! |---|---|---|---|
//! | `<P>_JOBS` | `<p>.jobs.>` | WorkQueue, dedup window 2 min | `<stage>` per stage (filter `<p>.jobs.<stage>`) |
//! | `<P>_DLQ` | `<p>.dlq.>` | limits, `max_age` [`ARCHIVE_MAX_AGE`] | `dlq-<stage>` per stage (filter `<p>.dlq.<stage>`) |
//! | `<P>_EVENTS` | `<p>.events.>` | WorkQueue | `coordinator` |
//! | `<P>_SUBMIT` | `<p>.submit` | WorkQueue, dedup window 2 min | `coordinator` |
//! | `<P>_CONTROL` | `<p>.control.>` | limits, 1 message per subject, `max_age` [`control::RETENTION`] | none (ephemeral ordered per subscriber) |
//! | `<P>_PIPELINES` | `<p>.pipelines.>` | limits, `max_age` [`ARCHIVE_MAX_AGE`] | none |
//! | `<P>_RETRY` | `<p>.retry.<stage>.<delay>` | WorkQueue, dedup window 2 min | `retry-<stage>-<delay>` per stage and ladder step (see [`crate::retry`]) |
//! | `<P>_BACKSTOP` | `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<P>_JOBS.>` | WorkQueue | `backstop-<stage>` per stage |
//! | `<P>_PARKED` | `<p>.parked.>` (`<p>.parked.<origin subject>`) | WorkQueue | `replay` |
//!
//! Every consumer has an explicit `max_deliver` (never "unlimited"): the stage's for jobs,
//! [`CONTROL_MAX_DELIVER`] for the coordinator's (which parks a message well before, after
//! its own attempt limit, so the server's limit only stops a message that kills the coordinator
//! on every delivery; such a message stays in its stream), [`IDLE_QUEUE_MAX_DELIVER`] for `replay`.
//!
//! `<P>_EVENTS` is a WorkQueue: the coordinator's `coordinator` consumer is its only reader, so an
//! acked batch is deleted and the stream holds only what the coordinator has not processed yet
//! (its depth is the coordinator's lag). Every stream uses file storage.
//!
//! `<P>_BACKSTOP` keeps the server's `MAX_DELIVERIES` advisories for the stage consumers, so one
//! raised while no coordinator runs is not lost (a core-NATS subscription would miss it); the
//! `dead letters` subscription of each stage drains them (see [`crate::backstop`]).
//!
//! Stage consumers take `ack_wait`, `max_deliver` and `max_ack_pending` from the [`Topology`];
//! the coordinator's consumers (`coordinator`, `dlq-<stage>`) use fixed values
//! ([`COORDINATOR_ACK_WAIT`], [`CONTROL_MAX_DELIVER`], [`COORDINATOR_MAX_ACK_PENDING`]) so that
//! services declaring with different topologies never fight over them.

use std::time::Duration;

use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::context::{
    ConsumerInfoError, ConsumerInfoErrorKind, CreateStreamErrorKind, GetStreamErrorKind,
};
use async_nats::jetstream::stream::{
    self, ConsumerError, ConsumerErrorKind, RetentionPolicy, StorageType,
};
use async_nats::jetstream::{self, ErrorCode};
use fleet_core::broker::{CONTROL_MAX_DELIVER, IDLE_QUEUE_MAX_DELIVER};
use fleet_core::{BrokerError, Topology};
use fleet_protocol::{Names, control};

use crate::wire::{bounded, check_token};

/// Name of the coordinator's durable consumers on `<P>_EVENTS` and `<P>_SUBMIT`.
pub const COORDINATOR: &str = "coordinator";
/// `ack_wait` of the coordinator's consumers (events, submissions, dead letters): what a
/// killed coordinator's fetched-but-unacked batches wait before another replica gets them.
/// Three times the default statement timeout, so a slow database does not cause redeliveries.
pub const COORDINATOR_ACK_WAIT: Duration = Duration::from_secs(30);
/// `max_ack_pending` of the coordinator's consumers.
pub const COORDINATOR_MAX_ACK_PENDING: i64 = 10_000;
/// Publish de-duplication window of the jobs and submission streams (DESIGN §4).
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Name of the durable consumer that replay reads `<P>_PARKED` with.
pub const REPLAY: &str = "replay";

/// Name of the durable consumer that reads a stage's dead letters.
pub fn dlq_consumer(stage: &str) -> String {
    format!("dlq-{stage}")
}

/// Name of the durable consumer that reads the `MAX_DELIVERIES` advisories of a stage.
pub fn backstop_consumer(stage: &str) -> String {
    format!("backstop-{stage}")
}

/// Subject of the `MAX_DELIVERIES` advisories of a stage's jobs consumer (`stage` may be `>`).
pub fn max_deliveries_subject(names: &Names, stage: &str) -> String {
    format!(
        "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.{stage}",
        names.jobs_stream()
    )
}

/// Age limit of the streams that would otherwise only grow (Limits retention: acked messages
/// stay): `<P>_DLQ` (every dead letter is archived in the coordinator's store within seconds)
/// and `<P>_PIPELINES` (finalization notices for live subscribers). A stream declared before
/// this limit existed gets it in place (see [`declare_stream`]).
pub const ARCHIVE_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The streams of a prefix, with their configs.
pub(crate) fn stream_configs(names: &Names) -> Vec<stream::Config> {
    let p = names.prefix();
    let base = |name: String, subjects: Vec<String>, retention| stream::Config {
        name,
        subjects,
        retention,
        storage: StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    };
    vec![
        base(
            names.jobs_stream(),
            vec![format!("{p}.jobs.>")],
            RetentionPolicy::WorkQueue,
        ),
        stream::Config {
            max_age: ARCHIVE_MAX_AGE,
            ..base(
                names.dlq_stream(),
                vec![format!("{p}.dlq.>")],
                RetentionPolicy::Limits,
            )
        },
        base(
            names.events_stream(),
            vec![format!("{p}.events.>")],
            RetentionPolicy::WorkQueue,
        ),
        base(
            names.submit_stream(),
            vec![names.submit()],
            RetentionPolicy::WorkQueue,
        ),
        // A cancellation is kept for a bounded time, not forever: it only matters while jobs of its
        // pipeline may still be queued (and it is scoped to the pipeline's creation time anyway).
        stream::Config {
            max_messages_per_subject: 1,
            max_age: control::RETENTION,
            ..base(
                names.control_stream(),
                vec![format!("{p}.control.>")],
                RetentionPolicy::Limits,
            )
        },
        stream::Config {
            max_age: ARCHIVE_MAX_AGE,
            ..base(
                names.pipelines_stream(),
                vec![format!("{p}.pipelines.>")],
                RetentionPolicy::Limits,
            )
        },
        // WorkQueue: an advisory is deleted once handled, and each stage's consumer filters its
        // own subject, so the consumers never overlap (a WorkQueue requirement).
        base(
            names.backstop_stream(),
            vec![max_deliveries_subject(names, ">")],
            RetentionPolicy::WorkQueue,
        ),
        // WorkQueue: a replayed message is deleted once it is back in its origin stream.
        base(
            names.parked_stream(),
            vec![format!("{}.>", names.parked())],
            RetentionPolicy::WorkQueue,
        ),
    ]
}

/// Sets the replica count of every stream in `streams` (`FLEET_NATS_REPLICAS`).
pub(crate) fn set_replicas(streams: &mut [stream::Config], replicas: usize) {
    for s in streams {
        s.num_replicas = replicas;
    }
}

/// One durable pull consumer fleet wants.
pub(crate) struct WantedConsumer {
    pub(crate) stream: String,
    pub(crate) config: pull::Config,
}

/// A durable explicit-ack pull consumer config.
pub(crate) fn durable(
    name: &str,
    filter: String,
    ack_wait: Duration,
    max_deliver: i64,
    max_ack_pending: i64,
) -> pull::Config {
    pull::Config {
        durable_name: Some(name.to_owned()),
        filter_subject: filter,
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ack_wait,
        max_deliver,
        max_ack_pending,
        // 0: the consumer inherits its stream's replica count (`FLEET_NATS_REPLICAS`), so it
        // follows a `nats stream edit --replicas` too; WorkQueue streams need the two equal.
        num_replicas: 0,
        ..Default::default()
    }
}

/// The durable consumers of a topology.
pub(crate) fn consumer_configs(topology: &Topology) -> Result<Vec<WantedConsumer>, BrokerError> {
    let names = &topology.names;
    // 0 means "no limit" to fleet; the server stores -1 for that.
    let max_deliver = if topology.max_deliver == 0 {
        -1
    } else {
        i64::from(topology.max_deliver)
    };
    let mut out = Vec::new();
    for stage in &topology.stages {
        check_token("stage", stage).map_err(|e| BrokerError::Config(e.to_string()))?;
        out.push(WantedConsumer {
            stream: names.jobs_stream(),
            config: durable(
                stage,
                names.jobs(stage),
                topology.ack_wait,
                max_deliver,
                topology.max_ack_pending,
            ),
        });
        out.push(WantedConsumer {
            stream: names.dlq_stream(),
            config: durable(
                &dlq_consumer(stage),
                names.dlq(stage),
                COORDINATOR_ACK_WAIT,
                i64::from(CONTROL_MAX_DELIVER),
                COORDINATOR_MAX_ACK_PENDING,
            ),
        });
        out.push(WantedConsumer {
            stream: names.backstop_stream(),
            config: durable(
                &backstop_consumer(stage),
                max_deliveries_subject(names, stage),
                COORDINATOR_ACK_WAIT,
                i64::from(CONTROL_MAX_DELIVER),
                COORDINATOR_MAX_ACK_PENDING,
            ),
        });
    }
    let p = names.prefix();
    out.push(WantedConsumer {
        stream: names.events_stream(),
        config: durable(
            COORDINATOR,
            format!("{p}.events.>"),
            COORDINATOR_ACK_WAIT,
            i64::from(CONTROL_MAX_DELIVER),
            COORDINATOR_MAX_ACK_PENDING,
        ),
    });
    out.push(WantedConsumer {
        stream: names.submit_stream(),
        config: durable(
            COORDINATOR,
            names.submit(),
            COORDINATOR_ACK_WAIT,
            i64::from(CONTROL_MAX_DELIVER),
            COORDINATOR_MAX_ACK_PENDING,
        ),
    });
    out.push(WantedConsumer {
        stream: names.parked_stream(),
        config: durable(
            REPLAY,
            format!("{}.>", names.parked()),
            COORDINATOR_ACK_WAIT,
            i64::from(IDLE_QUEUE_MAX_DELIVER),
            COORDINATOR_MAX_ACK_PENDING,
        ),
    });
    Ok(out)
}

/// Fields of an existing stream that differ from what fleet declares.
pub(crate) fn stream_drift(want: &stream::Config, have: &stream::Config) -> Vec<String> {
    let mut d = Vec::new();
    let mut subjects_want = want.subjects.clone();
    let mut subjects_have = have.subjects.clone();
    subjects_want.sort();
    subjects_have.sort();
    if subjects_want != subjects_have {
        d.push(format!(
            "subjects {:?} (want {:?})",
            have.subjects, want.subjects
        ));
    }
    if want.retention != have.retention {
        d.push(format!(
            "retention {:?} (want {:?})",
            have.retention, want.retention
        ));
    }
    if want.storage != have.storage {
        d.push(format!(
            "storage {:?} (want {:?})",
            have.storage, want.storage
        ));
    }
    if want.max_age != have.max_age {
        d.push(format!(
            "max_age {:?} (want {:?})",
            have.max_age, want.max_age
        ));
    }
    if want.num_replicas != have.num_replicas {
        d.push(format!(
            "replicas {} (want {})",
            have.num_replicas, want.num_replicas
        ));
    }
    if want.max_messages_per_subject > 0
        && want.max_messages_per_subject != have.max_messages_per_subject
    {
        d.push(format!(
            "max_messages_per_subject {} (want {})",
            have.max_messages_per_subject, want.max_messages_per_subject
        ));
    }
    d
}

/// Fields of an existing consumer that differ from what fleet declares.
pub(crate) fn consumer_drift(want: &pull::Config, have: &consumer::Config) -> Vec<String> {
    let mut d = Vec::new();
    if !want.ack_wait.is_zero() && want.ack_wait != have.ack_wait {
        d.push(format!(
            "ack_wait {:?} (want {:?})",
            have.ack_wait, want.ack_wait
        ));
    }
    if want.max_deliver != have.max_deliver {
        d.push(format!(
            "max_deliver {} (want {})",
            have.max_deliver, want.max_deliver
        ));
    }
    if want.max_ack_pending > 0 && want.max_ack_pending != have.max_ack_pending {
        d.push(format!(
            "max_ack_pending {} (want {})",
            have.max_ack_pending, want.max_ack_pending
        ));
    }
    if want.filter_subject != have.filter_subject {
        d.push(format!(
            "filter_subject {:?} (want {:?})",
            have.filter_subject, want.filter_subject
        ));
    }
    if want.ack_policy != have.ack_policy {
        d.push(format!(
            "ack_policy {:?} (want {:?})",
            have.ack_policy, want.ack_policy
        ));
    }
    if have.deliver_subject.is_some() {
        d.push("push consumer (want pull)".to_owned());
    }
    d
}

/// Maps a JetStream API error: timeouts and transport failures are connection problems.
pub(crate) fn api_error(
    what: &str,
    timed_out: bool,
    transport: bool,
    e: impl std::fmt::Display,
) -> BrokerError {
    if timed_out || transport {
        BrokerError::ConnectionLost(format!("{what}: {e}"))
    } else {
        BrokerError::Rejected(format!("{what}: {e}"))
    }
}

/// Gets or creates one stream; returns how many drifted fields it has (0 when created).
pub(crate) async fn ensure_stream(
    js: &jetstream::Context,
    limit: Duration,
    want: &stream::Config,
) -> Result<u64, BrokerError> {
    let what = format!("declaring stream {}", want.name);
    let existing = match bounded(limit, js.get_stream(&want.name)).await? {
        Ok(s) => Some(s.cached_info().config.clone()),
        Err(e) => match e.kind() {
            GetStreamErrorKind::JetStream(err)
                if err.error_code() == ErrorCode::STREAM_NOT_FOUND =>
            {
                None
            }
            GetStreamErrorKind::Request => return Err(api_error(&what, false, true, e)),
            _ => return Err(api_error(&what, false, false, e)),
        },
    };
    let have = match existing {
        Some(have) => have,
        None => match bounded(limit, js.create_stream(want.clone())).await? {
            Ok(_) => return Ok(0),
            Err(e) => match e.kind() {
                // Another replica created it meanwhile: compare with what is there.
                CreateStreamErrorKind::JetStream(err)
                    if err.error_code() == ErrorCode::STREAM_NAME_EXIST =>
                {
                    bounded(limit, js.get_stream(&want.name))
                        .await?
                        .map_err(|e| api_error(&what, false, false, e))?
                        .cached_info()
                        .config
                        .clone()
                }
                CreateStreamErrorKind::TimedOut => return Err(api_error(&what, true, false, e)),
                _ => return Err(api_error(&what, false, false, e)),
            },
        },
    };
    let drift = stream_drift(want, &have);
    if drift.len() == 1 && drift[0].starts_with("max_age") {
        // An age limit can be changed in place (a stream declared before fleet set one).
        if let Ok(Ok(_)) = bounded(limit, js.update_stream(want.clone())).await {
            tracing::info!(stream = %want.name, "set the stream's max_age to {:?}", want.max_age);
            return Ok(0);
        }
    }
    if let Some(replicas) = drift.iter().find(|d| d.starts_with("replicas")) {
        // The one drift with an in-place fix: the servers move the data themselves.
        tracing::warn!(
            stream = %want.name,
            differs = %replicas,
            "stream {} has {replicas}: FLEET_NATS_REPLICAS does not change an existing stream. \
             To apply it, run `nats stream edit {} --replicas {}` (the cluster copies the data; \
             consumers follow), or drain the stream, delete it and restart",
            want.name,
            want.name,
            want.num_replicas,
        );
    }
    if !drift.is_empty() {
        tracing::warn!(
            stream = %want.name,
            differs = %drift.join(", "),
            "stream {} exists with another config ({}); using it as it is. Streams are not \
             changed in place: to apply fleet's config, drain it and delete it \
             (`nats stream rm {}`), then restart",
            want.name,
            drift.join(", "),
            want.name,
        );
    }
    Ok(u64::from(!drift.is_empty()))
}

/// Gets or creates one durable consumer; on drift, warns and tries to update it in place.
/// Returns how many consumers drifted (0 or 1). Drift never fails.
pub(crate) async fn ensure_consumer(
    js: &jetstream::Context,
    limit: Duration,
    want: &WantedConsumer,
) -> Result<u64, BrokerError> {
    let name = want.config.durable_name.clone().unwrap_or_default();
    let what = format!("declaring consumer {name} on {}", want.stream);
    let stream = js
        .get_stream_no_info(&want.stream)
        .await
        .map_err(|e| api_error(&what, false, false, e))?;
    let have = match bounded(limit, stream.consumer_info(&name)).await? {
        Ok(info) => info.config,
        Err(e) if matches!(e.kind(), ConsumerInfoErrorKind::NotFound) => {
            return match bounded(limit, stream.create_consumer(want.config.clone())).await? {
                Ok(_) => Ok(0),
                Err(e) => Err(consumer_error(&what, e)),
            };
        }
        Err(e) => return Err(consumer_info_error(&what, e)),
    };
    let drift = consumer_drift(&want.config, &have);
    if drift.is_empty() {
        return Ok(0);
    }
    let differs = drift.join(", ");
    let updated = bounded(limit, stream.update_consumer(want.config.clone())).await;
    match updated {
        Ok(Ok(_)) => tracing::warn!(
            stream = %want.stream,
            consumer = %name,
            differs = %differs,
            "consumer {name} on {} existed with another config ({differs}); updated it to fleet's. \
             If another service declares this stage with other settings, make them agree: \
             ack_wait, max_deliver and max_ack_pending are stage-level",
            want.stream,
        ),
        Ok(Err(e)) => tracing::warn!(
            stream = %want.stream,
            consumer = %name,
            differs = %differs,
            error = %e,
            "consumer {name} on {} exists with another config ({differs}) and the server refused \
             to update it; keeping it as it is. To apply fleet's config, stop the stage's workers \
             and delete the consumer (`nats consumer rm {} {name}`); it is recreated at start-up \
             (WorkQueue retention keeps the pending jobs)",
            want.stream,
            want.stream,
        ),
        Err(e) => tracing::warn!(
            stream = %want.stream,
            consumer = %name,
            differs = %differs,
            error = %e,
            "consumer {name} on {} exists with another config ({differs}); updating it timed out, \
             keeping it as it is",
            want.stream,
        ),
    }
    Ok(1)
}

/// Maps a consumer create/get error.
pub(crate) fn consumer_error(what: &str, e: ConsumerError) -> BrokerError {
    match e.kind() {
        ConsumerErrorKind::TimedOut | ConsumerErrorKind::Request => {
            BrokerError::ConnectionLost(format!("{what}: {e}"))
        }
        _ => BrokerError::Rejected(format!("{what}: {e}")),
    }
}

/// Maps a consumer-info error: missing consumer or stream means the consumer is gone.
pub(crate) fn consumer_info_error(what: &str, e: ConsumerInfoError) -> BrokerError {
    use ConsumerInfoErrorKind as K;
    match e.kind() {
        K::NotFound | K::StreamNotFound => {
            BrokerError::ConsumerCancelled(format!("{what}: not found (declare the topology)"))
        }
        K::TimedOut | K::Request | K::NoResponders | K::Offline => {
            BrokerError::ConnectionLost(format!("{what}: {e}"))
        }
        K::InvalidName | K::JetStream(_) => BrokerError::Rejected(format!("{what}: {e}")),
    }
}

/// Deletes a stream; a missing one is fine.
pub(crate) async fn delete_stream(
    js: &jetstream::Context,
    limit: Duration,
    name: &str,
) -> Result<(), BrokerError> {
    match bounded(limit, js.delete_stream(name)).await? {
        Ok(_) => Ok(()),
        Err(e) => match e.kind() {
            GetStreamErrorKind::JetStream(err)
                if err.error_code() == ErrorCode::STREAM_NOT_FOUND =>
            {
                Ok(())
            }
            GetStreamErrorKind::Request => Err(api_error(
                &format!("deleting stream {name}"),
                false,
                true,
                e,
            )),
            _ => Err(api_error(
                &format!("deleting stream {name}"),
                false,
                false,
                e,
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_follow_the_design() {
        let mut t = Topology::new(Names::new("ab"), &["s1", "s2"]);
        t.ack_wait = Duration::from_secs(7);
        t.max_deliver = 4;
        t.max_ack_pending = 33;
        let streams = stream_configs(&t.names);
        let jobs = &streams[0];
        assert_eq!(jobs.name, "AB_JOBS");
        assert_eq!(jobs.retention, RetentionPolicy::WorkQueue);
        assert_eq!(jobs.duplicate_window, DUPLICATE_WINDOW);
        assert_eq!(streams[4].name, "AB_CONTROL");
        assert_eq!(streams[4].max_messages_per_subject, 1);
        assert_eq!(streams[4].max_age, control::RETENTION);
        assert_eq!(streams[1].max_age, ARCHIVE_MAX_AGE);
        assert_eq!(streams[5].max_age, ARCHIVE_MAX_AGE);
        assert!([0, 2, 3].iter().all(|&i| streams[i].max_age.is_zero()));
        let mut old = streams[4].clone();
        old.max_age = Duration::ZERO;
        let d = stream_drift(&streams[4], &old);
        assert!(d.len() == 1 && d[0].starts_with("max_age"), "{d:?}");
        let consumers = consumer_configs(&t).expect("valid stages");
        let s1 = &consumers[0];
        assert_eq!(s1.stream, "AB_JOBS");
        assert_eq!(s1.config.durable_name.as_deref(), Some("s1"));
        assert_eq!(s1.config.filter_subject, "ab.jobs.s1");
        assert_eq!(s1.config.ack_wait, Duration::from_secs(7));
        assert_eq!(s1.config.max_deliver, 4);
        assert_eq!(s1.config.max_ack_pending, 33);
        assert_eq!(consumers[1].config.durable_name.as_deref(), Some("dlq-s1"));
        let backstop = &consumers[2];
        assert_eq!(backstop.stream, "AB_BACKSTOP");
        assert_eq!(backstop.config.durable_name.as_deref(), Some("backstop-s1"));
        assert_eq!(
            backstop.config.filter_subject,
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.AB_JOBS.s1"
        );
        assert_eq!(consumers.len(), 9);
        // Issue 8: no consumer delivers without limit.
        for c in &consumers {
            assert!(c.config.max_deliver > 0, "{:?}", c.config.durable_name);
        }
        assert_eq!(consumers[8].stream, "AB_PARKED");
        assert_eq!(consumers[8].config.filter_subject, "ab.parked.>");
        let backstop_stream = &streams[6];
        assert_eq!(backstop_stream.name, "AB_BACKSTOP");
        assert_eq!(
            backstop_stream.subjects,
            vec!["$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.AB_JOBS.>".to_owned()]
        );
        assert_eq!(backstop_stream.retention, RetentionPolicy::WorkQueue);
        assert!(consumer_configs(&Topology::new(Names::new("ab"), &["a.b"])).is_err());
    }

    #[test]
    fn every_stream_takes_the_replica_count_and_consumers_inherit_it() {
        let t = Topology::new(Names::new("ab"), &["s1"]);
        let mut streams = stream_configs(&t.names);
        streams.push(crate::retry::retry_stream_config(&t.names));
        set_replicas(&mut streams, 3);
        assert!(streams.iter().all(|s| s.num_replicas == 3));
        let mut have = streams[0].clone();
        have.num_replicas = 1;
        let d = stream_drift(&streams[0], &have);
        assert_eq!(d, vec!["replicas 1 (want 3)".to_owned()]);
        let mut consumers = consumer_configs(&t).expect("valid stages");
        consumers.extend(crate::retry::retry_consumer_configs(&t).expect("valid stages"));
        assert!(consumers.iter().all(|c| c.config.num_replicas == 0));
    }

    #[test]
    fn drift_names_the_fields() {
        let want = durable("s", "p.jobs.s".into(), Duration::from_secs(2), 5, 10);
        let mut have = consumer::Config {
            durable_name: Some("s".into()),
            filter_subject: "p.jobs.s".into(),
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(2),
            max_deliver: 5,
            max_ack_pending: 10,
            ..Default::default()
        };
        assert!(consumer_drift(&want, &have).is_empty());
        have.ack_wait = Duration::from_secs(3);
        have.max_deliver = -1;
        let d = consumer_drift(&want, &have);
        assert_eq!(d.len(), 2);
        assert!(d[0].starts_with("ack_wait"));
        assert!(d[1].starts_with("max_deliver"));
    }
}
