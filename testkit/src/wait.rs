//! Waiting by polling, never by sleeping for a fixed time: check, and if not yet, look
//! again shortly, until a named timeout from [`crate::timeouts`] (scaled) has passed.

use crate::timeouts::scaled;
use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is looked at again.
const POLL: Duration = Duration::from_millis(50);

/// Polls `check` until it holds.
///
/// # Panics
/// With "`what`: not within `timeout`" when it does not hold in time.
pub fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    eventually_some(what, timeout, || check().then_some(()));
}

/// Polls `check` until it gives a value, and returns that value.
///
/// # Panics
/// With "`what`: not within `timeout`" when it gives none in time.
pub fn eventually_some<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let timeout = scaled(timeout);
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(POLL);
    }
}

/// [`eventually_some`] for async checks (tokio): awaits `check()` until it gives a value.
///
/// # Panics
/// With "`what`: not within `timeout`" when it gives none in time.
pub async fn eventually_async<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match eventually_ok(what, timeout, || {
        let next = check();
        async move { next.await.ok_or("not yet") }
    })
    .await
    {
        Ok(value) => value,
        Err(e) => panic!("{e}"),
    }
}

/// A wait that ended without its condition, with the last thing the check saw.
#[derive(Debug)]
pub struct TimedOut {
    pub what: String,
    pub timeout: Duration,
    pub last: String,
}

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: not within {:?}; last: {}", self.what, self.timeout, self.last)
    }
}

impl std::error::Error for TimedOut {}

/// Awaits `check()` until it succeeds; on timeout the error names `what` and the last
/// failure `check` gave (`{:#}`, so an `anyhow` chain shows whole), so a test can `?` it.
pub async fn eventually_ok<T, E, F, Fut>(what: &str, timeout: Duration, check: F) -> Result<T, TimedOut>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    eventually_ok_every(what, timeout, POLL, check).await
}

/// [`eventually_ok`] looking again only `every` (for checks that cost something, such as
/// a `docker` command).
pub async fn eventually_ok_every<T, E, F, Fut>(what: &str, timeout: Duration, every: Duration, mut check: F) -> Result<T, TimedOut>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let timeout = scaled(timeout);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(value) => return Ok(value),
            Err(e) => e,
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(TimedOut { what: what.to_string(), timeout, last: format!("{last:#}") });
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_a_condition_that_comes_true_should_return_its_value() {
        let mut calls = 0;
        let v = eventually_some("third call", Duration::from_secs(5), || {
            calls += 1;
            (calls == 3).then_some(calls)
        });
        assert_eq!(v, 3);
    }

    #[test]
    #[should_panic(expected = "never: not within")]
    fn given_a_condition_that_never_holds_should_fail_naming_it() {
        eventually("never", Duration::from_millis(120), || false);
    }

    #[tokio::test]
    async fn given_an_async_check_should_time_out_with_its_name_and_last_error() {
        let err = eventually_ok("nothing", Duration::from_millis(100), || async { Err::<(), _>("still 3 pods") }).await.unwrap_err();
        assert!(err.to_string().starts_with("nothing: not within"), "{err}");
        assert!(err.to_string().ends_with("last: still 3 pods"), "{err}");
        assert_eq!(eventually_async("at once", Duration::from_secs(1), || async { Some(7) }).await, 7);
    }
}
