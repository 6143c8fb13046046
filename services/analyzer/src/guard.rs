//! The command guard: on Linux every command analyzer is started through a
//! tiny mode of the analyzer binary itself (`fleet-analyzer
//! __fleet-command-guard <analyzer pid> <program> <args…>`). The guard leads
//! the analyzer's process group, asks the kernel for a signal when its parent
//! dies (`PR_SET_PDEATHSIG`), starts the program in its group and waits for
//! it. If the analyzer dies — even by SIGKILL, where no cleanup of its own can
//! run — the guard kills the whole group (the program and everything it
//! forked), so no child outlives its analyzer.
//!
//! Why a separate process and not `pre_exec`: setting the death signal in the
//! forked child needs `CommandExt::pre_exec`, which is `unsafe`, and the
//! workspace forbids unsafe code. nix's `set_pdeathsig` is safe when called in
//! a process of its own, and a guard that stays alive can kill the program's
//! own children too, which a death signal set on the program alone would not
//! (it reaches one process, not its group).
//!
//! The death signal follows the parent *thread* that spawned the guard; a
//! tokio worker thread may exit before the analyzer does. So the guard acts on
//! it only when its parent pid really changed, and also polls the parent pid
//! as a backstop.

use std::ffi::OsString;
use std::sync::OnceLock;
use std::time::Duration;

/// The first argument that selects guard mode.
pub const GUARD_ARG: &str = "__fleet-command-guard";
/// The exit code when the program cannot be started (as a shell reports it).
pub const CANNOT_START: i32 = 127;
/// The stderr line the guard prints when the program cannot be started.
pub const CANNOT_START_MARK: &str = "fleet-command-guard: cannot start";
/// How often the guard checks that its parent is still alive (backstop for the signal).
const PARENT_POLL: Duration = Duration::from_millis(250);

static GUARD_PROGRAM: OnceLock<std::path::PathBuf> = OnceLock::new();

/// Starts every later command analyzer through `program` (the analyzer binary itself) in
/// guard mode. Without it (library use, unit tests) commands are started directly.
pub fn use_guard(program: std::path::PathBuf) {
    let _ = GUARD_PROGRAM.set(program);
}

/// The guard program, when one is in use.
pub fn guard_program() -> Option<&'static std::path::Path> {
    GUARD_PROGRAM.get().map(std::path::PathBuf::as_path)
}

/// When this process was started in guard mode, runs the guard and returns its exit code.
pub fn dispatch() -> Option<i32> {
    let mut args = std::env::args_os().skip(1);
    if args.next()? != GUARD_ARG {
        return None;
    }
    Some(run(args.collect()))
}

#[cfg(target_os = "linux")]
fn run(args: Vec<OsString>) -> i32 {
    use nix::sys::signal::{SigSet, Signal};
    use nix::unistd::{Pid, getppid};

    let mut args = args.into_iter();
    let (Some(ppid), Some(program)) = (args.next(), args.next()) else {
        eprintln!("{CANNOT_START_MARK}: usage: {GUARD_ARG} <parent pid> <program> [args…]");
        return CANNOT_START;
    };
    let Some(parent) = ppid.to_str().and_then(|s| s.parse::<i32>().ok()) else {
        eprintln!("{CANNOT_START_MARK}: bad parent pid {ppid:?}");
        return CANNOT_START;
    };
    let parent = Pid::from_raw(parent);
    // Only the watcher thread takes SIGTERM (std unblocks it again in the program).
    let mut term = SigSet::empty();
    term.add(Signal::SIGTERM);
    if let Err(e) = term.thread_block() {
        eprintln!("{CANNOT_START_MARK}: blocking SIGTERM: {e}");
        return CANNOT_START;
    }
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Some(Signal::SIGTERM)) {
        eprintln!("{CANNOT_START_MARK}: PR_SET_PDEATHSIG: {e}");
        return CANNOT_START;
    }
    // The parent may have died before the death signal was armed.
    if getppid() != parent {
        kill_group();
    }
    let mut child = match std::process::Command::new(&program).args(args).spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{CANNOT_START_MARK} `{}`: {e}", program.to_string_lossy());
            return CANNOT_START;
        }
    };
    std::thread::spawn(move || {
        while term.wait().is_ok() {
            // A death signal whose parent is still there: only the spawning thread ended.
            if getppid() != parent {
                kill_group();
            }
        }
    });
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(PARENT_POLL);
            if getppid() != parent {
                kill_group();
            }
        }
    });
    match child.wait() {
        Ok(status) => exit_like(status),
        Err(e) => {
            eprintln!("fleet-command-guard: waiting for the program failed: {e}");
            kill_group()
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn run(_args: Vec<OsString>) -> i32 {
    eprintln!("{CANNOT_START_MARK}: the command guard needs Linux");
    CANNOT_START
}

/// Kills this process group (the guard, the program and its children) at once.
#[cfg(target_os = "linux")]
fn kill_group() -> ! {
    let _ = nix::sys::signal::killpg(nix::unistd::getpgrp(), nix::sys::signal::Signal::SIGKILL);
    std::process::exit(137)
}

/// Ends the guard the way the program ended: its exit code, or its signal.
#[cfg(target_os = "linux")]
fn exit_like(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    if let Some(code) = status.code() {
        return code;
    }
    if let Some(sig) = status
        .signal()
        .and_then(|s| nix::sys::signal::Signal::try_from(s).ok())
    {
        let mut set = nix::sys::signal::SigSet::empty();
        set.add(sig);
        let _ = set.thread_unblock();
        let _ = nix::sys::signal::raise(sig);
        return 128 + sig as i32;
    }
    1
}
