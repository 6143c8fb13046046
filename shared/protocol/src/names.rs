//! Broker names derived from one configurable prefix (DESIGN §4, "Names").

/// Names of queues, exchanges, streams and subjects for one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    prefix: String,
}

impl Default for Names {
    fn default() -> Self {
        Names::new("fleet")
    }
}

impl Names {
    /// Names under `prefix` (default `fleet`).
    pub fn new(prefix: &str) -> Names {
        Names {
            prefix: prefix.to_owned(),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn stream(&self, what: &str) -> String {
        format!(
            "{}_{what}",
            self.prefix.to_uppercase().replace(['.', '-'], "_")
        )
    }

    /// RabbitMQ queue / NATS subject for pipeline submissions.
    pub fn submit(&self) -> String {
        format!("{}.submit", self.prefix)
    }
    /// RabbitMQ direct exchange for jobs.
    pub fn jobs_exchange(&self) -> String {
        format!("{}.jobs", self.prefix)
    }
    /// RabbitMQ queue / NATS subject of a stage's jobs.
    pub fn jobs(&self, stage: &str) -> String {
        format!("{}.jobs.{stage}", self.prefix)
    }
    /// RabbitMQ delayed-retry queue of a stage for one ladder step.
    pub fn retry_queue(&self, stage: &str, delay_label: &str) -> String {
        format!("{}.retry.{stage}.{delay_label}", self.prefix)
    }
    /// RabbitMQ queue / NATS subject prefix of parked control messages (event batches,
    /// submissions and dead letters the coordinator gave up on), kept for replay.
    pub fn parked(&self) -> String {
        format!("{}.parked", self.prefix)
    }
    /// NATS stream of parked control messages.
    pub fn parked_stream(&self) -> String {
        self.stream("PARKED")
    }
    /// RabbitMQ delayed-retry queue (and fanout exchange) of control messages for one step.
    pub fn control_retry(&self, delay_label: &str) -> String {
        format!("{}.retry.control.{delay_label}", self.prefix)
    }
    /// RabbitMQ dead-letter exchange.
    pub fn dlq_exchange(&self) -> String {
        format!("{}.dlq", self.prefix)
    }
    /// RabbitMQ queue / NATS subject of a stage's dead letters.
    pub fn dlq(&self, stage: &str) -> String {
        format!("{}.dlq.{stage}", self.prefix)
    }
    /// RabbitMQ topic exchange for event batches.
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }
    /// NATS subject of a stage's event batches.
    pub fn events(&self, stage: &str) -> String {
        format!("{}.events.{stage}", self.prefix)
    }
    /// RabbitMQ queue the coordinator reads events from.
    pub fn coordinator_events_queue(&self) -> String {
        format!("{}.coordinator.events", self.prefix)
    }
    /// RabbitMQ topic exchange / NATS subject prefix for finalized pipelines.
    pub fn pipelines(&self, state: &str) -> String {
        format!("{}.pipelines.{state}", self.prefix)
    }
    /// RabbitMQ topic exchange for finalized pipelines.
    pub fn pipelines_exchange(&self) -> String {
        format!("{}.pipelines", self.prefix)
    }
    /// RabbitMQ fanout exchange for cancellations.
    pub fn control_exchange(&self) -> String {
        format!("{}.control", self.prefix)
    }
    /// NATS subject carrying one pipeline's cancellation.
    pub fn control(&self, pipeline_id: &str) -> String {
        format!("{}.control.{pipeline_id}", self.prefix)
    }
    /// NATS stream of submissions.
    pub fn submit_stream(&self) -> String {
        self.stream("SUBMIT")
    }
    /// NATS stream of jobs (WorkQueue retention).
    pub fn jobs_stream(&self) -> String {
        self.stream("JOBS")
    }
    /// NATS stream of dead letters.
    pub fn dlq_stream(&self) -> String {
        self.stream("DLQ")
    }
    /// NATS stream of event batches.
    pub fn events_stream(&self) -> String {
        self.stream("EVENTS")
    }
    /// NATS stream of cancellations (one message per subject).
    pub fn control_stream(&self) -> String {
        self.stream("CONTROL")
    }
    /// NATS stream of finalized pipelines.
    pub fn pipelines_stream(&self) -> String {
        self.stream("PIPELINES")
    }
    /// NATS stream capturing the `MAX_DELIVERIES` advisories of the jobs stream's consumers.
    pub fn backstop_stream(&self) -> String {
        self.stream("BACKSTOP")
    }
    /// NATS stream holding jobs that wait for a delayed retry (subjects `<p>.retry.<stage>.<delay>`,
    /// the names of the RabbitMQ retry queues).
    pub fn retry_stream(&self) -> String {
        self.stream("RETRY")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_match_design() {
        let n = Names::default();
        assert_eq!(n.jobs("analyze"), "fleet.jobs.analyze");
        assert_eq!(n.retry_queue("analyze", "5s"), "fleet.retry.analyze.5s");
        assert_eq!(n.dlq("write"), "fleet.dlq.write");
        assert_eq!(n.jobs_stream(), "FLEET_JOBS");
        assert_eq!(n.backstop_stream(), "FLEET_BACKSTOP");
        assert_eq!(Names::new("t-1.x").jobs_stream(), "T_1_X_JOBS");
        assert_eq!(n.control("p1"), "fleet.control.p1");
    }
}
