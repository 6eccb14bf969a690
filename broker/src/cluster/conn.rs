//! One cluster connection: a byte stream, the codec and its buffers, so frames can be
//! sent and received. It carries frames and nothing else: it does not authenticate
//! (see `handshake`), time out, or decide what a frame means. Every frame of every
//! cluster connection goes through here (a bridge's or grouping link's two tasks each
//! hold one half, see [`ClusterConn::split`]), so this is where the fault injection seam
//! sits: with a [`Tap`] (only when `debug.faultInjection` is on), every frame sent and
//! received passes the fault rules, at the cost of one atomic load while none is set.

use super::frame::{ClusterCodec, ClusterCodecError, ClusterFrame};
use crate::faults::Tap;
use bytes::BytesMut;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

/// Below this much free space a read grows the buffer by `READ_CHUNK` first, so large
/// frames do not arrive in tiny reads.
const MIN_READ: usize = 4 * 1024;
const READ_CHUNK: usize = 64 * 1024;

#[derive(Debug, Error)]
pub enum ClusterConnError {
    #[error("failed to encode a {frame} frame")]
    Encode { frame: &'static str, source: ClusterCodecError },
    #[error("failed to write to the cluster connection")]
    Write { source: std::io::Error },
    #[error("failed to read from the cluster connection")]
    Read { source: std::io::Error },
    #[error("failed to decode a frame from the peer")]
    Decode { source: ClusterCodecError },
    #[error("peer closed the connection in the middle of a frame ({buffered} bytes buffered)")]
    ClosedMidFrame { buffered: usize },
}

/// A cluster connection over any byte stream (TCP, TLS, an in-memory pipe), or one half of
/// one (see [`ClusterConn::split`]).
#[derive(Debug)]
pub struct ClusterConn<S> {
    stream: S,
    codec: ClusterCodec,
    read_buf: BytesMut,
    write_buf: BytesMut,
    /// The fault rules this connection's frames pass, when fault injection is on.
    faults: Option<Tap>,
}

impl<S> ClusterConn<S> {
    /// Frames longer than `max_frame` bytes are refused in both directions.
    pub fn new(stream: S, max_frame: usize) -> ClusterConn<S> {
        ClusterConn::from_parts(stream, ClusterCodec::new(max_frame), BytesMut::with_capacity(READ_CHUNK))
    }

    /// Resumes a connection whose `read_buf` may already hold bytes of the next frames.
    pub fn from_parts(stream: S, codec: ClusterCodec, read_buf: BytesMut) -> ClusterConn<S> {
        ClusterConn { stream, codec, read_buf, write_buf: BytesMut::new(), faults: None }
    }

    /// Puts the connection's frames through fault rules (`None`: none).
    pub fn set_faults(&mut self, tap: Option<Tap>) {
        self.faults = tap;
    }

    /// Encodes a frame into the write buffer without writing it, so a batch of frames
    /// goes out in one write on the next [`flush`](Self::flush).
    pub fn queue(&mut self, frame: &ClusterFrame) -> Result<(), ClusterConnError> {
        let ClusterConn { codec, write_buf, faults, .. } = self;
        let mut encode = |frame: &ClusterFrame| {
            codec.encode(frame, write_buf).map_err(|source| ClusterConnError::Encode { frame: frame.name(), source })
        };
        match faults {
            Some(tap) if tap.engaged() => tap.outgoing(frame, encode),
            _ => encode(frame),
        }
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.write_buf.len()
    }

    /// Changes the largest frame accepted from now on, in both directions: the handshake
    /// reads with a small limit and raises it once the peer has proved the password.
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.codec = ClusterCodec::new(max_frame);
    }

    /// Bytes received but not yet decoded.
    pub fn buffered(&self) -> &[u8] {
        &self.read_buf
    }

    pub fn stream(&self) -> &S {
        &self.stream
    }

    /// The stream, the codec and any bytes received but not yet decoded. Frames queued
    /// but not flushed are dropped, and so is the fault tap.
    pub fn into_parts(self) -> (S, ClusterCodec, BytesMut) {
        (self.stream, self.codec, self.read_buf)
    }
}

impl<S: AsyncRead + AsyncWrite> ClusterConn<S> {
    /// The connection as a receiving half (with the bytes already received) and a
    /// sending half (with the frames already queued), for a reader task and a writer
    /// task; each keeps its side of the fault tap.
    pub fn split(self) -> (ClusterConn<ReadHalf<S>>, ClusterConn<WriteHalf<S>>) {
        let (rd, wr) = tokio::io::split(self.stream);
        let (read_tap, write_tap) = match self.faults {
            Some(tap) => {
                let (r, w) = tap.split();
                (Some(r), Some(w))
            }
            None => (None, None),
        };
        let reader = ClusterConn { stream: rd, codec: self.codec.clone(), read_buf: self.read_buf, write_buf: BytesMut::new(), faults: read_tap };
        let writer = ClusterConn { stream: wr, codec: self.codec, read_buf: BytesMut::new(), write_buf: self.write_buf, faults: write_tap };
        (reader, writer)
    }
}

impl<S: AsyncWrite + Unpin> ClusterConn<S> {
    /// Encodes and writes one frame, then flushes. Not cancel-safe: a cancelled send
    /// leaves the stream mid-frame, so the connection must then be dropped.
    pub async fn send(&mut self, frame: &ClusterFrame) -> Result<(), ClusterConnError> {
        self.queue(frame)?;
        self.flush().await
    }

    /// Writes everything queued and flushes the stream (no earlier than an injected delay
    /// of a queued frame allows).
    pub async fn flush(&mut self) -> Result<(), ClusterConnError> {
        if let Some(at) = self.faults.as_mut().and_then(Tap::take_not_before) {
            tokio::time::sleep_until(at).await;
        }
        self.stream.write_all(&self.write_buf).await.map_err(|source| ClusterConnError::Write { source })?;
        self.write_buf.clear();
        self.stream.flush().await.map_err(|source| ClusterConnError::Write { source })
    }

    /// Closes the sending side of the stream, after writing what is queued.
    pub async fn shutdown(&mut self) -> Result<(), ClusterConnError> {
        self.flush().await?;
        self.stream.shutdown().await.map_err(|source| ClusterConnError::Write { source })
    }
}

impl<S: AsyncRead + Unpin> ClusterConn<S> {
    /// The next frame; `Ok(None)` when the peer closed the connection between frames.
    /// Cancel-safe: bytes already read, and frames a fault rule holds back, stay for the
    /// next call.
    pub async fn recv(&mut self) -> Result<Option<ClusterFrame>, ClusterConnError> {
        loop {
            if let Some(tap) = self.faults.as_mut().filter(|t| t.has_inbound()) {
                if let Some(frame) = tap.next_inbound().await {
                    return Ok(Some(frame));
                }
            }
            if let Some(frame) =
                self.codec.decode(&mut self.read_buf).map_err(|source| ClusterConnError::Decode { source })?
            {
                match self.faults.as_mut().filter(|t| t.engaged()) {
                    Some(tap) => {
                        tap.incoming(frame);
                        continue;
                    }
                    None => return Ok(Some(frame)),
                }
            }
            if self.read_buf.capacity() - self.read_buf.len() < MIN_READ {
                self.read_buf.reserve(READ_CHUNK);
            }
            let read =
                self.stream.read_buf(&mut self.read_buf).await.map_err(|source| ClusterConnError::Read { source })?;
            if read == 0 {
                if let Some(tap) = self.faults.as_mut().filter(|t| t.engaged()) {
                    tap.closed();
                    if tap.has_inbound() {
                        continue;
                    }
                }
                if self.read_buf.is_empty() {
                    return Ok(None);
                }
                return Err(ClusterConnError::ClosedMidFrame { buffered: self.read_buf.len() });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Purpose;
    use crate::faults::{Direction, FaultMetrics, FaultRules, Faults, FrameAction, FrameRule};
    use tokio::io::duplex;

    #[tokio::test]
    async fn given_a_peer_that_closes_mid_frame_when_receiving_should_say_so() {
        let (mut a, b) = duplex(1024);
        a.write_all(&[0, 0, 0, 9, 0x17, 1, 2]).await.expect("write half a ping");
        drop(a);
        let result = ClusterConn::new(b, 1024).recv().await;
        assert!(matches!(result, Err(ClusterConnError::ClosedMidFrame { buffered: 7 })), "{result:?}");
    }

    #[tokio::test]
    async fn given_a_peer_that_closes_between_frames_when_receiving_should_yield_none() {
        let (a, b) = duplex(1024);
        let mut sender = ClusterConn::new(a, 1024);
        sender.send(&ClusterFrame::Pong { at: 3 }).await.expect("send pong");
        drop(sender);
        let mut receiver = ClusterConn::new(b, 1024);
        assert_eq!(receiver.recv().await.expect("receive pong"), Some(ClusterFrame::Pong { at: 3 }));
        assert_eq!(receiver.recv().await.expect("receive end"), None);
    }

    /// Fault rules, and a tap on them for a connection with `node-b` for replication.
    fn tapped(rules: Vec<FrameRule>) -> (Faults, Option<Tap>) {
        let faults = Faults::new(FaultMetrics::default());
        faults.set(FaultRules { frames: rules, disk: None }).expect("valid rules");
        let tap = faults.tap("node-b", None, Purpose::Replicate);
        (faults, tap)
    }

    fn ping(at: u64) -> ClusterFrame {
        ClusterFrame::Ping { at }
    }

    async fn received(conn: &mut ClusterConn<tokio::io::DuplexStream>, count: usize) -> Vec<ClusterFrame> {
        let mut frames = Vec::new();
        for _ in 0..count {
            frames.push(conn.recv().await.expect("receive").expect("a frame"));
        }
        frames
    }

    #[tokio::test]
    async fn given_fault_rules_on_sent_frames_should_drop_duplicate_and_reorder_them_on_the_wire() {
        let (a, b) = duplex(64 * 1024);
        let rules = vec![
            FrameRule { frames: vec!["ping".into()], count: Some(1), ..FrameRule::new(FrameAction::Drop) },
            FrameRule { frames: vec!["pong".into()], count: Some(1), ..FrameRule::new(FrameAction::Duplicate) },
            FrameRule { frames: vec!["ack".into()], count: Some(1), ..FrameRule::new(FrameAction::Reorder) },
        ];
        let (_faults, tap) = tapped(rules);
        let mut sender = ClusterConn::new(a, 1024);
        sender.set_faults(tap);
        let ack = |offset| ClusterFrame::Ack { seq: 1, offset, records: 2 };
        for frame in [ping(1), ClusterFrame::Pong { at: 2 }, ack(9), ping(3), ack(10), ping(4)] {
            sender.send(&frame).await.expect("send");
        }
        let mut receiver = ClusterConn::new(b, 1024);
        let got = received(&mut receiver, 6).await;
        assert_eq!(got, vec![ClusterFrame::Pong { at: 2 }, ClusterFrame::Pong { at: 2 }, ping(3), ack(10), ack(9), ping(4)]);
    }

    #[tokio::test]
    async fn given_fault_rules_on_received_frames_should_hand_on_what_they_let_through_in_their_order() {
        let (a, b) = duplex(64 * 1024);
        let rules = vec![
            FrameRule { direction: Some(Direction::In), frames: vec!["pong".into()], ..FrameRule::new(FrameAction::Drop) },
            FrameRule { direction: Some(Direction::In), count: Some(1), ..FrameRule::new(FrameAction::Reorder) },
        ];
        let (faults, tap) = tapped(rules);
        let mut sender = ClusterConn::new(a, 1024);
        for frame in [ping(1), ClusterFrame::Pong { at: 2 }, ping(3), ping(4)] {
            sender.send(&frame).await.expect("send");
        }
        let mut receiver = ClusterConn::new(b, 1024);
        receiver.set_faults(tap);
        assert_eq!(received(&mut receiver, 3).await, vec![ping(3), ping(1), ping(4)]);
        faults.clear().expect("heal");
        sender.send(&ClusterFrame::Pong { at: 5 }).await.expect("send");
        assert_eq!(receiver.recv().await.expect("receive"), Some(ClusterFrame::Pong { at: 5 }), "healed");
    }

    #[tokio::test]
    async fn given_a_delay_should_write_the_frame_no_sooner() {
        let (a, b) = duplex(64 * 1024);
        let delay = crate::config::HumanDuration::millis(150);
        let (_faults, tap) = tapped(vec![FrameRule { delay: Some(delay), count: Some(1), ..FrameRule::new(FrameAction::Delay) }]);
        let mut sender = ClusterConn::new(a, 1024);
        sender.set_faults(tap);
        let started = tokio::time::Instant::now();
        sender.send(&ping(1)).await.expect("send");
        assert!(started.elapsed() >= delay.get(), "{:?}", started.elapsed());
        sender.send(&ping(2)).await.expect("send");
        assert_eq!(received(&mut ClusterConn::new(b, 1024), 2).await, vec![ping(1), ping(2)]);
    }

    #[tokio::test]
    async fn given_a_split_connection_should_keep_the_fault_rules_on_both_halves() {
        let (a, b) = duplex(64 * 1024);
        let rules = vec![
            FrameRule { direction: Some(Direction::Out), count: Some(1), ..FrameRule::new(FrameAction::Duplicate) },
            FrameRule { direction: Some(Direction::In), count: Some(1), ..FrameRule::new(FrameAction::Drop) },
        ];
        let (_faults, tap) = tapped(rules);
        let mut tapped = ClusterConn::new(a, 1024);
        tapped.set_faults(tap);
        let (mut reader, mut writer) = tapped.split();
        let mut peer = ClusterConn::new(b, 1024);
        writer.send(&ping(1)).await.expect("send");
        assert_eq!(received(&mut peer, 2).await, vec![ping(1), ping(1)]);
        peer.send(&ping(2)).await.expect("send");
        peer.send(&ping(3)).await.expect("send");
        assert_eq!(reader.recv().await.expect("receive"), Some(ping(3)), "the first was dropped");
        writer.shutdown().await.expect("shut down");
        assert_eq!(peer.recv().await.expect("receive end"), None);
    }
}
