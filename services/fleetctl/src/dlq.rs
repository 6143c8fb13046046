//! `fleetctl dlq list|show|replay|purge`: the coordinator's dead-letter archive.
//! Replay and purge are dry runs unless `--yes`; replay can be rate limited.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::cli::{ChangeArgs, DlqCommand, DlqFilter};
use crate::client::{Client, Lookup, query, truncate};
use crate::exit::{self, Failure};
use crate::report::{table, text};

/// Page size when resolving a filter to dead letters.
const PAGE: u32 = 1000;
/// Most dead letters replayed in one request.
const MAX_CHUNK: usize = 500;
/// Longest string shown by `dlq show` (the body's text, for example).
const SHOW_CHARS: usize = 400;

/// Runs one `dlq` subcommand.
pub async fn run(client: &Client, cmd: &DlqCommand) -> anyhow::Result<u8> {
    match cmd {
        DlqCommand::List {
            filter,
            limit,
            json,
        } => list(client, filter, *limit, *json).await,
        DlqCommand::Show { id, json } => show(client, *id, *json).await,
        DlqCommand::Replay(args) => replay(client, args).await,
        DlqCommand::Purge(args) => purge(client, args).await,
    }
}

fn filter_query(f: &DlqFilter, limit: u32, after: Option<i64>) -> String {
    query(&[
        ("pipeline_id", f.pipeline_id.clone()),
        ("stage", f.stage.clone()),
        ("reason", f.reason.clone()),
        ("limit", Some(limit.to_string())),
        ("after", after.map(|a| a.to_string())),
    ])
}

async fn list(client: &Client, f: &DlqFilter, limit: u32, json: bool) -> anyhow::Result<u8> {
    let v: Value = client
        .get(&format!("/v1/dlq{}", filter_query(f, limit, None)), None)
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(exit::OK);
    }
    let rows: Vec<Vec<String>> = entries(&v)
        .iter()
        .map(|d| {
            vec![
                text(&d["id"]),
                text(&d["stage"]),
                text(&d["reason"]),
                text(&d["last_error_kind"]),
                text(&d["attempts"]),
                text(&d["pipeline_id"]),
                text(&d["item_id"]),
                text(&d["at"]),
                text(&d["replayed_in"]),
                truncate(d["last_error"].as_str().unwrap_or_default(), 60),
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("no dead letters");
    } else {
        println!(
            "{}",
            table(
                &[
                    "ID",
                    "STAGE",
                    "REASON",
                    "KIND",
                    "ATTEMPTS",
                    "PIPELINE",
                    "ITEM",
                    "AT",
                    "REPLAYED_IN",
                    "LAST_ERROR"
                ],
                &rows
            )
        );
        if v["next"].is_number() {
            println!("(more: raise --limit or narrow the filter)");
        }
    }
    Ok(exit::OK)
}

fn entries(v: &Value) -> Vec<Value> {
    v["dead_letters"].as_array().cloned().unwrap_or_default()
}

fn lookup(id: &str) -> Lookup<'_> {
    Lookup {
        what: "dead letter",
        id,
        list_with: "fleetctl dlq list",
    }
}

/// Cuts long strings inside `v` so a body fits on a screen.
fn shorten(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(truncate(s, SHOW_CHARS)),
        Value::Array(a) => Value::Array(a.iter().map(shorten).collect()),
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), shorten(v))).collect()),
        other => other.clone(),
    }
}

async fn show(client: &Client, id: i64, json: bool) -> anyhow::Result<u8> {
    let sid = id.to_string();
    let v: Value = client
        .get(&format!("/v1/dlq/{id}"), Some(lookup(&sid)))
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(exit::OK);
    }
    for k in [
        "id",
        "job_id",
        "pipeline_id",
        "item_id",
        "stage",
        "reason",
        "last_error_kind",
        "attempts",
        "worker_id",
        "at",
        "replayed_in",
        "last_error",
    ] {
        println!("{k:<16} {}", text(&v[k]));
    }
    println!("headers:\n{}", serde_json::to_string_pretty(&v["headers"])?);
    println!(
        "body ({}, long strings cut; --json for all):\n{}",
        text(&v["body_encoding"]),
        serde_json::to_string_pretty(&shorten(&v["body"]))?
    );
    Ok(exit::OK)
}

fn is_empty(f: &DlqFilter) -> bool {
    f.pipeline_id.is_none() && f.stage.is_none() && f.reason.is_none()
}

fn need_selection(args: &ChangeArgs, verb: &str) -> Result<(), Failure> {
    let f = &args.filter;
    for (flag, v) in [
        ("--pipeline-id", &f.pipeline_id),
        ("--stage", &f.stage),
        ("--reason", &f.reason),
    ] {
        if v.as_deref().is_some_and(|v| v.trim().is_empty()) {
            return Err(Failure::usage(format!("{flag} is empty"))
                .hint(format!("give {flag} a value, or leave it out")));
        }
    }
    if args.all {
        if verb != "purge" {
            return Err(Failure::usage("--all applies to `dlq purge` only")
                .hint("select the dead letters to replay with ids or a filter"));
        }
        if !args.ids.is_empty() || !is_empty(f) {
            return Err(Failure::usage("--all and a selection were both given")
                .hint("use --all alone to purge the whole archive, or only ids / filters"));
        }
        return Ok(());
    }
    if args.ids.is_empty() && is_empty(&args.filter) {
        return Err(Failure::usage(format!("no dead letters selected to {verb}"))
            .hint(format!(
                "give archive ids (fleetctl dlq {verb} 12 13) or a filter (--pipeline-id, --stage, --reason); see `fleetctl dlq list`{}",
                if verb == "purge" { "; --all purges the whole archive" } else { "" }
            )));
    }
    Ok(())
}

/// The dead letters `args` select, via the list API (ids are fetched one by one).
async fn resolve(client: &Client, args: &ChangeArgs) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    if !args.ids.is_empty() {
        for id in &args.ids {
            let sid = id.to_string();
            let v: Value = client
                .get(&format!("/v1/dlq/{id}"), Some(lookup(&sid)))
                .await?;
            let f = &args.filter;
            let matches = [
                ("pipeline_id", &f.pipeline_id),
                ("stage", &f.stage),
                ("reason", &f.reason),
            ]
            .iter()
            .all(|(k, want)| want.as_deref().is_none_or(|w| v[*k].as_str() == Some(w)));
            if matches {
                out.push(v);
            }
        }
        return Ok(out);
    }
    let mut after = None;
    loop {
        let v: Value = client
            .get(
                &format!("/v1/dlq{}", filter_query(&args.filter, PAGE, after)),
                None,
            )
            .await?;
        out.extend(entries(&v));
        match v["next"].as_i64() {
            Some(n) => after = Some(n),
            None => return Ok(out),
        }
    }
}

async fn replay(client: &Client, args: &ChangeArgs) -> anyhow::Result<u8> {
    need_selection(args, "replay")?;
    let dry = args.is_dry_run();
    let selected = resolve(client, args).await?;
    let mut groups: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let (mut replayed, mut orphans) = (0usize, 0usize);
    for d in &selected {
        if !d["replayed_in"].is_null() {
            replayed += 1;
            continue;
        }
        match (d["pipeline_id"].as_str(), d["id"].as_i64()) {
            (Some(p), Some(id)) => groups.entry(p.to_owned()).or_default().push(id),
            _ => orphans += 1,
        }
    }
    if replayed > 0 {
        println!("{replayed} selected dead letters were already replayed; skipped");
    }
    if orphans > 0 {
        println!(
            "{orphans} selected dead letters belong to no pipeline (e.g. rejected submissions); skipped"
        );
    }
    if groups.is_empty() {
        println!("nothing to replay");
        return Ok(exit::OK);
    }
    let mut answers = Vec::new();
    let rate = args.rate;
    let chunk = rate.map_or(MAX_CHUNK, |r| (r.floor() as usize).clamp(1, MAX_CHUNK));
    let mut first = true;
    for (origin, ids) in &groups {
        if dry {
            let (_, v): (_, Value) = client
                .post(
                    "/v1/dlq/replay",
                    &json!({"ids": ids, "dry_run": true}),
                    &[],
                    None,
                )
                .await?;
            if !args.json {
                let items: Vec<String> = v["items"]
                    .as_array()
                    .map(|a| a.iter().map(text).collect())
                    .unwrap_or_default();
                println!(
                    "dry run: would replay {} items of pipeline {origin} as a new pipeline: {}",
                    items.len(),
                    truncate(&items.join(", "), 200)
                );
                print_skipped(&v);
            }
            answers.push(v);
            continue;
        }
        for part in ids.chunks(chunk) {
            if let Some(r) = rate
                && !first
            {
                tokio::time::sleep(Duration::from_secs_f64(part.len() as f64 / r)).await;
            }
            first = false;
            let (_, v): (_, Value) = client
                .post(
                    "/v1/dlq/replay",
                    &json!({"ids": part, "dry_run": false}),
                    &[],
                    None,
                )
                .await?;
            if !args.json {
                let n = v["items"].as_array().map_or(0, Vec::len);
                match v["pipeline_id"].as_str() {
                    Some(p) => println!(
                        "replayed {n} items of pipeline {origin} as pipeline {p} (fleetctl watch {p})"
                    ),
                    None => println!(
                        "nothing replayable among {} dead letters of {origin}",
                        part.len()
                    ),
                }
                print_skipped(&v);
            }
            answers.push(v);
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answers)?);
    } else if dry {
        println!("nothing changed; run again with --yes to replay");
    }
    Ok(exit::OK)
}

fn print_skipped(v: &Value) {
    for s in v["skipped"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        println!(
            "  skipped dead letter {}: {}",
            text(&s["id"]),
            text(&s["why"])
        );
    }
}

async fn purge(client: &Client, args: &ChangeArgs) -> anyhow::Result<u8> {
    need_selection(args, "purge")?;
    if args.rate.is_some() {
        return Err(Failure::usage("--rate applies to `dlq replay` only").into());
    }
    let dry = args.is_dry_run();
    // Only an explicit --all selects everything; the filters are sent only when given.
    let mut body = if args.all {
        json!({"all": true, "dry_run": dry})
    } else {
        json!({
            "pipeline_id": args.filter.pipeline_id,
            "stage": args.filter.stage,
            "reason": args.filter.reason,
            "dry_run": dry,
        })
    };
    if !args.ids.is_empty() {
        body["ids"] = json!(args.ids);
    }
    let (_, v): (_, Value) = client.post("/v1/dlq/purge", &body, &[], None).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if dry {
        println!(
            "dry run: would purge {} dead letters; run again with --yes to delete them",
            text(&v["purged"])
        );
    } else {
        println!("purged {} dead letters", text(&v["purged"]));
    }
    Ok(exit::OK)
}
