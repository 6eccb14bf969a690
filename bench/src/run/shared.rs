//! What the producers, consumers and reporters of one run share: the phase boundaries
//! (warm-up, measured interval), live counters for the progress line, and the delivery
//! bitsets. Everything here but the optional logs and the group check is lock-free;
//! per-message work is a few relaxed atomics.

use crate::body::wall_clock_ns;
use crate::groups::GroupCheck;
use crate::tally::Deliveries;
use std::ops::Deref;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
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
    /// First deliveries a consumer got after a later message of the same producer.
    pub out_of_order: AtomicU64,
}

/// When each RECEIPT reached a producer, and when a producer's client reconnected, in
/// nanoseconds since [`Phases::started`]: what the failover gaps are computed from. Only
/// `failover` keeps one; one lock per receipt is cheap at the rates a failover run reaches.
#[derive(Debug, Default)]
pub struct ReceiptLog {
    times: Mutex<Vec<u64>>,
    reconnects: Mutex<Vec<u64>>,
}

impl ReceiptLog {
    pub fn push(&self, at_ns: u64) {
        if let Ok(mut times) = self.times.lock() {
            times.push(at_ns);
        }
    }

    pub fn reconnected(&self, at_ns: u64) {
        if let Ok(mut times) = self.reconnects.lock() {
            times.push(at_ns);
        }
    }

    /// Every reconnect time, sorted.
    pub fn sorted_reconnects(&self) -> Vec<u64> {
        let mut times = self.reconnects.lock().map(|t| t.clone()).unwrap_or_default();
        times.sort_unstable();
        times
    }

    /// Every receipt time, sorted.
    pub fn sorted(&self) -> Vec<u64> {
        let mut times = self.times.lock().map(|t| t.clone()).unwrap_or_default();
        times.sort_unstable();
        times
    }
}

/// When each message's first delivery reached a consumer, in nanoseconds since
/// [`Phases::started`]: what `failover --gap-at deliveries` computes its gaps from. Only
/// that run keeps one.
#[derive(Debug, Default)]
pub struct ArrivalLog {
    times: Mutex<Vec<u64>>,
}

impl ArrivalLog {
    pub fn push(&self, at_ns: u64) {
        if let Ok(mut times) = self.times.lock() {
            times.push(at_ns);
        }
    }

    /// Every arrival time, sorted.
    pub fn sorted(&self) -> Vec<u64> {
        let mut times = self.times.lock().map(|t| t.clone()).unwrap_or_default();
        times.sort_unstable();
        times
    }
}

/// Consumer connection generations: bumped whenever a consumer's connection is lost,
/// and remembered per message at its first delivery, so that a repeat delivery can tell
/// whether a connection (and maybe the first delivery's ACK) was lost in between. Only
/// `failover` keeps one.
#[derive(Debug, Default)]
pub struct ConnectionGenerations {
    current: AtomicU32,
    first_delivered: Mutex<HashMap<(u32, u64), u32>>,
}

impl ConnectionGenerations {
    /// A consumer's connection was lost.
    pub fn bump(&self) {
        self.current.fetch_add(1, Ordering::AcqRel);
    }

    /// Remembers the generation of a message's first delivery.
    pub fn first_delivery(&self, producer: u32, seq: u64) {
        let now = self.current.load(Ordering::Acquire);
        if let Ok(mut map) = self.first_delivered.lock() {
            map.insert((producer, seq), now);
        }
    }

    /// Whether a consumer connection was lost since the message's first delivery.
    pub fn lost_since_first(&self, producer: u32, seq: u64) -> bool {
        let now = self.current.load(Ordering::Acquire);
        let first = self.first_delivered.lock().ok().and_then(|map| map.get(&(producer, seq)).copied());
        first.is_some_and(|first| first < now)
    }
}

/// Nanoseconds since `started`, saturating.
pub fn nanos_since(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Everything a run's tasks share.
pub struct Shared {
    pub phases: Phases,
    pub counters: Counters,
    pub deliveries: Deliveries,
    /// Receipt arrival times, when the run needs them (failover gaps).
    pub receipts: Option<ReceiptLog>,
    /// Consumer connection losses, when the run causes them (failover).
    pub generations: Option<ConnectionGenerations>,
    /// First-delivery times, when the gaps are measured at the consumers.
    pub arrivals: Option<ArrivalLog>,
    /// The message groups check, when the run tags messages with groups.
    pub groups: Option<GroupCheck>,
    /// The bound on messages sent and not yet received, when the load is closed-loop.
    pub backlog: Option<BacklogBound>,
}

impl Shared {
    /// What a plain run of `producers` producers shares: no receipt, connection or
    /// arrival logs, no group check.
    pub fn new(phases: Phases, producers: u32) -> Shared {
        Shared {
            phases,
            counters: Counters::default(),
            deliveries: Deliveries::new(producers),
            receipts: None,
            generations: None,
            arrivals: None,
            groups: None,
            backlog: None,
        }
    }

    /// Waits for room under the backlog bound, if there is one.
    pub async fn room_to_send(&self) {
        if let Some(bound) = &self.backlog {
            bound.room(&self.counters).await;
        }
    }

    /// A consumer counted a message in `counters.received`: producers waiting for room
    /// under the backlog bound may go on.
    pub fn received_one(&self) {
        if let Some(bound) = &self.backlog {
            bound.received(&self.counters);
        }
    }
}

/// A closed-loop load: producers wait while `limit` messages are sent and not yet
/// received, so they send at the rate the consumers sustain. Consumers wake waiting
/// producers as the backlog falls under the limit; a waiting producer also looks again
/// every millisecond, so a wake-up that crosses its check is late by that at most.
#[derive(Debug)]
pub struct BacklogBound {
    limit: u64,
    room: tokio::sync::Notify,
    /// Whether a producer may be waiting: consumers notify only then.
    waiting: AtomicBool,
}

impl BacklogBound {
    /// How long a waiting producer goes without looking at the counters, at most.
    const LOOK_AGAIN: Duration = Duration::from_millis(1);

    pub fn new(limit: u64) -> BacklogBound {
        BacklogBound { limit: limit.max(1), room: tokio::sync::Notify::new(), waiting: AtomicBool::new(false) }
    }

    /// Messages sent and not yet received.
    fn backlog(counters: &Counters) -> u64 {
        counters.sent.load(Ordering::Relaxed).saturating_sub(counters.received.load(Ordering::Relaxed))
    }

    async fn room(&self, counters: &Counters) {
        while Self::backlog(counters) >= self.limit {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.waiting.store(true, Ordering::SeqCst);
            if Self::backlog(counters) < self.limit {
                return;
            }
            let _ = tokio::time::timeout(Self::LOOK_AGAIN, notified).await;
        }
    }

    fn received(&self, counters: &Counters) {
        if self.waiting.load(Ordering::Relaxed) && Self::backlog(counters) < self.limit {
            self.waiting.store(false, Ordering::Relaxed);
            self.room.notify_waiters();
        }
    }
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

    #[tokio::test]
    async fn given_backlog_at_the_bound_should_hold_producers_until_a_message_is_received() {
        let phases = Phases::starting_now(Duration::ZERO, Duration::from_secs(10));
        let shared = std::sync::Arc::new(Shared { backlog: Some(BacklogBound::new(2)), ..Shared::new(phases, 1) });
        shared.counters.sent.fetch_add(1, Ordering::Relaxed);
        tokio::time::timeout(Duration::from_secs(5), shared.room_to_send()).await.expect("room under the bound");
        shared.counters.sent.fetch_add(1, Ordering::Relaxed);
        let waiting = tokio::spawn({
            let shared = std::sync::Arc::clone(&shared);
            async move { shared.room_to_send().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a producer went on with the backlog at the bound");
        shared.counters.received.fetch_add(1, Ordering::Relaxed);
        shared.received_one();
        tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("room once a message arrived").expect("task");
    }

    #[tokio::test]
    async fn given_no_bound_should_never_hold_producers() {
        let shared = Shared::new(Phases::starting_now(Duration::ZERO, Duration::from_secs(10)), 1);
        shared.counters.sent.fetch_add(1_000_000, Ordering::Relaxed);
        tokio::time::timeout(Duration::from_secs(5), shared.room_to_send()).await.expect("no bound");
    }
}
