//! Broker-wide accounting of message bytes held in memory, and the wait that slows
//! producers down when a queue or the broker is over its limit.
//!
//! Bytes are counted from the moment a SEND is accepted, not from when it is enqueued:
//! a [`Reservation`] holds them while the message waits for its fsync or sits in an open
//! transaction, so pipelined producers cannot push a queue past its limit while their
//! earlier messages are still on their way to disk.

use super::queue::Queue;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
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

    /// Resolves at the next release of bytes (register it with `enable` before checking).
    pub fn freed(&self) -> tokio::sync::futures::Notified<'_> {
        self.freed.notified()
    }

    /// Counts `bytes` against the broker-wide limit until the reservation is dropped.
    pub fn reserve(self: &Arc<Self>, bytes: usize) -> Reservation {
        self.add(bytes);
        Reservation { memory: Arc::clone(self), queue: None, bytes }
    }

    /// Waits until `queue_bytes()` is under `queue_limit` and the broker total under its
    /// limit, or the timeout passes. Returns false on timeout.
    pub async fn wait_for_room(&self, queue_bytes: impl Fn() -> usize, queue_limit: usize, timeout: Duration) -> bool {
        let has_room = || self.used() < self.broker_limit && queue_bytes() < queue_limit;
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

/// Message bytes counted against the limits before the message is enqueued: a SEND that
/// waits for its fsync, or one held by an open transaction. Dropping it gives the bytes
/// back; enqueueing the message hands them over to its queue (`Queue::enqueue_reserved`).
#[derive(Debug)]
pub struct Reservation {
    memory: Arc<Memory>,
    /// The queue whose limit these bytes count against too (none for a topic).
    pub(super) queue: Option<Arc<Queue>>,
    bytes: usize,
}

impl Reservation {
    pub(super) fn for_queue(memory: Arc<Memory>, queue: Arc<Queue>, bytes: usize) -> Reservation {
        memory.add(bytes);
        Reservation { memory, queue: Some(queue), bytes }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Gives up the bytes without releasing them: the caller now accounts for them.
    pub(super) fn transfer(mut self) -> usize {
        std::mem::take(&mut self.bytes)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes == 0 {
            return;
        }
        if let Some(q) = &self.queue {
            q.unreserve(self.bytes);
        }
        self.memory.release(self.bytes);
    }
}
