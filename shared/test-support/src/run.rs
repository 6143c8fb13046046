//! Runs a service binary to its exit, for tests of start-up errors.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::wait::wait_for_blocking;

/// Longest a binary that should refuse to start may take to exit.
const EXIT_BOUND: Duration = Duration::from_secs(20);

/// Kills the child if the wait below gives up (a panic), so no process outlives the test.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `bin` with only `PATH`, `FLEET_BROKER_URL=memory://`, `FLEET_ADMIN_ADDR=127.0.0.1:0`
/// and `env` set, until it exits (bounded); returns whether it succeeded and its stderr.
pub fn run_to_exit(bin: &str, env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(bin);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("FLEET_BROKER_URL", "memory://")
        .env("FLEET_ADMIN_ADDR", "127.0.0.1:0")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = KillOnDrop(cmd.spawn().expect("start the binary"));
    let status = wait_for_blocking("the binary to exit", EXIT_BOUND, || {
        child.0.try_wait().expect("try_wait")
    });
    let mut stderr = String::new();
    child
        .0
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    (status.success(), stderr)
}
