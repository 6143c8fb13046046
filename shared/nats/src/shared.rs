//! [`Shared`]: the state the broker, its subscriptions, ackers and retry movers share (one
//! client, its JetStream context, options, connection state, declared names and ladder).

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self};
use bytes::Bytes;
use fleet_core::BrokerError;
use fleet_protocol::Names;

use crate::conn::{ConnState, NatsOptions, is_up};
use crate::wire::bounded;

/// The JetStream API prefix of the context (and of the pull requests sent by hand, see `pull`).
pub(crate) const JS_API_PREFIX: &str = "$JS.API";

/// State shared by the broker, its subscriptions and its ackers.
pub(crate) struct Shared {
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    pub(crate) opts: NatsOptions,
    pub(crate) conn: Arc<ConnState>,
    pub(crate) names: RwLock<Arc<Names>>,
    /// Retry ladder of the last declared topology (the default before any).
    pub(crate) ladder: RwLock<Arc<Vec<Duration>>>,
    /// Configuration drift found by declarations.
    pub(crate) drift: AtomicU64,
    /// Pull inboxes subscribed since connecting (one per pull subscription).
    pub(crate) pull_inboxes: AtomicU64,
}

impl Shared {
    /// The names of the last declared topology (`fleet` before any).
    pub(crate) fn names(&self) -> Arc<Names> {
        self.names
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The retry ladder of the last declared topology (the default before any).
    pub(crate) fn ladder(&self) -> Arc<Vec<Duration>> {
        self.ladder
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// True while connected.
    pub(crate) fn is_up(&self) -> bool {
        is_up(&self.client, &self.conn)
    }

    /// The connection-lost error to return when the connection is down.
    pub(crate) fn lost(&self, what: &str) -> BrokerError {
        BrokerError::ConnectionLost(format!("{what}: NATS connection is down"))
    }

    /// `e`, unless the connection is down, which is then the better explanation.
    pub(crate) fn or_lost(&self, what: &str, e: BrokerError) -> BrokerError {
        if self.is_up() { e } else { self.lost(what) }
    }

    /// Bound on a client-side wait that the client itself bounds by the request timeout.
    pub(crate) fn outer_limit(&self) -> Duration {
        self.opts.request_timeout + Duration::from_millis(500)
    }

    /// JetStream publish, waiting (bounded) for the stream's ack.
    pub(crate) async fn publish_raw(
        &self,
        subject: String,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<(), BrokerError> {
        // Error context, built only for an error.
        let what = || format!("publishing to {subject}");
        let mut publish = PublishMessage::build().payload(body);
        if !headers.is_empty() {
            publish = publish.headers(headers);
        }
        let limit = self.opts.request_timeout;
        let sent = bounded(self.outer_limit(), async {
            self.js.send_publish(subject.clone(), publish).await?.await
        })
        .await
        .map_err(|e| self.or_lost(&what(), e))?;
        match sent {
            Ok(_ack) => Ok(()),
            Err(e) => Err(match e.kind() {
                PublishErrorKind::StreamNotFound => BrokerError::Rejected(format!(
                    "{}: no stream takes this subject (declare the topology first)",
                    what()
                )),
                PublishErrorKind::TimedOut => self.or_lost(&what(), BrokerError::Timeout(limit)),
                PublishErrorKind::BrokenPipe => {
                    BrokerError::ConnectionLost(format!("{}: {e}", what()))
                }
                PublishErrorKind::MaxPayloadExceeded => {
                    BrokerError::Rejected(format!("{}: {e}", what()))
                }
                _ => self.or_lost(&what(), BrokerError::Rejected(format!("{}: {e}", what()))),
            }),
        }
    }
}
