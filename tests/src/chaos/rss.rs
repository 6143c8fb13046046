//! Per-process resource samples from `/proc` (resident memory, open descriptors, threads),
//! the tokio task count from the process's `/metrics`, and the least-squares slope the soak
//! prints.

/// One process's resources at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// Resident set size, bytes (`VmRSS`).
    pub rss: u64,
    /// Open file descriptors (entries of `/proc/<pid>/fd`).
    pub fds: u64,
    /// OS threads (`Threads`).
    pub threads: u64,
    /// Tokio tasks alive (`fleet_tokio_alive_tasks` of its `/metrics`); `None` when the
    /// scrape did not answer in time.
    pub tasks: Option<u64>,
}

/// The usage of process `pid`, `None` when it is gone (or not on Linux).
pub fn usage(pid: u32) -> Option<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    Some(Usage {
        rss: field("VmRSS:").unwrap_or(0) * 1024,
        fds,
        threads: field("Threads:").unwrap_or(0),
        tasks: None,
    })
}

/// Least-squares slope of `(x, y)` points (y per unit of x); 0 with fewer than 2 distinct x.
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx) * (p.0 - mx)).sum();
    if sxx == 0.0 {
        return 0.0;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    sxy / sxx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line_and_of_noise() {
        let line: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 3.0 * i as f64 + 1.0)).collect();
        assert!((slope(&line) - 3.0).abs() < 1e-9);
        let flat: Vec<(f64, f64)> = (0..10)
            .map(|i| (i as f64, if i % 2 == 0 { 5.0 } else { 7.0 }))
            .collect();
        assert!(slope(&flat).abs() < 0.25);
        assert_eq!(slope(&[(1.0, 1.0)]), 0.0);
    }

    #[test]
    fn own_usage_is_read() {
        let u = usage(std::process::id()).expect("this process");
        assert!(u.rss > 0 && u.fds > 0 && u.threads > 0, "{u:?}");
    }
}
