//! SPDY/3 framing as kubectl's port-forward speaks it (client-go over moby/spdystream):
//! control frames with zlib-compressed name/value header blocks (one compression context
//! per direction, primed with the SPDY/3 dictionary) and data frames.
//!
//! It must not do I/O or keep stream state: it turns bytes into [`Frame`]s and answers into
//! bytes. Flow control is not implemented, as spdystream implements none either (it ignores
//! WINDOW_UPDATE and never sends one).

use std::sync::OnceLock;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use thiserror::Error;

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
/// FLAG_FIN of control and data frames.
const FLAG_FIN: u8 = 0x01;
const HEADER_LEN: usize = 8;

/// RST_STREAM status: the stream is malformed.
pub(crate) const PROTOCOL_ERROR: u32 = 1;

#[derive(Debug, Error)]
pub enum SpdyError {
    #[error("unsupported SPDY version {0}")]
    Version(u16),
    #[error("malformed {0} frame")]
    Malformed(&'static str),
    #[error("failed to decompress a header block")]
    Inflate(#[source] flate2::DecompressError),
    #[error("failed to compress a header block")]
    Deflate(#[source] flate2::CompressError),
}

/// A frame the server reads. Frames it has no use for (SETTINGS, WINDOW_UPDATE) are
/// [`Frame::Ignored`]; their header blocks, if any, still advance the decompressor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    SynStream { stream: u32, fin: bool, headers: Vec<(String, String)> },
    RstStream { stream: u32, status: u32 },
    Ping { id: u32 },
    GoAway,
    Data { stream: u32, fin: bool, data: Bytes },
    Ignored { kind: u16 },
}

/// The SPDY/3 header dictionary (draft 3, section 2.6.10.1), byte for byte as Go's spdy
/// package has it (without the trailing NUL of the C array): 1423 bytes.
fn dictionary() -> &'static [u8] {
    static DICTIONARY: OnceLock<Vec<u8>> = OnceLock::new();
    DICTIONARY.get_or_init(|| {
        const WORDS: &[&str] = &[
            "options", "head", "post", "put", "delete", "trace", "accept", "accept-charset", "accept-encoding",
            "accept-language", "accept-ranges", "age", "allow", "authorization", "cache-control", "connection",
            "content-base", "content-encoding", "content-language", "content-length", "content-location",
            "content-md5", "content-range", "content-type", "date", "etag", "expect", "expires", "from", "host",
            "if-match", "if-modified-since", "if-none-match", "if-range", "if-unmodified-since", "last-modified",
            "location", "max-forwards", "pragma", "proxy-authenticate", "proxy-authorization", "range", "referer",
            "retry-after", "server", "te", "trailer", "transfer-encoding", "upgrade", "user-agent", "vary", "via",
            "warning", "www-authenticate", "method", "get", "status", "200 OK", "version", "HTTP/1.1", "url",
            "public", "set-cookie", "keep-alive", "origin",
        ];
        const TAIL: &str = concat!(
            "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
            "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
            "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
            "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
            "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,",
            "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
            "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
        );
        let mut out = Vec::with_capacity(1423);
        for word in WORDS {
            out.extend_from_slice(&(word.len() as u32).to_be_bytes());
            out.extend_from_slice(word.as_bytes());
        }
        out.extend_from_slice(TAIL.as_bytes());
        out
    })
}

/// Reads frames from a byte stream, keeping the client's header decompression context.
pub(crate) struct Decoder {
    inflate: Decompress,
}

impl Default for Decoder {
    fn default() -> Self {
        Self { inflate: Decompress::new(true) }
    }
}

impl Decoder {
    /// The next whole frame at the front of `buf` (consumed), or `None` until more bytes come.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, SpdyError> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let length = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize;
        if buf.len() < HEADER_LEN + length {
            return Ok(None);
        }
        let first = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let flags = buf[4];
        buf.advance(HEADER_LEN);
        let mut payload = buf.split_to(length).freeze();
        let fin = flags & FLAG_FIN != 0;
        if first & 0x8000_0000 == 0 {
            return Ok(Some(Frame::Data { stream: first, fin, data: payload }));
        }
        let version = ((first >> 16) & 0x7fff) as u16;
        if version != VERSION {
            return Err(SpdyError::Version(version));
        }
        let kind = (first & 0xffff) as u16;
        let frame = match kind {
            SYN_STREAM => {
                if payload.len() < 10 {
                    return Err(SpdyError::Malformed("SYN_STREAM"));
                }
                let stream = payload.get_u32() & 0x7fff_ffff;
                payload.advance(6); // associated stream, priority, slot
                let headers = self.headers(&payload)?;
                Frame::SynStream { stream, fin, headers }
            }
            RST_STREAM => {
                if payload.len() != 8 {
                    return Err(SpdyError::Malformed("RST_STREAM"));
                }
                Frame::RstStream { stream: payload.get_u32() & 0x7fff_ffff, status: payload.get_u32() }
            }
            PING => {
                if payload.len() != 4 {
                    return Err(SpdyError::Malformed("PING"));
                }
                Frame::Ping { id: payload.get_u32() }
            }
            GOAWAY => Frame::GoAway,
            SYN_REPLY | HEADERS => {
                // Not sent by a port-forward client, but its block is part of the context.
                if payload.len() < 4 {
                    return Err(SpdyError::Malformed("HEADERS"));
                }
                self.headers(&payload[4..])?;
                Frame::Ignored { kind }
            }
            other => Frame::Ignored { kind: other },
        };
        Ok(Some(frame))
    }

    fn headers(&mut self, block: &[u8]) -> Result<Vec<(String, String)>, SpdyError> {
        parse_header_block(&self.inflate(block)?)
    }

    /// Decompresses one frame's header block; the stream goes on in the next frame.
    fn inflate(&mut self, block: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let mut out = Vec::with_capacity(block.len() * 4 + 64);
        let mut consumed = 0;
        loop {
            let (in_before, out_before) = (self.inflate.total_in(), out.len());
            let result = self.inflate.decompress_vec(&block[consumed..], &mut out, FlushDecompress::Sync);
            consumed += (self.inflate.total_in() - in_before) as usize;
            match result {
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate.set_dictionary(dictionary()).map_err(SpdyError::Inflate)?;
                }
                Err(e) => return Err(SpdyError::Inflate(e)),
                Ok(_) if consumed == block.len() && out.len() < out.capacity() => return Ok(out),
                Ok(_) if out.len() == out.capacity() => out.reserve(out.capacity()),
                Ok(_) if out.len() == out_before && self.inflate.total_in() == in_before => {
                    return Err(SpdyError::Malformed("header block"));
                }
                Ok(_) => {}
            }
        }
    }
}

fn parse_header_block(mut block: &[u8]) -> Result<Vec<(String, String)>, SpdyError> {
    fn string(block: &mut &[u8]) -> Result<String, SpdyError> {
        if block.len() < 4 {
            return Err(SpdyError::Malformed("header block"));
        }
        let len = block.get_u32() as usize;
        if block.len() < len {
            return Err(SpdyError::Malformed("header block"));
        }
        let text = String::from_utf8_lossy(&block[..len]).into_owned();
        block.advance(len);
        Ok(text)
    }
    if block.len() < 4 {
        return Err(SpdyError::Malformed("header block"));
    }
    let count = block.get_u32();
    let mut headers = Vec::new();
    for _ in 0..count {
        let name = string(&mut block)?;
        // Several values of one name are joined by NUL.
        for value in string(&mut block)?.split('\0') {
            headers.push((name.clone(), value.to_string()));
        }
    }
    Ok(headers)
}

fn header_block(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.put_u32(headers.len() as u32);
    for (name, value) in headers {
        out.put_u32(name.len() as u32);
        out.put_slice(name.as_bytes());
        out.put_u32(value.len() as u32);
        out.put_slice(value.as_bytes());
    }
    out
}

fn control(kind: u16, flags: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER_LEN + payload.len());
    out.put_u16(0x8000 | VERSION);
    out.put_u16(kind);
    out.put_u32((u32::from(flags) << 24) | payload.len() as u32);
    out.put_slice(payload);
    out.freeze()
}

/// Writes frames, keeping the server's header compression context.
pub(crate) struct Encoder {
    deflate: Compress,
}

impl Encoder {
    pub(crate) fn new() -> Result<Self, SpdyError> {
        let mut deflate = Compress::new(Compression::default(), true);
        deflate.set_dictionary(dictionary()).map_err(SpdyError::Deflate)?;
        Ok(Self { deflate })
    }

    /// Compresses one header block, sync-flushed so that it ends within its frame.
    fn deflate(&mut self, headers: &[(&str, &str)]) -> Result<Vec<u8>, SpdyError> {
        let block = header_block(headers);
        let mut out = Vec::with_capacity(block.len() + 64);
        let mut consumed = 0;
        loop {
            let before = self.deflate.total_in();
            self.deflate.compress_vec(&block[consumed..], &mut out, FlushCompress::Sync).map_err(SpdyError::Deflate)?;
            consumed += (self.deflate.total_in() - before) as usize;
            if consumed == block.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            out.reserve(out.capacity());
        }
    }

    /// Accepts a stream the client opened (no headers, as the kubelet answers).
    pub(crate) fn syn_reply(&mut self, stream: u32) -> Result<Bytes, SpdyError> {
        let mut payload = stream.to_be_bytes().to_vec();
        payload.extend(self.deflate(&[])?);
        Ok(control(SYN_REPLY, 0, &payload))
    }

    /// Opens a stream, as a client does (tests play kubectl with it).
    #[cfg(test)]
    pub(crate) fn syn_stream(&mut self, stream: u32, headers: &[(&str, &str)]) -> Result<Bytes, SpdyError> {
        let mut payload = stream.to_be_bytes().to_vec();
        payload.extend([0, 0, 0, 0, 0, 0]);
        payload.extend(self.deflate(headers)?);
        Ok(control(SYN_STREAM, 0, &payload))
    }
}

pub(crate) fn data(stream: u32, data: &[u8], fin: bool) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER_LEN + data.len());
    out.put_u32(stream & 0x7fff_ffff);
    out.put_u32((u32::from(if fin { FLAG_FIN } else { 0 }) << 24) | data.len() as u32);
    out.put_slice(data);
    out.freeze()
}

pub(crate) fn rst_stream(stream: u32, status: u32) -> Bytes {
    let mut payload = stream.to_be_bytes().to_vec();
    payload.extend(status.to_be_bytes());
    control(RST_STREAM, 0, &payload)
}

/// The answer to a client's PING: the same frame.
pub(crate) fn ping(id: u32) -> Bytes {
    control(PING, 0, &id.to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SYN_STREAM for stream 1 with `streamtype: stdout`, as moby/spdystream's Go framer
    /// writes it (a public test vector of the exec protocol).
    const GO_SYN_STREAM: &[u8] = b"\x80\x03\x00\x01\x00\x00\x00\x2b\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x78\xf9\xe3\xc6\xa7\xc2\x62\x60\x60\x60\x04\xa7\xb3\x92\xa2\xd4\xc4\x5c\x68\x51\xc2\x56\x5c\x92\x92\x5f\x5a\x02\x00\x00\x00\xff\xff";

    #[test]
    fn given_the_dictionary_should_be_go_spdy_s_by_length_and_adler32() {
        let dict = dictionary();
        assert_eq!(dict.len(), 1423);
        let (mut a, mut b) = (1u32, 0u32);
        for byte in dict {
            a = (a + u32::from(*byte)) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!((b << 16) | a, 0xe3c6_a7c2);
    }

    #[test]
    fn given_a_syn_stream_written_by_go_when_decoded_should_give_its_headers() {
        let mut buf = BytesMut::from(GO_SYN_STREAM);
        let frame = Decoder::default().decode(&mut buf).expect("decodes");
        assert_eq!(frame, Some(Frame::SynStream { stream: 1, fin: false, headers: vec![("streamtype".into(), "stdout".into())] }));
        assert!(buf.is_empty());
    }

    #[test]
    fn given_frames_split_anywhere_when_decoded_should_wait_for_whole_frames_and_keep_the_header_context() {
        let mut client = Encoder::new().expect("encoder");
        let headers = [("streamtype", "error"), ("port", "61613"), ("requestid", "0")];
        let mut wire = BytesMut::new();
        wire.extend_from_slice(&client.syn_stream(1, &headers).expect("syn"));
        wire.extend_from_slice(&client.syn_stream(3, &[("streamtype", "data"), ("port", "61613"), ("requestid", "0")]).expect("syn"));
        wire.extend_from_slice(&data(3, b"CONNECT", true));
        wire.extend_from_slice(&rst_stream(3, 5));
        wire.extend_from_slice(&ping(7));

        let mut decoder = Decoder::default();
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for byte in wire {
            buf.put_u8(byte);
            while let Some(frame) = decoder.decode(&mut buf).expect("decodes") {
                frames.push(frame);
            }
        }
        let own = |h: &[(&str, &str)]| h.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect::<Vec<_>>();
        assert_eq!(
            frames,
            vec![
                Frame::SynStream { stream: 1, fin: false, headers: own(&headers) },
                Frame::SynStream { stream: 3, fin: false, headers: own(&[("streamtype", "data"), ("port", "61613"), ("requestid", "0")]) },
                Frame::Data { stream: 3, fin: true, data: Bytes::from_static(b"CONNECT") },
                Frame::RstStream { stream: 3, status: 5 },
                Frame::Ping { id: 7 },
            ]
        );
    }

    #[test]
    fn given_replies_when_read_back_should_be_syn_replies_with_empty_header_blocks() {
        let mut server = Encoder::new().expect("encoder");
        let mut inflate = Decoder::default();
        for stream in [1u32, 3, 5] {
            let frame = server.syn_reply(stream).expect("reply");
            assert_eq!(&frame[..4], &[0x80, 0x03, 0x00, 0x02]);
            assert_eq!(&frame[8..12], &stream.to_be_bytes());
            let block = inflate.inflate(&frame[12..]).expect("inflates");
            assert_eq!(parse_header_block(&block).expect("parses"), vec![]);
        }
    }
}
