//! Start-up recovery: replays every segment and rebuilds the live messages and the
//! reclamation ledger.
//!
//! The only repair it makes is cutting a torn tail off the last segment (what a kill -9
//! in the middle of a write, or a power cut during an fdatasync, leaves). Any other damage
//! stops it with an error naming the file and the byte offset, before a single file was
//! modified: guessing there would risk resurrecting acked messages or dropping receipted
//! ones. `journal salvage` (see [`super::salvage`]) is the explicit way past such damage.
//!
//! Telling a torn tail from damage: every batch the writer writes opens with a *sync
//! mark*, a small record holding its own offset, and the writer only writes a batch once
//! the batch before it is synced (one write, one fdatasync, then the next). So a valid mark
//! at offset `m` proves that every byte before `m` was durable and possibly confirmed to a
//! client. When a record at offset `x` does not read back, recovery looks for a valid mark
//! anywhere after `x` in the same file: if there is one, `x` lies in synced data and the
//! record was damaged after it was written (a flipped bit, a zeroed page, a lost write):
//! corruption, start-up stops. If there is none, `x` lies in the last batch, which a
//! crash may have cut at any byte (a power cut even leaves holes in it, since the disk
//! writes its pages in any order) and whose waiters were never answered: a torn tail, cut
//! off at `x` as before. The marks cost 21 bytes per batch inside the batch's own write,
//! and no extra fsync. Inside the last batch one older rule still holds: a whole record
//! with a bad checksum directly followed by a valid record is damage too, since a kill -9
//! leaves a prefix of a write and never a hole (a power cut during that batch's fdatasync
//! rarely can; recovery then refuses rather than guess, and salvage gets past it).
//!
//! What marks cannot see: damage inside the last batch of the newest segment (no mark
//! follows it, and no whole record behind a bad checksum) is cut like a torn write, at
//! most one batch; and damage that wipes everything after it, marks included, reads as
//! the end of the records. A backup's mirror holds the live's bytes, marks included, but
//! syncs a burst of the live's batches at once: after a power cut of the backup itself its
//! copy may hold a hole before a later mark, and recovering that copy refuses (a backup
//! that reconnects first gets the missing bytes from the live instead).
//!
//! Once everything read cleanly it also tidies what a crash leaves of segment creation: a
//! prepared segment (`.seg.next`) that holds records is one the writer had rolled to but
//! whose rename a crash undid, so it is read as the segment it is and renamed into place;
//! a prepared segment holding only its header was never used and is deleted, as are
//! `.tmp` leftovers of creations and `.del` leftovers of deletions.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::reclaim::{Effect, Ledger};
use super::record::{self, Decoded, FrameRead};
use super::segment::{self, SegmentHeader, SegmentSeq, HEADER_LEN};
use super::{JournalError, MessageId, Op, Recovered, StoredMessage};

/// Everything the writer needs to carry on where the last run stopped.
#[derive(Debug)]
pub(super) struct Recovery {
    pub(super) recovered: Recovered,
    pub(super) ledger: Ledger,
    /// Every segment, its length after any torn tail was cut and the number of records
    /// before it (counted from the oldest segment), oldest first.
    pub(super) segments: Vec<(SegmentSeq, u64, u64)>,
    /// The newest segment, where the writer carries on; `None` when there was none.
    pub(super) last: Option<LastSegment>,
    /// The oldest segment a later recovery needs to rebuild the remembered window: the
    /// newest one holding a remembered record, else the oldest segment.
    pub(super) remembered_from: Option<SegmentSeq>,
    /// Every record kept, sync marks included: where the writer's record count goes on
    /// (replication positions count every record a backup's mirror sees).
    pub(super) frames: u64,
}

/// The newest segment as recovery left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LastSegment {
    pub(super) seq: SegmentSeq,
    pub(super) len: u64,
    /// The id floor in its header, which may be stale if it holds no record yet.
    pub(super) id_floor: u64,
}

/// A torn tail found in the last segment, cut only after every segment has been read.
struct TornTail {
    path: PathBuf,
    offset: u64,
    dropped: u64,
    reason: String,
}

/// Replays the journal in `dir`.
pub(super) fn recover(dir: &Path, remember_header: Option<&str>, limit: Option<&super::RecoveryLimit>) -> Result<Recovery, JournalError> {
    let listing = segment::list(dir)?;
    let Sorted {
        files,
        adopted,
        unused,
    } = sort_prepared(dir, &listing)?;
    let mut state = Replay { remember_header: remember_header.map(str::to_string), limit: limit.cloned(), ..Replay::default() };
    let mut torn = None;
    let mut last = None;
    let mut segments = Vec::with_capacity(files.len());
    for (index, (seq, path)) in files.iter().enumerate() {
        let (seq, is_last) = (*seq, index + 1 == files.len());
        let mut file = SegmentFile::open(path)?;
        let header = SegmentHeader::decode(file.bytes(0, HEADER_LEN)?).map_err(|problem| {
            JournalError::BadSegmentHeader {
                path: path.clone(),
                reason: problem.to_string(),
            }
        })?;
        if header.seq != seq {
            return Err(JournalError::BadSegmentHeader {
                path: path.clone(),
                reason: format!(
                    "header names segment {} but the file name {seq}",
                    header.seq
                ),
            });
        }
        state.next_id = state.next_id.max(header.id_floor);
        let first_record = state.frames;
        let end = state.replay_records(seq, &mut file, is_last, &mut torn)?;
        state.ledger.add_segment(seq);
        segments.push((seq, end, first_record));
        if is_last {
            last = Some(LastSegment {
                seq,
                len: end,
                id_floor: header.id_floor,
            });
        }
    }

    // Every segment read cleanly up to here, so modifying files is now safe.
    let torn_tail_bytes = match torn {
        Some(torn) => cut_torn_tail(&torn)?,
        None => 0,
    };
    for &seq in &adopted {
        adopt(dir, seq)?;
    }
    if !adopted.is_empty() {
        // Synced even with fsync off, like the torn-tail cut: it runs once per start.
        segment::sync_dir(dir)?;
    }
    for leftover in unused.iter().chain(&listing.leftovers) {
        if let Err(error) = fs::remove_file(leftover) {
            tracing::debug!(
                file = %leftover.display(),
                error = &error as &dyn std::error::Error,
                "could not remove leftover of an interrupted segment creation or deletion"
            );
        }
    }

    Ok(Recovery {
        recovered: Recovered {
            paged: state.paged.into_iter().map(|(destination, (ids, bytes, from))| super::PagedBacklog { destination, ids, bytes, from }).collect(),
            messages: state.messages.into_values().collect(),
            next_id: MessageId(state.next_id),
            segments: files.len(),
            records: state.records,
            torn_tail_bytes,
            remembered: state.remembered.into(),
        },
        ledger: state.ledger,
        remembered_from: state.remembered_from.or_else(|| files.first().map(|(seq, _)| *seq)),
        frames: state.frames,
        segments,
        last,
    })
}

/// The segment files recovery reads, in its order (prepared ones holding records under
/// their prepared name): what salvage walks.
pub(super) fn files_to_replay(dir: &Path, listing: &segment::Listing) -> Result<Vec<PathBuf>, JournalError> {
    Ok(sort_prepared(dir, listing)?.files.into_iter().map(|(_, path)| path).collect())
}

/// The files to replay, with prepared segments sorted into used and unused.
struct Sorted {
    /// Segments to replay in sequence order, adopted prepared ones under their old name.
    files: Vec<(SegmentSeq, PathBuf)>,
    /// Prepared segments holding records, to be renamed into place after the replay.
    adopted: Vec<SegmentSeq>,
    /// Prepared segments never written to, to be deleted after the replay.
    unused: Vec<PathBuf>,
}

/// A prepared segment holds records only if the writer rolled to it, which it does by
/// renaming it, so one still under its prepared name lost that rename in a crash. It is
/// newer than every segment (the writer only writes the newest one) but is adopted by
/// sequence wherever it falls, so a file with acknowledged records is never dropped.
fn sort_prepared(dir: &Path, listing: &segment::Listing) -> Result<Sorted, JournalError> {
    let mut sorted = Sorted {
        files: listing
            .segments
            .iter()
            .map(|&seq| (seq, seq.path(dir)))
            .collect(),
        adopted: Vec::new(),
        unused: Vec::new(),
    };
    for &seq in &listing.prepared {
        let path = seq.prepared_path(dir);
        let len = fs::metadata(&path)
            .map_err(|source| JournalError::ReadSegment {
                path: path.clone(),
                source: source.into(),
            })?
            .len();
        if len > HEADER_LEN as u64 && listing.segments.binary_search(&seq).is_err() {
            sorted.files.push((seq, path));
            sorted.adopted.push(seq);
        } else {
            sorted.unused.push(path);
        }
    }
    sorted.files.sort_unstable_by_key(|(seq, _)| *seq);
    Ok(sorted)
}

fn adopt(dir: &Path, seq: SegmentSeq) -> Result<(), JournalError> {
    let path = seq.path(dir);
    fs::rename(seq.prepared_path(dir), &path).map_err(|source| JournalError::CreateSegment {
        path: path.clone(),
        source: source.into(),
    })?;
    tracing::warn!(
        segment = %path.display(),
        "renamed a prepared journal segment holding records into place (a crash undid its rename)"
    );
    Ok(())
}

#[derive(Default)]
struct Replay {
    messages: BTreeMap<MessageId, StoredMessage>,
    remember_header: Option<String>,
    remembered: std::collections::VecDeque<String>,
    remembered_from: Option<SegmentSeq>,
    ledger: Ledger,
    next_id: u64,
    records: u64,
    frames: u64,
    /// Past `limit.in_memory_bytes` of recovered messages, later adds are only noted by id.
    limit: Option<super::RecoveryLimit>,
    /// Bytes of the messages held whole, by destination.
    held: std::collections::HashMap<String, usize>,
    /// Adds noted by id, by destination: ids, their footprint, where to read them back.
    paged: BTreeMap<String, (roaring::RoaringTreemap, u64, super::PageCursor)>,
}

impl Replay {
    /// Applies the records of one segment; returns the offset where its valid data ends.
    fn replay_records(
        &mut self,
        seq: SegmentSeq,
        file: &mut SegmentFile,
        is_last: bool,
        torn: &mut Option<TornTail>,
    ) -> Result<u64, JournalError> {
        let path = file.path.clone();
        let corrupt = |offset: u64, reason: String| JournalError::CorruptRecord { path: path.clone(), offset, reason };
        let mut offset = HEADER_LEN as u64;
        while offset < file.len {
            let data = file.bytes(offset, record::FRAME_HEADER_LEN)?;
            let want = match data.first_chunk::<4>().map(|len| u32::from_le_bytes(*len) as usize) {
                Some(len) if len <= record::MAX_RECORD_PAYLOAD => record::FRAME_HEADER_LEN + len,
                _ => record::FRAME_HEADER_LEN,
            };
            let data = file.bytes(offset, want)?;
            let zero_length = match record::read_frame(data, 0) {
                FrameRead::Valid { payload, end } => {
                    // A checksummed payload that does not decode was never torn: a bug or
                    // a foreign writer, so never truncate it away.
                    let decoded = record::decode_payload(payload)
                        .map_err(|error| corrupt(offset, error.to_string()))?;
                    if let Some(at) = decoded.mark {
                        if at != offset {
                            return Err(corrupt(offset, format!("a sync mark holds offset {at}")));
                        }
                    }
                    self.apply_decoded(seq, decoded);
                    offset += end as u64;
                    continue;
                }
                FrameRead::Invalid { problem, .. } => problem == record::FrameProblem::ZeroLength,
            };
            if zero_length && file.zeros_from(offset)? {
                // Space the writer preallocated and never wrote: the records end here.
                break;
            }
            return file.invalid_record(offset, is_last, torn);
        }
        Ok(offset)
    }

    /// Applies one checksummed record of any kind.
    fn apply_decoded(&mut self, seq: SegmentSeq, decoded: Decoded) {
        self.frames += 1;
        if decoded.mark.is_some() {
            return;
        }
        if let Some(values) = decoded.remembered {
            // A snapshot of the window as of here: it stands for every add before it,
            // including those in segments already reclaimed.
            self.remembered = values.into();
            while self.remembered.len() > super::REMEMBERED_MAX {
                self.remembered.pop_front();
            }
            self.remembered_from = Some(seq);
        }
        self.apply(seq, decoded.ops);
    }

    /// Applies one whole record: all its ops, in order.
    fn apply(&mut self, seq: SegmentSeq, ops: Vec<Op>) {
        let effects: Vec<Effect> = ops.iter().map(Effect::of).collect();
        for effect in &effects {
            self.next_id = self.next_id.max(effect.id().0.saturating_add(1));
        }
        self.ledger.apply(seq, &effects);
        for op in ops {
            match op {
                Op::Add(message) => {
                    if let Some(name) = &self.remember_header {
                        if let Some((_, value)) = message.headers.iter().find(|(k, _)| k == name) {
                            if self.remembered.len() == super::REMEMBERED_MAX {
                                self.remembered.pop_front();
                            }
                            self.remembered.push_back(super::remembered_form(value).into_owned());
                        }
                    }
                    let held = self.held.get(&message.destination).copied().unwrap_or(0);
                    let paging = self.paged.contains_key(&message.destination);
                    if let Some(limit) = self.limit.as_ref().filter(|l| paging || held >= (l.in_memory_bytes)(&message.destination)) {
                        let size = (limit.footprint)(&message) as u64;
                        let from = super::PageCursor { segment: seq.0, offset: 0 };
                        let (ids, bytes, _) = self.paged.entry(message.destination).or_insert_with(|| (Default::default(), 0, from));
                        if ids.insert(message.id.0) {
                            *bytes += size;
                        }
                        continue;
                    }
                    if let Some(limit) = &self.limit {
                        *self.held.entry(message.destination.clone()).or_default() += (limit.footprint)(&message);
                    }
                    if let Some(old) = self.messages.insert(message.id, message) {
                        self.release(&old);
                    }
                }
                Op::Ack(id) => {
                    if let Some(old) = self.messages.remove(&id) {
                        self.release(&old);
                        continue;
                    }
                    // A paged one: its size is not kept, so it counts as the average.
                    if let Some((ids, bytes, _)) = self.paged.values_mut().find(|(ids, _, _)| ids.contains(id.0)) {
                        let average = *bytes / ids.len().max(1);
                        ids.remove(id.0);
                        *bytes = bytes.saturating_sub(average);
                    }
                }
            }
        }
        self.records += 1;
    }
}

impl Replay {
    /// A message held whole left (acked, or replaced).
    fn release(&mut self, old: &StoredMessage) {
        if let (Some(limit), Some(held)) = (&self.limit, self.held.get_mut(&old.destination)) {
            *held = held.saturating_sub((limit.footprint)(old));
        }
    }
}

/// Bytes of a segment recovery holds at a time (a longer record is read whole): a
/// restart reads a long journal without holding any segment file whole.
const READ_CHUNK: usize = 4 * 1024 * 1024;

/// A segment file as recovery reads it: a window of it at a time.
struct SegmentFile {
    file: fs::File,
    path: PathBuf,
    len: u64,
    /// The file offset of `buf[0]`.
    base: u64,
    buf: Vec<u8>,
}

impl SegmentFile {
    fn open(path: &Path) -> Result<SegmentFile, JournalError> {
        let read_error = |source: std::io::Error| JournalError::ReadSegment {
            path: path.to_path_buf(),
            source: source.into(),
        };
        let file = fs::File::open(path).map_err(read_error)?;
        let len = file.metadata().map_err(read_error)?.len();
        Ok(SegmentFile { file, path: path.to_path_buf(), len, base: 0, buf: Vec::new() })
    }

    /// The file's bytes from `at` on: at least `want` of them, or as many as it has.
    fn bytes(&mut self, at: u64, want: usize) -> Result<&[u8], JournalError> {
        let left = usize::try_from(self.len.saturating_sub(at)).unwrap_or(usize::MAX);
        let want = want.min(left);
        let held = self.base..=self.base + self.buf.len() as u64;
        if !held.contains(&at) || !held.contains(&(at + want as u64)) {
            let len = want.max(READ_CHUNK).min(left);
            if self.buf.capacity() > 2 * READ_CHUNK.max(len) {
                // One long record read whole: give its memory back.
                self.buf = Vec::new();
            }
            self.buf.resize(len, 0);
            self.base = at;
            if let Err(source) = self.file.read_exact_at(&mut self.buf, at) {
                self.buf.clear();
                return Err(JournalError::ReadSegment { path: self.path.clone(), source: source.into() });
            }
        }
        let start = usize::try_from(at - self.base).unwrap_or(usize::MAX);
        Ok(&self.buf[start..])
    }

    /// Whether every byte from `at` to the end of the file is zero.
    fn zeros_from(&mut self, mut at: u64) -> Result<bool, JournalError> {
        while at < self.len {
            let data = self.bytes(at, READ_CHUNK)?;
            if data.iter().any(|&b| b != 0) {
                return Ok(false);
            }
            at += data.len() as u64;
        }
        Ok(true)
    }

    /// Decides what a record at `offset` that does not read back is: damage (an error) or
    /// the torn tail of the last segment (noted in `torn`, to be cut; returns where the
    /// records end). Reads the rest of the file at once: outside damage, that is the
    /// last batch and the space preallocated after it.
    fn invalid_record(&mut self, offset: u64, is_last: bool, torn: &mut Option<TornTail>) -> Result<u64, JournalError> {
        let (path, dropped) = (self.path.clone(), self.len - offset);
        let corrupt = |reason: String| JournalError::CorruptRecord { path: path.clone(), offset, reason };
        let data = self.bytes(offset, usize::try_from(dropped).unwrap_or(usize::MAX))?;
        let FrameRead::Invalid { problem, complete_end } = record::read_frame(data, 0) else {
            return Ok(offset);
        };
        // A batch was written after this record was synced: the record was damaged after
        // it was written, in this segment or any other.
        if let Some(mark) = record::find_mark_from(data, 1, offset) {
            return Err(corrupt(
                format!(
                    "{problem}, yet records synced after it follow (a sync mark at byte {mark}), \
                     so this is damage, not a torn write"
                ),
            ));
        }
        if !is_last {
            return Err(corrupt(problem.to_string()));
        }
        // Within the last batch: a kill -9 leaves a prefix of it, never a hole, so a whole
        // record with a bad checksum followed by a good one is damage.
        let followed_by_valid =
            complete_end.is_some_and(|end| matches!(record::read_frame(data, end), FrameRead::Valid { .. }));
        if followed_by_valid {
            return Err(corrupt(format!("{problem}, and a valid record follows it")));
        }
        // The last batch, cut short by a crash before its fdatasync returned: none of it
        // was confirmed. Its whole records before here are kept (a batch's end is not
        // marked, so what follows them may be the next batch's torn mark, after a batch
        // that was confirmed).
        *torn = Some(TornTail {
            path: path.clone(),
            offset,
            dropped,
            reason: problem.to_string(),
        });
        Ok(offset)
    }
}

fn cut_torn_tail(torn: &TornTail) -> Result<u64, JournalError> {
    let file = segment::open_for_append(&torn.path)?;
    // Synced even with fsync off: it runs once per start and later appends build on it.
    segment::truncate(&file, &torn.path, torn.offset, true)?;
    tracing::warn!(
        file = %torn.path.display(),
        offset = torn.offset,
        dropped_bytes = torn.dropped,
        reason = %torn.reason,
        "truncated the torn tail of the last journal segment (a write a crash cut short, never synced)"
    );
    Ok(torn.dropped)
}
