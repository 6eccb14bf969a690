//! The writer thread: group commit, segment rolling and deciding what to reclaim.
//!
//! It takes everything queued (up to `max_batch_bytes`) as one batch, writes it with one
//! positional write and one `fdatasync`, then completes every waiter. A failed batch is
//! cut back off the segment so the file never holds a partial record, its waiters get
//! the error, and the thread keeps serving: a full disk is an outage, not a crash. It must
//! not block on anything but its own files, and never panics.
//!
//! Every batch opens with a sync mark holding its offset, in the same write: since a batch
//! is only written once the one before it is synced, the mark tells recovery that the
//! bytes before it were durable, which is how it tells damage from a torn tail (see
//! `recovery`). That ordering is the invariant to keep: never start a batch before the
//! previous one's fdatasync returned.
//!
//! A lone synchronous record on an idle journal skips the thread: [`Committer::commit_inline`]
//! writes and syncs it on the caller's thread, which saves the two cross-thread wake-ups of
//! a hand-off (tens of microseconds each on a virtual machine, as much as the fsync itself).
//! The writer state sits behind a mutex for that; whoever holds it commits.
//!
//! Slow directory work stays off this thread: the housekeeper has the next segment ready
//! before it is needed (a roll is a rename) and deletes reclaimed segments. The writer
//! only waits for the housekeeper when a segment fills before its successor is prepared.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::housekeeper::{Housekeeper, PendingSegment};
use super::lock::DirLock;
use super::reclaim::{Effect, Ledger};
use super::record;
use super::recovery::Recovery;
use super::segment::{self, PreparedSegment, SegmentHeader, SegmentSeq, HEADER_LEN};
use super::stats::SharedStats;
use super::{JournalConfig, JournalError, JournalMetrics, JournalStats, LAZY_SYNC_DELAY};

/// One queued record and whom to tell when it is durable.
pub(super) struct Request {
    /// The framed record, encoded by the caller so the writer only copies.
    pub(super) frame: Vec<u8>,
    pub(super) effects: Vec<Effect>,
    /// Values of the remembered header in its adds.
    pub(super) remembered: Vec<String>,
    pub(super) reply: oneshot::Sender<Result<(), JournalError>>,
}

/// What the writer's channel carries: records that want a group commit now, or a nudge
/// that lazy records are waiting (see [`LazyQueue`]).
pub(super) enum Queued {
    Sync(Request),
    Wake,
}

/// Lazy records (acknowledgements nobody waits for) wait here, beside the channel, so
/// that queueing one does not wake the writer: with a synchronous producer and its
/// consumer, every ack would otherwise cost the writer thread a wake-up and a context
/// switch between two group commits. They ride along with the next group commit, or are
/// written on their own within about [`LAZY_SYNC_DELAY`]. The writer only asks to be woken
/// for them while it sleeps without a timer (no traffic for [`HOT_PERIOD`]).
#[derive(Default)]
pub(super) struct LazyQueue {
    requests: parking_lot::Mutex<Vec<Request>>,
    idle: AtomicBool,
}

impl LazyQueue {
    /// Queues `request`; true when the writer is asleep without a timer and must be woken.
    pub(super) fn push(&self, request: Request) -> bool {
        self.requests.lock().push(request);
        self.idle.load(Ordering::SeqCst)
    }

    fn has_pending(&self) -> bool {
        !self.requests.lock().is_empty()
    }

    fn take(&self) -> Vec<Request> {
        std::mem::take(&mut *self.requests.lock())
    }
}

/// The writer's state, shared by the writer thread and callers that commit inline.
pub(super) struct Committer {
    /// `None` once the writer thread has finished (closed journal).
    slot: parking_lot::Mutex<Option<Writer>>,
    /// Synchronous records sent to the writer thread and not yet committed. Only changed
    /// down while `slot` is held, so a caller holding it and reading 0 knows that every
    /// record queued before it is on disk: an inline commit never overtakes one.
    pending: AtomicUsize,
    /// When the last batch was committed, by anyone: the writer thread stays hot (polls for
    /// lazy records) for [`HOT_PERIOD`] after it.
    last_commit: parking_lot::Mutex<Option<Instant>>,
}

impl Committer {
    pub(super) fn new(writer: Writer) -> Committer {
        Committer {
            slot: parking_lot::Mutex::new(Some(writer)),
            pending: AtomicUsize::new(0),
            last_commit: parking_lot::Mutex::new(None),
        }
    }

    /// A synchronous record is about to be sent to the writer thread.
    pub(super) fn queued(&self) {
        self.pending.fetch_add(1, Ordering::SeqCst);
    }

    /// Sending it failed after all.
    pub(super) fn unqueued(&self) {
        self.pending.fetch_sub(1, Ordering::SeqCst);
    }

    /// Writes and syncs `request`, with the lazy records waiting, on the calling thread, if
    /// the journal is idle and serves one synchronous record at a time: nobody is
    /// committing, nothing is queued for the writer thread, the previous batch carried at
    /// most one synchronous record, and no backup copies batches while they are synced
    /// (a backup's sender runs on the caller's runtime; blocking it would make replication
    /// serial). Otherwise gives `request` back for the writer thread, which keeps
    /// group commits for concurrent producers. Blocks for one write and one fdatasync.
    pub(super) fn commit_inline(&self, request: Request, lazy: &LazyQueue) -> Result<(), Request> {
        let Some(mut slot) = self.slot.try_lock() else { return Err(request) };
        let Some(writer) = slot.as_mut() else { return Err(request) };
        if self.pending.load(Ordering::SeqCst) != 0
            || writer.last_sync_records > 1
            || writer.replication.gate.has_replicas()
        {
            return Err(request);
        }
        let mut records = lazy.take();
        records.push(request);
        writer.counters.inline_batches += 1;
        writer.metrics.inline_batch();
        writer.commit(records, 1);
        *self.last_commit.lock() = Some(Instant::now());
        Ok(())
    }

    /// Whether nobody is committing and nothing is queued for the writer thread.
    #[cfg(test)]
    pub(super) fn is_idle(&self) -> bool {
        self.slot.try_lock().is_some() && self.pending.load(Ordering::SeqCst) == 0
    }

    /// Pretends the last batch carried `records` synchronous records.
    #[cfg(test)]
    pub(super) fn set_last_sync_records(&self, records: usize) {
        if let Some(writer) = self.slot.lock().as_mut() {
            writer.last_sync_records = records;
        }
    }

    /// Commits a batch the writer thread collected, `sync_records` of them from the channel.
    fn commit_queued(&self, records: Vec<Request>, sync_records: usize) {
        let mut slot = self.slot.lock();
        // Before the commit answers the waiters, who may append inline at once; nobody
        // can commit inline before the slot is free again anyway.
        self.pending.fetch_sub(sync_records, Ordering::SeqCst);
        if let Some(writer) = slot.as_mut() {
            writer.commit(records, sync_records);
        }
        *self.last_commit.lock() = Some(Instant::now());
    }

    fn hot(&self) -> bool {
        self.last_commit.lock().is_some_and(|at| at.elapsed() < HOT_PERIOD)
    }

    /// Serves batches until every sender is gone and the queue is empty, then syncs and
    /// drops the writer (releasing the directory lock).
    pub(super) fn run(&self, requests: Receiver<Queued>, lazy: Arc<LazyQueue>) -> Result<(), JournalError> {
        let mut held_back: Option<Request> = None;
        // When the writer first saw lazy records waiting; they are due LAZY_SYNC_DELAY later.
        let mut lazy_since: Option<Instant> = None;
        let max_batch_bytes = self.slot.lock().as_ref().map_or(usize::MAX, |w| w.max_batch_bytes);
        loop {
            let first = match held_back.take() {
                Some(request) => Some(request),
                None => {
                    if lazy_since.is_none() && lazy.has_pending() {
                        lazy_since = Some(Instant::now());
                    }
                    let timeout = match lazy_since {
                        Some(since) => Some(LAZY_SYNC_DELAY.saturating_sub(since.elapsed())),
                        None if self.hot() => Some(LAZY_SYNC_DELAY),
                        None => None,
                    };
                    match wait(&requests, &lazy, timeout) {
                        Ok(Queued::Sync(request)) => Some(request),
                        Ok(Queued::Wake) | Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
            };
            // Only synchronous records come through the channel: a non-empty batch asks
            // for a group commit now.
            let mut batch = Vec::new();
            let mut bytes = 0usize;
            if let Some(request) = first {
                bytes += request.frame.len();
                batch.push(request);
            }
            while bytes < max_batch_bytes {
                match requests.try_recv() {
                    Ok(Queued::Sync(request)) if bytes + request.frame.len() > max_batch_bytes => {
                        held_back = Some(request);
                        break;
                    }
                    Ok(Queued::Sync(request)) => {
                        bytes += request.frame.len();
                        batch.push(request);
                    }
                    Ok(Queued::Wake) => {}
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            let lazy_due = lazy_since.is_some_and(|since| since.elapsed() >= LAZY_SYNC_DELAY);
            if !batch.is_empty() || lazy_due {
                // Lazy records go first. Their order against the synchronous ones does not
                // matter: a lazy record only acknowledges messages already durable.
                let sync_records = batch.len();
                let mut records = lazy.take();
                records.append(&mut batch);
                lazy_since = None;
                if !records.is_empty() {
                    self.commit_queued(records, sync_records);
                }
            }
        }
        // Every sender is gone: nothing can be queued any more, and nobody commits inline
        // (that needs a sender too).
        let Some(mut writer) = self.slot.lock().take() else { return Ok(()) };
        let rest = lazy.take();
        if !rest.is_empty() {
            writer.commit(rest, 0);
        }
        writer.finish()
    }
}

/// After a group commit the writer wakes every [`LAZY_SYNC_DELAY`] for this long to pick up
/// lazy records, instead of being woken for each.
const HOT_PERIOD: Duration = Duration::from_secs(1);

/// How far past a small batch the writer writes zeros into preallocated space, in the same
/// write. `fallocate` leaves unwritten extents, and on ext4 the first write into each of
/// their blocks converts it, a metadata update that the batch's `fdatasync` writes too: a
/// 1 KiB record per sync paid it every fourth sync (140 us instead of 54 us here). Batches
/// that then land in zeroed blocks overwrite them, so their fdatasync flushes data only;
/// the zeros cost one larger write per [`ZERO_AHEAD`] bytes. 256 KiB makes that one sync
/// in about 230 at window 1, below the 1% that p99 sees (64 KiB, one in 58, raised the
/// window-1 p99 from 0.27 to 0.35 ms). Big batches reach new blocks every time anyway,
/// and pay one conversion per sync however far ahead we zero.
const ZERO_AHEAD: u64 = 256 * 1024;

/// Batches up to this size zero ahead (see [`ZERO_AHEAD`]), when they carry one synchronous
/// record: a synchronous producer's regime. Under load, batches that happen to be small
/// come between big ones, and zeroing after them only added bytes to flush (window 64:
/// one batch in ten was that small).
const ZERO_AHEAD_MAX_BATCH: usize = 8 * 1024;

/// Payload bytes the remembered window may always take in a segment's first record, however
/// small segments are.
const REMEMBERED_MIN_BUDGET: usize = 64 * 1024;

/// The segment records are appended to.
struct Current {
    seq: SegmentSeq,
    path: PathBuf,
    file: File,
    len: u64,
    /// The file's size: `len` plus preallocated zeros (see [`segment::PREALLOCATE_AHEAD`]).
    allocated: u64,
    /// Up to where the file's blocks hold written zeros or records, so that a write below
    /// it overwrites initialized blocks (see [`ZERO_AHEAD`]).
    zeroed: u64,
    /// The id floor its header holds (possibly only in the page cache).
    id_floor: u64,
}


/// The segment to roll to next.
enum NextSegment {
    /// Asked of the housekeeper; usually ready long before it is needed.
    Pending(PendingSegment),
    /// Prepared, but renaming it into place failed; the next roll tries again.
    Unplaced(PreparedSegment),
}

/// State owned by the writer thread.
pub(super) struct Writer {
    dir: PathBuf,
    segment_size: u64,
    max_batch_bytes: usize,
    fsync: bool,
    /// Asked after every batch's fdatasync: a failing or slow disk on demand in tests.
    faults: crate::faults::Faults,
    current: Current,
    next: Option<NextSegment>,
    ledger: Ledger,
    next_id: u64,
    /// The remembered window (see `JournalConfig::remember_header`), oldest first; `None`
    /// when nothing is remembered.
    remembered: Option<std::collections::VecDeque<String>>,
    /// The oldest segment a recovery needs to rebuild the window: nothing from here on is
    /// reclaimed. The first batch of every segment carries the window, after which it is
    /// that segment.
    remembered_from: SegmentSeq,
    /// Length the current segment must be cut back to before anything else is written,
    /// set when undoing a failed batch itself failed. Writing past leftover garbage would
    /// turn a torn tail into mid-file corruption.
    pending_truncate: Option<u64>,
    /// Whether the last batch failed; errors are logged once per burst.
    failing: bool,
    /// Cleared when the file system says it cannot preallocate at all.
    can_preallocate: bool,
    /// Synchronous records in the last batch that had any: more than one means producers
    /// are concurrent or pipelined, and group commits on this thread pay off.
    last_sync_records: usize,
    buffer: Vec<u8>,
    metrics: JournalMetrics,
    stats: Arc<SharedStats>,
    /// The writer's counters; the on-disk fields are the shared stats' business.
    counters: JournalStats,
    /// Records recovery found: positions count records from the oldest segment at open.
    records_before_open: u64,
    /// Sync marks written since open (one per batch); positions count them as records,
    /// as a backup's mirror does, while the stats count only appended records.
    marks: u64,
    // Fields drop in order: the housekeeper stops (and is waited for) before the
    // directory lock is released.
    replication: Arc<super::replication::Shared>,
    housekeeper: Housekeeper,
    _lock: DirLock,
}

impl Writer {
    /// Takes over from recovery: reopens the last segment (or creates the first), starts
    /// the housekeeper, hands it what is already reclaimable and publishes the first stats.
    pub(super) fn start(
        config: &JournalConfig,
        recovery: Recovery,
        metrics: JournalMetrics,
        stats: Arc<SharedStats>,
        lock: DirLock,
    ) -> Result<Writer, JournalError> {
        let Recovery {
            recovered,
            mut ledger,
            segments,
            last,
            remembered_from,
            frames: recovery_frames,
        } = recovery;
        let next_id = recovered.next_id.0;
        let replication = Arc::new(super::replication::Shared::new(Default::default()));
        {
            let mut first_records = replication.first_records.lock();
            for (seq, len, first_record) in segments {
                stats.segment_len(seq, len);
                first_records.insert(seq.0, first_record);
            }
            first_records.entry(SegmentSeq::FIRST.0).or_insert(0);
        }
        let current = match last {
            Some(last) => {
                let path = last.seq.path(&config.dir);
                let file = segment::open_for_append(&path)?;
                let allocated = file.metadata().map_or(last.len, |m| m.len().max(last.len));
                let mut current = Current {
                    seq: last.seq,
                    path,
                    file,
                    len: last.len,
                    allocated,
                    zeroed: last.len,
                    id_floor: last.id_floor,
                };
                // A segment rolled to just before a crash may still carry the floor it
                // was prepared with. Reclamation may start before its first batch, so
                // make its floor cover every older segment now.
                if current.len == HEADER_LEN as u64 && current.id_floor < next_id {
                    current.refresh_header(next_id, config.fsync)?;
                }
                current
            }
            None => {
                let seq = SegmentSeq::FIRST;
                let header = SegmentHeader {
                    seq,
                    id_floor: next_id,
                };
                let file = segment::create(&config.dir, header, config.fsync)?;
                ledger.add_segment(seq);
                stats.segment_len(seq, HEADER_LEN as u64);
                Current {
                    seq,
                    path: seq.path(&config.dir),
                    file,
                    len: HEADER_LEN as u64,
                    allocated: HEADER_LEN as u64,
                    zeroed: HEADER_LEN as u64,
                    id_floor: next_id,
                }
            }
        };
        let housekeeper = Housekeeper::start(config.dir.clone(), config.fsync, Arc::clone(&stats))?;
        let next = housekeeper.prepare(SegmentHeader {
            seq: current.seq.next(),
            id_floor: next_id,
        });
        let mut writer = Writer {
            dir: config.dir.clone(),
            segment_size: config.segment_size,
            max_batch_bytes: config.max_batch_bytes,
            fsync: config.fsync,
            faults: config.faults.clone(),
            current,
            next: Some(NextSegment::Pending(next)),
            ledger,
            next_id,
            remembered: config.remember_header.is_some().then(|| recovered.remembered.into()),
            remembered_from: remembered_from.unwrap_or(SegmentSeq::FIRST),
            pending_truncate: None,
            failing: false,
            can_preallocate: true,
            last_sync_records: 0,
            buffer: Vec::new(),
            metrics,
            stats,
            counters: JournalStats::default(),
            records_before_open: recovery_frames,
            marks: 0,
            replication,
            housekeeper,
            _lock: lock,
        };
        writer.reclaim();
        writer.publish_stats();
        Ok(writer)
    }

    fn finish(mut self) -> Result<(), JournalError> {
        self.repair()?;
        if self.fsync {
            self.current
                .file
                .sync_all()
                .map_err(|source| JournalError::Sync {
                    path: self.current.path.clone(),
                    source: source.into(),
                })?;
        }
        tracing::info!(dir = %self.dir.display(), "journal writer stopped");
        Ok(())
    }

    /// Makes one batch durable and answers its waiters; `sync_records` of them asked for it.
    fn commit(&mut self, batch: Vec<Request>, sync_records: usize) {
        if sync_records > 0 {
            self.last_sync_records = sync_records;
        }
        match self.persist(&batch) {
            Ok(written) => {
                for request in &batch {
                    self.ledger.apply(self.current.seq, &request.effects);
                    for effect in &request.effects {
                        self.next_id = self.next_id.max(effect.id().0.saturating_add(1));
                    }
                    if let Some(window) = &mut self.remembered {
                        for value in &request.remembered {
                            if window.len() == super::REMEMBERED_MAX {
                                window.pop_front();
                            }
                            window.push_back(value.clone());
                        }
                    }
                }
                self.metrics.batch_written(batch.len(), written);
                self.counters.batches += 1;
                self.counters.records_appended += batch.len() as u64;
                if self.failing {
                    self.failing = false;
                    tracing::info!(dir = %self.dir.display(), "journal writes succeed again");
                }
                // Before the waiters, so that a resolved append sees its effect in stats.
                // Deleting what it frees happens later, on the housekeeper.
                self.reclaim();
                self.publish_stats();
                let end = self.end_position();
                self.replication.position.send_replace(end);
                // With synced backups in sync mode, the gate completes the waiters once
                // they have the batch too; otherwise at once.
                let waiters = batch.into_iter().map(|request| request.reply).collect();
                self.replication.gate.complete_or_hold(end, waiters);
            }
            Err(error) => {
                self.metrics.write_failed();
                self.counters.write_errors += 1;
                if self.failing {
                    tracing::debug!(
                        error = &error as &dyn std::error::Error,
                        "journal batch failed"
                    );
                } else {
                    self.failing = true;
                    tracing::warn!(
                        error = &error as &dyn std::error::Error,
                        records = batch.len(),
                        "journal batch failed; failing appends until writes succeed again"
                    );
                }
                self.publish_stats();
                for request in batch {
                    let _ = request.reply.send(Err(error.clone()));
                }
            }
        }
    }

    /// Writes and syncs the batch; on failure the segment holds none of it.
    fn persist(&mut self, batch: &[Request]) -> Result<usize, JournalError> {
        self.repair()?;
        if self.current.len >= self.segment_size {
            self.roll()?;
        }
        // A segment's id floor must cover every id in the segments before it, which
        // recovery no longer sees once they are reclaimed. A prepared header holds the
        // next id from when it was prepared, so the first batch rewrites it, in place and
        // synced by the same fdatasync. A crash before that sync leaves the old or the new
        // header (both valid: 32 bytes at offset 0 lie in one sector, which a disk writes
        // whole) and no acknowledged record in this segment; and no older segment is
        // handed over for deletion before a batch in this one was synced.
        let floor = self.next_id;
        let refresh = self.current.len == HEADER_LEN as u64 && self.current.id_floor < floor;
        if refresh {
            segment::rewrite_header(
                &self.current.file,
                &self.current.path,
                SegmentHeader {
                    seq: self.current.seq,
                    id_floor: floor,
                },
            )?;
        }
        self.buffer.clear();
        // Every byte before `start` is synced (the previous batch's fdatasync returned, or
        // recovery read it back): the mark says so to a later recovery.
        record::encode_mark_frame(self.current.len, &mut self.buffer);
        let mark_len = self.buffer.len();
        // The first batch of a segment carries the remembered window, so that reclaiming
        // the segments it was built from forgets nothing.
        let first_in_segment = self.current.len == HEADER_LEN as u64;
        if let Some(window) = self.remembered.as_ref().filter(|w| first_in_segment && !w.is_empty()) {
            let budget = usize::try_from(self.segment_size / 4).unwrap_or(usize::MAX).max(REMEMBERED_MIN_BUDGET);
            let kept = record::encode_remembered_frame(window.iter().map(String::as_str), budget, &mut self.buffer);
            if kept < window.len() {
                tracing::debug!(kept, remembered = window.len(), "the remembered window does not fit a quarter of a segment; carrying the newest");
            }
        }
        let extra_records = u64::from(self.buffer.len() > mark_len);
        for request in batch {
            self.buffer.extend_from_slice(&request.frame);
        }
        let start = self.current.len;
        let records_len = self.buffer.len();
        let records_end = start + records_len as u64;
        self.preallocate(records_end);
        // Zeros only into space preallocated already, so they never need a block of
        // their own on a full disk; recovery reads zeros as the end of the records.
        if self.fsync
            && self.last_sync_records <= 1
            && records_len <= ZERO_AHEAD_MAX_BATCH
            && records_end > self.current.zeroed
        {
            let to = records_end.saturating_add(ZERO_AHEAD).min(self.current.allocated);
            if let Ok(padded) = usize::try_from(to.saturating_sub(start)) {
                if padded > records_len {
                    self.buffer.resize(padded, 0);
                }
            }
        }
        let written_end = start + self.buffer.len() as u64;
        let wrote = self.current.file.write_all_at(&self.buffer, start);
        self.buffer.truncate(records_len);
        if let Err(source) = wrote {
            self.undo(start);
            return Err(JournalError::Write {
                path: self.current.path.clone(),
                source: source.into(),
            });
        }
        // Backups may copy the batch from here on, in parallel with our own fdatasync:
        // replication then costs one round trip instead of a second serial fsync.
        self.replication.written.send_replace(super::replication::JournalPosition {
            segment: self.current.seq.0,
            offset: records_end,
            records: self.records_written() + 1 + extra_records + batch.len() as u64,
        });
        if self.fsync {
            let started = Instant::now();
            let synced = self.current.file.sync_data().and_then(|()| self.faults.fsync());
            self.metrics.observe_fsync(started.elapsed());
            if let Err(source) = synced {
                // The kernel may already have dropped the dirty pages; cutting the batch
                // off keeps the file consistent with what the waiters are told. Backups
                // may have copied it already: they are told to cut it off too.
                self.undo(start);
                self.replication.gate.cut((self.current.seq.0, start));
                return Err(JournalError::Sync {
                    path: self.current.path.clone(),
                    source: source.into(),
                });
            }
        }
        self.current.len = records_end;
        self.current.zeroed = self.current.zeroed.max(written_end);
        self.counters.records_appended += extra_records;
        self.marks += 1;
        if first_in_segment {
            self.remembered_from = self.current.seq;
        }
        if refresh {
            // Only now: after a failed sync the rewritten header may never reach the disk.
            self.current.id_floor = floor;
        }
        // Keep big batches from pinning their peak size forever.
        if self.buffer.capacity() > self.max_batch_bytes.saturating_mul(2) {
            self.buffer = Vec::new();
        }
        Ok(batch.iter().map(|request| request.frame.len()).sum())
    }

    /// Makes sure the current segment's file reaches past `end` (up to the segment size)
    /// with preallocated blocks. Best effort: where the file system cannot, the batch's
    /// write extends the file as it always could, and a full disk fails that write.
    fn preallocate(&mut self, end: u64) {
        let current = &mut self.current;
        if !self.can_preallocate || end <= current.allocated || end > self.segment_size {
            return;
        }
        let to = end.saturating_add(segment::PREALLOCATE_AHEAD).min(self.segment_size);
        match segment::preallocate(&current.file, current.allocated, to) {
            Ok(()) => current.allocated = to,
            Err(error) if error.kind() == std::io::ErrorKind::Unsupported => {
                self.can_preallocate = false;
                tracing::info!(
                    dir = %self.dir.display(),
                    "the file system cannot preallocate; journal segments grow by appends"
                );
            }
            Err(error) => tracing::debug!(
                segment = %current.path.display(),
                error = &error as &dyn std::error::Error,
                "cannot preallocate journal space; appending instead"
            ),
        }
    }

    /// Cuts the current segment back to `len` after a failed batch.
    fn undo(&mut self, len: u64) {
        self.pending_truncate = Some(len);
        self.replication.written.send_replace(self.end_position());
        if let Err(error) = self.repair() {
            tracing::warn!(
                error = &error as &dyn std::error::Error,
                "could not undo a failed journal batch; will retry before the next write"
            );
        }
    }

    /// Finishes a truncation that failed earlier, if any.
    fn repair(&mut self) -> Result<(), JournalError> {
        if let Some(len) = self.pending_truncate {
            segment::truncate(&self.current.file, &self.current.path, len, self.fsync)?;
            self.current.allocated = len;
            self.current.zeroed = self.current.zeroed.min(len);
            self.pending_truncate = None;
        }
        Ok(())
    }

    /// Switches to the next segment, prepared by the housekeeper. The old one needs no
    /// sync: its last batch was synced.
    fn roll(&mut self) -> Result<(), JournalError> {
        let seq = self.current.seq.next();
        let prepared = self.take_prepared(seq)?;
        let path = match prepared.install(&self.dir) {
            Ok(path) => path,
            Err(error) => {
                self.next = Some(NextSegment::Unplaced(prepared));
                return Err(error);
            }
        };
        self.current = Current {
            seq,
            path,
            file: prepared.file,
            len: HEADER_LEN as u64,
            allocated: HEADER_LEN as u64,
            zeroed: HEADER_LEN as u64,
            id_floor: prepared.header.id_floor,
        };
        self.ledger.add_segment(seq);
        self.stats.segment_len(seq, HEADER_LEN as u64);
        self.replication
            .first_records
            .lock()
            .insert(seq.0, self.records_written());
        self.next = Some(NextSegment::Pending(self.housekeeper.prepare(
            SegmentHeader {
                seq: seq.next(),
                id_floor: self.next_id,
            },
        )));
        tracing::debug!(segment = %self.current.path.display(), "rolled to a new journal segment");
        Ok(())
    }

    /// The prepared segment `seq`, waiting for it if it is not ready yet. One whose
    /// preparation failed earlier (say on a full disk) is prepared again first.
    fn take_prepared(&mut self, seq: SegmentSeq) -> Result<PreparedSegment, JournalError> {
        match self.next.take() {
            Some(NextSegment::Unplaced(prepared)) if prepared.header.seq == seq => {
                return Ok(prepared)
            }
            Some(NextSegment::Pending(pending)) if pending.seq() == seq => match pending.wait() {
                Ok(prepared) => return Ok(prepared),
                Err(error) => tracing::debug!(
                    error = &error as &dyn std::error::Error,
                    "preparing the next journal segment failed earlier; trying again"
                ),
            },
            _ => {}
        }
        self.housekeeper
            .prepare(SegmentHeader {
                seq,
                id_floor: self.next_id,
            })
            .wait()
    }

    /// Hands every segment nothing depends on any more to the housekeeper, oldest first,
    /// and forgets those it has durably deleted.
    /// Where the journal ends, durably: after the last successful batch.
    fn end_position(&self) -> super::replication::JournalPosition {
        super::replication::JournalPosition {
            segment: self.current.seq.0,
            offset: self.current.len,
            records: self.records_written(),
        }
    }

    /// Records in the journal, counted from the oldest segment at open, marks included.
    fn records_written(&self) -> u64 {
        self.records_before_open + self.counters.records_appended + self.marks
    }

    /// What replication shares with this writer (the position starts where it is now).
    pub(super) fn replication(&self) -> Arc<super::replication::Shared> {
        self.replication.position.send_replace(self.end_position());
        self.replication.written.send_replace(self.end_position());
        self.replication.gate.opened_at(self.end_position().at());
        Arc::clone(&self.replication)
    }

    fn reclaim(&mut self) {
        for seq in self.housekeeper.deleted() {
            self.ledger.forget(seq);
            self.replication.first_records.lock().remove(&seq.0);
        }
        // A backup still copying holds its segments, and the remembered window those it
        // still comes from.
        let floor = self.replication.holds.floor();
        let floor = match self.remembered {
            Some(_) => Some(floor.map_or(self.remembered_from.0, |f| f.min(self.remembered_from.0))),
            None => floor,
        };
        for seq in self.ledger.reclaimable(self.current.seq) {
            if floor.is_some_and(|f| seq.0 >= f) {
                break;
            }
            self.ledger.mark_deleting(seq);
            self.housekeeper.delete(seq);
        }
    }

    fn publish_stats(&mut self) {
        self.counters.live_messages = self.ledger.live_messages();
        self.stats.segment_len(self.current.seq, self.current.len);
        self.stats.publish(self.counters);
    }
}

/// Waits for the channel: up to `timeout`, or, without one, until woken (then lazy
/// records ask for a wake-up, see [`LazyQueue`]).
fn wait(requests: &Receiver<Queued>, lazy: &LazyQueue, timeout: Option<Duration>) -> Result<Queued, RecvTimeoutError> {
    if let Some(timeout) = timeout {
        return requests.recv_timeout(timeout);
    }
    // Announce the sleep before looking at the queue one last time: a lazy record queued
    // after this check sees `idle` and sends a wake-up.
    lazy.idle.store(true, Ordering::SeqCst);
    let result = if lazy.has_pending() {
        Err(RecvTimeoutError::Timeout)
    } else {
        requests.recv().map_err(|_| RecvTimeoutError::Disconnected)
    };
    lazy.idle.store(false, Ordering::SeqCst);
    result
}

impl Current {
    /// Rewrites the header with `id_floor` and syncs it: for start-up only.
    fn refresh_header(&mut self, id_floor: u64, fsync: bool) -> Result<(), JournalError> {
        let header = SegmentHeader {
            seq: self.seq,
            id_floor,
        };
        segment::rewrite_header(&self.file, &self.path, header)?;
        if fsync {
            self.file.sync_data().map_err(|source| JournalError::Sync {
                path: self.path.clone(),
                source: source.into(),
            })?;
        }
        self.id_floor = id_floor;
        Ok(())
    }
}
