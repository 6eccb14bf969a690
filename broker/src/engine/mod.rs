//! The broker's state: destinations, messages, consumers and memory limits, recovered
//! from the journal at start. Connections call into it; it never touches a socket.
//!
//! Destinations follow the Artemis address model: `/queue/NAME` is one queue shared by
//! competing consumers; `/topic/NAME` gives each subscriber a private queue that gets a
//! copy of every message (shared `Arc`, no body copy). Only queue messages are journaled:
//! topic subscribers are not durable, except durable subscriptions (see [`durable`]).

pub mod accept;
pub mod deadletter;
pub mod admission;
pub mod dedup;
pub mod drain;
pub mod durable;
pub mod manage;
pub mod memory;
pub mod message;
pub mod paging;
pub mod pending;
pub mod pins;
pub mod metrics;
pub mod queue;
pub mod schedule;
pub mod store;

use crate::config::{BrokerConfig, SlowTopicSubscriber, User};
use crate::journal::{Journal, JournalConfig, JournalError, JournalMetrics, MessageId, Recovered};
pub use store::Store;
use memory::{Memory, Reservation};
use message::{ConsumerKey, Entry, Message};
use metrics::{EngineMetrics, Limit};
use parking_lot::RwLock;
use queue::{ConsumerChanges, Queue, QueueKind, QueueSnapshot};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum EngineError {
    #[error("failed to create data directory {path}")]
    CreateDataDir { path: PathBuf, source: std::io::Error },
    #[error("failed to read or write node id file {path}")]
    NodeId { path: PathBuf, source: std::io::Error },
    #[error("failed to open the journal")]
    OpenJournal(#[source] JournalError),
}

/// Longest destination name (after `/queue/` or `/topic/`), in bytes; as RabbitMQ's.
pub const MAX_DESTINATION_NAME_BYTES: usize = 255;

/// Why a destination header was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DestinationError {
    #[error("destination {0:?} must start with /queue/ or /topic/ and have a name")]
    Invalid(String),
    #[error("destination name {name:?} contains a control character at byte {at} (names are printable text)")]
    ControlCharacter { name: String, at: usize },
    #[error("destination name is {len} bytes; the longest allowed is {MAX_DESTINATION_NAME_BYTES}")]
    TooLong { len: usize },
    #[error("the broker already has {limit} destinations (destinations.maxDestinations); use an existing one or retry once idle ones are reclaimed")]
    TooMany { limit: usize },
    #[error("destination {0:?} is reserved for the broker's own records (names starting with {RESERVED_PREFIX:?})")]
    Reserved(String),
}

/// Names (after `/queue/`) the broker keeps for its own journal records, such as the
/// grouping handler's bindings; clients may neither send to nor read from them.
pub const RESERVED_PREFIX: &str = "$duomq.";

/// A record the broker journaled for itself under a reserved destination (see
/// [`Broker::journal_record`]), as recovery found it.
#[derive(Debug, Clone)]
pub struct OwnRecord {
    pub id: MessageId,
    pub destination: String,
    pub headers: Vec<(String, String)>,
}

impl DestinationError {
    /// The limit this refusal counts against in metrics (none for a malformed header).
    pub fn limit(&self) -> Option<Limit> {
        match self {
            DestinationError::Invalid(_) | DestinationError::Reserved(_) => None,
            DestinationError::ControlCharacter { .. } | DestinationError::TooLong { .. } => Some(Limit::DestinationName),
            DestinationError::TooMany { .. } => Some(Limit::Destinations),
        }
    }
}

/// Checks a destination header; returns the kind and the name after the prefix.
fn parse_destination(destination: &str) -> Result<(bool, &str), DestinationError> {
    let (is_queue, name) = match (destination.strip_prefix("/queue/"), destination.strip_prefix("/topic/")) {
        (Some(n), _) => (true, n),
        (_, Some(n)) => (false, n),
        _ => return Err(DestinationError::Invalid(destination.to_string())),
    };
    if name.is_empty() {
        return Err(DestinationError::Invalid(destination.to_string()));
    }
    if let Some((at, _)) = destination.char_indices().find(|(_, c)| c.is_control()) {
        return Err(DestinationError::ControlCharacter { name: destination.escape_debug().to_string(), at });
    }
    if name.len() > MAX_DESTINATION_NAME_BYTES {
        return Err(DestinationError::TooLong { len: name.len() });
    }
    Ok((is_queue, name))
}

/// A resolved destination.
#[derive(Debug, Clone)]
pub enum Target {
    Queue(Arc<Queue>),
    Topic(Arc<Topic>),
}

/// A topic: the private queues of its current subscribers.
#[derive(Debug)]
pub struct Topic {
    pub name: Arc<str>,
    subscribers: RwLock<Vec<Arc<Queue>>>,
    /// Its durable subscriptions, fed besides `subscribers`.
    pub durables: durable::TopicDurables,
    /// Reclaim sweeps that found this topic without subscribers in a row.
    idle: queue::IdleSweeps,
}

impl Topic {
    pub fn subscriber_queues(&self) -> Vec<Arc<Queue>> {
        self.subscribers.read().clone()
    }
}

/// What recovery found, for the start-up log.
#[derive(Debug, Clone)]
pub struct RecoveryReport {
    pub messages: usize,
    pub queues: usize,
    pub segments: usize,
    pub records: u64,
}

pub struct Broker {
    pub config: Arc<BrokerConfig>,
    pub node_id: String,
    pub started: Instant,
    store: Store,
    memory: Arc<Memory>,
    /// `addressSettings`, parsed once; each queue resolves its own when it is made.
    address_settings: crate::config::AddressSettingsTable,
    /// Held, dead-lettered and expired messages of every queue (see [`schedule`]).
    delivery: Arc<schedule::Control>,
    queues: RwLock<HashMap<Arc<str>, Arc<Queue>>>,
    topics: RwLock<HashMap<Arc<str>, Arc<Topic>>>,
    next_id: AtomicU64,
    next_consumer: AtomicU64,
    users: Vec<User>,
    /// What clients may do on which destinations (`auth.roles`, `auth.permissions`).
    authorizer: crate::security::Authorizer,
    dedup: parking_lot::Mutex<dedup::DedupCache>,
    pub metrics: EngineMetrics,
    /// Bumped when any queue gains or loses a local consumer (see [`ConsumerChanges`]).
    consumer_changes: Arc<ConsumerChanges>,
    /// Records of the broker's own that recovery found, until their owner takes them.
    own_records: parking_lot::Mutex<Vec<OwnRecord>>,
    /// Durable topic subscriptions, by client id and name.
    durables: durable::Registry,
    /// Bridge pins recovered from the journal that no bridge claimed yet (see [`pins`]).
    pins: pins::Registry,
    /// Decides which group owns a message group cluster-wide (`grouping.handler`), while
    /// this broker is live; none: message groups are pinned per queue only.
    group_router: RwLock<Option<Arc<dyn accept::GroupRouter>>>,
    /// Set when this live drains its group (`POST /ha/drain`); for this term only.
    pub drain: Arc<drain::Drain>,
    /// Messages with lower ids were in the journal when a backup took over from a live
    /// that died (0 otherwise): the old live may have delivered them, so each is marked
    /// `redelivered` when it is read back from paging, as the ones recovered into memory are.
    possibly_delivered_below: MessageId,
}

impl Broker {
    /// Opens the data directory, recovers the journal and rebuilds every queue.
    /// With `possibly_delivered` (a backup taking over from a live that died), every
    /// recovered message is marked `redelivered`: the live may have handed it to a
    /// consumer already, and the backup cannot know.
    pub fn open(
        config: Arc<BrokerConfig>,
        users: Vec<User>,
        journal_metrics: JournalMetrics,
        metrics: EngineMetrics,
        faults: crate::faults::Faults,
        possibly_delivered: bool,
    ) -> Result<(Arc<Broker>, RecoveryReport), EngineError> {
        let dir = &config.storage.data_dir;
        std::fs::create_dir_all(dir)
            .map_err(|source| EngineError::CreateDataDir { path: dir.clone(), source })?;
        let node_id = resolve_node_id(&config.node.id, dir)?;
        let journal_config = JournalConfig {
            dir: dir.join("journal"),
            segment_size: config.storage.segment_size.0,
            max_batch_bytes: config.storage.max_batch_bytes.as_usize(),
            fsync: config.storage.fsync,
            remember_header: Some(dedup::STORED_HEADER.to_string()),
            faults,
        };
        // A backlog past what memory may hold is recovered into the paged state.
        // Validated with the rest of the config before the broker starts.
        let table = config.address_settings_table().ok();
        let limit = crate::journal::RecoveryLimit {
            in_memory_bytes: Arc::new(move |destination: &str| match &table {
                // The broker's own records are never paged.
                _ if is_reserved(destination) => usize::MAX,
                // A durable subscription's copies: its topic is not known here (only its
                // definition record says), so the smallest maxSizeBytes any destination has;
                // reading back fills its queue up to its own.
                Some(t) if durable::is_copy(destination) => t.smallest_max_size_bytes(),
                _ if !destination.starts_with("/queue/") => usize::MAX,
                Some(t) => t.resolve(destination).max_size_bytes,
                None => 0,
            }),
            footprint: |m| message::footprint(&m.headers, m.body.len()),
        };
        let (journal, recovered) =
            Journal::open_limited(journal_config, journal_metrics, Some(limit)).map_err(EngineError::OpenJournal)?;
        Ok(Broker::with_store(config, node_id, users, Store::File(journal), recovered, metrics, possibly_delivered))
    }

    /// Rebuilds every queue from what `store` recovered (see [`Broker::open`]).
    pub fn with_store(
        config: Arc<BrokerConfig>,
        node_id: String,
        users: Vec<User>,
        store: Store,
        recovered: Recovered,
        metrics: EngineMetrics,
        possibly_delivered: bool,
    ) -> (Arc<Broker>, RecoveryReport) {
        let memory = Arc::new(Memory::new(
            config.memory.max_broker_bytes.as_usize(),
            config.memory.max_queue_bytes.as_usize(),
        ));
        // Validated with the rest of the config before the broker starts.
        let address_settings = config.address_settings_table().unwrap_or_else(|e| {
            tracing::error!(error = %e, "addressSettings ignored");
            crate::config::AddressSettingsTable::defaults(config.memory.max_queue_bytes.as_usize())
        });
        let delivery = Arc::new(schedule::Control::new(metrics.scheduled_messages.clone()));
        let broker = Arc::new(Broker {
            address_settings,
            delivery,
            node_id,
            started: Instant::now(),
            store,
            memory,
            queues: RwLock::new(HashMap::new()),
            topics: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(recovered.next_id.0),
            next_consumer: AtomicU64::new(1),
            authorizer: crate::security::Authorizer::new(&config.auth, &users),
            users,
            dedup: parking_lot::Mutex::new(dedup::DedupCache::new(dedup::CAPACITY)),
            metrics,
            consumer_changes: Arc::default(),
            own_records: parking_lot::Mutex::new(Vec::new()),
            durables: durable::Registry::default(),
            pins: pins::Registry::default(),
            group_router: RwLock::new(None),
            drain: Arc::default(),
            possibly_delivered_below: if possibly_delivered { recovered.next_id } else { MessageId(0) },
            config,
        });
        {
            let mut cache = broker.dedup.lock();
            // Ids of acked messages too, as long as their segment is on disk: a producer
            // may resend a message its consumer already took.
            for id in &recovered.remembered {
                cache.insert(id);
            }
        }
        let report = RecoveryReport {
            messages: recovered.messages.len(),
            queues: 0,
            segments: recovered.segments,
            records: recovered.records,
        };
        let mut durable_copies = Vec::new();
        // Pin records come after their messages: read them first.
        let (pin_records, messages): (Vec<_>, Vec<_>) = recovered.messages.into_iter().partition(|m| m.destination == pins::PINS);
        let mut pinned = broker.read_pins(pin_records);
        for stored in messages {
            if is_reserved(&stored.destination) {
                broker.own_records.lock().push(OwnRecord { id: stored.id, destination: stored.destination, headers: stored.headers });
                continue;
            }
            if durable::is_copy(&stored.destination) {
                durable_copies.push(stored);
                continue;
            }
            // What was stored before limits existed (or with other limits) is recovered
            // whatever today's destination limits say: no stored message is dropped.
            let Ok(Target::Queue(queue)) = broker.resolve_unlimited(&stored.destination) else {
                tracing::warn!(destination = %stored.destination, id = stored.id.0, "skipping recovered message for a non-queue destination");
                continue;
            };
            broker.pin_recovered(&queue, stored.id, &mut pinned);
            queue.enqueue(broker.recovered_entry(&queue, stored, possibly_delivered));
        }
        // A backlog acknowledged in full later in the journal leaves nothing to page.
        let mut durable_paged = Vec::new();
        for backlog in recovered.paged.into_iter().filter(|b| !b.ids.is_empty()) {
            if durable::is_copy(&backlog.destination) {
                durable_paged.push(backlog);
                continue;
            }
            let Ok(Target::Queue(queue)) = broker.resolve_unlimited(&backlog.destination) else {
                tracing::warn!(destination = %backlog.destination, messages = backlog.ids.len(), "skipping recovered paged messages for a non-queue destination");
                continue;
            };
            tracing::info!(queue = %queue.name, messages = backlog.ids.len(), bytes = backlog.bytes, "recovered a backlog into the paged state: read back from the journal as consumers catch up");
            let paged_pins: Vec<MessageId> = pinned.keys().filter(|id| backlog.ids.contains(id.0)).copied().collect();
            for id in paged_pins {
                broker.pin_recovered(&queue, id, &mut pinned);
            }
            queue.set_paged(paging::Paged::recovered(backlog.ids, backlog.bytes, backlog.from));
        }
        durable::recover(&broker, durable_copies, durable_paged, possibly_delivered);
        broker.unmatched_pins(pinned);
        let queues = broker.queues.read().len();
        (broker, RecoveryReport { queues, ..report })
    }

    /// A journaled message of `queue` as the engine holds it (recovered, or read back).
    pub(crate) fn recovered_entry(&self, queue: &Queue, stored: crate::journal::StoredMessage, redelivered: bool) -> Entry {
        let message = Arc::new(Message {
            id: stored.id,
            destination: Arc::clone(&queue.name),
            group: self.message_group(&stored.headers),
            properties: message::Properties::from_headers(&stored.headers),
            headers: stored.headers,
            body: stored.body,
            persistent: true,
        });
        Entry { message, journaled: true, redelivered, deliveries: 0 }
    }

    /// Whether a paged message read back now may have been delivered by the live this
    /// broker took over from (see [`Broker::open`]'s `possibly_delivered`).
    pub(crate) fn possibly_delivered(&self, id: MessageId) -> bool {
        id < self.possibly_delivered_below
    }

    /// Queues holding paged messages (see [`paging`]).
    pub fn paging_queues(&self) -> Vec<Arc<Queue>> {
        let mut out: Vec<Arc<Queue>> = self.queues.read().values().filter(|q| q.snapshot_paged() > 0).cloned().collect();
        out.extend(self.durables.queues().into_iter().filter(|q| q.snapshot_paged() > 0));
        out
    }

    /// Journal bytes on disk and `storage.maxDiskBytes` (0: unlimited).
    pub fn disk_usage(&self) -> (u64, u64) {
        let used = self.journal().map_or(0, |j| j.stats().bytes_on_disk);
        (used, self.config.storage.max_disk_bytes.0)
    }

    /// Refuses a persistent message while the journal holds `storage.maxDiskBytes`.
    pub(crate) fn check_disk_quota(&self) -> Result<(), accept::AcceptError> {
        let (used, quota) = self.disk_usage();
        if quota > 0 && used >= quota {
            self.metrics.disk_quota_refusals.inc();
            return Err(accept::AcceptError::DiskQuota { used, quota });
        }
        Ok(())
    }

    /// The file journal, when that is the store (a replicated live streams it).
    pub fn journal(&self) -> Option<&Journal> {
        self.store.journal()
    }

    pub fn memory(&self) -> &Memory {
        &self.memory
    }

    pub fn users(&self) -> &[User] {
        &self.users
    }

    pub fn authorizer(&self) -> &crate::security::Authorizer {
        &self.authorizer
    }

    /// The id the next accepted message gets: every message accepted so far has a
    /// smaller one (a browser's end, see [`queue::Queue::browse`]).
    pub fn message_id_bound(&self) -> MessageId {
        MessageId(self.next_id.load(Ordering::Relaxed))
    }

    pub fn next_message_id(&self) -> MessageId {
        MessageId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    pub fn next_consumer_key(&self) -> ConsumerKey {
        ConsumerKey(self.next_consumer.fetch_add(1, Ordering::Relaxed))
    }

    /// Looks a producer's message id up: new (now in flight, see [`dedup::Sight`]), stored
    /// already (a resend after failover, not to be stored again), or still being written.
    pub fn sight(&self, id: &str) -> dedup::Sight {
        self.dedup.lock().sight(id)
    }

    /// The message of a [`Broker::sight`] that was new is durable.
    pub fn stored_sight(&self, id: &str) {
        self.dedup.lock().stored(id)
    }

    /// Takes back a [`Broker::sight`] of a message that was not stored after all.
    pub fn forget_sight(&self, id: &str) {
        self.dedup.lock().forget(id)
    }

    /// Looks a destination up, creating it on first use within `destinations.maxDestinations`.
    pub fn resolve(&self, destination: &str) -> Result<Target, DestinationError> {
        if is_reserved(destination) {
            return Err(DestinationError::Reserved(destination.to_string()));
        }
        self.lookup(destination, Some(self.config.destinations.max_destinations))
    }

    /// Whether the broker holds `destination` now, without creating it: a SEND or
    /// SUBSCRIBE to one it does not hold needs the `create` permission too. Refuses what
    /// [`Broker::resolve`] refuses. A held destination is marked used, so the reclaim
    /// sweep does not take it between this answer and the frame that uses it.
    pub fn holds(&self, destination: &str) -> Result<bool, DestinationError> {
        if is_reserved(destination) {
            return Err(DestinationError::Reserved(destination.to_string()));
        }
        let (is_queue, _) = parse_destination(destination)?;
        if is_queue {
            Ok(self.queues.read().get(destination).inspect(|q| q.touch()).is_some())
        } else {
            Ok(self.topics.read().get(destination).inspect(|t| t.idle.touch()).is_some())
        }
    }

    /// This broker's group on the network: `ha.groupName`, or a standalone broker's node id.
    pub fn group_name(&self) -> &str {
        let name = self.config.ha.group_name.trim();
        if name.is_empty() {
            &self.node_id
        } else {
            name
        }
    }

    /// Takes the recovered records of the broker's own under `destination` (each once).
    pub fn take_own_records(&self, destination: &str) -> Vec<OwnRecord> {
        let mut all = self.own_records.lock();
        let (mine, rest) = std::mem::take(&mut *all).into_iter().partition(|r| r.destination == destination);
        *all = rest;
        mine
    }

    /// Sets (or clears) what decides message groups cluster-wide.
    pub fn set_group_router(&self, router: Option<Arc<dyn accept::GroupRouter>>) {
        *self.group_router.write() = router;
    }

    pub(crate) fn group_router(&self) -> Option<Arc<dyn accept::GroupRouter>> {
        self.group_router.read().clone()
    }

    fn resolve_unlimited(&self, destination: &str) -> Result<Target, DestinationError> {
        self.lookup(destination, None)
    }

    fn lookup(&self, destination: &str, max: Option<usize>) -> Result<Target, DestinationError> {
        let (is_queue, _) = parse_destination(destination)?;
        let full = |count: usize| max.is_some_and(|m| count >= m);
        if is_queue {
            if let Some(q) = self.queues.read().get(destination) {
                q.touch();
                return Ok(Target::Queue(Arc::clone(q)));
            }
            // Read the other map before taking this one's write lock: never hold both.
            let topics = self.topics.read().len();
            let mut queues = self.queues.write();
            if let Some(q) = queues.get(destination) {
                return Ok(Target::Queue(Arc::clone(q)));
            }
            if full(queues.len() + topics) {
                return Err(DestinationError::TooMany { limit: max.unwrap_or_default() });
            }
            let name: Arc<str> = Arc::from(destination);
            tracing::debug!(queue = %name, "created queue");
            let q = self.new_queue(Arc::clone(&name), QueueKind::Anycast);
            queues.insert(name, Arc::clone(&q));
            return Ok(Target::Queue(q));
        }
        if let Some(t) = self.topics.read().get(destination) {
            t.idle.touch();
            return Ok(Target::Topic(Arc::clone(t)));
        }
        let queues = self.queues.read().len();
        let mut topics = self.topics.write();
        if let Some(t) = topics.get(destination) {
            return Ok(Target::Topic(Arc::clone(t)));
        }
        if full(topics.len() + queues) {
            return Err(DestinationError::TooMany { limit: max.unwrap_or_default() });
        }
        let name: Arc<str> = Arc::from(destination);
        let t = Arc::new(Topic {
            name: Arc::clone(&name),
            subscribers: RwLock::new(Vec::new()),
            durables: durable::TopicDurables::default(),
            idle: queue::IdleSweeps::default(),
        });
        topics.insert(name, Arc::clone(&t));
        Ok(Target::Topic(t))
    }

    /// Removes destinations that held nothing, had no consumer and were not used for
    /// `sweeps_needed` sweeps in a row. A destination someone still holds (a connection
    /// about to send to it, a subscription) is never removed: only the map's reference
    /// may be left, and the map's write lock keeps anyone from taking a new one meanwhile.
    pub fn reclaim_idle(&self, sweeps_needed: u32) -> usize {
        let mut removed = 0;
        {
            let mut queues = self.queues.write();
            queues.retain(|_, q| {
                let unused = Arc::strong_count(q) == 1 && q.is_unused();
                let keep = q.idle.sweep(unused) < sweeps_needed;
                removed += usize::from(!keep);
                keep
            });
        }
        {
            let mut topics = self.topics.write();
            topics.retain(|_, t| {
                let unused = Arc::strong_count(t) == 1 && t.subscribers.read().is_empty();
                let keep = t.idle.sweep(unused) < sweeps_needed;
                removed += usize::from(!keep);
                keep
            });
        }
        if removed > 0 {
            self.metrics.destinations_reclaimed.inc_by(removed as u64);
            tracing::debug!(removed, "reclaimed idle destinations");
        }
        removed
    }

    /// Number of queues and topics.
    pub fn destination_count(&self) -> usize {
        self.queues.read().len() + self.topics.read().len()
    }

    /// Counts `bytes` against the broker-wide limit only (a transaction's messages until COMMIT).
    pub fn reserve_broker_wide(&self, bytes: usize) -> Reservation {
        self.memory.reserve(bytes)
    }

    /// Counts `message`'s bytes against the limits of `target` from now until it is
    /// published (or the reservation is dropped): a topic's bytes count broker-wide only.
    pub fn reserve(&self, target: &Target, message: &Message) -> Reservation {
        match target {
            Target::Queue(q) => q.reserve(message.footprint()),
            Target::Topic(_) => self.memory.reserve(message.footprint()),
        }
    }

    /// Hands an accepted message to its destination (after it is durable, if journaled);
    /// the reservation made when it was accepted passes to the queue.
    ///
    /// A topic copies the message to each subscriber's private queue. A subscriber whose
    /// queue is already at `memory.maxQueueBytes` reads slower than the topic's producers
    /// send; per `memory.slowTopicSubscriber` it is cut off or misses this copy. Either
    /// way the topic's producers and its other subscribers never wait for it.
    pub fn publish(&self, target: &Target, message: Arc<Message>, journaled: bool, reservation: Reservation) {
        match target {
            Target::Queue(q) => q.enqueue_reserved(Entry { message, journaled, redelivered: false, deliveries: 0 }, reservation),
            Target::Topic(t) => {
                drop(reservation);
                let size = message.footprint();
                let mut slow = Vec::new();
                for q in t.subscribers.read().iter() {
                    if !q.wants(&message) {
                        continue;
                    }
                    if q.bytes() + size > self.memory.queue_limit {
                        slow.push(Arc::clone(q));
                        continue;
                    }
                    q.enqueue(Entry { message: Arc::clone(&message), journaled: false, redelivered: false, deliveries: 0 });
                }
                for q in slow {
                    self.on_slow_subscriber(t, &q);
                }
            }
        }
    }

    fn on_slow_subscriber(&self, topic: &Arc<Topic>, queue: &Arc<Queue>) {
        match self.config.memory.slow_topic_subscriber {
            SlowTopicSubscriber::Drop => {
                self.metrics.topic_copies_dropped.inc();
            }
            SlowTopicSubscriber::Disconnect => {
                let limit = self.memory.queue_limit;
                tracing::info!(topic = %topic.name, limit, "disconnecting a slow topic subscriber: its queue reached memory.maxQueueBytes");
                self.metrics.slow_subscribers_disconnected.inc();
                let message = format!(
                    "slow consumer: your subscription to {} holds {limit} bytes not yet read (memory.maxQueueBytes); disconnecting",
                    topic.name
                );
                queue.evict_consumers(crate::stomp::Frame::error(message));
                self.unsubscribe_topic(topic, queue);
            }
        }
    }

    /// Bytes held by the queue this target feeds, for producer back-pressure. A topic's
    /// producers are held back by the broker-wide limit and its fullest durable
    /// subscription only: its slow subscribers are dealt with by `memory.slowTopicSubscriber`.
    /// With `pageable` (a persistent message, the file journal) durable subscriptions that
    /// page hold nobody back: past their `maxSizeBytes` the message's copy is paged.
    pub fn target_bytes(target: &Target, pageable: bool) -> usize {
        match target {
            Target::Queue(q) => q.bytes(),
            Target::Topic(t) => t.durables.max_bytes(pageable),
        }
    }

    fn new_queue(&self, name: Arc<str>, kind: QueueKind) -> Arc<Queue> {
        let settings = Arc::new(self.address_settings.resolve(&name));
        let queue = Queue::with_eviction_counter(
            name,
            kind,
            settings,
            Arc::clone(&self.memory),
            Arc::clone(&self.consumer_changes),
            self.config.grouping.max_groups,
            self.metrics.group_bindings_evicted.clone(),
        );
        queue.set_control(Arc::clone(&self.delivery));
        queue
    }

    /// Creates the private queue of a new topic subscriber.
    pub fn subscribe_topic(&self, topic: &Arc<Topic>) -> Arc<Queue> {
        self.subscribe_topic_selecting(topic, None)
    }

    /// Creates the private queue of a new topic subscriber that gets only the copies
    /// `selector` selects (see [`Queue::select`]).
    pub fn subscribe_topic_selecting(&self, topic: &Arc<Topic>, selector: Option<crate::selector::Selector>) -> Arc<Queue> {
        topic.idle.touch();
        let q = self.new_queue(Arc::clone(&topic.name), QueueKind::TopicSubscription);
        if let Some(selector) = selector {
            q.select(selector);
        }
        topic.subscribers.write().push(Arc::clone(&q));
        q
    }

    /// Parses a subscription's selector, its evaluations counted in
    /// `duomq_selector_evaluations`.
    pub fn selector(&self, text: &str) -> Result<crate::selector::Selector, crate::selector::SelectorError> {
        Ok(crate::selector::Selector::parse(text)?.counted(&self.metrics.selector_evaluations))
    }

    pub fn unsubscribe_topic(&self, topic: &Arc<Topic>, queue: &Arc<Queue>) {
        topic.subscribers.write().retain(|q| !Arc::ptr_eq(q, queue));
        queue.purge();
    }

    /// Tells of every change in local consumers (a network bridge re-advertises its demand).
    pub fn consumer_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.consumer_changes.subscribe()
    }

    /// Destinations with local consumers (not network bridges'), and how many: queues by
    /// their consumers, topics by their subscribers (a durable subscription counts with
    /// its consumer away too: it keeps what is published).
    pub fn local_demand(&self) -> Vec<(String, u32)> {
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let mut out: Vec<(String, u32)> = self
            .queues
            .read()
            .values()
            .map(|q| (q.name.to_string(), count(q.local_consumers())))
            .filter(|(_, n)| *n > 0)
            .collect();
        for t in self.topics.read().values() {
            let subscribers = t.subscribers.read().iter().filter(|q| q.local_consumers() > 0).count() + t.durables.len();
            if subscribers > 0 {
                out.push((t.name.to_string(), count(subscribers)));
            }
        }
        out.sort();
        out
    }

    /// Queues holding grouped messages whose owner is not decided yet (stored while no
    /// consumer existed anywhere).
    pub fn queues_with_undecided_groups(&self) -> Vec<Arc<Queue>> {
        self.queues.read().values().filter(|q| q.has_undecided_groups()).cloned().collect()
    }

    /// The names of the point-to-point queues.
    pub fn queue_names(&self) -> Vec<String> {
        let mut out: Vec<String> = self.queues.read().keys().filter(|k| !is_reserved(k)).map(|k| k.to_string()).collect();
        out.sort();
        out
    }

    /// Messages held in point-to-point queues: waiting and delivered but not acknowledged
    /// (what a drain still has to move).
    pub fn queued_messages(&self) -> u64 {
        self.queues.read().values().map(|q| q.snapshot()).map(|s| (s.depth + s.in_flight) as u64 + s.paged).sum()
    }

    /// The names of every queue and topic.
    pub fn destination_names(&self) -> Vec<String> {
        let mut out: Vec<String> = self.queues.read().keys().map(|k| k.to_string()).collect();
        out.extend(self.topics.read().keys().map(|k| k.to_string()));
        out.sort();
        out
    }

    /// Every queue, sorted by name; topic subscriber queues are summed per topic.
    pub fn snapshot(&self) -> Vec<QueueSnapshot> {
        let mut out: Vec<QueueSnapshot> = self.queues.read().values().map(|q| q.snapshot()).collect();
        for t in self.topics.read().values() {
            let subs = t.subscribers.read();
            let mut snap = QueueSnapshot {
                name: t.name.to_string(),
                kind: QueueKind::TopicSubscription,
                depth: 0,
                in_flight: 0,
                consumers: 0,
                bytes: 0,
                enqueued_total: 0,
                acked_total: 0,
                groups: 0,
                paged: 0,
                paged_bytes: 0,
            };
            for q in subs.iter() {
                let s = q.snapshot();
                snap.depth += s.depth;
                snap.in_flight += s.in_flight;
                snap.consumers += s.consumers;
                snap.bytes += s.bytes;
                snap.enqueued_total += s.enqueued_total;
                snap.acked_total += s.acked_total;
            }
            out.push(snap);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Flushes and stops the journal writer.
    pub fn close(&self) -> Result<(), JournalError> {
        self.store.close()
    }
}

/// Whether a destination is one of the broker's own (see [`RESERVED_PREFIX`]).
pub fn is_reserved(destination: &str) -> bool {
    destination.strip_prefix("/queue/").is_some_and(|n| n.starts_with(RESERVED_PREFIX))
}

/// The configured node id, or the one kept in `dataDir/node-id` (created on first use).
pub fn resolve_node_id(configured: &str, data_dir: &Path) -> Result<String, EngineError> {
    if !configured.is_empty() {
        return Ok(configured.to_string());
    }
    let path = data_dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(EngineError::NodeId { path, source }),
    }
    let id = format!("duomq-{:016x}", rand::random::<u64>());
    std::fs::write(&path, format!("{id}\n")).map_err(|source| EngineError::NodeId { path, source })?;
    Ok(id)
}
