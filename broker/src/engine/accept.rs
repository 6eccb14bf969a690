//! Accepting messages durably: the one place that turns a producer's message into engine
//! state. It resolves the destination, drops a resend of what is stored already (dedup),
//! waits for memory room, reserves the message's bytes and hands its record to the
//! journal; the returned [`Acceptance`] resolves once the message is safe to confirm
//! (journaled, and replicated as the group's replication gate demands), and only then can
//! it be published. Every protocol (a STOMP connection, a bridge's inbound side) goes
//! through here, and so do acknowledgements and transactions, which journal with it.
//!
//! What it must not do: speak any protocol (no frames, receipts or connection limits),
//! publish a message before its record is durable, or block the async runtime except in
//! [`Commit::Inline`], which the caller asks for.

use super::dedup;
use super::durable;
use super::memory::Reservation;
use super::message::{now_millis, ConsumerKey, GroupOwner, Message, MessageGroup, Properties, SCHEDULED_DELAY_HEADER, SCHEDULED_TIME_HEADER};
use super::queue::{AckError, Queue};
use super::{Broker, DestinationError, Target};
use crate::journal::{AppendFuture, JournalError, MessageId, Op, StoredMessage};
use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use thiserror::Error;

/// A message as a producer hands it over, whatever the protocol.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// `/queue/NAME` or `/topic/NAME`.
    pub destination: String,
    /// Application headers only: no receipt, transaction, content-length or destination.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub persistent: bool,
    /// The producer's id for duplicate detection ([`dedup::SEND_HEADER`] in STOMP); stored
    /// and delivered as [`dedup::STORED_HEADER`].
    pub dedup_id: Option<String>,
}

/// What publishing a durable message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Now visible to consumers (or to nobody, for a topic without subscribers).
    Stored,
    /// A resend of a message stored already: safe to confirm, nothing was published.
    Duplicate,
}

/// How a record reaches the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// Queued for the writer's next group commit; never blocks.
    Grouped,
    /// Committed on the caller's thread when the journal is idle (see
    /// `Journal::append_inline`): for a caller with nothing else to hand over now.
    Inline,
}

/// Why a message (or an acknowledgement) was not accepted.
#[derive(Debug, Error)]
pub enum AcceptError {
    #[error("{0}")]
    Destination(#[from] DestinationError),
    #[error("destination is full: no room within {0:?} (memory limits)")]
    NoRoom(Duration),
    #[error("{queue} is full: it holds its maxSizeBytes of {limit} bytes and its addressFullPolicy is fail; retry once consumers catch up")]
    Full { queue: String, limit: usize },
    #[error("the disk quota is reached: the journal holds {used} of storage.maxDiskBytes {quota} bytes; persistent messages are refused until consumers free space")]
    DiskQuota { used: u64, quota: u64 },
    #[error("failed to persist")]
    Persist(#[source] JournalError),
    #[error("acceptance polled after it resolved")]
    Resolved,
    #[error("{0}")]
    Grouping(#[from] RouteError),
}

/// The header naming the group (`ha.groupName`) that owns a message's group cluster-wide;
/// written by the engine when the grouping handler decided, journaled and forwarded with
/// the message, so dispatch after a restart or a failover keeps to the decision.
pub const OWNER_HEADER: &str = "duomq-group-owner";

/// What [`GroupRouter::route`] resolves to.
pub type Routing<'a> = Pin<Box<dyn Future<Output = Result<Option<Arc<str>>, RouteError>> + Send + 'a>>;

/// Decides which group of the cluster owns a message group (`grouping.handler` local or
/// remote), before the first message of the group is stored.
pub trait GroupRouter: Send + Sync {
    /// The group (`ha.groupName`) whose broker takes `group`'s messages of `queue`; `None`
    /// while no consumer of the queue exists anywhere and the group has no binding yet:
    /// the message is stored undecided, and decided once a consumer appears.
    fn route<'a>(&'a self, queue: &'a Arc<Queue>, group: &'a str) -> Routing<'a>;
    /// This broker's group name.
    fn own_group(&self) -> &str;
}

/// Why no cluster-wide decision was had for a message group: the message is not stored.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RouteError {
    #[error("no grouping decision for group {group:?} of {queue} within {timeout:?} (grouping.timeout): {reason}; the message was not stored")]
    Timeout { queue: String, group: String, timeout: Duration, reason: String },
    #[error("the grouping handler refused group {group:?} of {queue}: {reason}; the message was not stored")]
    Refused { queue: String, group: String, reason: String },
}

/// A message checked, counted against the memory limits and ready to journal: one send of
/// a transaction, journaled with the others at [`Broker::commit`].
#[derive(Debug)]
pub struct Prepared {
    target: Target,
    message: Arc<Message>,
    journaled: bool,
    /// Its bytes, counted against the memory limits since it was accepted.
    reservation: Reservation,
    blocked: bool,
    /// Its copies for the topic's durable subscriptions.
    copies: Vec<durable::DurableCopy>,
    /// Kept in the journal only (see [`super::paging`]): publishing it hands nothing over.
    paged: bool,
}

impl Prepared {
    /// A message the broker moves itself (a dead letter, an expired message) to `target`:
    /// counted broker-wide by `reservation`, never waiting for room. With `pageable` (a
    /// persistent message to a queue that pages, see [`Broker::moved_pageable`]) it is
    /// paged at [`Broker::commit`] when its queue is past its `maxSizeBytes`.
    pub(super) fn moved(target: Target, message: Arc<Message>, reservation: Reservation, pageable: bool) -> Prepared {
        let journaled = message.persistent && matches!(target, Target::Queue(_));
        Prepared { target, message, journaled, reservation, blocked: false, copies: Vec::new(), paged: pageable && journaled }
    }

    /// What this message counts against the memory limits.
    pub fn footprint(&self) -> usize {
        self.message.footprint()
    }

    /// Whether accepting it waited for memory room.
    pub fn blocked(&self) -> bool {
        self.blocked
    }

    fn ops(&self) -> impl Iterator<Item = Op> + '_ {
        let own = self.journaled.then(|| {
            Op::Add(StoredMessage {
                id: self.message.id,
                destination: self.message.destination.to_string(),
                headers: self.message.headers.clone(),
                body: self.message.body.clone(),
            })
        });
        own.into_iter().chain(self.copies.iter().filter_map(durable::DurableCopy::op))
    }
}

/// Acknowledgements settled in memory whose journal ops are still to be written.
#[derive(Debug, Default)]
pub struct Settled {
    journaled: Vec<MessageId>,
}

impl Settled {
    /// The journal acknowledgement of `entry` leaving its queue (none if not journaled).
    pub(super) fn of(entry: &super::message::Entry) -> Settled {
        Settled { journaled: if entry.journaled { vec![entry.message.id] } else { Vec::new() } }
    }

    /// Adds `other`'s acknowledgements to these.
    pub fn extend(&mut self, other: Settled) {
        if self.journaled.is_empty() {
            self.journaled = other.journaled;
        } else {
            self.journaled.extend(other.journaled);
        }
    }

    /// The removal of journaled messages taken out of a queue by an admin action.
    pub(crate) fn removed(journaled: Vec<MessageId>) -> Settled {
        Settled { journaled }
    }

    fn ops(&self) -> impl Iterator<Item = Op> + '_ {
        self.journaled.iter().map(|id| Op::Ack(*id))
    }
}

/// Resolves when what was accepted is safe to confirm: at once when nothing had to be
/// journaled (non-persistent, topic without durable subscriptions, duplicate), else when its record is durable per the
/// journal (written, synced, and held by synced backups). Dropping it does not take the
/// message back: the record is in the journal's hands (and the id in the dedup cache), so
/// it is published once durable all the same, and memory agrees with what a restart would
/// recover. Only a failed write publishes nothing.
#[must_use = "a message is only published through the Durable its acceptance resolves to"]
#[derive(Debug)]
pub struct Acceptance {
    append: Option<AppendFuture>,
    durable: Option<Durable>,
    blocked: bool,
}

impl Acceptance {
    fn new(append: Option<AppendFuture>, durable: Durable, blocked: bool) -> Acceptance {
        Acceptance { append, durable: Some(durable), blocked }
    }

    /// A resend of a stored message: nothing was stored or reserved.
    pub fn is_duplicate(&self) -> bool {
        self.durable.as_ref().is_some_and(|d| d.duplicate)
    }

    /// Whether accepting waited for memory room (`memory.producerBlockTimeout`).
    pub fn blocked(&self) -> bool {
        self.blocked
    }
}

impl Future for Acceptance {
    type Output = Result<Durable, AcceptError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(append) = &mut this.append {
            match Pin::new(append).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(result) => {
                    this.append = None;
                    if let Err(e) = result {
                        if let Some(durable) = this.durable.take() {
                            durable.discard();
                        }
                        return Poll::Ready(Err(AcceptError::Persist(e)));
                    }
                }
            }
        }
        Poll::Ready(this.durable.take().ok_or(AcceptError::Resolved))
    }
}

impl Drop for Acceptance {
    fn drop(&mut self) {
        match (self.append.take(), self.durable.take()) {
            (Some(append), Some(durable)) => match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(async move {
                        match append.await {
                            Ok(()) => drop(durable),
                            Err(_) => durable.discard(),
                        }
                    });
                }
                Err(_) => durable.discard(),
            },
            // Nothing to wait for: published now (its Drop).
            (None, Some(durable)) => drop(durable),
            _ => {}
        }
    }
}

/// Accepted and durable, not yet visible: [`Durable::publish`] hands the messages to
/// their destinations. Dropping it publishes them too (a durable message is never left
/// out of memory); the caller publishes to choose the moment, e.g. after a receipt.
pub struct Durable {
    broker: Arc<Broker>,
    sends: Vec<Prepared>,
    duplicate: bool,
}

impl std::fmt::Debug for Durable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durable").field("sends", &self.sends).field("duplicate", &self.duplicate).finish_non_exhaustive()
    }
}

impl Durable {
    /// Whether publishing makes any message visible (false for a duplicate or acks only).
    pub fn publishes(&self) -> bool {
        !self.sends.is_empty()
    }

    /// Makes the messages visible to consumers, in the order they were accepted; the bytes
    /// reserved for each pass to its queue.
    pub fn publish(mut self) -> Accepted {
        self.publish_now()
    }

    fn publish_now(&mut self) -> Accepted {
        if self.duplicate {
            return Accepted::Duplicate;
        }
        for send in std::mem::take(&mut self.sends) {
            for copy in send.copies {
                copy.publish(&self.broker);
            }
            if !send.paged {
                self.broker.publish(&send.target, send.message, send.journaled, send.reservation);
            }
        }
        Accepted::Stored
    }

    /// The write failed: nothing is published and the reserved bytes are given back (the
    /// producer's dedup id is forgotten by the task that awaited the write, see `accept`).
    fn discard(mut self) {
        for send in self.sends.drain(..) {
            if let (true, Target::Queue(q)) = (send.paged, &send.target) {
                q.unpage(send.message.id, send.message.footprint());
            }
            for copy in &send.copies {
                copy.discard();
            }
        }
    }
}

impl Drop for Durable {
    fn drop(&mut self) {
        if !self.sends.is_empty() {
            self.publish_now();
        }
    }
}

impl Broker {
    /// Validates, dedups, waits for memory room (`memory.producerBlockTimeout`), reserves,
    /// and hands the record to the journal; returns once the record is queued (NOT
    /// durable). Acceptances queued in order become durable in that order, so a caller
    /// may pipeline many and publish each as it resolves.
    pub async fn accept(self: &Arc<Self>, mut incoming: Incoming, commit: Commit) -> Result<Acceptance, AcceptError> {
        let target = self.resolve(&incoming.destination)?;
        let journaled = incoming.persistent && matches!(target, Target::Queue(_));
        let stored = journaled || durable::keeps_persistent(&target, incoming.persistent);
        // A resend of a message already stored (the producer failed over before its
        // confirmation arrived) is confirmed but not stored twice. One whose first attempt
        // is still being written waits for it: confirmed only once that is durable, and
        // stored after all if that write failed.
        let remembered = incoming.dedup_id.clone().filter(|_| stored);
        if let Some(id) = &remembered {
            loop {
                match self.sight(id) {
                    dedup::Sight::New => break,
                    dedup::Sight::Stored => {
                        tracing::debug!(destination = %incoming.destination, dedup_id = %id, "duplicate message ignored");
                        let durable = Durable { broker: Arc::clone(self), sends: Vec::new(), duplicate: true };
                        return Ok(Acceptance::new(None, durable, false));
                    }
                    dedup::Sight::InFlight(mut outcome) => {
                        tracing::debug!(destination = %incoming.destination, dedup_id = %id, "resend waits for its first attempt");
                        // Closed (an error) once the first attempt is durable or failed.
                        let _ = outcome.changed().await;
                    }
                }
            }
        }
        // Refused before anything was written (no grouping decision, no room): the id was
        // not stored, and the producer's resend must be.
        let forget = |e| {
            if let Some(id) = &remembered {
                self.forget_sight(id);
            }
            e
        };
        self.route_group(&target, &mut incoming.headers).await.map_err(|e| forget(AcceptError::from(e)))?;
        let admitted = self.admit(&target, journaled, incoming.persistent).await.map_err(forget)?;
        let blocked = admitted.blocked;
        let message = self.message(&target, incoming);
        let paged = admitted.pageable && matches!(&target, Target::Queue(q) if self.page_if_needed(q, &message));
        let reservation = if paged { self.reserve_broker_wide(0) } else { self.reserve(&target, &message) };
        let mut copies = durable::copies(self, &target, &message);
        durable::page_copies(self, &mut copies);
        let send = Prepared { target, message, journaled, reservation, blocked, copies, paged };
        let ops: Vec<Op> = send.ops().collect();
        let append = (!ops.is_empty()).then(|| self.store.append(ops, commit));
        // The id's outcome is settled as soon as the write's is, by a task of its own: a
        // resend waiting for it must not depend on this acceptance being polled (a link or
        // connection may be the very task the resend blocks).
        let append = match (append, remembered) {
            (Some(append), Some(id)) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let broker = Arc::clone(self);
                tokio::spawn(async move {
                    let result = append.await;
                    match &result {
                        Ok(()) => broker.stored_sight(&id),
                        Err(_) => broker.forget_sight(&id),
                    }
                    let _ = tx.send(result);
                });
                Some(AppendFuture::from_receiver(rx))
            }
            (None, Some(id)) => {
                self.stored_sight(&id);
                None
            }
            (append, None) => append,
        };
        let durable = Durable { broker: Arc::clone(self), sends: vec![send], duplicate: false };
        Ok(Acceptance::new(append, durable, blocked))
    }

    /// Accepts a message that is journaled later with others, all or nothing
    /// ([`Broker::commit`]): a transaction's send. Its bytes count broker-wide until then,
    /// against its queue once committed. Not deduplicated.
    pub async fn prepare(self: &Arc<Self>, mut incoming: Incoming) -> Result<Prepared, AcceptError> {
        let target = self.resolve(&incoming.destination)?;
        let journaled = incoming.persistent && matches!(target, Target::Queue(_));
        self.route_group(&target, &mut incoming.headers).await?;
        let admitted = self.admit(&target, journaled, incoming.persistent).await?;
        let message = self.message(&target, incoming);
        // Pageable sends are decided at commit, and count nowhere until then.
        let reservation = self.reserve_broker_wide(if admitted.pageable { 0 } else { message.footprint() });
        let copies = durable::copies(self, &target, &message);
        Ok(Prepared { target, message, journaled, reservation, blocked: admitted.blocked, copies, paged: admitted.pageable })
    }

    /// Journals `acks` and `sends` as one record (after a crash either all of it happened
    /// or none); the acks were applied in memory already, the sends are published through
    /// the [`Durable`] the acceptance resolves to.
    pub fn commit(self: &Arc<Self>, mut sends: Vec<Prepared>, acks: Settled, commit: Commit) -> Acceptance {
        for send in sends.iter_mut() {
            durable::page_copies(self, &mut send.copies);
        }
        for send in sends.iter_mut().filter(|s| s.paged) {
            let Target::Queue(q) = &send.target else { continue };
            send.paged = self.page_if_needed(q, &send.message);
            if !send.paged {
                send.reservation = self.memory.reserve(send.message.footprint());
            }
        }
        let ops: Vec<Op> = acks.ops().chain(sends.iter().flat_map(Prepared::ops)).collect();
        let append = (!ops.is_empty()).then(|| self.store.append(ops, commit));
        Acceptance::new(append, Durable { broker: Arc::clone(self), sends, duplicate: false }, false)
    }

    /// Settles a consumer's ACK (or NACK) of delivery `tag` in memory, and every earlier
    /// one with `cumulative`; returns what the journal must record for it to last.
    pub fn settle(&self, queue: &Arc<Queue>, consumer: ConsumerKey, tag: u64, cumulative: bool, nack: bool) -> Result<Settled, AckError> {
        if nack {
            queue.nack(consumer, tag, cumulative)?;
            return Ok(Settled::default());
        }
        let entries = queue.ack(consumer, tag, cumulative)?;
        Ok(Settled { journaled: entries.iter().filter(|e| e.journaled).map(|e| e.message.id).collect() })
    }

    /// Journals settled acknowledgements; the acceptance resolves once they are durable.
    pub fn acknowledge(self: &Arc<Self>, acks: Settled, commit: Commit) -> Acceptance {
        self.commit(Vec::new(), acks, commit)
    }

    /// Journals settled acknowledgements nobody waits for: they ride along with the next
    /// group commit instead of costing an fsync. If the broker crashes first, the messages
    /// are delivered again, which is all such an acknowledgement promised.
    pub fn acknowledge_lazy(&self, acks: Settled) {
        if !acks.journaled.is_empty() {
            drop(self.store.append_lazy(acks.ops().collect()));
        }
    }

    /// Has a grouped queue message's owner decided cluster-wide (with a grouping handler),
    /// and writes it in [`OWNER_HEADER`]. A message that crossed a bridge to the group that
    /// owns it keeps its header; one the producer set is not trusted otherwise.
    async fn route_group(&self, target: &Target, headers: &mut Vec<(String, String)>) -> Result<(), RouteError> {
        let Target::Queue(queue) = target else { return Ok(()) };
        let Some(group) = MessageGroup::from_headers(headers).map(|g| g.id) else {
            return Ok(());
        };
        let stated = headers.iter().position(|(k, _)| k == OWNER_HEADER);
        let Some(router) = self.group_router() else {
            if let Some(at) = stated {
                headers.remove(at);
            }
            return Ok(());
        };
        if let Some(at) = stated {
            if headers[at].1 == router.own_group() {
                return Ok(());
            }
            headers.remove(at);
        }
        // Earlier messages of the group wait here for a decision: this one waits with them
        // (stored without an owner), so the group keeps its order.
        if queue.has_undecided(&group) {
            return Ok(());
        }
        if let Some(owner) = router.route(queue, &group).await? {
            headers.push((OWNER_HEADER.to_string(), owner.to_string()));
        }
        Ok(())
    }

    /// A message's group as its headers name it, owned as [`OWNER_HEADER`] says: by this
    /// broker's group (local consumers only), another (bridges to it only); without the
    /// header, undecided when a grouping handler runs (see [`GroupOwner::Undecided`]), else
    /// any consumer.
    pub(crate) fn message_group(&self, headers: &[(String, String)]) -> Option<MessageGroup> {
        let mut group = MessageGroup::from_headers(headers)?;
        group.owner = match headers.iter().find(|(k, _)| k == OWNER_HEADER) {
            Some((_, owner)) if *owner == self.group_name() => GroupOwner::Here,
            Some((_, owner)) => GroupOwner::Elsewhere(Arc::from(owner.as_str())),
            None if self.config.grouping.handler != crate::config::GroupingHandler::None => GroupOwner::Undecided,
            None => GroupOwner::Any,
        };
        Some(group)
    }

    /// Journals a record of the broker's own under a reserved destination (see
    /// [`super::RESERVED_PREFIX`]), e.g. a grouping binding: replicated like any message,
    /// recovered through [`Broker::take_own_records`], never delivered. The future
    /// resolves once it is durable.
    pub fn journal_record(&self, destination: &str, headers: Vec<(String, String)>) -> (MessageId, AppendFuture) {
        debug_assert!(super::is_reserved(destination));
        let id = self.next_message_id();
        let op = Op::Add(StoredMessage { id, destination: destination.to_string(), headers, body: Bytes::new() });
        (id, self.store.append(vec![op], Commit::Grouped))
    }

    /// Removes records of [`Broker::journal_record`]; nobody needs to wait for it (after a
    /// crash first, the records come back and are removed again).
    pub fn forget_records(&self, ids: &[MessageId]) {
        if !ids.is_empty() {
            drop(self.store.append_lazy(ids.iter().map(|id| Op::Ack(*id)).collect()));
        }
    }

    fn message(&self, target: &Target, incoming: Incoming) -> Arc<Message> {
        let Incoming { mut headers, body, persistent, dedup_id, .. } = incoming;
        if let Some(id) = dedup_id {
            headers.push((dedup::STORED_HEADER.to_string(), id));
        }
        scheduled_delay_to_time(&mut headers, now_millis());
        Arc::new(Message {
            id: self.next_message_id(),
            destination: match target {
                Target::Queue(q) => Arc::clone(&q.name),
                Target::Topic(t) => Arc::clone(&t.name),
            },
            group: self.message_group(&headers),
            properties: Properties::from_headers(&headers),
            headers,
            body,
            persistent,
        })
    }
}

/// Stores an `AMQ_SCHEDULED_DELAY` as the `AMQ_SCHEDULED_TIME` it comes to at `now`
/// (unless the producer gave a time too), so the delay runs from the send and a restart or
/// a failover does not start it over.
fn scheduled_delay_to_time(headers: &mut Vec<(String, String)>, now: u64) {
    if headers.iter().any(|(k, _)| k == SCHEDULED_TIME_HEADER) {
        return;
    }
    let delay = headers.iter().find(|(k, _)| k == SCHEDULED_DELAY_HEADER).and_then(|(_, v)| v.trim().parse::<u64>().ok());
    if let Some(delay) = delay.filter(|&d| d > 0) {
        headers.push((SCHEDULED_TIME_HEADER.to_string(), now.saturating_add(delay).to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_a_scheduled_delay_should_store_the_time_it_comes_to() {
        let mut headers = vec![(SCHEDULED_DELAY_HEADER.to_string(), "1500".to_string())];
        scheduled_delay_to_time(&mut headers, 1_000);
        assert_eq!(Properties::from_headers(&headers).deliver_at, Some(2_500));
        // A time given as well wins; a bad or zero delay schedules nothing.
        let mut both = vec![(SCHEDULED_DELAY_HEADER.to_string(), "5".to_string()), (SCHEDULED_TIME_HEADER.to_string(), "7".to_string())];
        scheduled_delay_to_time(&mut both, 1_000);
        assert_eq!(Properties::from_headers(&both).deliver_at, Some(7));
        for bad in ["0", "soon", "-3"] {
            let mut h = vec![(SCHEDULED_DELAY_HEADER.to_string(), bad.to_string())];
            scheduled_delay_to_time(&mut h, 1_000);
            assert_eq!(h.len(), 1, "{bad}");
        }
    }
    use crate::config::{ByteSize, HumanDuration};
    use crate::config::BrokerConfig;
    use crate::engine::metrics::EngineMetrics;
    use crate::journal::JournalMetrics;

    fn open(dir: &std::path::Path, tune: impl FnOnce(&mut BrokerConfig)) -> Arc<Broker> {
        open_with_faults(dir, crate::faults::Faults::off(), tune)
    }

    fn open_with_faults(dir: &std::path::Path, faults: crate::faults::Faults, tune: impl FnOnce(&mut BrokerConfig)) -> Arc<Broker> {
        let mut config = BrokerConfig::default();
        config.storage.data_dir = dir.to_path_buf();
        config.node.id = "test".into();
        tune(&mut config);
        match Broker::open(Arc::new(config), Vec::new(), JournalMetrics::unregistered(), EngineMetrics::default(), faults, false) {
            Ok((broker, _)) => broker,
            Err(e) => panic!("open broker: {e}"),
        }
    }

    /// A broker whose queues hold 1 KiB and make producers wait for room up to `block`.
    fn open_full_at_1kib(dir: &std::path::Path, block: Duration) -> Arc<Broker> {
        open(dir, |c| {
            c.memory.max_queue_bytes = ByteSize::kib(1);
            c.memory.producer_block_timeout = HumanDuration(block);
            c.address_settings = vec![crate::config::AddressSettingsEntry {
                pattern: ">".into(),
                address_full_policy: Some(crate::config::FullPolicy::Block),
                ..Default::default()
            }];
        })
    }

        fn incoming(destination: &str, persistent: bool, dedup_id: Option<&str>) -> Incoming {
        Incoming {
            destination: destination.into(),
            headers: vec![("k".into(), "v".into())],
            body: Bytes::from_static(b"hello"),
            persistent,
            dedup_id: dedup_id.map(str::to_string),
        }
    }

    fn queue(broker: &Broker, name: &str) -> Arc<Queue> {
        match broker.resolve(name) {
            Ok(Target::Queue(q)) => q,
            other => panic!("expected a queue, got {other:?}"),
        }
    }

    /// Waits until every record queued before now is durable (the journal is FIFO), by
    /// journaling one more message, to a queue of its own.
    async fn journal_settled(broker: &Arc<Broker>) {
        let probe = broker.accept(incoming("/queue/probe", true, None), Commit::Grouped).await.expect("accept probe");
        drop(probe.await.expect("probe durable"));
    }

    #[test]
    fn given_the_accept_types_should_be_sendable_across_tasks() {
        fn send_static<T: Send + 'static>() {}
        send_static::<Acceptance>();
        send_static::<Durable>();
        send_static::<Prepared>();
        send_static::<Settled>();
    }

    #[tokio::test]
    async fn given_a_persistent_queue_message_when_durable_and_published_should_be_journaled_and_queued() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = open(dir.path(), |_| {});
        let acceptance = broker.accept(incoming("/queue/a", true, Some("m-1")), Commit::Grouped).await.expect("accept");
        assert!(!acceptance.is_duplicate());
        assert!(!acceptance.blocked());
        let durable = acceptance.await.expect("durable");
        assert_eq!(broker.journal().expect("a file store").stats().records_appended, 1, "one record before it is safe to confirm");
        assert!(durable.publishes());
        assert_eq!(durable.publish(), Accepted::Stored);
        let q = queue(&broker, "/queue/a");
        assert_eq!(q.snapshot().depth, 1);
        broker.close().expect("close");

        let reopened = open(dir.path(), |_| {});
        let q = queue(&reopened, "/queue/a");
        assert_eq!(q.snapshot().depth, 1, "recovered after a restart");
        reopened.close().expect("close");
    }

    #[tokio::test]
    async fn given_a_resend_with_the_same_dedup_id_should_confirm_it_without_storing_it_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = open(dir.path(), |_| {});
        let first = broker.accept(incoming("/queue/a", true, Some("m-1")), Commit::Inline).await.expect("accept");
        assert_eq!(first.await.expect("durable").publish(), Accepted::Stored);
        let again = broker.accept(incoming("/queue/a", true, Some("m-1")), Commit::Grouped).await.expect("accept");
        assert!(again.is_duplicate());
        let durable = again.await.expect("durable");
        assert!(!durable.publishes());
        assert_eq!(durable.publish(), Accepted::Duplicate);
        assert_eq!(queue(&broker, "/queue/a").snapshot().depth, 1);
        assert_eq!(broker.journal().expect("a file store").stats().records_appended, 1);
        broker.close().expect("close");
    }

    /// A disk whose fdatasyncs take `delay`, the first `fail` of them failing.
    fn slow_disk(delay: Duration, fail: u64) -> crate::faults::FaultRules {
        crate::faults::FaultRules {
            frames: Vec::new(),
            disk: Some(crate::faults::DiskFault { fail_next_syncs: fail, sync_delay: Some(HumanDuration(delay)), ..Default::default() }),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn given_a_resend_while_the_first_attempt_is_written_should_confirm_it_only_once_that_is_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let faults = crate::faults::Faults::new(crate::faults::FaultMetrics::default());
        let broker = open_with_faults(dir.path(), faults.clone(), |_| {});
        faults.set(slow_disk(Duration::from_secs(1), 0)).expect("set the disk rule");
        let first = broker.accept(incoming("/queue/a", true, Some("m-1")), Commit::Grouped).await.expect("accept");
        let resend = tokio::spawn({
            let broker = Arc::clone(&broker);
            async move { broker.accept(incoming("/queue/a", true, Some("m-1")), Commit::Grouped).await.map(|a| a.is_duplicate()) }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!resend.is_finished(), "a resend is not confirmed while the first attempt is being written");
        assert_eq!(first.await.expect("durable").publish(), Accepted::Stored);
        assert!(resend.await.expect("join").expect("accept"), "then it is a duplicate");
        faults.clear().expect("clear");
        assert_eq!(queue(&broker, "/queue/a").snapshot().depth, 1);
        broker.close().expect("close");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn given_a_resend_while_the_first_attempts_write_fails_should_store_the_resend() {
        // The race the nemesis' reading of the code found: the resend was receipted as a
        // duplicate of an attempt whose write then failed, and the message was lost.
        let dir = tempfile::tempdir().expect("tempdir");
        let faults = crate::faults::Faults::new(crate::faults::FaultMetrics::default());
        let broker = open_with_faults(dir.path(), faults.clone(), |_| {});
        faults.set(slow_disk(Duration::from_millis(300), 1)).expect("set the disk rule");
        let first = broker.accept(incoming("/queue/a", true, Some("m-1")), Commit::Grouped).await.expect("accept");
        let resend = tokio::spawn({
            let broker = Arc::clone(&broker);
            async move {
                let acceptance = broker.accept(incoming("/queue/a", true, Some("m-1")), Commit::Grouped).await.expect("accept");
                let duplicate = acceptance.is_duplicate();
                (duplicate, acceptance.await.map(Durable::publish))
            }
        });
        assert!(matches!(first.await, Err(AcceptError::Persist(_))), "the first attempt's fdatasync fails");
        let (duplicate, outcome) = resend.await.expect("join");
        assert!(!duplicate, "the failed attempt stored nothing: the resend is no duplicate");
        assert_eq!(outcome.expect("the resend is durable"), Accepted::Stored);
        faults.clear().expect("clear");
        assert_eq!(queue(&broker, "/queue/a").snapshot().depth, 1);
        broker.close().expect("close");
    }

    #[tokio::test]
    async fn given_a_stored_dedup_id_when_reopened_should_still_know_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = open(dir.path(), |_| {});
        let acceptance = broker.accept(incoming("/queue/a", true, Some("m-7")), Commit::Grouped).await.expect("accept");
        assert_eq!(acceptance.await.expect("durable").publish(), Accepted::Stored);
        broker.close().expect("close");
        let reopened = open(dir.path(), |_| {});
        assert!(matches!(reopened.sight("m-7"), dedup::Sight::Stored), "the id is remembered across a restart");
        reopened.close().expect("close");
    }

    #[tokio::test]
    async fn given_a_non_persistent_message_should_be_safe_at_once_and_not_journaled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = open(dir.path(), |_| {});
        let first = broker.accept(incoming("/queue/a", false, Some("n-1")), Commit::Grouped).await.expect("accept");
        assert_eq!(first.await.expect("durable").publish(), Accepted::Stored);
        let again = broker.accept(incoming("/queue/a", false, Some("n-1")), Commit::Grouped).await.expect("accept");
        assert!(!again.is_duplicate(), "only journaled messages are deduplicated");
        assert_eq!(again.await.expect("durable").publish(), Accepted::Stored);
        journal_settled(&broker).await;
        assert_eq!(broker.journal().expect("a file store").stats().records_appended, 1, "only the probe's record");
        assert_eq!(queue(&broker, "/queue/a").snapshot().depth, 2);
        broker.close().expect("close");
    }

    #[tokio::test]
    async fn given_a_persistent_topic_message_should_copy_it_to_subscribers_without_journaling() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = open(dir.path(), |_| {});
        let Ok(Target::Topic(topic)) = broker.resolve("/topic/t") else { panic!("expected a topic") };
        let subscriber = broker.subscribe_topic(&topic);
        let acceptance = broker.accept(incoming("/topic/t", true, None), Commit::Grouped).await.expect("accept");
        assert_eq!(acceptance.await.expect("durable").publish(), Accepted::Stored);
        assert_eq!(subscriber.snapshot().depth, 1);
        journal_settled(&broker).await;
        assert_eq!(broker.journal().expect("a file store").stats().records_appended, 1, "only the probe's record");
        broker.close().expect("close");
    }

    #[tokio::test]
    async fn given_a_full_queue_when_no_room_comes_should_refuse_after_the_block_timeout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = open_full_at_1kib(dir.path(), Duration::from_millis(200));
        let big = Incoming { body: Bytes::from(vec![b'x'; 2048]), ..incoming("/queue/a", true, None) };
        let first = broker.accept(big.clone(), Commit::Grouped).await.expect("the first fits: the queue was empty");
        assert_eq!(first.await.expect("durable").publish(), Accepted::Stored);
        let started = std::time::Instant::now();
        match broker.accept(big, Commit::Grouped).await {
            Err(AcceptError::NoRoom(timeout)) => assert_eq!(timeout, Duration::from_millis(200)),
            other => panic!("expected NoRoom, got {other:?}"),
        }
        assert!(started.elapsed() >= Duration::from_millis(200), "waited for room first");
        broker.close().expect("close");
    }

    #[tokio::test]
    async fn given_a_send_refused_for_room_when_resent_with_its_dedup_id_should_store_the_resend() {
        // A failover producer resends what was not receipted with the same id. An attempt
        // refused before it was written stored nothing: its resend is no duplicate (it was
        // once confirmed without being stored, and lost).
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = open_full_at_1kib(dir.path(), Duration::from_millis(50));
        let big = |id| Incoming { body: Bytes::from(vec![b'x'; 2048]), ..incoming("/queue/a", true, Some(id)) };
        let first = broker.accept(big("m-1"), Commit::Grouped).await.expect("the first fits: the queue was empty");
        assert_eq!(first.await.expect("durable").publish(), Accepted::Stored);
        assert!(matches!(broker.accept(big("m-2"), Commit::Grouped).await, Err(AcceptError::NoRoom(_))));
        assert_eq!(broker.purge_queue("/queue/a").await.expect("purge"), 1, "room again");
        let resend = broker.accept(big("m-2"), Commit::Grouped).await.expect("accept the resend");
        assert!(!resend.is_duplicate(), "the refused attempt stored nothing");
        assert_eq!(resend.await.expect("durable").publish(), Accepted::Stored);
        assert_eq!(queue(&broker, "/queue/a").snapshot().depth, 1);
        broker.close().expect("close");
    }

    #[tokio::test]
    async fn given_a_bad_destination_should_refuse_it_naming_the_destination() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = open(dir.path(), |_| {});
        match broker.accept(incoming("/elsewhere/x", true, None), Commit::Grouped).await {
            Err(AcceptError::Destination(DestinationError::Invalid(d))) => assert_eq!(d, "/elsewhere/x"),
            other => panic!("expected a destination error, got {other:?}"),
        }
        assert!(matches!(broker.prepare(incoming("/queue/", true, None)).await, Err(AcceptError::Destination(_))));
        broker.close().expect("close");
    }

    #[tokio::test]
    async fn given_an_acceptance_or_durable_dropped_unpublished_should_still_publish_what_the_journal_holds() {
        // A connection (or a bridge) that goes away between handing a message to the
        // journal and publishing it: the journal stores it and the dedup cache knows its id,
        // so it must be in memory too, or a resend would be dropped as a duplicate of nothing.
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = open(dir.path(), |_| {});
        let acceptance = broker.accept(incoming("/queue/a", true, Some("id-1")), Commit::Grouped).await.expect("accept");
        assert!(broker.memory.used() > 0, "reserved from acceptance on");
        drop(acceptance);
        let durable = broker.accept(incoming("/queue/a", true, None), Commit::Grouped).await.expect("accept");
        drop(durable.await.expect("durable"));
        journal_settled(&broker).await;
        for _ in 0..100 {
            if queue(&broker, "/queue/a").snapshot().depth == 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(queue(&broker, "/queue/a").snapshot().depth, 2, "both published once durable");
        let resend = broker.accept(incoming("/queue/a", true, Some("id-1")), Commit::Grouped).await.expect("accept");
        assert!(resend.is_duplicate(), "the resend finds the stored one");
        broker.close().expect("close");
    }

    #[tokio::test]
    async fn given_prepared_sends_when_committed_should_journal_one_record_and_publish_all_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = open(dir.path(), |_| {});
        let mut sends = Vec::new();
        for n in 0..3 {
            let mut m = incoming("/queue/tx", true, None);
            m.body = Bytes::from(format!("m{n}"));
            sends.push(broker.prepare(m).await.expect("prepare"));
        }
        assert!(sends[0].footprint() > 0);
        assert_eq!(queue(&broker, "/queue/tx").snapshot().depth, 0, "nothing visible before commit");
        let durable = broker.commit(sends, Settled::default(), Commit::Grouped).await.expect("durable");
        assert_eq!(broker.journal().expect("a file store").stats().records_appended, 1, "one record for the whole transaction");
        assert_eq!(durable.publish(), Accepted::Stored);
        assert_eq!(queue(&broker, "/queue/tx").snapshot().depth, 3);
        broker.close().expect("close");
    }
}
