//! Measurements and the result tables (Markdown, so they can be pasted into
//! docs/benchmarks.md).

use std::time::Duration;

use crate::Args;
use crate::cpu::{Snapshot, busy_cores};

/// Jobs consumed between the first delivery and the last ack, with the clocks at both ends.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    /// Jobs consumed and acked.
    pub jobs: u64,
    /// At the first delivery.
    pub start: Snapshot,
    /// After the last ack.
    pub end: Snapshot,
}

impl Measured {
    /// First delivery to last ack.
    pub fn elapsed(&self) -> Duration {
        self.end.at - self.start.at
    }

    /// Jobs per second.
    pub fn rate(&self) -> f64 {
        self.jobs as f64 / self.elapsed().as_secs_f64().max(f64::EPSILON)
    }

    /// CPU time of this process per job, in microseconds.
    pub fn own_cpu_us(&self) -> Option<f64> {
        let cpu = self.end.own?.checked_sub(self.start.own?)?;
        Some(cpu.as_secs_f64() * 1e6 / self.jobs.max(1) as f64)
    }

    /// CPU time of the local broker process per job, in microseconds.
    pub fn broker_cpu_us(&self) -> Option<f64> {
        let cpu = self.end.broker?.checked_sub(self.start.broker?)?;
        Some(cpu.as_secs_f64() * 1e6 / self.jobs.max(1) as f64)
    }

    /// Heap allocations of this process per job (the bench's own polling included).
    pub fn allocs_per_job(&self) -> f64 {
        self.end.allocs.saturating_sub(self.start.allocs) as f64 / self.jobs.max(1) as f64
    }

    /// Cores the whole machine kept busy meanwhile (this process, the broker, everything else).
    pub fn machine_cores(&self) -> Option<f64> {
        busy_cores(&self.start, &self.end)
    }
}

/// One broker's result.
#[derive(Debug, Clone)]
pub struct Row {
    /// Broker label.
    pub broker: &'static str,
    /// The plain client loop.
    pub raw: Measured,
    /// The plain client loop acking `multiple=true` (RabbitMQ only).
    pub raw_multiple: Option<Measured>,
    /// The floor: raw loop plus decode and one confirmed event batch per N jobs (NATS only).
    pub raw_floor: Option<Measured>,
    /// The fleet runtime with a no-op handler.
    pub runtime: Measured,
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.digits$}"))
}

/// Prints both tables to stdout; `idle` is how busy the machine was just before the run.
pub fn print(args: &Args, rows: &[Row], idle: Option<f64>) {
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get);
    println!();
    println!(
        "N = {} jobs per side, prefetch = {} (runtime concurrency = {}), {cores} CPUs, \
         machine busy before the run: {} cores",
        args.jobs,
        args.prefetch,
        args.prefetch,
        opt(idle, 2)
    );
    println!();
    println!(
        "| broker | raw jobs/s | raw multiple-ack jobs/s | raw floor jobs/s | runtime jobs/s | runtime/raw | runtime/raw multiple-ack | runtime/raw floor |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let ratio = |runtime: f64, side: Option<f64>| {
        side.map_or_else(
            || "-".to_owned(),
            |m| format!("{:.1} %", 100.0 * runtime / m),
        )
    };
    for r in rows {
        let multi = r.raw_multiple.as_ref().map(Measured::rate);
        let floor = r.raw_floor.as_ref().map(Measured::rate);
        println!(
            "| {} | {:.0} | {} | {} | {:.0} | {:.1} % | {} | {} |",
            r.broker,
            r.raw.rate(),
            opt(multi, 0),
            opt(floor, 0),
            r.runtime.rate(),
            100.0 * r.runtime.rate() / r.raw.rate(),
            ratio(r.runtime.rate(), multi),
            ratio(r.runtime.rate(), floor),
        );
    }
    println!();
    println!(
        "| broker | side | time | bench CPU per job | broker CPU per job | bench + broker | allocations per job | machine busy (all processes) |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let sides = [
            ("raw", Some(&r.raw)),
            ("raw multiple-ack", r.raw_multiple.as_ref()),
            ("raw floor", r.raw_floor.as_ref()),
            ("runtime", Some(&r.runtime)),
        ];
        for (side, m) in sides {
            let Some(m) = m else { continue };
            let total = m.own_cpu_us().zip(m.broker_cpu_us()).map(|(a, b)| a + b);
            println!(
                "| {} | {side} | {:.2} s | {} µs | {} µs | {} µs | {:.1} | {} cores |",
                r.broker,
                m.elapsed().as_secs_f64(),
                opt(m.own_cpu_us(), 1),
                opt(m.broker_cpu_us(), 1),
                opt(total, 1),
                m.allocs_per_job(),
                opt(m.machine_cores(), 2)
            );
        }
    }
}
