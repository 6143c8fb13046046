//! The `fleet-analyzer` binary: parse the config, then [`fleet_analyzer::run`] until SIGTERM.
//! Started as `fleet-analyzer __fleet-command-guard …` it is the command guard instead
//! ([`fleet_analyzer::guard`]): no runtime, no config, just the program and its group.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    if let Some(code) = fleet_analyzer::guard::dispatch() {
        std::process::exit(code);
    }
    serve()
}

#[tokio::main]
async fn serve() -> anyhow::Result<()> {
    let mut config = fleet_analyzer::Config::parse();
    config.runtime.load_secret_files()?;
    fleet_runtime::telemetry::logging::init(config.runtime.log_format);
    if cfg!(target_os = "linux") {
        match std::env::current_exe() {
            Ok(me) => fleet_analyzer::guard::use_guard(me),
            Err(e) => {
                tracing::warn!(error = %e, "cannot find this binary; command analyzers run without the guard and may outlive a killed analyzer")
            }
        }
    }
    let shutdown = fleet_runtime::shutdown::on_signals();
    fleet_analyzer::run(config, shutdown).await
}
