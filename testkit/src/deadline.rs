//! A wait that collects until a time is up rather than polling one condition: read frames
//! or messages until all have arrived or the deadline has passed, give a socket read the
//! time that is left. [`crate::eventually`] is for "until this holds"; [`Deadline`] for
//! loops that do their own blocking reads and must know how long each may take.

use crate::timeouts::scaled;
use std::fmt::Display;
use std::time::{Duration, Instant};

/// A point in time one of [`crate::timeouts`] (scaled by `DUOMQ_TEST_TIMEOUT_SCALE`) from
/// when it was made, and what the test is waiting for until then.
#[derive(Debug, Clone)]
pub struct Deadline {
    what: String,
    timeout: Duration,
    at: Instant,
}

impl Deadline {
    /// `timeout` (scaled) from now, waiting for `what` ("all 50 messages", "the socket to close").
    pub fn after(what: impl Into<String>, timeout: Duration) -> Deadline {
        let timeout = scaled(timeout);
        Deadline { what: what.into(), timeout, at: Instant::now() + timeout }
    }

    /// The time left; zero once it has passed.
    pub fn left(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// The time left, at least `floor` (for a socket read timeout, which must not be zero).
    pub fn left_at_least(&self, floor: Duration) -> Duration {
        self.left().max(floor)
    }

    /// Whether the time is up.
    pub fn passed(&self) -> bool {
        Instant::now() >= self.at
    }

    /// The (scaled) timeout it was made with.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Ends the test: "`what`: not within `timeout`; `detail`" (what arrived so far, a log).
    pub fn fail(&self, detail: impl Display) -> ! {
        panic!("{}: not within {:?}; {detail}", self.what, self.timeout)
    }

    /// [`Deadline::fail`] once the time is up; `detail` is only built then.
    pub fn check<D: Display>(&self, detail: impl FnOnce() -> D) {
        if self.passed() {
            self.fail(detail());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_time_left_should_not_have_passed() {
        let d = Deadline::after("a frame", Duration::from_secs(60));
        assert!(!d.passed());
        assert!(d.left() > Duration::from_secs(50));
        d.check(|| "unused");
    }

    #[test]
    fn given_a_passed_deadline_should_leave_nothing_but_the_floor() {
        let d = Deadline::after("a frame", Duration::ZERO);
        assert!(d.passed());
        assert_eq!(d.left(), Duration::ZERO);
        assert_eq!(d.left_at_least(Duration::from_millis(1)), Duration::from_millis(1));
    }

    #[test]
    #[should_panic(expected = "all 3 messages: not within 0ns; got 2")]
    fn given_a_passed_deadline_should_fail_naming_what_was_awaited() {
        Deadline::after("all 3 messages", Duration::ZERO).check(|| "got 2");
    }
}
