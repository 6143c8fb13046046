//! The real `fleetctl` binary: usage errors, an unreachable coordinator, an
//! unreadable file, and every command against a real in-process coordinator.

#![allow(clippy::unwrap_used)] // test assertions; a panic names the failing step

mod common;

use common::{Coordinator, closed_port, fleetctl, text_files};

#[tokio::test]
async fn usage_errors_exit_2_with_a_message() {
    let r = fleetctl(&["submit"]).await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("required"), "{}", r.all());

    let r = fleetctl(&["no-such-command"]).await;
    assert_eq!(r.code, 2, "{}", r.all());

    let dir = text_files("usage", &[("a.txt", "hello")]);
    let file = dir.join("a.txt").display().to_string();
    let r = fleetctl(&["submit", "--route", "analyze,sum.marize", &file]).await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("invalid stage `sum.marize`"),
        "{}",
        r.all()
    );

    let r = fleetctl(&["--url", "not a url", "list"]).await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("--url"), "{}", r.all());

    let r = fleetctl(&["dlq", "purge"]).await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("no dead letters selected"), "{}", r.all());
    assert!(r.stderr.contains("--all"), "{}", r.all());
    let r = fleetctl(&["dlq", "purge", "--stage", ""]).await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("--stage is empty"), "{}", r.all());
    let r = fleetctl(&["dlq", "purge", "--all", "--stage", "write"]).await;
    assert_eq!(r.code, 2, "{}", r.all());
    let r = fleetctl(&["dlq", "replay", "--all"]).await;
    assert_eq!(r.code, 2, "{}", r.all());
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn help_documents_exit_codes() {
    let r = fleetctl(&["--help"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    for needle in [
        "Exit codes",
        "coordinator unreachable",
        "not found",
        "not completed",
    ] {
        assert!(r.stdout.contains(needle), "missing {needle:?}: {}", r.all());
    }
}

#[tokio::test]
async fn unreachable_coordinator_exits_3_with_the_hint() {
    let url = format!("http://127.0.0.1:{}", closed_port());
    for args in [
        vec!["status", "p1"],
        vec!["list"],
        vec!["queues"],
        vec!["watch", "p1"],
    ] {
        let mut all = vec!["--url", url.as_str()];
        all.extend(args);
        let r = fleetctl(&all).await;
        assert_eq!(r.code, 3, "{}", r.all());
        assert!(
            r.stderr
                .contains(&format!("is fleet-coordinator running at {url}?"))
                && r.stderr.contains("FLEET_COORDINATOR_URL"),
            "{}",
            r.all()
        );
    }
}

#[tokio::test]
async fn unreadable_file_names_the_path() {
    let dir = text_files("unreadable", &[("ok.md", "# fine")]);
    let missing = dir.join("missing.md").display().to_string();
    let ok = dir.join("ok.md").display().to_string();
    let r = fleetctl(&["--url", "http://127.0.0.1:1", "submit", &ok, &missing]).await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains(&missing), "{}", r.all());
    assert!(r.stderr.contains("No such file"), "{}", r.all());

    std::fs::write(dir.join("bin.txt"), [0xff, 0xfe, 0x00]).unwrap();
    let bin = dir.join("bin.txt").display().to_string();
    let r = fleetctl(&["submit", &bin]).await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains(&bin) && r.stderr.contains("UTF-8"),
        "{}",
        r.all()
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn submit_twice_with_the_same_id_is_one_pipeline() {
    let c = Coordinator::start(&[]).await;
    let url = c.url();
    let dir = text_files(
        "twice",
        &[("a.txt", "alpha text"), ("b.md", "# beta\n\ntext")],
    );
    let d = dir.display().to_string();
    let id = format!("p-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);

    let r1 = fleetctl(&["--url", &url, "submit", "--pipeline-id", &id, &d]).await;
    assert_eq!(r1.code, 0, "{}", r1.all());
    assert!(
        r1.stdout
            .contains(&format!("created pipeline {id} with 2 items")),
        "{}",
        r1.all()
    );
    let r2 = fleetctl(&["--url", &url, "submit", "--pipeline-id", &id, &d]).await;
    assert_eq!(r2.code, 0, "{}", r2.all());
    assert!(r2.stdout.contains("already exists"), "{}", r2.all());

    // A different body under the same id is refused (409 → usage error).
    std::fs::write(dir.join("c.txt"), "gamma").unwrap();
    let r3 = fleetctl(&["--url", &url, "submit", "--pipeline-id", &id, &d]).await;
    assert_eq!(r3.code, 2, "{}", r3.all());

    let r = fleetctl(&["--url", &url, "list", "--json"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("list JSON");
    let ids: Vec<&str> = v["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["pipeline_id"].as_str())
        .collect();
    assert_eq!(ids, [id.as_str()], "{v}");

    let r = fleetctl(&["--url", &url, "status", "--json", &id]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("status JSON");
    assert_eq!(v["items_total"], 2, "{v}");
    let mut items: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["item_id"].as_str())
        .collect();
    items.sort_unstable();
    let base = dir.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(
        items,
        [format!("{base}/a.txt"), format!("{base}/b.md")],
        "{v}"
    );
    let _ = std::fs::remove_dir_all(dir);
    c.stop().await;
}

/// Items whose command analyzers partly failed: `fleetctl status` counts them as degraded and
/// the state's reason names the failed analyzers.
#[tokio::test]
async fn status_names_degraded_items() {
    use fleet_core::{Destination, OutMessage};
    use fleet_protocol::{Degradation, DegradationKind, Event, EventBatch, EventKind};
    let c = Coordinator::start(&[]).await;
    let url = c.url();
    let dir = text_files(
        "degraded",
        &[("a.txt", "a"), ("b.txt", "b"), ("c.txt", "c")],
    );
    let d = dir.display().to_string();
    let id = format!("deg-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let r = fleetctl(&[
        "--url",
        &url,
        "submit",
        "--pipeline-id",
        &id,
        "--route",
        "analyze",
        &d,
    ])
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    let base = dir.file_name().unwrap().to_string_lossy().into_owned();
    // The analyzer's side: each item succeeds with two command analyzers failed.
    let events = ["a.txt", "b.txt", "c.txt"]
        .iter()
        .map(|f| Event {
            job_id: fleet_protocol::job_id(&id, &format!("{base}/{f}"), "analyze"),
            pipeline_id: id.clone(),
            stage: "analyze".into(),
            attempt: 1,
            seq: 1,
            worker_id: "w".into(),
            at: chrono::Utc::now(),
            kind: EventKind::Succeeded,
            degraded: Some(Degradation::new(
                DegradationKind::AnalyzersFailed,
                "sleeper, exit1",
            )),
        })
        .collect();
    let batch = EventBatch {
        v: 1,
        worker_id: "w".into(),
        stage: "analyze".into(),
        events,
        heartbeat: None,
    };
    c.broker
        .publish(OutMessage::new(
            Destination::Events {
                stage: "analyze".into(),
            },
            serde_json::to_vec(&batch).unwrap(),
        ))
        .await
        .unwrap();
    let mut last = String::new();
    for _ in 0..100 {
        let r = fleetctl(&["--url", &url, "status", &id]).await;
        last = r.all();
        if r.stdout.contains("state      completed") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        last.contains(
            "state      completed (all 3 items succeeded, 3 items degraded: analyzers sleeper, exit1 failed)"
        ),
        "{last}"
    );
    assert!(
        last.contains("items      3/3 finished, 3 degraded"),
        "{last}"
    );
    assert!(last.contains("DEGRADED"), "{last}");
    let _ = std::fs::remove_dir_all(dir);
    c.stop().await;
}

#[tokio::test]
async fn status_list_cancel_watch_queues_and_dlq() {
    let c = Coordinator::start(&[]).await;
    let url = c.url();
    let dir = text_files("cancel", &[("one.txt", "one"), ("two.txt", "two")]);
    let d = dir.display().to_string();

    let r = fleetctl(&[
        "--url",
        &url,
        "submit",
        "--json",
        "--route",
        "analyze,summarize:optional,write",
        "--deadline",
        "30m",
        "--timeout",
        "1m",
        "--max-attempts",
        "2",
        &d,
    ])
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("submit JSON");
    let id = v["pipeline_id"].as_str().expect("id").to_owned();
    assert_eq!(v["created"], true);

    let r = fleetctl(&["--url", &url, "status", &id]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout.contains("state      running") && r.stdout.contains("0/2 finished"),
        "{}",
        r.all()
    );
    assert!(r.stdout.contains("deadline"), "{}", r.all());

    let r = fleetctl(&["--url", &url, "list", "--state", "running"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains(&id), "{}", r.all());

    let r = fleetctl(&["--url", &url, "queues"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout.contains("analyze") && r.stdout.contains("DEPTH"),
        "{}",
        r.all()
    );

    let r = fleetctl(&["--url", &url, "cancel", &id]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("cancellation requested"), "{}", r.all());

    // Watching a cancelled pipeline prints its report and exits 5 (finished, not completed).
    let r = fleetctl(&["--url", &url, "watch", &id]).await;
    assert_eq!(r.code, 5, "{}", r.all());
    assert!(r.stdout.contains("state      cancelled"), "{}", r.all());

    let r = fleetctl(&["--url", &url, "list", "--state", "cancelled"]).await;
    assert!(r.stdout.contains(&id), "{}", r.all());

    // Unknown ids exit 4 and say how to find the right one.
    for args in [
        vec!["status", "nope"],
        vec!["watch", "nope"],
        vec!["cancel", "nope"],
        vec!["dlq", "show", "999"],
    ] {
        let mut all = vec!["--url", url.as_str()];
        all.extend(args);
        let r = fleetctl(&all).await;
        assert_eq!(r.code, 4, "{}", r.all());
        assert!(r.stderr.contains("fleetctl"), "{}", r.all());
    }

    let r = fleetctl(&["--url", &url, "dlq", "list"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("no dead letters"), "{}", r.all());
    let r = fleetctl(&["--url", &url, "dlq", "purge", "--stage", "write"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("dry run: would purge 0"), "{}", r.all());
    let r = fleetctl(&["--url", &url, "dlq", "purge", "--all"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("dry run: would purge 0"), "{}", r.all());
    let r = fleetctl(&[
        "--url",
        &url,
        "dlq",
        "replay",
        "--pipeline-id",
        &id,
        "--yes",
        "--rate",
        "5/s",
    ])
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("nothing to replay"), "{}", r.all());
    let _ = std::fs::remove_dir_all(dir);
    c.stop().await;
}

#[tokio::test]
async fn a_wrong_or_missing_token_says_to_set_it() {
    let c = Coordinator::start(&["--api-token=s3cret"]).await;
    let url = c.url();
    let r = fleetctl(&["--url", &url, "list"]).await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("set FLEET_API_TOKEN"), "{}", r.all());
    let r = fleetctl(&["--url", &url, "--token", "wrong", "list"]).await;
    assert_eq!(r.code, 2, "{}", r.all());
    let r = fleetctl(&["--url", &url, "--token", "s3cret", "list"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    c.stop().await;
}

#[tokio::test]
async fn stdin_jsonl_is_submitted() {
    let c = Coordinator::start(&[]).await;
    let url = c.url();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleetctl"))
        .args(["--url", &url, "submit", "--json", "-"])
        .env_remove("FLEET_API_TOKEN")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    {
        use tokio::io::AsyncWriteExt as _;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(b"{\"item_id\":\"x\",\"text\":\"ex\"}\n{\"item_id\":\"y\",\"text\":\"why\",\"metadata\":{\"k\":1}}\n")
            .await
            .unwrap();
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("in time")
        .expect("output");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let id = v["pipeline_id"].as_str().unwrap().to_owned();
    let r = fleetctl(&["--url", &url, "status", "--json", &id]).await;
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("status JSON");
    assert_eq!(v["items_total"], 2, "{v}");
    c.stop().await;
}

/// Writes `n` chapters like the seed workloads: 40 % of about 2.5 KB, 60 % of about 25 KB.
fn chapters(tag: &str, n: usize) -> (std::path::PathBuf, usize) {
    let dir = common::temp_dir(tag);
    let mut total = 0;
    for i in 0..n {
        let target = if i % 5 < 2 { 2_500 } else { 25_000 };
        let mut text = format!("# Chapter {i}\n\n");
        let mut w = 0usize;
        while text.len() < target {
            text.push_str(
                [
                    "the ",
                    "queue ",
                    "worker ",
                    "pipeline ",
                    "fleet ",
                    "message ",
                ][(i + w) % 6],
            );
            w += 1;
            if w.is_multiple_of(90) {
                text.push_str(".\n\n");
            }
        }
        total += text.len();
        std::fs::write(dir.join(format!("ch-{i:04}.md")), text).unwrap();
    }
    (dir, total)
}

/// Plays the workers: `started` + `succeeded` for every item at every stage.
async fn finish_all(broker: &std::sync::Arc<dyn fleet_core::Broker>, pid: &str, items: &[String]) {
    for stage in ["analyze", "summarize", "write"] {
        for chunk in items.chunks(200) {
            let mut events = Vec::new();
            for it in chunk {
                for (seq, kind) in [
                    fleet_protocol::EventKind::Started,
                    fleet_protocol::EventKind::Succeeded,
                ]
                .into_iter()
                .enumerate()
                {
                    events.push(fleet_protocol::Event {
                        job_id: fleet_protocol::job_id(pid, it, stage),
                        pipeline_id: pid.into(),
                        stage: stage.into(),
                        attempt: 1,
                        seq: seq as u32,
                        worker_id: "test-worker".into(),
                        at: chrono::Utc::now(),
                        kind,
                        degraded: None,
                    });
                }
            }
            let batch = fleet_protocol::EventBatch {
                v: 1,
                worker_id: "test-worker".into(),
                stage: stage.into(),
                events,
                heartbeat: None,
            };
            broker
                .publish(fleet_core::OutMessage::new(
                    fleet_core::Destination::Events {
                        stage: stage.into(),
                    },
                    serde_json::to_vec(&batch).unwrap(),
                ))
                .await
                .unwrap();
        }
    }
}

/// Takes every job queued for `stage` until none comes within `quiet`.
async fn drain_jobs(
    broker: &std::sync::Arc<dyn fleet_core::Broker>,
    stage: &str,
    quiet: std::time::Duration,
) -> Vec<String> {
    let mut sub = broker
        .subscribe(
            fleet_core::Source::Jobs {
                stage: stage.into(),
            },
            fleet_core::SubscribeOptions { prefetch: 256 },
        )
        .await
        .unwrap();
    let mut ids = Vec::new();
    loop {
        let got = sub.fetch(256, quiet).await.unwrap();
        if got.is_empty() {
            return ids;
        }
        for d in got {
            ids.push(
                fleet_protocol::decode_job(&d.body, usize::MAX)
                    .unwrap()
                    .job_id,
            );
            d.acker.ack().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_16_mb_submission_goes_in_batches_exactly_once_and_completes() {
    use std::time::Duration;
    let c = Coordinator::start(&[]).await;
    let url = c.url();
    let (dir, bytes) = chapters("big", 1000);
    assert!(bytes > 15_000_000, "{bytes}");
    let d = dir.display().to_string();
    let id = format!("big-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);

    let r = fleetctl(&["--url", &url, "submit", "--pipeline-id", &id, &d]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout
            .contains(&format!("created pipeline {id} with 1000 items (sent in")),
        "{}",
        r.all()
    );
    // Every item was accepted exactly once: one first-stage job each.
    let jobs = drain_jobs(&c.broker, "analyze", Duration::from_millis(500)).await;
    let unique: std::collections::BTreeSet<&String> = jobs.iter().collect();
    assert_eq!((jobs.len(), unique.len()), (1000, 1000));
    let items: Vec<String> = jobs
        .iter()
        .map(|j| {
            j.strip_prefix(&format!("{id}/"))
                .unwrap()
                .strip_suffix("/analyze")
                .unwrap()
                .to_owned()
        })
        .collect();
    finish_all(&c.broker, &id, &items).await;
    let http = reqwest::Client::new();
    let status = |http: reqwest::Client, url: String| async move {
        http.get(url)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    };
    let report_url = format!("{url}/v1/pipelines/{id}");
    let mut last = serde_json::Value::Null;
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < until {
        last = status(http.clone(), report_url.clone()).await;
        if last["state"] == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(last["state"], "completed", "{}", last["reason"]);
    assert_eq!(last["items_total"], 1000);

    // Re-running the same submit is a no-op: nothing added, no job published.
    let r = fleetctl(&["--url", &url, "submit", "--pipeline-id", &id, &d]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout.contains("already exists (completed)"),
        "{}",
        r.all()
    );
    assert!(
        drain_jobs(&c.broker, "analyze", Duration::from_millis(300))
            .await
            .is_empty()
    );
    let v = status(http.clone(), report_url.clone()).await;
    assert_eq!(
        (v["state"].clone(), v["items_total"].clone()),
        ("completed".into(), 1000.into())
    );
    let _ = std::fs::remove_dir_all(dir);
    c.stop().await;
}

/// Serves `/v1/pipelines/p/events` like the coordinator, but the first connection
/// breaks after one progress event; the second sends progress and the final report.
async fn flaky_sse_server() -> (String, tokio::task::JoinHandle<usize>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let progress = r#"{"pipeline_id":"p","state":"running","items_total":2,"items_terminal":N,"stages":{"analyze":{"succeeded":N}},"events":[]}"#;
        let report = r#"{"pipeline_id":"p","state":"completed","reason":"all 2 items succeeded","items_total":2,"items_terminal":2,"stages":{"analyze":{"succeeded":2}},"stalled":[],"items":[{"item_id":"a","state":"succeeded"},{"item_id":"b","state":"succeeded"}]}"#;
        for conn in 1..=2 {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = sock.read(&mut buf).await.unwrap();
                assert!(n > 0, "request head");
                head.extend_from_slice(&buf[..n]);
            }
            assert!(String::from_utf8_lossy(&head).starts_with("GET /v1/pipelines/p/events "));
            let mut out = String::from(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n",
            );
            if conn == 1 {
                out.push_str(&format!(
                    "event: progress\ndata: {}\n\n",
                    progress.replace('N', "1")
                ));
            } else {
                out.push_str(&format!(
                    "event: progress\ndata: {}\n\n",
                    progress.replace('N', "2")
                ));
                out.push_str(&format!("event: final\ndata: {report}\n\n"));
            }
            sock.write_all(out.as_bytes()).await.unwrap();
            sock.shutdown().await.unwrap();
        }
        2
    });
    (url, task)
}

#[tokio::test]
async fn watch_reconnects_when_the_stream_breaks() {
    let (url, server) = flaky_sse_server().await;
    let r = fleetctl(&["--url", &url, "watch", "p"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains("reconnecting"), "{}", r.all());
    assert!(
        r.stderr.contains("1/2 items") && r.stderr.contains("2/2 items"),
        "{}",
        r.all()
    );
    assert!(
        r.stdout
            .contains("state      completed (all 2 items succeeded)"),
        "{}",
        r.all()
    );
    assert_eq!(server.await.unwrap(), 2);
}

#[tokio::test]
async fn dlq_list_show_replay_and_purge() {
    use fleet_core::{Destination, OutMessage};
    let c = Coordinator::start(&[]).await;
    let url = c.url();
    let dir = text_files(
        "dlq",
        &[("items.jsonl", "{\"item_id\":\"x\",\"text\":\"ex\"}\n")],
    );
    let file = dir.join("items.jsonl").display().to_string();
    let r = fleetctl(&["--url", &url, "submit", "--pipeline-id", "dq", &file]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    // Item x's summarize job dies in the broker's backstop.
    let mut job =
        fleet_protocol::JobEnvelope::new("dq", "x", "summarize", serde_json::json!({"text": "ex"}));
    job.route = vec![fleet_protocol::RouteStep {
        stage: "write".into(),
        required: true,
    }];
    let mut msg = OutMessage::new(
        Destination::DeadLetter {
            stage: "summarize".into(),
        },
        job.to_bytes(),
    );
    msg.headers = vec![("x-backstop".into(), "delivery-limit".into())];
    c.broker.publish(msg).await.unwrap();
    let mut id = None;
    for _ in 0..100 {
        let r = fleetctl(&[
            "--url",
            &url,
            "dlq",
            "list",
            "--pipeline-id",
            "dq",
            "--json",
        ])
        .await;
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap_or_default();
        if let Some(n) = v["dead_letters"][0]["id"].as_i64() {
            id = Some(n);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let id = id
        .expect("the dead letter is archived within 10s")
        .to_string();

    let r = fleetctl(&["--url", &url, "dlq", "list", "--stage", "summarize"]).await;
    assert!(
        r.code == 0 && r.stdout.contains("summarize") && r.stdout.contains("dq"),
        "{}",
        r.all()
    );
    let r = fleetctl(&["--url", &url, "dlq", "show", &id]).await;
    assert!(
        r.code == 0 && r.stdout.contains("headers:") && r.stdout.contains("\"text\": \"ex\""),
        "{}",
        r.all()
    );

    let r = fleetctl(&["--url", &url, "dlq", "replay", "--pipeline-id", "dq"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout
            .contains("dry run: would replay 1 items of pipeline dq"),
        "{}",
        r.all()
    );
    assert!(r.stdout.contains("--yes"), "{}", r.all());
    let r = fleetctl(&[
        "--url",
        &url,
        "dlq",
        "replay",
        "--pipeline-id",
        "dq",
        "--yes",
        "--rate",
        "10/s",
    ])
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout
            .contains("replayed 1 items of pipeline dq as pipeline "),
        "{}",
        r.all()
    );
    let new_id = r
        .stdout
        .split("as pipeline ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .to_owned();
    let r = fleetctl(&["--url", &url, "status", "--json", &new_id]).await;
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["replay_of"], "dq", "{v}");
    let r = fleetctl(&["--url", &url, "dlq", "replay", &id, "--yes"]).await;
    assert!(
        r.code == 0 && r.stdout.contains("already replayed"),
        "{}",
        r.all()
    );

    let r = fleetctl(&["--url", &url, "dlq", "purge", "--pipeline-id", "dq"]).await;
    assert!(
        r.code == 0 && r.stdout.contains("would purge 1"),
        "{}",
        r.all()
    );
    let r = fleetctl(&[
        "--url",
        &url,
        "dlq",
        "purge",
        "--pipeline-id",
        "dq",
        "--yes",
    ])
    .await;
    assert!(
        r.code == 0 && r.stdout.contains("purged 1 dead letters"),
        "{}",
        r.all()
    );
    let _ = std::fs::remove_dir_all(dir);
    c.stop().await;
}
