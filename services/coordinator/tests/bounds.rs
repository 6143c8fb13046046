//! Bounded API servers: under 500 open event streams and a slow-loris client the API still
//! answers `GET /v1/pipelines` well within a second; the slow-loris connection is closed after
//! the header timeout; a stream over the cap, a connection over the cap and an oversized body
//! are refused with JSON errors.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Backend, Harness};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const STREAMS: usize = 500;
/// The bound for `GET /v1/pipelines` while the server is under siege.
const ANSWER_BOUND: Duration = Duration::from_secs(1);

/// Opens an event stream and returns once its status line and first event arrived.
async fn open_stream(addr: SocketAddr, pipeline: &str) -> (u16, TcpStream, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET /v1/pipelines/{pipeline}/events HTTP/1.1\r\nHost: t\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let n = s.read(&mut buf).await.unwrap();
            seen.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&seen);
            let done = text.contains("\r\n\r\n")
                && (text.contains("event: progress") || !text.starts_with("HTTP/1.1 200"));
            if n == 0 || done {
                break;
            }
        }
    })
    .await
    .expect("the stream answers within 30 s");
    let text = String::from_utf8_lossy(&seen).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, s, text)
}

/// The value of the first sample of `name` (with its label set, if any) in `/metrics`.
async fn metric(admin: SocketAddr, name: &str) -> Option<f64> {
    let (_, text) = common::http_at(admin, "GET", "/metrics", None, &[]).await;
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_under_500_streams_and_a_slow_loris() {
    let h = Harness::new(
        Backend::Memory,
        "bounds-siege",
        &["--api-header-timeout=1s", "--api-max-event-streams=500"],
    )
    .await;
    h.submit("siege", &["one", "two"], json!({})).await;
    let api = h.api();
    let admin = h.coordinators[0].0.admin_addr;

    // 500 event streams, all open at once (each polls the store twice a second).
    let mut opening = tokio::task::JoinSet::new();
    for _ in 0..STREAMS {
        opening.spawn(open_stream(api, "siege"));
    }
    let mut streams = Vec::new();
    while let Some(r) = opening.join_next().await {
        let (status, s, text) = r.unwrap();
        assert_eq!(status, 200, "{text}");
        streams.push(s);
    }
    // Keep reading them so the server never blocks on a full socket.
    let mut drains = tokio::task::JoinSet::new();
    for mut s in streams {
        drains.spawn(async move {
            let mut buf = [0u8; 1024];
            while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
        });
    }
    assert_eq!(metric(admin, "fleet_api_event_streams").await, Some(500.0));

    // One more stream is over the cap: a JSON 503.
    let (status, _s, text) = open_stream(api, "siege").await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("FLEET_API_MAX_EVENT_STREAMS"), "{text}");
    assert!(
        metric(admin, "fleet_api_event_streams_refused_total")
            .await
            .unwrap_or(0.0)
            >= 1.0
    );

    // A slow-loris client: a header line, then one byte every 200 ms, never finishing.
    let mut loris = TcpStream::connect(api).await.unwrap();
    loris
        .write_all(b"GET /v1/pipelines HTTP/1.1\r\nHost: t\r\n")
        .await
        .unwrap();
    let loris_started = Instant::now();
    let loris_task = tokio::spawn(async move {
        let mut buf = [0u8; 256];
        loop {
            if loris.write_all(b"X").await.is_err() {
                break;
            }
            let read = tokio::time::timeout(Duration::from_millis(200), loris.read(&mut buf)).await;
            if let Ok(Ok(0) | Err(_)) = read {
                break; // closed by the server
            }
            if loris_started.elapsed() > Duration::from_secs(20) {
                panic!("the slow-loris connection is still open after 20 s");
            }
        }
        loris_started.elapsed()
    });

    // Meanwhile: the list answers, each time well within the bound.
    let mut took = Vec::new();
    for _ in 0..40 {
        let t = Instant::now();
        let (status, body) = h.get("/v1/pipelines").await;
        took.push(t.elapsed());
        assert_eq!(status, 200, "{body}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let max = *took.iter().max().unwrap();
    eprintln!(
        "GET /v1/pipelines under {STREAMS} event streams and a slow-loris: median {:?}, max {:?} over {} requests",
        median(took.clone()),
        max,
        took.len()
    );
    assert!(max < ANSWER_BOUND, "max {max:?}");

    let closed_after = tokio::time::timeout(Duration::from_secs(25), loris_task)
        .await
        .expect("the slow-loris task ends")
        .unwrap();
    eprintln!("slow-loris connection closed after {closed_after:?} (header timeout 1 s)");
    assert!(
        closed_after >= Duration::from_millis(900),
        "{closed_after:?}"
    );
    assert!(closed_after < Duration::from_secs(5), "{closed_after:?}");

    // Clients leave: the stream slots come back.
    drains.abort_all();
    while drains.join_next().await.is_some() {}
    fleet_test_support::wait_for(
        "the stream slots are released",
        Duration::from_secs(10),
        || async { metric(admin, "fleet_api_event_streams").await == Some(0.0) },
    )
    .await;
    let (status, _s, text) = open_stream(api, "siege").await;
    assert_eq!(status, 200, "{text}");
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_get_a_503_and_are_closed() {
    let h = Harness::new(
        Backend::Memory,
        "bounds-conns",
        &["--api-max-connections=2", "--api-header-timeout=5s"],
    )
    .await;
    let admin = h.coordinators[0].0.admin_addr;
    let before = metric(
        admin,
        "fleet_http_connections_refused_total{server=\"api\"}",
    )
    .await
    .unwrap_or(0.0);
    // Two idle connections take both slots (until the header timeout closes them).
    let idle1 = TcpStream::connect(h.api()).await.unwrap();
    let idle2 = TcpStream::connect(h.api()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = h.get("/v1/pipelines").await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("limit"), "{body}");
    let after = metric(
        admin,
        "fleet_http_connections_refused_total{server=\"api\"}",
    )
    .await
    .unwrap();
    assert!(after >= before + 1.0, "{before} -> {after}");
    // Freed slots serve again.
    drop((idle1, idle2));
    fleet_test_support::wait_for(
        "freed connection slots serve again",
        Duration::from_secs(5),
        || async { h.get("/v1/pipelines").await.0 == 200 },
    )
    .await;
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_a_json_413_on_every_route() {
    let h = Harness::new(
        Backend::Memory,
        "bounds-body",
        &["--max-body-bytes=2000000"],
    )
    .await;
    for (method, path) in [
        ("POST", "/v1/pipelines"),
        ("POST", "/v1/dlq/purge"),
        ("GET", "/v1/pipelines"),
    ] {
        // The Content-Length alone is over the limit: refused before the body is read.
        let mut s = TcpStream::connect(h.api()).await.unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 3000000\r\nConnection: close\r\n\r\n{{"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
            .await
            .expect("answered within 10 s")
            .unwrap();
        let text = String::from_utf8_lossy(&raw);
        assert!(text.starts_with("HTTP/1.1 413"), "{method} {path}: {text}");
        let body: Value = serde_json::from_str(text.split_once("\r\n\r\n").unwrap().1).unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("2000000 bytes"),
            "{body}"
        );
    }
    h.cleanup().await;
}
