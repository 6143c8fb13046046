//! Where the CPU went, from Linux's `/proc`: this process's CPU time, the local broker
//! process's CPU time, and the whole machine's busy time, so that a result can be read as
//! CPU per job and against the load the box carried. Every figure is absent elsewhere.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Clock ticks per second of `/proc` figures (`USER_HZ`, 100 on every Linux ABI).
const USER_HZ: f64 = 100.0;

/// The broker process whose CPU time snapshots include (set per broker under test).
static BROKER_PID: Mutex<Option<u32>> = Mutex::new(None);

/// One reading of the wall clock and the CPU counters.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    /// Wall clock.
    pub at: Instant,
    /// CPU time of this process so far (user + system).
    pub own: Option<Duration>,
    /// CPU time of the watched broker process so far.
    pub broker: Option<Duration>,
    /// CPU time the whole machine has been busy so far (all cores, all processes).
    pub machine: Option<Duration>,
    /// Allocations this process has made so far (see [`crate::alloc`]).
    pub allocs: u64,
}

impl Snapshot {
    /// Reads the clocks now.
    pub fn now() -> Snapshot {
        let broker = *BROKER_PID
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Snapshot {
            at: Instant::now(),
            own: process_cpu("self"),
            broker: broker.and_then(|pid| process_cpu(&pid.to_string())),
            machine: machine_busy(),
            allocs: crate::alloc::count(),
        }
    }
}

/// From now on, snapshots include the process listening on local TCP `port`, if it can be
/// found (a broker on this machine, visible to this user); returns its pid.
pub fn watch_broker(port: u16) -> Option<u32> {
    let pid = listener_pid(port);
    *BROKER_PID
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = pid;
    pid
}

/// The port of a broker URL (`scheme://[user:pass@]host[:port][/…]`, first host of a list).
pub fn url_port(url: &str, default: u16) -> u16 {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', ',', '?']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    match host_port.rsplit_once(':') {
        Some((_, port)) => port.parse().unwrap_or(default),
        None => default,
    }
}

fn ticks(n: u64) -> Duration {
    Duration::from_secs_f64(n as f64 / USER_HZ)
}

/// `utime + stime` of a process (fields 14 and 15 of `/proc/<pid>/stat`).
fn process_cpu(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: fields are counted after its closing parenthesis.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some(ticks(user + system))
}

/// Busy time of all cores: the `cpu` line of `/proc/stat` minus idle and iowait.
fn machine_busy() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let idle = v.get(3)? + v.get(4)?;
    Some(ticks(v.iter().sum::<u64>() - idle))
}

/// The pid owning the listening socket on `port`: its inode from `/proc/net/tcp{,6}`, then
/// the process holding `socket:[inode]` among its file descriptors.
fn listener_pid(port: u16) -> Option<u32> {
    let want = format!(":{port:04X}");
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .find_map(|table| {
            let text = std::fs::read_to_string(table).ok()?;
            text.lines().skip(1).find_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                // local_address ends with the port; state 0A is LISTEN; inode is field 10.
                if f.get(1)?.ends_with(&want) && *f.get(3)? == "0A" {
                    f.get(9).map(|s| (*s).to_owned())
                } else {
                    None
                }
            })
        })?;
    let target = format!("socket:[{inode}]");
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let fds = std::fs::read_dir(entry.path().join("fd")).ok()?;
            fds.flatten()
                .any(|fd| {
                    std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target.as_str())
                })
                .then_some(pid)
        })
}

/// How many cores the machine kept busy between two snapshots (all processes).
pub fn busy_cores(from: &Snapshot, to: &Snapshot) -> Option<f64> {
    let busy = to.machine?.checked_sub(from.machine?)?;
    let wall = (to.at - from.at).as_secs_f64();
    (wall > 0.0).then(|| busy.as_secs_f64() / wall)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_of_broker_urls() {
        assert_eq!(url_port("amqp://guest:guest@127.0.0.1:5672/%2f", 1), 5672);
        assert_eq!(url_port("amqp://h/%2f", 5672), 5672);
        assert_eq!(url_port("nats://127.0.0.1:4223,nats://b:4224", 4222), 4223);
        assert_eq!(url_port("nats://u:p@host", 4222), 4222);
    }

    #[test]
    fn counters_move_forward_on_linux() {
        let a = Snapshot::now();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let b = Snapshot::now();
        if cfg!(target_os = "linux") {
            assert!(b.own >= a.own && b.own.is_some());
            assert!(busy_cores(&a, &b).is_some_and(|c| c >= 0.0));
        }
    }

    #[test]
    fn finds_its_own_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        if cfg!(target_os = "linux") {
            assert_eq!(listener_pid(port), Some(std::process::id()));
        }
    }
}
