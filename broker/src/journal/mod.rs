//! The write-ahead journal of persistent messages and their acknowledgements.
//!
//! Its job: make every `Op` whose [`Journal::append`] future resolved `Ok` survive a
//! `kill -9` at any instant, and hand back, on the next [`Journal::open`], exactly the
//! messages that were added and not acknowledged. It is append-only, split into segment
//! files, checksummed per record, and commits concurrent appends together (one write and
//! one `fdatasync` per batch). It deletes a segment once nothing in it can matter to a
//! recovery any more.
//!
//! What it must not do: decide anything about delivery, hold messages for consumers, or
//! rewrite history. Recovery modifies files only to cut a torn tail off the last segment
//! and to tidy up segment creations a crash interrupted; on any other damage it stops
//! with an error and leaves every file as it found it. Each batch opens with a sync mark
//! (its own offset), which is how recovery tells the two apart; [`salvage`] is the
//! explicit, copy-keeping way past damage.
//!
//! Layout on disk: `dir/journal-<20-digit sequence>.seg`, each starting with a 32-byte
//! header (magic, format version, sequence, id floor, checksum), followed by records
//! `[u32 LE length][u32 LE crc32c][payload]`. The next segment waits, prepared, as
//! `journal-<sequence>.seg.next`. `dir/journal.lock` is held (flock) while a journal is
//! open. The queue in front of the writer is unbounded: backpressure is the
//! caller's business (it holds every message in memory anyway).
//!
//! Threading: after `open`, one dedicated std thread writes and syncs the records, and a
//! second one (the housekeeper) prepares segments ahead of the roll and deletes reclaimed
//! ones, so neither costs a group commit its directory syncs. [`Journal::append`] only
//! encodes and queues, so it never blocks the async runtime; [`Journal::append_inline`]
//! commits a lone record on the caller's thread when the journal is idle (one write and one
//! fdatasync, no hand-off to the writer thread and back); [`Journal::open`] and
//! [`Journal::close`] do block and belong in `spawn_blocking` once a runtime serves traffic.

mod error;
mod housekeeper;
mod lock;
mod mirror;
mod metrics;
mod page_reader;
mod reader;
mod reclaim;
mod record;
mod recovery;
mod replication;
mod salvage;
mod segment;
mod stats;
mod writer;

#[cfg(test)]
mod corruption_tests;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::thread::JoinHandle;

use bytes::Bytes;
use tokio::sync::oneshot;

pub use error::JournalError;
pub use mirror::{prefix_digest, Mirror, MirroredSegment, DIGEST_TAIL};
pub use replication::{JournalPosition, ReplicaId, ReplicationGate, SegmentHold};
pub use metrics::JournalMetrics;
pub use page_reader::{PageCursor, PageRead};
pub use reader::{SegmentOnDisk, SegmentReader};
pub use record::MAX_RECORD_PAYLOAD;
pub use salvage::{plan as plan_salvage, salvage, SalvageAction, SalvageError};

/// Longest a lazily appended record waits for a group commit to ride along with.
pub const LAZY_SYNC_DELAY: std::time::Duration = std::time::Duration::from_millis(10);

use reclaim::Effect;
use stats::SharedStats;
use writer::{Committer, LazyQueue, Queued, Request, Writer};

/// Bytes of the header at the start of every segment file.
pub const SEGMENT_HEADER_LEN: u64 = segment::HEADER_LEN as u64;

/// Default size at which the journal rolls to a new segment file.
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 * 1024 * 1024;
/// Default upper bound of the bytes one group commit writes.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Global, monotonically increasing message sequence number assigned by the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(pub u64);

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A persistent message as the journal stores and recovers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// The broker-assigned sequence number; acks refer to it.
    pub id: MessageId,
    /// The destination the message was sent to, e.g. `/queue/orders`.
    pub destination: String,
    /// User headers, in the order the producer sent them.
    pub headers: Vec<(String, String)>,
    /// The message body.
    pub body: Bytes,
}

/// One operation. A record holds one or more ops and is applied atomically on recovery,
/// which is how a STOMP transaction's sends and acks commit together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A message became persistent.
    Add(StoredMessage),
    /// A message was acknowledged and must not come back after a restart.
    Ack(MessageId),
}

/// Where the journal lives and how it writes.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// Directory holding the segment files; created if missing.
    pub dir: PathBuf,
    /// Roll to a new segment file once the current one reaches this many bytes. A segment
    /// may exceed it by at most one batch.
    pub segment_size: u64,
    /// Upper bound of one group-commit write; a single record larger than this is written
    /// alone.
    pub max_batch_bytes: usize,
    /// Call `fdatasync` before completing appends. `false` gives up durability entirely
    /// (an acknowledged append can be lost on power failure); only benchmarks and tests
    /// that say so should turn it off.
    pub fsync: bool,
    /// A header whose values recovery collects from every add it replays, acked or not
    /// (the broker's duplicate-detection ids), newest last, at most [`REMEMBERED_MAX`].
    /// The window outlives reclaimed segments: the first record of every segment carries
    /// it (as much of it, newest first, as fits in a quarter of a segment).
    pub remember_header: Option<String>,
    /// Fault rules asked after every group commit's fdatasync (`debug.faultInjection`:
    /// a failing or slow disk on demand); off by default.
    pub faults: crate::faults::Faults,
}

/// Most header values [`Recovered::remembered`] holds.
pub const REMEMBERED_MAX: usize = 100_000;

/// Longest remembered value kept as it is; a longer one is remembered by its digest.
pub const REMEMBERED_VALUE_MAX: usize = 64;

/// How a remembered header value is kept in the window: as it is when short (a UUID, a
/// counter), else as `sha256:` and the hex of the first 128 bits of its SHA-256. The
/// window holds up to [`REMEMBERED_MAX`] values in memory and in every segment's first
/// record, so a client's 60 KiB ids must not be kept whole. Whoever compares ids with
/// the window (the broker's duplicate detection) compares this form.
pub fn remembered_form(value: &str) -> std::borrow::Cow<'_, str> {
    use sha2::Digest;
    if value.len() <= REMEMBERED_VALUE_MAX {
        return std::borrow::Cow::Borrowed(value);
    }
    let digest = sha2::Sha256::digest(value.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    std::borrow::Cow::Owned(format!("sha256:{hex}"))
}

impl JournalConfig {
    /// A configuration for `dir` with the default segment size, batch bound and fsync on.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_size: DEFAULT_SEGMENT_SIZE,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            fsync: true,
            remember_header: None,
            faults: crate::faults::Faults::off(),
        }
    }
}

/// What [`Journal::open`] found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Every added-and-not-acked message, sorted by id (past a [`RecoveryLimit`], those
    /// recovered before it was reached).
    pub messages: Vec<StoredMessage>,
    /// Past a [`RecoveryLimit`]: the other added-and-not-acked messages, by id only.
    pub paged: Vec<PagedBacklog>,
    /// One past the highest id the journal has ever seen (0 if it is empty). Stays
    /// monotonic across restarts even after the segments holding the highest ids were
    /// reclaimed, because every segment header carries the floor at its creation.
    pub next_id: MessageId,
    /// Number of segment files read.
    pub segments: usize,
    /// Number of records applied.
    pub records: u64,
    /// Bytes cut off the last segment because its tail was torn (0 after a clean stop).
    pub torn_tail_bytes: u64,
    /// Values of `JournalConfig::remember_header` in every add made durable, acked ones
    /// included, oldest first: the window carried into the newest segments plus the adds
    /// after it (see [`JournalConfig::remember_header`]).
    pub remembered: Vec<String>,
}

/// How much of a backlog recovery returns whole ([`Journal::open_limited`]): once a
/// destination's live messages reach `in_memory_bytes(destination)` (by `footprint`),
/// its later adds are returned by id only in [`Recovered::paged`].
#[derive(Clone)]
pub struct RecoveryLimit {
    pub in_memory_bytes: Arc<dyn Fn(&str) -> usize + Send + Sync>,
    pub footprint: fn(&StoredMessage) -> usize,
}

impl std::fmt::Debug for RecoveryLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecoveryLimit").finish_non_exhaustive()
    }
}

/// Live messages of one destination recovered by id only, to be read back with
/// [`Journal::read_adds`] from `from` on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PagedBacklog {
    pub destination: String,
    pub ids: roaring::RoaringTreemap,
    /// Their footprint (acked ones of unknown size counted at the average).
    pub bytes: u64,
    pub from: PageCursor,
}

/// A snapshot of the journal's state: counters as of the last batch, files as they are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Segment files on disk. Reclaimed segments count until their file is deleted, a
    /// few milliseconds after the batch that freed them; the prepared next one does not.
    pub segments: usize,
    /// Bytes in those segment files.
    pub bytes_on_disk: u64,
    /// Messages added and not yet acked.
    pub live_messages: usize,
    /// Records appended (and made durable) since open.
    pub records_appended: u64,
    /// Group commits (one write plus one fsync each) since open.
    pub batches: u64,
    /// Of those, the ones made on the appending thread ([`Journal::append_inline`]).
    pub inline_batches: u64,
    /// Batches that failed since open.
    pub write_errors: u64,
}

/// Handle to an open journal. Cheap to clone; all clones share one writer thread.
///
/// Dropping every clone without [`Journal::close`] lets the writer finish what was
/// queued and stop on its own, but nobody learns whether its last sync worked.
#[derive(Clone)]
pub struct Journal {
    shared: Arc<Shared>,
}

struct Shared {
    // Appends hold the read lock while sending so that close, taking the write lock,
    // cannot slip between an append's check and its send.
    sender: RwLock<Option<mpsc::Sender<Queued>>>,
    lazy: Arc<LazyQueue>,
    committer: Arc<Committer>,
    writer: Mutex<Option<JoinHandle<Result<(), JournalError>>>>,
    stats: Arc<SharedStats>,
    dir: std::path::PathBuf,
    replication: Arc<replication::Shared>,
    remember_header: Option<String>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Journal {
    /// Recovers the directory (creating it if missing), then starts the writer thread.
    ///
    /// Blocks on file I/O. Fails if another journal holds the directory, if a segment
    /// other than the last is damaged, or if the last one is damaged before its last
    /// batch (a sync mark follows the damage); in those cases no segment file was modified
    /// ([`salvage`] then cuts the damage out, keeping a copy).
    pub fn open(
        config: JournalConfig,
        metrics: JournalMetrics,
    ) -> Result<(Journal, Recovered), JournalError> {
        Journal::open_limited(config, metrics, None)
    }

    /// [`Journal::open`], returning past `limit` the live messages by id only.
    pub fn open_limited(
        config: JournalConfig,
        metrics: JournalMetrics,
        limit: Option<RecoveryLimit>,
    ) -> Result<(Journal, Recovered), JournalError> {
        std::fs::create_dir_all(&config.dir).map_err(|source| JournalError::CreateDir {
            path: config.dir.clone(),
            source: source.into(),
        })?;
        let lock = lock::DirLock::acquire(&config.dir)?;
        let mut recovery = recovery::recover(&config.dir, config.remember_header.as_deref(), limit.as_ref())?;
        // The messages go to the caller, not also to the writer (which needs the rest).
        let recovered = Recovered {
            messages: std::mem::take(&mut recovery.recovered.messages),
            paged: std::mem::take(&mut recovery.recovered.paged),
            ..recovery.recovered.clone()
        };
        let stats = Arc::new(SharedStats::new(metrics.clone()));
        let writer = Writer::start(&config, recovery, metrics, Arc::clone(&stats), lock)?;
        let replication = writer.replication();
        let (sender, receiver) = mpsc::channel();
        let lazy = Arc::new(LazyQueue::default());
        let writer_lazy = Arc::clone(&lazy);
        let committer = Arc::new(Committer::new(writer));
        let writer_committer = Arc::clone(&committer);
        let handle = std::thread::Builder::new()
            .name("duomq-journal".into())
            .spawn(move || writer_committer.run(receiver, writer_lazy))
            .map_err(|source| JournalError::SpawnWriter {
                source: source.into(),
            })?;
        tracing::info!(
            dir = %config.dir.display(),
            segments = recovered.segments,
            records = recovered.records,
            messages = recovered.messages.len(),
            next_id = recovered.next_id.0,
            "opened journal"
        );
        let journal = Journal {
            shared: Arc::new(Shared {
                sender: RwLock::new(Some(sender)),
                lazy,
                committer,
                writer: Mutex::new(Some(handle)),
                stats,
                dir: config.dir.clone(),
                replication,
                remember_header: config.remember_header.clone(),
            }),
        };
        Ok((journal, recovered))
    }

    /// The durable end of the journal, advanced after every group commit.
    pub fn position(&self) -> tokio::sync::watch::Receiver<JournalPosition> {
        self.shared.replication.position.subscribe()
    }

    /// How far the journal is written (maybe not yet synced); what replication streams.
    pub fn written_position(&self) -> tokio::sync::watch::Receiver<JournalPosition> {
        self.shared.replication.written.subscribe()
    }

    /// The gate that holds append completions for synced backups.
    pub fn replication_gate(&self) -> &ReplicationGate {
        &self.shared.replication.gate
    }

    /// Keeps segments from `seq` on from being reclaimed while a backup copies them.
    pub fn hold_segments_from(&self, seq: u64) -> SegmentHold {
        SegmentHold::new(&self.shared.replication.holds, seq)
    }

    /// A reader of this journal's segment files, for shipping them to a backup: nobody
    /// outside the journal opens its files.
    pub fn reader(&self) -> SegmentReader {
        SegmentReader::new(self.shared.dir.clone())
    }

    /// The number of the first record of every segment on disk, by segment (records are
    /// counted from the oldest segment at open; see [`JournalPosition`]).
    pub fn first_records(&self) -> std::collections::BTreeMap<u64, u64> {
        self.shared.replication.first_records.lock().clone()
    }

    /// Queues one record holding `ops`.
    ///
    /// Order is fixed at the moment of the call (a synchronous channel send), so a caller
    /// that calls append for A then B gets A before B on disk even though it awaits later.
    /// The returned future resolves after the record is written AND fdatasync'ed, or with
    /// the error that failed its batch (every record of a failed batch gets that error and
    /// none of them is on disk). Never blocks.
    pub fn append(&self, ops: Vec<Op>) -> AppendFuture {
        self.submit(ops, Mode::Sync)
    }

    /// Like [`Journal::append`], but when the journal is idle and serves one synchronous
    /// record at a time (the previous batch carried at most one, nothing else is queued or
    /// being written, and no backup is attached), writes and fdatasyncs the record on the
    /// calling thread before returning, and the future is ready at once. Otherwise it queues
    /// like [`Journal::append`] and never blocks.
    ///
    /// For a connection that has no further frame to read: a synchronous producer's send
    /// then costs no hand-off to the writer thread and back, two cross-thread wake-ups that
    /// cost about as much as the fdatasync on a virtual machine. Under concurrent load the
    /// previous batch carried several records, so appends go to the writer thread and
    /// keep sharing its group commits. It blocks for a write and an fdatasync, so call it
    /// only where that is acceptable (an async task of a runtime with other workers, or
    /// an idle one).
    pub fn append_inline(&self, ops: Vec<Op>) -> AppendFuture {
        self.submit(ops, Mode::Inline)
    }

    /// Like [`Journal::append`], but the record does not ask for its own fdatasync: it is
    /// written with the next group commit, or within [`LAZY_SYNC_DELAY`] if none comes.
    /// For acknowledgements nobody waits for (an ACK without a receipt): if the broker
    /// crashes first, the message is delivered again, which is all such an ACK promised.
    /// Unlike [`Journal::append`] it does not fix its order against records queued
    /// before it, so it is only for ops whose order does not matter: acknowledgements of
    /// messages whose add is already durable.
    pub fn append_lazy(&self, ops: Vec<Op>) -> AppendFuture {
        self.submit(ops, Mode::Lazy)
    }

    fn submit(&self, ops: Vec<Op>, mode: Mode) -> AppendFuture {
        let len = record::payload_len(&ops);
        if len > MAX_RECORD_PAYLOAD {
            return AppendFuture::ready(Err(JournalError::RecordTooLarge {
                len,
                max: MAX_RECORD_PAYLOAD,
            }));
        }
        let mut frame = Vec::with_capacity(record::FRAME_HEADER_LEN + len);
        record::encode_frame(&ops, &mut frame);
        let effects = ops.iter().map(Effect::of).collect();
        let remembered = match &self.shared.remember_header {
            Some(name) => ops
                .iter()
                .filter_map(|op| match op {
                    Op::Add(message) => {
                        message.headers.iter().find(|(k, _)| k == name).map(|(_, v)| remembered_form(v).into_owned())
                    }
                    Op::Ack(_) => None,
                })
                .collect(),
            None => Vec::new(),
        };
        let (reply, receiver) = oneshot::channel();
        let request = Request {
            frame,
            effects,
            remembered,
            reply,
        };
        let sender = self
            .shared
            .sender
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        // No sender: closed, nothing will ever write this record.
        let Some(sender) = sender.as_ref() else { return AppendFuture::ready(Err(JournalError::Closed)) };
        let waiting = AppendFuture {
            state: AppendState::Waiting(receiver),
        };
        let request = match mode {
            Mode::Inline => match self.shared.committer.commit_inline(request, &self.shared.lazy) {
                Ok(()) => return waiting,
                Err(request) => request,
            },
            Mode::Sync | Mode::Lazy => request,
        };
        let queued = match mode {
            Mode::Sync | Mode::Inline => {
                self.shared.committer.queued();
                let sent = sender.send(Queued::Sync(request));
                if sent.is_err() {
                    self.shared.committer.unqueued();
                }
                sent.map_err(drop)
            }
            Mode::Lazy if self.shared.lazy.push(request) => sender.send(Queued::Wake).map_err(drop),
            Mode::Lazy => Ok(()),
        };
        match queued {
            Ok(()) => waiting,
            // A writer thread that is gone will never write this record.
            Err(()) => AppendFuture::ready(Err(JournalError::Closed)),
        }
    }

    /// Finishes everything already appended, fsyncs, makes one last attempt at deleting
    /// the segments already found reclaimable, stops both threads. Idempotent;
    /// appends made afterwards resolve to [`JournalError::Closed`]. Blocks until the writer
    /// is done, so async callers use `spawn_blocking`.
    pub fn close(&self) -> Result<(), JournalError> {
        // Dropping the only sender lets the writer drain its queue and then stop.
        drop(
            self.shared
                .sender
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let handle = self
            .shared
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match handle {
            Some(handle) => handle.join().map_err(|_| JournalError::WriterPanicked)?,
            None => Ok(()),
        }
    }

    /// Segments and bytes on disk now; live messages and appended records as of the last
    /// batch.
    pub fn stats(&self) -> JournalStats {
        self.shared.stats.snapshot()
    }
}

/// How a record is handed to the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Queued for the next group commit.
    Sync,
    /// Committed on the calling thread when the journal is idle, else like `Sync`.
    Inline,
    /// Rides along with a later group commit (see [`Journal::append_lazy`]).
    Lazy,
}

/// Resolves once an appended record is durable, or with the error that prevented it.
#[must_use = "an append is only durable once its future resolves Ok"]
#[derive(Debug)]
pub struct AppendFuture {
    state: AppendState,
}

#[derive(Debug)]
enum AppendState {
    Waiting(oneshot::Receiver<Result<(), JournalError>>),
    Ready(Option<Result<(), JournalError>>),
}

impl AppendFuture {
    /// A future resolved by whoever holds `sender` (a task that awaited the real append).
    pub(crate) fn from_receiver(receiver: oneshot::Receiver<Result<(), JournalError>>) -> Self {
        AppendFuture { state: AppendState::Waiting(receiver) }
    }

    /// A future that is already resolved (for example a write refused before it started).
    pub(crate) fn ready(result: Result<(), JournalError>) -> Self {
        Self {
            state: AppendState::Ready(Some(result)),
        }
    }

    /// A future resolved by whoever holds the sender: another store (the database) that
    /// answers appends with the journal's contract.
    pub(crate) fn waiting(receiver: oneshot::Receiver<Result<(), JournalError>>) -> Self {
        Self {
            state: AppendState::Waiting(receiver),
        }
    }
}

impl Future for AppendFuture {
    type Output = Result<(), JournalError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            AppendState::Waiting(receiver) => match Pin::new(receiver).poll(cx) {
                Poll::Ready(Ok(result)) => Poll::Ready(result),
                // The writer dropped the request without answering: it has stopped.
                Poll::Ready(Err(_)) => Poll::Ready(Err(JournalError::Closed)),
                Poll::Pending => Poll::Pending,
            },
            AppendState::Ready(result) => {
                Poll::Ready(result.take().unwrap_or(Err(JournalError::Closed)))
            }
        }
    }
}
