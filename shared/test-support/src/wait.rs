//! Bounded polling of a condition, for tests that wait on eventually-consistent state.

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

/// How long [`wait_for`] and [`wait_for_blocking`] sleep between two polls.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// What a polled condition may return: `bool`, `Option<T>` or `Result<T, E>`.
///
/// `true`, `Some(t)` and `Ok(t)` end the wait; for `Result` the last error is
/// quoted in the timeout panic.
pub trait Condition {
    /// The value the wait returns once the condition holds.
    type Output;
    /// `Ok(output)` when the condition holds, else `Err` with an optional reason.
    fn check(self) -> Result<Self::Output, Option<String>>;
}

impl Condition for bool {
    type Output = ();
    fn check(self) -> Result<(), Option<String>> {
        if self { Ok(()) } else { Err(None) }
    }
}

impl<T> Condition for Option<T> {
    type Output = T;
    fn check(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: Debug> Condition for Result<T, E> {
    type Output = T;
    fn check(self) -> Result<T, Option<String>> {
        self.map_err(|e| Some(format!("{e:?}")))
    }
}

fn give_up(what: &str, timeout: Duration, attempts: u32, last: Option<String>) -> ! {
    match last {
        Some(err) => panic!(
            "timed out after {timeout:?} waiting for {what} ({attempts} attempts; last error: {err})"
        ),
        None => panic!("timed out after {timeout:?} waiting for {what} ({attempts} attempts)"),
    }
}

/// Polls the async condition `f` every 25 ms until it holds; panics naming `what` after `timeout`.
///
/// Each attempt is itself bounded by the time left, so a hanging attempt
/// cannot stretch the wait.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::Duration;
/// let n = std::sync::atomic::AtomicU32::new(0);
/// let v = fleet_test_support::wait_for("the third poll", Duration::from_secs(5), || async {
///     let i = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
///     (i >= 2).then_some(i)
/// })
/// .await;
/// assert_eq!(v, 2);
/// # }
/// ```
pub async fn wait_for<F, Fut, C>(what: &str, timeout: Duration, mut f: F) -> C::Output
where
    F: FnMut() -> Fut,
    Fut: Future<Output = C>,
    C: Condition,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut attempts = 0u32;
    let mut last = None;
    loop {
        attempts += 1;
        match tokio::time::timeout_at(deadline, f()).await {
            Ok(outcome) => match outcome.check() {
                Ok(v) => return v,
                Err(reason) => last = reason.or(last),
            },
            Err(_) => {
                let reason = format!("attempt {attempts} still running at the deadline");
                give_up(what, timeout, attempts, Some(last.unwrap_or(reason)))
            }
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            give_up(what, timeout, attempts, last);
        }
        tokio::time::sleep_until((now + POLL_INTERVAL).min(deadline)).await;
    }
}

/// Blocking twin of [`wait_for`] for synchronous tests: polls `f` every 25 ms with `thread::sleep`.
///
/// Do not call it from inside an async runtime thread.
pub fn wait_for_blocking<F, C>(what: &str, timeout: Duration, mut f: F) -> C::Output
where
    F: FnMut() -> C,
    C: Condition,
{
    let deadline = Instant::now() + timeout;
    let mut attempts = 0u32;
    let mut last = None;
    loop {
        attempts += 1;
        match f().check() {
            Ok(v) => return v,
            Err(reason) => last = reason.or(last),
        }
        let now = Instant::now();
        if now >= deadline {
            give_up(what, timeout, attempts, last);
        }
        std::thread::sleep(POLL_INTERVAL.min(deadline - now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn returns_once_true() {
        let n = AtomicU32::new(0);
        wait_for("three polls", Duration::from_secs(5), || async {
            n.fetch_add(1, Ordering::SeqCst) >= 2
        })
        .await;
        assert_eq!(n.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn returns_ok_value() {
        let n = AtomicU32::new(0);
        let v: u32 = wait_for("ok", Duration::from_secs(5), || async {
            let i = n.fetch_add(1, Ordering::SeqCst);
            if i < 1 { Err("not yet") } else { Ok(i * 10) }
        })
        .await;
        assert_eq!(v, 10);
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for the impossible (")]
    async fn panics_naming_what() {
        wait_for("the impossible", Duration::from_millis(100), || async {
            false
        })
        .await;
    }

    #[tokio::test]
    #[should_panic(expected = "last error: \"queue missing\"")]
    async fn panics_with_last_error() {
        wait_for("a queue", Duration::from_millis(100), || async {
            Err::<(), _>("queue missing")
        })
        .await;
    }

    #[tokio::test]
    #[should_panic(expected = "still running at the deadline")]
    async fn hanging_attempt_is_bounded() {
        wait_for("a hang", Duration::from_millis(100), || {
            std::future::pending::<bool>()
        })
        .await;
    }

    #[test]
    fn blocking_variant() {
        let mut n = 0;
        let v = wait_for_blocking("blocking", Duration::from_secs(5), || {
            n += 1;
            (n == 3).then_some(n)
        });
        assert_eq!(v, 3);
    }

    #[test]
    #[should_panic(expected = "timed out after 50ms waiting for never")]
    fn blocking_panics() {
        wait_for_blocking("never", Duration::from_millis(50), || None::<()>);
    }
}
