//! Journal records: framing, checksums and the encoding of ops.
//!
//! A record is `[u32 LE payload length][u32 LE crc32c of payload][payload]`; the payload is
//! `[u32 op count]` followed by the ops, each a kind byte and its fields, with strings and
//! bytes length-prefixed (u32 LE). Besides adds and acks, a record may carry the window of
//! remembered header values (duplicate-detection ids) as of where it stands, so that the
//! window outlives the segments whose adds it was built from.
//!
//! Two records carry no ops at all. A *sync mark* opens every batch the writer writes and
//! holds its own byte offset: the writer only starts a batch once the one before it was
//! synced, so a mark at offset `m` proves that every byte before `m` was durable (see
//! `recovery`). A *padding* record is what `journal salvage` writes over damaged bytes so
//! that the valid records after them keep their offsets.
//!
//! Pure byte work: no I/O, and no opinion on whether a bad frame is a torn tail or
//! corruption (recovery decides that from where it sits and what follows it).

use bytes::Bytes;

use super::{MessageId, Op, StoredMessage};

/// Bytes in front of every payload: length and checksum.
pub(super) const FRAME_HEADER_LEN: usize = 8;

/// Largest payload one record may carry. Appends above it are refused, and a length field
/// above it is never trusted while reading, so a damaged length cannot make recovery
/// allocate or skip gigabytes.
pub const MAX_RECORD_PAYLOAD: usize = 64 * 1024 * 1024;

const KIND_ADD: u8 = 1;
const KIND_ACK: u8 = 2;
const KIND_REMEMBERED: u8 = 3;
const KIND_SYNC_MARK: u8 = 4;
const KIND_PADDING: u8 = 5;

const COUNT_LEN: usize = 4;
const ID_LEN: usize = 8;
const LEN_PREFIX: usize = 4;
const ACK_LEN: usize = 1 + ID_LEN;
/// Payload of a sync mark: op count, kind, offset.
const MARK_PAYLOAD_LEN: usize = COUNT_LEN + 1 + ID_LEN;

/// Bytes of a whole sync-mark record, the price of one per batch.
pub(super) const MARK_FRAME_LEN: usize = FRAME_HEADER_LEN + MARK_PAYLOAD_LEN;

/// The shortest record [`encode_padding_frame`] can write: a frame holding no op.
pub(super) const MIN_PADDING_LEN: usize = FRAME_HEADER_LEN + COUNT_LEN;

/// Size of the payload [`encode_frame`] writes for `ops`, without the frame header.
pub(super) fn payload_len(ops: &[Op]) -> usize {
    COUNT_LEN + ops.iter().map(op_len).sum::<usize>()
}

fn op_len(op: &Op) -> usize {
    match op {
        Op::Add(message) => {
            let headers: usize = message
                .headers
                .iter()
                .map(|(name, value)| 2 * LEN_PREFIX + name.len() + value.len())
                .sum();
            1 + ID_LEN
                + LEN_PREFIX
                + message.destination.len()
                + LEN_PREFIX
                + headers
                + LEN_PREFIX
                + message.body.len()
        }
        Op::Ack(_) => ACK_LEN,
    }
}

/// Appends one framed record holding the remembered window `values` (oldest first) to
/// `out`, keeping the newest that fit in `budget` payload bytes (at most
/// [`MAX_RECORD_PAYLOAD`]). Returns how many it kept.
pub(super) fn encode_remembered_frame<'a>(
    values: impl DoubleEndedIterator<Item = &'a str>,
    budget: usize,
    out: &mut Vec<u8>,
) -> usize {
    let budget = budget.min(MAX_RECORD_PAYLOAD);
    let mut used = COUNT_LEN + 1 + COUNT_LEN;
    let newest: Vec<&str> = values
        .rev()
        .take_while(|value| {
            used += LEN_PREFIX + value.len();
            used <= budget
        })
        .collect();
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    put_u32(out, 1);
    out.push(KIND_REMEMBERED);
    put_u32(out, newest.len());
    for value in newest.iter().rev() {
        put_bytes(out, value.as_bytes());
    }
    seal_frame(out, start);
    newest.len()
}

/// Appends the sync mark of a batch that starts at byte `at` of its segment to `out`.
pub(super) fn encode_mark_frame(at: u64, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    put_u32(out, 1);
    out.push(KIND_SYNC_MARK);
    out.extend_from_slice(&at.to_le_bytes());
    seal_frame(out, start);
}

/// Appends one record of exactly `len` bytes (at least [`MIN_PADDING_LEN`], at most
/// [`MAX_RECORD_PAYLOAD`] plus its header) that recovery reads and ignores.
pub(super) fn encode_padding_frame(len: usize, out: &mut Vec<u8>) {
    debug_assert!((MIN_PADDING_LEN..=FRAME_HEADER_LEN + MAX_RECORD_PAYLOAD).contains(&len));
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    if len == MIN_PADDING_LEN {
        put_u32(out, 0);
    } else {
        put_u32(out, 1);
        out.push(KIND_PADDING);
        out.resize(start + len, 0);
    }
    seal_frame(out, start);
}

/// The first sync mark at or after `from` in `data`: a checksummed record that decodes to
/// a mark holding its own offset. Bytes that merely look like one (inside a message body,
/// say) would have to get the checksum, the layout and their own position right.
pub(super) fn find_mark(data: &[u8], from: usize) -> Option<usize> {
    find_mark_from(data, from, 0).map(|at| at as usize)
}

/// [`find_mark`] in `data` that starts at byte `base` of its file: the mark's file offset.
pub(super) fn find_mark_from(data: &[u8], from: usize, base: u64) -> Option<u64> {
    let len_field = (MARK_PAYLOAD_LEN as u32).to_le_bytes();
    let last = data.len().checked_sub(MARK_FRAME_LEN)?;
    (from..=last).find(|&at| {
        let frame = &data[at..at + MARK_FRAME_LEN];
        frame[..4] == len_field
            && frame[FRAME_HEADER_LEN..FRAME_HEADER_LEN + COUNT_LEN + 1] == [1, 0, 0, 0, KIND_SYNC_MARK]
            && frame[FRAME_HEADER_LEN + COUNT_LEN + 1..] == (base + at as u64).to_le_bytes()
            && matches!(read_frame(data, at), FrameRead::Valid { .. })
    })
    .map(|at| base + at as u64)
}

/// Appends one framed record holding `ops` to `out`.
///
/// The caller must have checked `payload_len(ops) <= MAX_RECORD_PAYLOAD`; that bound is
/// what makes every length and count below fit in a u32.
pub(super) fn encode_frame(ops: &[Op], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    put_u32(out, ops.len());
    for op in ops {
        match op {
            Op::Add(message) => {
                out.push(KIND_ADD);
                out.extend_from_slice(&message.id.0.to_le_bytes());
                put_bytes(out, message.destination.as_bytes());
                put_u32(out, message.headers.len());
                for (name, value) in &message.headers {
                    put_bytes(out, name.as_bytes());
                    put_bytes(out, value.as_bytes());
                }
                put_bytes(out, &message.body);
            }
            Op::Ack(id) => {
                out.push(KIND_ACK);
                out.extend_from_slice(&id.0.to_le_bytes());
            }
        }
    }
    seal_frame(out, start);
}

/// Fills in length and checksum of the frame that starts at `start` and ends `out`.
fn seal_frame(out: &mut [u8], start: usize) {
    let payload = &out[start + FRAME_HEADER_LEN..];
    let len = payload.len() as u32;
    let crc = crc32c::crc32c(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + FRAME_HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
}

fn put_u32(out: &mut Vec<u8>, value: usize) {
    debug_assert!(
        value <= u32::MAX as usize,
        "caller checked MAX_RECORD_PAYLOAD"
    );
    out.extend_from_slice(&(value as u32).to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u32(out, bytes.len());
    out.extend_from_slice(bytes);
}

/// The outcome of reading one frame at some offset of a segment.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum FrameRead<'a> {
    /// A whole record whose checksum matches; the next one starts at `end`.
    Valid { payload: &'a [u8], end: usize },
    /// Not a whole, checksummed record.
    Invalid {
        problem: FrameProblem,
        /// Where the frame would end, if its length is plausible and all its bytes are
        /// present (only the checksum is wrong). Recovery looks for a valid record there
        /// to tell mid-file corruption from a torn tail.
        complete_end: Option<usize>,
    },
}

/// Why the bytes at an offset are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum FrameProblem {
    /// Fewer than the 8 header bytes remain.
    #[error("record header is cut short ({available} of 8 bytes present)")]
    ShortHeader { available: usize },
    /// A zero length: preallocated or zeroed space, never a written record.
    #[error("record length is zero")]
    ZeroLength,
    /// A length no writer could have produced.
    #[error("record length {len} exceeds the maximum of {MAX_RECORD_PAYLOAD}")]
    TooLong { len: usize },
    /// The payload runs past the end of the data.
    #[error("record of {len} bytes is cut short ({available} bytes present)")]
    ShortPayload { len: usize, available: usize },
    /// All bytes present but they do not match the stored checksum.
    #[error("record checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    ChecksumMismatch { stored: u32, computed: u32 },
}

/// Reads the frame starting at `offset` of `data`. The caller handles `offset == data.len()`
/// (a clean end) itself.
pub(super) fn read_frame(data: &[u8], offset: usize) -> FrameRead<'_> {
    let rest = data.get(offset..).unwrap_or_default();
    let invalid = |problem| FrameRead::Invalid {
        problem,
        complete_end: None,
    };
    let Some((header, body)) = rest.split_first_chunk::<FRAME_HEADER_LEN>() else {
        return invalid(FrameProblem::ShortHeader {
            available: rest.len(),
        });
    };
    let [l0, l1, l2, l3, c0, c1, c2, c3] = *header;
    let len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
    let stored = u32::from_le_bytes([c0, c1, c2, c3]);
    if len == 0 {
        return invalid(FrameProblem::ZeroLength);
    }
    if len > MAX_RECORD_PAYLOAD {
        return invalid(FrameProblem::TooLong { len });
    }
    let Some(payload) = body.get(..len) else {
        return invalid(FrameProblem::ShortPayload {
            len,
            available: body.len(),
        });
    };
    let end = offset + FRAME_HEADER_LEN + len;
    let computed = crc32c::crc32c(payload);
    if computed != stored {
        return FrameRead::Invalid {
            problem: FrameProblem::ChecksumMismatch { stored, computed },
            complete_end: Some(end),
        };
    }
    FrameRead::Valid { payload, end }
}

/// Why a payload whose checksum matched still does not decode. Since the checksum held,
/// this is never a torn write: it means a bug or a foreign file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum DecodeError {
    /// The payload ends inside a field.
    #[error("payload ends inside the {field}")]
    Truncated { field: &'static str },
    /// An op kind this version does not know.
    #[error("unknown operation kind {kind}")]
    UnknownKind { kind: u8 },
    /// A string field is not UTF-8.
    #[error("the {field} is not valid UTF-8")]
    InvalidUtf8 { field: &'static str },
    /// Bytes left over after the last op.
    #[error("{count} bytes follow the last operation")]
    TrailingBytes { count: usize },
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct Decoded {
    pub(super) ops: Vec<Op>,
    /// The remembered window (oldest first) the record carries, if it is such a record.
    pub(super) remembered: Option<Vec<String>>,
    /// The offset a sync mark holds, if the record is one.
    pub(super) mark: Option<u64>,
}

/// Decodes a checksummed payload into its ops. Bodies are copied out so recovered
/// messages do not pin whole segment buffers in memory.
pub(super) fn decode_payload(payload: &[u8]) -> Result<Decoded, DecodeError> {
    let mut reader = Reader { rest: payload };
    let count = reader.u32("operation count")? as usize;
    // Counts come from the file: cap preallocation by what the bytes could hold.
    let mut ops = Vec::with_capacity(count.min(reader.rest.len() / ACK_LEN));
    let mut remembered = None;
    let mut mark = None;
    for _ in 0..count {
        let kind = reader.u8("operation kind")?;
        let op = match kind {
            KIND_SYNC_MARK => {
                mark = Some(reader.u64("sync mark offset")?);
                continue;
            }
            KIND_PADDING => {
                reader.rest = &[];
                continue;
            }
            KIND_REMEMBERED => {
                let n = reader.u32("remembered count")? as usize;
                let mut values = Vec::with_capacity(n.min(reader.rest.len() / LEN_PREFIX));
                for _ in 0..n {
                    values.push(reader.string("remembered value")?);
                }
                remembered = Some(values);
                continue;
            }
            KIND_ADD => {
                let id = MessageId(reader.u64("message id")?);
                let destination = reader.string("destination")?;
                let header_count = reader.u32("header count")? as usize;
                let mut headers =
                    Vec::with_capacity(header_count.min(reader.rest.len() / (2 * LEN_PREFIX)));
                for _ in 0..header_count {
                    let name = reader.string("header name")?;
                    let value = reader.string("header value")?;
                    headers.push((name, value));
                }
                let body = Bytes::copy_from_slice(reader.bytes("body")?);
                Op::Add(StoredMessage {
                    id,
                    destination,
                    headers,
                    body,
                })
            }
            KIND_ACK => Op::Ack(MessageId(reader.u64("acked message id")?)),
            kind => return Err(DecodeError::UnknownKind { kind }),
        };
        ops.push(op);
    }
    if !reader.rest.is_empty() {
        return Err(DecodeError::TrailingBytes {
            count: reader.rest.len(),
        });
    }
    Ok(Decoded { ops, remembered, mark })
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let (head, rest) = self
            .rest
            .split_first_chunk::<N>()
            .ok_or(DecodeError::Truncated { field })?;
        self.rest = rest;
        Ok(*head)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take::<1>(field)?[0])
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take(field)?))
    }

    fn bytes(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = self.u32(field)? as usize;
        if len > self.rest.len() {
            return Err(DecodeError::Truncated { field });
        }
        let (bytes, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(bytes)
    }

    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let bytes = self.bytes(field)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| DecodeError::InvalidUtf8 { field })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rstest::rstest;

    fn op_strategy() -> impl Strategy<Value = Op> {
        let add = (
            any::<u64>(),
            ".{0,20}",
            proptest::collection::vec((".{0,10}", ".{0,10}"), 0..5),
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(id, destination, headers, body)| {
                Op::Add(StoredMessage {
                    id: MessageId(id),
                    destination,
                    headers,
                    body: Bytes::from(body),
                })
            });
        let ack = any::<u64>().prop_map(|id| Op::Ack(MessageId(id)));
        prop_oneof![add, ack]
    }

    fn frame_of(ops: &[Op]) -> Vec<u8> {
        let mut frame = Vec::new();
        encode_frame(ops, &mut frame);
        frame
    }

    proptest! {
        #[test]
        fn given_any_ops_when_encoded_and_read_back_should_round_trip(
            ops in proptest::collection::vec(op_strategy(), 0..8)
        ) {
            let frame = frame_of(&ops);
            prop_assert_eq!(frame.len(), FRAME_HEADER_LEN + payload_len(&ops));
            let FrameRead::Valid { payload, end } = read_frame(&frame, 0) else {
                return Err(TestCaseError::fail("frame did not read back as valid"));
            };
            prop_assert_eq!(end, frame.len());
            prop_assert_eq!(decode_payload(payload), Ok(Decoded { ops, remembered: None, mark: None }));
        }

        #[test]
        fn given_remembered_values_when_encoded_should_keep_the_newest_that_fit_in_order(
            values in proptest::collection::vec(".{0,12}", 0..50),
            budget in 0usize..400,
        ) {
            let mut frame = Vec::new();
            let kept = encode_remembered_frame(values.iter().map(String::as_str), budget, &mut frame);
            let FrameRead::Valid { payload, .. } = read_frame(&frame, 0) else {
                return Err(TestCaseError::fail("frame did not read back as valid"));
            };
            let decoded = decode_payload(payload).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(decoded.remembered, Some(values[values.len() - kept..].to_vec()));
            prop_assert!(kept == values.len() || payload.len() <= budget.max(9));
        }

        #[test]
        fn given_any_single_byte_flip_when_read_should_not_be_valid(
            ops in proptest::collection::vec(op_strategy(), 1..4),
            position in any::<proptest::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let mut frame = frame_of(&ops);
            let at = position.index(frame.len());
            frame[at] ^= flip;
            let read = read_frame(&frame, 0);
            prop_assert!(!matches!(read, FrameRead::Valid { .. }), "damaged frame read as valid");
        }

        #[test]
        fn given_arbitrary_bytes_when_decoded_should_not_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..200)
        ) {
            let _ = decode_payload(&bytes);
            let _ = read_frame(&bytes, 0);
        }
    }

    #[rstest]
    #[case::empty(&[], FrameProblem::ShortHeader { available: 0 })]
    #[case::short_header(&[1, 0, 0], FrameProblem::ShortHeader { available: 3 })]
    #[case::zero_length(&[0; 12], FrameProblem::ZeroLength)]
    #[case::huge_length(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0], FrameProblem::TooLong { len: u32::MAX as usize })]
    #[case::short_payload(&[10, 0, 0, 0, 0, 0, 0, 0, 1, 2], FrameProblem::ShortPayload { len: 10, available: 2 })]
    fn given_bad_frame_bytes_when_read_should_name_the_problem(
        #[case] data: &[u8],
        #[case] expected: FrameProblem,
    ) {
        assert_eq!(
            read_frame(data, 0),
            FrameRead::Invalid {
                problem: expected,
                complete_end: None
            }
        );
    }

    #[test]
    fn given_complete_frame_with_bad_checksum_when_read_should_report_where_it_ends() {
        let mut frame = frame_of(&[Op::Ack(MessageId(7))]);
        let last = frame.len() - 1;
        frame[last] ^= 1;
        let read = read_frame(&frame, 0);
        assert!(matches!(
            read,
            FrameRead::Invalid {
                problem: FrameProblem::ChecksumMismatch { .. },
                complete_end: Some(end),
            } if end == frame.len()
        ));
    }

    #[rstest]
    #[case::at_header_end(32)]
    #[case::far(70_000_000)]
    fn given_sync_mark_when_encoded_should_decode_to_its_offset_and_be_found_only_there(#[case] at: u64) {
        let mut frame = Vec::new();
        encode_mark_frame(at, &mut frame);
        assert_eq!(frame.len(), MARK_FRAME_LEN);
        let FrameRead::Valid { payload, .. } = read_frame(&frame, 0) else { panic!("mark reads back") };
        assert_eq!(decode_payload(payload).map(|d| (d.ops.len(), d.mark)), Ok((0, Some(at))));

        let mut data = vec![7u8; 100];
        let placed = data.len();
        encode_mark_frame(placed as u64, &mut data);
        data.extend_from_slice(&[9; 10]);
        assert_eq!(find_mark(&data, 0), Some(placed));
        assert_eq!(find_mark(&data, placed + 1), None);
        // The same bytes one byte later claim the wrong offset.
        data.insert(0, 0);
        assert_eq!(find_mark(&data, 0), None);
    }

    #[rstest]
    #[case::empty_record(MIN_PADDING_LEN)]
    #[case::one_more(MIN_PADDING_LEN + 1)]
    #[case::page(4096)]
    fn given_padding_of_any_length_should_read_as_one_record_without_ops(#[case] len: usize) {
        let mut frame = Vec::new();
        encode_padding_frame(len, &mut frame);
        assert_eq!(frame.len(), len);
        let FrameRead::Valid { payload, end } = read_frame(&frame, 0) else { panic!("padding reads back") };
        assert_eq!(end, len);
        assert_eq!(decode_payload(payload), Ok(Decoded::default()));
    }

    #[rstest]
    #[case::unknown_kind(&[1, 0, 0, 0, 9], DecodeError::UnknownKind { kind: 9 })]
    #[case::truncated_id(&[1, 0, 0, 0, KIND_ACK, 1, 2], DecodeError::Truncated { field: "acked message id" })]
    #[case::trailing(&[0, 0, 0, 0, 5], DecodeError::TrailingBytes { count: 1 })]
    #[case::huge_count(&[0xff, 0xff, 0xff, 0xff], DecodeError::Truncated { field: "operation kind" })]
    fn given_bad_payload_when_decoded_should_name_the_problem(
        #[case] payload: &[u8],
        #[case] expected: DecodeError,
    ) {
        assert_eq!(decode_payload(payload), Err(expected));
    }
}
