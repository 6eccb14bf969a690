//! Reads messages back from the journal for a paging queue (see
//! `crate::engine::paging`): from a [`PageCursor`] forward, in journal order, only up to
//! the durable end, keeping the adds the caller wants until a byte budget is reached.
//!
//! What it must not do: write anything, or read past the durable end of the newest
//! segment (the writer appends there meanwhile). A segment reclaimed meanwhile is skipped:
//! it held nothing live. Blocks on file I/O.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::record::{self, FrameProblem, FrameRead};
use super::segment::{SegmentSeq, HEADER_LEN};
use super::{Journal, JournalError, Op, StoredMessage};

/// Bytes read from a segment at a time (a longer record is read whole).
const CHUNK: usize = 4 * 1024 * 1024;

/// Where reading back goes on: every record before it was read already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct PageCursor {
    pub segment: u64,
    pub offset: u64,
}

impl PageCursor {
    /// The start of the oldest segment on disk.
    pub fn start() -> PageCursor {
        PageCursor::default()
    }
}

/// What one [`Journal::read_adds`] found.
#[derive(Debug, Default)]
pub struct PageRead {
    /// The wanted adds, in journal order.
    pub messages: Vec<StoredMessage>,
    /// Where the next read goes on.
    pub cursor: PageCursor,
    /// Bytes of journal read.
    pub bytes_read: u64,
}

impl Journal {
    /// Reads records from `from` on, up to the durable end, and keeps the adds `want`
    /// accepts, stopping after the record that brings their bodies past `budget` bytes.
    pub fn read_adds(&self, from: PageCursor, budget: usize, mut want: impl FnMut(&StoredMessage) -> bool) -> Result<PageRead, JournalError> {
        let durable = *self.shared.replication.position.borrow();
        let dir = &self.shared.dir;
        let mut read = PageRead { cursor: from, ..PageRead::default() };
        let mut kept = 0usize;
        for seg in self.reader().segments()? {
            if seg.seq < read.cursor.segment {
                continue;
            }
            if seg.seq > durable.segment {
                break;
            }
            if seg.seq != read.cursor.segment || read.cursor.offset < HEADER_LEN as u64 {
                read.cursor = PageCursor { segment: seg.seq, offset: HEADER_LEN as u64 };
            }
            let end = if seg.seq == durable.segment { durable.offset } else { seg.len };
            let path = SegmentSeq(seg.seq).path(dir);
            // Reclaimed since it was listed: nothing in it was live.
            let Ok(file) = File::open(&path) else { continue };
            let mut chunk = CHUNK;
            'segment: while read.cursor.offset < end {
                let len = chunk.min((end - read.cursor.offset) as usize);
                let mut buf = vec![0u8; len];
                file.read_exact_at(&mut buf, read.cursor.offset)
                    .map_err(|source| JournalError::ReadSegment { path: path.clone(), source: source.into() })?;
                read.bytes_read += len as u64;
                let mut pos = 0;
                loop {
                    if pos == buf.len() {
                        break;
                    }
                    match record::read_frame(&buf, pos) {
                        FrameRead::Valid { payload, end: next } => {
                            let decoded = record::decode_payload(payload).map_err(|e| JournalError::CorruptRecord {
                                path: path.clone(),
                                offset: read.cursor.offset + pos as u64,
                                reason: e.to_string(),
                            })?;
                            for op in decoded.ops {
                                if let Op::Add(message) = op {
                                    if want(&message) {
                                        kept += message.body.len();
                                        read.messages.push(message);
                                    }
                                }
                            }
                            pos = next;
                            if kept >= budget {
                                read.cursor.offset += pos as u64;
                                return Ok(read);
                            }
                        }
                        // Preallocated space: the segment's records end here.
                        FrameRead::Invalid { problem: FrameProblem::ZeroLength, .. } => {
                            read.cursor.offset += pos as u64;
                            break 'segment;
                        }
                        FrameRead::Invalid { problem: FrameProblem::ShortHeader { .. } | FrameProblem::ShortPayload { .. }, .. }
                            if read.cursor.offset + (buf.len() as u64) < end || pos > 0 =>
                        {
                            // The record goes on past this chunk: read again from it, the
                            // whole record at once if it is longer than a chunk.
                            if pos == 0 {
                                chunk = chunk.saturating_mul(2).min(record::MAX_RECORD_PAYLOAD + record::FRAME_HEADER_LEN);
                            }
                            break;
                        }
                        FrameRead::Invalid { problem, .. } => {
                            if seg.seq == durable.segment {
                                // Not durable yet past here (a write under way).
                                read.cursor.offset += pos as u64;
                                return Ok(read);
                            }
                            return Err(JournalError::CorruptRecord { path, offset: read.cursor.offset + pos as u64, reason: problem.to_string() });
                        }
                    }
                }
                read.cursor.offset += pos as u64;
            }
            if seg.seq == durable.segment {
                break;
            }
        }
        Ok(read)
    }
}
