//! The shared context every part of the coordinator works with.

use std::sync::Arc;

use fleet_core::Broker;
use fleet_protocol::RouteStep;
use fleet_store::Store;
use tokio::sync::Notify;

use crate::config::Config;
use crate::ingest::IngestCtx;
use crate::model::Millis;
use crate::plan::PlanLimits;

/// Store, broker, config and the relay's nudge, shared by all tasks and handlers.
#[derive(Clone)]
pub struct App {
    /// The database.
    pub store: Store,
    /// The broker connection.
    pub broker: Arc<dyn Broker>,
    /// The configuration.
    pub config: Arc<Config>,
    /// Wakes the outbox relay after a commit that wrote outbox rows.
    pub relay: Arc<Notify>,
    /// Defaults for event ingestion.
    pub ingest: IngestCtx,
    /// Submission defaults and limits.
    pub limits: Arc<PlanLimits>,
    /// When this coordinator started.
    pub started_at: Millis,
    /// The dead-letter replay rate limit (API and console).
    pub replays: Arc<crate::replay_limit::ReplayLimit>,
}

impl App {
    /// Builds the context from its parts.
    pub fn new(store: Store, broker: Arc<dyn Broker>, config: Config) -> App {
        let route: Vec<RouteStep> = config.default_route();
        let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        App {
            ingest: IngestCtx {
                heartbeat_ms: ms(config.heartbeat()),
                default_timeout_ms: ms(config.stage_timeout),
                default_max_attempts: i64::from(config.stage_max_attempts),
            },
            limits: Arc::new(PlanLimits {
                default_route: route,
                default_timeout_ms: u64::try_from(config.stage_timeout.as_millis())
                    .unwrap_or(u64::MAX),
                default_max_attempts: config.stage_max_attempts,
                max_item_bytes: config.item_limit(),
            }),
            store,
            broker,
            config: Arc::new(config),
            relay: Arc::new(Notify::new()),
            started_at: crate::model::now_ms(),
            replays: Arc::default(),
        }
    }

    /// The stages of the default route.
    pub fn stages(&self) -> Vec<String> {
        self.limits
            .default_route
            .iter()
            .map(|s| s.stage.clone())
            .collect()
    }
}
