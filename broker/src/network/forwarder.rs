//! The sending side of a bridge: network consumers on the local destinations the remote
//! wants, and the forwards the remote has not confirmed yet.
//!
//! A forwarder outlives the connections of its link. What it delivered to the remote and
//! did not see confirmed stays in flight on its consumers, pinned to this link, and is sent
//! again when the link is back (to whichever member of the remote group is live then): the
//! remote's duplicate detection stores each message once, and no local consumer gets a copy
//! the remote may also have. Only when the link stays down for [`RELEASE_AFTER`] are those
//! messages handed back to their queues, with a warning that they may now be doubled.
//!
//! The pin outlives this group's failover too: before a journaled message's `Forward`
//! leaves, its pin to the remote group is journaled and durable (replicated to the backups;
//! one record per batch of deliveries, see [`crate::engine::pins`]). The backup that takes
//! over recovers the message pinned and hands it only to a bridge to that group, which
//! claims it at link-up and sends it again.
//!
//! It settles a message (an ack through the engine, with the pin's removal in the same
//! record) only on the remote's `Forwarded`, which the remote sends once the message is as
//! durable there as a client SEND would be; a `ForwardRefused` means the remote did not
//! store it (a remote that cannot tell closes the link instead, see `link`).

use super::demand::{self, Filters, PATH_HEADER};
use crate::cluster::frame::{ClusterFrame, DemandEntry};
use crate::engine::accept::{Settled, OWNER_HEADER};
use crate::engine::dedup;
use crate::engine::message::{ConsumerKey, Delivery, GroupOwner};
use crate::engine::pins::{self, Pin};
use crate::engine::queue::{AckMode, ConsumerHandle, NetworkConsumer, Outbound, Queue};
use crate::engine::{Broker, Target, Topic};
use crate::journal::{JournalError, MessageId};
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use parking_lot::RwLock;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long a link may stay down before its unconfirmed forwards go back to their queues.
pub const RELEASE_AFTER: Duration = Duration::from_secs(60);
/// How long a destination rests after the remote refused one of its messages.
const REFUSAL_PAUSE: Duration = Duration::from_secs(1);

/// How the forwarder's consumers behave (from the connector's config).
#[derive(Debug, Clone)]
pub struct ForwarderConfig {
    /// Names the link in logs and the consumers' subscription ids.
    pub name: String,
    pub own_group: String,
    pub network_ttl: u8,
    /// Below local consumers (-1) or level with them (0).
    pub priority: i8,
    pub prefetch: usize,
    pub filters: Filters,
    /// A queue message with no local consumer left may go back where it came from, or past
    /// networkTTL, to a group whose consumers want it (ActiveMQ's replayWhenNoConsumers).
    pub replay_when_no_consumers: bool,
}

struct Sub {
    queue: Arc<Queue>,
    key: ConsumerKey,
    topic: Option<Arc<Topic>>,
    /// The remote no longer wants it: no new deliveries; detached once nothing is in flight.
    draining: bool,
    /// Resting after a refusal, until then.
    paused_until: Option<Instant>,
    /// Taking new messages (its prefetch is open).
    open: bool,
}

impl Sub {
    /// Opens or closes the consumer's window to what it should be now.
    fn settle_window(&mut self, prefetch: usize, link_up: bool) {
        let open = link_up && !self.draining && self.paused_until.is_none();
        if open != self.open {
            self.queue.set_prefetch(self.key, if open { prefetch } else { 0 });
            self.open = open;
        }
    }
}

struct Unconfirmed {
    queue: Arc<Queue>,
    key: ConsumerKey,
    tag: u64,
    destination: String,
    frame: ClusterFrame,
    message: MessageId,
    /// Its pin's record (a journaled message's), removed with its ack.
    pin: Option<MessageId>,
    /// The pin is durable (or none is needed): the frame may go.
    ready: bool,
}

/// Pin records being made durable: (seq, record) of each forward, and the outcome.
pub type Pinning = BoxFuture<'static, (Vec<(u64, MessageId)>, Result<(), JournalError>)>;

pub struct Forwarder {
    config: ForwarderConfig,
    broker: Arc<Broker>,
    tx: mpsc::UnboundedSender<Outbound>,
    rx: Option<mpsc::UnboundedReceiver<Outbound>>,
    /// The remote group, read by the consumers' filters.
    peer_group: Arc<RwLock<String>>,
    subs: BTreeMap<String, Sub>,
    unconfirmed: BTreeMap<u64, Unconfirmed>,
    /// Forwards whose pin is still to be journaled, as one batch: one is journaled at a
    /// time, so the batch grows with the load.
    to_pin: Vec<u64>,
    /// Pin appends under way, for the session's select loop (see [`Self::take_pinning`]).
    pinning: Option<FuturesOrdered<Pinning>>,
    /// Pins recovered after a failover of this group that this forwarder took (its remote
    /// group's), by message, until the message is delivered to it: (record, queue).
    claimed: HashMap<MessageId, (MessageId, Arc<Queue>)>,
    next_seq: u64,
    down_since: Option<Instant>,
    kill: CancellationToken,
}

impl Forwarder {
    pub fn new(config: ForwarderConfig, broker: Arc<Broker>) -> Forwarder {
        let (tx, rx) = mpsc::unbounded_channel();
        Forwarder {
            config,
            broker,
            tx,
            rx: Some(rx),
            peer_group: Arc::new(RwLock::new(String::new())),
            subs: BTreeMap::new(),
            unconfirmed: BTreeMap::new(),
            to_pin: Vec::new(),
            pinning: Some(FuturesOrdered::new()),
            claimed: HashMap::new(),
            next_seq: 1,
            down_since: Some(Instant::now()),
            kill: CancellationToken::new(),
        }
    }

    /// The deliveries channel, for the session's select loop; give it back with
    /// [`Self::return_deliveries`].
    pub fn take_deliveries(&mut self) -> Option<mpsc::UnboundedReceiver<Outbound>> {
        self.rx.take()
    }

    pub fn return_deliveries(&mut self, rx: mpsc::UnboundedReceiver<Outbound>) {
        self.rx = Some(rx);
    }

    /// The pin appends under way, for the session's select loop; give them back with
    /// [`Self::return_pinning`] (they complete whether polled or not).
    pub fn take_pinning(&mut self) -> FuturesOrdered<Pinning> {
        self.pinning.take().unwrap_or_default()
    }

    pub fn return_pinning(&mut self, pinning: FuturesOrdered<Pinning>) {
        self.pinning = Some(pinning);
    }

    /// The link is up to `peer_group`: everything not yet confirmed goes again, in order,
    /// and what this group pinned to it before a failover is claimed to go again too.
    pub fn link_up(&mut self, peer_group: &str, out: &mpsc::UnboundedSender<ClusterFrame>) {
        let changed = {
            let mut peer = self.peer_group.write();
            let changed = !peer.is_empty() && *peer != peer_group;
            if changed {
                tracing::warn!(link = %self.config.name, was = %peer, now = %peer_group, "the link reaches another group than before");
            }
            *peer = peer_group.to_string();
            changed
        };
        if changed && (!self.unconfirmed.is_empty() || !self.claimed.is_empty()) {
            // Pinned to the other group: never sent here.
            tracing::warn!(link = %self.config.name, unconfirmed = self.unconfirmed.len(), "forwards pinned to the group this link reached before go back to their queues and may be delivered twice if that group stored them");
            self.end_pins();
        }
        // Windows open again with the remote's first demand (see apply_demand).
        self.down_since = None;
        let ready = self.unconfirmed.values().filter(|u| u.ready).count();
        if ready > 0 {
            tracing::info!(link = %self.config.name, resent = ready, "resending forwards the remote had not confirmed");
        }
        for u in self.unconfirmed.values().filter(|u| u.ready) {
            let _ = out.send(u.frame.clone());
        }
        let recovered = self.broker.take_pins(peer_group);
        if !recovered.is_empty() {
            tracing::info!(link = %self.config.name, messages = recovered.len(), "sending again what this group forwarded to the remote before a failover and saw no confirmation of");
            for pin in recovered {
                self.claimed.insert(pin.message, (pin.record, pin.queue));
            }
        }
        self.claim_waiting();
    }

    /// Takes the claimed pinned messages that wait in their queues onto consumers (one that
    /// forwards nothing else where the remote wants nothing from the queue).
    fn claim_waiting(&mut self) {
        if self.claimed.is_empty() {
            return;
        }
        let mut queues: Vec<Arc<Queue>> = Vec::new();
        for (_, queue) in self.claimed.values() {
            if !queues.iter().any(|q| Arc::ptr_eq(q, queue)) {
                queues.push(Arc::clone(queue));
            }
        }
        let peer = self.peer_group.read().clone();
        for queue in queues {
            let destination = queue.name.to_string();
            if !self.subs.contains_key(&destination) {
                // Closed and draining: the remote's demand opens it (see apply_demand).
                self.attach(&destination, self.config.priority, false);
            }
            if let Some(sub) = self.subs.get(&destination) {
                sub.queue.claim_pinned(sub.key, &peer);
            }
        }
    }

    /// Whether a claimed pinned message of `queue` has not been delivered to us yet.
    fn awaits_claim(&self, queue: &Arc<Queue>) -> bool {
        self.claimed.values().any(|(_, q)| Arc::ptr_eq(q, queue))
    }

    /// While down, the link takes no new messages: what it holds stays pinned to it, the
    /// rest goes to local consumers and other links.
    pub fn link_down(&mut self) {
        self.down_since.get_or_insert_with(Instant::now);
        for sub in self.subs.values_mut() {
            sub.settle_window(self.config.prefetch, false);
        }
    }

    /// After [`RELEASE_AFTER`] without a link, hands everything back to the local queues.
    pub fn release_if_stale(&mut self) {
        if self.down_since.is_some_and(|t| t.elapsed() >= RELEASE_AFTER) && (!self.subs.is_empty() || !self.claimed.is_empty()) {
            tracing::warn!(
                link = %self.config.name,
                unconfirmed = self.unconfirmed.len() + self.claimed.len(),
                "bridge down for {RELEASE_AFTER:?}: its unconfirmed forwards go back to their queues and may be delivered twice if the remote stored them"
            );
            self.end_pins();
        }
    }

    /// Ends every pin this forwarder holds: consumers detached, the messages back in their
    /// queues, the pin records removed.
    fn end_pins(&mut self) {
        let mut ended: Vec<Pin> = self
            .unconfirmed
            .values()
            .filter_map(|u| u.pin.map(|record| Pin { queue: Arc::clone(&u.queue), message: u.message, record }))
            .collect();
        ended.extend(self.claimed.drain().map(|(message, (record, queue))| Pin { queue, message, record }));
        self.to_pin.clear();
        self.release_all();
        pins::end_pins(&self.broker, &ended);
    }

    /// Detaches every consumer; what was in flight goes back to its queue (set aside there
    /// if recovered pinned, until its pin ends). The pins stay in the journal: the next
    /// live of this group honours them.
    pub fn release_all(&mut self) {
        for (_, sub) in std::mem::take(&mut self.subs) {
            detach(&self.broker, sub);
        }
        self.unconfirmed.clear();
        // Deliveries already queued for us belong to consumers that are gone.
        if let Some(rx) = &mut self.rx {
            while rx.try_recv().is_ok() {}
        }
    }

    /// Brings the consumers in line with what the remote wants now (and the static
    /// includes), and ends rests and drains that are over.
    pub fn apply_demand(&mut self, remote: &[DemandEntry]) {
        if self.down_since.is_some() {
            return;
        }
        // Pinned messages read back from paging since the last look.
        self.claim_waiting();
        let (wanted, demanded) = self.wanted_now(remote);
        for destination in &wanted {
            match self.subs.get_mut(destination) {
                Some(sub) => sub.draining = false,
                None => {
                    // Queues a drain forwards without demand rank below those with it, so
                    // targets with consumers for a queue get its messages first.
                    let priority = if demanded.binary_search(destination).is_ok() { self.config.priority } else { self.config.priority - 1 };
                    self.attach(destination, priority, true)
                }
            }
        }
        let now = Instant::now();
        let mut done = Vec::new();
        for (destination, sub) in self.subs.iter_mut() {
            if !sub.draining && wanted.binary_search(destination).is_err() {
                sub.draining = true;
            }
            if sub.paused_until.is_some_and(|t| t <= now) {
                sub.paused_until = None;
            }
            sub.settle_window(self.config.prefetch, true);
            if sub.draining && sub.queue.in_flight_of(sub.key) == 0 {
                done.push(destination.clone());
            }
        }
        done.retain(|d| self.subs.get(d).is_none_or(|sub| !self.awaits_claim(&sub.queue)));
        for destination in done {
            if let Some(sub) = self.subs.remove(&destination) {
                tracing::debug!(link = %self.config.name, %destination, "no more remote demand: stopped forwarding");
                detach(&self.broker, sub);
            }
        }
    }

    /// The destinations to consume for the remote now, and those of them it has demand
    /// for (both sorted). While the broker drains: a target gets every queue besides what
    /// it asks for (whatever the filters say: nothing may be left behind), any other group
    /// nothing.
    fn wanted_now(&self, remote: &[DemandEntry]) -> (Vec<String>, Vec<String>) {
        let drain = &self.broker.drain;
        if drain.is_draining() {
            if !drain.is_target(&self.peer_group.read()) {
                return (Vec::new(), Vec::new());
            }
            let demanded = demand::wanted(&self.config.own_group, remote, &[], &Filters::default());
            let mut wanted: Vec<String> = demanded.iter().cloned().chain(self.broker.queue_names()).collect();
            wanted.sort();
            wanted.dedup();
            return (wanted, demanded);
        }
        let existing = if self.config.filters.included.is_empty() { Vec::new() } else { self.broker.destination_names() };
        let wanted = demand::wanted(&self.config.own_group, remote, &existing, &self.config.filters);
        (wanted.clone(), wanted)
    }

    /// Adds a consumer of `destination`, taking messages (`open`), or closed and draining.
    fn attach(&mut self, destination: &str, priority: i8, open: bool) {
        let target = match self.broker.resolve(destination) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(link = %self.config.name, %destination, error = %e, "cannot forward this destination");
                return;
            }
        };
        let key = self.broker.next_consumer_key();
        let handle = ConsumerHandle {
            key,
            subscription_id: Arc::from(format!("bridge:{}", self.config.name)),
            ack_mode: AckMode::ClientIndividual,
            prefetch: if open { self.config.prefetch } else { 0 },
            outbox: self.tx.clone(),
            kill: self.kill.clone(),
            selector: None,
        };
        let (own, peer, ttl) = (self.config.own_group.clone(), Arc::clone(&self.peer_group), self.config.network_ttl);
        let replay = self.config.replay_when_no_consumers;
        let (drain, draining) = (Arc::clone(&self.broker.drain), Arc::clone(&self.broker.drain));
        let network = NetworkConsumer {
            priority,
            takes_bound_groups: Arc::new(move || draining.is_draining()),
            accepts: Arc::new(move |m, stranded| {
                let peer = peer.read();
                if drain.is_draining() {
                    return drain.carries(m, &peer);
                }
                // A group the grouping handler gave to a group: only towards it, however
                // the message got here (the queue never offers us a group owned here).
                if let Some(GroupOwner::Elsewhere(owner)) = m.group.as_ref().map(|g| g.owner()) {
                    return **owner == **peer;
                }
                (replay && stranded && *peer != own) || demand::may_forward(&demand::message_path(&m.headers), &own, &peer, ttl)
            }),
        };
        let (queue, topic) = match target {
            Target::Queue(q) => (q, None),
            Target::Topic(t) => (self.broker.subscribe_topic(&t), Some(t)),
        };
        queue.add_network_consumer(handle, network);
        tracing::debug!(link = %self.config.name, %destination, "remote demand: forwarding");
        self.subs.insert(destination.to_string(), Sub { queue, key, topic, draining: !open, paused_until: None, open });
    }

    /// A delivery to one of our consumers becomes a `Forward`: sent at once when it needs
    /// no pin (not journaled) or has one (claimed after a failover), else once its pin is
    /// durable (see [`Self::flush_pins`]).
    pub fn on_delivery(&mut self, outbound: Outbound, out: &mpsc::UnboundedSender<ClusterFrame>) {
        let Outbound::Deliver(d) = outbound else { return };
        let seq = self.next_seq;
        self.next_seq += 1;
        let frame = self.forward_frame(seq, &d);
        let message = d.entry.message.id;
        let (pin, ready) = match self.claimed.remove(&message) {
            Some((record, _)) => (Some(record), true),
            None => (None, !d.entry.journaled),
        };
        if ready {
            let _ = out.send(frame.clone());
        } else {
            self.to_pin.push(seq);
        }
        let destination = d.entry.message.destination.to_string();
        self.unconfirmed.insert(seq, Unconfirmed { queue: d.queue, key: d.consumer, tag: d.tag, destination, frame, message, pin, ready });
    }

    /// Journals the pins of the deliveries taken since the last call, as one record (the
    /// session calls it when no pin record is under way).
    pub fn flush_pins(&mut self, pinning: &mut FuturesOrdered<Pinning>) {
        if self.to_pin.is_empty() {
            return;
        }
        let seqs = std::mem::take(&mut self.to_pin);
        let messages: Vec<MessageId> = seqs.iter().filter_map(|s| self.unconfirmed.get(s)).map(|u| u.message).collect();
        let peer = self.peer_group.read().clone();
        let (records, append) = self.broker.pin(&peer, &messages);
        let batch: Vec<(u64, MessageId)> = seqs.into_iter().zip(records).collect();
        for (seq, record) in &batch {
            if let Some(u) = self.unconfirmed.get_mut(seq) {
                u.pin = Some(*record);
            }
        }
        pinning.push_back(Box::pin(async move { (batch, append.await) }));
    }

    /// A batch of pins is durable (its forwards go now), or failed (they go back to
    /// their queues unsent).
    pub fn pinned(&mut self, batch: Vec<(u64, MessageId)>, result: Result<(), JournalError>, out: &mpsc::UnboundedSender<ClusterFrame>) {
        // Records of forwards released meanwhile (or that failed) matter no more.
        let mut stale = Vec::new();
        if let Err(e) = &result {
            tracing::warn!(link = %self.config.name, forwards = batch.len(), error = %crate::report::error_chain(e), "failed to journal the pins of forwards: they go back to their queues unsent");
        }
        for (seq, record) in batch {
            let current = self.unconfirmed.get(&seq).is_some_and(|u| u.pin == Some(record));
            if !current {
                stale.push(record);
                continue;
            }
            if result.is_ok() {
                if let Some(u) = self.unconfirmed.get_mut(&seq) {
                    u.ready = true;
                    let _ = out.send(u.frame.clone());
                }
            } else if let Some(u) = self.unconfirmed.remove(&seq) {
                stale.push(record);
                let _ = self.broker.settle(&u.queue, u.key, u.tag, false, true);
                self.pause(&u.destination);
            }
        }
        self.broker.forget_records(&stale);
    }

    fn forward_frame(&self, seq: u64, d: &Delivery) -> ClusterFrame {
        let m = &d.entry.message;
        let mut path = demand::message_path(&m.headers);
        let arrived_over = path.len();
        path.push(self.config.own_group.clone());
        let mut dedup_id = None;
        let mut headers: Vec<(String, String)> = m
            .headers
            .iter()
            .filter(|(k, v)| {
                if k == dedup::STORED_HEADER {
                    dedup_id = Some(v.clone());
                    return false;
                }
                k != PATH_HEADER
            })
            .cloned()
            .collect();
        // A group decided after its message was stored: the owner goes along, as it does
        // with one decided before.
        if let Some(GroupOwner::Elsewhere(owner)) = m.group.as_ref().and_then(|g| g.decided.get()) {
            headers.push((OWNER_HEADER.to_string(), owner.to_string()));
        }
        // Stable across a failover of this group (the journal keeps the message's id and
        // headers), so a resend is recognised, and the same whatever route a message took,
        // so two copies (a producer that failed over to another group and resent) meet as
        // one. Only a message going back to a group it was stored in (a replay) gets another
        // id there, or that group would take it for a resend of what it forwarded.
        let base = dedup_id.unwrap_or_else(|| format!("duomq-net:{}:{}", self.config.own_group, m.id.0));
        let base = match base.rsplit_once("~r") {
            Some((stripped, n)) if n.parse::<usize>().is_ok() => stripped.to_string(),
            _ => base,
        };
        let peer = self.peer_group.read().clone();
        let dedup_id = if path[..arrived_over].contains(&peer) { format!("{base}~r{arrived_over}") } else { base };
        ClusterFrame::Forward {
            seq,
            persistent: m.persistent,
            destination: m.destination.to_string(),
            dedup_id,
            path,
            headers,
            body: m.body.clone(),
        }
    }

    /// The remote stored `seq`: settle it here, and remove its pin in the same record
    /// (lazily: if that record is lost in a crash, the message comes back pinned to the
    /// same group, whose duplicate detection takes it for the resend it is). Returns
    /// whether it was ours.
    pub fn confirm(&mut self, seq: u64) -> bool {
        let Some(u) = self.unconfirmed.remove(&seq) else { return false };
        let mut settled = match self.broker.settle(&u.queue, u.key, u.tag, false, false) {
            Ok(settled) => settled,
            Err(e) => {
                tracing::warn!(link = %self.config.name, destination = %u.destination, error = %e, "a confirmed forward was no longer in flight");
                Settled::default()
            }
        };
        if let Some(pin) = u.pin {
            settled.extend(Settled::removed(vec![pin]));
        }
        self.broker.acknowledge_lazy(settled);
        true
    }

    /// The remote refused `seq` (it did not store it): it goes back to its queue, its pin
    /// ends and its destination rests.
    pub fn refused(&mut self, seq: u64, reason: &str) {
        let Some(u) = self.unconfirmed.remove(&seq) else { return };
        tracing::info!(link = %self.config.name, destination = %u.destination, %reason, "the remote refused a forward; retrying in {REFUSAL_PAUSE:?}");
        let _ = self.broker.settle(&u.queue, u.key, u.tag, false, true);
        if let Some(record) = u.pin {
            pins::end_pins(&self.broker, &[Pin { queue: Arc::clone(&u.queue), message: u.message, record }]);
        }
        self.pause(&u.destination);
    }

    fn pause(&mut self, destination: &str) {
        if let Some(sub) = self.subs.get_mut(destination) {
            sub.paused_until = Some(Instant::now() + REFUSAL_PAUSE);
            sub.settle_window(self.config.prefetch, true);
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.kill.cancel();
        self.release_all();
    }
}

fn detach(broker: &Broker, sub: Sub) {
    sub.queue.remove_consumer(sub.key);
    if let Some(topic) = &sub.topic {
        broker.unsubscribe_topic(topic, &sub.queue);
    }
}
