//! The cluster wire format: frames as values and the codec that turns bytes into
//! frames and back. It does no I/O, holds no broker state and never panics on input;
//! every way a peer can get the format wrong is a [`ClusterCodecError`].
//!
//! A frame is `[u32 BE length of the rest][u8 kind][payload]`. Integers in the payload
//! are big-endian like the length; strings are a `u16` BE byte length followed by UTF-8;
//! a list is a `u32` BE count followed by its items; a trailing `data` field (journal
//! bytes) takes the rest of the frame, so it is carried without a copy. The first two
//! payload bytes of `Hello` and `Challenge` are the protocol version, and every future
//! version keeps them there so a peer can refuse a version it does not speak.
//!
//! The length is checked against the caller's maximum before anything is buffered for
//! it. After an error the stream is out of step and the connection must be closed.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

/// The version of the cluster protocol this build speaks.
pub const PROTOCOL_VERSION: u16 = 3;

/// Bytes of the length prefix in front of every frame.
pub const LENGTH_PREFIX: usize = 4;

/// Why a client connects to the cluster port. In JSON (fault rules) by its
/// [`Purpose::as_str`] name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Purpose {
    /// A backup that wants the live's journal.
    Replicate,
    /// A backup asking for a quorum vote.
    Vote,
    /// A health check or an operator probe.
    Probe,
    /// A network bridge from another group (store-and-forward).
    Bridge,
    /// A remote grouping handler asking the local one for group bindings.
    Grouping,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Replicate => "replicate",
            Purpose::Vote => "vote",
            Purpose::Probe => "probe",
            Purpose::Bridge => "bridge",
            Purpose::Grouping => "grouping",
        }
    }

    fn code(self) -> u8 {
        match self {
            Purpose::Replicate => 1,
            Purpose::Vote => 2,
            Purpose::Probe => 3,
            Purpose::Bridge => 4,
            Purpose::Grouping => 5,
        }
    }

    fn from_code(code: u8) -> Option<Purpose> {
        match code {
            1 => Some(Purpose::Replicate),
            2 => Some(Purpose::Vote),
            3 => Some(Purpose::Probe),
            4 => Some(Purpose::Bridge),
            5 => Some(Purpose::Grouping),
            _ => None,
        }
    }
}

impl std::fmt::Display for Purpose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One journal segment the live holds when a backup starts to sync: its sequence
/// number, its length in bytes and the number of its first record (records are counted
/// across segments, for the lag in records).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SegmentExtent {
    pub seq: u64,
    pub len: u64,
    pub first_record: u64,
}

/// One journal segment a backup holds when it connects: its sequence number, where its
/// valid records end, and a checksum of its header and of the bytes before that end (see
/// `journal::Mirror::digests`), so the live can tell whether it is a prefix of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SegmentDigest {
    pub seq: u64,
    pub len: u64,
    pub crc: u32,
}

/// One destination a side of a bridge has consumers for: `path` lists the groups the
/// demand came through, the one with the consumers first.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DemandEntry {
    pub destination: String,
    pub consumers: u32,
    pub path: Vec<String>,
}

/// Every frame of the cluster protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterFrame {
    /// Client → server: who I am, what I want, and my half of the challenge.
    Hello {
        version: u16,
        node_id: String,
        group: String,
        purpose: Purpose,
        epoch: u64,
        nonce: [u8; 32],
    },
    /// Server → client: who I am, my half of the challenge, and my proof that I know
    /// the cluster password.
    Challenge {
        version: u16,
        node_id: String,
        group: String,
        epoch: u64,
        nonce: [u8; 32],
        proof: [u8; 32],
    },
    /// Client → server: the client's proof that it knows the cluster password.
    Response {
        proof: [u8; 32],
    },
    /// Server → client: the handshake succeeded.
    Welcome {
        node_id: String,
        role: String,
        epoch: u64,
    },
    /// Server → client: the handshake failed, and why.
    Refused {
        reason: String,
    },
    /// Backup → live, first after the handshake: the segments the backup already has.
    SyncRequest {
        segments: Vec<SegmentDigest>,
    },
    /// Live → backup: the segments the initial sync will send. With `resume` the backup's
    /// segments are a prefix of the live's: it keeps them and gets only what it lacks;
    /// otherwise it starts from nothing.
    SyncBegin {
        segments: Vec<SegmentExtent>,
        resume: bool,
    },
    /// Live → backup: bytes of one segment during the initial sync.
    SegmentChunk {
        seq: u64,
        offset: u64,
        data: Bytes,
    },
    /// Live → backup: the initial sync is complete; live streaming continues here.
    SyncEnd {
        seq: u64,
        len: u64,
    },
    /// Live → backup: journal bytes, identical to what the live wrote; `records` is the
    /// number of records the live's journal held at its end when they were sent.
    Append {
        seq: u64,
        offset: u64,
        records: u64,
        data: Bytes,
    },
    /// Live → backup: the live cut segment `seq` back to `len` bytes (it failed to sync a
    /// batch the backup may already have copied); the backup cuts its copy too.
    Truncate {
        seq: u64,
        len: u64,
    },
    /// Backup → live: the cut is durable; acks from here on describe the cut copy.
    Truncated {
        seq: u64,
        len: u64,
    },
    /// Live → backup: the live started segment `seq`.
    Roll {
        seq: u64,
    },
    /// Live → backup: segment `seq` holds nothing live any more and may be deleted.
    Reclaim {
        seq: u64,
    },
    /// Backup → live: durable up to here, holding `records` records.
    Ack {
        seq: u64,
        offset: u64,
        records: u64,
    },
    Ping {
        at: u64,
    },
    Pong {
        at: u64,
    },
    /// Backup → voter: may I activate, given this live seems gone?
    VoteRequest {
        group: String,
        live_node: String,
        /// The live's cluster address, so the voter can check it itself.
        live_addr: String,
        epoch: u64,
    },
    /// Live → voter: at `epoch`, only `holders` (the live and its synced backups) hold
    /// every confirmed write of `group`; a voter records it (newest epoch wins) and then
    /// refuses votes to any other member at that epoch or an older one. Answered with a
    /// `VoteReply` (`granted`: recorded).
    TermNotice {
        group: String,
        epoch: u64,
        /// Orders the notices of one epoch: a voter keeps the highest.
        version: u64,
        holders: Vec<String>,
    },
    /// Voter → backup (and → live, for a `TermNotice`).
    VoteReply {
        granted: bool,
        live_seen: bool,
        reason: String,
    },
    /// Synced backup → live: this backup is the group's preferred live; hand the role back.
    FailbackRequest,
    /// Live → backup: everything is replicated and the live has stopped; activate with
    /// this epoch.
    HandOver {
        epoch: u64,
    },
    /// Either side: closing the connection, and why.
    Goodbye {
        reason: String,
    },
    /// Connector → remote, first after the handshake of a bridge: which connector this is,
    /// whether the remote forwards back over it, how many bridges a message may cross, and
    /// (for a duplex link) how the remote's forwarder behaves: its window, whether its
    /// consumers rank below local ones, whether stranded messages may replay.
    BridgeOpen {
        connector: String,
        duplex: bool,
        network_ttl: u8,
        prefetch: u32,
        decrease_priority: bool,
        replay: bool,
    },
    /// Either side of a bridge: every destination it has consumers for now (replaces the
    /// previous demand).
    Demand {
        entries: Vec<DemandEntry>,
    },
    /// A message crossing a bridge; `path` names the groups that forwarded it so far, this
    /// one last; `dedup_id` lets the receiver store a resend once.
    Forward {
        seq: u64,
        persistent: bool,
        destination: String,
        dedup_id: String,
        path: Vec<String>,
        headers: Vec<(String, String)>,
        body: Bytes,
    },
    /// Receiver → sender: `seq` is stored as durably as a client SEND would be.
    Forwarded {
        seq: u64,
    },
    /// Receiver → sender: `seq` was not stored (no room, bad destination); resend later.
    ForwardRefused {
        seq: u64,
        reason: String,
    },
    /// Remote handler → local handler: who should own `group` of `queue`; `owner` is the
    /// group the remote proposes (where the queue has consumers).
    GroupPropose {
        id: u64,
        queue: String,
        group: String,
        owner: String,
    },
    /// Local handler → remote: the binding of proposal `id` (the proposal, or the binding
    /// decided before); `error` is set, and `owner` empty, when none could be made.
    GroupDecision {
        id: u64,
        owner: String,
        error: String,
    },
    /// Remote handler → local handler: these bindings (queue, group) were used since the
    /// last touch, so the reaper keeps them.
    GroupTouch {
        bindings: Vec<(String, String)>,
    },
}

mod kind {
    pub const HELLO: u8 = 0x01;
    pub const CHALLENGE: u8 = 0x02;
    pub const RESPONSE: u8 = 0x03;
    pub const WELCOME: u8 = 0x04;
    pub const REFUSED: u8 = 0x05;
    pub const SYNC_BEGIN: u8 = 0x10;
    pub const SEGMENT_CHUNK: u8 = 0x11;
    pub const SYNC_END: u8 = 0x12;
    pub const APPEND: u8 = 0x13;
    pub const ROLL: u8 = 0x14;
    pub const RECLAIM: u8 = 0x15;
    pub const ACK: u8 = 0x16;
    pub const PING: u8 = 0x17;
    pub const PONG: u8 = 0x18;
    pub const SYNC_REQUEST: u8 = 0x19;
    pub const TRUNCATE: u8 = 0x1a;
    pub const TRUNCATED: u8 = 0x1b;
    pub const VOTE_REQUEST: u8 = 0x20;
    pub const VOTE_REPLY: u8 = 0x21;
    pub const TERM_NOTICE: u8 = 0x24;
    pub const FAILBACK_REQUEST: u8 = 0x22;
    pub const HAND_OVER: u8 = 0x23;
    pub const GOODBYE: u8 = 0x30;
    pub const BRIDGE_OPEN: u8 = 0x40;
    pub const DEMAND: u8 = 0x41;
    pub const FORWARD: u8 = 0x42;
    pub const FORWARDED: u8 = 0x43;
    pub const FORWARD_REFUSED: u8 = 0x44;
    pub const GROUP_PROPOSE: u8 = 0x48;
    pub const GROUP_DECISION: u8 = 0x49;
    pub const GROUP_TOUCH: u8 = 0x4a;
}

impl ClusterFrame {
    /// The frame's name, for logs and errors.
    pub fn name(&self) -> &'static str {
        frame_name(self.kind()).unwrap_or("unknown")
    }

    fn kind(&self) -> u8 {
        match self {
            ClusterFrame::Hello { .. } => kind::HELLO,
            ClusterFrame::Challenge { .. } => kind::CHALLENGE,
            ClusterFrame::Response { .. } => kind::RESPONSE,
            ClusterFrame::Welcome { .. } => kind::WELCOME,
            ClusterFrame::Refused { .. } => kind::REFUSED,
            ClusterFrame::SyncRequest { .. } => kind::SYNC_REQUEST,
            ClusterFrame::SyncBegin { .. } => kind::SYNC_BEGIN,
            ClusterFrame::Truncate { .. } => kind::TRUNCATE,
            ClusterFrame::Truncated { .. } => kind::TRUNCATED,
            ClusterFrame::SegmentChunk { .. } => kind::SEGMENT_CHUNK,
            ClusterFrame::SyncEnd { .. } => kind::SYNC_END,
            ClusterFrame::Append { .. } => kind::APPEND,
            ClusterFrame::Roll { .. } => kind::ROLL,
            ClusterFrame::Reclaim { .. } => kind::RECLAIM,
            ClusterFrame::Ack { .. } => kind::ACK,
            ClusterFrame::Ping { .. } => kind::PING,
            ClusterFrame::Pong { .. } => kind::PONG,
            ClusterFrame::VoteRequest { .. } => kind::VOTE_REQUEST,
            ClusterFrame::VoteReply { .. } => kind::VOTE_REPLY,
            ClusterFrame::TermNotice { .. } => kind::TERM_NOTICE,
            ClusterFrame::FailbackRequest => kind::FAILBACK_REQUEST,
            ClusterFrame::HandOver { .. } => kind::HAND_OVER,
            ClusterFrame::Goodbye { .. } => kind::GOODBYE,
            ClusterFrame::BridgeOpen { .. } => kind::BRIDGE_OPEN,
            ClusterFrame::Demand { .. } => kind::DEMAND,
            ClusterFrame::Forward { .. } => kind::FORWARD,
            ClusterFrame::Forwarded { .. } => kind::FORWARDED,
            ClusterFrame::ForwardRefused { .. } => kind::FORWARD_REFUSED,
            ClusterFrame::GroupPropose { .. } => kind::GROUP_PROPOSE,
            ClusterFrame::GroupDecision { .. } => kind::GROUP_DECISION,
            ClusterFrame::GroupTouch { .. } => kind::GROUP_TOUCH,
        }
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ClusterCodecError {
    #[error("frame of {length} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge { length: usize, limit: usize },
    #[error("frame has a length of 0, so no kind")]
    EmptyFrame,
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownKind(u8),
    #[error("{frame} frame ends inside field {field}")]
    Truncated { frame: &'static str, field: &'static str },
    #[error("field {field} of a {frame} frame is not valid UTF-8")]
    InvalidUtf8 { frame: &'static str, field: &'static str },
    #[error("field {field} of a {frame} frame holds {value}, not a boolean")]
    InvalidBool { frame: &'static str, field: &'static str, value: u8 },
    #[error("unknown purpose {0} in a hello frame")]
    UnknownPurpose(u8),
    #[error("{frame} frame has {extra} bytes after its last field")]
    TrailingBytes { frame: &'static str, extra: usize },
    #[error("field {field} of a {frame} frame is {len} bytes, more than the {limit} a frame can carry")]
    FieldTooLong { frame: &'static str, field: &'static str, len: usize, limit: usize },
}

/// Decoder and encoder for one cluster connection.
#[derive(Debug, Clone)]
pub struct ClusterCodec {
    max_frame: usize,
}

impl ClusterCodec {
    /// `max_frame` bounds the length field (kind plus payload) of frames in both
    /// directions.
    pub fn new(max_frame: usize) -> ClusterCodec {
        ClusterCodec { max_frame }
    }

    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Takes one whole frame off the front of `buf`; `Ok(None)` when more bytes are
    /// needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<ClusterFrame>, ClusterCodecError> {
        let Some(prefix) = buf.get(..LENGTH_PREFIX) else {
            return Ok(None);
        };
        let length = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        if length > self.max_frame {
            return Err(ClusterCodecError::FrameTooLarge { length, limit: self.max_frame });
        }
        if length == 0 {
            return Err(ClusterCodecError::EmptyFrame);
        }
        let total = LENGTH_PREFIX + length;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        // The frame's bytes become the `Bytes` its data fields point into: no copy.
        let mut frame = buf.split_to(total).freeze();
        frame.advance(LENGTH_PREFIX);
        decode_body(frame).map(Some)
    }

    /// Appends `frame` to `buf`. Fails, leaving `buf` as it was, when a field does not
    /// fit its length prefix or the frame exceeds the maximum the peer accepts.
    pub fn encode(&mut self, frame: &ClusterFrame, buf: &mut BytesMut) -> Result<(), ClusterCodecError> {
        let start = buf.len();
        let result = encode_into(frame, buf, start, self.max_frame);
        if result.is_err() {
            buf.truncate(start);
        }
        result
    }
}

fn encode_into(
    frame: &ClusterFrame,
    buf: &mut BytesMut,
    start: usize,
    max_frame: usize,
) -> Result<(), ClusterCodecError> {
    let name = frame.name();
    buf.put_u32(0);
    buf.put_u8(frame.kind());
    let mut w = Writer { buf, frame: name };
    match frame {
        ClusterFrame::Hello { version, node_id, group, purpose, epoch, nonce } => {
            w.buf.put_u16(*version);
            w.string("node_id", node_id)?;
            w.string("group", group)?;
            w.buf.put_u8(purpose.code());
            w.buf.put_u64(*epoch);
            w.buf.put_slice(nonce);
        }
        ClusterFrame::Challenge { version, node_id, group, epoch, nonce, proof } => {
            w.buf.put_u16(*version);
            w.string("node_id", node_id)?;
            w.string("group", group)?;
            w.buf.put_u64(*epoch);
            w.buf.put_slice(nonce);
            w.buf.put_slice(proof);
        }
        ClusterFrame::Response { proof } => w.buf.put_slice(proof),
        ClusterFrame::Welcome { node_id, role, epoch } => {
            w.string("node_id", node_id)?;
            w.string("role", role)?;
            w.buf.put_u64(*epoch);
        }
        ClusterFrame::Refused { reason } | ClusterFrame::Goodbye { reason } => w.string("reason", reason)?,
        ClusterFrame::SyncRequest { segments } => {
            w.count("segments", segments.len())?;
            for segment in segments {
                w.buf.put_u64(segment.seq);
                w.buf.put_u64(segment.len);
                w.buf.put_u32(segment.crc);
            }
        }
        ClusterFrame::SyncBegin { segments, resume } => {
            w.count("segments", segments.len())?;
            for segment in segments {
                w.buf.put_u64(segment.seq);
                w.buf.put_u64(segment.len);
                w.buf.put_u64(segment.first_record);
            }
            w.buf.put_u8(u8::from(*resume));
        }
        ClusterFrame::SegmentChunk { seq, offset, data } => {
            w.buf.put_u64(*seq);
            w.buf.put_u64(*offset);
            w.buf.put_slice(data);
        }
        ClusterFrame::Append { seq, offset, records, data } => {
            w.buf.put_u64(*seq);
            w.buf.put_u64(*offset);
            w.buf.put_u64(*records);
            w.buf.put_slice(data);
        }
        ClusterFrame::SyncEnd { seq, len } | ClusterFrame::Truncate { seq, len } | ClusterFrame::Truncated { seq, len } => {
            w.buf.put_u64(*seq);
            w.buf.put_u64(*len);
        }
        ClusterFrame::Roll { seq } | ClusterFrame::Reclaim { seq } => w.buf.put_u64(*seq),
        ClusterFrame::Ack { seq, offset, records } => {
            w.buf.put_u64(*seq);
            w.buf.put_u64(*offset);
            w.buf.put_u64(*records);
        }
        ClusterFrame::Ping { at } | ClusterFrame::Pong { at } => w.buf.put_u64(*at),
        ClusterFrame::VoteRequest { group, live_node, live_addr, epoch } => {
            w.string("group", group)?;
            w.string("live_node", live_node)?;
            w.string("live_addr", live_addr)?;
            w.buf.put_u64(*epoch);
        }
        ClusterFrame::TermNotice { group, epoch, version, holders } => {
            w.string("group", group)?;
            w.buf.put_u64(*epoch);
            w.buf.put_u64(*version);
            w.strings("holders", holders)?;
        }
        ClusterFrame::FailbackRequest => {}
        ClusterFrame::HandOver { epoch } => w.buf.put_u64(*epoch),
        ClusterFrame::VoteReply { granted, live_seen, reason } => {
            w.buf.put_u8(u8::from(*granted));
            w.buf.put_u8(u8::from(*live_seen));
            w.string("reason", reason)?;
        }
        ClusterFrame::BridgeOpen { connector, duplex, network_ttl, prefetch, decrease_priority, replay } => {
            w.string("connector", connector)?;
            w.buf.put_u8(u8::from(*duplex));
            w.buf.put_u8(*network_ttl);
            w.buf.put_u32(*prefetch);
            w.buf.put_u8(u8::from(*decrease_priority));
            w.buf.put_u8(u8::from(*replay));
        }
        ClusterFrame::Demand { entries } => {
            w.count("entries", entries.len())?;
            for entry in entries {
                w.string("entries", &entry.destination)?;
                w.buf.put_u32(entry.consumers);
                w.strings("entries", &entry.path)?;
            }
        }
        ClusterFrame::Forward { seq, persistent, destination, dedup_id, path, headers, body } => {
            w.buf.put_u64(*seq);
            w.buf.put_u8(u8::from(*persistent));
            w.string("destination", destination)?;
            w.string("dedup_id", dedup_id)?;
            w.strings("path", path)?;
            w.count("headers", headers.len())?;
            for (name, value) in headers {
                w.string("headers", name)?;
                w.string("headers", value)?;
            }
            w.buf.put_slice(body);
        }
        ClusterFrame::Forwarded { seq } => w.buf.put_u64(*seq),
        ClusterFrame::ForwardRefused { seq, reason } => {
            w.buf.put_u64(*seq);
            w.string("reason", reason)?;
        }
        ClusterFrame::GroupPropose { id, queue, group, owner } => {
            w.buf.put_u64(*id);
            w.string("queue", queue)?;
            w.string("group", group)?;
            w.string("owner", owner)?;
        }
        ClusterFrame::GroupDecision { id, owner, error } => {
            w.buf.put_u64(*id);
            w.string("owner", owner)?;
            w.string("error", error)?;
        }
        ClusterFrame::GroupTouch { bindings } => {
            w.count("bindings", bindings.len())?;
            for (queue, group) in bindings {
                w.string("bindings", queue)?;
                w.string("bindings", group)?;
            }
        }
    }
    let length = buf.len() - start - LENGTH_PREFIX;
    if length > max_frame || u32::try_from(length).is_err() {
        return Err(ClusterCodecError::FrameTooLarge { length, limit: max_frame });
    }
    buf[start..start + LENGTH_PREFIX].copy_from_slice(&(length as u32).to_be_bytes());
    Ok(())
}

struct Writer<'a> {
    buf: &'a mut BytesMut,
    frame: &'static str,
}

impl Writer<'_> {
    fn count(&mut self, field: &'static str, len: usize) -> Result<(), ClusterCodecError> {
        let count = u32::try_from(len).map_err(|_| ClusterCodecError::FieldTooLong {
            frame: self.frame,
            field,
            len,
            limit: u32::MAX as usize,
        })?;
        self.buf.put_u32(count);
        Ok(())
    }

    fn string(&mut self, field: &'static str, value: &str) -> Result<(), ClusterCodecError> {
        let len = u16::try_from(value.len()).map_err(|_| ClusterCodecError::FieldTooLong {
            frame: self.frame,
            field,
            len: value.len(),
            limit: u16::MAX as usize,
        })?;
        self.buf.put_u16(len);
        self.buf.put_slice(value.as_bytes());
        Ok(())
    }

    fn strings(&mut self, field: &'static str, values: &[String]) -> Result<(), ClusterCodecError> {
        self.count(field, values.len())?;
        for value in values {
            self.string(field, value)?;
        }
        Ok(())
    }
}

/// Reads fields off a frame body, naming the field that is missing or malformed.
struct Reader {
    body: Bytes,
    frame: &'static str,
}

impl Reader {
    fn take(&mut self, field: &'static str, n: usize) -> Result<Bytes, ClusterCodecError> {
        if self.body.len() < n {
            return Err(ClusterCodecError::Truncated { frame: self.frame, field });
        }
        Ok(self.body.split_to(n))
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, ClusterCodecError> {
        Ok(self.take(field, 1)?.get_u8())
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, ClusterCodecError> {
        Ok(self.take(field, 2)?.get_u16())
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, ClusterCodecError> {
        Ok(self.take(field, 4)?.get_u32())
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, ClusterCodecError> {
        Ok(self.take(field, 8)?.get_u64())
    }

    fn bool(&mut self, field: &'static str) -> Result<bool, ClusterCodecError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(ClusterCodecError::InvalidBool { frame: self.frame, field, value }),
        }
    }

    fn array32(&mut self, field: &'static str) -> Result<[u8; 32], ClusterCodecError> {
        let bytes = self.take(field, 32)?;
        let mut out = [0u8; 32];
        out.copy_from_slice(&bytes);
        Ok(out)
    }

    fn string(&mut self, field: &'static str) -> Result<String, ClusterCodecError> {
        let len = self.u16(field)? as usize;
        let bytes = self.take(field, len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| ClusterCodecError::InvalidUtf8 { frame: self.frame, field })
    }

    /// A list count, checked against the bytes present (`item` each) before anyone
    /// allocates for it.
    fn count(&mut self, field: &'static str, item: usize) -> Result<usize, ClusterCodecError> {
        let count = self.u32(field)? as usize;
        if self.body.len() / item < count {
            return Err(ClusterCodecError::Truncated { frame: self.frame, field });
        }
        Ok(count)
    }

    /// A list of strings (each at least its 2-byte length).
    fn strings(&mut self, field: &'static str) -> Result<Vec<String>, ClusterCodecError> {
        let count = self.count(field, 2)?;
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            out.push(self.string(field)?);
        }
        Ok(out)
    }

    fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.body)
    }

    fn finish(self) -> Result<(), ClusterCodecError> {
        if self.body.is_empty() {
            Ok(())
        } else {
            Err(ClusterCodecError::TrailingBytes { frame: self.frame, extra: self.body.len() })
        }
    }
}

/// The name of every frame kind, as [`ClusterFrame::name`] gives it.
pub fn frame_names() -> impl Iterator<Item = &'static str> {
    (0..=u8::MAX).filter_map(frame_name)
}

fn frame_name(kind: u8) -> Option<&'static str> {
    Some(match kind {
        kind::HELLO => "hello",
        kind::CHALLENGE => "challenge",
        kind::RESPONSE => "response",
        kind::WELCOME => "welcome",
        kind::REFUSED => "refused",
        kind::SYNC_REQUEST => "sync-request",
        kind::SYNC_BEGIN => "sync-begin",
        kind::TRUNCATE => "truncate",
        kind::TRUNCATED => "truncated",
        kind::SEGMENT_CHUNK => "segment-chunk",
        kind::SYNC_END => "sync-end",
        kind::APPEND => "append",
        kind::ROLL => "roll",
        kind::RECLAIM => "reclaim",
        kind::ACK => "ack",
        kind::PING => "ping",
        kind::PONG => "pong",
        kind::VOTE_REQUEST => "vote-request",
        kind::VOTE_REPLY => "vote-reply",
        kind::TERM_NOTICE => "term-notice",
        kind::FAILBACK_REQUEST => "failback-request",
        kind::HAND_OVER => "hand-over",
        kind::GOODBYE => "goodbye",
        kind::BRIDGE_OPEN => "bridge-open",
        kind::DEMAND => "demand",
        kind::FORWARD => "forward",
        kind::FORWARDED => "forwarded",
        kind::FORWARD_REFUSED => "forward-refused",
        kind::GROUP_PROPOSE => "group-propose",
        kind::GROUP_DECISION => "group-decision",
        kind::GROUP_TOUCH => "group-touch",
        _ => return None,
    })
}

/// Decodes kind and payload (the length prefix already removed).
fn decode_body(mut body: Bytes) -> Result<ClusterFrame, ClusterCodecError> {
    let kind = body.get_u8();
    let frame = frame_name(kind).ok_or(ClusterCodecError::UnknownKind(kind))?;
    let mut r = Reader { body, frame };
    let decoded = match kind {
        kind::HELLO => {
            let version = r.u16("version")?;
            let node_id = r.string("node_id")?;
            let group = r.string("group")?;
            let code = r.u8("purpose")?;
            let purpose = Purpose::from_code(code).ok_or(ClusterCodecError::UnknownPurpose(code))?;
            let epoch = r.u64("epoch")?;
            let nonce = r.array32("nonce")?;
            ClusterFrame::Hello { version, node_id, group, purpose, epoch, nonce }
        }
        kind::CHALLENGE => {
            let version = r.u16("version")?;
            let node_id = r.string("node_id")?;
            let group = r.string("group")?;
            let epoch = r.u64("epoch")?;
            let nonce = r.array32("nonce")?;
            let proof = r.array32("proof")?;
            ClusterFrame::Challenge { version, node_id, group, epoch, nonce, proof }
        }
        kind::RESPONSE => ClusterFrame::Response { proof: r.array32("proof")? },
        kind::WELCOME => {
            let node_id = r.string("node_id")?;
            let role = r.string("role")?;
            let epoch = r.u64("epoch")?;
            ClusterFrame::Welcome { node_id, role, epoch }
        }
        kind::REFUSED => ClusterFrame::Refused { reason: r.string("reason")? },
        kind::GOODBYE => ClusterFrame::Goodbye { reason: r.string("reason")? },
        kind::SYNC_REQUEST => {
            let count = r.count("segments", 20)?;
            let mut segments = Vec::with_capacity(count);
            for _ in 0..count {
                segments.push(SegmentDigest { seq: r.u64("segments")?, len: r.u64("segments")?, crc: r.u32("segments")? });
            }
            ClusterFrame::SyncRequest { segments }
        }
        kind::SYNC_BEGIN => {
            let count = r.count("segments", 24)?;
            let mut segments = Vec::with_capacity(count);
            for _ in 0..count {
                segments.push(SegmentExtent {
                    seq: r.u64("segments")?,
                    len: r.u64("segments")?,
                    first_record: r.u64("segments")?,
                });
            }
            ClusterFrame::SyncBegin { segments, resume: r.bool("resume")? }
        }
        kind::TRUNCATE => ClusterFrame::Truncate { seq: r.u64("seq")?, len: r.u64("len")? },
        kind::TRUNCATED => ClusterFrame::Truncated { seq: r.u64("seq")?, len: r.u64("len")? },
        kind::SEGMENT_CHUNK => {
            let seq = r.u64("seq")?;
            let offset = r.u64("offset")?;
            ClusterFrame::SegmentChunk { seq, offset, data: r.rest() }
        }
        kind::APPEND => {
            let seq = r.u64("seq")?;
            let offset = r.u64("offset")?;
            let records = r.u64("records")?;
            ClusterFrame::Append { seq, offset, records, data: r.rest() }
        }
        kind::SYNC_END => {
            let seq = r.u64("seq")?;
            let len = r.u64("len")?;
            ClusterFrame::SyncEnd { seq, len }
        }
        kind::ROLL => ClusterFrame::Roll { seq: r.u64("seq")? },
        kind::RECLAIM => ClusterFrame::Reclaim { seq: r.u64("seq")? },
        kind::ACK => {
            let seq = r.u64("seq")?;
            let offset = r.u64("offset")?;
            let records = r.u64("records")?;
            ClusterFrame::Ack { seq, offset, records }
        }
        kind::PING => ClusterFrame::Ping { at: r.u64("at")? },
        kind::PONG => ClusterFrame::Pong { at: r.u64("at")? },
        kind::VOTE_REQUEST => {
            let group = r.string("group")?;
            let live_node = r.string("live_node")?;
            let live_addr = r.string("live_addr")?;
            let epoch = r.u64("epoch")?;
            ClusterFrame::VoteRequest { group, live_node, live_addr, epoch }
        }
        kind::TERM_NOTICE => {
            let group = r.string("group")?;
            let epoch = r.u64("epoch")?;
            let version = r.u64("version")?;
            let holders = r.strings("holders")?;
            ClusterFrame::TermNotice { group, epoch, version, holders }
        }
        kind::FAILBACK_REQUEST => ClusterFrame::FailbackRequest,
        kind::HAND_OVER => ClusterFrame::HandOver { epoch: r.u64("epoch")? },
        kind::VOTE_REPLY => {
            let granted = r.bool("granted")?;
            let live_seen = r.bool("live_seen")?;
            let reason = r.string("reason")?;
            ClusterFrame::VoteReply { granted, live_seen, reason }
        }
        kind::BRIDGE_OPEN => {
            let connector = r.string("connector")?;
            let duplex = r.bool("duplex")?;
            let network_ttl = r.u8("network_ttl")?;
            let prefetch = r.u32("prefetch")?;
            let decrease_priority = r.bool("decrease_priority")?;
            let replay = r.bool("replay")?;
            ClusterFrame::BridgeOpen { connector, duplex, network_ttl, prefetch, decrease_priority, replay }
        }
        kind::DEMAND => {
            // Each entry is at least a name length, a count and a path count.
            let count = r.count("entries", 10)?;
            let mut entries = Vec::with_capacity(count);
            for _ in 0..count {
                let destination = r.string("entries")?;
                let consumers = r.u32("entries")?;
                let path = r.strings("entries")?;
                entries.push(DemandEntry { destination, consumers, path });
            }
            ClusterFrame::Demand { entries }
        }
        kind::FORWARD => {
            let seq = r.u64("seq")?;
            let persistent = r.bool("persistent")?;
            let destination = r.string("destination")?;
            let dedup_id = r.string("dedup_id")?;
            let path = r.strings("path")?;
            let count = r.count("headers", 4)?;
            let mut headers = Vec::with_capacity(count);
            for _ in 0..count {
                headers.push((r.string("headers")?, r.string("headers")?));
            }
            ClusterFrame::Forward { seq, persistent, destination, dedup_id, path, headers, body: r.rest() }
        }
        kind::FORWARDED => ClusterFrame::Forwarded { seq: r.u64("seq")? },
        kind::FORWARD_REFUSED => {
            let seq = r.u64("seq")?;
            let reason = r.string("reason")?;
            ClusterFrame::ForwardRefused { seq, reason }
        }
        kind::GROUP_PROPOSE => {
            let id = r.u64("id")?;
            let queue = r.string("queue")?;
            let group = r.string("group")?;
            let owner = r.string("owner")?;
            ClusterFrame::GroupPropose { id, queue, group, owner }
        }
        kind::GROUP_DECISION => {
            let id = r.u64("id")?;
            let owner = r.string("owner")?;
            let error = r.string("error")?;
            ClusterFrame::GroupDecision { id, owner, error }
        }
        kind::GROUP_TOUCH => {
            // Each binding is at least two 2-byte name lengths.
            let count = r.count("bindings", 4)?;
            let mut bindings = Vec::with_capacity(count);
            for _ in 0..count {
                bindings.push((r.string("bindings")?, r.string("bindings")?));
            }
            ClusterFrame::GroupTouch { bindings }
        }
        _ => return Err(ClusterCodecError::UnknownKind(kind)),
    };
    r.finish()?;
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rstest::rstest;

    const MAX: usize = 64 * 1024;

    fn encoded(frames: &[ClusterFrame]) -> BytesMut {
        let mut codec = ClusterCodec::new(MAX);
        let mut buf = BytesMut::new();
        for frame in frames {
            codec.encode(frame, &mut buf).expect("test frames fit");
        }
        buf
    }

    /// Decodes everything in `buf`, stopping at the first error.
    fn decode_all(codec: &mut ClusterCodec, buf: &mut BytesMut) -> Result<Vec<ClusterFrame>, ClusterCodecError> {
        let mut out = Vec::new();
        while let Some(frame) = codec.decode(buf)? {
            out.push(frame);
        }
        Ok(out)
    }

    #[test]
    fn given_the_fuzz_seeds_of_bridge_and_grouping_frames_should_decode_each_to_its_frame() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/cluster_frame");
        for (file, name) in [
            ("bridge-open", "bridge-open"),
            ("demand", "demand"),
            ("forward", "forward"),
            ("forwarded", "forwarded"),
            ("forward-refused", "forward-refused"),
            ("group-propose", "group-propose"),
            ("group-decision", "group-decision"),
            ("group-touch", "group-touch"),
        ] {
            let bytes = std::fs::read(dir.join(file)).expect("seed file");
            let mut buf = BytesMut::from(&bytes[..]);
            let frame = ClusterCodec::new(MAX).decode(&mut buf).expect("decodes").expect("whole frame");
            assert_eq!(frame.name(), name);
            assert!(buf.is_empty(), "{file}: nothing left over");
        }
    }

    fn text() -> impl Strategy<Value = String> {
        ".{0,40}"
    }

    fn data() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from)
    }

    fn purpose() -> impl Strategy<Value = Purpose> {
        prop_oneof![Just(Purpose::Replicate), Just(Purpose::Vote), Just(Purpose::Probe), Just(Purpose::Bridge), Just(Purpose::Grouping)]
    }

    fn frame() -> impl Strategy<Value = ClusterFrame> {
        prop_oneof![
            (any::<u16>(), text(), text(), purpose(), any::<u64>(), any::<[u8; 32]>()).prop_map(
                |(version, node_id, group, purpose, epoch, nonce)| ClusterFrame::Hello {
                    version,
                    node_id,
                    group,
                    purpose,
                    epoch,
                    nonce
                }
            ),
            (any::<u16>(), text(), text(), any::<u64>(), any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(
                |(version, node_id, group, epoch, nonce, proof)| ClusterFrame::Challenge {
                    version,
                    node_id,
                    group,
                    epoch,
                    nonce,
                    proof
                }
            ),
            any::<[u8; 32]>().prop_map(|proof| ClusterFrame::Response { proof }),
            (text(), text(), any::<u64>()).prop_map(|(node_id, role, epoch)| ClusterFrame::Welcome {
                node_id,
                role,
                epoch
            }),
            text().prop_map(|reason| ClusterFrame::Refused { reason }),
            (text(), any::<bool>(), any::<u8>(), any::<u32>(), any::<bool>(), any::<bool>()).prop_map(
                |(connector, duplex, network_ttl, prefetch, decrease_priority, replay)| ClusterFrame::BridgeOpen {
                    connector,
                    duplex,
                    network_ttl,
                    prefetch,
                    decrease_priority,
                    replay
                }
            ),
            proptest::collection::vec((text(), any::<u32>(), proptest::collection::vec(text(), 0..3)), 0..5).prop_map(|entries| {
                ClusterFrame::Demand {
                    entries: entries.into_iter().map(|(destination, consumers, path)| DemandEntry { destination, consumers, path }).collect(),
                }
            }),
            (
                any::<u64>(),
                any::<bool>(),
                text(),
                text(),
                proptest::collection::vec(text(), 0..3),
                proptest::collection::vec((text(), text()), 0..4),
                data()
            )
                .prop_map(|(seq, persistent, destination, dedup_id, path, headers, body)| ClusterFrame::Forward {
                    seq,
                    persistent,
                    destination,
                    dedup_id,
                    path,
                    headers,
                    body
                }),
            any::<u64>().prop_map(|seq| ClusterFrame::Forwarded { seq }),
            (any::<u64>(), text()).prop_map(|(seq, reason)| ClusterFrame::ForwardRefused { seq, reason }),
            (any::<u64>(), text(), text(), text()).prop_map(|(id, queue, group, owner)| ClusterFrame::GroupPropose { id, queue, group, owner }),
            (any::<u64>(), text(), text()).prop_map(|(id, owner, error)| ClusterFrame::GroupDecision { id, owner, error }),
            proptest::collection::vec((text(), text()), 0..5).prop_map(|bindings| ClusterFrame::GroupTouch { bindings }),
            (proptest::collection::vec((any::<u64>(), any::<u64>(), any::<u64>()), 0..20), any::<bool>()).prop_map(
                |(segments, resume)| ClusterFrame::SyncBegin {
                    segments: segments
                        .into_iter()
                        .map(|(seq, len, first_record)| SegmentExtent { seq, len, first_record })
                        .collect(),
                    resume,
                }
            ),
            proptest::collection::vec((any::<u64>(), any::<u64>(), any::<u32>()), 0..20).prop_map(|segments| {
                ClusterFrame::SyncRequest {
                    segments: segments.into_iter().map(|(seq, len, crc)| SegmentDigest { seq, len, crc }).collect(),
                }
            }),
            (any::<u64>(), any::<u64>()).prop_map(|(seq, len)| ClusterFrame::Truncate { seq, len }),
            (any::<u64>(), any::<u64>()).prop_map(|(seq, len)| ClusterFrame::Truncated { seq, len }),
            (any::<u64>(), any::<u64>(), data()).prop_map(|(seq, offset, data)| ClusterFrame::SegmentChunk {
                seq,
                offset,
                data
            }),
            (any::<u64>(), any::<u64>()).prop_map(|(seq, len)| ClusterFrame::SyncEnd { seq, len }),
            (any::<u64>(), any::<u64>(), any::<u64>(), data()).prop_map(|(seq, offset, records, data)| {
                ClusterFrame::Append { seq, offset, records, data }
            }),
            any::<u64>().prop_map(|seq| ClusterFrame::Roll { seq }),
            any::<u64>().prop_map(|seq| ClusterFrame::Reclaim { seq }),
            (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(seq, offset, records)| ClusterFrame::Ack {
                seq,
                offset,
                records
            }),
            any::<u64>().prop_map(|at| ClusterFrame::Ping { at }),
            any::<u64>().prop_map(|at| ClusterFrame::Pong { at }),
            (text(), text(), text(), any::<u64>()).prop_map(|(group, live_node, live_addr, epoch)| {
                ClusterFrame::VoteRequest { group, live_node, live_addr, epoch }
            }),
            (text(), any::<u64>(), any::<u64>(), proptest::collection::vec(text(), 0..3))
                .prop_map(|(group, epoch, version, holders)| ClusterFrame::TermNotice { group, epoch, version, holders }),
            Just(ClusterFrame::FailbackRequest),
            any::<u64>().prop_map(|epoch| ClusterFrame::HandOver { epoch }),
            (any::<bool>(), any::<bool>(), text()).prop_map(|(granted, live_seen, reason)| ClusterFrame::VoteReply {
                granted,
                live_seen,
                reason
            }),
            text().prop_map(|reason| ClusterFrame::Goodbye { reason }),
        ]
    }

    proptest! {
        #[test]
        fn given_any_frame_when_encoded_then_decoded_should_round_trip(frame in frame()) {
            let mut buf = encoded(std::slice::from_ref(&frame));
            let decoded = decode_all(&mut ClusterCodec::new(MAX), &mut buf);
            prop_assert_eq!(decoded, Ok(vec![frame]));
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn given_frames_split_at_any_byte_when_decoding_should_yield_the_same_frames(
            frames in proptest::collection::vec(frame(), 1..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let whole = encoded(&frames);
            let cut = cut.index(whole.len() + 1);
            let mut codec = ClusterCodec::new(MAX);
            let mut buf = BytesMut::from(&whole[..cut]);
            let mut decoded = decode_all(&mut codec, &mut buf).expect("a prefix of valid frames decodes");
            buf.extend_from_slice(&whole[cut..]);
            decoded.extend(decode_all(&mut codec, &mut buf).expect("valid frames decode"));
            prop_assert_eq!(decoded, frames);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn given_garbage_when_decoding_should_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut buf = BytesMut::from(&bytes[..]);
            let _ = decode_all(&mut ClusterCodec::new(MAX), &mut buf);
        }

        #[test]
        fn given_a_valid_frame_with_one_byte_changed_when_decoding_should_never_panic(
            frame in frame(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let mut buf = encoded(&[frame]);
            let at = at.index(buf.len());
            buf[at] = byte;
            let _ = decode_all(&mut ClusterCodec::new(MAX), &mut buf);
        }
    }

    #[test]
    fn given_every_split_point_when_decoding_byte_by_byte_should_yield_each_frame_once() {
        let frames = vec![
            ClusterFrame::Hello {
                version: PROTOCOL_VERSION,
                node_id: "orders-1".into(),
                group: "orders".into(),
                purpose: Purpose::Replicate,
                epoch: 3,
                nonce: [7; 32],
            },
            ClusterFrame::Append { seq: 4, offset: 4096, records: 9, data: Bytes::from_static(b"journal batch") },
            ClusterFrame::VoteReply { granted: true, live_seen: false, reason: "live is gone".into() },
        ];
        let whole = encoded(&frames);
        let mut codec = ClusterCodec::new(MAX);
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        for byte in whole.iter() {
            buf.extend_from_slice(&[*byte]);
            decoded.extend(decode_all(&mut codec, &mut buf).expect("valid frames decode"));
        }
        assert_eq!(decoded, frames);
    }

    #[test]
    fn given_a_length_over_the_limit_when_decoding_should_refuse_before_the_body_arrives() {
        let mut buf = BytesMut::from(&[0x00, 0x01, 0x00, 0x01][..]);
        let err = ClusterCodec::new(MAX).decode(&mut buf).unwrap_err();
        assert_eq!(err, ClusterCodecError::FrameTooLarge { length: 0x0001_0001, limit: MAX });
        assert!(buf.capacity() < 0x0001_0001, "nothing was reserved for the oversized frame");
    }

    #[test]
    fn given_a_frame_over_the_limit_when_encoding_should_fail_and_leave_the_buffer_as_it_was() {
        let mut buf = BytesMut::from(&b"earlier"[..]);
        let frame = ClusterFrame::Append { seq: 1, offset: 0, records: 0, data: Bytes::from(vec![0u8; 100]) };
        let err = ClusterCodec::new(64).encode(&frame, &mut buf).unwrap_err();
        assert_eq!(err, ClusterCodecError::FrameTooLarge { length: 125, limit: 64 });
        assert_eq!(&buf[..], b"earlier");
    }

    #[test]
    fn given_a_string_longer_than_its_prefix_when_encoding_should_name_the_field() {
        let frame = ClusterFrame::Goodbye { reason: "x".repeat(70_000) };
        let err = ClusterCodec::new(1 << 20).encode(&frame, &mut BytesMut::new()).unwrap_err();
        assert_eq!(
            err,
            ClusterCodecError::FieldTooLong { frame: "goodbye", field: "reason", len: 70_000, limit: 65_535 }
        );
    }

    #[rstest]
    #[case::empty_frame(&[0, 0, 0, 0], ClusterCodecError::EmptyFrame)]
    #[case::unknown_kind(&[0, 0, 0, 1, 0xee], ClusterCodecError::UnknownKind(0xee))]
    #[case::short_ping(&[0, 0, 0, 3, kind::PING, 1, 2], ClusterCodecError::Truncated { frame: "ping", field: "at" })]
    #[case::long_roll(&[0, 0, 0, 10, kind::ROLL, 0, 0, 0, 0, 0, 0, 0, 1, 9], ClusterCodecError::TrailingBytes { frame: "roll", extra: 1 })]
    #[case::bad_utf8(&[0, 0, 0, 4, kind::GOODBYE, 0, 1, 0xff], ClusterCodecError::InvalidUtf8 { frame: "goodbye", field: "reason" })]
    #[case::bad_bool(&[0, 0, 0, 5, kind::VOTE_REPLY, 2, 0, 0, 0], ClusterCodecError::InvalidBool { frame: "vote-reply", field: "granted", value: 2 })]
    #[case::huge_segment_count(&[0, 0, 0, 5, kind::SYNC_BEGIN, 0xff, 0xff, 0xff, 0xff], ClusterCodecError::Truncated { frame: "sync-begin", field: "segments" })]
    fn given_a_malformed_frame_when_decoding_should_say_what_is_wrong(
        #[case] bytes: &[u8],
        #[case] expected: ClusterCodecError,
    ) {
        let mut buf = BytesMut::from(bytes);
        assert_eq!(ClusterCodec::new(MAX).decode(&mut buf), Err(expected));
    }

    #[test]
    fn given_an_unknown_purpose_when_decoding_a_hello_should_refuse() {
        let mut buf = encoded(&[ClusterFrame::Hello {
            version: 1,
            node_id: String::new(),
            group: String::new(),
            purpose: Purpose::Probe,
            epoch: 0,
            nonce: [0; 32],
        }]);
        // Length 4, kind 1, version 2, two empty strings 4: the purpose is byte 11.
        buf[11] = 9;
        assert_eq!(ClusterCodec::new(MAX).decode(&mut buf), Err(ClusterCodecError::UnknownPurpose(9)));
    }
}
