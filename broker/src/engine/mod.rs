//! The broker's state: destinations, messages, consumers and memory limits, recovered
//! from the journal at start. Connections call into it; it never touches a socket.
//!
//! Destinations follow the Artemis address model: `/queue/NAME` is one queue shared by
//! competing consumers; `/topic/NAME` gives each subscriber a private queue that gets a
//! copy of every message (shared `Arc`, no body copy). Only queue messages are journaled:
//! topic subscribers are not durable.

pub mod dedup;
pub mod memory;
pub mod message;
pub mod queue;

use crate::config::{BrokerConfig, User};
use crate::journal::{Journal, JournalConfig, JournalError, JournalMetrics, MessageId};
use memory::Memory;
use message::{ConsumerKey, Entry, Message};
use parking_lot::RwLock;
use queue::{Queue, QueueKind, QueueSnapshot};
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

/// Why a destination header was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DestinationError {
    #[error("destination {0:?} must start with /queue/ or /topic/ and have a name")]
    Invalid(String),
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
    journal: Journal,
    memory: Arc<Memory>,
    queues: RwLock<HashMap<Arc<str>, Arc<Queue>>>,
    topics: RwLock<HashMap<Arc<str>, Arc<Topic>>>,
    next_id: AtomicU64,
    next_consumer: AtomicU64,
    users: Vec<User>,
    dedup: parking_lot::Mutex<dedup::DedupCache>,
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
        };
        let (journal, recovered) =
            Journal::open(journal_config, journal_metrics).map_err(EngineError::OpenJournal)?;
        let memory = Arc::new(Memory::new(
            config.memory.max_broker_bytes.as_usize(),
            config.memory.max_queue_bytes.as_usize(),
        ));
        let broker = Arc::new(Broker {
            node_id,
            started: Instant::now(),
            journal,
            memory,
            queues: RwLock::new(HashMap::new()),
            topics: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(recovered.next_id.0),
            next_consumer: AtomicU64::new(1),
            users,
            dedup: parking_lot::Mutex::new(dedup::DedupCache::new(dedup::CAPACITY)),
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
        for stored in recovered.messages.into_iter() {
            let Ok(Target::Queue(queue)) = broker.resolve(&stored.destination) else {
                tracing::warn!(destination = %stored.destination, id = stored.id.0, "skipping recovered message for a non-queue destination");
                continue;
            };
            let message = Arc::new(Message {
                id: stored.id,
                destination: Arc::clone(&queue.name),
                headers: stored.headers,
                body: stored.body,
                persistent: true,
            });
            queue.enqueue(Entry { message, journaled: true, redelivered: possibly_delivered });
        }
        let queues = broker.queues.read().len();
        Ok((broker, RecoveryReport { queues, ..report }))
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    pub fn memory(&self) -> &Memory {
        &self.memory
    }

    pub fn users(&self) -> &[User] {
        &self.users
    }

    pub fn next_message_id(&self) -> MessageId {
        MessageId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    pub fn next_consumer_key(&self) -> ConsumerKey {
        ConsumerKey(self.next_consumer.fetch_add(1, Ordering::Relaxed))
    }

    /// Records a producer's message id; false when a message with this id was already
    /// stored (a resend after failover), which must then not be stored again.
    pub fn first_sight(&self, id: &str) -> bool {
        self.dedup.lock().insert(id)
    }

    /// Looks a destination up, creating it on first use.
    pub fn resolve(&self, destination: &str) -> Result<Target, DestinationError> {
        if destination.strip_prefix("/queue/").is_some_and(|n| !n.is_empty()) {
            if let Some(q) = self.queues.read().get(destination) {
                return Ok(Target::Queue(Arc::clone(q)));
            }
            let mut queues = self.queues.write();
            let q = queues.entry(Arc::from(destination)).or_insert_with_key(|k| {
                tracing::debug!(queue = %k, "created queue");
                Queue::new(Arc::clone(k), QueueKind::Anycast, Arc::clone(&self.memory))
            });
            return Ok(Target::Queue(Arc::clone(q)));
        }
        if destination.strip_prefix("/topic/").is_some_and(|n| !n.is_empty()) {
            if let Some(t) = self.topics.read().get(destination) {
                return Ok(Target::Topic(Arc::clone(t)));
            }
            let mut topics = self.topics.write();
            let t = topics.entry(Arc::from(destination)).or_insert_with_key(|k| {
                Arc::new(Topic { name: Arc::clone(k), subscribers: RwLock::new(Vec::new()) })
            });
            return Ok(Target::Topic(Arc::clone(t)));
        }
        Err(DestinationError::Invalid(destination.to_string()))
    }

    /// Hands an accepted message to its destination (after it is durable, if journaled).
    pub fn publish(&self, target: &Target, message: Arc<Message>, journaled: bool) {
        match target {
            Target::Queue(q) => q.enqueue(Entry { message, journaled, redelivered: false }),
            Target::Topic(t) => {
                for q in t.subscribers.read().iter() {
                    q.enqueue(Entry { message: Arc::clone(&message), journaled: false, redelivered: false });
                }
            }
        }
    }

    /// Bytes held by the fullest queue this target feeds, for producer back-pressure.
    pub fn target_bytes(target: &Target) -> usize {
        match target {
            Target::Queue(q) => q.bytes(),
            Target::Topic(t) => t.subscribers.read().iter().map(|q| q.bytes()).max().unwrap_or(0),
        }
    }

    /// Creates the private queue of a new topic subscriber.
    pub fn subscribe_topic(&self, topic: &Arc<Topic>) -> Arc<Queue> {
        let q = Queue::new(Arc::clone(&topic.name), QueueKind::TopicSubscription, Arc::clone(&self.memory));
        topic.subscribers.write().push(Arc::clone(&q));
        q
    }

    pub fn unsubscribe_topic(&self, topic: &Arc<Topic>, queue: &Arc<Queue>) {
        topic.subscribers.write().retain(|q| !Arc::ptr_eq(q, queue));
        queue.purge();
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
        self.journal.close()
    }
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
