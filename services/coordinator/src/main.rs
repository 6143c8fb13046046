//! `fleet-coordinator`: parse the config, run until SIGTERM/SIGINT.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut config = fleet_coordinator::Config::parse();
    config.load_secret_files()?;
    let shutdown = fleet_runtime::shutdown::on_signals();
    fleet_coordinator::run(config, shutdown).await
}
