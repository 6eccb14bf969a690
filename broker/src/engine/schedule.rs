//! What becomes of a message entering a queue's pending messages, and the one broker task
//! that acts on it later.
//!
//! A message scheduled for later (`AMQ_SCHEDULED_TIME`, or `AMQ_SCHEDULED_DELAY` stored as
//! the time it comes to) and one waiting out its redelivery delay after a NACK stay in
//! their queue ([`Held`], so their bytes still count and a purge takes them), out of
//! dispatch, until due; then they go back to their place among the pending messages (id
//! order). Nothing else waits for them. A message handed back after its
//! `maxDeliveryAttempts`th delivery, or found expired, leaves its queue: the queue hands it
//! to [`Control`], and [`run`] moves it (see [`super::deadletter`]).
//!
//! [`run`] is one task per broker: it sleeps until the earliest due time of any queue (or
//! until an earlier one is added), applies the moves queues hand over, and scans every
//! queue for expired messages each `destinations.expiryScanPeriod`. Held messages are not
//! journaled apart: a scheduled message's record carries its time, so recovery (after a
//! restart or a failover) holds it again; a redelivery delay is in memory only.

use super::message::{now_millis, Entry};
use super::queue::Queue;
use super::Broker;
use crate::config::AddressSettings;
use crate::journal::MessageId;
use parking_lot::Mutex;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

/// Why a message leaves its queue without being consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaving {
    /// Handed back after `deliveries` deliveries, `max` (`maxDeliveryAttempts`) allowed.
    DeadLetter { deliveries: u32, max: u32 },
    /// Its `expires` time passed before it was delivered.
    Expired,
}

/// What becomes of a message entering a queue's pending messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Pending now, in id order.
    Pending,
    /// Held until this time (milliseconds since the epoch).
    Hold(u64),
    /// Out of the queue.
    Leave(Leaving),
}

/// Decides for `entry`, `handed_back` by a consumer (NACK, or the consumer left) or new
/// (accepted, recovered), under its queue's `settings` at `now`.
pub fn admit(settings: &AddressSettings, entry: &Entry, handed_back: bool, now: u64) -> Admit {
    if !handed_back {
        return match entry.message.properties.deliver_at {
            Some(due) if due > now => Admit::Hold(due),
            _ => Admit::Pending,
        };
    }
    let (deliveries, max) = (entry.deliveries, settings.max_delivery_attempts);
    if max > 0 && deliveries >= max {
        return Admit::Leave(Leaving::DeadLetter { deliveries, max });
    }
    let delay = settings.redelivery_delay_for(deliveries);
    if delay.is_zero() {
        Admit::Pending
    } else {
        Admit::Hold(now.saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)))
    }
}

/// A queue's held messages, by due time then id.
#[derive(Debug, Default)]
pub struct Held {
    by_due: BTreeMap<(u64, MessageId), Entry>,
}

impl Held {
    pub fn insert(&mut self, due: u64, entry: Entry) {
        self.by_due.insert((due, entry.message.id), entry);
    }

    pub fn len(&self) -> usize {
        self.by_due.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_due.is_empty()
    }

    /// Every held message, by due time (a browser sorts them).
    pub fn messages(&self) -> impl Iterator<Item = &Arc<super::message::Message>> + '_ {
        self.by_due.values().map(|e| &e.message)
    }

    /// Takes the messages due at `now`, in due order.
    pub fn take_due(&mut self, now: u64) -> Vec<Entry> {
        let later = self.by_due.split_off(&(now.saturating_add(1), MessageId(0)));
        std::mem::replace(&mut self.by_due, later).into_values().collect()
    }

    /// Takes the messages that expired at `now` (they would expire once released).
    pub fn take_expired(&mut self, now: u64) -> Vec<Entry> {
        let expired: Vec<(u64, MessageId)> =
            self.by_due.iter().filter(|(_, e)| e.message.properties.expired(now)).map(|(k, _)| *k).collect();
        expired.iter().filter_map(|k| self.by_due.remove(k)).collect()
    }

    /// Drops every held message; returns how many there were.
    pub fn clear(&mut self) -> usize {
        let n = self.by_due.len();
        self.by_due.clear();
        n
    }
}

/// A message leaving `queue`, for [`run`] to move (its bytes are no longer counted).
#[derive(Debug)]
pub struct Move {
    pub queue: Arc<Queue>,
    pub entry: Entry,
    pub why: Leaving,
}

/// The broker's side of held and leaving messages, shared by its queues: when each queue
/// wants to be woken, and the moves waiting for [`run`].
#[derive(Debug)]
pub struct Control {
    /// (due, serial) → the queue holding a message due then.
    timers: Mutex<BTreeMap<(u64, u64), Weak<Queue>>>,
    serial: AtomicU64,
    /// Told when a due time earlier than every other is added.
    wake: Notify,
    scheduled: Gauge,
    /// What this broker adds to `scheduled` now, taken off when it goes (a live demoted in
    /// the same process leaves its held messages behind).
    held_here: std::sync::atomic::AtomicI64,
    moves: mpsc::UnboundedSender<Move>,
    inbox: Mutex<Option<mpsc::UnboundedReceiver<Move>>>,
}

impl Control {
    /// `scheduled` counts the messages held now (`duomq_scheduled_messages`).
    pub fn new(scheduled: Gauge) -> Control {
        let (moves, inbox) = mpsc::unbounded_channel();
        Control {
            timers: Mutex::new(BTreeMap::new()),
            serial: AtomicU64::new(0),
            wake: Notify::new(),
            scheduled,
            held_here: std::sync::atomic::AtomicI64::new(0),
            moves,
            inbox: Mutex::new(Some(inbox)),
        }
    }

    /// `queue` now holds one more message, due at `due`.
    pub fn held(&self, queue: &Arc<Queue>, due: u64) {
        self.scheduled.inc();
        self.held_here.fetch_add(1, Ordering::Relaxed);
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let mut timers = self.timers.lock();
        let earliest = timers.keys().next().is_none_or(|(first, _)| due < *first);
        timers.insert((due, serial), Arc::downgrade(queue));
        drop(timers);
        if earliest {
            self.wake.notify_one();
        }
    }

    /// `n` held messages were released, taken or dropped.
    pub fn unheld(&self, n: usize) {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        self.scheduled.dec_by(n);
        self.held_here.fetch_sub(n, Ordering::Relaxed);
    }

    /// Hands a message that left `queue` to [`run`].
    pub fn leave(&self, queue: &Arc<Queue>, entry: Entry, why: Leaving) {
        // The receiver lives as long as the broker's task; after it stopped (shutdown)
        // the message is still in the journal, under its queue, for the next start.
        let _ = self.moves.send(Move { queue: Arc::clone(queue), entry, why });
    }

    fn next_due(&self) -> Option<u64> {
        self.timers.lock().keys().next().map(|(due, _)| *due)
    }

    /// Takes the queues with a message due at `now` (each once).
    fn due(&self, now: u64) -> Vec<Arc<Queue>> {
        let mut timers = self.timers.lock();
        let later = timers.split_off(&(now.saturating_add(1), 0));
        let due = std::mem::replace(&mut *timers, later);
        drop(timers);
        let mut queues: Vec<Arc<Queue>> = Vec::new();
        for q in due.into_values().filter_map(|w| w.upgrade()) {
            if !queues.iter().any(|seen| Arc::ptr_eq(seen, &q)) {
                queues.push(q);
            }
        }
        queues
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.scheduled.dec_by(self.held_here.load(Ordering::Relaxed));
    }
}

/// The longest the task sleeps with nothing due: it wakes anyway to notice a broker gone.
const IDLE_WAKE: Duration = Duration::from_secs(3600);

/// Releases held messages as they come due, moves leaving ones (dead letters, expired)
/// and scans for expired messages every `destinations.expiryScanPeriod`, until `stop`.
/// One per broker: a second call returns at once.
pub async fn run(broker: Arc<Broker>, stop: CancellationToken) {
    let control = Arc::clone(&broker.delivery);
    let Some(mut inbox) = control.inbox.lock().take() else {
        tracing::debug!("the delivery task already runs for this broker");
        return;
    };
    let period = broker.config.destinations.expiry_scan_period.get();
    let mut scan = tokio::time::interval(if period.is_zero() { IDLE_WAKE } else { period });
    scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    scan.tick().await;
    loop {
        let now = now_millis();
        let sleep = control.next_due().map_or(IDLE_WAKE, |due| Duration::from_millis(due.saturating_sub(now)));
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {
                let now = now_millis();
                for queue in control.due(now) {
                    queue.release_held(now);
                }
            }
            _ = control.wake.notified() => {}
            Some(m) = inbox.recv() => broker.apply_move(m),
            _ = scan.tick(), if !period.is_zero() => {
                let broker = Arc::clone(&broker);
                // Every queue's pending messages are looked at: off the connection threads.
                let _ = tokio::task::spawn_blocking(move || broker.expire_pending(now_millis())).await;
            }
            _ = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HumanDuration;
    use crate::config::{AddressSettingsEntry, AddressSettingsTable};

    fn entry(id: u64, headers: &[(&str, &str)], deliveries: u32) -> Entry {
        let headers = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Entry { deliveries, ..Entry::for_test(id, headers) }
    }

    fn settings(max: u32, delay_ms: u64) -> AddressSettings {
        let e = AddressSettingsEntry {
            pattern: ">".into(),
            max_delivery_attempts: Some(max),
            redelivery_delay: Some(HumanDuration(Duration::from_millis(delay_ms))),
            redelivery_multiplier: Some(2.0),
            ..Default::default()
        };
        AddressSettingsTable::new(&[e], 1 << 20).expect("valid").resolve("/queue/q")
    }

    #[test]
    fn given_a_new_message_should_hold_it_only_while_its_time_is_ahead() {
        let s = settings(3, 0);
        let scheduled = entry(1, &[("AMQ_SCHEDULED_TIME", "5000")], 0);
        assert_eq!(admit(&s, &scheduled, false, 4_000), Admit::Hold(5_000));
        assert_eq!(admit(&s, &scheduled, false, 5_000), Admit::Pending);
        assert_eq!(admit(&s, &entry(2, &[], 0), false, 4_000), Admit::Pending);
    }

    #[test]
    fn given_handed_back_messages_should_delay_with_backoff_then_dead_letter_at_the_limit() {
        let s = settings(3, 100);
        assert_eq!(admit(&s, &entry(1, &[], 1), true, 1_000), Admit::Hold(1_100));
        assert_eq!(admit(&s, &entry(1, &[], 2), true, 1_000), Admit::Hold(1_200));
        assert_eq!(admit(&s, &entry(1, &[], 3), true, 1_000), Admit::Leave(Leaving::DeadLetter { deliveries: 3, max: 3 }));
        // A scheduled time is the producer's, not a redelivery's.
        assert_eq!(admit(&s, &entry(1, &[("AMQ_SCHEDULED_TIME", "9000")], 1), true, 1_000), Admit::Hold(1_100));
        // 0 attempts: never dead-lettered; no delay: pending at once.
        let never = settings(0, 0);
        assert_eq!(admit(&never, &entry(1, &[], 500), true, 1_000), Admit::Pending);
    }

    #[test]
    fn given_held_messages_should_release_by_due_time_and_take_the_expired() {
        let mut held = Held::default();
        held.insert(30, entry(1, &[], 0));
        held.insert(10, entry(2, &[("expires", "15")], 0));
        held.insert(20, entry(3, &[], 0));
        let ids = |v: Vec<Entry>| v.iter().map(|e| e.message.id.0).collect::<Vec<_>>();
        assert_eq!(ids(held.take_expired(15)), [2]);
        assert_eq!(ids(held.take_due(9)), Vec::<u64>::new());
        assert_eq!(ids(held.take_due(30)), [3, 1]);
        assert!(held.is_empty());
    }

    #[tokio::test]
    async fn given_due_times_should_wake_for_the_earliest_and_name_each_queue_once() {
        let control = Control::new(Gauge::default());
        let q = Queue::new(Arc::from("/queue/q"), crate::engine::queue::QueueKind::Anycast, Arc::new(crate::engine::memory::Memory::new(1 << 20, 1 << 20)), Arc::default(), 10);
        control.held(&q, 50);
        control.held(&q, 20);
        control.held(&q, 40);
        assert_eq!(control.next_due(), Some(20));
        // The earliest was announced: a waiter wakes at once.
        tokio::time::timeout(Duration::from_secs(1), control.wake.notified()).await.expect("woken");
        assert_eq!(control.due(45).len(), 1, "one queue, however many of its messages are due");
        assert_eq!(control.next_due(), Some(50));
        assert_eq!(control.scheduled.get(), 3);
        control.unheld(2);
        let gauge = control.scheduled.clone();
        assert_eq!(gauge.get(), 1);
        drop(control);
        assert_eq!(gauge.get(), 0, "a broker gone takes its held messages off the gauge");
    }
}
