//! Paging (Artemis' PAGE address-full policy): a queue past its `maxSizeBytes` keeps
//! accepting persistent messages, journaled and replicated as always, but not kept in
//! memory; they are read back from the journal, in journal order, as consumers catch up.
//!
//! What a paged message costs in memory: its id in a compressed set ([`RoaringTreemap`]:
//! about a bit per id while ids run dense, a few bytes where they are sparse) and a share
//! of one byte counter. Per paging queue there is one journal cursor. The journal keeps
//! every segment holding a paged message (it is live, not acknowledged), so reading back
//! finds it there; a restart recovers a backlog into this paged state rather than into
//! memory (see [`super::Broker::with_store`]).
//!
//! A durable subscription's queue pages the same way: its persistent copies are journaled
//! under the subscription's own journal destination (`Queue::journal_destination`),
//! which reading back looks for.
//!
//! Reading back ([`run`]): a task wakes whenever memory is released (an ack) and at a
//! short tick; a paging queue holding less than half its `maxSizeBytes` in memory gets
//! the next messages of its paged set read from its cursor on, up to its `maxSizeBytes`,
//! on a blocking thread. A message becomes paged only before its record is appended, so
//! the cursor never passes a record that is paged later. Reading goes only as far as the
//! replication gate confirmed (see `crate::journal::page_reader`), and a backup that took
//! over from a dead live marks what it reads back of the old live's records redelivered,
//! as it marks the messages it recovers into memory.

use super::message::Entry;
use super::queue::Queue;
use super::Broker;
use crate::journal::{MessageId, PageCursor, StoredMessage};
use roaring::RoaringTreemap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often reading back looks for work besides being woken by released memory.
const TICK: Duration = Duration::from_millis(100);

/// A queue's messages that live in the journal only.
#[derive(Debug, Default)]
pub struct Paged {
    ids: RoaringTreemap,
    /// Their footprint (what they would count against memory limits).
    bytes: u64,
    /// Where reading back goes on.
    cursor: PageCursor,
    /// A read is under way (see [`Paged::start_read`]).
    reading: bool,
    /// Ids were paged again after reads may have passed their records (see
    /// [`Paged::repage`]): the next read starts over from the oldest segment.
    rewind: bool,
    /// Admin operations that hold reading back (see [`PagingHold`]).
    holds: usize,
}

impl Paged {
    /// Paged messages recovered from the journal, read back from `from` on.
    pub fn recovered(ids: RoaringTreemap, bytes: u64, from: PageCursor) -> Paged {
        Paged { ids, bytes, cursor: from, reading: false, rewind: false, holds: 0 }
    }

    /// Where the paged messages begin in the journal (none lies before it).
    pub fn from(&self) -> PageCursor {
        if self.rewind {
            PageCursor::start()
        } else {
            self.cursor
        }
    }

    /// Pages again ids taken out of the set (an admin operation that could not journal
    /// their removal): reads may have passed their records meanwhile, so reading starts
    /// over from the oldest segment once.
    pub fn repage(&mut self, ids: &[MessageId], footprint: usize) {
        for id in ids {
            self.insert(*id, footprint);
        }
        self.cursor = PageCursor::start();
        self.rewind = self.reading;
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn count(&self) -> u64 {
        self.ids.len()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn contains(&self, id: MessageId) -> bool {
        self.ids.contains(id.0)
    }

    pub fn insert(&mut self, id: MessageId, footprint: usize) {
        if self.ids.insert(id.0) {
            self.bytes += footprint as u64;
        }
    }

    /// Takes `id` out of the set; false when it was not paged.
    pub fn remove(&mut self, id: MessageId, footprint: usize) -> bool {
        let removed = self.ids.remove(id.0);
        if removed {
            self.bytes = self.bytes.saturating_sub(footprint as u64);
        }
        removed
    }

    /// Takes up to `limit` paged ids, lowest first, out of the set (an admin purge); their
    /// bytes are estimated at the set's average footprint. A read under way drops them.
    pub fn take(&mut self, limit: usize) -> Vec<MessageId> {
        let ids: Vec<MessageId> = self.ids.iter().take(limit).map(MessageId).collect();
        for id in &ids {
            self.remove_estimated(*id);
        }
        ids
    }

    /// Takes `id` out of the set if it is there, its bytes estimated at the average
    /// footprint (an admin delete knows the id only); false when it was not paged.
    pub fn remove_estimated(&mut self, id: MessageId) -> bool {
        let average = self.bytes.checked_div(self.ids.len()).unwrap_or(0) as usize;
        self.remove(id, average)
    }

    /// Claims the next read when none is under way: returns where it starts.
    pub fn start_read(&mut self) -> Option<PageCursor> {
        if self.reading || self.holds > 0 || self.ids.is_empty() {
            return None;
        }
        self.reading = true;
        Some(self.cursor)
    }

    /// Whether a read is under way.
    pub fn reading(&self) -> bool {
        self.reading
    }

    /// One more hold on reading back (none starts while any is held).
    pub fn hold(&mut self) {
        self.holds += 1;
    }

    pub fn release(&mut self) {
        self.holds = self.holds.saturating_sub(1);
    }

    /// A read ended; the next one goes on from `cursor` (unchanged after a failed read, or
    /// from the start after a [`Paged::repage`] during the read).
    pub fn end_read(&mut self, cursor: Option<PageCursor>) {
        self.reading = false;
        match cursor {
            Some(_) if std::mem::take(&mut self.rewind) => self.cursor = PageCursor::start(),
            Some(c) => self.cursor = c,
            None => {}
        }
    }
}

/// Keeps a queue's paged messages from being read back into memory while it lives: an
/// admin browse or move walks the paged set in order, and a message read back meanwhile
/// would be missed or moved out of order. Released on drop.
pub struct PagingHold(Arc<Queue>);

impl PagingHold {
    /// Holds reading back for `queue`, once a read under way has ended.
    pub async fn new(queue: &Arc<Queue>) -> PagingHold {
        queue.hold_paging();
        let hold = PagingHold(Arc::clone(queue));
        while queue.paging_read_under_way() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        hold
    }
}

impl Drop for PagingHold {
    fn drop(&mut self) {
        self.0.release_paging();
    }
}

/// Paged messages read for a look or an admin move, not taken out of their queue.
#[derive(Debug, Default)]
pub struct PagedBatch {
    /// In journal order.
    pub entries: Vec<Entry>,
    /// Where the next batch goes on; none once the read reached the confirmed end.
    pub next: Option<PageCursor>,
}

/// Journal bytes of message bodies one [`Broker::read_paged`] keeps at most (besides its
/// message count), so a look at a backlog of large messages stays bounded too.
const LOOK_BUDGET: usize = 4 * 1024 * 1024;

/// Why paged messages could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PagedReadError {
    #[error("failed to read paged messages of {queue} from the journal")]
    Journal { queue: String, source: crate::journal::JournalError },
    #[error("the read of paged messages of {queue} stopped")]
    Stopped { queue: String },
}

impl Broker {
    /// Reads up to `max` (about: the last record read is read whole) of `queue`'s messages
    /// that are paged now and that `pick` takes, from `from` on, without taking them out
    /// of the queue: an admin browse or move, a STOMP browser. On a blocking thread.
    pub async fn read_paged(
        self: &Arc<Self>,
        queue: &Arc<Queue>,
        from: PageCursor,
        max: usize,
        pick: Arc<dyn Fn(MessageId) -> bool + Send + Sync>,
    ) -> Result<PagedBatch, PagedReadError> {
        let reading = Arc::clone(self);
        let q = Arc::clone(queue);
        let read = tokio::task::spawn_blocking(move || {
            let journal = reading.journal()?;
            let want = |m: &StoredMessage| m.destination == q.journal_destination() && q.is_paged(m.id) && pick(m.id);
            Some(journal.read_adds_limited(from, LOOK_BUDGET, max.max(1), want))
        })
        .await;
        let read = match read {
            Ok(Some(Ok(read))) => read,
            Ok(Some(Err(source))) => return Err(PagedReadError::Journal { queue: queue.name.to_string(), source }),
            // No file journal: nothing can be paged.
            Ok(None) => return Ok(PagedBatch::default()),
            Err(_) => return Err(PagedReadError::Stopped { queue: queue.name.to_string() }),
        };
        self.metrics.paging_read_bytes.inc_by(read.bytes_read);
        let next = (!read.at_end).then_some(read.cursor);
        let entries = read
            .messages
            .into_iter()
            .map(|m| {
                let redelivered = self.possibly_delivered(m.id);
                self.recovered_entry(queue, m, redelivered)
            })
            .collect();
        Ok(PagedBatch { entries, next })
    }
}

/// Reads paged messages back into their queues as they have room, until `stop`.
pub async fn run(broker: Arc<Broker>, stop: CancellationToken) {
    loop {
        let freed = broker.memory.freed();
        tokio::pin!(freed);
        freed.as_mut().enable();
        let work: Vec<(Arc<Queue>, PageCursor, usize)> =
            broker.paging_queues().into_iter().filter_map(|q| q.want_page_in().map(|(c, budget)| (q, c, budget))).collect();
        for (queue, cursor, budget) in work {
            let reading = Arc::clone(&broker);
            let q = Arc::clone(&queue);
            let read = tokio::task::spawn_blocking(move || {
                let journal = reading.journal()?;
                let want = |m: &StoredMessage| m.destination == q.journal_destination() && q.is_paged(m.id);
                Some(journal.read_adds(cursor, budget, want))
            })
            .await;
            match read {
                Ok(Some(Ok(read))) => {
                    broker.metrics.paging_reads.inc();
                    broker.metrics.paging_read_bytes.inc_by(read.bytes_read);
                    let entries: Vec<Entry> = read
                        .messages
                        .into_iter()
                        .map(|m| {
                            let redelivered = broker.possibly_delivered(m.id);
                            broker.recovered_entry(&queue, m, redelivered)
                        })
                        .collect();
                    queue.page_in(entries, Some(read.cursor));
                }
                Ok(Some(Err(e))) => {
                    tracing::error!(queue = %queue.name, error = &e as &dyn std::error::Error, "failed to read paged messages back from the journal; retrying");
                    queue.page_in(Vec::new(), None);
                }
                Ok(None) | Err(_) => queue.page_in(Vec::new(), None),
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = freed => {}
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}

#[cfg(test)]
pub(crate) mod test_kit {
    use super::*;
    use crate::config::{AddressSettingsEntry, ByteSize, FullPolicy};
    use crate::engine::accept::Commit;
    use crate::engine::queue::{AckMode, ConsumerHandle, Outbound};

    /// `addressSettings` paging the destinations `pattern` matches past 64 KiB.
    pub(crate) fn paging_past_64kib(pattern: &str) -> Vec<AddressSettingsEntry> {
        vec![AddressSettingsEntry {
            pattern: pattern.into(),
            max_size_bytes: Some(ByteSize::kib(64)),
            address_full_policy: Some(FullPolicy::Page),
            ..Default::default()
        }]
    }

    /// Consumes `count` messages of `queue` with the pager running, acknowledging each
    /// durably; returns their `n` headers and whether each came marked redelivered.
    pub(crate) async fn drain(broker: &Arc<Broker>, queue: &Arc<Queue>, count: usize) -> Vec<(String, bool)> {
        let stop = CancellationToken::new();
        let pager = tokio::spawn(run(Arc::clone(broker), stop.clone()));
        let (handle, mut rx) = ConsumerHandle::for_test(broker.next_consumer_key().0, 10, AckMode::ClientIndividual);
        let key = handle.key;
        queue.add_consumer(handle);
        let mut got = Vec::new();
        while got.len() < count {
            let Ok(Some(Outbound::Deliver(d))) = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await else {
                panic!("stalled after {} of {count} messages", got.len())
            };
            let n = d.entry.message.headers.iter().find(|(k, _)| k == "n").map(|(_, v)| v.clone()).expect("n header");
            got.push((n, d.entry.redelivered));
            let settled = broker.settle(queue, key, d.tag, false, false).expect("ack");
            broker.acknowledge(settled, Commit::Grouped).await.expect("ack durable");
        }
        queue.remove_consumer(key);
        stop.cancel();
        let _ = pager.await;
        got
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BrokerConfig, ByteSize, FullPolicy};
    use crate::engine::accept::{AcceptError, Commit, Incoming};
    use crate::engine::metrics::EngineMetrics;
    use crate::engine::Target;
    use crate::journal::JournalMetrics;
    use bytes::Bytes;

    fn open(dir: &std::path::Path, policy: FullPolicy) -> Arc<Broker> {
        open_after(dir, policy, false)
    }

    /// Opens as a backup taking over (`possibly_delivered`) or not.
    fn open_after(dir: &std::path::Path, policy: FullPolicy, possibly_delivered: bool) -> Arc<Broker> {
        let mut config = BrokerConfig::default();
        config.storage.data_dir = dir.to_path_buf();
        config.storage.segment_size = ByteSize::kib(256);
        config.node.id = "test".into();
        config.address_settings = super::test_kit::paging_past_64kib(">");
        config.address_settings[0].address_full_policy = Some(policy);
        match Broker::open(Arc::new(config), Vec::new(), JournalMetrics::unregistered(), EngineMetrics::default(), crate::faults::Faults::off(), possibly_delivered) {
            Ok((broker, _)) => broker,
            Err(e) => panic!("open broker: {e}"),
        }
    }

    fn message(n: usize) -> Incoming {
        Incoming {
            destination: "/queue/big".into(),
            headers: vec![("n".into(), n.to_string())],
            body: Bytes::from(vec![b'x'; 1024]),
            persistent: true,
            dedup_id: None,
        }
    }

    async fn send(broker: &Arc<Broker>, count: std::ops::Range<usize>) {
        for n in count {
            let accepted = broker.accept(message(n), Commit::Grouped).await.expect("accepted");
            accepted.await.expect("durable").publish();
        }
    }

    fn queue(broker: &Broker) -> Arc<Queue> {
        match broker.resolve("/queue/big") {
            Ok(Target::Queue(q)) => q,
            other => panic!("expected a queue, got {other:?}"),
        }
    }

    /// Consumes `count` messages with the pager running; returns their `n` headers.
    async fn drain(broker: &Arc<Broker>, count: usize) -> Vec<usize> {
        drain_marked(broker, count).await.into_iter().map(|(n, _)| n).collect()
    }

    /// As [`drain`], with whether each came marked redelivered.
    async fn drain_marked(broker: &Arc<Broker>, count: usize) -> Vec<(usize, bool)> {
        let got = super::test_kit::drain(broker, &queue(broker), count).await;
        got.into_iter().map(|(n, marked)| (n.parse().expect("a number"), marked)).collect()
    }

    #[tokio::test]
    async fn given_page_policy_should_keep_a_backlog_in_the_journal_and_read_it_back_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = open(dir.path(), FullPolicy::Page);
        send(&broker, 0..400).await;
        let snap = queue(&broker).snapshot();
        assert!(snap.paged > 300, "most of the backlog is paged: {snap:?}");
        assert_eq!(snap.depth as u64 + snap.paged, 400);
        assert!(broker.memory().used() < 80 * 1024, "memory holds about maxSizeBytes: {}", broker.memory().used());
        let got = drain(&broker, 400).await;
        assert_eq!(got, (0..400).collect::<Vec<_>>());
        assert_eq!(queue(&broker).snapshot().paged, 0);
        assert!(broker.metrics.paging_reads.get() > 0);
        broker.close().expect("close");
    }

    #[tokio::test]
    async fn given_a_paged_backlog_when_reopened_should_recover_it_paged_and_deliver_it_once_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = open(dir.path(), FullPolicy::Page);
        send(&broker, 0..300).await;
        assert_eq!(drain(&broker, 100).await, (0..100).collect::<Vec<_>>());
        broker.close().expect("close");
        drop(broker);
        let reopened = open(dir.path(), FullPolicy::Page);
        let snap = queue(&reopened).snapshot();
        assert!(snap.paged > 100 && snap.depth < 100, "recovered into the paged state: {snap:?}");
        send(&reopened, 300..350).await;
        // The first 100 were acked lazily: some may come back (at least once), none is lost.
        let rest = drain(&reopened, 250).await;
        let first = rest.iter().position(|&n| n >= 100).unwrap_or(0);
        assert_eq!(rest[first..], (100..350).collect::<Vec<_>>()[..rest.len() - first]);
        reopened.close().expect("close");
    }

    #[tokio::test]
    async fn given_a_backup_taking_over_a_paged_backlog_should_mark_what_it_reads_back_redelivered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = open(dir.path(), FullPolicy::Page);
        send(&broker, 0..300).await;
        broker.close().expect("close");
        drop(broker);
        let promoted = open_after(dir.path(), FullPolicy::Page, true);
        assert!(queue(&promoted).snapshot().paged > 200, "recovered paged");
        send(&promoted, 300..310).await;
        let got = drain_marked(&promoted, 310).await;
        assert_eq!(got.iter().map(|(n, _)| *n).collect::<Vec<_>>(), (0..310).collect::<Vec<_>>());
        let unmarked: Vec<usize> = got.iter().filter(|(n, marked)| *n < 300 && !marked).map(|(n, _)| *n).collect();
        assert!(unmarked.is_empty(), "the old live may have delivered these, yet they were not marked redelivered: {unmarked:?}");
        assert!(got[300..].iter().all(|(_, marked)| !marked), "sent to the new live: first deliveries");
        promoted.close().expect("close");
    }

    #[tokio::test]
    async fn given_fail_policy_should_refuse_at_once_naming_queue_and_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = open(dir.path(), FullPolicy::Fail);
        let mut refused = None;
        for n in 0..200 {
            match broker.accept(message(n), Commit::Grouped).await {
                Ok(a) => drop(a.await.expect("durable")),
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        match refused {
            Some(e @ AcceptError::Full { .. }) => {
                let text = e.to_string();
                assert!(text.contains("/queue/big") && text.contains("65536") && text.contains("fail"), "{text}");
            }
            other => panic!("expected Full, got {other:?}"),
        }
        assert_eq!(queue(&broker).snapshot().paged, 0);
        broker.close().expect("close");
    }

    #[test]
    fn given_paged_ids_should_count_bytes_and_claim_one_read_at_a_time() {
        let mut p = Paged::default();
        assert_eq!(p.start_read(), None, "nothing paged: nothing to read");
        p.insert(MessageId(7), 100);
        p.insert(MessageId(7), 100);
        p.insert(MessageId(9), 50);
        assert_eq!((p.count(), p.bytes()), (2, 150));
        let at = p.start_read().expect("a read");
        assert_eq!(p.start_read(), None, "one read at a time");
        p.end_read(Some(PageCursor { segment: at.segment + 1, offset: 32 }));
        assert_eq!(p.start_read(), Some(PageCursor { segment: 1, offset: 32 }));
        p.end_read(None);
        assert!(p.remove(MessageId(7), 100) && !p.remove(MessageId(7), 100));
        assert!(p.contains(MessageId(9)) && !p.contains(MessageId(7)));
        assert_eq!((p.count(), p.bytes()), (1, 50));
    }

    #[test]
    fn given_a_million_dense_ids_should_hold_them_in_well_under_a_byte_each() {
        let mut p = Paged::default();
        for id in 1_000_000..2_000_000u64 {
            p.insert(MessageId(id), 1024);
        }
        assert_eq!(p.count(), 1_000_000);
        assert!(p.ids.serialized_size() < 200_000, "{} bytes", p.ids.serialized_size());
    }
}
