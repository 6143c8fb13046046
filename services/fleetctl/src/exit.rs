//! Exit codes and the error a user can act on.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | runtime error (the coordinator failed the request, I/O failed, …) |
//! | 2 | usage error: bad flags or arguments, unreadable input files, input the coordinator rejected (4xx), a missing or wrong API token |
//! | 3 | the coordinator is unreachable (connection refused, DNS, timeouts) |
//! | 4 | not found: unknown pipeline or dead letter |
//! | 5 | the pipeline finished but not `completed` (`watch`, `submit --watch`, `demo`): `partial_success`, `failed`, `timed_out` or `cancelled` |

use std::fmt;

/// Success.
pub const OK: u8 = 0;
/// A runtime error.
pub const RUNTIME: u8 = 1;
/// A usage error (also what clap uses for bad flags).
pub const USAGE: u8 = 2;
/// The coordinator cannot be reached.
pub const UNREACHABLE: u8 = 3;
/// The pipeline or dead letter does not exist.
pub const NOT_FOUND: u8 = 4;
/// The pipeline finished in a state other than `completed`.
pub const NOT_COMPLETED: u8 = 5;

/// The exit-code table, as shown in `--help`.
pub const TABLE: &str = "\
Exit codes:
  0  success
  1  runtime error
  2  usage error: bad flags or arguments, unreadable input file, input rejected by
     the coordinator (4xx), missing or wrong API token (401)
  3  coordinator unreachable (is fleet-coordinator running at --url?)
  4  not found: unknown pipeline or dead letter
  5  pipeline finished but not completed (watch, submit --watch, demo):
     partial_success, failed, timed_out or cancelled";

/// An error with an exit code, what went wrong and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The process exit code.
    pub code: u8,
    /// What is wrong.
    pub message: String,
    /// What to do, when there is something to do.
    pub hint: Option<String>,
}

impl Failure {
    /// A failure with `code` and `message`.
    pub fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
            hint: None,
        }
    }

    /// A usage error (exit 2).
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure::new(USAGE, message)
    }

    /// Adds what to do.
    pub fn hint(mut self, hint: impl Into<String>) -> Failure {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Failure {}

/// The exit code for `err`: a [`Failure`]'s own code, else 1.
pub fn code_of(err: &anyhow::Error) -> u8 {
    err.chain()
        .find_map(|e| e.downcast_ref::<Failure>())
        .map_or(RUNTIME, |f| f.code)
}

/// Exit code for a finished pipeline's state: 0 for `completed`, else 5.
pub fn for_state(state: &str) -> u8 {
    if state == "completed" {
        OK
    } else {
        NOT_COMPLETED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_survive_context() {
        let e = anyhow::Error::new(Failure::new(NOT_FOUND, "no pipeline")).context("status");
        assert_eq!(code_of(&e), NOT_FOUND);
        assert_eq!(code_of(&anyhow::anyhow!("boom")), RUNTIME);
        assert_eq!(for_state("completed"), OK);
        assert_eq!(for_state("partial_success"), NOT_COMPLETED);
    }

    #[test]
    fn display_has_hint() {
        let f = Failure::usage("bad").hint("do this");
        assert_eq!(f.to_string(), "bad\n  hint: do this");
    }
}
