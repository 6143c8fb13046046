//! The page frame (navigation, styles, the live-update script) and small shared widgets.

use std::collections::BTreeMap;

use axum::response::Html;
use maud::{DOCTYPE, Markup, html};

use super::viewer::Viewer;

/// Job states after which a job does no more work (the "done" part of a stage's progress).
pub const DONE_STATES: [&str; 5] = [
    "succeeded",
    "dead_lettered",
    "skipped",
    "cancelled",
    "expired",
];

/// A whole page titled `title` around `body`.
pub fn page(title: &str, viewer: Option<&Viewer>, body: Markup) -> Html<String> {
    let m = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · fleet console" }
                link rel="stylesheet" href="/ui/static/console.css";
                script src="/ui/static/console.js" defer {}
            }
            body {
                header {
                    nav aria-label="Console" {
                        a href="/ui/pipelines" { "Pipelines" }
                        a href="/ui/dlq" { "Dead letters" }
                        a href="/ui/queues" { "Queues and workers" }
                        @if let Some(v) = viewer {
                            @if !v.open {
                                span class="who" { @if v.can_act { "full access" } @else { "read-only" } }
                                form method="post" action="/ui/logout" class="inline" {
                                    button type="submit" { "Log out" }
                                }
                            }
                        }
                    }
                }
                main id="main" { h1 { (title) } (body) }
            }
        }
    };
    Html(m.into_string())
}

/// The hidden CSRF field every action form carries.
pub fn csrf(v: &Viewer) -> Markup {
    html! { input type="hidden" name="csrf" value=(v.csrf); }
}

/// `(done, total)` of one stage's job counts.
pub fn done_total(counts: &BTreeMap<String, i64>) -> (i64, i64) {
    let total = counts.values().sum();
    let done = counts
        .iter()
        .filter(|(s, _)| DONE_STATES.contains(&s.as_str()))
        .map(|(_, n)| n)
        .sum();
    (done, total)
}

/// A labelled progress bar for `stage` with its numbers as text (not by colour or length alone).
pub fn stage_progress(stage: &str, counts: &BTreeMap<String, i64>) -> Markup {
    let (done, total) = done_total(counts);
    let failed = counts.get("dead_lettered").copied().unwrap_or(0);
    html! {
        div class="stage" {
            label { span class="stage-name" { (stage) }
                progress data-stage=(stage) value=(done) max=(total.max(1)) { (done) "/" (total) }
            }
            span class="stage-text" data-stage-text=(stage) {
                (done) "/" (total) " done"
                @if failed > 0 { ", " (failed) " dead-lettered" }
            }
        }
    }
}

/// A state as a word in a badge (the colour only repeats what the word says).
pub fn state_badge(state: &str) -> Markup {
    html! { span class={"state state-" (state)} data-state { (state) } }
}

/// "3m 12s ago" for an RFC 3339 time.
pub fn age(rfc3339: &str) -> String {
    let Ok(t) = chrono::DateTime::parse_from_rfc3339(rfc3339) else {
        return rfc3339.to_owned();
    };
    let secs = (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds();
    let (ahead, s) = (secs < 0, secs.unsigned_abs());
    let text = match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
    };
    if ahead {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

/// A time element showing the age, with the exact time as its machine value and tooltip.
pub fn when(rfc3339: &str) -> Markup {
    html! { time datetime=(rfc3339) title=(rfc3339) { (age(rfc3339)) } }
}

/// Stall badges: one per kind with its count, in words.
pub fn stall_badges(kinds: &BTreeMap<String, usize>) -> Markup {
    html! {
        @for (kind, n) in kinds {
            span class="badge stall" { "stalled: " (kind.replace('_', " ")) " (" (n) ")" }
            " "
        }
    }
}
