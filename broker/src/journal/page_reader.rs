//! Reads messages back from the journal for a paging queue (see
//! `crate::engine::paging`): from a [`PageCursor`] forward, in journal order, only up to
//! the confirmed end, keeping the adds the caller wants until a byte budget is reached.
//! The confirmed end is what the replication gate has released: durable here and, with
//! synchronous replication, held by every synced backup, so a message read back is one a
//! failover keeps (the same bound a receipt waits for).
//!
//! What it must not do: write anything, or read past the confirmed end of the newest
//! segment (the writer appends there meanwhile, and backups may not have it yet). A segment reclaimed meanwhile is skipped:
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
    /// It stopped at the confirmed end, not at a limit: nothing more to read for now.
    pub at_end: bool,
}

impl Journal {
    /// Reads records from `from` on, up to the confirmed end (see the module docs), and
    /// keeps the adds `want` accepts, stopping after the record that brings their bodies
    /// past `budget` bytes.
    pub fn read_adds(&self, from: PageCursor, budget: usize, want: impl FnMut(&StoredMessage) -> bool) -> Result<PageRead, JournalError> {
        self.read_adds_limited(from, budget, usize::MAX, want)
    }

    /// [`Journal::read_adds`], also stopping after the record that brings the adds kept to
    /// `max_messages`.
    pub fn read_adds_limited(
        &self,
        from: PageCursor,
        budget: usize,
        max_messages: usize,
        mut want: impl FnMut(&StoredMessage) -> bool,
    ) -> Result<PageRead, JournalError> {
        let (segment, offset) = self.shared.replication.gate.confirmed();
        let durable = PageCursor { segment, offset };
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
                            if kept >= budget || read.messages.len() >= max_messages {
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
                                read.at_end = true;
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
        read.at_end = true;
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{JournalConfig, JournalMetrics, JournalPosition, MessageId};
    use bytes::Bytes;
    use std::time::Duration;

    fn add(id: u64) -> Op {
        Op::Add(StoredMessage { id: MessageId(id), destination: "/queue/paged".into(), headers: Vec::new(), body: Bytes::from_static(b"paged") })
    }

    fn read_ids(journal: &Journal) -> Vec<u64> {
        let read = journal.read_adds(PageCursor::start(), usize::MAX, |_| true).expect("read back");
        read.messages.iter().map(|m| m.id.0).collect()
    }

    #[tokio::test]
    async fn given_a_synced_backup_should_read_back_only_what_it_confirmed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (journal, _) = Journal::open(JournalConfig::new(dir.path()), JournalMetrics::unregistered()).expect("open");
        journal.append(vec![add(1)]).await.expect("durable");
        let gate = journal.replication_gate();
        let backup = gate.register();
        let synced: JournalPosition = *journal.position().borrow();
        assert!(gate.acked(backup, synced, true));

        let mut held = journal.append(vec![add(2)]);
        let mut position = journal.position();
        tokio::time::timeout(Duration::from_secs(10), position.wait_for(|p| p.at() > synced.at())).await.expect("written").expect("position");
        assert!(futures::poll!(&mut held).is_pending(), "the backup has not confirmed it");
        assert_eq!(read_ids(&journal), [1], "durable here, not yet at the backup: not read back");

        let end = *journal.position().borrow();
        assert!(gate.acked(backup, end, true));
        held.await.expect("confirmed");
        assert_eq!(read_ids(&journal), [1, 2]);

        gate.remove(backup);
        journal.append(vec![add(3)]).await.expect("durable");
        assert_eq!(read_ids(&journal), [1, 2, 3], "without a backup: what is durable here");
        journal.close().expect("close");
        drop(journal);

        let (reopened, _) = Journal::open(JournalConfig::new(dir.path()), JournalMetrics::unregistered()).expect("reopen");
        assert_eq!(read_ids(&reopened), [1, 2, 3], "what the journal held at open counts as confirmed");
        reopened.close().expect("close");
    }
}
