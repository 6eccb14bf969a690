//! Once-a-second progress lines and the final rate, on stderr. Counting only: it knows
//! nothing of brokers or messages.

use std::time::{Duration, Instant};

const EVERY: Duration = Duration::from_secs(1);

/// Tracks a running count and reports it about once a second.
pub(super) struct Progress {
    verb: &'static str,
    started: Instant,
    last_report: Instant,
    last_count: u64,
}

impl Progress {
    /// Starts the clock; `verb` opens each line ("sent", "received").
    pub(super) fn start(verb: &'static str) -> Progress {
        let now = Instant::now();
        Progress { verb, started: now, last_report: now, last_count: 0 }
    }

    /// Notes the count so far; prints a line when a second has passed since the last.
    pub(super) fn tick(&mut self, count: u64) {
        let now = Instant::now();
        let since = now.duration_since(self.last_report);
        if since < EVERY {
            return;
        }
        let rate = (count - self.last_count.min(count)) as f64 / since.as_secs_f64();
        eprintln!("{} {count} ({rate:.0} msg/s)", self.verb);
        self.last_report = now;
        self.last_count = count;
    }

    pub(super) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Messages per second over the whole run.
    pub(super) fn overall_rate(&self, count: u64) -> f64 {
        let secs = self.elapsed().as_secs_f64();
        if secs > 0.0 {
            count as f64 / secs
        } else {
            0.0
        }
    }
}
