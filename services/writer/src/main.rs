//! The `fleet-writer` binary: parse the config, install logging and signal
//! handling, and hand over to [`fleet_writer::run`].

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut config = fleet_writer::Config::parse();
    config.load_secret_files()?;
    fleet_runtime::telemetry::logging::init(config.runtime.log_format);
    let shutdown = fleet_runtime::shutdown::on_signals();
    fleet_writer::run(config, shutdown).await
}
