//! Start-up recovery: replays every segment and rebuilds the live messages and the
//! reclamation ledger.
//!
//! The only repair it makes is cutting a torn tail off the last segment (what a kill -9
//! in the middle of a write leaves). Any other damage, or damage in an older segment,
//! stops it with an error before a single file was modified: guessing there would risk
//! resurrecting acked messages or dropping receipted ones.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::reclaim::{Effect, Ledger};
use super::record::{self, FrameRead};
use super::segment::{self, SegmentHeader, SegmentSeq, HEADER_LEN};
use super::{JournalError, MessageId, Op, Recovered, StoredMessage};

/// Everything the writer needs to carry on where the last run stopped.
#[derive(Debug)]
pub(super) struct Recovery {
    pub(super) recovered: Recovered,
    pub(super) ledger: Ledger,
    /// The newest segment and its length after any torn tail was cut; `None` when the
    /// directory held no segment.
    pub(super) last: Option<(SegmentSeq, u64)>,
}

/// A torn tail found in the last segment, cut only after every segment has been read.
struct TornTail {
    path: PathBuf,
    offset: u64,
    dropped: u64,
    reason: String,
}

/// Replays the journal in `dir`.
pub(super) fn recover(dir: &Path) -> Result<Recovery, JournalError> {
    let listing = segment::list(dir)?;
    let mut state = Replay::default();
    let mut torn = None;
    let mut last = None;
    for (index, &seq) in listing.segments.iter().enumerate() {
        let is_last = index + 1 == listing.segments.len();
        let path = seq.path(dir);
        let data = fs::read(&path).map_err(|source| JournalError::ReadSegment {
            path: path.clone(),
            source: source.into(),
        })?;
        let header =
            SegmentHeader::decode(&data).map_err(|problem| JournalError::BadSegmentHeader {
                path: path.clone(),
                reason: problem.to_string(),
            })?;
        if header.seq != seq {
            return Err(JournalError::BadSegmentHeader {
                path,
                reason: format!(
                    "header names segment {} but the file name {seq}",
                    header.seq
                ),
            });
        }
        state.next_id = state.next_id.max(header.id_floor);
        let end = state.replay_records(seq, &path, &data, is_last, &mut torn)?;
        state.ledger.add_segment(seq, end as u64);
        if is_last {
            last = Some((seq, end as u64));
        }
    }

    // Every segment read cleanly up to here, so modifying files is now safe.
    let torn_tail_bytes = match torn {
        Some(torn) => cut_torn_tail(&torn)?,
        None => 0,
    };
    for leftover in &listing.leftovers {
        if let Err(error) = fs::remove_file(leftover) {
            tracing::debug!(
                file = %leftover.display(),
                error = &error as &dyn std::error::Error,
                "could not remove leftover of an interrupted segment creation"
            );
        }
    }

    Ok(Recovery {
        recovered: Recovered {
            messages: state.messages.into_values().collect(),
            next_id: MessageId(state.next_id),
            segments: listing.segments.len(),
            records: state.records,
            torn_tail_bytes,
        },
        ledger: state.ledger,
        last,
    })
}

#[derive(Default)]
struct Replay {
    messages: BTreeMap<MessageId, StoredMessage>,
    ledger: Ledger,
    next_id: u64,
    records: u64,
}

impl Replay {
    /// Applies the records of one segment; returns the offset where its valid data ends.
    fn replay_records(
        &mut self,
        seq: SegmentSeq,
        path: &Path,
        data: &[u8],
        is_last: bool,
        torn: &mut Option<TornTail>,
    ) -> Result<usize, JournalError> {
        let corrupt = |offset: usize, reason: String| JournalError::CorruptRecord {
            path: path.to_path_buf(),
            offset: offset as u64,
            reason,
        };
        let mut offset = HEADER_LEN;
        while offset < data.len() {
            match record::read_frame(data, offset) {
                FrameRead::Valid { payload, end } => {
                    // A checksummed payload that does not decode was never torn: a bug or
                    // a foreign writer, so never truncate it away.
                    let ops = record::decode_payload(payload)
                        .map_err(|error| corrupt(offset, error.to_string()))?;
                    self.apply(seq, ops);
                    offset = end;
                }
                FrameRead::Invalid {
                    problem,
                    complete_end,
                } => {
                    if !is_last {
                        return Err(corrupt(offset, problem.to_string()));
                    }
                    // A kill -9 leaves the last batch cut short with nothing after it. A
                    // whole record with a bad checksum followed by a good one is damage in
                    // the middle of the file instead.
                    let followed_by_valid = complete_end.is_some_and(|end| {
                        matches!(record::read_frame(data, end), FrameRead::Valid { .. })
                    });
                    if followed_by_valid {
                        return Err(corrupt(
                            offset,
                            format!("{problem}, and a valid record follows it"),
                        ));
                    }
                    *torn = Some(TornTail {
                        path: path.to_path_buf(),
                        offset: offset as u64,
                        dropped: (data.len() - offset) as u64,
                        reason: problem.to_string(),
                    });
                    return Ok(offset);
                }
            }
        }
        Ok(offset)
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
                    self.messages.insert(message.id, message);
                }
                Op::Ack(id) => {
                    self.messages.remove(&id);
                }
            }
        }
        self.records += 1;
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
        "truncated torn tail of the last journal segment"
    );
    Ok(torn.dropped)
}
