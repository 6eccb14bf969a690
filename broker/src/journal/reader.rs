//! Reads the journal's segment files for whoever ships them elsewhere (the live's
//! replication sender): which segments are on disk, how far one may be read, a chunk at a
//! `(segment, offset)` with the file kept open between chunks, and the prefix digest a
//! backup's copy is compared with.
//!
//! What it must not do: write, rename or delete anything, or read past what the caller
//! says is written (the writer may be appending to the newest segment meanwhile). Every
//! call blocks on file I/O; async callers decide where that is acceptable.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use super::mirror::prefix_digest;
use super::segment::{self, SegmentSeq};
use super::{JournalError, JournalPosition};

/// A segment on disk and its length when listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentOnDisk {
    pub seq: u64,
    pub len: u64,
}

/// Read access to one journal's segment files (see [`super::Journal::reader`]).
#[derive(Debug)]
pub struct SegmentReader {
    dir: PathBuf,
    /// The segment last read, kept open across chunks.
    open: Option<(u64, File)>,
}

impl SegmentReader {
    pub(super) fn new(dir: PathBuf) -> SegmentReader {
        SegmentReader { dir, open: None }
    }

    /// Segments on disk (not prepared or retired files) with their lengths, oldest first.
    /// A segment deleted while it is listed is left out.
    pub fn segments(&self) -> Result<Vec<SegmentOnDisk>, JournalError> {
        let listing = segment::list(&self.dir)?;
        Ok(listing
            .segments
            .into_iter()
            .filter_map(|seq| {
                std::fs::metadata(seq.path(&self.dir)).ok().map(|m| SegmentOnDisk { seq: seq.0, len: m.len() })
            })
            .collect())
    }

    /// The oldest segment on disk after `seq`, if any.
    pub fn next_after(&self, seq: u64) -> Result<Option<u64>, JournalError> {
        Ok(self.segments()?.into_iter().map(|s| s.seq).find(|s| *s > seq))
    }

    /// How many bytes of segment `seq` may be read while the journal is written up to
    /// `written`: all of an older segment (0 once it is gone), the written part of the
    /// newest, nothing of one not begun.
    pub fn readable_len(&self, seq: u64, written: JournalPosition) -> u64 {
        match seq.cmp(&written.segment) {
            std::cmp::Ordering::Less => std::fs::metadata(SegmentSeq(seq).path(&self.dir)).map_or(0, |m| m.len()),
            std::cmp::Ordering::Equal => written.offset,
            std::cmp::Ordering::Greater => 0,
        }
    }

    /// Fills `buf` from segment `seq` at `offset`. The file stays open for the next read
    /// of the same segment, so a segment reclaimed meanwhile can still be finished.
    pub fn read_at(&mut self, seq: u64, offset: u64, buf: &mut [u8]) -> Result<(), JournalError> {
        let path = || SegmentSeq(seq).path(&self.dir);
        if self.open.as_ref().is_none_or(|(open, _)| *open != seq) {
            self.open = None;
            let file = File::open(path())
                .map_err(|source| JournalError::OpenSegment { path: path(), source: source.into() })?;
            self.open = Some((seq, file));
        }
        let Some((_, file)) = &self.open else { return Ok(()) };
        file.read_exact_at(buf, offset)
            .map_err(|source| JournalError::ReadSegment { path: path(), source: source.into() })
    }

    /// [`prefix_digest`] of the first `len` bytes of segment `seq`: what a backup's copy of
    /// that segment is compared with before it resumes from it.
    pub fn prefix_digest(&self, seq: u64, len: u64) -> Result<u32, JournalError> {
        let path = SegmentSeq(seq).path(&self.dir);
        let file = File::open(&path)
            .map_err(|source| JournalError::OpenSegment { path: path.clone(), source: source.into() })?;
        prefix_digest(&file, len).map_err(|source| JournalError::ReadSegment { path, source: source.into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Journal, JournalConfig, JournalMetrics, MessageId, Op, StoredMessage};

    fn add(id: u64, body: &str) -> Op {
        Op::Add(StoredMessage {
            id: MessageId(id),
            destination: "/queue/q".into(),
            headers: vec![],
            body: bytes::Bytes::from(body.to_string()),
        })
    }

    fn open(dir: &std::path::Path, segment_size: u64) -> Journal {
        let config = JournalConfig { segment_size, ..JournalConfig::new(dir) };
        match Journal::open(config, JournalMetrics::unregistered()) {
            Ok((journal, _)) => journal,
            Err(e) => panic!("open journal: {e}"),
        }
    }

    #[tokio::test]
    async fn given_appended_records_when_read_through_the_reader_should_return_the_segment_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = open(dir.path(), 64 * 1024 * 1024);
        journal.append(vec![add(1, "one"), add(2, "two")]).await.expect("append");
        let written = *journal.written_position().borrow();
        let mut reader = journal.reader();
        let segments = reader.segments().expect("list");
        assert_eq!(segments.len(), 1);
        assert_eq!(segments[0].seq, written.segment);
        assert_eq!(reader.readable_len(written.segment, written), written.offset);
        assert_eq!(reader.readable_len(written.segment + 1, written), 0);

        let mut head = vec![0u8; written.offset as usize];
        reader.read_at(written.segment, 0, &mut head).expect("read");
        let on_disk = std::fs::read(dir.path().join(SegmentSeq(written.segment).file_name())).expect("read file");
        assert_eq!(&on_disk[..head.len()], &head[..]);
        let file = File::open(dir.path().join(SegmentSeq(written.segment).file_name())).expect("open");
        assert_eq!(
            reader.prefix_digest(written.segment, written.offset).expect("digest"),
            prefix_digest(&file, written.offset).expect("digest")
        );
        journal.close().expect("close");
    }

    #[tokio::test]
    async fn given_a_rolled_journal_should_list_segments_in_order_and_read_older_ones_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = open(dir.path(), 4096);
        let body = "x".repeat(3000);
        for id in 1..=4 {
            journal.append(vec![add(id, &body)]).await.expect("append");
        }
        let written = *journal.written_position().borrow();
        let reader = journal.reader();
        let segments = reader.segments().expect("list");
        assert!(segments.len() >= 2, "rolled: {segments:?}");
        assert!(segments.windows(2).all(|w| w[0].seq < w[1].seq));
        let oldest = segments[0];
        assert_eq!(reader.readable_len(oldest.seq, written), oldest.len, "an older segment is readable whole");
        assert_eq!(reader.next_after(oldest.seq).expect("next"), Some(segments[1].seq));
        assert_eq!(reader.next_after(written.segment).expect("next"), None);
        journal.close().expect("close");
    }

    #[test]
    fn given_a_missing_segment_when_read_should_name_it_in_the_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut reader = SegmentReader::new(dir.path().to_path_buf());
        let mut buf = [0u8; 4];
        match reader.read_at(7, 0, &mut buf) {
            Err(JournalError::OpenSegment { path, .. }) => assert!(path.ends_with(SegmentSeq(7).file_name())),
            other => panic!("expected OpenSegment, got {other:?}"),
        }
        assert!(matches!(reader.prefix_digest(7, 32), Err(JournalError::OpenSegment { .. })));
        let written = JournalPosition { segment: 8, offset: 100, records: 1 };
        assert_eq!(reader.readable_len(7, written), 0, "a segment gone reads as empty");
    }
}
