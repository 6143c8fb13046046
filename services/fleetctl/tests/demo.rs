//! `fleetctl demo` end to end: coordinator + analyzer + summarizer + writer in
//! one process over three small files; exits 0 with a completed report.

mod common;

use common::{fleetctl, fleetctl_in, temp_dir, text_files};

#[tokio::test]
async fn demo_processes_three_files_and_completes() {
    let input = text_files(
        "demo-in",
        &[
            (
                "one.txt",
                "Message queues decouple producers from consumers. Workers pull jobs and ack them when done. A dead worker's jobs are redelivered.",
            ),
            (
                "two.md",
                "# Pipelines\n\nA pipeline is finalized once: completed, partial success, failed, cancelled or timed out. The coordinator sweeps every tick.",
            ),
            (
                "three.txt",
                "Retries back off with jitter. A retry budget stretches delays during outages so retries do not multiply load.",
            ),
        ],
    );
    let data = temp_dir("demo-data");
    let r = fleetctl(&[
        "demo",
        "--data",
        &data.display().to_string(),
        &input.display().to_string(),
    ])
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    for needle in [
        "submitted 3 items",
        "state      completed",
        "3/3 finished",
        "results: 3 rows in",
        "sqlite3 ",
        "results.sqlite",
    ] {
        assert!(r.stdout.contains(needle), "missing {needle:?}: {}", r.all());
    }
    assert!(data.join("results.sqlite").exists());
    let _ = std::fs::remove_dir_all(input);
    let _ = std::fs::remove_dir_all(data);
}

#[tokio::test]
async fn demo_without_inputs_says_what_to_do() {
    let empty = temp_dir("demo-empty");
    let r = fleetctl_in(&["demo"], Some(&empty)).await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("docs/") && r.stderr.contains("fleetctl demo PATH"),
        "{}",
        r.all()
    );
    let _ = std::fs::remove_dir_all(empty);
}
