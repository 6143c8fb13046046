//! The web console in a real browser (Debian's Chromium through chromedriver, driven over
//! WebDriver by fantoccini): log in, watch a running pipeline reach `completed` with its
//! progress bars moving, open a failed item's reason, replay a dead letter and land on the
//! new pipeline, and see actions refused for the read-only token. Saves a PNG of each page
//! under `target/ui-screenshots/`.
//!
//! Ignored by default: it needs chromedriver listening at `FLEET_TEST_WEBDRIVER_URL`
//! (default `http://127.0.0.1:33444`). `scripts/ci-extra.d/65-console-browser.sh` installs
//! Chromium, starts chromedriver and runs it.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{Backend, Harness, heartbeat};
use fantoccini::{Client, ClientBuilder, Locator};
use fleet_protocol::EventKind;
use fleet_test_support::wait_for;
use serde_json::json;

const T: Duration = Duration::from_secs(20);
const STAGES: [&str; 3] = ["analyze", "summarize", "write"];

fn webdriver_url() -> String {
    std::env::var("FLEET_TEST_WEBDRIVER_URL").unwrap_or_else(|_| "http://127.0.0.1:33444".into())
}

fn shots_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/ui-screenshots");
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn browser() -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": std::env::var("FLEET_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1000"],
        }),
    );
    let url = webdriver_url();
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&url)
        .await
        .unwrap_or_else(|e| {
            panic!("no WebDriver at {url} ({e}): start chromedriver --port=33444, or run scripts/ci-extra.d/65-console-browser.sh")
        })
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    std::fs::write(shots_dir().join(format!("{name}.png")), png).unwrap();
}

/// The analyze stage's progress bar value, as the page shows it now.
async fn bar_value(c: &Client) -> i64 {
    let v = c
        .execute(
            "return document.querySelector('progress[data-stage=analyze]').value;",
            vec![],
        )
        .await
        .unwrap();
    v.as_f64().unwrap() as i64
}

/// The text of the first element matching `css` right now; `None` while the page is (re)loading
/// (no such element yet, or it went stale between finding and reading it). For polling.
async fn text_now(c: &Client, css: &str) -> Option<String> {
    c.find(Locator::Css(css)).await.ok()?.text().await.ok()
}

/// The text of the first element matching `css`, waiting (bounded) while the page (re)loads.
async fn text(c: &Client, css: &str) -> String {
    wait_for(&format!("`{css}` on the page"), T, || text_now(c, css)).await
}

/// Submits through the API with the writer token.
async fn submit(h: &Harness, id: &str, items: &[&str]) {
    let body = common::submission(Some(id), items);
    let (s, b) = h
        .http(
            "POST",
            "/v1/pipelines",
            Some(&body),
            &[("authorization", "Bearer writer-token")],
        )
        .await;
    assert_eq!(s, 201, "{b}");
}

async fn state(h: &Harness, id: &str) -> String {
    let (_, b) = h
        .http(
            "GET",
            &format!("/v1/pipelines/{id}"),
            None,
            &[("authorization", "Bearer writer-token")],
        )
        .await;
    serde_json::from_str::<serde_json::Value>(&b).unwrap()["state"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// `pq`: item `a` succeeds, item `b` dies at `summarize` (a dead letter in the archive).
async fn failed_pipeline(h: &Harness) {
    submit(h, "pq", &["a", "b"]).await;
    h.finish("pq", &["a", "b"], "analyze", EventKind::Succeeded)
        .await;
    h.finish("pq", &["a"], "summarize", EventKind::Succeeded)
        .await;
    h.finish("pq", &["a"], "write", EventKind::Succeeded).await;
    h.backstop_dead_letter("pq", "b", "summarize", json!({"text": "t"}))
        .await;
    wait_for("pq partial_success", T, || async {
        state(h, "pq").await == "partial_success"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromedriver and Chromium: scripts/ci-extra.d/65-console-browser.sh"]
async fn console_in_a_real_browser() {
    let h = Harness::new(
        Backend::Memory,
        "console-browser",
        &["--api-token=writer-token", "--api-read-token=reader-token"],
    )
    .await;
    let base = format!("http://{}", h.api());
    failed_pipeline(&h).await;
    h.send(
        "analyze",
        vec![],
        Some(heartbeat("analyzer-1", "analyze", &[])),
    )
    .await;
    let items: Vec<String> = (0..8).map(|i| format!("i{i}")).collect();
    let item_refs: Vec<&str> = items.iter().map(String::as_str).collect();
    submit(&h, "live", &item_refs).await;

    let c = browser().await;
    // Log in (the login form, then the pipelines list).
    c.goto(&format!("{base}/ui/pipelines/live")).await.unwrap();
    assert!(c.current_url().await.unwrap().path().ends_with("/ui/login"));
    shot(&c, "login").await;
    c.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys("writer-token")
        .await
        .unwrap();
    c.find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for("the live pipeline page after login", T, || async {
        c.current_url().await.unwrap().path() == "/ui/pipelines/live"
    })
    .await;
    shot(&c, "pipeline-running").await;
    // A marker that a reload would wipe: progress must move without one.
    c.execute("window.__noReload = true; return 1;", vec![])
        .await
        .unwrap();
    assert_eq!(bar_value(&c).await, 0);

    // The workers' side: one stage of one item at a time, so the bars move visibly.
    let mut seen: Vec<i64> = Vec::new();
    for stage in STAGES {
        for it in &item_refs {
            h.finish("live", &[it], stage, EventKind::Succeeded).await;
            tokio::time::sleep(Duration::from_millis(250)).await;
            if stage == "analyze" {
                seen.push(bar_value(&c).await);
            }
        }
        if stage == "analyze" {
            wait_for("the analyze bar at 8 without a reload", T, || async {
                let kept = c
                    .execute("return window.__noReload === true;", vec![])
                    .await
                    .unwrap();
                bar_value(&c).await == 8 && kept == json!(true)
            })
            .await;
            shot(&c, "pipeline-progress").await;
        }
    }
    let mut distinct = seen.clone();
    distinct.dedup();
    assert!(
        distinct.len() >= 2,
        "the analyze bar moved while running: {seen:?}"
    );
    wait_for("the page to show completed", T, || async {
        text_now(&c, "#live [data-state]").await.as_deref() == Some("completed")
    })
    .await;
    wait_for("the final report after the reload", T, || async {
        text_now(&c, "#report-h").await.as_deref() == Some("Final report")
    })
    .await;
    shot(&c, "pipeline-completed").await;
    eprintln!("analyze bar values seen live: {seen:?}");

    // The pipelines list.
    c.goto(&format!("{base}/ui/pipelines")).await.unwrap();
    assert!(text(&c, "table").await.contains("live"));
    shot(&c, "pipelines").await;

    // A failed item and its reason, through the item filter form.
    c.goto(&format!("{base}/ui/pipelines/pq")).await.unwrap();
    c.find(Locator::Id("f-state"))
        .await
        .unwrap()
        .select_by_value("failed")
        .await
        .unwrap();
    c.find(Locator::Css("#items-h ~ form button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for("the failed-items filter", T, || async {
        c.current_url()
            .await
            .unwrap()
            .query()
            .is_some_and(|q| q.contains("state=failed"))
    })
    .await;
    let row = text(&c, "#items tbody tr").await;
    let reason = text(&c, "#items tbody tr td.reason").await;
    assert!(row.starts_with('b') && !reason.is_empty(), "{row}");
    eprintln!("failed item b: {reason}");
    shot(&c, "pipeline-failed-items").await;

    // The queues page (a fresh heartbeat: the worker counts as live for three intervals).
    h.send(
        "analyze",
        vec![],
        Some(heartbeat("analyzer-1", "analyze", &[])),
    )
    .await;
    wait_for("the live worker on the queues page", T, || async {
        c.goto(&format!("{base}/ui/queues")).await.unwrap();
        text(&c, "main").await.contains("analyzer-1")
    })
    .await;
    shot(&c, "queues").await;

    // Replay the dead letter: the dry run, the confirmation, the new pipeline.
    c.goto(&format!("{base}/ui/dlq?pipeline_id=pq"))
        .await
        .unwrap();
    shot(&c, "dead-letters").await;
    c.find(Locator::Css("tbody th a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for("the dead letter page", T, || async {
        text(&c, "h1").await.starts_with("Dead letter #")
    })
    .await;
    shot(&c, "dead-letter").await;
    c.find(Locator::XPath("//button[starts-with(., 'Replay')]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for("the dry run", T, || async {
        text(&c, "h1").await == "Replay dead letters"
    })
    .await;
    assert!(text(&c, "main").await.contains("Dry run"));
    shot(&c, "replay-dry-run").await;
    c.find(Locator::XPath("//button[starts-with(., 'Confirm')]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for("the new pipeline", T, || async {
        c.current_url()
            .await
            .unwrap()
            .path()
            .starts_with("/ui/pipelines/replay-")
    })
    .await;
    assert!(text(&c, "main").await.contains("Replay of"));
    shot(&c, "replayed-pipeline").await;
    let new_id = c
        .current_url()
        .await
        .unwrap()
        .path()
        .trim_start_matches("/ui/pipelines/")
        .to_owned();
    assert_eq!(state(&h, &new_id).await, "running");

    // The read-only token: no action buttons, and a hand-made POST is refused.
    c.find(Locator::XPath("//button[.='Log out']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for("the login form", T, || async {
        c.current_url().await.unwrap().path() == "/ui/login"
    })
    .await;
    c.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys("reader-token")
        .await
        .unwrap();
    c.find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for("the list", T, || async {
        c.current_url().await.unwrap().path() == "/ui/pipelines"
    })
    .await;
    c.goto(&format!("{base}/ui/pipelines/{new_id}"))
        .await
        .unwrap();
    assert!(text(&c, "header").await.contains("read-only"));
    let buttons = c.find_all(Locator::Css("main button")).await.unwrap();
    let mut labels = Vec::new();
    for b in buttons {
        labels.push(b.text().await.unwrap());
    }
    assert_eq!(
        labels,
        vec!["Filter items".to_owned()],
        "read-only sees only the filter"
    );
    let status = c
        .execute(
            &format!("return fetch('/ui/pipelines/{new_id}/cancel', {{method: 'POST', body: new URLSearchParams({{csrf: 'x'}})}}).then(r => r.status);"),
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(status, json!(403));
    shot(&c, "read-only").await;
    assert_eq!(state(&h, &new_id).await, "running");

    c.close().await.unwrap();
    h.cleanup().await;
}
