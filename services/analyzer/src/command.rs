//! Command analyzers: one external program per item, in its own process
//! group, with a timeout and an output cap. The whole group is killed on
//! timeout, on cancellation, when stdout passes the cap (the analyzer then
//! fails with reason `output_too_large`, and none of its output is kept),
//! after the program exits (stray children) and on drop (the runtime drops the
//! handler future at the job deadline). If the analyzer process itself dies,
//! the command guard ([`crate::guard`]) kills the group, so no forked child
//! outlives its analyzer.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{AnalyzerSpec, InputMode};

/// Bytes of stderr kept (the end of it: where the error usually is).
pub const STDERR_TAIL_BYTES: usize = 2048;
/// After the program exits or is killed, how long its pipes may take to close.
const PIPE_GRACE: Duration = Duration::from_secs(2);

/// What one command analyzer produced (`analysis.analyzers.<name>`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CommandResult {
    /// True when the program ran and exited 0 within its timeout.
    pub ok: bool,
    /// Exit code, when it exited (not killed by a signal, not missing).
    pub exit_code: Option<i32>,
    /// Stdout: JSON when it parses, else text; `null` when it exceeded `max_output_bytes`.
    pub output: serde_json::Value,
    /// Why it failed, as a closed set: `missing`, `timed_out`, `exit_status`, `signal`,
    /// `output_too_large`, `cancelled`, `io_error` (none when it succeeded).
    pub reason: Option<&'static str>,
    /// The last bytes of stderr.
    pub stderr_tail: String,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// Wall time.
    pub duration_ms: u64,
    /// Failure class for the retry decision (not serialized).
    #[serde(skip)]
    pub failure: Option<Failure>,
}

/// Why a command analyzer failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The program does not exist or is not executable: retrying cannot help.
    Missing,
    /// Stdout passed `max_output_bytes`: the program's answer is not usable as is.
    TooLarge,
    /// Timed out, non-zero exit, killed, I/O error: may succeed next time.
    Failed,
    /// The job was cancelled (deadline, pipeline cancellation, drain) while it ran.
    Cancelled,
}

/// Kills a process group when dropped (unless disarmed), and removes the input file.
struct GroupGuard {
    pgid: Option<Pid>,
    input_file: Option<PathBuf>,
}

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(pgid) = self.pgid {
            // ESRCH (the group is already gone) is the normal case after a clean exit.
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
        if let Some(p) = self.input_file.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn result(
    started: Instant,
    failure: Option<(Failure, &'static str)>,
    error: Option<String>,
) -> CommandResult {
    CommandResult {
        ok: failure.is_none(),
        exit_code: None,
        output: serde_json::Value::Null,
        reason: failure.map(|f| f.1),
        stderr_tail: String::new(),
        error,
        duration_ms: started.elapsed().as_millis() as u64,
        failure: failure.map(|f| f.0),
    }
}

/// The environment variables every command analyzer receives (when set); everything else,
/// the broker URL and other secrets included, is withheld unless the analyzer's `env` names it.
pub const ENV_ALLOW_LIST: [&str; 6] = ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR"];

/// Runs `spec` over `text`; returns when it exits, times out or `cancel` fires.
pub async fn run_command(
    spec: &AnalyzerSpec,
    text: &str,
    cancel: &CancellationToken,
) -> CommandResult {
    let started = Instant::now();
    let mut guard = GroupGuard {
        pgid: None,
        input_file: None,
    };
    let mut cmd = match crate::guard::guard_program() {
        // Through the guard: it leads the group and kills it if this process dies.
        Some(guard) => {
            let mut c = Command::new(guard);
            c.arg(crate::guard::GUARD_ARG)
                .arg(std::process::id().to_string())
                .arg(&spec.program);
            c
        }
        None => Command::new(&spec.program),
    };
    // A cleared environment: the command never sees FLEET_BROKER_URL or any other secret.
    cmd.env_clear();
    for name in ENV_ALLOW_LIST
        .iter()
        .copied()
        .chain(spec.env.iter().map(String::as_str))
    {
        if let Some(v) = std::env::var_os(name) {
            cmd.env(name, v);
        }
    }
    cmd.args(&spec.args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    match spec.input {
        InputMode::Stdin => {
            cmd.stdin(Stdio::piped());
        }
        InputMode::File => {
            let path = std::env::temp_dir().join(format!(
                "fleet-analyzer-{}.txt",
                uuid::Uuid::new_v4().simple()
            ));
            if let Err(e) = write_private(&path, text).await {
                return result(
                    started,
                    Some((Failure::Failed, "io_error")),
                    Some(format!("writing the input file: {e}")),
                );
            }
            cmd.stdin(Stdio::null()).arg(&path);
            guard.input_file = Some(path);
        }
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let failure = match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                    (Failure::Missing, "missing")
                }
                _ => (Failure::Failed, "io_error"),
            };
            return result(
                started,
                Some(failure),
                Some(format!("cannot start `{}`: {e}", spec.program)),
            );
        }
    };
    // process_group(0): the child's pid is its group id.
    guard.pgid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw);

    let stdin = child.stdin.take().map(|mut w| {
        let body = text.as_bytes().to_vec();
        // A program that does not read its input closes the pipe: EPIPE is not an error here.
        tokio::spawn(async move {
            let _ = w.write_all(&body).await;
            let _ = w.shutdown().await;
        })
    });
    let (over_tx, over_rx) = tokio::sync::oneshot::channel();
    let stdout = child
        .stdout
        .take()
        .map(|r| tokio::spawn(read_capped(r, spec.max_output_bytes, over_tx)));
    let too_large = format!(
        "output_too_large: stdout passed max_output_bytes ({} bytes); the program was stopped and its output discarded",
        spec.max_output_bytes
    );
    let stderr = child
        .stderr
        .take()
        .map(|r| tokio::spawn(read_tail(r, STDERR_TAIL_BYTES)));

    let over_cap = async {
        // A reader that ends within the cap drops the sender: never fire then.
        if over_rx.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let outcome = tokio::select! {
        r = tokio::time::timeout(spec.timeout, child.wait()) => match r {
            Ok(Ok(status)) => Ok(status),
            Ok(Err(e)) => Err((Failure::Failed, "io_error", format!("waiting for the program failed: {e}"))),
            Err(_) => Err((Failure::Failed, "timed_out", format!("timed out after {}", humantime::format_duration(spec.timeout)))),
        },
        () = cancel.cancelled() => Err((Failure::Cancelled, "cancelled", "cancelled: the job's attempt ended".to_owned())),
        () = over_cap => Err((Failure::TooLarge, "output_too_large", too_large.clone())),
    };
    // Whatever happened, nothing of this group may outlive the analyzer; stray children
    // holding the pipes open would also keep the readers below waiting.
    guard.kill();
    if outcome.is_err() {
        let _ = tokio::time::timeout(PIPE_GRACE, child.wait()).await;
    }
    if let Some(h) = stdin {
        h.abort();
    }
    let (out, truncated) = match stdout {
        Some(h) => tokio::time::timeout(PIPE_GRACE, h)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default(),
        None => (Vec::new(), false),
    };
    let tail = match stderr {
        Some(h) => tokio::time::timeout(PIPE_GRACE, h)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let mut r = result(started, None, None);
    r.stderr_tail = String::from_utf8_lossy(&tail).into_owned();
    let failure = match outcome {
        // Over the cap nothing of the output is kept, whatever the exit status.
        _ if truncated => Some((Failure::TooLarge, "output_too_large", too_large)),
        Ok(status) => {
            r.exit_code = status.code();
            r.output = parse_output(&out);
            match status.code() {
                _ if status.success() => None,
                Some(crate::guard::CANNOT_START)
                    if r.stderr_tail.contains(crate::guard::CANNOT_START_MARK) =>
                {
                    Some((Failure::Missing, "missing", r.stderr_tail.trim().to_owned()))
                }
                Some(c) => Some((
                    Failure::Failed,
                    "exit_status",
                    format!("exited with status {c}"),
                )),
                None => Some((
                    Failure::Failed,
                    "signal",
                    format!("terminated by a signal ({status})"),
                )),
            }
        }
        Err(e) => Some(e),
    };
    if let Some((failure, reason, error)) = failure {
        r.failure = Some(failure);
        r.reason = Some(reason);
        r.error = Some(error);
    }
    r.ok = r.failure.is_none();
    r
}

/// Stdout as JSON when it parses, else as (lossy UTF-8) text.
/// Writes the item text to a new file only this user can read (mode 0600).
async fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut f = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .await?;
    f.write_all(text.as_bytes()).await?;
    f.flush().await
}

fn parse_output(out: &[u8]) -> serde_json::Value {
    if out.is_empty() {
        return serde_json::Value::String(String::new());
    }
    serde_json::from_slice(out).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(out).trim_end().to_owned())
    })
}

/// Reads everything up to `cap` bytes; past it, stops reading, says so on `over` and
/// returns nothing (true: over the cap).
async fn read_capped(
    mut r: impl AsyncRead + Unpin,
    cap: usize,
    over: tokio::sync::oneshot::Sender<()>,
) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        if kept.len() + n > cap {
            let _ = over.send(());
            return (Vec::new(), true);
        }
        kept.extend_from_slice(&buf[..n]);
    }
    (kept, false)
}

/// Reads everything, keeping the last `tail` bytes.
async fn read_tail(mut r: impl AsyncRead + Unpin, tail: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > 2 * tail {
            kept.drain(..kept.len() - tail);
        }
    }
    if kept.len() > tail {
        kept.drain(..kept.len() - tail);
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(program: &str, args: &[&str]) -> AnalyzerSpec {
        AnalyzerSpec {
            name: "t".into(),
            program: program.into(),
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            input: InputMode::Stdin,
            timeout: Duration::from_secs(5),
            max_output_bytes: 1024,
            required: false,
            env: Vec::new(),
        }
    }

    #[tokio::test]
    async fn records_output_exit_code_and_stderr() {
        let never = CancellationToken::new();
        let r = run_command(&spec("wc", &["-w"]), "one two three", &never).await;
        assert!(r.ok, "{r:?}");
        assert_eq!(r.exit_code, Some(0));
        assert_eq!(r.output, serde_json::json!(3));
        let r = run_command(
            &spec("sh", &["-c", "echo '{\"a\":1}'; echo oops >&2; exit 3"]),
            "",
            &never,
        )
        .await;
        assert!(!r.ok);
        assert_eq!(r.exit_code, Some(3));
        assert_eq!(r.output, serde_json::json!({"a": 1}));
        assert_eq!(r.stderr_tail.trim(), "oops");
        assert_eq!(r.failure, Some(Failure::Failed));
        let r = run_command(&spec("/nonexistent/program", &[]), "", &never).await;
        assert_eq!(r.failure, Some(Failure::Missing));
    }

    #[tokio::test]
    async fn caps_output_and_reads_file_input() {
        let never = CancellationToken::new();
        // 1 MiB against a 64 KiB cap: failed, named, nothing of it carried.
        let mut s = spec("sh", &["-c", "head -c 1048576 /dev/zero | tr '\\0' x"]);
        s.max_output_bytes = 64 * 1024;
        let r = run_command(&s, "", &never).await;
        assert!(!r.ok, "{:?}", r.error);
        assert_eq!(r.failure, Some(Failure::TooLarge));
        assert_eq!(r.reason, Some("output_too_large"));
        assert_eq!(r.output, serde_json::Value::Null);
        assert!(
            r.error
                .as_deref()
                .unwrap_or_default()
                .contains("output_too_large")
        );
        let json = serde_json::to_string(&r).unwrap();
        assert!(
            json.len() < 2048 && json.contains("\"reason\":\"output_too_large\""),
            "{json}"
        );
        // Exactly at the cap is fine.
        let mut s = spec("sh", &["-c", "head -c 100 /dev/zero | tr '\\0' x"]);
        s.max_output_bytes = 100;
        let r = run_command(&s, "", &never).await;
        assert!(r.ok, "{r:?}");
        assert_eq!(r.output.as_str().map(str::len), Some(100));
        let mut f = spec("wc", &["-c"]);
        f.input = InputMode::File;
        let r = run_command(&f, "12345", &never).await;
        assert!(r.ok, "{r:?}");
        assert!(r.output.to_string().contains('5'), "{r:?}");
    }

    /// No secret reaches a command: only the allow-list and the analyzer's own `env` names
    /// (this test process has e.g. CARGO_* variables, none of which is allowed).
    #[tokio::test]
    async fn commands_see_only_allow_listed_env_and_a_private_input_file() {
        let never = CancellationToken::new();
        let r = run_command(&spec("sh", &["-c", "env | cut -d= -f1"]), "", &never).await;
        assert!(r.ok, "{r:?}");
        let names = r.output.as_str().unwrap_or_default().to_owned();
        assert!(names.contains("PATH"), "{names}");
        for n in names.lines().filter(|n| !n.is_empty()) {
            // sh itself may add PWD, SHLVL and _.
            assert!(
                ENV_ALLOW_LIST.contains(&n) || ["PWD", "SHLVL", "_", "OLDPWD"].contains(&n),
                "{n} leaked to the command: {names}"
            );
        }
        assert!(std::env::var_os("CARGO_PKG_NAME").is_some());
        let mut s = spec("sh", &["-c", "echo $CARGO_PKG_NAME"]);
        s.env = vec!["CARGO_PKG_NAME".into()];
        let r = run_command(&s, "", &never).await;
        assert_eq!(r.output, serde_json::json!("fleet-analyzer"), "{r:?}");
        // The input file is private to this user.
        let mut f = spec("sh", &["-c", "stat -c %a \"$0\""]);
        f.input = InputMode::File;
        let r = run_command(&f, "secret text", &never).await;
        assert!(r.ok, "{r:?}");
        assert_eq!(r.output, serde_json::json!(600), "{r:?}");
    }

    #[tokio::test]
    async fn timeout_and_cancellation_stop_it() {
        let never = CancellationToken::new();
        let mut s = spec("sleep", &["30"]);
        s.timeout = Duration::from_millis(200);
        let t = Instant::now();
        let r = run_command(&s, "", &never).await;
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(
            r.error.as_deref().unwrap_or_default().contains("timed out"),
            "{r:?}"
        );
        let cancel = CancellationToken::new();
        let c2 = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            c2.cancel();
        });
        let r = run_command(&spec("sleep", &["30"]), "", &cancel).await;
        assert_eq!(r.failure, Some(Failure::Cancelled));
    }
}
