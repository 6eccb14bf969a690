//! One queue: pending messages in id order, its consumers with what each has in flight,
//! and fair dispatch between them. A topic subscription is a queue with one consumer.
//!
//! All state sits behind one short-held lock; nothing here blocks or does I/O. Deliveries
//! go to connections through unbounded channels whose depth the prefetch window bounds.

use super::memory::{Memory, Reservation};
use super::message::{ConsumerKey, Delivery, Entry};
use crate::journal::MessageId;
use parking_lot::Mutex;
use std::collections::BTreeMap;
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
    memory: Arc<Memory>,
    /// Told whenever a consumer comes or goes (network bridges advertise demand from it).
    changes: Arc<ConsumerChanges>,
    /// How many of its consumers are network bridges'.
    network_consumers: AtomicUsize,
    state: Mutex<State>,
    /// Reclaim sweeps that found this queue unused in a row (see `Broker::reclaim_idle`).
    pub(super) idle: IdleSweeps,
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

#[derive(Default)]
struct State {
    pending: BTreeMap<MessageId, Entry>,
    consumers: Vec<Consumer>,
    /// Round-robin cursor into `consumers`.
    next: usize,
    bytes: usize,
    /// Bytes of messages accepted for this queue and not enqueued yet (see [`Reservation`]).
    reserved: usize,
    enqueued_total: u64,
    acked_total: u64,
}

struct Consumer {
    handle: ConsumerHandle,
    /// Delivered and not yet settled, by delivery tag (delivery order).
    in_flight: BTreeMap<u64, Entry>,
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
}

impl Queue {
    pub fn new(name: Arc<str>, kind: QueueKind, memory: Arc<Memory>, changes: Arc<ConsumerChanges>) -> Arc<Queue> {
        Arc::new(Queue { name, kind, memory, changes, network_consumers: AtomicUsize::new(0), state: Mutex::new(State::default()), idle: IdleSweeps::default() })
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
        st.pending.insert(entry.message.id, entry);
        self.dispatch_locked(&mut st);
    }

    /// True when the queue holds nothing and nobody consumes from it: it may be reclaimed.
    pub fn is_unused(&self) -> bool {
        let st = self.state.lock();
        st.pending.is_empty() && st.consumers.is_empty() && st.bytes == 0 && st.reserved == 0
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
            st.consumers.push(Consumer { handle, in_flight: BTreeMap::new(), next_tag: 0, closed: false, network });
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
        // Without network consumers (every subscription but a bridge's conduit): no lock.
        if self.network_consumers.load(Ordering::Relaxed) == 0 {
            return true;
        }
        let st = self.state.lock();
        st.consumers.is_empty() || st.consumers.iter().any(|c| c.network.as_ref().is_none_or(|n| (n.accepts)(message, false)))
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
    /// marked redelivered, for the other consumers.
    pub fn remove_consumer(self: &Arc<Self>, key: ConsumerKey) {
        let local = {
            let mut st = self.state.lock();
            let Some(pos) = st.consumers.iter().position(|c| c.handle.key == key) else { return };
            let consumer = st.consumers.remove(pos);
            if st.next > pos {
                st.next -= 1;
            }
            for (_, mut entry) in consumer.in_flight {
                entry.redelivered = true;
                st.pending.insert(entry.message.id, entry);
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
        let taken = take_in_flight(&mut st, key, tag, cumulative)?;
        let freed: usize = taken.iter().map(|e| e.message.footprint()).sum();
        st.bytes -= freed;
        st.acked_total += taken.len() as u64;
        self.memory.release(freed);
        self.dispatch_locked(&mut st);
        Ok(taken)
    }

    /// Returns negatively acknowledged deliveries to the head of the queue, redelivered.
    pub fn nack(self: &Arc<Self>, key: ConsumerKey, tag: u64, cumulative: bool) -> Result<(), AckError> {
        let mut st = self.state.lock();
        let taken = take_in_flight(&mut st, key, tag, cumulative)?;
        for mut entry in taken {
            entry.redelivered = true;
            st.pending.insert(entry.message.id, entry);
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
            .find(|(_, e)| e.message.id == id)
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
    /// takes the first message it accepts within [`NETWORK_SCAN`] of the head.
    fn dispatch_locked(self: &Arc<Self>, st: &mut State) {
        // Nobody here would ever take a message: bridges may carry it anywhere there is
        // demand, even back where it came from. Never for a topic subscription.
        let stranded = self.kind == QueueKind::Anycast && st.consumers.iter().all(|c| c.network.is_some());
        while !st.pending.is_empty() && !st.consumers.is_empty() {
            let n = st.consumers.len();
            let mut chosen: Option<(usize, MessageId)> = None;
            for i in 0..n {
                let idx = (st.next + i) % n;
                let c = &st.consumers[idx];
                if !c.has_room() || chosen.is_some_and(|(best, _)| st.consumers[best].priority() >= c.priority()) {
                    continue;
                }
                let pick = match &c.network {
                    None => st.pending.keys().next().copied(),
                    Some(net) => st
                        .pending
                        .iter()
                        .take(NETWORK_SCAN)
                        .find(|(_, e)| (net.accepts)(&e.message, stranded))
                        .map(|(id, _)| *id),
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
            let c = &mut st.consumers[idx];
            let tag = c.next_tag;
            c.next_tag += 1;
            c.in_flight.insert(tag, entry.clone());
            let delivery = Delivery {
                queue: Arc::clone(self),
                consumer: c.handle.key,
                subscription_id: Arc::clone(&c.handle.subscription_id),
                tag,
                entry,
                auto_ack: c.handle.ack_mode == AckMode::Auto,
            };
            if c.handle.outbox.send(Outbound::Deliver(delivery)).is_err() {
                let key = c.handle.key;
                if let Some(mut entry) = c.in_flight.remove(&tag) {
                    entry.redelivered = false;
                    st.pending.insert(entry.message.id, entry);
                }
                Self::mark_closed(st, key);
            }
        }
    }

    pub fn snapshot(&self) -> QueueSnapshot {
        let st = self.state.lock();
        QueueSnapshot {
            name: self.name.to_string(),
            kind: self.kind,
            depth: st.pending.len(),
            in_flight: st.consumers.iter().map(|c| c.in_flight.len()).sum(),
            consumers: st.consumers.len(),
            bytes: st.bytes,
            enqueued_total: st.enqueued_total,
            acked_total: st.acked_total,
        }
    }

    /// Drops every message (a topic subscriber's queue when it unsubscribes).
    pub fn purge(&self) {
        let mut st = self.state.lock();
        let freed = st.bytes;
        st.pending.clear();
        for c in &mut st.consumers {
            c.in_flight.clear();
        }
        st.bytes = 0;
        self.memory.release(freed);
    }
}

fn take_in_flight(st: &mut State, key: ConsumerKey, tag: u64, cumulative: bool) -> Result<Vec<Entry>, AckError> {
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
    use bytes::Bytes;

    fn entry(id: u64) -> Entry {
        Entry {
            message: Arc::new(Message {
                id: MessageId(id),
                destination: Arc::from("/queue/q"),
                headers: vec![],
                body: Bytes::from_static(b"x"),
                persistent: true,
            }),
            journaled: true,
            redelivered: false,
        }
    }

    fn consumer(key: u64, prefetch: usize, mode: AckMode) -> (ConsumerHandle, mpsc::UnboundedReceiver<Outbound>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let h = ConsumerHandle {
            key: ConsumerKey(key),
            subscription_id: Arc::from(format!("s{key}")),
            ack_mode: mode,
            prefetch,
            outbox: tx,
            kill: CancellationToken::new(),
        };
        (h, rx)
    }

    fn delivered(rx: &mut mpsc::UnboundedReceiver<Outbound>) -> Vec<(u64, u64, bool)> {
        let mut out = vec![];
        while let Ok(Outbound::Deliver(d)) = rx.try_recv() {
            out.push((d.entry.message.id.0, d.tag, d.entry.redelivered));
        }
        out
    }

    fn queue() -> Arc<Queue> {
        Queue::new(Arc::from("/queue/q"), QueueKind::Anycast, Arc::new(Memory::new(1 << 20, 1 << 20)), Arc::default())
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
}
