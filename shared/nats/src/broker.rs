//! [`NatsBroker`]: the [`Broker`] implementation over one async-nats client.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self};
use async_trait::async_trait;
use fleet_core::broker::default_retry_ladder;
use fleet_core::{
    Broker, BrokerError, BrokerKind, OutMessage, Source, SubscribeOptions, Subscription, Topology,
};
use fleet_protocol::Names;

use crate::backstop::DeadLetterSubscription;
use crate::conn::{ConnState, NatsOptions};
use crate::retry;
use crate::shared::Shared;
use crate::subscription::{ControlSubscription, PullSubscription};
use crate::topology::{self, COORDINATOR, dlq_consumer};
use crate::wire::{self, bounded};

/// A NATS JetStream broker. Cloning shares the connection.
#[derive(Clone)]
pub struct NatsBroker {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for NatsBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBroker")
            .field("prefix", &self.shared.names().prefix())
            .field("connected", &self.shared.is_up())
            .finish_non_exhaustive()
    }
}

impl NatsBroker {
    pub(crate) fn new(client: async_nats::Client, opts: NatsOptions, conn: Arc<ConnState>) -> Self {
        let js = jetstream::ContextBuilder::new()
            .timeout(opts.request_timeout)
            .build(client.clone());
        NatsBroker {
            shared: Arc::new(Shared {
                client,
                js,
                opts,
                conn,
                names: RwLock::new(Arc::new(Names::default())),
                ladder: RwLock::new(Arc::new(default_retry_ladder())),
                drift: AtomicU64::new(0),
            }),
        }
    }

    /// Streams and consumers found with another config than declared, since connecting
    /// (export it as a metric; each [`Broker::declare`] adds what it finds).
    pub fn config_drift_count(&self) -> u64 {
        self.shared.drift.load(Ordering::Relaxed)
    }

    /// Replicas of every stream this broker declares (`FLEET_NATS_REPLICAS`).
    pub fn replicas(&self) -> usize {
        self.shared.opts.replicas
    }

    /// Disconnections the client has reported since connecting.
    pub fn disconnect_count(&self) -> u64 {
        self.shared.conn.disconnects()
    }

    /// The names in use (set by [`Broker::declare`]; `fleet` before it).
    pub fn names(&self) -> Names {
        self.shared.names().as_ref().clone()
    }

    /// Uses `names` without declaring anything (for clients such as `fleetctl` that only publish
    /// or inspect).
    pub fn set_names(&self, names: Names) {
        *self
            .shared
            .names
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(names);
    }

    /// The underlying JetStream context, for benchmarks and diagnostics only.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.shared.js
    }

    fn consumer_of(&self, source: &Source) -> Result<(String, String), BrokerError> {
        let names = self.shared.names();
        Ok(match source {
            Source::Jobs { stage } => {
                wire::check_token("stage", stage)?;
                (names.jobs_stream(), stage.clone())
            }
            Source::DeadLetters { stage } => {
                wire::check_token("stage", stage)?;
                (names.dlq_stream(), dlq_consumer(stage))
            }
            Source::Events => (names.events_stream(), COORDINATOR.to_owned()),
            Source::Submit => (names.submit_stream(), COORDINATOR.to_owned()),
            Source::Control => (names.control_stream(), String::new()),
        })
    }
}

#[async_trait]
impl Broker for NatsBroker {
    fn kind(&self) -> BrokerKind {
        BrokerKind::Nats
    }

    async fn declare(&self, topology: &Topology) -> Result<(), BrokerError> {
        let mut consumers = topology::consumer_configs(topology)?;
        consumers.extend(retry::retry_consumer_configs(topology)?);
        let shared = &self.shared;
        let limit = shared.outer_limit();
        let mut drift = 0;
        let mut streams = topology::stream_configs(&topology.names);
        streams.push(retry::retry_stream_config(&topology.names));
        // One place sets the replica count, so no stream (present or future) is left at R1.
        topology::set_replicas(&mut streams, shared.opts.replicas);
        for stream in streams {
            drift += topology::ensure_stream(&shared.js, limit, &stream)
                .await
                .map_err(|e| shared.or_lost("declare", e))?;
        }
        for consumer in &consumers {
            drift += topology::ensure_consumer(&shared.js, limit, consumer)
                .await
                .map_err(|e| shared.or_lost("declare", e))?;
        }
        shared.drift.fetch_add(drift, Ordering::Relaxed);
        self.set_names(topology.names.clone());
        *shared
            .ladder
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(topology.retry_ladder.clone());
        Ok(())
    }

    fn config_drift(&self) -> u64 {
        self.config_drift_count()
    }

    async fn publish(&self, msg: OutMessage) -> Result<(), BrokerError> {
        let subject = wire::subject_for(&self.shared.names(), &msg.dest)?;
        let mut headers = HeaderMap::new();
        wire::append_headers(&mut headers, &msg.headers)?;
        if let Some(id) = &msg.msg_id {
            headers.insert(async_nats::header::NATS_MESSAGE_ID, wire::header_value(id));
        }
        self.shared.publish_raw(subject, headers, msg.body).await
    }

    async fn subscribe(
        &self,
        source: Source,
        _opts: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>, BrokerError> {
        let (stream, consumer) = self.consumer_of(&source)?;
        let shared = self.shared.clone();
        if source == Source::Control {
            let prefix = self.shared.names().prefix().to_owned();
            return Ok(Box::new(
                ControlSubscription::open(shared, stream, &prefix).await?,
            ));
        }
        if let Source::DeadLetters { stage } = &source {
            // The DLQ of a stage also receives the jobs its max_deliver backstop gave up on.
            return Ok(Box::new(
                DeadLetterSubscription::open(shared, stream, consumer, stage.clone()).await?,
            ));
        }
        let dlq_stage = match &source {
            Source::Jobs { stage } => Some(stage.clone()),
            _ => None,
        };
        let mut sub = PullSubscription::open(shared, stream, consumer, dlq_stage).await?;
        if let Source::Jobs { stage } = &source {
            // Whoever consumes a stage also brings its due retries back (see `retry`).
            sub.movers = Some(retry::spawn_movers(&self.shared, stage));
        }
        Ok(Box::new(sub))
    }

    fn is_connected(&self) -> bool {
        self.shared.is_up()
    }

    async fn reconnect(&self) -> Result<(), BrokerError> {
        let shared = &self.shared;
        let limit = shared.opts.connect_timeout;
        let waited = tokio::time::timeout(limit, async {
            loop {
                let changed = shared.conn.changed.notified();
                if shared.conn.is_closed() {
                    return Err(BrokerError::ConnectionLost(
                        "NATS connection is closed; connect again".into(),
                    ));
                }
                if shared.is_up() {
                    return Ok(());
                }
                // The state watch is not public: events wake us early, polling covers the rest.
                tokio::select! {
                    () = changed => {}
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        })
        .await;
        waited.unwrap_or_else(|_| {
            Err(BrokerError::ConnectionLost(format!(
                "NATS did not reconnect within {limit:?}"
            )))
        })
    }

    async fn depth(&self, source: &Source) -> Result<u64, BrokerError> {
        let (stream_name, consumer) = self.consumer_of(source)?;
        let shared = &self.shared;
        let limit = shared.outer_limit();
        let what = format!("depth of {stream_name}");
        if *source == Source::Control {
            let stream = bounded(limit, shared.js.get_stream(&stream_name))
                .await?
                .map_err(|e| {
                    shared.or_lost(&what, BrokerError::Rejected(format!("{what}: {e}")))
                })?;
            return Ok(stream.cached_info().state.messages);
        }
        let stream = shared
            .js
            .get_stream_no_info(&stream_name)
            .await
            .map_err(|e| BrokerError::Rejected(format!("{what}: {e}")))?;
        let info = bounded(limit, stream.consumer_info(&consumer))
            .await?
            .map_err(|e| topology::consumer_info_error(&what, e))?;
        Ok(info.num_pending)
    }

    async fn retrying(&self, stage: &str) -> Result<u64, BrokerError> {
        retry::waiting(&self.shared, stage).await
    }

    async fn parked(&self) -> Result<u64, BrokerError> {
        let shared = &self.shared;
        let name = shared.names().parked_stream();
        let what = format!("depth of {name}");
        let stream = bounded(shared.outer_limit(), shared.js.get_stream(&name))
            .await?
            .map_err(|e| shared.or_lost(&what, BrokerError::Rejected(format!("{what}: {e}"))))?;
        Ok(stream.cached_info().state.messages)
    }

    async fn replay_parked(&self, max: usize) -> Result<u64, BrokerError> {
        let shared = self.shared.clone();
        let stream = shared.names().parked_stream();
        let mut sub =
            PullSubscription::open(shared.clone(), stream, topology::REPLAY.into(), None).await?;
        let mut moved = 0u64;
        while usize::try_from(moved).unwrap_or(usize::MAX) < max {
            let want = (max - usize::try_from(moved).unwrap_or(max)).min(64);
            let batch = sub.fetch(want, Duration::from_millis(200)).await?;
            if batch.is_empty() {
                break;
            }
            for d in batch {
                let Some(origin) = fleet_core::broker::parked_origin(&d.headers) else {
                    let _ = d.acker.release().await;
                    return Err(BrokerError::Rejected(
                        "a parked message has no fleet-parked-from header, so its origin is \
                         unknown: inspect it (`nats stream view`) and move it by hand"
                            .into(),
                    ));
                };
                let mut headers = HeaderMap::new();
                wire::append_headers(
                    &mut headers,
                    &fleet_core::broker::replayed_headers(&d.headers),
                )?;
                shared.publish_raw(origin.clone(), headers, d.body).await?;
                d.acker.ack().await?;
                tracing::info!(%origin, "nats: replayed a parked message");
                moved += 1;
            }
        }
        Ok(moved)
    }

    async fn delete_topology(&self, topology: &Topology) -> Result<(), BrokerError> {
        let limit = self.shared.outer_limit();
        let mut streams = topology::stream_configs(&topology.names);
        streams.push(retry::retry_stream_config(&topology.names));
        for stream in streams {
            topology::delete_stream(&self.shared.js, limit, &stream.name)
                .await
                .map_err(|e| self.shared.or_lost("delete_topology", e))?;
        }
        Ok(())
    }

    async fn close(&self) {
        let shared = &self.shared;
        // Drain flushes pending publishes and acks, then closes the connection.
        if let Ok(Err(e)) = bounded(shared.opts.request_timeout, shared.client.drain()).await {
            tracing::debug!(error = %e, "nats: drain on close failed");
        }
        shared.conn.mark_closed();
    }
}
