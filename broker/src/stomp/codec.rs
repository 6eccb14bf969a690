//! The STOMP wire codec: bytes in, frames out, and back. It does no I/O and never
//! panics on input; every way a peer can get the format wrong is a [`CodecError`].
//!
//! Limits are enforced while bytes arrive, so an oversized frame is refused before it
//! is buffered whole.

use super::frame::{Command, Frame, Inbound, Version};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

/// Bounds on what one inbound frame may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of the command line plus all header lines.
    pub max_header_bytes: usize,
    /// Number of header lines.
    pub max_headers: usize,
    /// Bytes of the body.
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_header_bytes: 64 * 1024, max_headers: 128, max_body_bytes: 16 * 1024 * 1024 }
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CodecError {
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    #[error("frame headers exceed {limit} bytes")]
    HeadersTooLarge { limit: usize },
    #[error("frame has more than {limit} headers")]
    TooManyHeaders { limit: usize },
    #[error("frame body of {size} bytes exceeds the limit of {limit} bytes")]
    BodyTooLarge { size: usize, limit: usize },
    #[error("header line {line:?} has no ':'")]
    MissingColon { line: String },
    #[error("header is not valid UTF-8")]
    InvalidUtf8,
    #[error("invalid escape sequence \\{0} in header")]
    InvalidEscape(char),
    #[error("invalid content-length {0:?}")]
    InvalidContentLength(String),
    #[error("frame body is not terminated by a NUL octet")]
    MissingNul,
}

/// Decoder and encoder state for one connection.
#[derive(Debug)]
pub struct StompCodec {
    limits: Limits,
    version: Version,
    /// Offset up to which the buffer was already searched for the end of the headers,
    /// so a frame arriving in many reads is not rescanned from the start each time.
    scanned: usize,
    /// Parsed head of a frame whose body has not fully arrived.
    pending: Option<PendingFrame>,
}

#[derive(Debug)]
struct PendingFrame {
    frame: Frame,
    content_length: Option<usize>,
}

impl StompCodec {
    pub fn new(limits: Limits) -> StompCodec {
        StompCodec { limits, version: Version::V1_2, scanned: 0, pending: None }
    }

    /// Sets the negotiated version; it decides which escapes are legal.
    pub fn set_version(&mut self, version: Version) {
        self.version = version;
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// Decodes the next frame or heart-beat from `buf`, consuming its bytes.
    /// `Ok(None)` means more bytes are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Inbound>, CodecError> {
        if self.pending.is_none() {
            // Heart-beats and the optional EOLs after a frame's NUL.
            if buf.first() == Some(&b'\n') {
                buf.advance(1);
                self.scanned = 0;
                return Ok(Some(Inbound::Heartbeat));
            }
            if buf.len() >= 2 && buf[0] == b'\r' && buf[1] == b'\n' {
                buf.advance(2);
                self.scanned = 0;
                return Ok(Some(Inbound::Heartbeat));
            }
            if buf.len() == 1 && buf[0] == b'\r' {
                return Ok(None);
            }
            let Some(head_len) = self.find_head_end(buf)? else {
                return Ok(None);
            };
            let head = buf.split_to(head_len);
            self.scanned = 0;
            self.pending = Some(self.parse_head(&head)?);
        }
        self.decode_body(buf)
    }

    /// Finds the blank line ending the headers; returns the length of the head
    /// including that blank line.
    fn find_head_end(&mut self, buf: &BytesMut) -> Result<Option<usize>, CodecError> {
        let start = self.scanned.saturating_sub(3);
        let window = &buf[start..];
        let mut i = 0;
        while let Some(pos) = memchr(b'\n', &window[i..]) {
            let nl = start + i + pos;
            // "\n\n" or "\n\r\n" ends the head.
            if buf.get(nl + 1) == Some(&b'\n') {
                return Ok(Some(nl + 2));
            }
            if buf.get(nl + 1) == Some(&b'\r') && buf.get(nl + 2) == Some(&b'\n') {
                return Ok(Some(nl + 3));
            }
            i += pos + 1;
        }
        if buf.len() > self.limits.max_header_bytes {
            return Err(CodecError::HeadersTooLarge { limit: self.limits.max_header_bytes });
        }
        self.scanned = buf.len();
        Ok(None)
    }

    fn parse_head(&self, head: &[u8]) -> Result<PendingFrame, CodecError> {
        if head.len() > self.limits.max_header_bytes + 3 {
            return Err(CodecError::HeadersTooLarge { limit: self.limits.max_header_bytes });
        }
        let mut lines = head.split(|&b| b == b'\n').map(strip_cr);
        let command_line = lines.next().unwrap_or_default();
        let command = Command::parse(command_line).ok_or_else(|| {
            CodecError::UnknownCommand(String::from_utf8_lossy(command_line).into_owned())
        })?;
        let unescape = command.escapes_headers() && self.version >= Version::V1_1;
        let mut headers = Vec::new();
        for line in lines {
            if line.is_empty() {
                continue;
            }
            if headers.len() == self.limits.max_headers {
                return Err(CodecError::TooManyHeaders { limit: self.limits.max_headers });
            }
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                return Err(CodecError::MissingColon {
                    line: String::from_utf8_lossy(line).into_owned(),
                });
            };
            let (name, value) = (&line[..colon], &line[colon + 1..]);
            let (name, value) = if unescape {
                (self.unescape(name)?, self.unescape(value)?)
            } else {
                (utf8(name)?, utf8(value)?)
            };
            headers.push((name, value));
        }
        let frame = Frame { command, headers, body: Bytes::new() };
        let content_length = match frame.get("content-length") {
            None => None,
            Some(v) => {
                let n: usize = v
                    .trim()
                    .parse()
                    .map_err(|_| CodecError::InvalidContentLength(v.to_string()))?;
                if n > self.limits.max_body_bytes {
                    return Err(CodecError::BodyTooLarge { size: n, limit: self.limits.max_body_bytes });
                }
                Some(n)
            }
        };
        Ok(PendingFrame { frame, content_length })
    }

    fn decode_body(&mut self, buf: &mut BytesMut) -> Result<Option<Inbound>, CodecError> {
        let Some(pending) = self.pending.as_ref() else {
            return Ok(None);
        };
        let body_len = match pending.content_length {
            Some(n) => {
                if buf.len() < n + 1 {
                    return Ok(None);
                }
                if buf[n] != 0 {
                    return Err(CodecError::MissingNul);
                }
                n
            }
            None => match memchr(0, &buf[..buf.len().min(self.limits.max_body_bytes + 1)]) {
                Some(n) => n,
                None if buf.len() > self.limits.max_body_bytes => {
                    return Err(CodecError::BodyTooLarge {
                        size: buf.len(),
                        limit: self.limits.max_body_bytes,
                    });
                }
                None => return Ok(None),
            },
        };
        let body = buf.split_to(body_len).freeze();
        buf.advance(1);
        let Some(PendingFrame { mut frame, .. }) = self.pending.take() else {
            return Ok(None);
        };
        frame.body = body;
        Ok(Some(Inbound::Frame(frame)))
    }

    fn unescape(&self, raw: &[u8]) -> Result<String, CodecError> {
        if !raw.contains(&b'\\') {
            return utf8(raw);
        }
        let mut out = Vec::with_capacity(raw.len());
        let mut it = raw.iter();
        while let Some(&b) = it.next() {
            if b != b'\\' {
                out.push(b);
                continue;
            }
            match it.next() {
                Some(b'n') => out.push(b'\n'),
                Some(b'c') => out.push(b':'),
                Some(b'\\') => out.push(b'\\'),
                Some(b'r') if self.version >= Version::V1_2 => out.push(b'\r'),
                Some(&other) => return Err(CodecError::InvalidEscape(other as char)),
                None => return Err(CodecError::InvalidEscape(' ')),
            }
        }
        String::from_utf8(out).map_err(|_| CodecError::InvalidUtf8)
    }

    /// Appends the wire form of `frame` to `out`. A `content-length` header is added
    /// when the frame has a body and does not carry one.
    pub fn encode(&self, frame: &Frame, out: &mut BytesMut) {
        let headers = frame.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        self.encode_parts(frame.command, headers, &frame.body, out);
    }

    /// Encodes a frame from borrowed parts, so hot paths (MESSAGE delivery) build no
    /// intermediate [`Frame`].
    pub fn encode_parts<'a>(
        &self,
        command: Command,
        headers: impl Iterator<Item = (&'a str, &'a str)>,
        body: &[u8],
        out: &mut BytesMut,
    ) {
        let escape = command.escapes_headers() && self.version >= Version::V1_1;
        out.reserve(command.as_str().len() + 256 + body.len());
        out.put_slice(command.as_str().as_bytes());
        out.put_u8(b'\n');
        let mut has_length = false;
        for (name, value) in headers {
            has_length |= name == "content-length";
            put_header_part(out, name, escape, self.version);
            out.put_u8(b':');
            put_header_part(out, value, escape, self.version);
            out.put_u8(b'\n');
        }
        if !has_length && !body.is_empty() {
            out.put_slice(b"content-length:");
            let digits = itoa_buf(body.len());
            out.put_slice(digits.as_bytes());
            out.put_u8(b'\n');
        }
        out.put_u8(b'\n');
        out.put_slice(body);
        out.put_u8(0);
    }
}

fn put_header_part(out: &mut BytesMut, s: &str, escape: bool, version: Version) {
    if !escape || !s.bytes().any(|b| matches!(b, b'\\' | b'\n' | b':' | b'\r')) {
        out.put_slice(s.as_bytes());
        return;
    }
    for b in s.bytes() {
        match b {
            b'\\' => out.put_slice(b"\\\\"),
            b'\n' => out.put_slice(b"\\n"),
            b':' => out.put_slice(b"\\c"),
            b'\r' if version >= Version::V1_2 => out.put_slice(b"\\r"),
            other => out.put_u8(other),
        }
    }
}

/// Decimal digits of `n` without allocating.
struct Digits {
    buf: [u8; 20],
    start: usize,
}

impl Digits {
    fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

fn itoa_buf(mut n: usize) -> Digits {
    let mut d = Digits { buf: [0; 20], start: 20 };
    loop {
        d.start -= 1;
        d.buf[d.start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return d;
        }
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn utf8(raw: &[u8]) -> Result<String, CodecError> {
    std::str::from_utf8(raw).map(str::to_owned).map_err(|_| CodecError::InvalidUtf8)
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rstest::rstest;

    fn decode_all(codec: &mut StompCodec, bytes: &[u8]) -> Result<Vec<Inbound>, CodecError> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(item) = codec.decode(&mut buf)? {
            out.push(item);
        }
        Ok(out)
    }

    fn one_frame(bytes: &[u8]) -> Result<Frame, CodecError> {
        let mut codec = StompCodec::new(Limits::default());
        let items = decode_all(&mut codec, bytes)?;
        match items.into_iter().next() {
            Some(Inbound::Frame(f)) => Ok(f),
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    #[test]
    fn given_send_frame_when_decoded_should_yield_headers_and_body() {
        let f = one_frame(b"SEND\ndestination:/queue/a\nreceipt:7\n\nhello\0").unwrap();
        assert_eq!(f.command, Command::Send);
        assert_eq!(f.get("destination"), Some("/queue/a"));
        assert_eq!(f.get("receipt"), Some("7"));
        assert_eq!(&f.body[..], b"hello");
    }

    #[test]
    fn given_repeated_header_when_read_should_keep_first() {
        let f = one_frame(b"SEND\nfoo:1\nfoo:2\n\n\0").unwrap();
        assert_eq!(f.get("foo"), Some("1"));
    }

    #[test]
    fn given_content_length_when_body_has_nul_should_keep_binary_body() {
        let f = one_frame(b"SEND\ncontent-length:5\n\na\0b\0c\0").unwrap();
        assert_eq!(&f.body[..], b"a\0b\0c");
    }

    #[test]
    fn given_crlf_line_endings_when_decoded_should_strip_cr() {
        let f = one_frame(b"SEND\r\ndestination:/queue/a\r\n\r\nx\0").unwrap();
        assert_eq!(f.get("destination"), Some("/queue/a"));
        assert_eq!(&f.body[..], b"x");
    }

    #[test]
    fn given_eols_between_frames_when_decoded_should_yield_heartbeats() {
        let mut codec = StompCodec::new(Limits::default());
        let items = decode_all(&mut codec, b"\n\r\nDISCONNECT\n\n\0\n").unwrap();
        assert_eq!(items.len(), 4);
        assert_eq!(items[0], Inbound::Heartbeat);
        assert!(matches!(items[2], Inbound::Frame(_)));
    }

    #[rstest]
    #[case(b"a\\nb".as_slice(), "a\nb")]
    #[case(b"a\\cb".as_slice(), "a:b")]
    #[case(b"a\\\\b".as_slice(), "a\\b")]
    #[case(b"a\\rb".as_slice(), "a\rb")]
    fn given_escaped_value_when_decoded_should_unescape(#[case] raw: &[u8], #[case] expected: &str) {
        let mut input = b"SEND\nk:".to_vec();
        input.extend_from_slice(raw);
        input.extend_from_slice(b"\n\n\0");
        assert_eq!(one_frame(&input).unwrap().get("k"), Some(expected));
    }

    #[test]
    fn given_undefined_escape_when_decoded_should_fail() {
        assert_eq!(one_frame(b"SEND\nk:a\\tb\n\n\0"), Err(CodecError::InvalidEscape('t')));
    }

    #[test]
    fn given_connect_frame_when_decoded_should_not_unescape() {
        let f = one_frame(b"CONNECT\npasscode:a\\nb\n\n\0").unwrap();
        assert_eq!(f.get("passcode"), Some("a\\nb"));
    }

    #[test]
    fn given_version_1_1_when_cr_escape_should_fail() {
        let mut codec = StompCodec::new(Limits::default());
        codec.set_version(Version::V1_1);
        let r = decode_all(&mut codec, b"SEND\nk:\\r\n\n\0");
        assert_eq!(r, Err(CodecError::InvalidEscape('r')));
    }

    #[rstest]
    #[case(b"FOO\n\n\0".as_slice())]
    #[case(b"SEND\nnocolon\n\n\0".as_slice())]
    #[case(b"SEND\nk:\xff\xfe\n\n\0".as_slice())]
    #[case(b"SEND\ncontent-length:abc\n\n\0".as_slice())]
    #[case(b"SEND\ncontent-length:2\n\nabc\0".as_slice())]
    fn given_malformed_frame_when_decoded_should_fail(#[case] input: &[u8]) {
        assert!(one_frame(input).is_err());
    }

    #[test]
    fn given_oversized_content_length_when_head_arrives_should_fail_before_body() {
        let limits = Limits { max_body_bytes: 10, ..Limits::default() };
        let mut codec = StompCodec::new(limits);
        let r = decode_all(&mut codec, b"SEND\ncontent-length:11\n\n");
        assert_eq!(r, Err(CodecError::BodyTooLarge { size: 11, limit: 10 }));
    }

    #[test]
    fn given_unterminated_body_beyond_limit_should_fail() {
        let limits = Limits { max_body_bytes: 10, ..Limits::default() };
        let mut codec = StompCodec::new(limits);
        let r = decode_all(&mut codec, b"SEND\n\n0123456789ABC");
        assert!(matches!(r, Err(CodecError::BodyTooLarge { .. })));
    }

    #[test]
    fn given_endless_headers_should_fail_at_limit() {
        let limits = Limits { max_header_bytes: 100, ..Limits::default() };
        let mut codec = StompCodec::new(limits);
        let mut input = b"SEND\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 200));
        let r = decode_all(&mut codec, &input);
        assert_eq!(r, Err(CodecError::HeadersTooLarge { limit: 100 }));
    }

    #[test]
    fn given_too_many_headers_should_fail() {
        let limits = Limits { max_headers: 2, ..Limits::default() };
        let mut codec = StompCodec::new(limits);
        let r = decode_all(&mut codec, b"SEND\na:1\nb:2\nc:3\n\n\0");
        assert_eq!(r, Err(CodecError::TooManyHeaders { limit: 2 }));
    }

    #[test]
    fn given_frame_split_into_single_bytes_should_decode_once_complete() {
        let input = b"MESSAGE\nsubscription:0\nmessage-id:1\ncontent-length:3\n\nabc\0";
        let mut codec = StompCodec::new(Limits::default());
        let mut buf = BytesMut::new();
        let mut got = None;
        for (i, b) in input.iter().enumerate() {
            buf.put_u8(*b);
            if let Some(item) = codec.decode(&mut buf).unwrap() {
                assert_eq!(i, input.len() - 1);
                got = Some(item);
            }
        }
        assert!(matches!(got, Some(Inbound::Frame(f)) if &f.body[..] == b"abc"));
    }

    fn arb_header_text() -> impl Strategy<Value = String> {
        proptest::string::string_regex("[a-z:\\\\\\n\\r é]{0,12}").unwrap()
    }

    proptest! {
        #[test]
        fn encode_then_decode_round_trips(
            headers in proptest::collection::vec((arb_header_text(), arb_header_text()), 0..6),
            body in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut frame = Frame::new(Command::Message).with_body(body.clone());
            // Names must be non-empty and distinct from content-length for a fair round trip.
            for (i, (k, v)) in headers.iter().enumerate() {
                frame.headers.push((format!("h{i}{k}"), v.clone()));
            }
            let codec = StompCodec::new(Limits::default());
            let mut buf = BytesMut::new();
            codec.encode(&frame, &mut buf);
            let mut decoder = StompCodec::new(Limits::default());
            let decoded = decoder.decode(&mut buf).unwrap();
            let Some(Inbound::Frame(mut got)) = decoded else { panic!("no frame") };
            if !body.is_empty() {
                let expected = body.len().to_string();
                prop_assert_eq!(got.get("content-length"), Some(expected.as_str()));
                got.remove("content-length");
            }
            prop_assert_eq!(got, frame);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn decoder_never_panics_on_garbage(input in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut codec = StompCodec::new(Limits { max_header_bytes: 128, max_headers: 8, max_body_bytes: 128 });
            let mut buf = BytesMut::from(&input[..]);
            for _ in 0..64 {
                match codec.decode(&mut buf) {
                    Ok(Some(_)) => continue,
                    _ => break,
                }
            }
        }
    }
}
