//! The writer thread: group commit, segment rolling and reclamation.
//!
//! It takes everything queued (up to `max_batch_bytes`) as one batch, writes it with one
//! positional write and one `fdatasync`, then completes every waiter. A failed batch is
//! cut back off the segment so the file never holds a partial record, its waiters get
//! the error, and the thread keeps serving: a full disk is an outage, not a crash. It must
//! not block on anything but its own files, and never panics.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tokio::sync::oneshot;

use super::lock::DirLock;
use super::reclaim::{Effect, Ledger};
use super::recovery::Recovery;
use super::segment::{self, SegmentHeader, SegmentSeq, HEADER_LEN};
use super::{JournalConfig, JournalError, JournalMetrics, JournalStats, LAZY_SYNC_DELAY};

/// One queued record and whom to tell when it is durable.
pub(super) struct Request {
    /// The framed record, encoded by the caller so the writer only copies.
    pub(super) frame: Vec<u8>,
    pub(super) effects: Vec<Effect>,
    pub(super) reply: oneshot::Sender<Result<(), JournalError>>,
    /// Asks for a group commit now; lazy requests wait for one (see `LAZY_SYNC_DELAY`).
    pub(super) sync: bool,
}

/// The segment records are appended to.
struct Current {
    seq: SegmentSeq,
    path: PathBuf,
    file: File,
    len: u64,
}

/// State owned by the writer thread.
pub(super) struct Writer {
    dir: PathBuf,
    segment_size: u64,
    max_batch_bytes: usize,
    fsync: bool,
    current: Current,
    ledger: Ledger,
    next_id: u64,
    /// Length the current segment must be cut back to before anything else is written,
    /// set when undoing a failed batch itself failed. Writing past leftover garbage would
    /// turn a torn tail into mid-file corruption.
    pending_truncate: Option<u64>,
    /// Whether the last batch failed; errors are logged once per burst.
    failing: bool,
    buffer: Vec<u8>,
    metrics: JournalMetrics,
    stats: Arc<Mutex<JournalStats>>,
    local_stats: JournalStats,
    _lock: DirLock,
}

impl Writer {
    /// Takes over from recovery: reopens the last segment (or creates the first), reclaims
    /// what is already reclaimable and publishes the first stats.
    pub(super) fn start(
        config: &JournalConfig,
        recovery: Recovery,
        metrics: JournalMetrics,
        stats: Arc<Mutex<JournalStats>>,
        lock: DirLock,
    ) -> Result<Writer, JournalError> {
        let Recovery {
            recovered,
            mut ledger,
            last,
        } = recovery;
        let next_id = recovered.next_id.0;
        let current = match last {
            Some((seq, len)) => {
                let path = seq.path(&config.dir);
                let file = segment::open_for_append(&path)?;
                Current {
                    seq,
                    path,
                    file,
                    len,
                }
            }
            None => {
                let seq = SegmentSeq::FIRST;
                let header = SegmentHeader {
                    seq,
                    id_floor: next_id,
                };
                let file = segment::create(&config.dir, header, config.fsync)?;
                ledger.add_segment(seq, HEADER_LEN as u64);
                Current {
                    seq,
                    path: seq.path(&config.dir),
                    file,
                    len: HEADER_LEN as u64,
                }
            }
        };
        let mut writer = Writer {
            dir: config.dir.clone(),
            segment_size: config.segment_size,
            max_batch_bytes: config.max_batch_bytes,
            fsync: config.fsync,
            current,
            ledger,
            next_id,
            pending_truncate: None,
            failing: false,
            buffer: Vec::new(),
            metrics,
            stats,
            local_stats: JournalStats::default(),
            _lock: lock,
        };
        writer.reclaim();
        writer.publish_stats();
        Ok(writer)
    }

    /// Serves batches until every sender is gone and the queue is empty, then syncs.
    pub(super) fn run(mut self, requests: Receiver<Request>) -> Result<(), JournalError> {
        let mut held_back: Option<Request> = None;
        // Lazy requests collected while no synchronous one has come.
        let mut deferred: Vec<Request> = Vec::new();
        let mut deferred_since = Instant::now();
        loop {
            let first = match held_back.take() {
                Some(request) => request,
                None if deferred.is_empty() => match requests.recv() {
                    Ok(request) => request,
                    Err(_) => break,
                },
                None => {
                    let wait = LAZY_SYNC_DELAY.saturating_sub(deferred_since.elapsed());
                    match requests.recv_timeout(wait) {
                        Ok(request) => request,
                        Err(RecvTimeoutError::Timeout) => {
                            self.commit(std::mem::take(&mut deferred));
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
            };
            if deferred.is_empty() {
                deferred_since = Instant::now();
            }
            let mut bytes: usize = deferred.iter().map(|r| r.frame.len()).sum::<usize>() + first.frame.len();
            let mut sync = first.sync;
            let mut batch = std::mem::take(&mut deferred);
            batch.push(first);
            while bytes < self.max_batch_bytes {
                match requests.try_recv() {
                    Ok(request) if bytes + request.frame.len() > self.max_batch_bytes => {
                        held_back = Some(request);
                        sync = true;
                        break;
                    }
                    Ok(request) => {
                        bytes += request.frame.len();
                        sync |= request.sync;
                        batch.push(request);
                    }
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            if sync || bytes >= self.max_batch_bytes {
                self.commit(batch);
            } else {
                deferred = batch;
            }
        }
        if !deferred.is_empty() {
            self.commit(deferred);
        }
        self.finish()
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

    /// Makes one batch durable and answers its waiters.
    fn commit(&mut self, batch: Vec<Request>) {
        match self.persist(&batch) {
            Ok(written) => {
                for request in &batch {
                    self.ledger.apply(self.current.seq, &request.effects);
                    for effect in &request.effects {
                        self.next_id = self.next_id.max(effect.id().0.saturating_add(1));
                    }
                }
                self.ledger.set_bytes(self.current.seq, self.current.len);
                self.metrics.batch_written(batch.len(), written);
                self.local_stats.batches += 1;
                self.local_stats.records_appended += batch.len() as u64;
                if self.failing {
                    self.failing = false;
                    tracing::info!(dir = %self.dir.display(), "journal writes succeed again");
                }
                // Before the waiters, so that a resolved append sees its effect in stats
                // and on disk. It costs an unlink and a directory sync about once per
                // segment, and nothing otherwise.
                self.reclaim();
                self.publish_stats();
                for request in batch {
                    // A dropped receiver only means the caller stopped waiting.
                    let _ = request.reply.send(Ok(()));
                }
            }
            Err(error) => {
                self.metrics.write_failed();
                self.local_stats.write_errors += 1;
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
        self.buffer.clear();
        for request in batch {
            self.buffer.extend_from_slice(&request.frame);
        }
        let start = self.current.len;
        if let Err(source) = self.current.file.write_all_at(&self.buffer, start) {
            self.undo(start);
            return Err(JournalError::Write {
                path: self.current.path.clone(),
                source: source.into(),
            });
        }
        if self.fsync {
            let started = Instant::now();
            let synced = self.current.file.sync_data();
            self.metrics.observe_fsync(started.elapsed());
            if let Err(source) = synced {
                // The kernel may already have dropped the dirty pages; cutting the batch
                // off keeps the file consistent with what the waiters are told.
                self.undo(start);
                return Err(JournalError::Sync {
                    path: self.current.path.clone(),
                    source: source.into(),
                });
            }
        }
        self.current.len += self.buffer.len() as u64;
        // Keep big batches from pinning their peak size forever.
        if self.buffer.capacity() > self.max_batch_bytes.saturating_mul(2) {
            self.buffer = Vec::new();
        }
        Ok(batch.iter().map(|request| request.frame.len()).sum())
    }

    /// Cuts the current segment back to `len` after a failed batch.
    fn undo(&mut self, len: u64) {
        self.pending_truncate = Some(len);
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
            self.pending_truncate = None;
        }
        Ok(())
    }

    /// Starts the next segment. The old one needs no sync: its last batch was synced.
    fn roll(&mut self) -> Result<(), JournalError> {
        let seq = self.current.seq.next();
        let header = SegmentHeader {
            seq,
            id_floor: self.next_id,
        };
        let file = segment::create(&self.dir, header, self.fsync)?;
        self.current = Current {
            seq,
            path: seq.path(&self.dir),
            file,
            len: HEADER_LEN as u64,
        };
        self.ledger.add_segment(seq, HEADER_LEN as u64);
        tracing::debug!(segment = %self.current.path.display(), "rolled to a new journal segment");
        Ok(())
    }

    /// Deletes every segment nothing depends on any more, oldest first.
    fn reclaim(&mut self) {
        for seq in self.ledger.reclaimable(self.current.seq) {
            let path = seq.path(&self.dir);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    // Later candidates may depend on this one: stop, retry next batch.
                    tracing::warn!(
                        segment = %path.display(),
                        error = &error as &dyn std::error::Error,
                        "failed to delete reclaimable journal segment"
                    );
                    return;
                }
            }
            self.ledger.forget(seq);
            tracing::debug!(segment = %path.display(), "reclaimed journal segment");
            // A newer segment may only go once this deletion is durable, or a crash could
            // bring this one back without the acks that cancelled it.
            if self.fsync {
                if let Err(error) = segment::sync_dir(&self.dir) {
                    tracing::warn!(
                        error = &error as &dyn std::error::Error,
                        "failed to sync journal directory after reclaiming a segment"
                    );
                    return;
                }
            }
        }
    }

    fn publish_stats(&mut self) {
        self.local_stats.segments = self.ledger.segment_count();
        self.local_stats.bytes_on_disk = self.ledger.bytes_on_disk();
        self.local_stats.live_messages = self.ledger.live_messages();
        self.metrics.set_segments(self.local_stats.segments);
        *self.stats.lock().unwrap_or_else(PoisonError::into_inner) = self.local_stats;
    }
}

