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
//! Paged messages (in the journal only, see [`super::paging`]) count as pending: a browse
//! shows them after those in memory, a move moves them after those in memory, both
//! reading them from the journal in bounded batches ([`Broker::read_paged`]), never the
//! whole backlog at once, while reading back into memory is held for that queue
//! ([`PagingHold`]); a purge or delete takes them by id.
//!
//! What it must not do: speak HTTP, create the queue it works on (only a move's target is
//! created, within `destinations.maxDestinations`), or hold a queue's lock across a write.

use super::accept::{AcceptError, Commit, Incoming, Settled};
use super::message::Entry;
use super::paging::{PagedReadError, PagingHold};
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
    #[error(transparent)]
    Paged(#[from] PagedReadError),
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

    /// The first `limit` pending messages of `destination`, and how many are pending:
    /// those in memory in id order, then paged ones in id order, read from the journal a
    /// batch at a time until `limit` is reached.
    pub async fn browse_pending(self: &Arc<Self>, destination: &str, limit: usize) -> Result<(Vec<Entry>, usize), ManageError> {
        let queue = self.existing_queue(destination)?;
        let _hold = PagingHold::new(&queue).await;
        let (mut entries, depth) = queue.peek_pending(limit);
        let depth = depth + queue.snapshot_paged() as usize;
        let mut from = queue.paged_from();
        let mut paged = Vec::new();
        while let Some(at) = from.filter(|_| entries.len() + paged.len() < limit) {
            let batch = self.read_paged(&queue, at, (limit - entries.len() - paged.len()).min(BATCH), Arc::new(|_| true)).await?;
            paged.extend(batch.entries);
            from = batch.next;
        }
        paged.sort_by_key(|e| e.message.id);
        paged.truncate(limit - entries.len());
        entries.extend(paged);
        Ok((entries, depth))
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
        // Nothing is read back into memory meanwhile: what is paged moves in order.
        let _hold = PagingHold::new(&source).await;
        let job = Moving { source: &source, to, pick: &pick, below };
        // In memory, then paged.
        outcome.missing = self.move_pending(&job, asked, &mut outcome.count).await?;
        let not_found = self.move_paged(&job, &mut outcome).await?;
        if let Pick::Ids(_) = pick {
            outcome.missing = not_found;
        }
        tracing::info!(from, to, moved = outcome.count, missing = outcome.missing.len(), "messages moved by an admin request");
        Ok(outcome)
    }

    /// Moves the messages of `source` pending in memory that `pick` takes (with
    /// [`Pick::Ids`], those of `asked`) to `to`, in batches; returns the ids of `asked`
    /// that were not pending in memory.
    async fn move_pending(self: &Arc<Self>, job: &Moving<'_>, asked: Vec<MessageId>, count: &mut u64) -> Result<Vec<MessageId>, ManageError> {
        let Moving { source, to, pick, below } = *job;
        let mut chunks = asked.chunks(BATCH);
        let mut missing = Vec::new();
        loop {
            let ids = match pick {
                Pick::All => source.pending_ids(below, BATCH),
                Pick::First(n) => source.pending_ids(below, BATCH.min(n.saturating_sub(*count as usize))),
                Pick::Ids(_) => chunks.next().map(<[MessageId]>::to_vec).unwrap_or_default(),
            };
            if ids.is_empty() {
                return Ok(missing);
            }
            let moved = self.move_batch(source, to, &ids).await;
            self.metrics.admin_messages("moved", moved.as_ref().map_or(0, |m| m.len() as u64));
            let moved = moved?;
            *count += moved.len() as u64;
            if matches!(pick, Pick::Ids(_)) {
                missing.extend(not_in(&ids, &moved));
            }
        }
    }

    /// Moves the paged messages of `source` that `pick` takes (those below `below`, the
    /// first ones up to its count, those of `outcome.missing`) to `to`, reading them from
    /// the journal in batches of up to [`BATCH`], each batch one journal record. Returns
    /// the ids of `outcome.missing` it did not find paged.
    async fn move_paged(self: &Arc<Self>, job: &Moving<'_>, outcome: &mut Outcome) -> Result<Vec<MessageId>, ManageError> {
        let Moving { source, to, pick, below } = *job;
        let mut not_found: std::collections::BTreeSet<MessageId> = match pick {
            Pick::Ids(_) => outcome.missing.iter().copied().collect(),
            _ => Default::default(),
        };
        let mut from = source.paged_from();
        while let Some(at) = from {
            let room = match pick {
                Pick::First(n) => n.saturating_sub(outcome.count as usize).min(BATCH),
                Pick::Ids(_) if not_found.is_empty() => 0,
                _ => BATCH,
            };
            if room == 0 {
                break;
            }
            let wanted: Arc<dyn Fn(MessageId) -> bool + Send + Sync> = match pick {
                Pick::Ids(_) => {
                    let ids = not_found.clone();
                    Arc::new(move |id| ids.contains(&id))
                }
                _ => Arc::new(move |id| id < below),
            };
            let batch = self.read_paged(source, at, room, wanted).await?;
            from = batch.next;
            // A record read whole may hold more than asked for: moved in batches all the same.
            let mut entries = batch.entries;
            if let Pick::First(n) = pick {
                entries.truncate(n.saturating_sub(outcome.count as usize));
            }
            for chunk in entries.chunks(BATCH) {
                let moved = self.move_paged_batch(source, to, chunk).await;
                self.metrics.admin_messages("moved", moved.as_ref().map_or(0, |m| m.len() as u64));
                let moved = moved?;
                outcome.count += moved.len() as u64;
                for id in &moved {
                    not_found.remove(id);
                }
            }
        }
        Ok(not_found.into_iter().collect())
    }

    /// Moves the paged messages `entries` (read from the journal) that are still paged
    /// from `source` to `to` in one journal record; pages them again if that fails.
    async fn move_paged_batch(self: &Arc<Self>, source: &Arc<Queue>, to: &str, entries: &[Entry]) -> Result<Vec<MessageId>, ManageError> {
        let ids: Vec<MessageId> = entries.iter().map(|e| e.message.id).collect();
        let taken = source.remove_paged(&ids);
        let mut sends = Vec::with_capacity(taken.len());
        for entry in entries.iter().filter(|e| taken.contains(&e.message.id)) {
            match self.prepare(moved_copy(entry, to)).await {
                Ok(send) => sends.push(send),
                Err(source_error) => {
                    drop(sends);
                    source.repage(&taken);
                    return Err(ManageError::Target { queue: to.to_string(), from: source.name.to_string(), source: Box::new(source_error) });
                }
            }
        }
        match self.commit(sends, Settled::removed(taken.clone()), Commit::Grouped).await {
            Ok(durable) => {
                durable.publish();
                Ok(taken)
            }
            Err(error) => {
                source.repage(&taken);
                Err(ManageError::Persist { queue: source.name.to_string(), source: Box::new(error) })
            }
        }
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
            match self.prepare(moved_copy(entry, to)).await {
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

/// One admin move: from `source` to `to`, the messages `pick` takes of those with ids
/// below `below` (stored when it began).
#[derive(Clone, Copy)]
struct Moving<'a> {
    source: &'a Arc<Queue>,
    to: &'a str,
    pick: &'a Pick,
    below: MessageId,
}

/// The message `entry` holds, as sent anew to `to` by a move.
fn moved_copy(entry: &Entry, to: &str) -> Incoming {
    Incoming {
        destination: to.to_string(),
        headers: entry.message.headers.clone(),
        body: entry.message.body.clone(),
        persistent: entry.message.persistent,
        // Its headers carry the producer's id already (dedup::STORED_HEADER).
        dedup_id: None,
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
        open_with(dir, Vec::new())
    }

    fn open_with(dir: &std::path::Path, settings: Vec<crate::config::AddressSettingsEntry>) -> Arc<Broker> {
        let mut config = BrokerConfig::default();
        config.storage.data_dir = dir.to_path_buf();
        config.storage.segment_size = crate::config::ByteSize::kib(256);
        config.node.id = "manage".into();
        config.address_settings = settings;
        match Broker::open(Arc::new(config), Vec::new(), JournalMetrics::unregistered(), EngineMetrics::default(), crate::faults::Faults::off(), false) {
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

    async fn bodies(broker: &Arc<Broker>, destination: &str) -> Vec<String> {
        let (entries, _) = broker.browse_pending(destination, 100).await.unwrap_or_default();
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
        assert_eq!((bodies(&broker, "/queue/dlq").await, bodies(&broker, "/queue/work").await), (vec!["d".to_string()], vec!["a".into(), "b".into(), "c".into()]));
        broker.close().expect("close");

        let reopened = open(dir.path());
        assert_eq!(bodies(&reopened, "/queue/dlq").await, ["d"]);
        assert_eq!(bodies(&reopened, "/queue/work").await, ["a", "b", "c"]);
        let (moved, _) = reopened.browse_pending("/queue/work", 1).await.expect("browse");
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
        let (entries, depth) = broker.browse_pending("/queue/q", 2).await.expect("browse");
        assert_eq!((entries.len(), depth), (2, 5));
        let gone = MessageId(u64::MAX - 1);
        let outcome = broker.delete_messages("/queue/q", &[entries[1].message.id, gone]).await.expect("delete");
        assert_eq!(outcome, Outcome { count: 1, missing: vec![gone] });
        assert_eq!(bodies(&broker, "/queue/q").await, ["a", "c", "d", "e"]);
        assert!(broker.existing_queue("/queue/q").expect("queue").snapshot().bytes > 0);
        broker.close().expect("close");

        let reopened = open(dir.path());
        assert_eq!(bodies(&reopened, "/queue/q").await, ["a", "c", "d", "e"]);
        assert_eq!(reopened.purge_queue("/queue/q").await.expect("purge"), 4);
        let queue = reopened.existing_queue("/queue/q").expect("queue");
        assert_eq!((queue.snapshot().depth, queue.snapshot().bytes, reopened.memory().used()), (0, 0, 0), "bytes freed");
        reopened.close().expect("close");
        let again = open(dir.path());
        assert!(again.existing_queue("/queue/q").is_err_and(|e| e.is_not_found()), "nothing came back");
        again.close().expect("close");
    }

    /// Every queue pages past 64 KiB.
    fn paging() -> Vec<crate::config::AddressSettingsEntry> {
        crate::engine::paging::test_kit::paging_past_64kib(">")
    }

    /// Sends `range` as 1 KiB messages numbered by header `n`.
    async fn send_numbered(broker: &Arc<Broker>, destination: &str, range: std::ops::Range<usize>) {
        for n in range {
            let incoming = Incoming {
                destination: destination.into(),
                headers: vec![("n".into(), n.to_string())],
                body: Bytes::from(vec![b'x'; 1024]),
                persistent: true,
                dedup_id: None,
            };
            broker.accept(incoming, Commit::Grouped).await.expect("accept").await.expect("durable").publish();
        }
    }

    /// What a browse of `destination` shows: the `n` headers, and the depth.
    async fn numbers(broker: &Arc<Broker>, destination: &str, limit: usize) -> (Vec<usize>, usize) {
        let (entries, depth) = broker.browse_pending(destination, limit).await.expect("browse");
        let n = |e: &Entry| e.message.headers.iter().find(|(k, _)| k == "n").and_then(|(_, v)| v.parse().ok()).expect("n header");
        (entries.iter().map(n).collect(), depth)
    }

    /// A broker whose queue `destination` holds messages 0..1300, most of them paged.
    async fn paged_backlog(dir: &std::path::Path, destination: &str) -> (Arc<Broker>, Arc<Queue>) {
        let broker = open_with(dir, paging());
        send_numbered(&broker, destination, 0..1300).await;
        let queue = broker.existing_queue(destination).expect("queue");
        let paged = queue.snapshot().paged;
        assert!(paged > 1000, "most of it paged: {paged}");
        (broker, queue)
    }

    #[tokio::test]
    async fn given_a_paged_backlog_should_browse_it_after_memory_in_order_and_nothing_taken() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (broker, queue) = paged_backlog(dir.path(), "/queue/big").await;
        let paged = queue.snapshot().paged;
        assert_eq!(numbers(&broker, "/queue/big", 10).await, ((0..10).collect(), 1300));
        assert_eq!(numbers(&broker, "/queue/big", 1300).await, ((0..1300).collect(), 1300), "memory, then the journal");
        let (past_memory, _) = numbers(&broker, "/queue/big", 700).await;
        assert_eq!(past_memory, (0..700).collect::<Vec<_>>());
        assert_eq!(queue.snapshot().paged, paged, "a browse takes nothing out of the paged set");
        assert!(broker.memory().used() < 80 * 1024, "nor keeps it in memory: {}", broker.memory().used());
        broker.close().expect("close");
    }

    #[tokio::test]
    async fn given_a_paged_backlog_should_move_it_in_batches_of_500_and_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (broker, source) = paged_backlog(dir.path(), "/queue/src").await;
        let in_memory = source.snapshot().depth;
        // By id: one in memory, two paged, one that is not there.
        let (entries, _) = broker.browse_pending("/queue/src", 1300).await.expect("browse");
        let gone = MessageId(u64::MAX - 1);
        let ids = [entries[0].message.id, entries[900].message.id, entries[1299].message.id, gone];
        let outcome = broker.move_messages("/queue/src", "/queue/picked", Pick::Ids(ids.to_vec())).await.expect("move ids");
        assert_eq!(outcome, Outcome { count: 3, missing: vec![gone] });
        assert_eq!(numbers(&broker, "/queue/picked", 10).await, (vec![0, 900, 1299], 3));
        // The first 600: the ones in memory, then paged ones.
        let first = broker.move_messages("/queue/src", "/queue/dst", Pick::First(600)).await.expect("move first");
        assert_eq!(first.count, 600);
        let before = records(&broker);
        let rest = broker.move_messages("/queue/src", "/queue/dst", Pick::All).await.expect("move all");
        assert_eq!(rest.count, 1300 - 3 - 600);
        let written = records(&broker) - before;
        assert!((2..=4).contains(&written), "697 paged messages in batches of up to 500: {written} records (in memory before: {in_memory})");
        let expected: Vec<usize> = (1..1299).filter(|n| *n != 900).collect();
        assert_eq!(numbers(&broker, "/queue/dst", 2000).await, (expected.clone(), 1297), "all of them, in order");
        let after = broker.existing_queue("/queue/src").expect("queue").snapshot();
        assert_eq!((after.depth, after.paged), (0, 0), "{after:?}");
        broker.close().expect("close");
        drop(broker);

        let reopened = open_with(dir.path(), paging());
        assert_eq!(numbers(&reopened, "/queue/dst", 2000).await, (expected, 1297));
        let left = reopened.browse_pending("/queue/src", 10).await;
        assert!(left.as_ref().is_err_and(|e| e.is_not_found()), "nothing came back: {:?}", left.as_ref().map(|(e, d)| (e.len(), *d)));
        reopened.close().expect("close");
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
        assert_eq!(bodies(&broker, "/queue/q").await, ["a"]);
        broker.close().expect("close");
    }
}
