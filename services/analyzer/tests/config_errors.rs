//! Every configuration error at once: the binary started with both a service setting and a
//! runtime setting wrong names both in one message and exits non-zero, before any broker.

use std::time::Duration;

#[test]
fn service_and_runtime_errors_come_in_one_message() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fleet-analyzer"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("FLEET_BROKER_URL", "memory://")
        .env("FLEET_ADMIN_ADDR", "127.0.0.1:0")
        .env("FLEET_CONCURRENCY", "0")
        .env("FLEET_ANALYZERS_CONFIG", "/nonexistent/analyzers.toml")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the binary");
    let status = fleet_test_support::wait_for_blocking(
        "the binary to exit",
        Duration::from_secs(20),
        || child.try_wait().expect("try_wait"),
    );
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("FLEET_CONCURRENCY must be at least 1")
            && stderr.contains("/nonexistent/analyzers.toml"),
        "both errors at once: {stderr}"
    );
}
