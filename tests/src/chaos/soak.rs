//! The soak's figures: per service, the least-squares slope per minute of resident memory,
//! open descriptors, OS threads and tokio tasks over the run, and whether the trend is flat.
//!
//! Workers are SIGKILLed and replaced during a soak (fault 2), so one worker process rarely
//! lives long enough to show a trend: each service's figure is the sum over its live
//! replicas at each sampling tick (its whole footprint). Coordinators are never killed in
//! a soak, so their sum follows the same two processes for the whole run.
//!
//! Tokio tasks come from each process's `fleet_tokio_alive_tasks` gauge (tokio's stable
//! `num_alive_tasks`); a tick where some live replica did not answer its scrape is left out
//! of the task series (a partial sum would read as a dip).

use std::collections::BTreeMap;

use super::rss::{Usage, slope};

/// One service's trend.
#[derive(Debug, Clone)]
pub struct Trend {
    /// `coordinator`, `analyzer`, …
    pub kind: String,
    /// Samples (ticks) used.
    pub samples: usize,
    /// Mean RSS, MiB, and its slope in MiB per minute.
    pub rss_mib: (f64, f64),
    /// Mean open descriptors and their slope per minute.
    pub fds: (f64, f64),
    /// Mean threads and their slope per minute.
    pub threads: (f64, f64),
    /// Mean tokio tasks and their slope per minute (`None`: no tick had every replica's count).
    pub tasks: Option<(f64, f64)>,
    /// Why the trend is not flat (empty: flat).
    pub rising: Vec<String>,
}

/// The trends of `log` (`(seconds, kind, instance, usage)`), ignoring the first
/// `warmup_secs` (allocators and pools filling up).
pub fn trends(log: &[(f64, String, String, Usage)], warmup_secs: f64) -> Vec<Trend> {
    // kind → tick time → summed usage (tasks stay `Some` only while every replica had one).
    let mut sums: BTreeMap<String, BTreeMap<u64, (f64, Usage)>> = BTreeMap::new();
    for (t, kind, _, u) in log.iter().filter(|(t, ..)| *t >= warmup_secs) {
        let key = (t * 1000.0) as u64 / 2000; // the sampler's 2 s ticks
        let e = sums.entry(kind.clone()).or_default().entry(key).or_insert((
            *t,
            Usage {
                tasks: Some(0),
                ..Usage::default()
            },
        ));
        e.1.rss += u.rss;
        e.1.fds += u.fds;
        e.1.threads += u.threads;
        e.1.tasks = e.1.tasks.zip(u.tasks).map(|(a, b)| a + b);
    }
    sums.into_iter()
        .map(|(kind, ticks)| {
            let pts = |f: &dyn Fn(&Usage) -> f64| -> (f64, f64) {
                let p: Vec<(f64, f64)> = ticks.values().map(|(t, u)| (t / 60.0, f(u))).collect();
                let mean = p.iter().map(|x| x.1).sum::<f64>() / p.len().max(1) as f64;
                (mean, slope(&p))
            };
            let rss_mib = pts(&|u| u.rss as f64 / 1048576.0);
            let fds = pts(&|u| u.fds as f64);
            let threads = pts(&|u| u.threads as f64);
            let task_pts: Vec<(f64, f64)> = ticks
                .values()
                .filter_map(|(t, u)| Some((t / 60.0, u.tasks? as f64)))
                .collect();
            let tasks = (task_pts.len() >= 2).then(|| {
                let mean = task_pts.iter().map(|x| x.1).sum::<f64>() / task_pts.len() as f64;
                (mean, slope(&task_pts))
            });
            let mut rising = Vec::new();
            // Flat: under 1 % of the mean per minute, or tiny in absolute terms.
            if rss_mib.1 > (rss_mib.0 * 0.01).max(0.5) {
                rising.push(format!("RSS +{:.2} MiB/min", rss_mib.1));
            }
            if fds.1 > (fds.0 * 0.01).max(0.5) {
                rising.push(format!("fds +{:.2}/min", fds.1));
            }
            if threads.1 > (threads.0 * 0.01).max(0.5) {
                rising.push(format!("threads +{:.2}/min", threads.1));
            }
            if let Some((mean, per_min)) = tasks
                && per_min > (mean * 0.01).max(0.5)
            {
                rising.push(format!("tokio tasks +{per_min:.2}/min"));
            }
            Trend {
                kind,
                samples: ticks.len(),
                rss_mib,
                fds,
                threads,
                tasks,
                rising,
            }
        })
        .collect()
}

/// The trends as a Markdown table.
pub fn table(trends: &[Trend]) -> String {
    let mut out = String::from(
        "| service (sum of replicas) | samples | RSS MiB mean | RSS MiB/min | fds mean | fds/min | threads mean | threads/min | tokio tasks mean | tokio tasks/min | trend |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for t in trends {
        let (tasks_mean, tasks_slope) = match t.tasks {
            Some((m, s)) => (format!("{m:.1}"), format!("{s:+.3}")),
            None => ("–".to_owned(), "–".to_owned()),
        };
        out.push_str(&format!(
            "| {} | {} | {:.1} | {:+.3} | {:.1} | {:+.3} | {:.1} | {:+.3} | {tasks_mean} | {tasks_slope} | {} |\n",
            t.kind,
            t.samples,
            t.rss_mib.0,
            t.rss_mib.1,
            t.fds.0,
            t.fds.1,
            t.threads.0,
            t.threads.1,
            if t.rising.is_empty() {
                "flat".to_owned()
            } else {
                format!("**rising**: {}", t.rising.join(", "))
            }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leak_is_flagged_and_a_flat_line_is_not() {
        let mut log = Vec::new();
        for i in 0..300 {
            let t = i as f64 * 2.0;
            let flat = Usage {
                rss: 50 << 20,
                fds: 40,
                threads: 8,
                tasks: Some(30),
            };
            let leak = Usage {
                rss: (50 << 20) + (i as u64) * (1 << 20),
                fds: 40 + i as u64,
                threads: 8,
                tasks: Some(30 + 2 * i as u64),
            };
            log.push((t, "flat".to_owned(), "flat-1".to_owned(), flat));
            log.push((t, "leak".to_owned(), "leak-1".to_owned(), leak));
        }
        let tr = trends(&log, 0.0);
        let flat = tr.iter().find(|t| t.kind == "flat").expect("flat");
        let leak = tr.iter().find(|t| t.kind == "leak").expect("leak");
        assert!(flat.rising.is_empty(), "{flat:?}");
        assert_eq!(leak.rising.len(), 3, "{leak:?}");
        assert!((leak.fds.1 - 30.0).abs() < 0.5, "30 fds a minute: {leak:?}");
        let tasks = leak.tasks.expect("task counts");
        assert!((tasks.1 - 60.0).abs() < 0.5, "60 tasks a minute: {leak:?}");
        assert_eq!(flat.tasks.map(|t| t.0), Some(30.0));
    }

    #[test]
    fn a_tick_missing_a_task_count_is_left_out() {
        let log: Vec<_> = (0..10)
            .flat_map(|i| {
                let t = i as f64 * 2.0;
                let u = |tasks| Usage {
                    rss: 1 << 20,
                    fds: 10,
                    threads: 4,
                    tasks,
                };
                // Replica b misses every other scrape; those ticks must not count.
                let b = if i % 2 == 0 { Some(20) } else { None };
                [
                    (t, "svc".to_owned(), "a".to_owned(), u(Some(20))),
                    (t, "svc".to_owned(), "b".to_owned(), u(b)),
                ]
            })
            .collect();
        let tr = trends(&log, 0.0);
        assert_eq!(tr[0].tasks, Some((40.0, 0.0)));
    }
}
