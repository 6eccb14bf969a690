//! The benchmark's message body: `<producer>:<seq>:<send time ns>:` padded with dots to
//! the requested size. The stamp is all a consumer needs to account for a message
//! (whose it is, which one, when it left), so nothing depends on broker-specific
//! headers surviving the trip. Pure: no I/O; the clock is read by the caller.

use bytes::{BufMut, Bytes, BytesMut};
use std::time::{SystemTime, UNIX_EPOCH};

/// Byte that pads a body after its stamp.
const PADDING: u8 = b'.';
/// Bytes a [`BodyWriter`] allocates at a time; many bodies share one allocation.
const ARENA_BYTES: usize = 256 * 1024;

/// Nanoseconds since the Unix epoch (CLOCK_REALTIME). Every producer and consumer reads
/// the same clock, and a message stamped before this run started is recognisably stale.
pub fn wall_clock_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// What a body says about its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Index of the producer that sent it (0-based).
    pub producer: u32,
    /// Its position in that producer's sequence (0-based, no gaps).
    pub seq: u64,
    /// When it was sent, by [`wall_clock_ns`].
    pub sent_ns: u64,
}

/// Appends the body of `stamp` to `out`: the stamp, then padding up to `size` bytes. A
/// `size` smaller than the stamp yields the stamp alone.
pub fn encode_body(stamp: Stamp, size: usize, out: &mut BytesMut) {
    let start = out.len();
    put_decimal(out, u64::from(stamp.producer));
    out.put_u8(b':');
    put_decimal(out, stamp.seq);
    out.put_u8(b':');
    put_decimal(out, stamp.sent_ns);
    out.put_u8(b':');
    let written = out.len() - start;
    if written < size {
        out.resize(start + size, PADDING);
    }
}

/// Reads the stamp at the start of a body; `None` for a body this tool did not write.
pub fn parse_body(body: &[u8]) -> Option<Stamp> {
    let mut fields = body.splitn(4, |&b| b == b':');
    let producer = u32::try_from(parse_decimal(fields.next()?)?).ok()?;
    let seq = parse_decimal(fields.next()?)?;
    let sent_ns = parse_decimal(fields.next()?)?;
    // The third field must be closed by a ':' for the stamp to be complete.
    fields.next()?;
    Some(Stamp { producer, seq, sent_ns })
}

/// Builds bodies of one size out of a shared arena, so a producer allocates once per
/// few hundred messages rather than once per message.
pub struct BodyWriter {
    size: usize,
    arena: BytesMut,
}

impl BodyWriter {
    pub fn new(size: usize) -> BodyWriter {
        BodyWriter { size, arena: BytesMut::new() }
    }

    /// The body of `stamp`, ready to send.
    pub fn body(&mut self, stamp: Stamp) -> Bytes {
        // 63 bytes cover the longest stamp (three u64s and their colons).
        let needed = self.size.max(63);
        if self.arena.capacity() < needed {
            self.arena.reserve(needed.max(ARENA_BYTES));
        }
        encode_body(stamp, self.size, &mut self.arena);
        self.arena.split().freeze()
    }
}

fn put_decimal(out: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[at..]);
}

fn parse_decimal(field: &[u8]) -> Option<u64> {
    if field.is_empty() || field.len() > 20 {
        return None;
    }
    field.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn encoded(stamp: Stamp, size: usize) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode_body(stamp, size, &mut out);
        out.to_vec()
    }

    #[test]
    fn given_stamp_when_encoded_should_pad_to_size_with_dots() {
        let body = encoded(Stamp { producer: 3, seq: 42, sent_ns: 1_700_000_000_123_456_789 }, 40);
        assert_eq!(body, b"3:42:1700000000123456789:...............".to_vec());
    }

    #[test]
    fn given_size_smaller_than_stamp_should_keep_whole_stamp() {
        let body = encoded(Stamp { producer: 0, seq: 7, sent_ns: 99 }, 1);
        assert_eq!(body, b"0:7:99:".to_vec());
    }

    #[rstest]
    #[case(Stamp { producer: 0, seq: 0, sent_ns: 0 }, 0)]
    #[case(Stamp { producer: 17, seq: 123_456, sent_ns: 1_700_000_000_000_000_000 }, 1024)]
    #[case(Stamp { producer: u32::MAX, seq: u64::MAX, sent_ns: u64::MAX }, 70)]
    fn given_any_stamp_when_encoded_then_parsed_should_round_trip(#[case] stamp: Stamp, #[case] size: usize) {
        let body = encoded(stamp, size);
        assert_eq!(body.len(), size.max(body.len()));
        assert_eq!(parse_body(&body), Some(stamp));
    }

    #[rstest]
    #[case(b"")]
    #[case(b"hello, duomq")]
    #[case(b"1:2:3")]
    #[case(b"1:2::")]
    #[case(b"x:2:3:")]
    #[case(b"1:-2:3:")]
    #[case(b"4294967296:1:1:")]
    #[case(b"1:99999999999999999999:1:")]
    fn given_foreign_body_when_parsed_should_be_none(#[case] body: &[u8]) {
        assert_eq!(parse_body(body), None);
    }

    #[test]
    fn given_writer_when_many_bodies_built_should_each_carry_its_own_stamp() {
        let mut writer = BodyWriter::new(100);
        let bodies: Vec<Bytes> =
            (0..5000).map(|seq| writer.body(Stamp { producer: 1, seq, sent_ns: seq * 10 })).collect();
        for (seq, body) in (0u64..).zip(&bodies) {
            assert_eq!(body.len(), 100);
            assert_eq!(parse_body(body), Some(Stamp { producer: 1, seq, sent_ns: seq * 10 }));
        }
    }
}
