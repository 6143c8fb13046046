//! The web console over HTTP: login and its cookie, every page with its content, the
//! read-only token (no buttons, actions refused), CSRF and Origin refusals, and the no-JS
//! forms (cancel, replay with dry run and confirmation, purge).
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod common;

use std::time::Duration;

use common::{Backend, Harness};
use fleet_protocol::EventKind;
use fleet_test_support::wait_for;
use reqwest::header::{LOCATION, SET_COOKIE};
use serde_json::json;

const T: Duration = Duration::from_secs(10);

/// A client that shows redirects instead of following them.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(T)
        .build()
        .unwrap()
}

/// A pipeline `pq` with item `a` done and item `b` dead-lettered (poison) at `summarize`,
/// and a running pipeline `pr`.
async fn world(h: &Harness) {
    h.submit("pq", &["a", "b"], json!({})).await;
    h.finish("pq", &["a", "b"], "analyze", EventKind::Succeeded)
        .await;
    h.finish("pq", &["a"], "summarize", EventKind::Succeeded)
        .await;
    h.finish("pq", &["a"], "write", EventKind::Succeeded).await;
    h.backstop_dead_letter("pq", "b", "summarize", json!({"text": "t"}))
        .await;
    h.wait_state("pq", "partial_success", T).await;
    h.submit("pr", &["x", "y"], json!({})).await;
}

struct Ui {
    base: String,
    c: reqwest::Client,
}

impl Ui {
    async fn login(&self, token: &str, extra: &[(&str, &str)]) -> reqwest::Response {
        let mut r = self
            .c
            .post(format!("{}/ui/login", self.base))
            .form(&[("token", token), ("next", "/ui/pipelines")]);
        for (k, v) in extra {
            r = r.header(*k, *v);
        }
        r.send().await.unwrap()
    }

    /// The session cookie (`name=value`) a login with `token` sets.
    async fn cookie(&self, token: &str) -> String {
        let r = self.login(token, &[]).await;
        assert_eq!(r.status(), 303);
        let c = r.headers()[SET_COOKIE].to_str().unwrap();
        c.split(';').next().unwrap().to_owned()
    }

    async fn get(&self, cookie: &str, path: &str) -> (u16, String) {
        let r = self
            .c
            .get(format!("{}{path}", self.base))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn post(
        &self,
        cookie: &str,
        path: &str,
        form: &[(&str, &str)],
        origin: Option<&str>,
    ) -> reqwest::Response {
        let mut r = self
            .c
            .post(format!("{}{path}", self.base))
            .header("cookie", cookie)
            .form(form);
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.send().await.unwrap()
    }
}

/// The value of the first hidden `csrf` field in `html`.
fn csrf(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").unwrap() + 19;
    html[at..at + 32].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_login_pages_roles_and_actions() {
    let h = Harness::new(
        Backend::Memory,
        "console",
        &["--api-token=writer-token", "--api-read-token=reader-token"],
    )
    .await;
    let bearer = [("authorization", "Bearer writer-token")];
    let ui = Ui {
        base: format!("http://{}", h.api()),
        c: client(),
    };
    // Setup through the API (as the writer).
    let hh = AuthHarness {
        h: &h,
        bearer: &bearer,
    };
    hh.world().await;

    // Without a session: pages redirect to the login form; actions are refused.
    let (s, _) = ui.get("", "/ui/pipelines").await;
    assert_eq!(s, 303);
    let r =
        ui.c.get(format!("{}/ui/dlq?stage=analyze", ui.base))
            .send()
            .await
            .unwrap();
    assert_eq!(
        r.headers()[LOCATION],
        "/ui/login?next=/ui/dlq%3Fstage%3Danalyze"
    );
    let r = ui
        .post("", "/ui/pipelines/pr/cancel", &[("csrf", "x")], None)
        .await;
    assert_eq!(r.status(), 401);
    let (s, login) = ui.get("", "/ui/login").await;
    assert_eq!(s, 200);
    assert!(
        login.contains("<label for=\"token\">API token</label>"),
        "{login}"
    );

    // Login: a wrong token is refused; the right one sets a signed cookie with the flags.
    assert_eq!(ui.login("wrong", &[]).await.status(), 401);
    let r = ui.login("writer-token", &[]).await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()[LOCATION], "/ui/pipelines");
    let set = r.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(set.contains(flag), "{set}");
    }
    assert!(!set.contains("Secure"), "{set}");
    let r = ui
        .login("writer-token", &[("x-forwarded-proto", "https")])
        .await;
    assert!(
        r.headers()[SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("; Secure")
    );
    let r = ui
        .login("writer-token", &[("origin", "http://evil.example")])
        .await;
    assert_eq!(r.status(), 403);
    let full = ui.cookie("writer-token").await;
    let read = ui.cookie("reader-token").await;
    // A tampered cookie is no session.
    let forged = read.replacen("=read.", "=all.", 1);
    assert_eq!(ui.get(&forged, "/ui/pipelines").await.0, 303);

    // Every page, with what it must show.
    let (s, list) = ui.get(&full, "/ui/pipelines").await;
    assert_eq!(s, 200, "{list}");
    for want in [
        "pq",
        "pr",
        "<progress",
        "partial_success",
        "<th scope=\"col\">Stalls</th>",
    ] {
        assert!(list.contains(want), "{want} in {list}");
    }
    let (_, running) = ui.get(&full, "/ui/pipelines?state=running").await;
    assert!(running.contains("/ui/pipelines/pr") && !running.contains("/ui/pipelines/pq\""));
    let (s, one) = ui.get(&full, "/ui/pipelines/pq").await;
    assert_eq!(s, 200);
    for want in [
        "Final report",
        "summarize",
        "poison",
        "<caption>Items by id</caption>",
        "Timeline",
    ] {
        assert!(one.contains(want), "{want} in {one}");
    }
    let (_, failed) = ui.get(&full, "/ui/pipelines/pq?state=failed").await;
    assert!(
        failed.contains("<th scope=\"row\">b</th>") && !failed.contains("<th scope=\"row\">a</th>")
    );
    let (_, by_reason) = ui
        .get(&full, "/ui/pipelines/pq?reason=nothing-like-this")
        .await;
    assert!(by_reason.contains("No items match."));
    let (s, dlq) = ui.get(&full, "/ui/dlq?pipeline_id=pq").await;
    assert_eq!(s, 200);
    assert!(
        dlq.contains("poison") && dlq.contains("Replay the selection"),
        "{dlq}"
    );
    let id = dlq
        .split("href=\"/ui/dlq/")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    let (s, one_dl) = ui.get(&full, &format!("/ui/dlq/{id}")).await;
    assert_eq!(s, 200);
    assert!(
        one_dl.contains("x-backstop") && one_dl.contains("Headers"),
        "{one_dl}"
    );
    let (s, queues) = ui.get(&full, "/ui/queues").await;
    assert_eq!(s, 200);
    assert!(
        queues.contains("Oldest queued job") && queues.contains("Live workers"),
        "{queues}"
    );
    let (s, _) = ui.get(&full, "/ui/pipelines/nope").await;
    assert_eq!(s, 404);
    let (s, js) = ui.get("", "/ui/static/console.js").await;
    assert!(s == 200 && js.contains("EventSource"));

    // The read-only token sees everything but the buttons, and its POSTs are refused.
    let (_, ro) = ui.get(&read, "/ui/pipelines/pr").await;
    assert!(
        ro.contains("<progress") && !ro.contains("method=\"post\" action=\"/ui/pipelines"),
        "{ro}"
    );
    assert!(!ro.contains("name=\"csrf\""));
    let (_, ro_dlq) = ui.get(&read, &format!("/ui/dlq/{id}")).await;
    assert!(!ro_dlq.contains("Replay"));
    let (_, page) = ui.get(&full, "/ui/pipelines/pr").await;
    let token = csrf(&page);
    let r = ui
        .post(&read, "/ui/pipelines/pr/cancel", &[("csrf", &token)], None)
        .await;
    assert_eq!(r.status(), 403);
    let r = ui
        .post(
            &read,
            "/ui/dlq/purge",
            &[("csrf", &token), ("pipeline_id", "pq")],
            None,
        )
        .await;
    assert_eq!(r.status(), 403);

    // CSRF and Origin.
    let r = ui
        .post(&full, "/ui/pipelines/pr/cancel", &[("csrf", "0000")], None)
        .await;
    assert_eq!(r.status(), 403);
    let r = ui
        .post(
            &full,
            "/ui/pipelines/pr/cancel",
            &[("csrf", &token)],
            Some("http://evil.example"),
        )
        .await;
    assert_eq!(r.status(), 403);
    assert_eq!(hh.state("pr").await, "running");

    // Replay: a dry run, then the confirmation makes the new pipeline.
    let r = ui
        .post(
            &full,
            "/ui/dlq/replay",
            &[("csrf", &token), ("pipeline_id", "pq")],
            None,
        )
        .await;
    assert_eq!(r.status(), 200);
    let dry = r.text().await.unwrap();
    assert!(
        dry.contains("Dry run") && dry.contains("Confirm: replay 1 items"),
        "{dry}"
    );
    let origin = ui.base.clone();
    let r = ui
        .post(
            &full,
            "/ui/dlq/replay",
            &[("csrf", &token), ("pipeline_id", "pq"), ("confirm", "yes")],
            Some(&origin),
        )
        .await;
    assert_eq!(r.status(), 303);
    let to = r.headers()[LOCATION].to_str().unwrap().to_owned();
    assert!(to.starts_with("/ui/pipelines/replay-"), "{to}");
    let (_, replayed) = ui.get(&full, &to).await;
    assert!(replayed.contains("Replay of") && replayed.contains("/ui/pipelines/pq"));

    // Purge: dry run counts, confirmation deletes.
    let r = ui
        .post(
            &full,
            "/ui/dlq/purge",
            &[("csrf", &token), ("pipeline_id", "pq")],
            None,
        )
        .await;
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("Confirm: purge 1 dead letters")
    );
    let r = ui
        .post(
            &full,
            "/ui/dlq/purge",
            &[("csrf", &token), ("pipeline_id", "pq"), ("confirm", "yes")],
            None,
        )
        .await;
    assert!(r.text().await.unwrap().contains("Purged 1 dead letters."));

    // Cancel (no JavaScript: a plain form post and a redirect back).
    let r = ui
        .post(
            &full,
            "/ui/pipelines/pr/cancel",
            &[("csrf", &token)],
            Some(&origin),
        )
        .await;
    assert_eq!(r.status(), 303);
    assert_eq!(hh.state("pr").await, "cancelled");

    // Log out: the cookie is cleared.
    let r = ui.post(&full, "/ui/logout", &[], None).await;
    assert!(
        r.headers()[SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_without_auth_needs_no_login() {
    let h = Harness::new(Backend::Memory, "console-open", &[]).await;
    h.submit("po", &["a"], json!({})).await;
    let ui = Ui {
        base: format!("http://{}", h.api()),
        c: client(),
    };
    let r =
        ui.c.get(format!("{}/ui/login", ui.base))
            .send()
            .await
            .unwrap();
    assert_eq!(r.headers()[LOCATION], "/ui/pipelines");
    let (s, page) = ui.get("", "/ui/pipelines/po").await;
    assert_eq!(s, 200);
    assert!(page.contains("Cancel this pipeline") && !page.contains("Log out"));
    let r = ui
        .post(
            "",
            "/ui/pipelines/po/cancel",
            &[("csrf", &csrf(&page))],
            None,
        )
        .await;
    assert_eq!(r.status(), 303);
    wait_for("po cancelled", T, || async {
        h.report("po").await["state"] == "cancelled"
    })
    .await;
    h.cleanup().await;
}

/// The harness with a bearer token on every API call.
struct AuthHarness<'a> {
    h: &'a Harness,
    bearer: &'a [(&'a str, &'a str)],
}

impl AuthHarness<'_> {
    async fn state(&self, id: &str) -> String {
        let (_, b) = self
            .h
            .http("GET", &format!("/v1/pipelines/{id}"), None, self.bearer)
            .await;
        serde_json::from_str::<serde_json::Value>(&b).unwrap()["state"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn world(&self) {
        world_with(self.h, self.bearer).await;
    }
}

async fn world_with(h: &Harness, bearer: &[(&str, &str)]) {
    if bearer.is_empty() {
        return world(h).await;
    }
    for (id, items) in [("pq", vec!["a", "b"]), ("pr", vec!["x", "y"])] {
        let body = common::submission(Some(id), &items);
        let (s, b) = h.http("POST", "/v1/pipelines", Some(&body), bearer).await;
        assert_eq!(s, 201, "{b}");
    }
    h.finish("pq", &["a", "b"], "analyze", EventKind::Succeeded)
        .await;
    h.finish("pq", &["a"], "summarize", EventKind::Succeeded)
        .await;
    h.finish("pq", &["a"], "write", EventKind::Succeeded).await;
    h.backstop_dead_letter("pq", "b", "summarize", json!({"text": "t"}))
        .await;
    let ah = AuthHarness { h, bearer };
    wait_for("pq partial_success", T, || async {
        ah.state("pq").await == "partial_success"
    })
    .await;
}

/// Median and 95th percentile of `samples` (ms).
fn median_p95(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.95))
}

/// Benchmark, not a timed test: the first page of items of a 10,000-item pipeline as HTML,
/// next to the API's JSON report of the same pipeline (the baseline), 30 requests each.
/// `cargo nextest run --workspace --run-ignored only -E 'test(console_page_render_benchmark)' --no-capture`
/// (`FLEET_CONSOLE_BENCH_ITEMS` changes the size: CI runs 1,000 so the page stays checked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: prints figures"]
async fn console_page_render_benchmark() {
    let h = Harness::new(Backend::Memory, "console-bench", &[]).await;
    let items: usize = std::env::var("FLEET_CONSOLE_BENCH_ITEMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let ids: Vec<String> = (0..items).map(|i| format!("item-{i:05}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    h.submit("big", &refs, json!({})).await;
    // Measure once the relay has published the 10,000 first jobs, not while it works.
    let store = h.store();
    wait_for("the outbox drained", Duration::from_secs(300), || async {
        let n: i64 = store
            .query_one(
                "SELECT COUNT(*) AS n FROM coord_outbox WHERE published_at IS NULL",
                &[],
            )
            .await
            .unwrap()
            .get("n")
            .unwrap();
        n == 0
    })
    .await;
    let c = client();
    let base = format!("http://{}", h.api());
    let mut figures = Vec::new();
    for (name, path) in [
        ("console page (first 100 items, HTML)", "/ui/pipelines/big"),
        ("API report (all items, JSON)", "/v1/pipelines/big"),
    ] {
        let mut samples = Vec::new();
        for i in 0..33 {
            let t = std::time::Instant::now();
            let r = c.get(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let body = r.text().await.unwrap();
            // The first three warm the caches.
            if i >= 3 {
                samples.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            assert!(body.contains("item-00099"));
        }
        let (median, p95) = median_p95(samples);
        figures.push(format!("{name}: median {median:.1} ms, p95 {p95:.1} ms"));
    }
    for f in &figures {
        println!("{items}-item pipeline, {f}");
    }
    h.cleanup().await;
}
