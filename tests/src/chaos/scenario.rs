//! The campaign's scenarios (issue 10) and the faults each one turns on.

use std::fmt;

/// One scenario of the fault campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// 1. The summarizer's LLM hangs on 10 % of requests and answers 500 on 5 %.
    LlmHang,
    /// 2. A random worker SIGKILLed every few seconds and a new one started.
    WorkerLoss,
    /// 3a. Every broker connection cut, and new ones refused, for 20 s (a fault proxy).
    BrokerCut,
    /// 3b. The broker process itself restarted (a private broker of the campaign).
    BrokerRestart,
    /// 4. PostgreSQL unreachable for 30 s for the writers and the coordinators.
    DbOutage,
    /// 5. 1 % poison items: half malformed (the analyzer refuses them), half crashing the
    ///    whole analyzer process.
    Poison,
    /// 6. A coordinator replica SIGKILLed mid-run and started again.
    CoordinatorCrash,
    /// 7. All of the above at once (the broker fault as the proxy cut).
    All,
    /// The soak: faults 1 and 2 on for the whole run, at a steady submission rate.
    Soak,
}

/// The faults a scenario turns on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// The stub LLM hangs / fails a share of requests.
    pub llm: bool,
    /// SIGKILL a random worker every few seconds, start a new one.
    pub kill_workers: bool,
    /// Cut and refuse broker connections for 20 s.
    pub broker_cut: bool,
    /// Stop and start the (private) broker.
    pub broker_restart: bool,
    /// PostgreSQL unreachable for 30 s (writers, coordinators).
    pub db_outage: bool,
    /// 1 % poison items.
    pub poison: bool,
    /// SIGKILL a coordinator replica and start it again.
    pub coordinator_crash: bool,
}

impl Scenario {
    /// Every scenario, in the order.
    pub const EVERY: [Scenario; 8] = [
        Scenario::LlmHang,
        Scenario::WorkerLoss,
        Scenario::BrokerCut,
        Scenario::BrokerRestart,
        Scenario::DbOutage,
        Scenario::Poison,
        Scenario::CoordinatorCrash,
        Scenario::All,
    ];

    /// Its name on the command line and in the recording directory (`<broker>-<name>`).
    pub fn name(self) -> &'static str {
        match self {
            Scenario::LlmHang => "llm-hang",
            Scenario::WorkerLoss => "worker-loss",
            Scenario::BrokerCut => "broker-cut",
            Scenario::BrokerRestart => "broker-restart",
            Scenario::DbOutage => "db-outage",
            Scenario::Poison => "poison",
            Scenario::CoordinatorCrash => "coordinator-crash",
            Scenario::All => "all-at-once",
            Scenario::Soak => "soak",
        }
    }

    /// The scenario called `name` (see [`Scenario::name`]).
    pub fn parse(name: &str) -> Option<Scenario> {
        Scenario::EVERY
            .into_iter()
            .chain([Scenario::Soak])
            .find(|s| s.name() == name)
    }

    /// The faults it turns on.
    pub fn faults(self) -> Faults {
        let none = Faults::default();
        match self {
            Scenario::LlmHang => Faults { llm: true, ..none },
            Scenario::WorkerLoss => Faults {
                kill_workers: true,
                ..none
            },
            Scenario::BrokerCut => Faults {
                broker_cut: true,
                ..none
            },
            Scenario::BrokerRestart => Faults {
                broker_restart: true,
                ..none
            },
            Scenario::DbOutage => Faults {
                db_outage: true,
                ..none
            },
            Scenario::Poison => Faults {
                poison: true,
                ..none
            },
            Scenario::CoordinatorCrash => Faults {
                coordinator_crash: true,
                ..none
            },
            Scenario::All => Faults {
                llm: true,
                kill_workers: true,
                broker_cut: true,
                broker_restart: false,
                db_outage: true,
                poison: true,
                coordinator_crash: true,
            },
            Scenario::Soak => Faults {
                llm: true,
                kill_workers: true,
                ..none
            },
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in Scenario::EVERY {
            assert_eq!(Scenario::parse(s.name()), Some(s));
        }
        assert_eq!(Scenario::parse("nope"), None);
    }
}
