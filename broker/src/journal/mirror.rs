//! The backup's side of replication: it keeps a byte-identical copy of the live's segment
//! files, written where the live says, so that on activation the ordinary recovery of
//! [`super::Journal::open`] turns the copy into a live journal. It holds the directory
//! lock so nothing else writes there; it decodes no records. Like the live's writer, it
//! preallocates ahead of what it writes, so the backup's fdatasync (on the live's
//! confirmation path in sync mode) flushes data only; recovery reads the zeros beyond the
//! records as their end.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::lock::DirLock;
use super::segment::{self, SegmentSeq};
use super::JournalError;

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
        self.dir_dirty = true;
        self.sync()
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
            .map_err(|source| JournalError::Write { path, source: source.into() })?;
        let len = self.lens.entry(seq).or_insert(0);
        *len = (*len).max(end);
        self.dirty.insert(seq);
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
        for seq in std::mem::take(&mut self.dirty) {
            if let Some(file) = self.files.get(&seq) {
                file.sync_data().map_err(|source| JournalError::Sync {
                    path: SegmentSeq(seq).path(&self.dir),
                    source: source.into(),
                })?;
            }
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
