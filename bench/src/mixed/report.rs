//! What `fleet-bench mixed` prints: the item mix, the in-process baseline, each broker's
//! throughput, latency, per-service CPU and memory and end-state checks, and a summary table.

use std::time::Duration;

use super::MixedArgs;
use super::baseline::Baseline;
use super::corpus::{Item, Size};
use super::measure::Outcome;

fn mb(bytes: usize) -> f64 {
    bytes as f64 / 1e6
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The `p`-th percentile (nearest rank) of `sorted`.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The run's parameters and how busy the machine was before it.
pub fn header(args: &MixedArgs, items: &[Item], idle: Option<f64>) {
    let small: Vec<&Item> = items.iter().filter(|i| i.size == Size::Small).collect();
    let large: Vec<&Item> = items.iter().filter(|i| i.size == Size::Large).collect();
    let bytes = |v: &[&Item]| v.iter().map(|i| i.text.len()).sum::<usize>();
    println!(
        "fleet-bench mixed: {} items (seed {}): {} x ~2.5 KB (mean {:.0} B), {} x ~25 KB (mean {:.0} B), {:.1} MB of text",
        items.len(),
        args.seed,
        small.len(),
        bytes(&small) as f64 / small.len().max(1) as f64,
        large.len(),
        bytes(&large) as f64 / large.len().max(1) as f64,
        mb(bytes(&small) + bytes(&large)),
    );
    println!(
        "pipeline: analyze -> summarize (extractive) -> write (PostgreSQL), real release binaries, default service settings; \
         jobs published directly as analyze envelopes (no coordinator), {} confirmed publishes in flight",
        args.publish_in_flight
    );
    if let Some(c) = idle {
        println!("machine busy before the run: {c:.2} cores (all processes)");
    }
}

/// The in-process baseline.
pub fn baseline(b: &Baseline) {
    let per = |d: Duration, n: usize| d.as_secs_f64() * 1000.0 / n.max(1) as f64;
    println!(
        "\nbaseline (in-process, one thread, no broker/runtime/DB): {} items in {:.2} s = {:.1} items/s; mean summary {:.0} chars",
        b.items,
        secs(b.total),
        b.items as f64 / secs(b.total),
        b.mean_summary_chars
    );
    println!("  per item, ms        ~2.5 KB    ~25 KB");
    for (name, v) in [
        ("analysis", &b.analyze),
        ("extractive summary", &b.summarize),
        ("envelope JSON x3", &b.json),
    ] {
        println!(
            "  {name:<18} {:>8.2} {:>9.2}",
            per(v[0], b.count[0]),
            per(v[1], b.count[1])
        );
    }
}

/// One broker's figures.
pub fn result(o: &Outcome, b: Option<&Baseline>) {
    let label = o.kind.label();
    let mut all: Vec<Duration> = o.latencies.iter().map(|(_, d)| *d).collect();
    all.sort_unstable();
    let class = |s: Size| {
        let mut v: Vec<Duration> = o
            .latencies
            .iter()
            .filter(|(c, _)| *c == s)
            .map(|(_, d)| *d)
            .collect();
        v.sort_unstable();
        v
    };
    let rate = o.items as f64 / secs(o.wall);
    println!("\n== {label}: {} items ==", o.items);
    println!(
        "throughput: {rate:.1} items/s ({} items, first publish -> last row seen {:.2} s; publishing took {:.2} s)",
        o.items,
        secs(o.wall),
        secs(o.publish)
    );
    if let Some(b) = b {
        println!(
            "  vs in-process baseline {:.1} items/s in one thread: {:.2}x",
            b.items as f64 / secs(b.total),
            rate / (b.items as f64 / secs(b.total))
        );
    }
    println!(
        "end-to-end latency (publish -> row written): p50 {:.2} s, p95 {:.2} s, max {:.2} s",
        secs(percentile(&all, 50.0)),
        secs(percentile(&all, 95.0)),
        secs(percentile(&all, 100.0))
    );
    for s in [Size::Small, Size::Large] {
        let mut v: Vec<Duration> = o
            .unloaded
            .iter()
            .filter(|(c, _)| *c == s)
            .map(|(_, d)| *d)
            .collect();
        v.sort_unstable();
        if !v.is_empty() {
            println!(
                "  unloaded, {:<8} (one at a time, before the burst): p50 {:.0} ms, max {:.0} ms ({} items)",
                s.label(),
                secs(percentile(&v, 50.0)) * 1000.0,
                secs(percentile(&v, 100.0)) * 1000.0,
                v.len()
            );
        }
    }
    for s in [Size::Small, Size::Large] {
        let v = class(s);
        println!(
            "  {:<8} p50 {:.2} s, p95 {:.2} s ({} items)",
            s.label(),
            secs(percentile(&v, 50.0)),
            secs(percentile(&v, 95.0)),
            v.len()
        );
    }
    println!(
        "  {:<11} {:>8} {:>12} {:>10} {:>13}  jobs finished",
        "process", "CPU s", "CPU ms/item", "peak RSS", "mean handler"
    );
    let per_item = |d: Duration| secs(d) * 1000.0 / o.items as f64;
    for s in &o.services {
        let finished: Vec<String> = s
            .finished
            .iter()
            .filter(|(k, v)| **v > 0 || **k == "succeeded")
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        println!(
            "  {:<11} {:>8.2} {:>12.2} {:>7.1} MB {:>10.1} ms  {}",
            s.service.stage(),
            secs(s.cpu),
            per_item(s.cpu),
            s.peak_rss_kib as f64 / 1024.0,
            s.mean_handler.map_or(f64::NAN, |d| secs(d) * 1000.0),
            finished.join(", ")
        );
    }
    let opt = |d: Option<Duration>| {
        d.map_or_else(
            || format!("{:>8}", "n/a"),
            |d| format!("{:>8.2} {:>12.2}", secs(d), per_item(d)),
        )
    };
    println!("  {:<11} {}", "broker", opt(o.broker_cpu));
    println!(
        "  {:<11} {}  (every postgres process; other clients included)",
        "postgres",
        opt(Some(o.postgres_cpu))
    );
    println!(
        "  {:<11} {}  (publishing, polling)",
        "fleet-bench",
        opt(o.bench_cpu)
    );
    if let Some(c) = o.machine_busy {
        println!(
            "machine busy during the run: {c:.2} cores (all processes); not attributed to the processes above: {:.1} CPU s (other work on the machine, kernel)",
            secs(unattributed(o).unwrap_or_default())
        );
    }
    if let Some((mean, n)) = o.commit {
        println!(
            "writer: {n} batches, mean commit {:.1} ms ({:.1} rows per batch)",
            secs(mean) * 1000.0,
            o.items as f64 / n as f64
        );
    }
    println!(
        "checks passed: {} rows, one per item, every summary non-empty ({} not complete/extractive), stage queues and DLQs empty{}",
        o.items,
        o.odd_rows,
        o.events_waiting.map_or_else(String::new, |e| format!(
            "; {e} event messages left for the absent coordinator"
        )),
    );
}

/// CPU the machine spent during the window beyond the services, broker, PostgreSQL and
/// this process: other work on the shared machine (and kernel time not charged to them).
fn unattributed(o: &Outcome) -> Option<Duration> {
    let busy = Duration::from_secs_f64(o.machine_busy? * secs(o.wall));
    let known: Duration = o.services.iter().map(|s| s.cpu).sum::<Duration>()
        + o.broker_cpu.unwrap_or_default()
        + o.postgres_cpu
        + o.bench_cpu.unwrap_or_default();
    Some(busy.saturating_sub(known))
}

/// One line per broker, for docs/benchmarks.md.
pub fn summary(results: &[Outcome], b: Option<&Baseline>) {
    if results.is_empty() {
        return;
    }
    println!(
        "\n| broker | items/s | p50 | p95 | max | analyzer CPU s / peak RSS | summarizer CPU s / peak RSS | writer CPU s / peak RSS | broker CPU s | postgres CPU s | other CPU s | machine busy |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for o in results {
        let mut all: Vec<Duration> = o.latencies.iter().map(|(_, d)| *d).collect();
        all.sort_unstable();
        let svc: Vec<String> = o
            .services
            .iter()
            .map(|s| {
                format!(
                    "{:.1} s / {:.0} MB",
                    secs(s.cpu),
                    s.peak_rss_kib as f64 / 1024.0
                )
            })
            .collect();
        println!(
            "| {} | {:.1} | {:.1} s | {:.1} s | {:.1} s | {} | {:.1} | {:.1} | {:.1} | {} |",
            o.kind.label(),
            o.items as f64 / secs(o.wall),
            secs(percentile(&all, 50.0)),
            secs(percentile(&all, 95.0)),
            secs(percentile(&all, 100.0)),
            svc.join(" | "),
            o.broker_cpu.map_or(f64::NAN, secs),
            secs(o.postgres_cpu),
            unattributed(o).map_or(f64::NAN, secs),
            o.machine_busy
                .map_or_else(|| "n/a".to_owned(), |c| format!("{c:.2} cores")),
        );
    }
    if let Some(b) = b {
        println!(
            "| in-process, 1 thread | {:.1} | | | | | | | | | | |",
            b.items as f64 / secs(b.total)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&v, 95.0), Duration::from_millis(95));
        assert_eq!(percentile(&v, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&v[..1], 95.0), Duration::from_millis(1));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }
}
