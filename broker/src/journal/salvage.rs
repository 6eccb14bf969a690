//! `journal salvage`: the explicit way past damage that makes recovery refuse to start.
//!
//! Its job: change the journal as little as it must for [`super::Journal::open`] to
//! succeed, and keep a copy of every byte it changes first. Damaged bytes followed by
//! records synced later (a sync mark, see `recovery`) are overwritten with a padding
//! record, so every valid record after them stays where it is and is recovered; damage
//! with no sync mark after it is cut off, with everything after it. Whole, checksummed
//! records are never touched.
//!
//! What it must not do: run while a broker holds the journal (it takes the directory
//! lock), repair anything without first syncing a copy to the salvage folder, or guess
//! around a damaged segment header (it refuses; the operator decides about that file).
//!
//! What a salvaged journal means for messages: the adds in the cut bytes are lost (their
//! bytes are in the copy), and the acks in them are forgotten, so those messages are
//! delivered again.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::lock::DirLock;
use super::record::{self, FrameRead, FRAME_HEADER_LEN, MAX_RECORD_PAYLOAD, MIN_PADDING_LEN};
use super::recovery;
use super::segment::{self, SegmentHeader, HEADER_LEN};
use super::JournalError;

/// Why a salvage did not finish.
#[derive(Debug, thiserror::Error)]
pub enum SalvageError {
    /// Listing, locking, reading or syncing the journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The directory does not exist.
    #[error("failed to salvage: there is no journal directory at {}", path.display())]
    NoJournal {
        /// The directory.
        path: PathBuf,
    },
    /// A segment header is damaged: salvage repairs records only.
    #[error(
        "failed to salvage: segment {} has a bad header ({reason}); salvage repairs records only: \
         move that file out of the journal directory by hand (its records are then lost)",
        path.display()
    )]
    BadHeader {
        /// The segment file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A whole, checksummed record does not decode: no damage, so nothing to cut.
    #[error(
        "failed to salvage: segment {} holds a checksummed record at byte offset {offset} that does \
         not decode ({reason}); that is no damage (a newer version or a bug wrote it), so salvage \
         leaves it alone",
        path.display()
    )]
    Undecodable {
        /// The segment file.
        path: PathBuf,
        /// Where the record starts.
        offset: u64,
        /// Why it does not decode.
        reason: String,
    },
    /// The copy of the bytes to change could not be saved; nothing was changed.
    #[error("failed to save a copy of damaged journal bytes to {}", path.display())]
    SaveCopy {
        /// The copy's file (or folder).
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Overwriting or cutting a segment failed after its copy was saved.
    #[error("failed to repair journal segment {}", path.display())]
    Repair {
        /// The segment file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// One thing salvage did (or, planned only, would do) to one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SalvageAction {
    /// Damaged bytes `from..to` were replaced by padding; the records from `to` on are kept.
    Padded {
        /// The segment file.
        segment: PathBuf,
        /// First damaged byte.
        from: u64,
        /// Where the valid records start again.
        to: u64,
        /// What recovery found at `from`.
        reason: String,
        /// Where the original bytes were copied to.
        copy: PathBuf,
    },
    /// The segment was cut at `at`: nothing synced follows the damage there.
    Cut {
        /// The segment file.
        segment: PathBuf,
        /// The new length of the file.
        at: u64,
        /// Bytes cut off (trailing preallocated zeros not counted).
        bytes: u64,
        /// What recovery found at `at`.
        reason: String,
        /// Where the cut bytes were copied to.
        copy: PathBuf,
    },
}

impl std::fmt::Display for SalvageAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SalvageAction::Padded { segment, from, to, reason, copy } => write!(
                f,
                "padded {} bytes {from}..{to} ({reason}); the records after them are kept; \
                 original bytes copied to {}",
                segment.display(),
                copy.display()
            ),
            SalvageAction::Cut { segment, at, bytes, reason, copy } => write!(
                f,
                "cut {} at byte {at} ({reason}; nothing synced follows); the {bytes} bytes after \
                 it copied to {}",
                segment.display(),
                copy.display()
            ),
        }
    }
}

/// One change to one segment, planned from its bytes.
#[derive(Debug, Clone)]
enum Repair {
    Pad { from: u64, to: u64, reason: String },
    Cut { at: u64, end: u64, reason: String },
}

/// Plans what salvaging the journal in `dir` would do, without changing anything. The
/// copies' paths name files inside `salvage_dir`.
pub fn plan(dir: &Path, salvage_dir: &Path) -> Result<Vec<SalvageAction>, SalvageError> {
    let _lock = lock(dir)?;
    let planned = plan_files(dir)?;
    Ok(planned
        .iter()
        .flat_map(|(path, repairs)| repairs.iter().map(|repair| action(path, repair, salvage_dir)))
        .collect())
}

/// Salvages the journal in `dir`: saves a copy of every byte it is about to change in
/// `salvage_dir` (created, synced), then pads or cuts the damage (synced). Returns what
/// it did, in file order; nothing when the journal reads cleanly. Afterwards
/// [`super::Journal::open`] no longer refuses over record damage.
pub fn salvage(dir: &Path, salvage_dir: &Path) -> Result<Vec<SalvageAction>, SalvageError> {
    let _lock = lock(dir)?;
    let planned = plan_files(dir)?;
    if planned.is_empty() {
        return Ok(Vec::new());
    }
    // Every copy first, durably: only then is any journal byte changed.
    let mut actions = Vec::new();
    let save_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SalvageError::SaveCopy { path, source }
    };
    fs::create_dir_all(salvage_dir).map_err(save_error(salvage_dir))?;
    for (path, repairs) in &planned {
        let file = File::open(path).map_err(|source| JournalError::ReadSegment { path: path.clone(), source: source.into() })?;
        for repair in repairs {
            let action = action(path, repair, salvage_dir);
            let (from, to) = match repair {
                Repair::Pad { from, to, .. } => (*from, *to),
                Repair::Cut { at, end, .. } => (*at, *end),
            };
            let mut bytes = vec![0; usize::try_from(to - from).unwrap_or(usize::MAX)];
            file.read_exact_at(&mut bytes, from)
                .map_err(|source| JournalError::ReadSegment { path: path.clone(), source: source.into() })?;
            let copy = match &action {
                SalvageAction::Padded { copy, .. } | SalvageAction::Cut { copy, .. } => copy.clone(),
            };
            fs::write(&copy, &bytes)
                .and_then(|()| File::open(&copy)?.sync_all())
                .map_err(save_error(&copy))?;
            actions.push(action);
        }
    }
    File::open(salvage_dir).and_then(|d| d.sync_all()).map_err(save_error(salvage_dir))?;
    if let Some(parent) = salvage_dir.parent() {
        File::open(parent).and_then(|d| d.sync_all()).map_err(save_error(parent))?;
    }
    for (path, repairs) in &planned {
        apply(path, repairs)?;
    }
    for action in &actions {
        tracing::warn!(action = %action, "salvaged the journal");
    }
    Ok(actions)
}

fn lock(dir: &Path) -> Result<DirLock, SalvageError> {
    if !dir.is_dir() {
        return Err(SalvageError::NoJournal { path: dir.to_path_buf() });
    }
    Ok(DirLock::acquire(dir)?)
}

fn action(path: &Path, repair: &Repair, salvage_dir: &Path) -> SalvageAction {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let copy = |from: u64, to: u64| salvage_dir.join(format!("{name}.bytes-{from}-{to}"));
    match repair {
        Repair::Pad { from, to, reason } => SalvageAction::Padded {
            segment: path.to_path_buf(),
            from: *from,
            to: *to,
            reason: reason.clone(),
            copy: copy(*from, *to),
        },
        Repair::Cut { at, end, reason } => SalvageAction::Cut {
            segment: path.to_path_buf(),
            at: *at,
            bytes: end - at,
            reason: reason.clone(),
            copy: copy(*at, *end),
        },
    }
}

/// The repairs every segment needs, for the files recovery would read, in its order.
fn plan_files(dir: &Path) -> Result<Vec<(PathBuf, Vec<Repair>)>, SalvageError> {
    let listing = segment::list(dir)?;
    let mut planned = Vec::new();
    for path in recovery::files_to_replay(dir, &listing)? {
        let data = fs::read(&path).map_err(|source| JournalError::ReadSegment { path: path.clone(), source: source.into() })?;
        SegmentHeader::decode(&data)
            .map_err(|problem| SalvageError::BadHeader { path: path.clone(), reason: problem.to_string() })?;
        let repairs = plan_segment(&path, &data)?;
        if !repairs.is_empty() {
            planned.push((path, repairs));
        }
    }
    Ok(planned)
}

/// Walks the records of one segment as recovery does and plans a repair for each place
/// where they stop reading back.
fn plan_segment(path: &Path, data: &[u8]) -> Result<Vec<Repair>, SalvageError> {
    let mut repairs = Vec::new();
    let mut offset = HEADER_LEN;
    while offset < data.len() {
        match record::read_frame(data, offset) {
            FrameRead::Valid { payload, end } => {
                let undecodable = |reason: String| SalvageError::Undecodable { path: path.to_path_buf(), offset: offset as u64, reason };
                let decoded = record::decode_payload(payload).map_err(|e| undecodable(e.to_string()))?;
                if decoded.mark.is_some_and(|at| at != offset as u64) {
                    return Err(undecodable("a sync mark holds another offset".into()));
                }
                offset = end;
            }
            FrameRead::Invalid { problem: record::FrameProblem::ZeroLength, .. }
                if data[offset..].iter().all(|&b| b == 0) =>
            {
                break;
            }
            FrameRead::Invalid { problem, .. } => {
                let reason = problem.to_string();
                match record::find_mark(data, offset + 1).and_then(|mark| resume_point(data, offset, mark)) {
                    Some(resume) => {
                        repairs.push(Repair::Pad { from: offset as u64, to: resume as u64, reason });
                        offset = resume;
                    }
                    None => {
                        let end = data.iter().rposition(|&b| b != 0).map_or(offset, |last| last + 1).max(offset);
                        repairs.push(Repair::Cut { at: offset as u64, end: end as u64, reason });
                        break;
                    }
                }
            }
        }
    }
    Ok(repairs)
}

/// The first offset at or after `damaged + MIN_PADDING_LEN` (so padding fits before it)
/// from which whole records lead exactly to the sync mark at `mark`: records of the
/// damaged batch that survived are kept too. `mark` itself qualifies when it is far
/// enough from the damage.
fn resume_point(data: &[u8], damaged: usize, mark: usize) -> Option<usize> {
    // No record of the batch crosses its successor's mark: a length that would is refused
    // before any checksum is computed.
    let batch = data.get(..mark)?;
    (damaged + MIN_PADDING_LEN..=mark).find(|&start| {
        let mut at = start;
        while at < mark {
            match record::read_frame(batch, at) {
                FrameRead::Valid { payload, end } if record::decode_payload(payload).is_ok() => at = end,
                _ => return false,
            }
        }
        at == mark
    })
}

/// Pads and cuts one segment as planned, then syncs it.
fn apply(path: &Path, repairs: &[Repair]) -> Result<(), SalvageError> {
    let repair_error = |source| SalvageError::Repair { path: path.to_path_buf(), source };
    let file = OpenOptions::new().write(true).open(path).map_err(repair_error)?;
    for repair in repairs {
        match repair {
            Repair::Pad { from, to, .. } => {
                let padding = padding(usize::try_from(to - from).unwrap_or(usize::MAX));
                file.write_all_at(&padding, *from).map_err(repair_error)?;
            }
            Repair::Cut { at, .. } => file.set_len(*at).map_err(repair_error)?,
        }
    }
    file.sync_all().map_err(repair_error)
}

/// Padding records filling exactly `len` bytes (at least [`MIN_PADDING_LEN`]).
fn padding(len: usize) -> Vec<u8> {
    const MAX_FRAME: usize = FRAME_HEADER_LEN + MAX_RECORD_PAYLOAD;
    let mut out = Vec::with_capacity(len);
    let mut left = len;
    while left > 0 {
        let mut take = left.min(MAX_FRAME);
        if left - take != 0 && left - take < MIN_PADDING_LEN {
            take -= MIN_PADDING_LEN;
        }
        record::encode_padding_frame(take, &mut out);
        left -= take;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::smallest(MIN_PADDING_LEN)]
    #[case::page(4096)]
    #[case::one_frame_exactly(FRAME_HEADER_LEN + MAX_RECORD_PAYLOAD)]
    #[case::leaves_less_than_a_frame(FRAME_HEADER_LEN + MAX_RECORD_PAYLOAD + 5)]
    fn given_any_span_when_padded_should_fill_it_exactly_with_valid_records(#[case] len: usize) {
        let bytes = padding(len);
        assert_eq!(bytes.len(), len);
        let mut at = 0;
        while at < len {
            let FrameRead::Valid { payload, end } = record::read_frame(&bytes, at) else {
                panic!("padding at {at} reads back")
            };
            assert_eq!(record::decode_payload(payload).map(|d| d.ops.len()), Ok(0));
            at = end;
        }
        assert_eq!(at, len);
    }
}
