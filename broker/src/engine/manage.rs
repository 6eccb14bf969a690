//! An administrator's operations on the messages of a point-to-point queue: browse the
//! first pending ones, purge, delete by id, and move to another queue (a dead-letter
//! queue back to its origin, say). The admin API (`crate::admin`) calls these; they decide
//! nothing about who may ask.
//!
//! Only pending messages are touched: what a consumer holds in flight stays with it. A
//! removed message is taken out of memory first and its removal journaled (an ack, as a
//! consumer's), so it never comes back after a restart and reaches the backups like any
//! ack; should the write fail, it is put back. A move journals each message into its new
//! queue and acks it from the old one in ONE record per batch, so a crash never loses or
//! doubles one; the moved copy is accepted like a transaction's send
//! ([`Broker::prepare`]): destination checks, memory limits, message groups. It keeps its
//! headers, the producer's dedup id among them, and gets a new id in its new queue.
//!
//! What it must not do: speak HTTP, create the queue it works on (only a move's target is
//! created, within `destinations.maxDestinations`), or hold a queue's lock across a write.

use super::accept::{AcceptError, Commit, Incoming, Settled};
use super::message::Entry;
use super::queue::Queue;
use super::{is_reserved, parse_destination, Broker, DestinationError};
use crate::journal::MessageId;
use std::sync::Arc;
use thiserror::Error;

/// Messages per journal record of a purge or move: a huge queue is worked through in
/// records of bounded size, each all or nothing.
pub const BATCH: usize = 500;

/// Paged messages whose removal one journal record holds (an ack is a few bytes).
const PAGED_BATCH: usize = 10_000;

#[derive(Debug, Error)]
pub enum ManageError {
    #[error(transparent)]
    Destination(#[from] DestinationError),
    #[error("{0} is a topic: message operations work on point-to-point queues (/queue/NAME)")]
    Topic(String),
    #[error("no queue {0} on this broker")]
    NoSuchQueue(String),
    #[error("{0} is both the source and the target of the move")]
    SameQueue(String),
    #[error("failed to move the messages into {queue}; they stay in {from}")]
    Target { queue: String, from: String, source: Box<AcceptError> },
    #[error("failed to journal the operation; the messages stay in {queue}")]
    Persist { queue: String, source: Box<AcceptError> },
}

impl ManageError {
    /// The request named something that is not there (HTTP 404).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ManageError::NoSuchQueue(_))
    }

    /// The request itself is wrong (HTTP 400): a malformed, reserved or topic destination,
    /// a move onto itself.
    pub fn is_bad_request(&self) -> bool {
        matches!(self, ManageError::Destination(_) | ManageError::Topic(_) | ManageError::SameQueue(_))
    }
}

/// Which pending messages of the source a move takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pick {
    /// Every message pending when the move began.
    All,
    /// The first `n` pending, in id order.
    First(usize),
    /// These, when pending.
    Ids(Vec<MessageId>),
}

/// What a delete or move did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Messages removed (or moved).
    pub count: u64,
    /// Ids asked for that were not pending: in flight at a consumer, or not in the queue.
    pub missing: Vec<MessageId>,
}

impl Broker {
    /// The point-to-point queue `destination`, without creating it.
    pub fn existing_queue(&self, destination: &str) -> Result<Arc<Queue>, ManageError> {
        let (is_queue, _) = parse_destination(destination)?;
        if !is_queue {
            return Err(ManageError::Topic(destination.to_string()));
        }
        if is_reserved(destination) {
            return Err(DestinationError::Reserved(destination.to_string()).into());
        }
        self.queues.read().get(destination).cloned().ok_or_else(|| ManageError::NoSuchQueue(destination.to_string()))
    }

    /// The first `limit` pending messages of `destination`, and how many are pending.
    pub fn browse_pending(&self, destination: &str, limit: usize) -> Result<(Vec<Entry>, usize), ManageError> {
        Ok(self.existing_queue(destination)?.peek_pending(limit))
    }

    /// Removes every message pending in `destination` when the purge began (in flight ones
    /// stay with their consumers); returns how many.
    pub async fn purge_queue(self: &Arc<Self>, destination: &str) -> Result<u64, ManageError> {
        let queue = self.existing_queue(destination)?;
        let below = self.message_id_bound();
        let mut removed = 0;
        loop {
            let ids = queue.pending_ids(below, BATCH);
            if ids.is_empty() {
                break;
            }
            removed += self.remove(&queue, &ids).await?.len() as u64;
        }
        // Then what is in the journal only (paging): those are never delivered, so they
        // need no bound; one record per batch.
        loop {
            let ids = queue.take_paged(PAGED_BATCH);
            if ids.is_empty() {
                break;
            }
            removed += self.remove_paged(&queue, ids).await? as u64;
        }
        self.metrics.admin_messages("purged", removed);
        tracing::info!(queue = %destination, removed, "purged by an admin request");
        Ok(removed)
    }

    /// Removes the pending messages of `destination` with these ids.
    pub async fn delete_messages(self: &Arc<Self>, destination: &str, ids: &[MessageId]) -> Result<Outcome, ManageError> {
        let queue = self.existing_queue(destination)?;
        let mut outcome = Outcome::default();
        for chunk in sorted(ids).chunks(BATCH) {
            let removed = self.remove(&queue, chunk).await?;
            outcome.count += removed.len() as u64;
            // Not waiting in memory: paged (in the journal only), or not there at all.
            let rest = not_in(chunk, &removed);
            let paged = queue.remove_paged(&rest);
            outcome.missing.extend(not_in(&rest, &paged));
            outcome.count += self.remove_paged(&queue, paged).await? as u64;
        }
        self.metrics.admin_messages("deleted", outcome.count);
        tracing::info!(queue = %destination, removed = outcome.count, missing = outcome.missing.len(), "messages deleted by an admin request");
        Ok(outcome)
    }

    /// Moves pending messages of `from` to the queue `to` (created if need be), in their
    /// order: each batch is one journal record adding them to `to` and acking them from
    /// `from`. On an error, what earlier batches moved stays moved and the rest stays put.
    pub async fn move_messages(self: &Arc<Self>, from: &str, to: &str, pick: Pick) -> Result<Outcome, ManageError> {
        let source = self.existing_queue(from)?;
        let (to_queue, _) = parse_destination(to)?;
        if !to_queue {
            return Err(ManageError::Topic(to.to_string()));
        }
        if from == to {
            return Err(ManageError::SameQueue(to.to_string()));
        }
        // The target passes the checks of any send (reserved names, maxDestinations).
        self.resolve(to)?;
        let below = self.message_id_bound();
        let mut outcome = Outcome::default();
        let asked = match &pick {
            Pick::Ids(ids) => sorted(ids),
            _ => Vec::new(),
        };
        let mut chunks = asked.chunks(BATCH);
        loop {
            let ids = match pick {
                Pick::All => source.pending_ids(below, BATCH),
                Pick::First(n) => source.pending_ids(below, BATCH.min(n.saturating_sub(outcome.count as usize))),
                Pick::Ids(_) => chunks.next().map(<[MessageId]>::to_vec).unwrap_or_default(),
            };
            if ids.is_empty() {
                break;
            }
            let moved = self.move_batch(&source, to, &ids).await;
            self.metrics.admin_messages("moved", moved.as_ref().map_or(0, |m| m.len() as u64));
            let moved = moved?;
            outcome.count += moved.len() as u64;
            if matches!(pick, Pick::Ids(_)) {
                outcome.missing.extend(not_in(&ids, &moved));
            }
        }
        tracing::info!(from, to, moved = outcome.count, missing = outcome.missing.len(), "messages moved by an admin request");
        Ok(outcome)
    }

    /// Takes `ids` out of `queue` and journals their removal; puts them back if that fails.
    async fn remove(self: &Arc<Self>, queue: &Arc<Queue>, ids: &[MessageId]) -> Result<Vec<MessageId>, ManageError> {
        let taken = queue.remove_pending(ids);
        let acks = Settled::removed(taken.iter().filter(|e| e.journaled).map(|e| e.message.id).collect());
        match self.acknowledge(acks, Commit::Grouped).await {
            Ok(_) => Ok(taken.iter().map(|e| e.message.id).collect()),
            Err(source) => {
                queue.restore(taken);
                Err(ManageError::Persist { queue: queue.name.to_string(), source: Box::new(source) })
            }
        }
    }

    /// Journals the removal of paged messages taken out of `queue`; pages them again if
    /// that fails. Returns how many.
    async fn remove_paged(self: &Arc<Self>, queue: &Arc<Queue>, ids: Vec<MessageId>) -> Result<usize, ManageError> {
        if ids.is_empty() {
            return Ok(0);
        }
        match self.acknowledge(Settled::removed(ids.clone()), Commit::Grouped).await {
            Ok(_) => Ok(ids.len()),
            Err(source) => {
                queue.repage(&ids);
                Err(ManageError::Persist { queue: queue.name.to_string(), source: Box::new(source) })
            }
        }
    }

    /// Moves the pending messages among `ids` from `source` to `to` in one journal record.
    async fn move_batch(self: &Arc<Self>, source: &Arc<Queue>, to: &str, ids: &[MessageId]) -> Result<Vec<MessageId>, ManageError> {
        let taken = source.remove_pending(ids);
        let mut sends = Vec::with_capacity(taken.len());
        for entry in &taken {
            let copy = Incoming {
                destination: to.to_string(),
                headers: entry.message.headers.clone(),
                body: entry.message.body.clone(),
                persistent: entry.message.persistent,
                // Its headers carry the producer's id already (dedup::STORED_HEADER).
                dedup_id: None,
            };
            match self.prepare(copy).await {
                Ok(send) => sends.push(send),
                Err(source_error) => {
                    drop(sends);
                    source.restore(taken);
                    return Err(ManageError::Target { queue: to.to_string(), from: source.name.to_string(), source: Box::new(source_error) });
                }
            }
        }
        let acks = Settled::removed(taken.iter().filter(|e| e.journaled).map(|e| e.message.id).collect());
        match self.commit(sends, acks, Commit::Grouped).await {
            Ok(durable) => {
                durable.publish();
                Ok(taken.iter().map(|e| e.message.id).collect())
            }
            Err(error) => {
                source.restore(taken);
                Err(ManageError::Persist { queue: source.name.to_string(), source: Box::new(error) })
            }
        }
    }
}

/// `ids` in id order, each once.
fn sorted(ids: &[MessageId]) -> Vec<MessageId> {
    let mut out = ids.to_vec();
    out.sort();
    out.dedup();
    out
}

/// The ids of `asked` not in `done`.
fn not_in(asked: &[MessageId], done: &[MessageId]) -> Vec<MessageId> {
    asked.iter().filter(|id| !done.contains(id)).copied().collect()
}


#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BrokerConfig;
    use crate::engine::metrics::EngineMetrics;
    use crate::engine::Target;
    use crate::journal::JournalMetrics;
    use bytes::Bytes;

    fn open(dir: &std::path::Path) -> Arc<Broker> {
        let mut config = BrokerConfig::default();
        config.storage.data_dir = dir.to_path_buf();
        config.node.id = "manage".into();
        match Broker::open(Arc::new(config), Vec::new(), JournalMetrics::unregistered(), EngineMetrics::default(), false) {
            Ok((broker, _)) => broker,
            Err(e) => panic!("open broker: {e}"),
        }
    }

    async fn send(broker: &Arc<Broker>, destination: &str, body: &str) {
        let incoming = Incoming {
            destination: destination.into(),
            headers: vec![("n".into(), body.into())],
            body: Bytes::from(body.to_string()),
            persistent: true,
            dedup_id: None,
        };
        let acceptance = broker.accept(incoming, Commit::Grouped).await.expect("accept");
        acceptance.await.expect("durable").publish();
    }

    fn bodies(broker: &Broker, destination: &str) -> Vec<String> {
        let (entries, _) = broker.browse_pending(destination, 100).unwrap_or_default();
        entries.iter().map(|e| String::from_utf8_lossy(&e.message.body).into_owned()).collect()
    }

    fn records(broker: &Broker) -> u64 {
        broker.journal().expect("a file store").stats().records_appended
    }

    #[tokio::test]
    async fn given_a_move_should_journal_one_record_and_survive_a_reopen_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = open(dir.path());
        for body in ["a", "b", "c", "d"] {
            send(&broker, "/queue/dlq", body).await;
        }
        let before = records(&broker);
        let moved = broker.move_messages("/queue/dlq", "/queue/work", Pick::First(3)).await.expect("move");
        assert_eq!(moved, Outcome { count: 3, missing: Vec::new() });
        assert_eq!(records(&broker) - before, 1, "the adds and the acks in one record");
        assert_eq!((bodies(&broker, "/queue/dlq"), bodies(&broker, "/queue/work")), (vec!["d".to_string()], vec!["a".into(), "b".into(), "c".into()]));
        broker.close().expect("close");

        let reopened = open(dir.path());
        assert_eq!(bodies(&reopened, "/queue/dlq"), ["d"]);
        assert_eq!(bodies(&reopened, "/queue/work"), ["a", "b", "c"]);
        let (moved, _) = reopened.browse_pending("/queue/work", 1).expect("browse");
        assert_eq!(moved[0].message.headers, [("n".to_string(), "a".to_string())]);
        reopened.close().expect("close");
    }

    #[tokio::test]
    async fn given_deletes_and_a_purge_should_remove_for_good_and_name_what_was_missing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = open(dir.path());
        for body in ["a", "b", "c", "d", "e"] {
            send(&broker, "/queue/q", body).await;
        }
        let (entries, depth) = broker.browse_pending("/queue/q", 2).expect("browse");
        assert_eq!((entries.len(), depth), (2, 5));
        let gone = MessageId(u64::MAX - 1);
        let outcome = broker.delete_messages("/queue/q", &[entries[1].message.id, gone]).await.expect("delete");
        assert_eq!(outcome, Outcome { count: 1, missing: vec![gone] });
        assert_eq!(bodies(&broker, "/queue/q"), ["a", "c", "d", "e"]);
        assert!(broker.existing_queue("/queue/q").expect("queue").snapshot().bytes > 0);
        broker.close().expect("close");

        let reopened = open(dir.path());
        assert_eq!(bodies(&reopened, "/queue/q"), ["a", "c", "d", "e"]);
        assert_eq!(reopened.purge_queue("/queue/q").await.expect("purge"), 4);
        let queue = reopened.existing_queue("/queue/q").expect("queue");
        assert_eq!((queue.snapshot().depth, queue.snapshot().bytes, reopened.memory().used()), (0, 0, 0), "bytes freed");
        reopened.close().expect("close");
        let again = open(dir.path());
        assert!(again.existing_queue("/queue/q").is_err_and(|e| e.is_not_found()), "nothing came back");
        again.close().expect("close");
    }

    #[tokio::test]
    async fn given_wrong_destinations_should_refuse_them_and_create_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = open(dir.path());
        send(&broker, "/queue/q", "a").await;
        let Ok(Target::Topic(_)) = broker.resolve("/topic/t") else { panic!("a topic") };
        assert!(broker.existing_queue("/queue/none").is_err_and(|e| e.is_not_found()));
        assert!(matches!(broker.existing_queue("/topic/t"), Err(ManageError::Topic(_))));
        assert!(broker.existing_queue("/queue/$duomq.x").is_err_and(|e| e.is_bad_request()));
        for to in ["/topic/t", "/queue/q", "/queue/$duomq.x", "elsewhere"] {
            let refused = broker.move_messages("/queue/q", to, Pick::All).await;
            assert!(refused.as_ref().is_err_and(ManageError::is_bad_request), "{to}: {refused:?}");
        }
        assert!(broker.move_messages("/queue/none", "/queue/q", Pick::All).await.is_err_and(|e| e.is_not_found()));
        assert_eq!(broker.destination_count(), 2, "the queue and the topic only");
        assert_eq!(bodies(&broker, "/queue/q"), ["a"]);
        broker.close().expect("close");
    }
}
