//! The backup's side of replication: it keeps a byte-identical copy of the live's segment
//! files, written where the live says, so that on activation the ordinary recovery of
//! [`super::Journal::open`] turns the copy into a live journal. It holds the directory
//! lock so nothing else writes there; it decodes no records. Like the live's writer, it
//! preallocates ahead of what it writes, so the backup's fdatasync (on the live's
//! confirmation path in sync mode) flushes data only; recovery reads the zeros beyond the
//! records as their end.
//!
//! It reads record boundaries (lengths and checksums), never record contents: to count
//! the records it holds (for the lag in records), and to describe its segments when it
//! reconnects ([`Mirror::digests`]) so that the live can send only what is missing.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::lock::DirLock;
use super::record::{self, FrameRead};
use super::segment::{self, SegmentSeq, HEADER_LEN};
use super::JournalError;

/// Bytes before the end of a segment's records that [`prefix_digest`] covers (besides
/// the header).
pub const DIGEST_TAIL: u64 = 64 * 1024;

/// A checksum of segment `file`'s first `len` bytes as a live and its backup compare them
/// on reconnect: the header and the last [`DIGEST_TAIL`] bytes before `len`. Records hold
/// unique message ids, so two copies whose ends match there hold the same records.
pub fn prefix_digest(file: &File, len: u64) -> std::io::Result<u32> {
    let header = (HEADER_LEN as u64).min(len);
    let mut head = vec![0; header as usize];
    file.read_exact_at(&mut head, 0)?;
    let from = len.saturating_sub(DIGEST_TAIL).max(header);
    let mut tail = vec![0; (len - from) as usize];
    file.read_exact_at(&mut tail, from)?;
    Ok(crc32c::crc32c_append(crc32c::crc32c(&head), &tail))
}

/// What [`Mirror::digests`] reports of one mirrored segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MirroredSegment {
    pub seq: u64,
    /// Where its valid records end.
    pub len: u64,
    /// [`prefix_digest`] of those bytes.
    pub crc: u32,
}

/// How far the records of a mirrored segment have been counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Scan {
    /// Where the next record starts.
    next_at: u64,
    records: u64,
}

impl Scan {
    const EMPTY: Scan = Scan { next_at: HEADER_LEN as u64, records: 0 };

    /// Counts the whole, checksummed records at the start of `data` (a segment file).
    fn of(data: &[u8]) -> Scan {
        let mut scan = Scan::EMPTY;
        let mut offset = HEADER_LEN;
        while let FrameRead::Valid { end, .. } = record::read_frame(data, offset) {
            scan = Scan { next_at: end as u64, records: scan.records + 1 };
            offset = end;
        }
        scan
    }
}

/// A mirrored journal directory.
#[derive(Debug)]
pub struct Mirror {
    dir: PathBuf,
    files: BTreeMap<u64, File>,
    lens: BTreeMap<u64, u64>,
    /// Size of each open file including preallocated space.
    allocated: BTreeMap<u64, u64>,
    dirty: BTreeSet<u64>,
    dir_dirty: bool,
    /// Record counts per segment, as far as its bytes arrived.
    scans: BTreeMap<u64, Scan>,
    /// The number of each segment's first record, as the live counts them.
    first_records: BTreeMap<u64, u64>,
    /// Asked after every sync that synced a segment: a failing or slow disk in tests.
    faults: crate::faults::Faults,
    _lock: DirLock,
}

impl Mirror {
    /// Takes the journal directory (creating it) for mirroring.
    pub fn open(dir: &Path) -> Result<Mirror, JournalError> {
        std::fs::create_dir_all(dir)
            .map_err(|source| JournalError::CreateDir { path: dir.to_path_buf(), source: source.into() })?;
        let lock = DirLock::acquire(dir)?;
        let mut mirror = Mirror {
            dir: dir.to_path_buf(),
            files: BTreeMap::new(),
            lens: BTreeMap::new(),
            allocated: BTreeMap::new(),
            dirty: BTreeSet::new(),
            dir_dirty: false,
            scans: BTreeMap::new(),
            first_records: BTreeMap::new(),
            faults: crate::faults::Faults::off(),
            _lock: lock,
        };
        for seq in segment::list(dir)?.segments {
            let path = seq.path(dir);
            let len = std::fs::metadata(&path)
                .map_err(|source| JournalError::ReadSegment { path: path.clone(), source: source.into() })?
                .len();
            mirror.lens.insert(seq.0, len);
        }
        Ok(mirror)
    }

    /// Forgets every local segment before a full copy from the live.
    pub fn reset(&mut self) -> Result<(), JournalError> {
        self.files.clear();
        self.allocated.clear();
        self.dirty.clear();
        let listing = segment::list(&self.dir)?;
        let extra = listing.prepared.iter().map(|s| prepared_path(&self.dir, *s));
        for path in listing.segments.iter().map(|s| s.path(&self.dir)).chain(extra).chain(listing.leftovers) {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(JournalError::Write { path, source: source.into() }),
            }
        }
        self.lens.clear();
        self.scans.clear();
        self.dir_dirty = true;
        self.sync()
    }

    /// Reads every segment and describes what it holds: where its valid records end and a
    /// checksum the live compares with its own file (see [`prefix_digest`]). Segments
    /// without a valid header are left out. Reads the whole mirror.
    pub fn digests(&mut self) -> Result<Vec<MirroredSegment>, JournalError> {
        let mut out = Vec::new();
        for &seq in self.lens.keys() {
            let path = SegmentSeq(seq).path(&self.dir);
            let read_error = |source: std::io::Error| JournalError::ReadSegment { path: path.clone(), source: source.into() };
            let data = std::fs::read(&path).map_err(read_error)?;
            if segment::SegmentHeader::decode(&data).is_err() {
                continue;
            }
            let scan = Scan::of(&data);
            let file = File::open(&path).map_err(read_error)?;
            let crc = prefix_digest(&file, scan.next_at).map_err(read_error)?;
            self.scans.insert(seq, scan);
            out.push(MirroredSegment { seq, len: scan.next_at, crc });
        }
        Ok(out)
    }

    /// Keeps the segments in `keep` (sequence and length, as [`Mirror::digests`] reported
    /// them and the live confirmed), cut to that length, and deletes every other one:
    /// what the live sends next continues those prefixes.
    pub fn resume(&mut self, keep: &BTreeMap<u64, u64>) -> Result<(), JournalError> {
        let local: Vec<u64> = self.lens.keys().copied().collect();
        for seq in local {
            match keep.get(&seq) {
                Some(&len) => self.cut(seq, len)?,
                None => self.remove(seq)?,
            }
        }
        self.scans.retain(|seq, _| keep.contains_key(seq));
        self.sync()
    }

    /// Takes the number of each segment's first record from the live (see
    /// [`Mirror::records`]).
    pub fn set_first_records(&mut self, first_records: impl IntoIterator<Item = (u64, u64)>) {
        self.first_records = first_records.into_iter().collect();
    }

    /// Asks `faults` after every sync (`debug.faultInjection`: a backup's failing or slow
    /// disk).
    pub fn with_faults(mut self, faults: crate::faults::Faults) -> Mirror {
        self.faults = faults;
        self
    }

    /// Records held, counted as the live counts them: up to the end of the whole records
    /// of the newest segment.
    pub fn records(&self) -> u64 {
        let Some((&seq, scan)) = self.scans.iter().next_back() else { return 0 };
        self.first_record(seq) + scan.records
    }

    fn first_record(&self, seq: u64) -> u64 {
        if let Some(&first) = self.first_records.get(&seq) {
            return first;
        }
        // A segment the live started after the sync began follows the one before it.
        match self.scans.range(..seq).next_back() {
            Some((&older, scan)) if older + 1 == seq => self.first_record(older) + scan.records,
            _ => 0,
        }
    }

    /// Cuts segment `seq` back to `len` bytes, durably, as the live did after failing to
    /// sync a batch this mirror may already hold. Nothing to do where the mirror holds
    /// no more than `len`.
    pub fn truncate(&mut self, seq: u64, len: u64) -> Result<(), JournalError> {
        self.cut(seq, len)?;
        self.sync()
    }

    fn cut(&mut self, seq: u64, len: u64) -> Result<(), JournalError> {
        let path = SegmentSeq(seq).path(&self.dir);
        let Some(&have) = self.lens.get(&seq) else { return Ok(()) };
        let size = std::fs::metadata(&path)
            .map_err(|source| JournalError::ReadSegment { path: path.clone(), source: source.into() })?
            .len();
        if size <= len {
            return Ok(());
        }
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|source| JournalError::OpenSegment { path: path.clone(), source: source.into() })?;
        segment::truncate(&file, &path, len, true)?;
        self.allocated.insert(seq, len);
        self.lens.insert(seq, have.min(len));
        if self.scans.get(&seq).is_some_and(|scan| scan.next_at > len) {
            let data = std::fs::read(&path)
                .map_err(|source| JournalError::ReadSegment { path: path.clone(), source: source.into() })?;
            self.scans.insert(seq, Scan::of(&data));
        }
        Ok(())
    }

    /// Writes `data` at `offset` of segment `seq`, creating the file if needed. Not durable
    /// until [`Mirror::sync`].
    pub fn write(&mut self, seq: u64, offset: u64, data: &[u8]) -> Result<(), JournalError> {
        let path = SegmentSeq(seq).path(&self.dir);
        if !self.files.contains_key(&seq) {
            let existed = self.lens.contains_key(&seq);
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|source| JournalError::OpenSegment { path: path.clone(), source: source.into() })?;
            let size = file.metadata().map_or(0, |m| m.len());
            self.files.insert(seq, file);
            self.allocated.insert(seq, size);
            self.dir_dirty |= !existed;
            self.trim_older(seq);
        }
        let Some(file) = self.files.get(&seq) else {
            return Err(JournalError::Closed);
        };
        let end = offset + data.len() as u64;
        let allocated = self.allocated.entry(seq).or_insert(0);
        if end > *allocated {
            let to = end.saturating_add(segment::PREALLOCATE_AHEAD);
            match segment::preallocate(file, *allocated, to) {
                Ok(()) => *allocated = to,
                Err(error) => tracing::debug!(
                    segment = %path.display(),
                    error = &error as &dyn std::error::Error,
                    "cannot preallocate mirrored journal space; appending instead"
                ),
            }
        }
        file.write_all_at(data, offset)
            .map_err(|source| JournalError::Write { path: path.clone(), source: source.into() })?;
        let len = self.lens.entry(seq).or_insert(0);
        *len = (*len).max(end);
        self.dirty.insert(seq);
        self.count_records(seq, offset, data)
            .map_err(|source| JournalError::ReadSegment { path, source: source.into() })
    }

    /// Counts the records that `data`, just written at `offset`, completes. A length field
    /// that began in an earlier write is read back from the file.
    fn count_records(&mut self, seq: u64, offset: u64, data: &[u8]) -> std::io::Result<()> {
        if !self.first_records.contains_key(&seq) && !self.scans.contains_key(&seq) {
            let first = self.first_record(seq);
            self.first_records.insert(seq, first);
        }
        let end = offset + data.len() as u64;
        let file = self.files.get(&seq);
        let scan = self.scans.entry(seq).or_insert(Scan::EMPTY);
        while scan.next_at + record::FRAME_HEADER_LEN as u64 <= end {
            let at = scan.next_at;
            let mut len = [0u8; 4];
            match at.checked_sub(offset) {
                Some(local) => len.copy_from_slice(&data[local as usize..local as usize + 4]),
                None => match file {
                    Some(file) => file.read_exact_at(&mut len, at)?,
                    None => break,
                },
            }
            let len = u64::from(u32::from_le_bytes(len));
            let record_end = at + record::FRAME_HEADER_LEN as u64 + len;
            // Zeros are preallocated space: no record follows in this segment.
            if len == 0 || record_end > end {
                break;
            }
            *scan = Scan { next_at: record_end, records: scan.records + 1 };
        }
        Ok(())
    }

    /// Gives back the preallocated space of the segments before `seq`, which the live has
    /// rolled away from. Best effort: zeros left behind read as the end of the records.
    fn trim_older(&mut self, seq: u64) {
        for (&older, file) in self.files.range(..seq) {
            let len = self.lens.get(&older).copied().unwrap_or(0);
            if self.allocated.get(&older).is_some_and(|&allocated| allocated > len) && file.set_len(len).is_ok() {
                self.allocated.insert(older, len);
            }
        }
    }

    /// Deletes a segment the live reclaimed.
    pub fn remove(&mut self, seq: u64) -> Result<(), JournalError> {
        self.files.remove(&seq);
        self.scans.remove(&seq);
        self.allocated.remove(&seq);
        self.dirty.remove(&seq);
        self.lens.remove(&seq);
        let path = SegmentSeq(seq).path(&self.dir);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                self.dir_dirty = true;
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(JournalError::Write { path, source: source.into() }),
        }
    }

    /// Makes every write so far durable (fdatasync per touched segment, then the directory
    /// if files came or went).
    pub fn sync(&mut self) -> Result<(), JournalError> {
        let mut synced = None;
        for seq in std::mem::take(&mut self.dirty) {
            if let Some(file) = self.files.get(&seq) {
                file.sync_data().map_err(|source| JournalError::Sync {
                    path: SegmentSeq(seq).path(&self.dir),
                    source: source.into(),
                })?;
                synced = Some(seq);
            }
        }
        if let Some(seq) = synced {
            self.faults.fsync().map_err(|source| JournalError::Sync { path: SegmentSeq(seq).path(&self.dir), source: source.into() })?;
        }
        if std::mem::take(&mut self.dir_dirty) {
            segment::sync_dir(&self.dir)?;
        }
        // Only the newest segment still grows; keep one open handle, not one per segment.
        while self.files.len() > 2 {
            let Some((&oldest, _)) = self.files.iter().next() else { break };
            self.files.remove(&oldest);
            self.allocated.remove(&oldest);
        }
        Ok(())
    }

    /// How many bytes of segment `seq` the copy holds (0 for one it does not hold).
    pub fn segment_len(&self, seq: u64) -> u64 {
        self.lens.get(&seq).copied().unwrap_or(0)
    }

    /// The mirrored segments and their lengths.
    pub fn extents(&self) -> Vec<(u64, u64)> {
        self.lens.iter().map(|(s, l)| (*s, *l)).collect()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn prepared_path(dir: &Path, seq: SegmentSeq) -> PathBuf {
    let mut p = seq.path(dir).into_os_string();
    p.push(segment::PREPARED_SUFFIX);
    PathBuf::from(p)
}
