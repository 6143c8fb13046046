//! The `fleet-summarizer` binary: parse the config, then [`fleet_summarizer::run`] until SIGTERM.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut config = fleet_summarizer::Config::parse();
    config.runtime.load_secret_files()?;
    fleet_runtime::telemetry::logging::init(config.runtime.log_format);
    let shutdown = fleet_runtime::shutdown::on_signals();
    fleet_summarizer::run(config, shutdown).await
}
