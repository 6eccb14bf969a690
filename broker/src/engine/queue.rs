//! One queue: pending messages in id order, its consumers with what each has in flight,
//! and fair dispatch between them. A topic subscription is a queue with one consumer.
//!
//! All state sits behind one short-held lock; nothing here blocks or does I/O. Deliveries
//! go to connections through unbounded channels whose depth the prefetch window bounds.
//!
//! Message groups (`JMSXGroupID`, point-to-point queues only): the first message of a
//! group binds it to one consumer, the one with the fewest groups; the group's later
//! messages go to that consumer only, in id order, until the consumer leaves, the group is
//! closed (`JMSXGroupSeq: -1`) or its binding, idle, is evicted past `grouping.maxGroups`.
//! A group whose consumer has no room waits without holding back anything behind it.
//! While no grouped message is pending, dispatch takes the plain round-robin path.
//!
//! Selectors (SUBSCRIBE's `selector`, see [`crate::selector`]): a consumer with one takes
//! the first pending message it selects within [`SELECTOR_SCAN`] of the head; what no
//! consumer selects stays queued for a later consumer, and plain consumers keep taking the
//! head in order. A message it would select further back waits until the messages ahead
//! of it are consumed by others: one dispatch never evaluates more than `SELECTOR_SCAN`
//! messages per consumer. A topic subscription's selector is the queue's own
//! ([`Queue::select`]): copies it does not select are never queued.
//!
//! Held, dead-lettered and expired messages: see [`super::schedule`]; the queue asks it
//! what becomes of each message entering its pending ones, and drops expired messages it
//! meets at dispatch.

use super::memory::{Memory, Reservation};
use crate::config::AddressSettings;
use super::message::{ConsumerKey, Delivery, Entry, GroupOwner, Message, MessageGroup};
use super::schedule::{self, Admit, Control, Held as Scheduled, Leaving};
use super::pending::{Pending, Slot};
use crate::journal::MessageId;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What a connection's writer receives.
#[derive(Debug)]
pub enum Outbound {
    Deliver(Delivery),
    Frame(crate::stomp::Frame),
    /// Flush, then close the socket.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    Auto,
    Client,
    ClientIndividual,
}

impl AckMode {
    pub fn parse(s: Option<&str>) -> Option<AckMode> {
        match s {
            None | Some("auto") => Some(AckMode::Auto),
            Some("client") => Some(AckMode::Client),
            Some("client-individual") => Some(AckMode::ClientIndividual),
            _ => None,
        }
    }
}

/// What the queue knows of a consumer.
#[derive(Debug, Clone)]
pub struct ConsumerHandle {
    pub key: ConsumerKey,
    pub subscription_id: Arc<str>,
    pub ack_mode: AckMode,
    pub prefetch: usize,
    pub outbox: mpsc::UnboundedSender<Outbound>,
    /// Cancelled to cut the consumer's connection off at once (a slow topic subscriber),
    /// even while its writer is stuck on a full socket.
    pub kill: CancellationToken,
    /// Takes only the messages this selects (SUBSCRIBE's `selector`); none for bridges.
    pub selector: Option<crate::selector::Selector>,
}

#[cfg(test)]
impl ConsumerHandle {
    /// Consumer `key` (subscription `s<key>`, no selector) and what it is sent: what
    /// engine unit tests attach.
    pub(crate) fn for_test(key: u64, prefetch: usize, mode: AckMode) -> (ConsumerHandle, mpsc::UnboundedReceiver<Outbound>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let h = ConsumerHandle {
            key: ConsumerKey(key),
            subscription_id: Arc::from(format!("s{key}")),
            ack_mode: mode,
            prefetch,
            outbox: tx,
            kill: CancellationToken::new(),
            selector: None,
        };
        (h, rx)
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum AckError {
    #[error("no subscription for this acknowledgement")]
    UnknownConsumer,
    #[error("message is not in flight on this subscription (already acknowledged, or never delivered)")]
    NotInFlight,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    /// `/queue/NAME`: point to point.
    Anycast,
    /// The private queue of one topic subscriber.
    TopicSubscription,
}

pub struct Queue {
    pub name: Arc<str>,
    pub kind: QueueKind,
    /// Its `addressSettings`, resolved when it was made.
    pub settings: Arc<AddressSettings>,
    memory: Arc<Memory>,
    /// Told whenever a consumer comes or goes (network bridges advertise demand from it).
    changes: Arc<ConsumerChanges>,
    /// How many of its consumers are network bridges'.
    network_consumers: AtomicUsize,
    /// Group bindings kept at most (`grouping.maxGroups`).
    max_groups: usize,
    /// Idle bindings dropped to make room for a new group.
    groups_evicted: Counter,
    state: Mutex<State>,
    /// Holds, dead letters and expiry (none: every message is pending at once, forever).
    control: std::sync::OnceLock<Arc<Control>>,
    /// Reclaim sweeps that found this queue unused in a row (see `Broker::reclaim_idle`).
    pub(super) idle: IdleSweeps,
    /// A topic subscription's selector: the copies it gets (see [`Queue::wants`]).
    selector: std::sync::OnceLock<crate::selector::Selector>,
    /// The journal destination of its persistent messages when it is not its name (a
    /// durable subscription's copies, see [`Queue::store_as`]).
    stored_as: std::sync::OnceLock<Arc<str>>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("name", &self.name).finish()
    }
}

/// How many reclaim sweeps in a row found a destination unused.
#[derive(Debug, Default)]
pub(super) struct IdleSweeps(AtomicU32);

impl IdleSweeps {
    /// Marks the destination used: a store only when a sweep had counted it idle, so a busy
    /// destination's senders do not all write one shared word.
    pub(super) fn touch(&self) {
        if self.0.load(Ordering::Relaxed) != 0 {
            self.0.store(0, Ordering::Relaxed);
        }
    }

    /// Counts one more sweep; returns how many in a row found it unused (0 when used).
    pub(super) fn sweep(&self, unused: bool) -> u32 {
        if unused {
            self.0.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.0.store(0, Ordering::Relaxed);
            0
        }
    }
}

/// A counter bumped whenever any queue gains or loses a consumer, so network bridges
/// re-advertise their demand without polling every queue.
#[derive(Debug)]
pub struct ConsumerChanges(tokio::sync::watch::Sender<u64>);

impl Default for ConsumerChanges {
    fn default() -> ConsumerChanges {
        ConsumerChanges(tokio::sync::watch::channel(0).0)
    }
}

impl ConsumerChanges {
    pub fn bump(&self) {
        self.0.send_modify(|v| *v += 1);
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.subscribe()
    }
}

/// What makes a consumer a network bridge's: it ranks by `priority` (local consumers are
/// 0; a bridge is below with `decreaseNetworkConsumerPriority`), takes only messages
/// `accepts` allows (not back to the group they came from, not past `networkTTL`), and is
/// not counted as demand. `accepts` is also told whether the message would otherwise be
/// stranded: a point-to-point queue with no local consumer at all (replayWhenNoConsumers).
#[derive(Clone)]
pub struct NetworkConsumer {
    pub priority: i8,
    pub accepts: Arc<NetworkFilter>,
    /// Whether it may also be offered messages of groups bound to this broker or not
    /// decided yet (then `accepts` decides): only while a drain moves every message away.
    pub takes_bound_groups: Arc<dyn Fn() -> bool + Send + Sync>,
}

/// Whether a bridge may take a message (the message, and whether it is stranded here).
pub type NetworkFilter = dyn Fn(&super::message::Message, bool) -> bool + Send + Sync;

impl std::fmt::Debug for NetworkConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkConsumer").field("priority", &self.priority).finish()
    }
}

/// How far dispatch looks past the head for a message a network consumer may take.
const NETWORK_SCAN: usize = 1024;

/// How many pending messages one grouped dispatch passes over (waiting groups, messages
/// no consumer with room may take) before it stops until the next ack or arrival.
const GROUP_SCAN: usize = 1024;

/// How many pending messages, from the head, a consumer with a selector looks through for
/// one it selects in one dispatch (ActiveMQ pages 200 messages in for the same purpose).
pub const SELECTOR_SCAN: usize = 1024;

#[derive(Default)]
struct State {
    /// By priority, then id (see [`Pending`]).
    pending: Pending,
    /// Pending messages that belong to a group; while 0, dispatch takes the plain path.
    grouped_pending: usize,
    /// Pending grouped messages whose owner the grouping handler has not decided yet, by
    /// group.
    undecided: HashMap<Arc<str>, usize>,
    groups: Groups,
    consumers: Vec<Consumer>,
    /// Round-robin cursor into `consumers`.
    next: usize,
    bytes: usize,
    /// Bytes of messages accepted for this queue and not enqueued yet (see [`Reservation`]).
    reserved: usize,
    enqueued_total: u64,
    acked_total: u64,
    /// Messages held until a scheduled time or the end of a redelivery delay.
    held: Scheduled,
    /// Messages in the journal only (see [`super::paging`]).
    paged: super::paging::Paged,
    /// Messages pinned to a remote group by a bridge before a failover (recovered from the
    /// journal, see `network::forwarder`), by id: never pending while pinned.
    pins: HashMap<MessageId, Arc<str>>,
    /// Pinned messages here, waiting for their group's bridge to claim them.
    aside: BTreeMap<MessageId, Entry>,
}

struct Consumer {
    handle: ConsumerHandle,
    /// Delivered and not yet settled, by delivery tag (delivery order).
    in_flight: BTreeMap<u64, Held>,
    /// The groups bound to this consumer.
    groups: HashSet<Arc<str>>,
    next_tag: u64,
    /// The connection is gone; skip it until it is removed.
    closed: bool,
    network: Option<NetworkConsumer>,
}

impl Consumer {
    fn priority(&self) -> i8 {
        self.network.as_ref().map_or(0, |n| n.priority)
    }

    fn has_room(&self) -> bool {
        !self.closed && self.in_flight.len() < self.handle.prefetch
    }

    /// Whether this consumer may be handed `message` of a group owned by `owner`: local
    /// consumers unless the group is owned elsewhere; network bridges unless it is owned
    /// here, and then only what their filter accepts.
    fn may_take(&self, message: &Message, owner: &GroupOwner, stranded: bool) -> bool {
        if self.handle.selector.as_ref().is_some_and(|s| !s.matches(message)) {
            return false;
        }
        match (&self.network, owner) {
            (Some(net), GroupOwner::Undecided | GroupOwner::Here) if (net.takes_bound_groups)() => (net.accepts)(message, stranded),
            (_, GroupOwner::Undecided) | (None, GroupOwner::Elsewhere(_)) | (Some(_), GroupOwner::Here) => false,
            (None, _) => true,
            (Some(net), _) => (net.accepts)(message, stranded),
        }
    }
}

/// A delivery in flight, with the serial of the group binding it counts against.
#[derive(Debug)]
struct Held {
    entry: Entry,
    binding: Option<u64>,
}

/// A group's binding to one consumer.
#[derive(Debug)]
struct Binding {
    consumer: ConsumerKey,
    /// Tells this binding from a later one of the same group (after a close or eviction),
    /// so settling an old delivery never counts against the new binding.
    serial: u64,
    /// Messages of the group in flight at its consumer; the binding is idle at 0.
    in_flight: usize,
    /// When it was last delivered to or became idle: its key in `Groups::idle`.
    last_use: u64,
}

/// A queue's group bindings, with the idle ones ordered by last use so the least
/// recently used is found in O(log n).
#[derive(Debug, Default)]
struct Groups {
    bindings: HashMap<Arc<str>, Binding>,
    /// Bindings with nothing in flight, by `last_use`.
    idle: BTreeMap<u64, Arc<str>>,
    clock: u64,
}

impl Groups {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Binds `group` to `consumer`; the binding starts idle.
    fn bind(&mut self, group: &Arc<str>, consumer: ConsumerKey) {
        let now = self.tick();
        self.idle.insert(now, Arc::clone(group));
        self.bindings.insert(Arc::clone(group), Binding { consumer, serial: now, in_flight: 0, last_use: now });
    }

    /// Counts one more message of `group` in flight; returns the binding's serial.
    fn delivered(&mut self, group: &str) -> Option<u64> {
        let now = self.tick();
        let b = self.bindings.get_mut(group)?;
        if b.in_flight == 0 {
            self.idle.remove(&b.last_use);
        }
        b.in_flight += 1;
        b.last_use = now;
        Some(b.serial)
    }

    /// Counts a message of `group` settled (acked, nacked, or handed back), if it was
    /// delivered under the binding the group still has.
    fn settled(&mut self, group: &Arc<str>, serial: u64) {
        let now = self.tick();
        let Some(b) = self.bindings.get_mut(group).filter(|b| b.serial == serial) else { return };
        b.in_flight = b.in_flight.saturating_sub(1);
        if b.in_flight == 0 {
            b.last_use = now;
            self.idle.insert(now, Arc::clone(group));
        }
    }

    fn unbind(&mut self, group: &str) -> Option<Binding> {
        let b = self.bindings.remove(group)?;
        if b.in_flight == 0 {
            self.idle.remove(&b.last_use);
        }
        Some(b)
    }

    /// Drops the least recently used idle binding; returns its group and consumer.
    fn evict_idle(&mut self) -> Option<(Arc<str>, ConsumerKey)> {
        let (_, group) = self.idle.pop_first()?;
        let b = self.bindings.remove(&group)?;
        Some((group, b.consumer))
    }
}

/// Where one grouped dispatch sends a message.
struct Route {
    consumer: usize,
    /// The group was bound to this consumer just now.
    first: bool,
}

/// A point-in-time view for `/status` and metrics.
#[derive(Debug, Clone)]
pub struct QueueSnapshot {
    pub name: String,
    pub kind: QueueKind,
    pub depth: usize,
    pub in_flight: usize,
    pub consumers: usize,
    pub bytes: usize,
    pub enqueued_total: u64,
    pub acked_total: u64,
    /// Message groups bound to a consumer.
    pub groups: usize,
    /// Messages in the journal only, not yet read back (see [`super::paging`]), and their bytes.
    pub paged: u64,
    pub paged_bytes: u64,
}

impl Queue {
    /// A queue keeping at most `max_groups` group bindings (`grouping.maxGroups`).
    /// It has the default address settings.
    pub fn new(name: Arc<str>, kind: QueueKind, memory: Arc<Memory>, changes: Arc<ConsumerChanges>, max_groups: usize) -> Arc<Queue> {
        let settings = Arc::new(AddressSettings::defaults(memory.queue_limit));
        Queue::with_eviction_counter(name, kind, settings, memory, changes, max_groups, Counter::default())
    }

    /// As [`Queue::new`] with `settings`, counting evicted group bindings in `groups_evicted`.
    pub fn with_eviction_counter(
        name: Arc<str>,
        kind: QueueKind,
        settings: Arc<AddressSettings>,
        memory: Arc<Memory>,
        changes: Arc<ConsumerChanges>,
        max_groups: usize,
        groups_evicted: Counter,
    ) -> Arc<Queue> {
        Arc::new(Queue {
            name,
            kind,
            settings,
            memory,
            changes,
            network_consumers: AtomicUsize::new(0),
            max_groups: max_groups.max(1),
            groups_evicted,
            state: Mutex::new(State::default()),
            control: std::sync::OnceLock::new(),
            idle: IdleSweeps::default(),
            selector: std::sync::OnceLock::new(),
            stored_as: std::sync::OnceLock::new(),
        })
    }

    /// Message groups currently bound to a consumer of this queue.
    pub fn group_bindings(&self) -> usize {
        self.state.lock().groups.bindings.len()
    }

    /// Whether dispatch treats `message` as part of a group: topic subscriptions ignore
    /// groups (each has one consumer anyway).
    fn group_of<'m>(&self, message: &'m Message) -> Option<&'m MessageGroup> {
        message.group.as_ref().filter(|_| self.kind == QueueKind::Anycast)
    }

    fn push_pending(&self, st: &mut State, entry: Entry) {
        // Some(undecided group id) for a grouped message; ungrouped ones cost nothing more.
        let grouped = self
            .group_of(&entry.message)
            .map(|g| (*g.owner() == GroupOwner::Undecided).then(|| Arc::clone(&g.id)));
        if st.pending.insert(entry) {
            if let Some(undecided) = grouped {
                st.grouped_pending += 1;
                if let Some(group) = undecided {
                    *st.undecided.entry(group).or_default() += 1;
                }
            }
        }
    }

    fn take_pending(&self, st: &mut State, slot: Slot) -> Option<Entry> {
        let entry = st.pending.remove(&slot)?;
        if let Some(group) = self.group_of(&entry.message) {
            st.grouped_pending -= 1;
            if *group.owner() == GroupOwner::Undecided {
                if let Some(left) = st.undecided.get_mut(&group.id) {
                    *left -= 1;
                    if *left == 0 {
                        st.undecided.remove(&group.id);
                    }
                }
            }
        }
        Some(entry)
    }

    /// The groups of pending messages stored before their owner was decided (see
    /// [`GroupOwner::Undecided`]).
    pub fn undecided_groups(&self) -> Vec<Arc<str>> {
        let mut groups: Vec<Arc<str>> = self.state.lock().undecided.keys().cloned().collect();
        groups.sort();
        groups
    }

    /// Whether any pending message waits for its group's owner to be decided.
    pub fn has_undecided_groups(&self) -> bool {
        !self.state.lock().undecided.is_empty()
    }

    /// Whether messages of `group` wait here for their owner to be decided: a later
    /// message of the group must wait with them, so the group keeps its order.
    pub fn has_undecided(&self, group: &str) -> bool {
        self.state.lock().undecided.contains_key(group)
    }

    /// Gives the pending messages of each group in `decided` their owner (they were
    /// stored undecided) and dispatches them, in the order they were stored.
    pub fn decide_groups(self: &Arc<Self>, decided: &HashMap<Arc<str>, GroupOwner>) {
        let mut st = self.state.lock();
        for entry in st.pending.values() {
            let Some(group) = self.group_of(&entry.message) else { continue };
            if group.owner == GroupOwner::Undecided {
                if let Some(owner) = decided.get(&group.id) {
                    // A message decided before keeps its owner (the set fails).
                    let _ = group.decided.set(owner.clone());
                }
            }
        }
        // Every pending message of these groups now has its owner.
        st.undecided.retain(|group, _| !decided.contains_key(group));
        self.dispatch_locked(&mut st);
    }

    /// Ends a delivery's count against its group binding; returns its entry.
    fn settle_held(st: &mut State, held: Held) -> Entry {
        if let (Some(serial), Some(group)) = (held.binding, held.entry.message.group.as_ref()) {
            st.groups.settled(&group.id, serial);
        }
        held.entry
    }

    /// Bytes of messages this queue holds (pending, in flight, and accepted but not yet
    /// enqueued).
    pub fn bytes(&self) -> usize {
        let st = self.state.lock();
        st.bytes + st.reserved
    }

    /// Counts `bytes` of a message on its way to this queue against its limit and the
    /// broker's, until the message is enqueued or the reservation dropped.
    pub fn reserve(self: &Arc<Self>, bytes: usize) -> Reservation {
        self.state.lock().reserved += bytes;
        Reservation::for_queue(Arc::clone(&self.memory), Arc::clone(self), bytes)
    }

    pub(super) fn unreserve(&self, bytes: usize) {
        let mut st = self.state.lock();
        st.reserved = st.reserved.saturating_sub(bytes);
    }

    pub fn enqueue(self: &Arc<Self>, entry: Entry) {
        let size = entry.message.footprint();
        self.memory.add(size);
        self.enqueue_counted(entry, size, 0);
    }

    /// Enqueues a message whose bytes `reservation` already counts against this queue.
    pub fn enqueue_reserved(self: &Arc<Self>, entry: Entry, reservation: Reservation) {
        let mine = reservation.queue.as_ref().is_some_and(|q| Arc::ptr_eq(q, self));
        if !mine {
            drop(reservation);
            return self.enqueue(entry);
        }
        let reserved = reservation.transfer();
        let size = entry.message.footprint();
        // The reservation was made for this very message, so the sizes agree; adjust the
        // broker total anyway should they ever differ.
        if size > reserved {
            self.memory.add(size - reserved);
        } else {
            self.memory.release(reserved - size);
        }
        self.enqueue_counted(entry, size, reserved);
    }

    fn enqueue_counted(self: &Arc<Self>, entry: Entry, size: usize, was_reserved: usize) {
        let mut st = self.state.lock();
        st.reserved = st.reserved.saturating_sub(was_reserved);
        st.bytes += size;
        st.enqueued_total += 1;
        self.admit(&mut st, entry, false);
        self.dispatch_locked(&mut st);
    }

    /// True when the queue holds nothing and nobody consumes from it: it may be reclaimed.
    pub fn is_unused(&self) -> bool {
        let st = self.state.lock();
        st.pending.is_empty() && st.aside.is_empty() && st.consumers.is_empty() && st.bytes == 0 && st.reserved == 0 && st.paged.is_empty()
    }

    /// Whether a persistent message to this queue may be paged: its policy is `page`, or
    /// it pages already (a later message must not overtake the paged ones).
    pub fn pages(&self) -> bool {
        self.settings.full_policy == crate::config::FullPolicy::Page || !self.state.lock().paged.is_empty()
    }

    /// Pages message `id` when the queue pages already or holds its `maxSizeBytes` (or the
    /// broker is full); true when it was paged. Called before its record is appended.
    pub(super) fn page_if_full(&self, id: MessageId, footprint: usize, broker_full: bool) -> bool {
        let mut st = self.state.lock();
        let starts = st.paged.is_empty();
        if starts && !broker_full && st.bytes + st.reserved < self.settings.max_size_bytes {
            return false;
        }
        if starts {
            tracing::info!(queue = %self.name, max_size_bytes = self.settings.max_size_bytes, "queue started paging: new persistent messages stay in the journal until consumers catch up");
        }
        st.paged.insert(id, footprint);
        true
    }

    /// Un-pages a message whose record was never written (its append failed).
    pub(super) fn unpage(&self, id: MessageId, footprint: usize) {
        self.state.lock().paged.remove(id, footprint);
    }

    /// Takes up to `limit` paged messages out of the queue, lowest ids first (an admin
    /// purge); the caller journals their removal, or [`Queue::repage`]s them on failure.
    pub fn take_paged(&self, limit: usize) -> Vec<MessageId> {
        self.state.lock().paged.take(limit)
    }

    /// Takes the paged messages among `ids` out of the queue (an admin delete).
    pub fn remove_paged(&self, ids: &[MessageId]) -> Vec<MessageId> {
        let mut st = self.state.lock();
        ids.iter().copied().filter(|id| st.paged.remove_estimated(*id)).collect()
    }

    /// Pages again what [`Queue::take_paged`] or [`Queue::remove_paged`] took when their
    /// removal could not be journaled (they are still in the journal, unacknowledged).
    pub fn repage(&self, ids: &[MessageId]) {
        let mut st = self.state.lock();
        let average = st.paged.bytes().checked_div(st.paged.count()).unwrap_or(0) as usize;
        st.paged.repage(ids, average);
    }

    /// Has this queue's persistent messages journaled under `destination` rather than its
    /// name (a durable subscription's), before any is; the first one given counts.
    pub(super) fn store_as(&self, destination: Arc<str>) {
        let _ = self.stored_as.set(destination);
    }

    /// The journal destination of this queue's persistent messages.
    pub(super) fn journal_destination(&self) -> &str {
        self.stored_as.get().map_or(&self.name, |d| d)
    }

    /// Holds reading back (see [`super::paging::PagingHold`]).
    pub(super) fn hold_paging(&self) {
        self.state.lock().paged.hold();
    }

    pub(super) fn release_paging(&self) {
        self.state.lock().paged.release();
    }

    pub(super) fn paging_read_under_way(&self) -> bool {
        self.state.lock().paged.reading()
    }

    /// Where this queue's paged messages begin in the journal; none when it pages nothing.
    pub fn paged_from(&self) -> Option<crate::journal::PageCursor> {
        let st = self.state.lock();
        (!st.paged.is_empty()).then(|| st.paged.from())
    }

    /// Messages of this queue in the journal only.
    pub fn snapshot_paged(&self) -> u64 {
        self.state.lock().paged.count()
    }

    pub(super) fn is_paged(&self, id: MessageId) -> bool {
        self.state.lock().paged.contains(id)
    }

    /// Recovered paged messages (see [`super::paging::Paged::recovered`]).
    pub(super) fn set_paged(&self, paged: super::paging::Paged) {
        self.state.lock().paged = paged;
    }

    /// Where to read paged messages back from and how many bytes, when the queue holds
    /// less than half its `maxSizeBytes` in memory and no read is under way.
    pub(super) fn want_page_in(&self) -> Option<(crate::journal::PageCursor, usize)> {
        let mut st = self.state.lock();
        let held = st.bytes + st.reserved;
        let limit = self.settings.max_size_bytes;
        if held >= limit / 2 {
            return None;
        }
        st.paged.start_read().map(|c| (c, limit - held))
    }

    /// Takes messages read back from the journal into memory (those still paged), and
    /// ends the read; `cursor`: where the next one goes on.
    pub(super) fn page_in(self: &Arc<Self>, entries: Vec<Entry>, cursor: Option<crate::journal::PageCursor>) {
        let mut st = self.state.lock();
        let mut added = 0;
        for entry in entries {
            let size = entry.message.footprint();
            if st.paged.remove(entry.message.id, size) {
                added += size;
                st.bytes += size;
                if let Some(entry) = Self::set_aside(&mut st, entry) {
                    self.push_pending(&mut st, entry);
                }
            }
        }
        self.memory.add(added);
        st.paged.end_read(cursor);
        if st.paged.is_empty() && cursor.is_some() {
            tracing::info!(queue = %self.name, "queue stopped paging: every paged message was read back");
        }
        self.dispatch_locked(&mut st);
    }

    /// Marks the queue used, so the next reclaim sweeps start counting afresh.
    pub fn touch(&self) {
        self.idle.touch();
    }

    /// Cuts every consumer of this queue off: each gets `error` (if its writer can still
    /// send it) and its connection is closed. Used for topic subscribers that fall behind.
    pub fn evict_consumers(&self, error: crate::stomp::Frame) {
        let st = self.state.lock();
        for c in &st.consumers {
            let _ = c.handle.outbox.send(Outbound::Frame(error.clone()));
            c.handle.kill.cancel();
        }
    }

    pub fn add_consumer(self: &Arc<Self>, handle: ConsumerHandle) {
        self.attach(handle, None);
    }

    /// Adds a network bridge's consumer (see [`NetworkConsumer`]).
    pub fn add_network_consumer(self: &Arc<Self>, handle: ConsumerHandle, network: NetworkConsumer) {
        self.attach(handle, Some(network));
    }

    fn attach(self: &Arc<Self>, handle: ConsumerHandle, network: Option<NetworkConsumer>) {
        let local = network.is_none();
        {
            let mut st = self.state.lock();
            if !local {
                self.network_consumers.fetch_add(1, Ordering::Relaxed);
            }
            st.consumers.push(Consumer {
                handle,
                in_flight: BTreeMap::new(),
                groups: HashSet::new(),
                next_tag: 0,
                closed: false,
                network,
            });
            self.dispatch_locked(&mut st);
        }
        if local {
            self.changes.bump();
        }
    }

    /// Whether a topic copy of `message` is for this subscription: not when its only
    /// consumers are network bridges that would never take it (it came from their remote
    /// group, or crossed networkTTL bridges), which would otherwise keep it forever.
    pub fn wants(&self, message: &super::message::Message) -> bool {
        if self.selector.get().is_some_and(|s| !s.matches(message)) {
            return false;
        }
        // Without network consumers (every subscription but a bridge's conduit): no lock.
        if self.network_consumers.load(Ordering::Relaxed) == 0 {
            return true;
        }
        let st = self.state.lock();
        st.consumers.is_empty() || st.consumers.iter().any(|c| c.network.as_ref().is_none_or(|n| (n.accepts)(message, false)))
    }

    /// Gives a topic subscription its selector, before it joins the topic: only the copies
    /// it selects are queued ([`Queue::wants`]). A queue keeps the first one it is given.
    pub fn select(&self, selector: crate::selector::Selector) {
        let _ = self.selector.set(selector);
    }

    /// Consumers that are not network bridges': what this queue asks remote groups for.
    pub fn local_consumers(&self) -> usize {
        self.state.lock().consumers.iter().filter(|c| c.network.is_none()).count()
    }

    /// Sets how many unacknowledged messages a consumer may hold; 0 stops deliveries to it
    /// while what it holds is settled (a bridge winding down for a destination).
    pub fn set_prefetch(self: &Arc<Self>, key: ConsumerKey, prefetch: usize) {
        let mut st = self.state.lock();
        if let Some(c) = st.consumers.iter_mut().find(|c| c.handle.key == key) {
            c.handle.prefetch = prefetch;
        }
        self.dispatch_locked(&mut st);
    }

    /// Messages a consumer holds unacknowledged.
    pub fn in_flight_of(&self, key: ConsumerKey) -> usize {
        self.state.lock().consumers.iter().find(|c| c.handle.key == key).map_or(0, |c| c.in_flight.len())
    }

    /// Removes a consumer; whatever it had in flight goes back to the head of the queue,
    /// marked redelivered, for the other consumers. Its groups bind afresh.
    pub fn remove_consumer(self: &Arc<Self>, key: ConsumerKey) {
        let local = {
            let mut st = self.state.lock();
            let Some(pos) = st.consumers.iter().position(|c| c.handle.key == key) else { return };
            let consumer = st.consumers.remove(pos);
            if st.next > pos {
                st.next -= 1;
            }
            for group in &consumer.groups {
                st.groups.unbind(group);
            }
            if !consumer.groups.is_empty() {
                tracing::debug!(queue = %self.name, groups = consumer.groups.len(), "consumer left; its message groups bind afresh");
            }
            for (_, held) in consumer.in_flight {
                let mut entry = held.entry;
                entry.redelivered = true;
                self.admit(&mut st, entry, consumer.network.is_none());
            }
            self.dispatch_locked(&mut st);
            if consumer.network.is_some() {
                self.network_consumers.fetch_sub(1, Ordering::Relaxed);
            }
            consumer.network.is_none()
        };
        if local {
            self.changes.bump();
        }
    }

    /// Settles acknowledged deliveries and returns them; `cumulative` (ack mode `client`)
    /// settles every delivery up to and including `tag`.
    pub fn ack(self: &Arc<Self>, key: ConsumerKey, tag: u64, cumulative: bool) -> Result<Vec<Entry>, AckError> {
        let mut st = self.state.lock();
        let taken: Vec<Entry> =
            take_in_flight(&mut st, key, tag, cumulative)?.into_iter().map(|h| Self::settle_held(&mut st, h)).collect();
        let freed: usize = taken.iter().map(|e| e.message.footprint()).sum();
        st.bytes -= freed;
        st.acked_total += taken.len() as u64;
        if !st.pins.is_empty() {
            for e in &taken {
                st.pins.remove(&e.message.id);
            }
        }
        self.memory.release(freed);
        self.dispatch_locked(&mut st);
        Ok(taken)
    }

    /// Returns negatively acknowledged deliveries to the head of the queue, redelivered.
    pub fn nack(self: &Arc<Self>, key: ConsumerKey, tag: u64, cumulative: bool) -> Result<(), AckError> {
        let mut st = self.state.lock();
        let local = st.consumers.iter().any(|c| c.handle.key == key && c.network.is_none());
        for held in take_in_flight(&mut st, key, tag, cumulative)? {
            let mut entry = Self::settle_held(&mut st, held);
            entry.redelivered = true;
            self.admit(&mut st, entry, local);
        }
        self.dispatch_locked(&mut st);
        Ok(())
    }

    /// The delivery tag of a message in flight on a consumer (STOMP 1.0/1.1 ack by message-id).
    pub fn tag_of(&self, key: ConsumerKey, id: MessageId) -> Result<u64, AckError> {
        let st = self.state.lock();
        let c = st.consumers.iter().find(|c| c.handle.key == key).ok_or(AckError::UnknownConsumer)?;
        c.in_flight
            .iter()
            .find(|(_, h)| h.entry.message.id == id)
            .map(|(t, _)| *t)
            .ok_or(AckError::NotInFlight)
    }

    /// Marks a consumer whose connection is gone so dispatch skips it.
    fn mark_closed(st: &mut State, key: ConsumerKey) {
        if let Some(c) = st.consumers.iter_mut().find(|c| c.handle.key == key) {
            c.closed = true;
        }
    }

    /// Hands pending messages to consumers with room: the highest priority first (local
    /// consumers before network bridges), round robin among equals. A network consumer
    /// takes the first message it accepts within [`NETWORK_SCAN`] of the head. Grouped
    /// messages pending: see [`Queue::dispatch_grouped`].
    fn dispatch_locked(self: &Arc<Self>, st: &mut State) {
        if st.grouped_pending > 0 {
            return self.dispatch_grouped(st);
        }
        // Nobody here would ever take a message: bridges may carry it anywhere there is
        // demand, even back where it came from. Never for a topic subscription.
        let stranded = self.stranded(st);
        // Consumers whose selector found nothing in this dispatch: not scanned again.
        let mut unselected: Vec<usize> = Vec::new();
        while !st.pending.is_empty() && !st.consumers.is_empty() {
            let n = st.consumers.len();
            let mut chosen: Option<(usize, Slot)> = None;
            for i in 0..n {
                let idx = (st.next + i) % n;
                let c = &st.consumers[idx];
                if !c.has_room() || chosen.is_some_and(|(best, _)| st.consumers[best].priority() >= c.priority()) || unselected.contains(&idx) {
                    continue;
                }
                let pick = match (&c.network, &c.handle.selector) {
                    (None, None) => st.pending.first().map(|(slot, _)| *slot),
                    (None, Some(selector)) => {
                        let found = st.pending.iter().take(SELECTOR_SCAN).find(|(_, e)| selector.matches(&e.message)).map(|(slot, _)| *slot);
                        if found.is_none() {
                            unselected.push(idx);
                        }
                        found
                    }
                    (Some(net), _) => st
                        .pending
                        .iter()
                        .take(NETWORK_SCAN)
                        .find(|(_, e)| (net.accepts)(&e.message, stranded))
                        .map(|(slot, _)| *slot),
                };
                if let Some(id) = pick {
                    chosen = Some((idx, id));
                    // No consumer ranks above 0 (local consumers): stop looking.
                    if c.priority() >= 0 {
                        break;
                    }
                }
            }
            let Some((idx, id)) = chosen else { return };
            st.next = (idx + 1) % n;
            let Some(entry) = st.pending.remove(&id) else { return };
            self.deliver(st, idx, entry, false);
        }
    }

    fn stranded(&self, st: &State) -> bool {
        self.kind == QueueKind::Anycast && st.consumers.iter().all(|c| c.network.is_some())
    }

    /// Dispatch while grouped messages are pending: walks the pending messages in id order
    /// and sends each where it may go: a bound group to its consumer, a new group to the
    /// consumer with the fewest groups, an ungrouped message round robin. A message that
    /// must wait (its consumer is full, no binding can be made) is passed over, and so is
    /// the rest of its group in this walk, keeping the group's order. Stops as soon as no
    /// consumer has room, or after passing over [`GROUP_SCAN`] messages.
    fn dispatch_grouped(self: &Arc<Self>, st: &mut State) {
        let stranded = self.stranded(st);
        let mut after: Option<Slot> = None;
        let mut passed = 0;
        // Groups one of whose messages was passed over in this walk.
        let mut waiting: HashSet<Arc<str>> = HashSet::new();
        while passed < GROUP_SCAN && st.consumers.iter().any(Consumer::has_room) {
            let next = match after {
                None => st.pending.first(),
                Some(last) => st.pending.after(last),
            };
            let Some((&slot, entry)) = next else { return };
            after = Some(slot);
            let message = Arc::clone(&entry.message);
            let route = match self.group_of(&message) {
                None => self.pick_ungrouped(st, &message, stranded).map(|consumer| Route { consumer, first: false }),
                Some(group) if waiting.contains(&group.id) => None,
                Some(group) => self.route_group(st, group, &message, stranded),
            };
            let Some(route) = route else {
                passed += 1;
                if let Some(group) = self.group_of(&message) {
                    waiting.insert(Arc::clone(&group.id));
                }
                continue;
            };
            if let Some(entry) = self.take_pending(st, slot) {
                self.deliver(st, route.consumer, entry, route.first);
            }
        }
    }

    /// The consumer for an ungrouped message: the best priority with room, round robin.
    fn pick_ungrouped(&self, st: &mut State, message: &Message, stranded: bool) -> Option<usize> {
        let n = st.consumers.len();
        let mut chosen: Option<usize> = None;
        for i in 0..n {
            let idx = (st.next + i) % n;
            let c = &st.consumers[idx];
            if !c.has_room() || chosen.is_some_and(|best| st.consumers[best].priority() >= c.priority()) {
                continue;
            }
            if c.may_take(message, &GroupOwner::Any, stranded) {
                chosen = Some(idx);
                if c.priority() >= 0 {
                    break;
                }
            }
        }
        let idx = chosen?;
        st.next = (idx + 1) % n;
        Some(idx)
    }

    /// Where a grouped message goes now, binding its group if it has no binding; `None`
    /// when it must wait.
    fn route_group(&self, st: &mut State, group: &MessageGroup, message: &Message, stranded: bool) -> Option<Route> {
        if let Some(b) = st.groups.bindings.get(&group.id) {
            let (idx, busy) = (st.consumers.iter().position(|c| c.handle.key == b.consumer), b.in_flight > 0);
            match idx {
                Some(idx) if st.consumers[idx].may_take(message, group.owner(), stranded) => {
                    return st.consumers[idx].has_room().then_some(Route { consumer: idx, first: false });
                }
                // Its consumer may no longer take the group (the owner changed): once
                // nothing of the group is in flight there, the group binds afresh.
                Some(_) if busy => return None,
                _ => self.unbind(st, &group.id),
            }
        }
        let n = st.consumers.len();
        let mut chosen: Option<usize> = None;
        for i in 0..n {
            let idx = (st.next + i) % n;
            let c = &st.consumers[idx];
            if !c.has_room() || !c.may_take(message, group.owner(), stranded) {
                continue;
            }
            let better = chosen.is_none_or(|best| {
                let b = &st.consumers[best];
                (c.priority(), std::cmp::Reverse(c.groups.len())) > (b.priority(), std::cmp::Reverse(b.groups.len()))
            });
            if better {
                chosen = Some(idx);
            }
        }
        let idx = chosen?;
        if st.groups.bindings.len() >= self.max_groups {
            let (evicted, owner) = st.groups.evict_idle()?;
            if let Some(c) = st.consumers.iter_mut().find(|c| c.handle.key == owner) {
                c.groups.remove(&evicted);
            }
            self.groups_evicted.inc();
            tracing::debug!(queue = %self.name, group = %evicted, max_groups = self.max_groups, "evicted the least recently used idle group binding");
        }
        st.next = (idx + 1) % n;
        let c = &mut st.consumers[idx];
        c.groups.insert(Arc::clone(&group.id));
        st.groups.bind(&group.id, c.handle.key);
        Some(Route { consumer: idx, first: true })
    }

    fn unbind(&self, st: &mut State, group: &str) {
        if let Some(b) = st.groups.unbind(group) {
            if let Some(c) = st.consumers.iter_mut().find(|c| c.handle.key == b.consumer) {
                c.groups.remove(group);
            }
        }
    }

    /// Hands `entry` to consumer `idx`; a closed outbox puts it back and marks the
    /// consumer closed. A closing message (`JMSXGroupSeq: -1`) drops its group's binding.
    fn deliver(self: &Arc<Self>, st: &mut State, idx: usize, mut entry: Entry, group_first: bool) {
        if entry.message.properties.expires.is_some() && entry.message.properties.expired(super::message::now_millis()) {
            return self.leave(st, entry, Leaving::Expired);
        }
        let group = self.group_of(&entry.message).map(|g| (Arc::clone(&g.id), g.close));
        let binding = group.as_ref().and_then(|(id, _)| st.groups.delivered(id));
        let c = &mut st.consumers[idx];
        let counted = c.network.is_none();
        entry.deliveries += u32::from(counted);
        let tag = c.next_tag;
        c.next_tag += 1;
        c.in_flight.insert(tag, Held { entry: entry.clone(), binding });
        let delivery = Delivery {
            queue: Arc::clone(self),
            consumer: c.handle.key,
            subscription_id: Arc::clone(&c.handle.subscription_id),
            tag,
            entry,
            auto_ack: c.handle.ack_mode == AckMode::Auto,
            group_first,
        };
        if c.handle.outbox.send(Outbound::Deliver(delivery)).is_err() {
            let key = c.handle.key;
            if let Some(held) = c.in_flight.remove(&tag) {
                let mut entry = Self::settle_held(st, held);
                entry.redelivered = false;
                entry.deliveries -= u32::from(counted);
                if let Some(entry) = Self::set_aside(st, entry) {
                    self.push_pending(st, entry);
                }
            }
            Self::mark_closed(st, key);
            return;
        }
        if let Some((id, true)) = group {
            self.unbind(st, &id);
        }
    }

    /// Gives the queue its broker's [`Control`] (once, when it is made).
    pub fn set_control(&self, control: Arc<Control>) {
        let _ = self.control.set(control);
    }

    /// A message entering the pending ones, new or `handed_back` by a local consumer:
    /// pending now, held until its time, or out of the queue (see [`schedule::admit`]).
    fn admit(self: &Arc<Self>, st: &mut State, entry: Entry, handed_back: bool) {
        let Some(mut entry) = Self::set_aside(st, entry) else { return };
        let Some(control) = self.control.get() else { return self.push_pending(st, entry) };
        match schedule::admit(&self.settings, &entry, handed_back, super::message::now_millis()) {
            Admit::Pending => self.push_pending(st, entry),
            Admit::Hold(due) => {
                // Held until a time still ahead: a recovered message cannot have been
                // delivered before it.
                entry.redelivered &= handed_back;
                st.held.insert(due, entry);
                control.held(self, due);
            }
            Admit::Leave(why) => self.leave(st, entry, why),
        }
    }

    /// Keeps a pinned message out of the pending ones (see [`Queue::pin`]); gives any
    /// other back.
    fn set_aside(st: &mut State, entry: Entry) -> Option<Entry> {
        if st.pins.is_empty() || !st.pins.contains_key(&entry.message.id) {
            return Some(entry);
        }
        st.aside.insert(entry.message.id, entry);
        None
    }

    /// Pins message `id` to the remote group `group` (a bridge's pin recovered from the
    /// journal): until [`Queue::unpin`] or its ack it is never pending here, so no local
    /// consumer and no other group's bridge gets it; only [`Queue::claim_pinned`] hands it
    /// to that group's bridge. Call before the message is enqueued or read back.
    pub fn pin(&self, id: MessageId, group: Arc<str>) {
        self.state.lock().pins.insert(id, group);
    }

    /// Hands every message pinned to `group` and waiting here to consumer `key` (a bridge
    /// to that group), whatever its prefetch; returns their ids.
    pub fn claim_pinned(self: &Arc<Self>, key: ConsumerKey, group: &str) -> Vec<MessageId> {
        let mut st = self.state.lock();
        if st.aside.is_empty() {
            return Vec::new();
        }
        let Some(idx) = st.consumers.iter().position(|c| c.handle.key == key && !c.closed) else { return Vec::new() };
        let ids: Vec<MessageId> = st.aside.keys().filter(|id| st.pins.get(*id).is_some_and(|g| **g == *group)).copied().collect();
        for id in &ids {
            if let Some(entry) = st.aside.remove(id) {
                self.deliver(&mut st, idx, entry, false);
            }
        }
        ids
    }

    /// Ends the pins of `ids` (unknown ones are skipped): those waiting here become pending.
    pub fn unpin(self: &Arc<Self>, ids: &[MessageId]) {
        let mut st = self.state.lock();
        if st.pins.is_empty() {
            return;
        }
        let mut back = false;
        for id in ids {
            if st.pins.remove(id).is_some() {
                if let Some(entry) = st.aside.remove(id) {
                    self.admit(&mut st, entry, false);
                    back = true;
                }
            }
        }
        if back {
            self.dispatch_locked(&mut st);
        }
    }

    /// Takes `entry` (pending or held no more) out of the queue's bytes and hands it to
    /// the broker's [`Control`] to move.
    fn leave(self: &Arc<Self>, st: &mut State, entry: Entry, why: Leaving) {
        let size = entry.message.footprint();
        st.bytes = st.bytes.saturating_sub(size);
        self.memory.release(size);
        match self.control.get() {
            Some(control) => control.leave(self, entry, why),
            None => tracing::warn!(queue = %self.name, id = entry.message.id.0, ?why, "message left its queue with nobody to move it"),
        }
    }

    /// Puts the held messages due at `now` back among the pending ones and dispatches.
    pub(super) fn release_held(self: &Arc<Self>, now: u64) {
        let mut st = self.state.lock();
        let due = st.held.take_due(now);
        if due.is_empty() {
            return;
        }
        if let Some(control) = self.control.get() {
            control.unheld(due.len());
        }
        for entry in due {
            self.push_pending(&mut st, entry);
        }
        self.dispatch_locked(&mut st);
    }

    /// Takes the pending and held messages expired at `now` out of the queue (to be
    /// dropped or moved); returns how many.
    pub(super) fn expire(self: &Arc<Self>, now: u64) -> usize {
        let mut st = self.state.lock();
        let expired: Vec<Slot> =
            st.pending.iter().filter(|(_, e)| e.message.properties.expired(now)).map(|(slot, _)| *slot).collect();
        let mut gone: Vec<Entry> = expired.into_iter().filter_map(|slot| self.take_pending(&mut st, slot)).collect();
        let held = st.held.take_expired(now);
        if let Some(control) = self.control.get() {
            control.unheld(held.len());
        }
        gone.extend(held);
        let n = gone.len();
        for entry in gone {
            self.leave(&mut st, entry, Leaving::Expired);
        }
        n
    }

    pub fn snapshot(&self) -> QueueSnapshot {
        let st = self.state.lock();
        QueueSnapshot {
            name: self.name.to_string(),
            kind: self.kind,
            depth: st.pending.len() + st.held.len() + st.aside.len(),
            in_flight: st.consumers.iter().map(|c| c.in_flight.len()).sum(),
            consumers: st.consumers.len(),
            bytes: st.bytes,
            enqueued_total: st.enqueued_total,
            acked_total: st.acked_total,
            groups: st.groups.bindings.len(),
            paged: st.paged.count(),
            paged_bytes: st.paged.bytes(),
        }
    }

    /// A page of what a browser sees (`SUBSCRIBE` with `browser:true`): up to `limit`
    /// messages this queue holds, waiting (held until a scheduled time too) or delivered and
    /// not yet acknowledged, with ids after `after` and below `below`, in id order. Nothing is taken or marked: consumers
    /// get the same messages as if nobody browsed. A browser pages through a queue with
    /// the last id of each page, so memory stays bounded by `limit` however deep the queue.
    pub fn browse(&self, after: Option<MessageId>, below: MessageId, limit: usize) -> Vec<Arc<Message>> {
        let st = self.state.lock();
        let mut page: Vec<Arc<Message>> = st.pending.by_id(after, below, limit).into_iter().map(|e| Arc::clone(&e.message)).collect();
        // In flight: at most the consumers' prefetch windows.
        let in_range = |id: MessageId| after.is_none_or(|a| id > a) && id < below;
        let delivered = st.consumers.iter().flat_map(|c| c.in_flight.values()).map(|h| &h.entry.message).filter(|m| in_range(m.id));
        page.extend(delivered.cloned());
        // Held until their time (scheduled, or waiting out a redelivery delay).
        page.extend(st.held.messages().filter(|m| in_range(m.id)).cloned());
        // Pinned to a remote group, waiting for its bridge.
        page.extend(st.aside.values().map(|e| &e.message).filter(|m| in_range(m.id)).cloned());
        page.sort_by_key(|m| m.id);
        page.dedup_by_key(|m| m.id);
        page.truncate(limit);
        page
    }

    /// The first `limit` pending messages in id order (not those in flight), and how many
    /// are pending in all: what an admin browse shows. Nothing is taken.
    pub fn peek_pending(&self, limit: usize) -> (Vec<Entry>, usize) {
        let st = self.state.lock();
        (st.pending.by_id(None, MessageId(u64::MAX), limit).into_iter().cloned().collect(), st.pending.len())
    }

    /// The ids of the first `limit` pending messages with ids below `below`, in id order.
    pub fn pending_ids(&self, below: MessageId, limit: usize) -> Vec<MessageId> {
        self.state.lock().pending.by_id(None, below, limit).iter().map(|e| e.message.id).collect()
    }

    /// Takes the pending messages among `ids` out of the queue (an admin delete, purge or
    /// move); those in flight or gone are left alone. Their bytes are freed here; the
    /// caller journals their removal, or [`Queue::restore`]s them when that fails.
    pub fn remove_pending(self: &Arc<Self>, ids: &[MessageId]) -> Vec<Entry> {
        let mut st = self.state.lock();
        let slots: Vec<Slot> = ids.iter().filter_map(|id| st.pending.get_id(*id).map(Slot::of)).collect();
        let taken: Vec<Entry> = slots.into_iter().filter_map(|slot| self.take_pending(&mut st, slot)).collect();
        let freed: usize = taken.iter().map(|e| e.message.footprint()).sum();
        st.bytes -= freed;
        self.memory.release(freed);
        // A removed message may have held back the rest of its group.
        self.dispatch_locked(&mut st);
        taken
    }

    /// Puts back what [`Queue::remove_pending`] took, in id order, as it was.
    pub fn restore(self: &Arc<Self>, entries: Vec<Entry>) {
        let size: usize = entries.iter().map(|e| e.message.footprint()).sum();
        self.memory.add(size);
        let mut st = self.state.lock();
        st.bytes += size;
        for entry in entries {
            self.push_pending(&mut st, entry);
        }
        self.dispatch_locked(&mut st);
    }

    /// Drops every message (a topic subscriber's queue when it unsubscribes).
    pub fn purge(&self) {
        let mut st = self.state.lock();
        let freed = st.bytes;
        st.pending.clear();
        st.aside.clear();
        st.pins.clear();
        let held = st.held.clear();
        if let Some(control) = self.control.get() {
            control.unheld(held);
        }
        st.grouped_pending = 0;
        st.undecided.clear();
        st.groups = Groups::default();
        for c in &mut st.consumers {
            c.in_flight.clear();
            c.groups.clear();
        }
        st.bytes = 0;
        self.memory.release(freed);
    }
}

fn take_in_flight(st: &mut State, key: ConsumerKey, tag: u64, cumulative: bool) -> Result<Vec<Held>, AckError> {
    let c = st.consumers.iter_mut().find(|c| c.handle.key == key).ok_or(AckError::UnknownConsumer)?;
    if !c.in_flight.contains_key(&tag) {
        return Err(AckError::NotInFlight);
    }
    if !cumulative {
        return Ok(c.in_flight.remove(&tag).into_iter().collect());
    }
    let rest = c.in_flight.split_off(&(tag + 1));
    let taken = std::mem::replace(&mut c.in_flight, rest);
    Ok(taken.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::message::Message;

    fn entry(id: u64) -> Entry {
        entry_with(id, vec![])
    }

    fn entry_with(id: u64, headers: Vec<(String, String)>) -> Entry {
        Entry::for_test(id, headers)
    }

    /// Message `id` of group `group`.
    fn grouped(id: u64, group: &str) -> Entry {
        entry_with(id, vec![("JMSXGroupID".into(), group.into())])
    }

    /// Message `id` closing group `group` (`JMSXGroupSeq: -1`).
    fn closing(id: u64, group: &str) -> Entry {
        entry_with(id, vec![("JMSXGroupID".into(), group.into()), ("JMSXGroupSeq".into(), "-1".into())])
    }

    /// Message `id` of group `group`, owned as `owner` says.
    fn owned(id: u64, group: &str, owner: GroupOwner) -> Entry {
        let mut e = grouped(id, group);
        let message = Message {
            id: e.message.id,
            destination: Arc::clone(&e.message.destination),
            headers: e.message.headers.clone(),
            body: e.message.body.clone(),
            persistent: true,
            group: Some(MessageGroup::new(Arc::from(group), false, owner)),
            properties: e.message.properties,
        };
        e.message = Arc::new(message);
        e
    }

    /// (message id, tag, group_first) of what reached a consumer.
    fn received(rx: &mut mpsc::UnboundedReceiver<Outbound>) -> Vec<(u64, u64, bool)> {
        let mut out = vec![];
        while let Ok(Outbound::Deliver(d)) = rx.try_recv() {
            out.push((d.entry.message.id.0, d.tag, d.group_first));
        }
        out
    }

    fn ids(got: &[(u64, u64, bool)]) -> Vec<u64> {
        got.iter().map(|d| d.0).collect()
    }

    fn consumer(key: u64, prefetch: usize, mode: AckMode) -> (ConsumerHandle, mpsc::UnboundedReceiver<Outbound>) {
        ConsumerHandle::for_test(key, prefetch, mode)
    }

    fn delivered(rx: &mut mpsc::UnboundedReceiver<Outbound>) -> Vec<(u64, u64, bool)> {
        let mut out = vec![];
        while let Ok(Outbound::Deliver(d)) = rx.try_recv() {
            out.push((d.entry.message.id.0, d.tag, d.entry.redelivered));
        }
        out
    }

    fn queue() -> Arc<Queue> {
        queue_with_max_groups(1000)
    }

    fn queue_with_max_groups(max_groups: usize) -> Arc<Queue> {
        Queue::new(Arc::from("/queue/q"), QueueKind::Anycast, Arc::new(Memory::new(1 << 20, 1 << 20)), Arc::default(), max_groups)
    }

    #[test]
    fn given_browse_should_page_through_pending_and_in_flight_without_taking_anything() {
        let q = queue();
        let (a, mut ra) = consumer(1, 2, AckMode::ClientIndividual);
        q.add_consumer(a);
        for i in 0..7 {
            q.enqueue(entry(i));
        }
        assert_eq!(ids(&delivered(&mut ra)), [0, 1]);
        let page = |after: Option<u64>, below: u64| -> Vec<u64> {
            q.browse(after.map(MessageId), MessageId(below), 3).iter().map(|m| m.id.0).collect()
        };
        // In flight (0, 1) and waiting (2..) alike, in id order, three at a time.
        assert_eq!(page(None, 100), [0, 1, 2]);
        assert_eq!(page(Some(2), 100), [3, 4, 5]);
        assert_eq!(page(Some(5), 100), [6]);
        // Nothing at or past the bound.
        assert_eq!(page(Some(2), 5), [3, 4]);
        let snap = q.snapshot();
        assert_eq!((snap.depth, snap.in_flight), (5, 2));
        assert!(delivered(&mut ra).is_empty(), "browsing dispatched");
    }

    #[test]
    fn given_two_consumers_when_messages_arrive_should_alternate() {
        let q = queue();
        let (a, mut ra) = consumer(1, 10, AckMode::ClientIndividual);
        let (b, mut rb) = consumer(2, 10, AckMode::ClientIndividual);
        q.add_consumer(a);
        q.add_consumer(b);
        for i in 0..4 {
            q.enqueue(entry(i));
        }
        assert_eq!(delivered(&mut ra).iter().map(|d| d.0).collect::<Vec<_>>(), vec![0, 2]);
        assert_eq!(delivered(&mut rb).iter().map(|d| d.0).collect::<Vec<_>>(), vec![1, 3]);
    }

    #[test]
    fn given_prefetch_when_full_should_hold_back_until_ack() {
        let q = queue();
        let (a, mut ra) = consumer(1, 2, AckMode::ClientIndividual);
        q.add_consumer(a);
        for i in 0..5 {
            q.enqueue(entry(i));
        }
        let got = delivered(&mut ra);
        assert_eq!(got.len(), 2);
        assert_eq!(q.snapshot().depth, 3);
        q.ack(ConsumerKey(1), got[0].1, false).unwrap();
        assert_eq!(delivered(&mut ra).len(), 1);
    }

    #[test]
    fn given_consumer_leaves_should_redeliver_in_flight_marked() {
        let q = queue();
        let (a, mut ra) = consumer(1, 10, AckMode::Client);
        q.add_consumer(a);
        q.enqueue(entry(7));
        assert_eq!(delivered(&mut ra).len(), 1);
        q.remove_consumer(ConsumerKey(1));
        let (b, mut rb) = consumer(2, 10, AckMode::Client);
        q.add_consumer(b);
        assert_eq!(delivered(&mut rb), vec![(7, 0, true)]);
    }

    #[test]
    fn given_client_mode_when_acking_last_should_settle_all_before() {
        let q = queue();
        let (a, mut ra) = consumer(1, 10, AckMode::Client);
        q.add_consumer(a);
        for i in 0..3 {
            q.enqueue(entry(i));
        }
        let got = delivered(&mut ra);
        let settled = q.ack(ConsumerKey(1), got[1].1, true).unwrap();
        assert_eq!(settled.len(), 2);
        assert_eq!(q.snapshot().in_flight, 1);
        assert_eq!(q.ack(ConsumerKey(1), got[1].1, true).unwrap_err(), AckError::NotInFlight);
    }

    #[test]
    fn given_nack_should_redeliver_first() {
        let q = queue();
        let (a, mut ra) = consumer(1, 1, AckMode::ClientIndividual);
        q.add_consumer(a);
        q.enqueue(entry(1));
        q.enqueue(entry(2));
        let got = delivered(&mut ra);
        q.nack(ConsumerKey(1), got[0].1, false).unwrap();
        assert_eq!(delivered(&mut ra), vec![(1, 1, true)]);
    }

    #[test]
    fn given_closed_outbox_should_keep_message_pending() {
        let q = queue();
        let (a, ra) = consumer(1, 10, AckMode::Auto);
        drop(ra);
        q.add_consumer(a);
        q.enqueue(entry(1));
        assert_eq!(q.snapshot().depth, 1);
    }

    #[test]
    fn given_grouped_messages_should_pin_each_group_to_one_consumer() {
        let q = queue();
        let (a, mut ra) = consumer(1, 100, AckMode::ClientIndividual);
        let (b, mut rb) = consumer(2, 100, AckMode::ClientIndividual);
        q.add_consumer(a);
        q.add_consumer(b);
        for i in 0..10 {
            q.enqueue(grouped(i, if i % 2 == 0 { "even" } else { "odd" }));
        }
        let (got_a, got_b) = (received(&mut ra), received(&mut rb));
        assert_eq!(ids(&got_a), vec![0, 2, 4, 6, 8]);
        assert_eq!(ids(&got_b), vec![1, 3, 5, 7, 9]);
        assert_eq!(got_a.iter().map(|d| d.2).collect::<Vec<_>>(), vec![true, false, false, false, false]);
        assert_eq!(q.group_bindings(), 2);
        assert_eq!(q.snapshot().groups, 2);
    }

    #[test]
    fn given_three_consumers_and_thirty_groups_should_bind_ten_each() {
        let q = queue();
        let mut rxs = vec![];
        for key in 1..=3 {
            let (c, rx) = consumer(key, 1000, AckMode::ClientIndividual);
            q.add_consumer(c);
            rxs.push(rx);
        }
        for round in 0..3 {
            for g in 0..30 {
                q.enqueue(grouped(round * 30 + g, &format!("g{g}")));
            }
        }
        let mut owner: HashMap<u64, usize> = HashMap::new();
        for (i, rx) in rxs.iter_mut().enumerate() {
            let got = received(rx);
            assert_eq!(got.len(), 30, "consumer {i} got {} messages", got.len());
            assert_eq!(got.iter().filter(|d| d.2).count(), 10, "consumer {i} should own 10 groups");
            for d in got {
                assert_eq!(*owner.entry(d.0 % 30).or_insert(i), i, "group g{} reached two consumers", d.0 % 30);
            }
        }
    }

    #[test]
    fn given_nack_in_group_should_redeliver_in_order_to_the_same_consumer() {
        let q = queue();
        let (a, mut ra) = consumer(1, 1, AckMode::ClientIndividual);
        let (b, mut rb) = consumer(2, 1, AckMode::ClientIndividual);
        q.add_consumer(a);
        q.add_consumer(b);
        for i in 1..=3 {
            q.enqueue(grouped(i, "g"));
        }
        let first = received(&mut ra);
        assert_eq!(ids(&first), vec![1]);
        q.nack(ConsumerKey(1), first[0].1, false).unwrap();
        let again = received(&mut ra);
        assert_eq!(again, vec![(1, 1, false)], "the nacked message comes back first, to the group's consumer");
        q.ack(ConsumerKey(1), again[0].1, false).unwrap();
        let next = received(&mut ra);
        assert_eq!(ids(&next), vec![2]);
        assert!(received(&mut rb).is_empty(), "the other consumer never gets the group");
    }

    #[test]
    fn given_group_owner_leaves_should_rebind_with_first_flag_and_order() {
        let q = queue();
        let (a, mut ra) = consumer(1, 10, AckMode::ClientIndividual);
        let (b, mut rb) = consumer(2, 10, AckMode::ClientIndividual);
        q.add_consumer(a);
        q.add_consumer(b);
        q.enqueue(grouped(1, "g"));
        q.enqueue(grouped(2, "h"));
        q.enqueue(grouped(3, "g"));
        assert_eq!(received(&mut ra), vec![(1, 0, true), (3, 1, false)]);
        assert_eq!(received(&mut rb), vec![(2, 0, true)]);
        q.remove_consumer(ConsumerKey(1));
        q.enqueue(grouped(4, "g"));
        assert_eq!(received(&mut rb), vec![(1, 1, true), (3, 2, false), (4, 3, false)]);
        assert_eq!(q.group_bindings(), 2);
    }

    #[test]
    fn given_closing_message_should_unbind_and_next_message_binds_afresh() {
        let q = queue();
        let (a, mut ra) = consumer(1, 10, AckMode::ClientIndividual);
        let (b, mut rb) = consumer(2, 10, AckMode::ClientIndividual);
        q.add_consumer(a);
        q.add_consumer(b);
        q.enqueue(grouped(1, "g"));
        q.enqueue(closing(2, "g"));
        assert_eq!(received(&mut ra), vec![(1, 0, true), (2, 1, false)]);
        assert_eq!(q.group_bindings(), 0);
        q.enqueue(grouped(3, "g"));
        assert_eq!(received(&mut rb), vec![(3, 0, true)], "a new binding, to the consumer next in turn");
        // Settling what the closed binding delivered leaves the new binding busy.
        q.ack(ConsumerKey(1), 0, false).unwrap();
        q.ack(ConsumerKey(1), 1, false).unwrap();
        let st = q.state.lock();
        assert_eq!(st.groups.bindings["g"].in_flight, 1);
        assert!(st.groups.idle.is_empty());
    }

    #[test]
    fn given_max_groups_should_evict_the_least_recently_used_idle_binding_and_busy_ones_wait() {
        let q = queue_with_max_groups(2);
        let (a, mut ra) = consumer(1, 10, AckMode::ClientIndividual);
        q.add_consumer(a);
        q.enqueue(grouped(1, "g1"));
        q.ack(ConsumerKey(1), 0, false).unwrap();
        q.enqueue(grouped(2, "g2"));
        q.enqueue(grouped(3, "g3"));
        assert_eq!(received(&mut ra), vec![(1, 0, true), (2, 1, true), (3, 2, true)]);
        assert_eq!(q.groups_evicted.get(), 1, "idle g1 made room for g3");
        // g2 and g3 are in flight: a fourth group waits, and does not block an ungrouped one.
        q.enqueue(grouped(4, "g4"));
        q.enqueue(entry(5));
        assert_eq!(received(&mut ra), vec![(5, 3, false)]);
        assert_eq!(q.snapshot().depth, 1);
        q.ack(ConsumerKey(1), 1, false).unwrap();
        assert_eq!(received(&mut ra), vec![(4, 4, true)]);
        assert_eq!(q.groups_evicted.get(), 2);
        assert_eq!(q.group_bindings(), 2);
        // g1 was evicted: its next message binds afresh (g4 became idle first once acked).
        q.ack(ConsumerKey(1), 4, false).unwrap();
        q.enqueue(grouped(6, "g1"));
        assert_eq!(received(&mut ra), vec![(6, 5, true)]);
    }

    #[test]
    fn given_group_consumer_full_should_not_block_other_groups_or_ungrouped() {
        let q = queue();
        let (a, mut ra) = consumer(1, 1, AckMode::ClientIndividual);
        let (b, mut rb) = consumer(2, 10, AckMode::ClientIndividual);
        q.add_consumer(a);
        q.add_consumer(b);
        q.enqueue(grouped(1, "g"));
        q.enqueue(grouped(2, "g"));
        q.enqueue(entry(3));
        q.enqueue(grouped(4, "h"));
        q.enqueue(grouped(5, "g"));
        assert_eq!(ids(&received(&mut ra)), vec![1]);
        assert_eq!(ids(&received(&mut rb)), vec![3, 4]);
        assert_eq!(q.snapshot().depth, 2);
        q.ack(ConsumerKey(1), 0, false).unwrap();
        assert_eq!(ids(&received(&mut ra)), vec![2]);
    }

    #[test]
    fn given_undecided_groups_should_hold_them_until_decided_then_deliver_in_order() {
        let q = queue();
        let (a, mut ra) = consumer(1, 10, AckMode::ClientIndividual);
        q.add_consumer(a);
        let mut rn = network_consumer(&q, 9);
        q.enqueue(owned(1, "g", GroupOwner::Undecided));
        q.enqueue(owned(2, "h", GroupOwner::Undecided));
        q.enqueue(owned(3, "g", GroupOwner::Undecided));
        q.enqueue(entry(4));
        assert_eq!(ids(&received(&mut ra)), vec![4], "undecided groups go nowhere, the rest flows");
        assert!(received(&mut rn).is_empty());
        assert_eq!(q.undecided_groups(), vec![Arc::<str>::from("g"), Arc::from("h")]);
        assert!(q.has_undecided("g") && q.has_undecided_groups());
        q.decide_groups(&HashMap::from([(Arc::<str>::from("g"), GroupOwner::Here)]));
        assert_eq!(ids(&received(&mut ra)), vec![1, 3], "decided: delivered in the order stored");
        assert!(!q.has_undecided("g") && q.has_undecided("h"));
        q.decide_groups(&HashMap::from([(Arc::<str>::from("h"), GroupOwner::Elsewhere(Arc::from("g2")))]));
        assert!(received(&mut ra).is_empty(), "owned elsewhere: never to a local consumer");
        assert_eq!(ids(&received(&mut rn)), vec![2]);
        assert!(!q.has_undecided_groups());
    }

    fn network_consumer(q: &Arc<Queue>, key: u64) -> mpsc::UnboundedReceiver<Outbound> {
        let (h, rx) = consumer(key, 10, AckMode::ClientIndividual);
        q.add_network_consumer(h, NetworkConsumer { priority: -1, accepts: Arc::new(|_: &Message, _: bool| true), takes_bound_groups: Arc::new(|| false) });
        rx
    }

    #[test]
    fn given_group_owned_here_should_never_go_to_a_network_consumer() {
        let q = queue();
        let mut rn = network_consumer(&q, 9);
        q.enqueue(owned(1, "g", GroupOwner::Here));
        q.enqueue(owned(2, "h", GroupOwner::Any));
        assert_eq!(ids(&received(&mut rn)), vec![2], "stranded: only the group owned by anyone crosses");
        let (a, mut ra) = consumer(1, 10, AckMode::ClientIndividual);
        q.add_consumer(a);
        assert_eq!(received(&mut ra), vec![(1, 0, true)]);
    }

    #[test]
    fn given_group_owned_elsewhere_should_go_to_network_consumers_only() {
        let q = queue();
        let (a, mut ra) = consumer(1, 10, AckMode::ClientIndividual);
        q.add_consumer(a);
        q.enqueue(owned(1, "g", GroupOwner::Elsewhere(Arc::from("g2"))));
        assert!(received(&mut ra).is_empty());
        assert_eq!(q.snapshot().depth, 1);
        let mut rn = network_consumer(&q, 9);
        assert_eq!(received(&mut rn), vec![(1, 0, true)]);
        q.enqueue(owned(2, "g", GroupOwner::Elsewhere(Arc::from("g2"))));
        q.enqueue(entry(3));
        assert_eq!(ids(&received(&mut rn)), vec![2]);
        assert_eq!(ids(&received(&mut ra)), vec![3]);
    }

    fn selecting(key: u64, prefetch: usize, selector: &str) -> (ConsumerHandle, mpsc::UnboundedReceiver<Outbound>) {
        let (mut h, rx) = consumer(key, prefetch, AckMode::ClientIndividual);
        h.selector = Some(crate::selector::Selector::parse(selector).unwrap());
        (h, rx)
    }

    fn in_region(id: u64, region: &str) -> Entry {
        entry_with(id, vec![("region".into(), region.into())])
    }

    #[test]
    fn given_selecting_consumers_should_each_get_what_they_select_and_leave_the_rest_queued() {
        let q = queue();
        let (eu, mut r_eu) = selecting(1, 100, "region = 'eu'");
        let (us, mut r_us) = selecting(2, 100, "region = 'us'");
        q.add_consumer(eu);
        q.add_consumer(us);
        for (id, region) in [(1, "eu"), (2, "us"), (3, "apac"), (4, "eu"), (5, "eu"), (6, "us")] {
            q.enqueue(in_region(id, region));
        }
        assert_eq!(ids(&received(&mut r_eu)), vec![1, 4, 5]);
        assert_eq!(ids(&received(&mut r_us)), vec![2, 6]);
        assert_eq!(q.snapshot().depth, 1, "nobody selects apac: it stays");
        let (plain, mut r_plain) = consumer(3, 100, AckMode::ClientIndividual);
        q.add_consumer(plain);
        assert_eq!(ids(&received(&mut r_plain)), vec![3], "a later plain consumer gets it");
    }

    #[test]
    fn given_a_plain_and_a_selecting_consumer_should_keep_fifo_for_the_plain_one() {
        let q = queue();
        let (eu, mut r_eu) = selecting(1, 100, "region = 'eu'");
        let (plain, mut r_plain) = consumer(2, 100, AckMode::ClientIndividual);
        q.add_consumer(eu);
        q.add_consumer(plain);
        for (id, region) in [(1, "us"), (2, "us"), (3, "eu"), (4, "us"), (5, "eu")] {
            q.enqueue(in_region(id, region));
        }
        let (got_eu, got_plain) = (ids(&received(&mut r_eu)), ids(&received(&mut r_plain)));
        assert!(got_eu.iter().all(|id| [3, 5].contains(id)), "{got_eu:?}");
        assert!(got_plain.windows(2).all(|w| w[0] < w[1]), "the plain consumer gets messages in order: {got_plain:?}");
        assert_eq!(got_eu.len() + got_plain.len(), 5);
    }

    #[test]
    fn given_a_selecting_consumer_full_should_wait_and_then_take_the_next_match() {
        let q = queue();
        let (eu, mut r_eu) = selecting(1, 1, "region = 'eu'");
        q.add_consumer(eu);
        for (id, region) in [(1, "us"), (2, "eu"), (3, "us"), (4, "eu")] {
            q.enqueue(in_region(id, region));
        }
        let first = received(&mut r_eu);
        assert_eq!(ids(&first), vec![2]);
        q.ack(ConsumerKey(1), first[0].1, false).unwrap();
        assert_eq!(ids(&received(&mut r_eu)), vec![4]);
        assert_eq!(q.snapshot().depth, 2);
    }

    #[test]
    fn given_a_match_past_the_scan_limit_should_wait_until_the_messages_ahead_are_consumed() {
        let q = queue();
        let (eu, mut r_eu) = selecting(1, 100, "region = 'eu'");
        q.add_consumer(eu);
        let filler = SELECTOR_SCAN as u64;
        for id in 0..filler {
            q.enqueue(in_region(id, "us"));
        }
        q.enqueue(in_region(filler, "eu"));
        assert!(received(&mut r_eu).is_empty(), "past SELECTOR_SCAN: not found in this dispatch");
        let (plain, mut r_plain) = consumer(2, 1, AckMode::Auto);
        q.add_consumer(plain);
        let took = received(&mut r_plain);
        assert_eq!(ids(&took), vec![0]);
        q.ack(ConsumerKey(2), took[0].1, false).unwrap();
        assert_eq!(ids(&received(&mut r_eu)), vec![filler], "within reach once the head moved");
    }

    #[test]
    fn given_grouped_messages_should_still_honour_selectors() {
        let q = queue();
        let (eu, mut r_eu) = selecting(1, 100, "region = 'eu'");
        let (plain, mut r_plain) = consumer(2, 100, AckMode::ClientIndividual);
        q.add_consumer(eu);
        q.add_consumer(plain);
        let grouped_in = |id: u64, region: &str| entry_with(id, vec![("JMSXGroupID".into(), format!("g{id}")), ("region".into(), region.into())]);
        q.enqueue(grouped_in(1, "us"));
        q.enqueue(grouped_in(2, "us"));
        q.enqueue(grouped_in(3, "eu"));
        let got_eu = ids(&received(&mut r_eu));
        assert!(got_eu.iter().all(|id| *id == 3), "{got_eu:?}");
        assert_eq!(got_eu.len() + received(&mut r_plain).len(), 3);
    }

    #[test]
    fn given_a_topic_subscription_selector_should_want_only_selected_copies() {
        let q = Queue::new(Arc::from("/topic/t"), QueueKind::TopicSubscription, Arc::new(Memory::new(1 << 20, 1 << 20)), Arc::default(), 10);
        assert!(q.wants(&in_region(1, "us").message));
        q.select(crate::selector::Selector::parse("region = 'eu'").unwrap());
        assert!(q.wants(&in_region(2, "eu").message));
        assert!(!q.wants(&in_region(3, "us").message));
        assert!(!q.wants(&entry(4).message));
    }

    #[test]
    fn given_priorities_should_dispatch_highest_first_and_fifo_within_one() {
        let q = queue();
        let prio = |id: u64, p: &str| entry_with(id, vec![("priority".into(), p.into())]);
        for e in [entry(1), prio(2, "9"), prio(3, "0"), entry(4), prio(5, "9")] {
            q.enqueue(e);
        }
        let (a, mut ra) = consumer(1, 1, AckMode::ClientIndividual);
        q.add_consumer(a);
        let mut order = vec![];
        for _ in 0..5 {
            let got = received(&mut ra);
            order.extend(ids(&got));
            q.ack(ConsumerKey(1), got[0].1, false).unwrap();
        }
        assert_eq!(order, [2, 5, 1, 4, 3]);
    }

    #[test]
    fn given_topic_subscription_should_ignore_groups() {
        let q = Queue::new(Arc::from("/topic/t"), QueueKind::TopicSubscription, Arc::new(Memory::new(1 << 20, 1 << 20)), Arc::default(), 10);
        let (a, mut ra) = consumer(1, 10, AckMode::ClientIndividual);
        q.add_consumer(a);
        q.enqueue(grouped(1, "g"));
        assert_eq!(received(&mut ra), vec![(1, 0, false)]);
        assert_eq!(q.group_bindings(), 0);
    }

    #[test]
    fn given_a_pinned_message_should_keep_it_from_every_consumer_but_its_claim_until_unpinned() {
        let q = queue();
        let (a, mut ra) = consumer(1, 10, AckMode::ClientIndividual);
        q.add_consumer(a);
        let mut rn = network_consumer(&q, 9);
        q.pin(MessageId(1), Arc::from("g2"));
        q.pin(MessageId(2), Arc::from("g2"));
        for i in 1..4 {
            q.enqueue(entry(i));
        }
        assert_eq!(ids(&received(&mut ra)), [3], "the pinned ones wait for their group's bridge");
        assert!(received(&mut rn).is_empty());
        assert_eq!(q.snapshot().depth, 2);
        assert!(q.claim_pinned(ConsumerKey(9), "g3").is_empty(), "a bridge to another group gets nothing");
        assert_eq!(q.claim_pinned(ConsumerKey(9), "g2"), [MessageId(1), MessageId(2)]);
        let got = received(&mut rn);
        assert_eq!(ids(&got), [1, 2]);
        q.ack(ConsumerKey(9), got[0].1, false).expect("ack 1");
        // The bridge goes: its pinned message waits again, until the pin ends.
        q.remove_consumer(ConsumerKey(9));
        assert!(received(&mut ra).is_empty());
        q.unpin(&[MessageId(1), MessageId(2)]);
        assert_eq!(ids(&received(&mut ra)), [2]);
        assert_eq!(q.snapshot().depth, 0);
    }
}
