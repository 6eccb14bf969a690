//! Segment files: names, headers, listing, creation and the syncs that make them stick.
//!
//! A segment is `journal-<20-digit sequence>.seg`, starting with a fixed header (magic,
//! format version, sequence, id floor, header checksum). The first segment of an empty
//! journal is written as a `.tmp` file, synced and renamed into place, so a crash never
//! leaves a segment with a half-written header. Every later one is *prepared* ahead of
//! time as `journal-<sequence>.seg.next` (header written, file and directory synced) and
//! renamed to its final name when the writer rolls to it. This module knows nothing about
//! records or what is live.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::JournalError;

/// Bytes of the header at the start of every segment.
pub(super) const HEADER_LEN: usize = 32;

const MAGIC: [u8; 8] = *b"DUOMQJNL";
const FORMAT_VERSION: u32 = 1;
const FILE_PREFIX: &str = "journal-";
const FILE_SUFFIX: &str = ".seg";
const TMP_SUFFIX: &str = ".tmp";
pub(super) const PREPARED_SUFFIX: &str = ".next";
const RETIRED_SUFFIX: &str = ".del";
const SEQUENCE_DIGITS: usize = 20;

/// Position of a segment in the journal; files are read in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct SegmentSeq(pub(super) u64);

impl SegmentSeq {
    /// The sequence of the first segment of an empty journal.
    pub(super) const FIRST: SegmentSeq = SegmentSeq(1);

    pub(super) fn next(self) -> SegmentSeq {
        SegmentSeq(self.0 + 1)
    }

    pub(super) fn file_name(self) -> String {
        format!(
            "{FILE_PREFIX}{:0width$}{FILE_SUFFIX}",
            self.0,
            width = SEQUENCE_DIGITS
        )
    }

    pub(super) fn path(self, dir: &Path) -> PathBuf {
        dir.join(self.file_name())
    }

    /// Where this segment waits, prepared, until the writer rolls to it.
    pub(super) fn prepared_path(self, dir: &Path) -> PathBuf {
        dir.join(format!("{}{PREPARED_SUFFIX}", self.file_name()))
    }

    /// Where this segment goes once reclaimed: out of the journal, not yet off the disk.
    pub(super) fn retired_path(self, dir: &Path) -> PathBuf {
        dir.join(format!("{}{RETIRED_SUFFIX}", self.file_name()))
    }

    /// Parses a segment file name; anything else in the directory is not ours to read.
    pub(super) fn parse_file_name(name: &str) -> Option<SegmentSeq> {
        let digits = name.strip_prefix(FILE_PREFIX)?.strip_suffix(FILE_SUFFIX)?;
        if digits.len() != SEQUENCE_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok().map(SegmentSeq)
    }
}

impl std::fmt::Display for SegmentSeq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The fixed header of a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SegmentHeader {
    pub(super) seq: SegmentSeq,
    /// The journal's next message id when the segment was created. Recovery takes the
    /// maximum with the ids it reads, so ids stay monotonic even after every segment that
    /// held the highest ones has been reclaimed.
    pub(super) id_floor: u64,
}

/// Why a segment header is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum HeaderProblem {
    #[error("file is {len} bytes, shorter than the {HEADER_LEN}-byte header")]
    Short { len: usize },
    #[error("magic bytes do not match (not a duomq journal segment)")]
    BadMagic,
    #[error("unsupported format version {version} (this build reads {FORMAT_VERSION})")]
    UnsupportedVersion { version: u32 },
    #[error("header checksum mismatch")]
    ChecksumMismatch,
}

impl SegmentHeader {
    pub(super) fn encode(&self) -> [u8; HEADER_LEN] {
        let mut header = [0; HEADER_LEN];
        header[0..8].copy_from_slice(&MAGIC);
        header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        header[12..20].copy_from_slice(&self.seq.0.to_le_bytes());
        header[20..28].copy_from_slice(&self.id_floor.to_le_bytes());
        let crc = crc32c::crc32c(&header[..28]);
        header[28..32].copy_from_slice(&crc.to_le_bytes());
        header
    }

    pub(super) fn decode(data: &[u8]) -> Result<SegmentHeader, HeaderProblem> {
        let header = data
            .first_chunk::<HEADER_LEN>()
            .ok_or(HeaderProblem::Short { len: data.len() })?;
        let field = |at: usize| -> [u8; 8] {
            let mut bytes = [0; 8];
            bytes.copy_from_slice(&header[at..at + 8]);
            bytes
        };
        let word = |at: usize| -> [u8; 4] {
            let mut bytes = [0; 4];
            bytes.copy_from_slice(&header[at..at + 4]);
            bytes
        };
        if field(0) != MAGIC {
            return Err(HeaderProblem::BadMagic);
        }
        let version = u32::from_le_bytes(word(8));
        if version != FORMAT_VERSION {
            return Err(HeaderProblem::UnsupportedVersion { version });
        }
        if u32::from_le_bytes(word(28)) != crc32c::crc32c(&header[..28]) {
            return Err(HeaderProblem::ChecksumMismatch);
        }
        Ok(SegmentHeader {
            seq: SegmentSeq(u64::from_le_bytes(field(12))),
            id_floor: u64::from_le_bytes(field(20)),
        })
    }
}

/// The journal files found in a directory.
#[derive(Debug, Default)]
pub(super) struct Listing {
    /// Segments, in sequence order.
    pub(super) segments: Vec<SegmentSeq>,
    /// Prepared segments (`.seg.next`), in sequence order. Normally unused, but one that
    /// holds records is a segment whose rename at the roll a crash undid.
    pub(super) prepared: Vec<SegmentSeq>,
    /// `.tmp` files of segment creations and `.del` files of segment deletions a crash
    /// interrupted; never part of the journal.
    pub(super) leftovers: Vec<PathBuf>,
}

pub(super) fn list(dir: &Path) -> Result<Listing, JournalError> {
    let list_error = |source: std::io::Error| JournalError::ListDir {
        path: dir.to_path_buf(),
        source: source.into(),
    };
    let mut listing = Listing::default();
    for entry in fs::read_dir(dir).map_err(list_error)? {
        let entry = entry.map_err(list_error)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(seq) = SegmentSeq::parse_file_name(name) {
            listing.segments.push(seq);
        } else if let Some(seq) = name
            .strip_suffix(PREPARED_SUFFIX)
            .and_then(SegmentSeq::parse_file_name)
        {
            listing.prepared.push(seq);
        } else if name
            .strip_suffix(TMP_SUFFIX)
            .or_else(|| name.strip_suffix(RETIRED_SUFFIX))
            .and_then(SegmentSeq::parse_file_name)
            .is_some()
        {
            listing.leftovers.push(entry.path());
        }
    }
    listing.segments.sort_unstable();
    listing.prepared.sort_unstable();
    Ok(listing)
}

/// Makes creations, renames and deletions in `dir` durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    let sync_error = |source: std::io::Error| JournalError::SyncDir {
        path: dir.to_path_buf(),
        source: source.into(),
    };
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(sync_error)
}

/// Creates the segment `header.seq` in `dir` and returns it open for writing, positioned
/// nowhere in particular (the writer uses positional writes). With `fsync` the file and
/// the directory are synced, so the segment survives a crash once this returns.
pub(super) fn create(dir: &Path, header: SegmentHeader, fsync: bool) -> Result<File, JournalError> {
    let path = header.seq.path(dir);
    let mut tmp = path.clone().into_os_string();
    tmp.push(TMP_SUFFIX);
    let tmp = PathBuf::from(tmp);
    let result = write_new(&tmp, &path, header, fsync).and_then(|file| {
        if fsync {
            sync_dir(dir)?;
        }
        Ok(file)
    });
    if result.is_err() {
        // Best effort: a leftover .tmp is ignored by recovery and overwritten by the retry.
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn write_new(
    tmp: &Path,
    path: &Path,
    header: SegmentHeader,
    fsync: bool,
) -> Result<File, JournalError> {
    let create_error = |source: std::io::Error| JournalError::CreateSegment {
        path: path.to_path_buf(),
        source: source.into(),
    };
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)
        .map_err(create_error)?;
    file.write_all_at(&header.encode(), 0)
        .map_err(|source| JournalError::Write {
            path: tmp.to_path_buf(),
            source: source.into(),
        })?;
    if fsync {
        file.sync_all().map_err(|source| JournalError::Sync {
            path: tmp.to_path_buf(),
            source: source.into(),
        })?;
    }
    fs::rename(tmp, path).map_err(create_error)?;
    Ok(file)
}

/// A segment file created ahead of its use: header written and, with `fsync`, the file
/// and its directory entry synced. It only becomes part of the journal once
/// [`PreparedSegment::install`] gives it its final name.
#[derive(Debug)]
pub(super) struct PreparedSegment {
    pub(super) header: SegmentHeader,
    pub(super) file: File,
}

/// Creates `header.seq` as a prepared segment in `dir`. On failure nothing is left behind
/// (best effort), so a full disk does not accumulate half-made files.
pub(super) fn prepare(
    dir: &Path,
    header: SegmentHeader,
    fsync: bool,
) -> Result<PreparedSegment, JournalError> {
    let path = header.seq.prepared_path(dir);
    let result = write_prepared(&path, header, fsync).and_then(|file| {
        if fsync {
            sync_dir(dir)?;
        }
        Ok(PreparedSegment { header, file })
    });
    if result.is_err() {
        let _ = fs::remove_file(&path);
    }
    result
}

fn write_prepared(path: &Path, header: SegmentHeader, fsync: bool) -> Result<File, JournalError> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|source| JournalError::CreateSegment {
            path: path.to_path_buf(),
            source: source.into(),
        })?;
    file.write_all_at(&header.encode(), 0)
        .map_err(|source| JournalError::Write {
            path: path.to_path_buf(),
            source: source.into(),
        })?;
    if fsync {
        file.sync_all().map_err(|source| JournalError::Sync {
            path: path.to_path_buf(),
            source: source.into(),
        })?;
    }
    Ok(file)
}

impl PreparedSegment {
    /// Renames the prepared file to its final name, which makes it the newest segment.
    ///
    /// The rename is not synced here: that would cost the writer a directory sync per
    /// roll. Until a later directory sync (the housekeeper's next one) makes it durable,
    /// a crash may leave the file under its prepared name, and recovery adopts a prepared
    /// file that holds records as the segment it is. Its records themselves are durable
    /// through the writer's fdatasyncs, which do not depend on the name.
    pub(super) fn install(&self, dir: &Path) -> Result<PathBuf, JournalError> {
        let path = self.header.seq.path(dir);
        fs::rename(self.header.seq.prepared_path(dir), &path).map_err(|source| {
            JournalError::CreateSegment {
                path: path.clone(),
                source: source.into(),
            }
        })?;
        Ok(path)
    }
}

/// Rewrites the header of `file` in place. The caller syncs it with the data that follows
/// (a header is 32 bytes at offset 0, inside one sector, so it is never torn).
pub(super) fn rewrite_header(
    file: &File,
    path: &Path,
    header: SegmentHeader,
) -> Result<(), JournalError> {
    file.write_all_at(&header.encode(), 0)
        .map_err(|source| JournalError::Write {
            path: path.to_path_buf(),
            source: source.into(),
        })
}

/// Opens an existing segment for appending.
pub(super) fn open_for_append(path: &Path) -> Result<File, JournalError> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|source| JournalError::OpenSegment {
            path: path.to_path_buf(),
            source: source.into(),
        })
}

/// How far ahead of the records a segment being written is preallocated. Writing into
/// preallocated space makes each group commit's `fdatasync` a data-only flush; one
/// extension per this many bytes costs a metadata commit, and a journal never holds more
/// than this much unused space. Recovery reads the zeros as the end of the records.
pub(super) const PREALLOCATE_AHEAD: u64 = 4 * 1024 * 1024;

/// Extends `file` to `to` bytes with allocated, zero-reading blocks (`fallocate` mode 0),
/// so the records later written into them change no file size: their `fdatasync` then
/// flushes data only, without a metadata journal commit, which on ext4 makes it about
/// 1.5x faster. Space the file system cannot preallocate is simply appended to later.
pub(super) fn preallocate(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(from), libc::off_t::try_from(to.saturating_sub(from))) else {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    };
    if len == 0 {
        return Ok(());
    }
    // SAFETY: fallocate only reads its integer arguments; the descriptor is owned by `file`
    // and open for writing for the duration of the call.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, offset, len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Cuts `file` back to `len` bytes and, with `fsync`, makes the cut durable.
pub(super) fn truncate(
    file: &File,
    path: &Path,
    len: u64,
    fsync: bool,
) -> Result<(), JournalError> {
    let truncate_error = |source: std::io::Error| JournalError::TruncateSegment {
        path: path.to_path_buf(),
        offset: len,
        source: source.into(),
    };
    file.set_len(len).map_err(truncate_error)?;
    if fsync {
        file.sync_all().map_err(truncate_error)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[test]
    fn given_header_when_encoded_and_decoded_should_round_trip() {
        let header = SegmentHeader {
            seq: SegmentSeq(42),
            id_floor: 1_000_007,
        };
        assert_eq!(SegmentHeader::decode(&header.encode()), Ok(header));
    }

    #[rstest]
    #[case::short(0, 0, HeaderProblem::Short { len: 31 })]
    #[case::magic(1, 0x20, HeaderProblem::BadMagic)]
    #[case::version(8, 1, HeaderProblem::UnsupportedVersion { version: FORMAT_VERSION ^ 1 })]
    #[case::sequence(13, 1, HeaderProblem::ChecksumMismatch)]
    fn given_damaged_header_when_decoded_should_name_the_problem(
        #[case] at: usize,
        #[case] flip: u8,
        #[case] expected: HeaderProblem,
    ) {
        let mut bytes = SegmentHeader {
            seq: SegmentSeq(3),
            id_floor: 9,
        }
        .encode()
        .to_vec();
        if flip == 0 {
            bytes.pop();
        } else {
            bytes[at] ^= flip;
        }
        assert_eq!(SegmentHeader::decode(&bytes), Err(expected));
    }

    #[rstest]
    #[case("journal-00000000000000000007.seg", Some(SegmentSeq(7)))]
    #[case("journal-7.seg", None)]
    #[case("journal-0000000000000000000x.seg", None)]
    #[case("journal-00000000000000000007.seg.tmp", None)]
    #[case("journal-00000000000000000007.seg.next", None)]
    #[case("journal-00000000000000000007.seg.del", None)]
    #[case("journal.lock", None)]
    fn given_file_name_when_parsed_should_recognise_only_segments(
        #[case] name: &str,
        #[case] expected: Option<SegmentSeq>,
    ) {
        assert_eq!(SegmentSeq::parse_file_name(name), expected);
        if let Some(seq) = expected {
            assert_eq!(seq.file_name(), name);
        }
    }
}
