//! What the producers, consumers and reporters of one run share: the phase boundaries
//! (warm-up, measured interval), live counters for the progress line, and the delivery
//! bitsets. Everything here is lock-free; per-message work is a few relaxed atomics.

use crate::body::wall_clock_ns;
use crate::tally::Deliveries;
use std::ops::Deref;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::time::Duration;
use tokio::time::Instant;

/// When the run started, when measuring starts and when it ends, on both clocks: wall
/// clock nanoseconds (what bodies carry) and tokio instants (what tasks sleep until).
#[derive(Debug, Clone, Copy)]
pub struct Phases {
    pub start_ns: u64,
    pub measure_start_ns: u64,
    pub measure_end_ns: u64,
    pub started: Instant,
    pub warmup: Duration,
    pub duration: Duration,
}

impl Phases {
    pub fn starting_now(warmup: Duration, duration: Duration) -> Phases {
        let started = Instant::now();
        let start_ns = wall_clock_ns();
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let measure_start_ns = start_ns.saturating_add(nanos(warmup));
        Phases {
            start_ns,
            measure_start_ns,
            measure_end_ns: measure_start_ns.saturating_add(nanos(duration)),
            started,
            warmup,
            duration,
        }
    }

    pub fn measure_start(&self) -> Instant {
        self.started + self.warmup
    }

    pub fn measure_end(&self) -> Instant {
        self.started + self.warmup + self.duration
    }

    /// Whether a wall-clock time falls in the measured interval.
    pub fn in_measured(&self, ns: u64) -> bool {
        (self.measure_start_ns..self.measure_end_ns).contains(&ns)
    }

    /// The phase a wall-clock time falls in, for the progress line.
    pub fn name_at(&self, ns: u64) -> &'static str {
        if ns < self.measure_start_ns {
            "warmup"
        } else if ns < self.measure_end_ns {
            "measure"
        } else {
            "drain"
        }
    }
}

/// A value alone on its cache lines, so counters bumped by different cores do not slow
/// each other down.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Padded<T>(pub T);

impl<T> Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Totals since the start, for the progress line.
#[derive(Debug, Default)]
pub struct Counters {
    pub sent: Padded<AtomicU64>,
    pub received: Padded<AtomicU64>,
    /// Sends waiting for their RECEIPT, over all producers.
    pub outstanding: Padded<AtomicI64>,
    /// The broker's latest RSS sample; 0 when not sampled.
    pub rss_bytes: AtomicU64,
}

/// Everything a run's tasks share.
pub struct Shared {
    pub phases: Phases,
    pub counters: Counters,
    pub deliveries: Deliveries,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn given_phases_should_classify_times_by_interval() {
        let p = Phases::starting_now(Duration::from_secs(2), Duration::from_secs(10));
        assert_eq!(p.measure_start_ns - p.start_ns, 2_000_000_000);
        assert!(!p.in_measured(p.start_ns));
        assert!(p.in_measured(p.measure_start_ns));
        assert!(!p.in_measured(p.measure_end_ns));
        assert_eq!(p.name_at(p.start_ns + 1), "warmup");
        assert_eq!(p.name_at(p.measure_end_ns - 1), "measure");
        assert_eq!(p.name_at(p.measure_end_ns), "drain");
        assert_eq!(p.measure_end() - p.started, Duration::from_secs(12));
    }
}
