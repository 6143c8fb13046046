//! [`AmqpBroker`]: the [`Broker`] implementation over one replaceable connection.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use fleet_core::broker::{default_retry_ladder, ladder_label};
use fleet_core::{
    Broker, BrokerError, BrokerKind, OutMessage, Source, SubscribeOptions, Subscription, Topology,
};
use fleet_protocol::Names;
use lapin::Channel;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::uri::AMQPUri;

use crate::ack_window::{AckCounters, AckWindow};
use crate::acker::SubContext;
use crate::connect::{Conn, parse_urls};
use crate::error::{NOT_FOUND, map_lapin, reply_code, short, timed, timed_raw};
use crate::headers::to_table;
use crate::options::AmqpOptions;
use crate::publish::{properties, route};
use crate::subscription::AmqpSubscription;
use crate::topology;

/// Names and retry ladder in use (from the last [`Broker::declare`]).
#[derive(Clone)]
struct Layout {
    names: Names,
    ladder: Vec<Duration>,
}

struct Inner {
    /// The cluster's nodes (one for a single broker), in the order given.
    uris: Vec<AMQPUri>,
    /// Index in `uris` of the node the current connection goes to.
    node: AtomicUsize,
    opts: AmqpOptions,
    conn: RwLock<Arc<Conn>>,
    reconnecting: tokio::sync::Mutex<()>,
    layout: RwLock<Layout>,
    closed: AtomicBool,
    /// Ack frames sent and deliveries they acked, over every subscription.
    acks: Arc<AckCounters>,
}

/// Ack frames a broker sent and the deliveries they acked (a multiple ack covers several):
/// see [`AmqpBroker::ack_stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AckStats {
    /// `basic.ack` frames sent (each single or multiple).
    pub frames: u64,
    /// Deliveries those frames acked.
    pub deliveries: u64,
}

/// A RabbitMQ broker (lapin). Cloning shares the connection.
///
/// * Publishes share one confirm-mode channel and are persistent; a job, event,
///   dead letter or submission no queue takes is [`BrokerError::Rejected`].
/// * Each subscription has its own channel; dropping it closes that channel, so
///   its unsettled deliveries return to the queue and their ackers fail.
/// * `retry` republishes to the stage's TTL queue (the delay rounded down to the
///   ladder) then acks; outside job queues (no ladder) it requeues at once and
///   returns `Duration::ZERO`. `extend` is a no-op and `lease` is `None`.
/// * `reconnect` keeps a connection that is still open (only a channel was
///   lost) and otherwise replaces it; subscribe again after it.
#[derive(Clone)]
pub struct AmqpBroker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AmqpBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpBroker")
            .field("endpoint", &self.conn().endpoint)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

/// Connects to `url` (`amqp://` or `amqps://`), opening the shared publish channel.
///
/// `url` may list the nodes of a cluster, comma-separated: the first that answers is used,
/// and [`Broker::reconnect`] moves on to the next one.
///
/// Names default to the `fleet` prefix until [`Broker::declare`] or
/// [`AmqpBroker::use_topology`] sets others.
pub async fn connect(url: &str, opts: AmqpOptions) -> Result<AmqpBroker, BrokerError> {
    let uris = parse_urls(url, &opts)?;
    let (conn, node) = Conn::open_any(&uris, 0, &opts).await?;
    Ok(AmqpBroker {
        inner: Arc::new(Inner {
            uris,
            node: AtomicUsize::new(node),
            opts,
            conn: RwLock::new(conn),
            reconnecting: tokio::sync::Mutex::new(()),
            layout: RwLock::new(Layout {
                names: Names::default(),
                ladder: default_retry_ladder(),
            }),
            closed: AtomicBool::new(false),
            acks: Arc::default(),
        }),
    })
}

fn read<T: Clone>(lock: &RwLock<T>) -> T {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

fn write<T>(lock: &RwLock<T>, value: T) {
    *lock
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = value;
}

impl AmqpBroker {
    /// Ack frames sent so far and the deliveries they acked, over every subscription (for
    /// tests and diagnostics; the `fleet_amqp_ack_frames_total` metric counts the frames).
    pub fn ack_stats(&self) -> AckStats {
        let c = &self.inner.acks;
        AckStats {
            frames: c.frames.load(Ordering::Relaxed),
            deliveries: c.deliveries.load(Ordering::Relaxed),
        }
    }

    /// Uses `topology`'s names and retry ladder without declaring anything.
    pub fn use_topology(&self, topology: &Topology) {
        write(
            &self.inner.layout,
            Layout {
                names: topology.names.clone(),
                ladder: topology.retry_ladder.clone(),
            },
        );
    }

    /// The options this broker was connected with.
    pub fn options(&self) -> &AmqpOptions {
        &self.inner.opts
    }

    fn conn(&self) -> Arc<Conn> {
        read(&self.inner.conn)
    }

    fn layout(&self) -> Layout {
        read(&self.inner.layout)
    }

    fn live_conn(&self) -> Result<Arc<Conn>, BrokerError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(BrokerError::ConnectionLost(
                "the broker connection was closed".into(),
            ));
        }
        let conn = self.conn();
        conn.ensure_connected()?;
        Ok(conn)
    }

    /// The durable queue behind `source` (`None` for control, which has one per subscriber).
    fn queue_of(names: &Names, source: &Source) -> Option<String> {
        match source {
            Source::Jobs { stage } => Some(names.jobs(stage)),
            Source::Events => Some(names.coordinator_events_queue()),
            Source::DeadLetters { stage } => Some(names.dlq(stage)),
            Source::Submit => Some(names.submit()),
            Source::Control => None,
        }
    }

    /// A server-named, exclusive, auto-delete queue bound to the control fanout.
    async fn control_queue(
        conn: &Conn,
        channel: &Channel,
        names: &Names,
    ) -> Result<String, BrokerError> {
        let t = conn.op_timeout;
        let opts = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        let queue = timed(
            t,
            "declaring a control queue",
            channel.queue_declare("".into(), opts, FieldTable::default()),
        )
        .await?;
        let exchange = names.control_exchange();
        let bind = channel.queue_bind(
            queue.name().clone(),
            short("exchange", &exchange)?,
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        );
        timed(t, &format!("binding a control queue to {exchange}"), bind).await?;
        Ok(queue.name().to_string())
    }
}

#[async_trait]
impl Broker for AmqpBroker {
    fn kind(&self) -> BrokerKind {
        BrokerKind::RabbitMq
    }

    async fn declare(&self, topology: &Topology) -> Result<(), BrokerError> {
        let conn = self.live_conn()?;
        topology::declare(&conn, topology, self.inner.opts.quorum_group_size).await?;
        self.use_topology(topology);
        Ok(())
    }

    async fn publish(&self, msg: OutMessage) -> Result<(), BrokerError> {
        let conn = self.live_conn()?;
        let route = route(&self.layout().names, &msg.dest);
        let props = properties(to_table(&msg.headers)?, msg.msg_id.as_deref())?;
        conn.send(&route, &msg.body, props).await
    }

    async fn subscribe(
        &self,
        source: Source,
        opts: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>, BrokerError> {
        let conn = self.live_conn()?;
        let layout = self.layout();
        let t = conn.op_timeout;
        let channel = conn.channel().await?;
        let qos = channel.basic_qos(opts.prefetch, BasicQosOptions { global: false });
        timed(t, "setting the prefetch (basic.qos)", qos).await?;
        let queue = match Self::queue_of(&layout.names, &source) {
            Some(queue) => queue,
            None => Self::control_queue(&conn, &channel, &layout.names).await?,
        };
        let consume = channel.basic_consume(
            short("queue", &queue)?,
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        );
        let consumer = match timed_raw(t, consume).await? {
            Ok(consumer) => consumer,
            Err(e) if reply_code(&e) == Some(NOT_FOUND) => {
                return Err(BrokerError::Rejected(format!(
                    "queue {queue} does not exist: declare the topology first"
                )));
            }
            Err(e) => return Err(map_lapin(&format!("consuming {queue}"), &e)),
        };
        let stage = match &source {
            Source::Jobs { stage } => Some(stage.clone()),
            _ => None,
        };
        let control = matches!(
            source,
            Source::Events | Source::Submit | Source::DeadLetters { .. }
        );
        tracing::debug!(%queue, prefetch = opts.prefetch, "subscribed");
        let ctx = Arc::new(SubContext {
            conn: conn.clone(),
            names: layout.names,
            ladder: layout.ladder,
            stage,
            control,
            queue,
            status: channel.status().clone(),
            window: AckWindow::new(self.inner.acks.clone()),
        });
        Ok(Box::new(AmqpSubscription {
            channel,
            consumer,
            ctx,
            ended: None,
            stopped: false,
        }))
    }

    fn is_connected(&self) -> bool {
        !self.inner.closed.load(Ordering::SeqCst) && self.conn().is_connected()
    }

    async fn reconnect(&self) -> Result<(), BrokerError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(BrokerError::ConnectionLost(
                "the broker connection was closed".into(),
            ));
        }
        let limit = self.inner.opts.connect_timeout;
        let _one = tokio::time::timeout(limit, self.inner.reconnecting.lock())
            .await
            .map_err(|_| BrokerError::Timeout(limit))?;
        let old = self.conn();
        if old.is_connected() {
            // Someone else reconnected meanwhile, or only a channel was lost.
            return Ok(());
        }
        // The node that dropped us is likely down (a cluster node lost): start with the next.
        let next = self.inner.node.load(Ordering::SeqCst) + 1;
        let (fresh, node) = Conn::open_any(&self.inner.uris, next, &self.inner.opts).await?;
        self.inner.node.store(node, Ordering::SeqCst);
        write(&self.inner.conn, fresh);
        old.close().await;
        Ok(())
    }

    async fn depth(&self, source: &Source) -> Result<u64, BrokerError> {
        let conn = self.live_conn()?;
        match Self::queue_of(&self.layout().names, source) {
            Some(queue) => topology::ready_count(&conn, &queue).await,
            // Each control subscriber has its own short-lived queue.
            None => Ok(0),
        }
    }

    async fn retrying(&self, stage: &str) -> Result<u64, BrokerError> {
        let conn = self.live_conn()?;
        let layout = self.layout();
        let mut n = 0;
        for step in &layout.ladder {
            let queue = layout.names.retry_queue(stage, &ladder_label(*step));
            n += match topology::ready_count(&conn, &queue).await {
                // A step this stage never declared holds nothing.
                Err(BrokerError::Rejected(e)) if e.contains("does not exist") => 0,
                other => other?,
            };
        }
        Ok(n)
    }

    async fn parked(&self) -> Result<u64, BrokerError> {
        let conn = self.live_conn()?;
        topology::ready_count(&conn, &self.layout().names.parked()).await
    }

    async fn replay_parked(&self, max: usize) -> Result<u64, BrokerError> {
        let conn = self.live_conn()?;
        crate::replay::replay_parked(&conn, &self.layout().names.parked(), max).await
    }

    async fn delete_topology(&self, topology: &Topology) -> Result<(), BrokerError> {
        let conn = self.live_conn()?;
        topology::delete(&conn, topology).await
    }

    async fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.conn().close().await;
    }
}
