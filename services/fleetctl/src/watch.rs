//! `fleetctl watch`: follows a pipeline's Server-Sent Events stream with live
//! per-stage progress bars (plain lines when stderr is not a terminal),
//! reconnects with bounded backoff, and ends with the final report.

use std::collections::{BTreeMap, HashSet};
use std::io::IsTerminal as _;
use std::time::Duration;

use futures::StreamExt as _;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Deserialize;

use crate::client::{Client, Lookup, encode, truncate};
use crate::exit::{self, Failure};
use crate::report::{self, Report, TERMINAL_JOB_STATES};

/// First reconnect delay; doubled per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Longest reconnect delay.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Consecutive failed connections before giving up.
const MAX_FAILURES: u32 = 8;
/// Shortest idle limit of a stream: the coordinator sends a keep-alive every 15 s.
const MIN_IDLE: Duration = Duration::from_secs(45);

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` name (`message` when absent).
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// Incremental SSE parser: feed bytes, take complete events.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
}

impl SseParser {
    /// Adds bytes and returns the events they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buf
            .extend(bytes.iter().copied().filter(|b| *b != b'\r'));
        let mut out = Vec::new();
        while let Some(pos) = self.buf.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = self.buf.drain(..pos + 2).collect();
            let block = String::from_utf8_lossy(&block);
            let mut event = String::new();
            let mut data: Vec<&str> = Vec::new();
            for line in block.lines() {
                if line.starts_with(':') || line.is_empty() {
                    continue;
                }
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "event" => event = value.to_owned(),
                    "data" => data.push(value),
                    _ => {}
                }
            }
            if data.is_empty() && event.is_empty() {
                continue;
            }
            out.push(SseEvent {
                event: if event.is_empty() {
                    "message".into()
                } else {
                    event
                },
                data: data.join("\n"),
            });
        }
        out
    }
}

/// The `progress` event's data.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Progress {
    /// Items in all.
    #[serde(default)]
    pub items_total: i64,
    /// Items finished.
    #[serde(default)]
    pub items_terminal: i64,
    /// Job counts by stage and state.
    #[serde(default)]
    pub stages: BTreeMap<String, BTreeMap<String, i64>>,
    /// New event-log entries.
    #[serde(default)]
    pub events: Vec<serde_json::Value>,
}

/// Live display: bars on a terminal, change lines otherwise.
pub struct Display {
    multi: MultiProgress,
    overall: ProgressBar,
    stages: BTreeMap<String, ProgressBar>,
    tty: bool,
    last_line: String,
    seen: HashSet<String>,
}

impl Display {
    /// Bars when stderr is a terminal, else plain lines on stderr.
    pub fn new(id: &str) -> Display {
        let tty = std::io::stderr().is_terminal();
        let target = if tty {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let multi = MultiProgress::with_draw_target(target);
        let overall = multi.add(ProgressBar::new(0));
        overall.set_style(bar_style(
            "{prefix:>10} {spinner} waiting for the event stream… {msg}",
        ));
        overall.set_prefix("pipeline");
        overall.set_message(id.to_owned());
        overall.enable_steady_tick(Duration::from_millis(200));
        Display {
            multi,
            overall,
            stages: BTreeMap::new(),
            tty,
            last_line: String::new(),
            seen: HashSet::new(),
        }
    }

    /// Prints a line above the bars (or to stderr).
    pub fn note(&self, line: &str) {
        if self.tty {
            let _ = self.multi.println(line);
        } else {
            eprintln!("{line}");
        }
    }

    /// Applies one `progress` event.
    pub fn update(&mut self, p: &Progress) {
        let total = u64::try_from(p.items_total).unwrap_or(0);
        if self.overall.length() == Some(0) {
            self.overall.set_style(bar_style(
                "{prefix:>10} [{bar:30.green/white}] {pos}/{len} items {msg}",
            ));
        }
        self.overall.set_length(total);
        self.overall
            .set_position(u64::try_from(p.items_terminal).unwrap_or(0));
        for name in report::ordered_stages(p.stages.keys()) {
            let counts = &p.stages[name];
            let done: i64 = TERMINAL_JOB_STATES
                .iter()
                .filter_map(|s| counts.get(*s))
                .sum();
            let bar = match self.stages.get(name) {
                Some(b) => b.clone(),
                None => {
                    let b = ProgressBar::new(0);
                    b.set_style(bar_style(
                        "{prefix:>10} [{bar:30.cyan/blue}] {pos}/{len} {msg}",
                    ));
                    b.set_prefix(name.clone());
                    let index = 1 + self
                        .stages
                        .keys()
                        .filter(|k| report::stage_rank(k) < report::stage_rank(name))
                        .count();
                    let b = self.multi.insert(index, b);
                    self.stages.insert(name.clone(), b.clone());
                    b
                }
            };
            bar.set_length(total.max(u64::try_from(counts.values().sum::<i64>()).unwrap_or(0)));
            bar.set_position(u64::try_from(done).unwrap_or(0));
            bar.set_message(busy(counts));
        }
        for e in &p.events {
            self.event(e);
        }
        if !self.tty {
            let mut line = format!("{}/{} items", p.items_terminal, p.items_total);
            for name in report::ordered_stages(p.stages.keys()) {
                let counts = &p.stages[name];
                let done: i64 = TERMINAL_JOB_STATES
                    .iter()
                    .filter_map(|s| counts.get(*s))
                    .sum();
                line.push_str(&format!(" · {name} {done}/{}", p.items_total));
                let b = busy(counts);
                if !b.is_empty() {
                    line.push_str(&format!(" ({b})"));
                }
            }
            if line != self.last_line {
                eprintln!("{line}");
                self.last_line = line;
            }
        }
    }

    /// Prints retries and dead letters once each (a reconnect replays the log).
    fn event(&mut self, e: &serde_json::Value) {
        let kind = e["event"].as_str().unwrap_or_default();
        if !matches!(kind, "retrying" | "dead_lettered") {
            return;
        }
        let key = format!("{}|{}|{}|{}", kind, e["job_id"], e["attempt"], e["seq"]);
        if !self.seen.insert(key) {
            return;
        }
        let what = report::text(&e["item_id"]);
        let stage = report::text(&e["stage"]);
        let err = truncate(e["error"].as_str().unwrap_or_default(), 120);
        let line = if kind == "retrying" {
            format!(
                "  retrying  {what} at {stage} (attempt {}): {err}",
                e["attempt"]
            )
        } else {
            format!(
                "  dead-lettered  {what} at {stage} ({}): {err}",
                report::text(&e["reason"])
            )
        };
        self.note(&line);
    }

    /// Removes the bars.
    pub fn finish(&self) {
        for b in self.stages.values() {
            b.finish();
        }
        self.overall.finish();
        let _ = self.multi.clear();
    }
}

fn bar_style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// `running 2 · retrying 1 · dead 1`: the non-trivial counts of a stage.
fn busy(counts: &BTreeMap<String, i64>) -> String {
    [
        "queued",
        "running",
        "retrying",
        "dead_lettered",
        "skipped",
        "cancelled",
        "expired",
    ]
    .iter()
    .filter_map(|s| {
        counts
            .get(*s)
            .filter(|n| **n > 0)
            .map(|n| format!("{} {n}", s.replace('_', " ")))
    })
    .collect::<Vec<_>>()
    .join(" · ")
}

/// Follows `id` until its `final` event and returns the final report.
pub async fn follow(client: &Client, id: &str, display: &mut Display) -> anyhow::Result<Report> {
    let path = format!("/v1/pipelines/{}/events", encode(id));
    let idle = client.request_timeout().max(MIN_IDLE);
    let mut failures = 0u32;
    let connected = &mut false;
    loop {
        let err =
            match stream_once(client, id, &path, idle, display, &mut failures, connected).await {
                Ok(report) => return Ok(report),
                Err(e) => e,
            };
        // Unknown pipeline, bad token, or no coordinator at all on the first try: say so now.
        if let Some(f) = err.downcast_ref::<Failure>()
            && (matches!(f.code, exit::NOT_FOUND | exit::USAGE)
                || (f.code == exit::UNREACHABLE && !*connected))
        {
            return Err(err);
        }
        failures += 1;
        // Progress resets `failures`, so a stream that recovers starts the backoff over.
        let backoff = FIRST_BACKOFF
            .saturating_mul(1 << (failures - 1).min(16))
            .min(MAX_BACKOFF);
        if failures >= MAX_FAILURES {
            return Err(err.context(format!(
                "gave up following pipeline {id} after {failures} attempts"
            )));
        }
        display.note(&format!(
            "  event stream interrupted ({}); reconnecting in {}",
            first_line(&err),
            humantime::format_duration(backoff)
        ));
        tokio::time::sleep(backoff).await;
    }
}

fn first_line(e: &anyhow::Error) -> String {
    e.to_string().lines().next().unwrap_or_default().to_owned()
}

async fn stream_once(
    client: &Client,
    id: &str,
    path: &str,
    idle: Duration,
    display: &mut Display,
    failures: &mut u32,
    connected: &mut bool,
) -> anyhow::Result<Report> {
    let resp = client.stream(path, Some(Lookup::pipeline(id))).await?;
    *connected = true;
    let mut body = resp.bytes_stream();
    let mut parser = SseParser::default();
    loop {
        let chunk = match tokio::time::timeout(idle, body.next()).await {
            Err(_) => anyhow::bail!("no data for {}", humantime::format_duration(idle)),
            Ok(None) => anyhow::bail!("the stream ended before the pipeline finished"),
            Ok(Some(Err(e))) => return Err(client.transport(&e).into()),
            Ok(Some(Ok(c))) => c,
        };
        for ev in parser.push(&chunk) {
            match ev.event.as_str() {
                "progress" => {
                    *failures = 0;
                    if let Ok(p) = serde_json::from_str::<Progress>(&ev.data) {
                        display.update(&p);
                    }
                }
                "final" => {
                    let report: Report = serde_json::from_str(&ev.data).map_err(|e| {
                        Failure::new(
                            exit::RUNTIME,
                            format!("the final report of {id} is unreadable: {e}"),
                        )
                    })?;
                    return Ok(report);
                }
                "error" => {
                    let v: serde_json::Value = serde_json::from_str(&ev.data).unwrap_or_default();
                    anyhow::bail!("the coordinator reported: {}", report::text(&v["error"]));
                }
                _ => {}
            }
        }
    }
}

/// `fleetctl watch`: follows, prints the report, returns 0 for `completed`, else 5.
pub async fn run(client: &Client, id: &str, json: bool) -> anyhow::Result<u8> {
    let mut display = Display::new(id);
    let out = follow(client, id, &mut display).await;
    display.finish();
    let report = out?;
    print_final(&report, json)?;
    Ok(exit::for_state(&report.state))
}

/// Prints a final report as text or JSON.
pub fn print_final(report: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        println!("{}", report::render(report, false));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_parser_handles_split_chunks() {
        let mut p = SseParser::default();
        assert!(p.push(b"event: progress\r\ndata: {\"a\"").is_empty());
        let ev = p.push(b":1}\r\n\r\n: keep-alive\n\nevent: final\ndata: x\ndata: y\n\n");
        assert_eq!(
            ev,
            [
                SseEvent {
                    event: "progress".into(),
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    event: "final".into(),
                    data: "x\ny".into()
                },
            ]
        );
    }

    #[test]
    fn busy_counts() {
        let m: BTreeMap<String, i64> = [
            ("running".to_owned(), 2),
            ("succeeded".to_owned(), 3),
            ("dead_lettered".to_owned(), 1),
        ]
        .into();
        assert_eq!(busy(&m), "running 2 · dead lettered 1");
    }
}
