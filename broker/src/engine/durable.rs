//! Durable topic subscriptions, as ActiveMQ and Artemis clients ask for them over STOMP:
//! CONNECT's `client-id` and SUBSCRIBE's `activemq.subscriptionName` (ActiveMQ) or
//! `durable-subscription-name` (Artemis; also its older `durable-subscriber-name`) name a
//! subscription to a `/topic/…` that keeps every message published to the topic while
//! its one consumer is away.
//!
//! A durable subscription is an ordinary engine queue fed by its topic, so acks,
//! redelivery and memory limits work as on any queue (a full one holds the topic's
//! producers back, as a full queue does; the slow-topic-subscriber policy never cuts it).
//! It follows its topic's `addressSettings` like any queue: with `addressFullPolicy:
//! page`, past its `maxSizeBytes` its persistent copies stay in the journal only and are
//! read back as its consumer catches up (see [`super::paging`]), so a subscriber away for
//! long holds up neither memory nor the topic's producers.
//! Each persistent message published to the topic is journaled once per durable
//! subscription, as a copy with an id of its own under the journal destination
//! `/durable/<definition id>` (never a client destination): acknowledging it is an
//! ordinary journal ack, it is replicated like any queue message, and recovery puts it
//! back into its subscription. Non-persistent messages are kept in memory only. On
//! network bridges it is demand for its topic, its consumer attached or not, so what is
//! published in other groups reaches it too.
//!
//! A SUBSCRIBE's `selector` is the subscription's: only the messages it selects are kept.
//! The same name with another topic or another selector replaces the subscription and
//! drops its messages (as ActiveMQ and Artemis do).
//!
//! The subscription itself is a record of the broker's own under [`DEFINITIONS`] (client
//! id, name, topic, selector); recovery rebuilds every subscription from these records before any
//! client connects, so what is published after a restart while nobody is connected is
//! kept too. Removing a subscription (UNSUBSCRIBE with its name) acknowledges its record
//! and every message it held, in one journal record.

use super::accept::Commit;
use super::message::{ConsumerKey, Entry, Message, Properties};
use super::queue::{Queue, QueueKind};
use super::{Broker, Target, Topic};
use crate::journal::{AppendFuture, MessageId, Op, StoredMessage};
use crate::selector::Selector;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use thiserror::Error;

/// The reserved destination the subscriptions' definitions are journaled under.
pub const DEFINITIONS: &str = "/queue/$duomq.durable-subscriptions";

/// The journal destination of a subscription's persistent copies, before its definition id.
const STORAGE_PREFIX: &str = "/durable/";

/// Paged copies acknowledged per journal record when a subscription or its stale copies go.
const PAGED_ACKS: usize = 10_000;

/// Header names of a definition record.
const CLIENT_ID: &str = "client-id";
const NAME: &str = "name";
const TOPIC: &str = "topic";
const SELECTOR: &str = "selector";

/// SUBSCRIBE and UNSUBSCRIBE headers naming a durable subscription: ActiveMQ's, Artemis's,
/// Artemis's older one; the first present counts.
pub const NAME_HEADERS: [&str; 3] = ["activemq.subscriptionName", "durable-subscription-name", "durable-subscriber-name"];

/// Why a durable subscription was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DurableError {
    #[error("durable subscription {name:?} needs CONNECT's client-id header: the subscription is named by client id and name")]
    NoClientId { name: String },
    #[error("durable subscription {name:?} of client {client_id:?} already has a consumer (one at a time); unsubscribe that one first")]
    AlreadyConnected { client_id: String, name: String },
    #[error("no durable subscription {name:?} of client {client_id:?}")]
    Unknown { client_id: String, name: String },
    #[error("durable subscription {name:?} of client {client_id:?} has a consumer; detach it (UNSUBSCRIBE by id) before removing the subscription")]
    InUse { client_id: String, name: String },
}

/// The durable subscription a SUBSCRIBE or UNSUBSCRIBE names, if any (see [`NAME_HEADERS`]).
pub fn subscription_name<'f>(header: impl Fn(&str) -> Option<&'f str>) -> Option<&'f str> {
    NAME_HEADERS.iter().find_map(|h| header(h))
}

/// One durable subscription: its queue holds what was published to its topic since it
/// was created, until its consumer acknowledges it.
pub struct DurableSubscription {
    pub client_id: Arc<str>,
    pub name: Arc<str>,
    pub topic: Arc<Topic>,
    /// Keeps only the messages this selects.
    pub selector: Option<Selector>,
    pub queue: Arc<Queue>,
    /// The journal record holding the definition.
    record: MessageId,
    /// The journal destination of its persistent copies.
    storage: Arc<str>,
    /// The consumer attached now, if any.
    consumer: Mutex<Option<ConsumerKey>>,
    /// Removed (UNSUBSCRIBE by name): copies still on their way are acknowledged, not kept.
    removed: AtomicBool,
}

impl std::fmt::Debug for DurableSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the topic itself: it lists this subscription.
        f.debug_struct("DurableSubscription")
            .field("client_id", &self.client_id)
            .field("name", &self.name)
            .field("topic", &self.topic.name)
            .finish_non_exhaustive()
    }
}

impl DurableSubscription {
    /// Detaches consumer `key` (its UNSUBSCRIBE by id, or its connection's end); another
    /// consumer may attach from now on.
    pub fn release(&self, key: ConsumerKey) {
        let mut consumer = self.consumer.lock();
        if *consumer == Some(key) {
            *consumer = None;
        }
    }

    fn claim(&self, key: ConsumerKey) -> Result<(), DurableError> {
        let mut consumer = self.consumer.lock();
        if consumer.is_some() {
            return Err(DurableError::AlreadyConnected { client_id: self.client_id.to_string(), name: self.name.to_string() });
        }
        *consumer = Some(key);
        Ok(())
    }
}

/// The durable subscriptions of one topic, which it feeds.
#[derive(Debug, Default)]
pub struct TopicDurables(RwLock<Vec<Arc<DurableSubscription>>>);

impl TopicDurables {
    pub fn is_empty(&self) -> bool {
        self.0.read().is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.read().len()
    }

    /// Bytes held by the fullest of them: what holds the topic's producers back; with
    /// `skip_paging`, of those that do not page (a persistent message's copy is paged there).
    pub fn max_bytes(&self, skip_paging: bool) -> usize {
        self.0.read().iter().filter(|d| !(skip_paging && d.queue.pages())).map(|d| d.queue.bytes()).max().unwrap_or(0)
    }

    fn add(&self, sub: &Arc<DurableSubscription>) {
        self.0.write().push(Arc::clone(sub));
    }

    fn remove(&self, sub: &Arc<DurableSubscription>) {
        self.0.write().retain(|d| !Arc::ptr_eq(d, sub));
    }
}

/// What names a durable subscription: (client id, name).
type SubscriptionId = (Arc<str>, Arc<str>);

/// Every durable subscription of the broker, by (client id, name).
#[derive(Debug, Default)]
pub struct Registry(Mutex<HashMap<SubscriptionId, Arc<DurableSubscription>>>);

impl Registry {
    /// The queues of every durable subscription.
    pub(super) fn queues(&self) -> Vec<Arc<Queue>> {
        self.0.lock().values().map(|d| Arc::clone(&d.queue)).collect()
    }
}

/// One durable subscription's copy of a message published to its topic, on its way to
/// the subscription's queue (journaled with the message when persistent).
#[derive(Debug)]
pub struct DurableCopy {
    sub: Arc<DurableSubscription>,
    entry: Entry,
    /// Kept in the journal only: its subscription pages (see [`page_copies`]).
    paged: bool,
}

impl DurableCopy {
    /// Its journal record, when persistent.
    pub(super) fn op(&self) -> Option<Op> {
        let m = &self.entry.message;
        self.entry.journaled.then(|| {
            Op::Add(StoredMessage { id: m.id, destination: self.sub.storage.to_string(), headers: m.headers.clone(), body: m.body.clone() })
        })
    }

    /// Hands the copy to its subscription (a paged one is there already); one removed
    /// meanwhile acknowledges it instead, unless its removal took it from the paged ones.
    pub(super) fn publish(self, broker: &Broker) {
        let id = self.entry.message.id;
        if self.sub.removed.load(Ordering::Acquire) {
            if self.entry.journaled && (!self.paged || !self.sub.queue.remove_paged(&[id]).is_empty()) {
                broker.forget_records(&[id]);
            }
            return;
        }
        if !self.paged {
            self.sub.queue.enqueue(self.entry);
        }
    }

    /// Its record was not written: a paged copy is taken out of the paged ones again.
    pub(super) fn discard(&self) {
        if self.paged {
            self.sub.queue.unpage(self.entry.message.id, self.entry.message.footprint());
        }
    }
}

/// Pages the persistent copies whose subscription pages and is past its `maxSizeBytes`
/// (as [`Broker::page_if_needed`] does for a queue's message), right before their record
/// is appended.
pub(super) fn page_copies(broker: &Broker, copies: &mut [DurableCopy]) {
    if broker.journal().is_none() {
        return;
    }
    for copy in copies.iter_mut().filter(|c| c.entry.journaled && !c.paged && c.sub.queue.pages()) {
        copy.paged = broker.page_if_needed(&copy.sub.queue, &copy.entry.message);
    }
}

/// Whether a message to `target` is journaled for durable subscriptions (a persistent one
/// to a topic that has some), so a resend of it must be deduplicated.
pub(super) fn keeps_persistent(target: &Target, persistent: bool) -> bool {
    persistent && matches!(target, Target::Topic(t) if !t.durables.is_empty())
}

/// A subscription's persistent copies are journaled with an id of their own each (every
/// subscription acknowledges its own); non-persistent ones share the message.
pub(super) fn copies(broker: &Broker, target: &Target, message: &Arc<Message>) -> Vec<DurableCopy> {
    let Target::Topic(topic) = target else { return Vec::new() };
    let subs = topic.durables.0.read();
    let copy = |sub: &Arc<DurableSubscription>| {
        let message = if message.persistent {
            Arc::new(Message {
                id: broker.next_message_id(),
                destination: Arc::clone(&message.destination),
                headers: message.headers.clone(),
                body: message.body.clone(),
                persistent: true,
                group: None,
                properties: message.properties,
            })
        } else {
            Arc::clone(message)
        };
        let journaled = message.persistent;
        DurableCopy { sub: Arc::clone(sub), entry: Entry { message, journaled, redelivered: false, deliveries: 0 }, paged: false }
    };
    subs.iter().filter(|sub| sub.queue.wants(message)).map(copy).collect()
}

/// What `/status` shows of a durable subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurableSnapshot {
    pub client_id: String,
    pub name: String,
    pub topic: String,
    pub selector: Option<String>,
    pub depth: usize,
    pub in_flight: usize,
    pub bytes: usize,
    /// Kept in the journal only, not yet read back (see [`super::paging`]).
    pub paged: u64,
    pub consumer_attached: bool,
}

impl Broker {
    /// Attaches consumer `key` to the durable subscription (`client_id`, `name`) of
    /// `topic` keeping what `selector` selects, creating it first if it does not exist; a
    /// new one's definition is journaled, durable once the returned future resolves. One
    /// on another topic or with another selector is replaced by a new one, its messages
    /// dropped (as ActiveMQ and Artemis do).
    pub fn durable_subscribe(
        &self,
        client_id: &str,
        name: &str,
        topic: &Arc<Topic>,
        selector: Option<&Selector>,
        key: ConsumerKey,
    ) -> Result<(Arc<DurableSubscription>, Option<AppendFuture>), DurableError> {
        topic.idle.touch();
        let mut subs = self.durables.0.lock();
        let id: SubscriptionId = (Arc::from(client_id), Arc::from(name));
        if let Some(sub) = subs.get(&id) {
            let text = |s: Option<&Selector>| s.map(|s| s.text().to_string());
            if Arc::ptr_eq(&sub.topic, topic) && text(sub.selector.as_ref()) == text(selector) {
                sub.claim(key)?;
                return Ok((Arc::clone(sub), None));
            }
            // The name now means another topic or selector: the old subscription and its
            // messages go.
            sub.claim(key)?;
            tracing::info!(client_id, name, old = %sub.topic.name, new = %topic.name, old_selector = ?text(sub.selector.as_ref()), new_selector = ?text(selector), "durable subscription changed topic or selector; its messages are dropped");
            let old = Arc::clone(sub);
            subs.remove(&id);
            drop(self.remove_durable(&old));
        }
        let mut headers = vec![(CLIENT_ID.into(), client_id.into()), (NAME.into(), name.into()), (TOPIC.into(), topic.name.to_string())];
        if let Some(s) = selector {
            headers.push((SELECTOR.into(), s.text().to_string()));
        }
        let (record, write) = self.journal_record(DEFINITIONS, headers);
        let sub = self.new_durable(id.0, id.1, topic, selector.cloned(), record);
        sub.claim(key)?;
        subs.insert((Arc::clone(&sub.client_id), Arc::clone(&sub.name)), Arc::clone(&sub));
        self.metrics.durable_subscriptions.set(i64::try_from(subs.len()).unwrap_or(i64::MAX));
        tracing::info!(client_id, name, topic = %topic.name, "durable subscription created");
        Ok((sub, Some(write)))
    }

    /// The durable subscription (`client_id`, `name`), if it exists.
    pub fn durable_subscription(&self, client_id: &str, name: &str) -> Option<Arc<DurableSubscription>> {
        self.durables.0.lock().get(&(Arc::from(client_id), Arc::from(name))).cloned()
    }

    /// Removes the durable subscription (`client_id`, `name`) and every message it holds;
    /// the future resolves once the removal is durable. Refused while a consumer is attached.
    pub fn durable_unsubscribe(&self, client_id: &str, name: &str) -> Result<AppendFuture, DurableError> {
        let mut subs = self.durables.0.lock();
        let id: SubscriptionId = (Arc::from(client_id), Arc::from(name));
        let Some(sub) = subs.get(&id) else {
            return Err(DurableError::Unknown { client_id: client_id.into(), name: name.into() });
        };
        if sub.consumer.lock().is_some() {
            return Err(DurableError::InUse { client_id: client_id.into(), name: name.into() });
        }
        let sub = Arc::clone(sub);
        subs.remove(&id);
        self.metrics.durable_subscriptions.set(i64::try_from(subs.len()).unwrap_or(i64::MAX));
        tracing::info!(client_id, name, topic = %sub.topic.name, "durable subscription removed");
        Ok(self.remove_durable(&sub))
    }

    /// Every durable subscription, by client id and name.
    pub fn durable_subscriptions(&self) -> Vec<DurableSnapshot> {
        let mut out: Vec<DurableSnapshot> = self
            .durables
            .0
            .lock()
            .values()
            .map(|d| {
                let s = d.queue.snapshot();
                DurableSnapshot {
                    client_id: d.client_id.to_string(),
                    name: d.name.to_string(),
                    topic: d.topic.name.to_string(),
                    selector: d.selector.as_ref().map(|s| s.text().to_string()),
                    depth: s.depth,
                    in_flight: s.in_flight,
                    bytes: s.bytes,
                    paged: s.paged,
                    consumer_attached: d.consumer.lock().is_some(),
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.client_id, &a.name).cmp(&(&b.client_id, &b.name)));
        out
    }

    fn new_durable(
        &self,
        client_id: Arc<str>,
        name: Arc<str>,
        topic: &Arc<Topic>,
        selector: Option<Selector>,
        record: MessageId,
    ) -> Arc<DurableSubscription> {
        let queue = self.new_queue(Arc::clone(&topic.name), QueueKind::TopicSubscription);
        if let Some(s) = &selector {
            queue.select(s.clone());
        }
        let storage: Arc<str> = Arc::from(format!("{STORAGE_PREFIX}{}", record.0));
        queue.store_as(Arc::clone(&storage));
        let sub = Arc::new(DurableSubscription {
            client_id,
            name,
            topic: Arc::clone(topic),
            selector,
            queue,
            record,
            storage,
            consumer: Mutex::new(None),
            removed: AtomicBool::new(false),
        });
        topic.durables.add(&sub);
        sub
    }

    /// Stops feeding `sub`, drops what it holds and journals the acknowledgement of its
    /// definition and of every persistent message it held in memory, as one record; its
    /// paged copies are acknowledged after it, in records of bounded size (should those be
    /// lost in a crash, recovery acknowledges them as copies of a removed subscription).
    fn remove_durable(&self, sub: &Arc<DurableSubscription>) -> AppendFuture {
        sub.removed.store(true, Ordering::Release);
        sub.topic.durables.remove(sub);
        // Network bridges stop asking remote groups for the topic on its behalf.
        self.consumer_changes.bump();
        // No consumer is attached: everything it holds is pending. Persistent copies are
        // exactly the journaled ones.
        let held = sub.queue.browse(None, MessageId(u64::MAX), usize::MAX);
        sub.queue.purge();
        let ops = std::iter::once(sub.record).chain(held.iter().filter(|m| m.persistent).map(|m| m.id)).map(Op::Ack).collect();
        let removal = self.store.append(ops, Commit::Grouped);
        loop {
            let paged = sub.queue.take_paged(PAGED_ACKS);
            if paged.is_empty() {
                break;
            }
            self.forget_records(&paged);
        }
        removal
    }
}

/// Whether a recovered message is a durable subscription's copy (see [`recover`]).
pub(super) fn is_copy(destination: &str) -> bool {
    destination.starts_with(STORAGE_PREFIX)
}

/// Rebuilds the durable subscriptions from their definitions and puts each recovered
/// copy back into its subscription (marked redelivered with `possibly_delivered`).
/// Definitions that cannot be read and copies whose subscription is gone are
/// acknowledged.
pub(super) fn recover(broker: &Broker, copies: Vec<StoredMessage>, paged: Vec<crate::journal::PagedBacklog>, possibly_delivered: bool) {
    let mut stale = Vec::new();
    let mut by_storage: HashMap<Arc<str>, Arc<DurableSubscription>> = HashMap::new();
    {
        let mut subs = broker.durables.0.lock();
        for record in broker.take_own_records(DEFINITIONS) {
            let get = |name: &str| record.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
            let (Some(client_id), Some(name), Some(topic)) = (get(CLIENT_ID), get(NAME), get(TOPIC)) else {
                tracing::warn!(id = record.id.0, "ignoring a durable subscription record without client-id, name and topic");
                stale.push(record.id);
                continue;
            };
            let Ok(Target::Topic(topic)) = broker.resolve_unlimited(topic) else {
                tracing::warn!(id = record.id.0, topic, "ignoring a durable subscription record whose topic is no topic");
                stale.push(record.id);
                continue;
            };
            let selector = match get(SELECTOR).map(|text| broker.selector(text)) {
                None => None,
                Some(Ok(s)) => Some(s),
                Some(Err(e)) => {
                    tracing::warn!(id = record.id.0, client_id, name, error = %e, "ignoring a durable subscription record whose selector does not parse");
                    stale.push(record.id);
                    continue;
                }
            };
            let id: SubscriptionId = (Arc::from(client_id), Arc::from(name));
            if subs.contains_key(&id) {
                tracing::warn!(id = record.id.0, client_id, name, "ignoring a second record of the same durable subscription");
                stale.push(record.id);
                continue;
            }
            let sub = broker.new_durable(Arc::clone(&id.0), Arc::clone(&id.1), &topic, selector, record.id);
            by_storage.insert(Arc::clone(&sub.storage), Arc::clone(&sub));
            subs.insert(id, sub);
        }
        broker.metrics.durable_subscriptions.set(i64::try_from(subs.len()).unwrap_or(i64::MAX));
    }
    let mut orphans = 0usize;
    for stored in copies {
        let Some(sub) = by_storage.get(stored.destination.as_str()) else {
            orphans += 1;
            stale.push(stored.id);
            continue;
        };
        let message = Arc::new(Message {
            id: stored.id,
            destination: Arc::clone(&sub.topic.name),
            properties: Properties::from_headers(&stored.headers),
            headers: stored.headers,
            body: stored.body,
            persistent: true,
            group: None,
        });
        sub.queue.enqueue(Entry { message, journaled: true, redelivered: possibly_delivered, deliveries: 0 });
    }
    for backlog in paged {
        let Some(sub) = by_storage.get(backlog.destination.as_str()) else {
            orphans += backlog.ids.len() as usize;
            let ids: Vec<MessageId> = backlog.ids.iter().map(MessageId).collect();
            for chunk in ids.chunks(PAGED_ACKS) {
                broker.forget_records(chunk);
            }
            continue;
        };
        tracing::info!(client_id = %sub.client_id, name = %sub.name, messages = backlog.ids.len(), bytes = backlog.bytes, "recovered a durable subscription's backlog into the paged state: read back from the journal as its consumer catches up");
        sub.queue.set_paged(super::paging::Paged::recovered(backlog.ids, backlog.bytes, backlog.from));
    }
    if orphans > 0 {
        tracing::info!(orphans, "acknowledged recovered messages of removed durable subscriptions");
    }
    if !by_storage.is_empty() {
        tracing::info!(subscriptions = by_storage.len(), "durable subscriptions recovered");
    }
    broker.forget_records(&stale);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BrokerConfig;
    use crate::engine::accept::{Commit, Incoming};
    use crate::engine::metrics::EngineMetrics;
    use crate::journal::JournalMetrics;
    use bytes::Bytes;

    fn reopen(dir: &std::path::Path) -> Arc<Broker> {
        reopen_with(dir, Vec::new())
    }

    fn reopen_with(dir: &std::path::Path, settings: Vec<crate::config::AddressSettingsEntry>) -> Arc<Broker> {
        let mut config = BrokerConfig::default();
        config.storage.data_dir = dir.to_path_buf();
        config.storage.segment_size = crate::config::ByteSize::kib(256);
        config.address_settings = settings;
        config.node.id = "durable-test".into();
        match Broker::open(Arc::new(config), Vec::new(), JournalMetrics::unregistered(), EngineMetrics::default(), crate::faults::Faults::off(), false) {
            Ok((broker, _)) => broker,
            Err(e) => panic!("open broker: {e}"),
        }
    }

    fn topic(broker: &Broker) -> Arc<Topic> {
        match broker.resolve("/topic/t") {
            Ok(Target::Topic(t)) => t,
            other => panic!("expected a topic, got {other:?}"),
        }
    }

    async fn publish(broker: &Arc<Broker>, body: &'static str, persistent: bool) {
        let incoming = Incoming { destination: "/topic/t".into(), headers: Vec::new(), body: Bytes::from_static(body.as_bytes()), persistent, dedup_id: None };
        let acceptance = broker.accept(incoming, Commit::Grouped).await.expect("accept");
        acceptance.await.expect("durable").publish();
    }

    fn depth(broker: &Broker) -> Vec<usize> {
        broker.durable_subscriptions().iter().map(|d| d.depth).collect()
    }

    #[test]
    fn given_any_of_the_name_headers_should_name_the_subscription() {
        for header in NAME_HEADERS {
            assert_eq!(subscription_name(|h| (h == header).then_some("feed")), Some("feed"), "{header}");
        }
        assert_eq!(subscription_name(|h| (h == "id").then_some("1")), None);
    }

    #[tokio::test]
    async fn given_a_transaction_to_the_topic_should_journal_its_copies_at_commit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = reopen(dir.path());
        let t = topic(&broker);
        let (_, write) = broker.durable_subscribe("c1", "a", &t, None, ConsumerKey(1)).expect("subscribe");
        write.expect("a new definition").await.expect("definition durable");
        let incoming = Incoming { destination: "/topic/t".into(), headers: Vec::new(), body: Bytes::from_static(b"tx"), persistent: true, dedup_id: None };
        let prepared = broker.prepare(incoming).await.expect("prepare");
        assert_eq!(depth(&broker), [0], "nothing before the commit");
        let durable = broker.commit(vec![prepared], crate::engine::accept::Settled::default(), Commit::Grouped).await.expect("commit durable");
        durable.publish();
        assert_eq!(depth(&broker), [1]);
        broker.close().expect("close");
        assert_eq!(depth(&reopen(dir.path())), [1], "the committed copy was journaled");
    }

    #[tokio::test]
    async fn given_durable_subscriptions_should_keep_persistent_copies_across_a_restart_until_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = reopen(dir.path());
        let t = topic(&broker);
        let (a, write) = broker.durable_subscribe("c1", "a", &t, None, ConsumerKey(1)).expect("subscribe a");
        write.expect("a new definition").await.expect("definition durable");
        let (_, write) = broker.durable_subscribe("c2", "b", &t, None, ConsumerKey(2)).expect("subscribe b");
        write.expect("a new definition").await.expect("definition durable");
        assert!(matches!(broker.durable_subscribe("c1", "a", &t, None, ConsumerKey(3)), Err(DurableError::AlreadyConnected { .. })));
        a.release(ConsumerKey(1));
        publish(&broker, "p", true).await;
        publish(&broker, "n", false).await;
        assert_eq!(depth(&broker), [2, 2]);
        let stats = broker.journal().expect("a file store").stats();
        assert_eq!(stats.records_appended, 3, "two definitions, then one record with a copy per subscription");
        broker.close().expect("close");

        let broker = reopen(dir.path());
        assert_eq!(depth(&broker), [1, 1], "the persistent copies came back, the non-persistent ones did not");
        assert_eq!(broker.metrics.durable_subscriptions.get(), 2);
        // Consumers are not durable: after the restart nobody is attached to b.
        let t = topic(&broker);
        let (b, _) = broker.durable_subscribe("c2", "b", &t, None, ConsumerKey(4)).expect("attach to b again");
        assert!(matches!(broker.durable_unsubscribe("c2", "b"), Err(DurableError::InUse { .. })));
        b.release(ConsumerKey(4));
        broker.durable_unsubscribe("c2", "b").expect("remove b").await.expect("removal durable");
        assert!(matches!(broker.durable_unsubscribe("c2", "b"), Err(DurableError::Unknown { .. })));
        publish(&broker, "after", true).await;
        broker.close().expect("close");

        let broker = reopen(dir.path());
        let left: Vec<(String, usize)> = broker.durable_subscriptions().into_iter().map(|d| (d.name, d.depth)).collect();
        assert_eq!(left, [("a".to_string(), 2)], "b and its copy are gone for good");
        broker.close().expect("close");
    }

    /// `/topic/t` pages past 64 KiB.
    fn paging() -> Vec<crate::config::AddressSettingsEntry> {
        crate::engine::paging::test_kit::paging_past_64kib("/topic/t")
    }

    async fn publish_numbered(broker: &Arc<Broker>, range: std::ops::Range<usize>) {
        for n in range {
            let incoming = Incoming {
                destination: "/topic/t".into(),
                headers: vec![("n".into(), n.to_string())],
                body: Bytes::from(vec![b'x'; 1024]),
                persistent: true,
                dedup_id: None,
            };
            broker.accept(incoming, Commit::Grouped).await.expect("accept").await.expect("durable").publish();
        }
    }

    /// Consumes `count` messages of `sub` with the pager running; returns their `n` headers.
    async fn drain(broker: &Arc<Broker>, sub: &DurableSubscription, count: usize) -> Vec<usize> {
        let got = crate::engine::paging::test_kit::drain(broker, &sub.queue, count).await;
        got.into_iter().map(|(n, _)| n.parse().expect("a number")).collect()
    }

    /// A broker whose durable subscription (`c1`, `name`) of `/topic/t`, its consumer
    /// away, holds messages 0..300, most of them paged.
    async fn away_backlog(dir: &std::path::Path, name: &str) -> (Arc<Broker>, Arc<Topic>, Arc<DurableSubscription>) {
        let broker = reopen_with(dir, paging());
        let t = topic(&broker);
        let (sub, write) = broker.durable_subscribe("c1", name, &t, None, ConsumerKey(1)).expect("subscribe");
        write.expect("a new definition").await.expect("definition durable");
        sub.release(ConsumerKey(1));
        publish_numbered(&broker, 0..300).await;
        let status = &broker.durable_subscriptions()[0];
        assert!(status.paged > 200, "most of the backlog is paged: {status:?}");
        (broker, t, sub)
    }

    #[tokio::test]
    async fn given_a_paging_topic_should_page_a_durable_subscription_backlog_and_recover_it_paged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (broker, t, sub) = away_backlog(dir.path(), "away").await;
        let status = &broker.durable_subscriptions()[0];
        assert_eq!(status.depth as u64 + status.paged, 300);
        assert!(broker.memory().used() < 80 * 1024, "memory holds about maxSizeBytes: {}", broker.memory().used());
        assert_eq!(drain(&broker, &sub, 100).await, (0..100).collect::<Vec<_>>());
        broker.close().expect("close");
        drop((sub, t, broker));

        let broker = reopen_with(dir.path(), paging());
        let status = &broker.durable_subscriptions()[0];
        assert!(status.paged > 100 && status.depth < 100, "recovered into the paged state: {status:?}");
        let sub = broker.durable_subscription("c1", "away").expect("recovered");
        publish_numbered(&broker, 300..320).await;
        assert_eq!(drain(&broker, &sub, 220).await, (100..320).collect::<Vec<_>>(), "once each, in order");
        assert_eq!(broker.durable_subscriptions()[0].paged, 0);
        broker.close().expect("close");
    }

    #[tokio::test]
    async fn given_a_paged_durable_subscription_when_removed_should_acknowledge_its_paged_copies_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (broker, t, sub) = away_backlog(dir.path(), "gone").await;
        broker.durable_unsubscribe("c1", "gone").expect("remove").await.expect("removal durable");
        assert_eq!(sub.queue.snapshot().paged, 0);
        broker.close().expect("close");
        drop((sub, t, broker));
        let broker = reopen_with(dir.path(), paging());
        assert!(broker.durable_subscriptions().is_empty());
        let stats = broker.journal().expect("a file store").stats();
        assert_eq!(stats.live_messages, 0, "every copy was acknowledged: {stats:?}");
        broker.close().expect("close");
    }
}
