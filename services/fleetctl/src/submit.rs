//! `fleetctl submit`: turn files, directories, JSONL or stdin into items,
//! build a [`Submission`] and post it (idempotently with `--pipeline-id`).

use std::collections::{BTreeMap, HashMap};
use std::io::Read as _;
use std::path::{Component, Path, PathBuf};

use fleet_protocol::{RouteStep, StageOptions, Submission, SubmitItem};
use serde::Deserialize;

use crate::batches;
use crate::cli::SubmitArgs;
use crate::client::Client;
use crate::exit::{self, Failure};

/// File extensions picked up when walking a directory.
pub const TEXT_EXTENSIONS: &[&str] = &[
    "txt", "text", "md", "markdown", "rst", "html", "htm", "jsonl", "ndjson",
];
/// The default route, used to name stages when only limits are given.
const DEFAULT_ROUTE: &str = "analyze,summarize,write";
/// Deepest directory level walked (guards against symlink loops).
const MAX_DEPTH: usize = 32;

/// Items with where each came from (for duplicate reports).
#[derive(Debug, Default)]
pub struct Items {
    /// The items, in input order.
    pub items: Vec<SubmitItem>,
    sources: HashMap<String, String>,
}

impl Items {
    fn push(&mut self, item: SubmitItem, source: String) -> Result<(), Failure> {
        if let Some(prev) = self.sources.get(&item.item_id) {
            return Err(Failure::usage(format!(
                "item_id `{}` appears twice ({prev} and {source})",
                item.item_id
            ))
            .hint("give every item a unique item_id"));
        }
        self.sources.insert(item.item_id.clone(), source);
        self.items.push(item);
        Ok(())
    }
}

/// Reads every input path (`-` = stdin) into items.
pub fn load(paths: &[PathBuf]) -> anyhow::Result<Vec<SubmitItem>> {
    let mut items = Items::default();
    let mut stdin_used = false;
    for p in paths {
        if p.as_os_str() == "-" {
            if stdin_used {
                return Err(Failure::usage("`-` (stdin) is given twice").into());
            }
            stdin_used = true;
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).map_err(|e| {
                Failure::usage(format!("cannot read stdin: {e}"))
                    .hint("pipe UTF-8 text or JSONL into `fleetctl submit -`")
            })?;
            load_stdin(&text, &mut items)?;
            continue;
        }
        let meta = std::fs::metadata(p).map_err(|e| unreadable(p, &e))?;
        if meta.is_dir() {
            walk(p, p, 0, &mut items)?;
        } else {
            load_file(p, &item_id_for(p, None), &mut items)?;
        }
    }
    if items.items.is_empty() {
        return Err(
            Failure::usage("no items to submit: the inputs hold no text files")
                .hint(format!(
                    "pass text or Markdown files, JSONL, or directories containing .{} files",
                    TEXT_EXTENSIONS.join("/.")
                ))
                .into(),
        );
    }
    Ok(items.items)
}

fn unreadable(p: &Path, e: &std::io::Error) -> Failure {
    Failure::usage(format!("cannot read {}: {e}", p.display()))
        .hint("check the path and its permissions")
}

fn walk(root: &Path, dir: &Path, depth: usize, items: &mut Items) -> Result<(), Failure> {
    if depth > MAX_DEPTH {
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| unreadable(dir, &e))?
        .map(|e| e.map(|e| e.path()).map_err(|e| unreadable(dir, &e)))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for p in entries {
        let hidden = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        let meta = std::fs::metadata(&p).map_err(|e| unreadable(&p, &e))?;
        if meta.is_dir() {
            walk(root, &p, depth + 1, items)?;
        } else if has_text_extension(&p) {
            load_file(&p, &item_id_for(&p, Some(root)), items)?;
        }
    }
    Ok(())
}

fn has_text_extension(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| TEXT_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn is_jsonl(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jsonl" | "ndjson"))
}

fn load_file(p: &Path, item_id: &str, items: &mut Items) -> Result<(), Failure> {
    let bytes = std::fs::read(p).map_err(|e| unreadable(p, &e))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        Failure::usage(format!(
            "cannot read {}: not UTF-8 text (invalid byte at offset {})",
            p.display(),
            e.utf8_error().valid_up_to()
        ))
        .hint("submit text or Markdown files only")
    })?;
    if is_jsonl(p) {
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let item = parse_line(line).map_err(|e| {
                Failure::usage(format!("{}:{}: not a JSONL item: {e}", p.display(), n + 1)).hint(
                    r#"each line must be {"item_id": "...", "text": "...", "metadata": {...}}"#,
                )
            })?;
            items.push(item, format!("{}:{}", p.display(), n + 1))?;
        }
        return Ok(());
    }
    items.push(
        SubmitItem {
            item_id: item_id.to_owned(),
            text,
            metadata: file_metadata(p),
        },
        p.display().to_string(),
    )
}

/// A file item's metadata: its `source` path and, for a known extension, the
/// `media_type` the analyzer reads it as (`text/markdown`, `text/html`, `text/plain`).
fn file_metadata(p: &Path) -> serde_json::Value {
    let source = p.display().to_string();
    match fleet_analyzer::document::MediaType::from_path(&source) {
        Some(mt) => serde_json::json!({"source": source, "media_type": mt.as_str()}),
        None => serde_json::json!({"source": source}),
    }
}

/// The wire shape of one JSONL line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    item_id: String,
    text: String,
    #[serde(default)]
    metadata: serde_json::Value,
}

fn parse_line(line: &str) -> Result<SubmitItem, serde_json::Error> {
    let l: Line = serde_json::from_str(line)?;
    Ok(SubmitItem {
        item_id: l.item_id,
        text: l.text,
        metadata: l.metadata,
    })
}

fn load_stdin(text: &str, items: &mut Items) -> Result<(), Failure> {
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .collect();
    let parsed: Option<Vec<SubmitItem>> = (!lines.is_empty())
        .then(|| lines.iter().map(|(_, l)| parse_line(l).ok()).collect())
        .flatten();
    match parsed {
        Some(list) => {
            for (item, (n, _)) in list.into_iter().zip(&lines) {
                items.push(item, format!("stdin:{}", n + 1))?;
            }
            Ok(())
        }
        None if text.trim().is_empty() => {
            Err(Failure::usage("stdin is empty")
                .hint("pipe text or JSONL into `fleetctl submit -`"))
        }
        None => items.push(
            SubmitItem {
                item_id: "stdin".into(),
                text: text.to_owned(),
                metadata: serde_json::json!({"source": "stdin"}),
            },
            "stdin".into(),
        ),
    }
}

/// The item id of a file: its path relative to the current directory when it is
/// below it, else relative to the walked directory's parent (or the file name),
/// with `/` separators.
pub fn item_id_for(p: &Path, root: Option<&Path>) -> String {
    let cwd = std::env::current_dir().ok();
    let rel: PathBuf = if p.is_relative() {
        p.to_path_buf()
    } else if let Some(r) = cwd.as_deref().and_then(|c| p.strip_prefix(c).ok()) {
        r.to_path_buf()
    } else if let Some(root) = root {
        let base = root.parent().unwrap_or(root);
        p.strip_prefix(base).unwrap_or(p).to_path_buf()
    } else {
        p.file_name().map_or_else(|| p.to_path_buf(), PathBuf::from)
    };
    let parts: Vec<String> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    parts.join("/")
}

/// Parses `analyze,summarize:optional,write` (also `summarize?`, `write:required`).
pub fn parse_route(s: &str) -> Result<Vec<RouteStep>, Failure> {
    let bad = |msg: String| {
        Failure::usage(msg).hint("write the route like analyze,summarize:optional,write")
    };
    let mut out: Vec<RouteStep> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (stage, required) = if let Some(st) = part.strip_suffix('?') {
            (st, false)
        } else {
            match part.split_once(':') {
                Some((st, "optional")) => (st, false),
                Some((st, "required")) => (st, true),
                Some((_, other)) => {
                    return Err(bad(format!(
                        "--route: `{other}` in `{part}` is neither `optional` nor `required`"
                    )));
                }
                None => (part, true),
            }
        };
        let stage = stage.trim();
        let valid = !stage.is_empty()
            && stage.len() <= 200
            && stage
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(bad(format!(
                "--route: invalid stage `{stage}` (letters, digits, `-` and `_` only)"
            )));
        }
        if out.iter().any(|s| s.stage == stage) {
            return Err(bad(format!("--route: stage `{stage}` appears twice")));
        }
        out.push(RouteStep {
            stage: stage.to_owned(),
            required,
        });
    }
    if out.is_empty() {
        return Err(bad("--route names no stage".into()));
    }
    Ok(out)
}

/// Builds the submission of `items` with the options of `args`.
pub fn build(args: &SubmitArgs, items: Vec<SubmitItem>) -> Result<Submission, Failure> {
    if let Some(id) = &args.pipeline_id {
        let ok = !id.is_empty()
            && id.len() <= 200
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(
                Failure::usage(format!("--pipeline-id `{id}` is not a valid id"))
                    .hint("use 1 to 200 letters, digits, `-` and `_`"),
            );
        }
    }
    let limits = args.timeout.is_some() || args.max_attempts.is_some();
    let route = match (&args.route, limits) {
        (Some(r), _) => Some(parse_route(r)?),
        (None, true) => Some(parse_route(DEFAULT_ROUTE)?),
        (None, false) => None,
    };
    let mut stages = BTreeMap::new();
    if limits {
        let timeout_ms = args
            .timeout
            .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1));
        for step in route.iter().flatten() {
            stages.insert(
                step.stage.clone(),
                StageOptions {
                    timeout_ms,
                    max_attempts: args.max_attempts,
                },
            );
        }
    }
    if let Some(d) = args.deadline
        && d <= chrono::Utc::now()
    {
        return Err(
            Failure::usage(format!("--deadline {} is in the past", d.to_rfc3339()))
                .hint("give a duration from now (30m) or a future RFC 3339 time"),
        );
    }
    Ok(Submission {
        v: fleet_protocol::PROTOCOL_VERSION,
        pipeline_id: args.pipeline_id.clone(),
        items,
        route,
        stages,
        deadline_at: args.deadline,
        replay_of: None,
        open: false,
    })
}

/// The coordinator's answer to a submission.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct Submitted {
    /// The pipeline id (given or generated).
    pub pipeline_id: String,
    /// Its state now.
    pub state: String,
    /// False when the same submission already existed.
    pub created: bool,
}

/// Posts `sub`: in one request when it fits the coordinator's body limit, else as
/// an open pipeline with its items in batches (see [`crate::batches`]).
pub async fn post(client: &Client, sub: &Submission) -> anyhow::Result<Submitted> {
    post_within(client, sub, None).await.map(|(s, _)| s)
}

/// [`post`] with requests of at most `max_request` bytes (default: the
/// coordinator's limit); also returns how many items this run added.
pub async fn post_within(
    client: &Client,
    sub: &Submission,
    max_request: Option<usize>,
) -> anyhow::Result<(Submitted, Option<batches::BatchedOutcome>)> {
    let budget = match max_request {
        Some(n) => n,
        None => batches::budget(batches::limits(client).await?.max_body_bytes),
    };
    let whole = serde_json::to_vec(sub)?.len();
    if whole <= budget {
        let (_, s): (_, Submitted) = client.post("/v1/pipelines", sub, &[], None).await?;
        return Ok((s, None));
    }
    let done = batches::submit(client, sub, budget).await?;
    let s = Submitted {
        pipeline_id: done.pipeline_id.clone(),
        state: done.state.clone(),
        created: done.created,
    };
    Ok((s, Some(done)))
}

/// `fleetctl submit`: returns the exit code.
pub async fn run(client: &Client, args: &SubmitArgs) -> anyhow::Result<u8> {
    let items = load(&args.paths)?;
    let n = items.len();
    let sub = build(args, items)?;
    let (done, batched) = post_within(client, &sub, args.max_request_bytes).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&done)?);
    } else if let Some(b) = batched.as_ref().filter(|b| !b.created && b.added > 0) {
        println!(
            "resumed pipeline {}: added the {} missing of {n} items ({} requests)",
            b.pipeline_id, b.added, b.batches
        );
    } else if let Some(b) = batched.as_ref().filter(|b| b.created) {
        println!(
            "created pipeline {} with {n} items (sent in {} requests)",
            b.pipeline_id, b.batches
        );
    } else if done.created {
        println!("created pipeline {} with {n} items", done.pipeline_id);
    } else {
        println!(
            "pipeline {} already exists ({}): the same submission, nothing new created",
            done.pipeline_id, done.state
        );
    }
    if args.watch {
        return crate::watch::run(client, &done.pipeline_id, args.json).await;
    }
    if !args.json {
        println!("follow it with: fleetctl watch {}", done.pipeline_id);
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let r = parse_route("analyze, summarize:optional ,write?").unwrap();
        assert_eq!(
            r.iter()
                .map(|s| (s.stage.as_str(), s.required))
                .collect::<Vec<_>>(),
            [("analyze", true), ("summarize", false), ("write", false)]
        );
        assert!(parse_route("a,a").is_err());
        assert!(parse_route("a:maybe").is_err());
        assert!(parse_route("a.b").is_err());
        assert!(parse_route(" , ").is_err());
    }

    #[test]
    fn item_ids_are_relative_with_slashes() {
        assert_eq!(item_id_for(Path::new("./docs/a.md"), None), "docs/a.md");
        let abs = Path::new("/nowhere/x/docs/b.md");
        assert_eq!(
            item_id_for(abs, Some(Path::new("/nowhere/x/docs"))),
            "docs/b.md"
        );
        assert_eq!(item_id_for(abs, None), "b.md");
    }

    #[test]
    fn stdin_jsonl_or_text() {
        let mut items = Items::default();
        load_stdin("{\"item_id\":\"a\",\"text\":\"x\"}\n\n{\"item_id\":\"b\",\"text\":\"y\",\"metadata\":{\"k\":1}}\n", &mut items).unwrap();
        assert_eq!(items.items.len(), 2);
        assert_eq!(items.items[1].metadata["k"], 1);
        let mut items = Items::default();
        load_stdin(
            "just some text\n{\"item_id\":\"a\",\"text\":\"x\"}",
            &mut items,
        )
        .unwrap();
        assert_eq!(items.items[0].item_id, "stdin");
        assert!(load_stdin("  \n", &mut Items::default()).is_err());
    }

    #[test]
    fn duplicates_are_named() {
        let mut items = Items::default();
        let it = SubmitItem {
            item_id: "a".into(),
            text: String::new(),
            metadata: serde_json::Value::Null,
        };
        items.push(it.clone(), "one".into()).unwrap();
        let e = items.push(it, "two".into()).unwrap_err();
        assert!(
            e.message.contains("one") && e.message.contains("two"),
            "{e}"
        );
    }

    #[test]
    fn file_items_carry_their_media_type() {
        let mt = |p: &str| file_metadata(Path::new(p))["media_type"].clone();
        assert_eq!(mt("docs/a.md"), "text/markdown");
        assert_eq!(mt("site/index.HTML"), "text/html");
        assert_eq!(mt("notes.txt"), "text/plain");
        assert!(mt("notes.rst").is_null());
        assert_eq!(file_metadata(Path::new("x.md"))["source"], "x.md");
    }
}
