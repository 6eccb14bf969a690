//! Broker-wide accounting of message bytes held in memory, and the wait that slows
//! producers down when a queue or the broker is over its limit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

#[derive(Debug)]
pub struct Memory {
    used: AtomicUsize,
    pub broker_limit: usize,
    pub queue_limit: usize,
    freed: Notify,
}

impl Memory {
    pub fn new(broker_limit: usize, queue_limit: usize) -> Memory {
        Memory { used: AtomicUsize::new(0), broker_limit, queue_limit, freed: Notify::new() }
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn add(&self, n: usize) {
        self.used.fetch_add(n, Ordering::Relaxed);
    }

    pub fn release(&self, n: usize) {
        if n > 0 {
            self.used.fetch_sub(n, Ordering::Relaxed);
            self.freed.notify_waiters();
        }
    }

    /// Waits until `queue_bytes()` and the broker total are under their limits, or the
    /// timeout passes. Returns false on timeout.
    pub async fn wait_for_room(&self, queue_bytes: impl Fn() -> usize, timeout: Duration) -> bool {
        let has_room = || self.used() < self.broker_limit && queue_bytes() < self.queue_limit;
        if has_room() {
            return true;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if has_room() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return has_room();
            }
        }
    }
}
