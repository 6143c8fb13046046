//! Every configuration error at once: the binary started with both a service setting and a
//! runtime setting wrong names both in one message and exits non-zero, before any broker.

use fleet_test_support::run_to_exit;

#[test]
fn service_and_runtime_errors_come_in_one_message() {
    let (ok, stderr) = run_to_exit(
        env!("CARGO_BIN_EXE_fleet-writer"),
        &[("FLEET_CONCURRENCY", "0"), ("FLEET_BATCH_SIZE", "0")],
    );
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("FLEET_CONCURRENCY must be at least 1")
            && stderr.contains("FLEET_BATCH_SIZE (0)"),
        "both errors at once: {stderr}"
    );
}
