//! The sweeper's gauges, exported for every stage this coordinator knows of.
//!
//! A gauge series that is never written does not exist, and one that stops being written keeps
//! its last value: a route naming a stage with no workers had a backlog series but no
//! `fleet_workers_alive` series, so `FleetStageNoConsumer` (backlog `and on (stage)` workers
//! `== 0`) could never fire, and a stage whose last job finished kept its last backlog for ever.
//! So every stage ever seen (the default route, jobs of running pipelines, workers' heartbeats)
//! is remembered for the life of the process and every sweep sets all of its gauges, 0 when
//! the sweep found nothing for it.

use std::collections::{BTreeMap, BTreeSet};

use crate::metrics as m;
use crate::model::StallKind;

/// The backlog's health split (`fleet_stage_backlog{health}`).
pub const HEALTH: [&str; 3] = ["healthy", "stalled", "retrying"];

/// What one sweep counted, by stage (absent = 0).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StageCounts {
    /// Workers with a current heartbeat.
    pub alive: BTreeMap<String, i64>,
    /// Unfinished jobs of running pipelines, by (stage, health).
    pub backlog: BTreeMap<(String, &'static str), i64>,
    /// Stalled jobs, by (stage, stall kind).
    pub stalled: BTreeMap<(String, String), i64>,
}

impl StageCounts {
    /// Every stage the counts name.
    pub fn stages(&self) -> impl Iterator<Item = &String> {
        self.alive
            .keys()
            .chain(self.backlog.keys().map(|(s, _)| s))
            .chain(self.stalled.keys().map(|(s, _)| s))
    }
}

/// One gauge sample: metric name, labels, value.
pub type Sample = (&'static str, Vec<(&'static str, String)>, f64);

/// Sets one sample's gauge (each metric named at its call, as the metrics catalog check reads
/// them).
fn set((name, labels, value): Sample) {
    let label = |k: &str| {
        labels
            .iter()
            .find(|(lk, _)| *lk == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    match name {
        m::WORKERS_ALIVE => metrics::gauge!(m::WORKERS_ALIVE, "stage" => label("stage")).set(value),
        m::STAGE_BACKLOG => metrics::gauge!(m::STAGE_BACKLOG, "stage" => label("stage"), "health" => label("health"))
            .set(value),
        _ => metrics::gauge!(m::JOBS_STALLED, "stage" => label("stage"), "kind" => label("kind")).set(value),
    }
}

/// The stages seen so far and the samples each sweep exports for them.
#[derive(Debug, Default)]
pub struct StageGauges {
    known: BTreeSet<String>,
}

impl StageGauges {
    /// Starts with `stages` (the default route) known.
    pub fn new(stages: &[String]) -> Self {
        Self {
            known: stages.iter().cloned().collect(),
        }
    }

    /// Learns the stages of `counts` and returns every gauge sample of every known stage.
    #[allow(clippy::cast_precision_loss)] // counts of jobs and workers fit an f64 exactly
    pub fn samples(&mut self, counts: &StageCounts) -> Vec<Sample> {
        let new: Vec<String> = counts
            .stages()
            .filter(|s| !self.known.contains(*s))
            .cloned()
            .collect();
        self.known.extend(new);
        let mut out = Vec::new();
        for stage in &self.known {
            let alive = counts.alive.get(stage).copied().unwrap_or(0);
            out.push((
                m::WORKERS_ALIVE,
                vec![("stage", stage.clone())],
                alive as f64,
            ));
            for health in HEALTH {
                let n = counts
                    .backlog
                    .get(&(stage.clone(), health))
                    .copied()
                    .unwrap_or(0);
                out.push((
                    m::STAGE_BACKLOG,
                    vec![("stage", stage.clone()), ("health", health.to_owned())],
                    n as f64,
                ));
            }
            for kind in StallKind::ALL {
                let n = counts
                    .stalled
                    .get(&(stage.clone(), kind.as_str().to_owned()))
                    .copied()
                    .unwrap_or(0);
                out.push((
                    m::JOBS_STALLED,
                    vec![("stage", stage.clone()), ("kind", kind.as_str().to_owned())],
                    n as f64,
                ));
            }
        }
        out
    }

    /// Sets every gauge of every known stage from `counts`.
    pub fn export(&mut self, counts: &StageCounts) {
        for sample in self.samples(counts) {
            set(sample);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        samples
            .iter()
            .find(|(n, l, _)| {
                *n == name
                    && l.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, _, v)| *v)
    }

    #[test]
    fn a_stage_with_backlog_and_no_workers_has_a_zero_workers_series() {
        let mut g = StageGauges::new(&["analyze".to_owned()]);
        let mut counts = StageCounts::default();
        counts.alive.insert("analyze".into(), 2);
        counts.backlog.insert(("ghost".into(), "healthy"), 3);
        let s = g.samples(&counts);
        assert_eq!(
            value(&s, m::WORKERS_ALIVE, &[("stage", "ghost")]),
            Some(0.0)
        );
        assert_eq!(
            value(
                &s,
                m::STAGE_BACKLOG,
                &[("stage", "ghost"), ("health", "healthy")]
            ),
            Some(3.0)
        );
        assert_eq!(
            value(&s, m::WORKERS_ALIVE, &[("stage", "analyze")]),
            Some(2.0)
        );
        // The default route's stage has every series even with nothing to count.
        assert_eq!(
            value(
                &s,
                m::JOBS_STALLED,
                &[("stage", "analyze"), ("kind", "no_consumer")]
            ),
            Some(0.0)
        );
    }

    #[test]
    fn a_stage_that_drains_goes_back_to_zero_instead_of_keeping_its_last_value() {
        let mut g = StageGauges::new(&[]);
        let mut busy = StageCounts::default();
        busy.backlog.insert(("ghost".into(), "stalled"), 4);
        busy.stalled
            .insert(("ghost".into(), "no_consumer".into()), 4);
        busy.alive.insert("ghost".into(), 1);
        g.samples(&busy);
        let s = g.samples(&StageCounts::default());
        for (name, labels) in [
            (
                m::STAGE_BACKLOG,
                vec![("stage", "ghost"), ("health", "stalled")],
            ),
            (
                m::JOBS_STALLED,
                vec![("stage", "ghost"), ("kind", "no_consumer")],
            ),
            (m::WORKERS_ALIVE, vec![("stage", "ghost")]),
        ] {
            assert_eq!(value(&s, name, &labels), Some(0.0), "{name} {labels:?}");
        }
    }
}
