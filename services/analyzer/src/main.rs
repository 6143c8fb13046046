//! The `fleet-analyzer` binary: parse the config, then [`fleet_analyzer::run`] until SIGTERM.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = fleet_analyzer::Config::parse();
    fleet_runtime::telemetry::logging::init(config.runtime.log_format);
    let shutdown = fleet_runtime::shutdown::on_signals();
    fleet_analyzer::run(config, shutdown).await
}
