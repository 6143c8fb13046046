//! The console's POST forms: log in and out, cancel a pipeline, and replay or purge dead
//! letters with a dry run first and a confirmation after. Each calls the API's own handler.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Extension, Form, Json};
use maud::html;
use serde::Deserialize;

use super::error::UiError;
use super::layout::{csrf, page};
use super::session::{Sessions, Viewer, check_csrf, same_origin, set_cookie, urlencode};
use crate::api::dlq::Filter;
use crate::app::App;

/// Query of the login page.
#[derive(Debug, Default, Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

/// The login form.
#[derive(Debug, Deserialize)]
pub struct LoginForm {
    token: String,
    next: Option<String>,
}

/// Where to go after logging in: a console path only (never another site).
fn next_path(next: Option<&str>) -> String {
    next.filter(|n| n.starts_with("/ui/") && !n.starts_with("//") && !n.contains('\\'))
        .unwrap_or("/ui/pipelines")
        .to_owned()
}

fn login_page(next: &str, error: Option<&str>) -> Html<String> {
    page(
        "Log in",
        None,
        html! {
            @if let Some(e) = error { p role="alert" class="error" { (e) } }
            form method="post" action="/ui/login" {
                input type="hidden" name="next" value=(next);
                p { label for="token" { "API token" } " "
                    input id="token" name="token" type="password" autocomplete="current-password" required; }
                p class="hint" { "The coordinator's FLEET_API_TOKEN, or FLEET_API_READ_TOKEN to look without acting." }
                button type="submit" { "Log in" }
            }
        },
    )
}

/// `GET /ui/login`.
pub async fn login_form(State(s): State<Sessions>, Query(q): Query<LoginQuery>) -> Response {
    if s.open() {
        return Redirect::to("/ui/pipelines").into_response();
    }
    login_page(&next_path(q.next.as_deref()), None).into_response()
}

/// `POST /ui/login`: checks the token and sets the session cookie.
pub async fn login(
    State(s): State<Sessions>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Result<Response, UiError> {
    same_origin(&headers)?;
    let next = next_path(f.next.as_deref());
    let Some(cookie) = s.login(&f.token) else {
        let page = login_page(
            &next,
            Some(
                "That token is wrong: enter the coordinator's FLEET_API_TOKEN or FLEET_API_READ_TOKEN.",
            ),
        );
        return Ok((StatusCode::UNAUTHORIZED, page).into_response());
    };
    Ok((
        [(header::SET_COOKIE, set_cookie(&cookie, &headers))],
        Redirect::to(&next),
    )
        .into_response())
}

/// `POST /ui/logout`: deletes the session cookie.
pub async fn logout(headers: HeaderMap) -> Result<Response, UiError> {
    same_origin(&headers)?;
    Ok((
        [(header::SET_COOKIE, set_cookie("", &headers))],
        Redirect::to("/ui/login"),
    )
        .into_response())
}

/// A form that only carries the CSRF token.
#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

/// `POST /ui/pipelines/{id}/cancel`.
pub async fn cancel(
    State(app): State<App>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Result<Redirect, UiError> {
    check_csrf(&viewer, &f.csrf)?;
    let _accepted = crate::api::pipelines::cancel(State(app), Path(id.clone())).await?;
    Ok(Redirect::to(&format!("/ui/pipelines/{}", urlencode(&id))))
}

/// A replay or purge selection; `confirm=yes` acts, anything else is the dry run.
#[derive(Debug, Deserialize)]
pub struct SelectForm {
    csrf: String,
    ids: Option<i64>,
    pipeline_id: Option<String>,
    stage: Option<String>,
    reason: Option<String>,
    confirm: Option<String>,
}

impl SelectForm {
    fn filter(&self, dry_run: bool) -> Filter {
        let some = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        Filter {
            ids: self.ids.map(|i| vec![i]),
            pipeline_id: some(&self.pipeline_id),
            stage: some(&self.stage),
            reason: some(&self.reason),
            dry_run,
            ..Filter::default()
        }
    }

    fn confirmed(&self) -> bool {
        self.confirm.as_deref() == Some("yes")
    }

    /// The hidden fields that repeat this selection in the confirmation form.
    fn hidden(&self, viewer: &Viewer) -> maud::Markup {
        let f = self.filter(true);
        html! {
            (csrf(viewer))
            input type="hidden" name="confirm" value="yes";
            @if let Some(i) = self.ids { input type="hidden" name="ids" value=(i); }
            @if let Some(v) = &f.pipeline_id { input type="hidden" name="pipeline_id" value=(v); }
            @if let Some(v) = &f.stage { input type="hidden" name="stage" value=(v); }
            @if let Some(v) = &f.reason { input type="hidden" name="reason" value=(v); }
        }
    }
}

/// `POST /ui/dlq/replay`: the dry run, then (confirmed) a new pipeline, shown.
pub async fn replay(
    State(app): State<App>,
    Extension(viewer): Extension<Viewer>,
    Form(f): Form<SelectForm>,
) -> Result<Response, UiError> {
    check_csrf(&viewer, &f.csrf)?;
    let confirmed = f.confirmed();
    let Json(out) =
        crate::api::dlq::replay(State(app), HeaderMap::new(), Json(f.filter(!confirmed))).await?;
    if confirmed && let Some(id) = out["pipeline_id"].as_str() {
        return Ok(Redirect::to(&format!("/ui/pipelines/{}", urlencode(id))).into_response());
    }
    let items: Vec<&str> = out["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
        .collect();
    let skipped = out["skipped"].as_array().cloned().unwrap_or_default();
    let body = html! {
        @if items.is_empty() {
            p role="status" { "Nothing to replay: no dead letter in this selection is waiting for a replay." }
        } @else {
            p role="status" { "Dry run: replaying makes a new pipeline (a replay of "
                (out["replay_of"].as_str().unwrap_or_default()) ") with " (items.len()) " items from their failed stage on." }
            ul class="items" { @for i in items.iter().take(50) { li { (i) } } @if items.len() > 50 { li { "and " (items.len() - 50) " more" } } }
            form method="post" action="/ui/dlq/replay" {
                (f.hidden(&viewer))
                button type="submit" { "Confirm: replay " (items.len()) " items" }
            }
        }
        @if !skipped.is_empty() {
            h2 { "Skipped" }
            ul { @for s in &skipped { li { "#" (s["id"]) ": " (s["why"].as_str().unwrap_or_default()) } } }
        }
        p { a href="/ui/dlq" { "Back to the dead letters" } }
    };
    Ok(page("Replay dead letters", Some(&viewer), body).into_response())
}

/// `POST /ui/dlq/purge`: the dry run (a count), then (confirmed) the deletion.
pub async fn purge(
    State(app): State<App>,
    Extension(viewer): Extension<Viewer>,
    Form(f): Form<SelectForm>,
) -> Result<Response, UiError> {
    check_csrf(&viewer, &f.csrf)?;
    let confirmed = f.confirmed();
    let Json(out) = crate::api::dlq::purge(State(app), Json(f.filter(!confirmed))).await?;
    let n = out["purged"].as_i64().unwrap_or(0);
    let body = html! {
        @if confirmed {
            p role="status" { "Purged " (n) " dead letters." }
        } @else if n == 0 {
            p role="status" { "Nothing to purge: no dead letter matches." }
        } @else {
            p role="status" { "Dry run: purging deletes " (n) " dead letters from the archive for good." }
            form method="post" action="/ui/dlq/purge" {
                (f.hidden(&viewer))
                button type="submit" class="danger" { "Confirm: purge " (n) " dead letters" }
            }
        }
        p { a href="/ui/dlq" { "Back to the dead letters" } }
    };
    Ok(page("Purge dead letters", Some(&viewer), body).into_response())
}
