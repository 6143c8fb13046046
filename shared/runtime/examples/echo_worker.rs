//! A complete fleet worker in under 50 lines: how a third party writes its own
//! service on the runtime. It upper-cases `payload.text` and passes it on.
//!
//! Run it on the in-process broker: `cargo run --example echo_worker -p fleet-runtime`,
//! or on RabbitMQ: `FLEET_BROKER_URL=amqp://guest:guest@127.0.0.1:5672/%2f cargo run ...`.

use clap::Parser;
use fleet_runtime::{Handler, JobContext, JobEnvelope, JobError, Output, RuntimeConfig, Worker};

/// Upper-cases text; every runtime option is a flag or FLEET_* variable (see --help).
#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    runtime: RuntimeConfig,
}

struct Echo;

#[async_trait::async_trait]
impl Handler for Echo {
    async fn handle(&self, job: &JobEnvelope, ctx: &JobContext) -> Result<Output, JobError> {
        let text = job.payload["text"]
            .as_str()
            .ok_or_else(|| JobError::permanent("payload.text is missing"))?;
        ctx.progress(1, Some(1), "upper-cased");
        Ok(Output::new(
            serde_json::json!({ "text": text.to_uppercase() }),
        ))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    fleet_runtime::telemetry::logging::init(cli.runtime.log_format);
    let shutdown = fleet_runtime::shutdown::on_signals();
    Worker::new(cli.runtime, "echo").run(Echo, shutdown).await
}
