//! One cluster connection: a byte stream, the codec and its buffers, so frames can be
//! sent and received. It carries frames and nothing else: it does not authenticate
//! (see `handshake`), time out, or decide what a frame means.

use super::frame::{ClusterCodec, ClusterCodecError, ClusterFrame};
use bytes::BytesMut;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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

/// A cluster connection over any byte stream (TCP, TLS, an in-memory pipe).
#[derive(Debug)]
pub struct ClusterConn<S> {
    stream: S,
    codec: ClusterCodec,
    read_buf: BytesMut,
    write_buf: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> ClusterConn<S> {
    /// Frames longer than `max_frame` bytes are refused in both directions.
    pub fn new(stream: S, max_frame: usize) -> ClusterConn<S> {
        ClusterConn::from_parts(stream, ClusterCodec::new(max_frame), BytesMut::with_capacity(READ_CHUNK))
    }

    /// Resumes a connection whose `read_buf` may already hold bytes of the next frames.
    pub fn from_parts(stream: S, codec: ClusterCodec, read_buf: BytesMut) -> ClusterConn<S> {
        ClusterConn { stream, codec, read_buf, write_buf: BytesMut::new() }
    }

    /// Encodes and writes one frame, then flushes. Not cancel-safe: a cancelled send
    /// leaves the stream mid-frame, so the connection must then be dropped.
    pub async fn send(&mut self, frame: &ClusterFrame) -> Result<(), ClusterConnError> {
        self.queue(frame)?;
        self.flush().await
    }

    /// Encodes a frame into the write buffer without writing it, so a batch of frames
    /// goes out in one write on the next [`flush`](Self::flush).
    pub fn queue(&mut self, frame: &ClusterFrame) -> Result<(), ClusterConnError> {
        self.codec
            .encode(frame, &mut self.write_buf)
            .map_err(|source| ClusterConnError::Encode { frame: frame.name(), source })
    }

    /// Writes everything queued and flushes the stream.
    pub async fn flush(&mut self) -> Result<(), ClusterConnError> {
        self.stream.write_all(&self.write_buf).await.map_err(|source| ClusterConnError::Write { source })?;
        self.write_buf.clear();
        self.stream.flush().await.map_err(|source| ClusterConnError::Write { source })
    }

    /// The next frame; `Ok(None)` when the peer closed the connection between frames.
    /// Cancel-safe: bytes already read stay buffered for the next call.
    pub async fn recv(&mut self) -> Result<Option<ClusterFrame>, ClusterConnError> {
        loop {
            if let Some(frame) =
                self.codec.decode(&mut self.read_buf).map_err(|source| ClusterConnError::Decode { source })?
            {
                return Ok(Some(frame));
            }
            if self.read_buf.capacity() - self.read_buf.len() < MIN_READ {
                self.read_buf.reserve(READ_CHUNK);
            }
            let read =
                self.stream.read_buf(&mut self.read_buf).await.map_err(|source| ClusterConnError::Read { source })?;
            if read == 0 {
                if self.read_buf.is_empty() {
                    return Ok(None);
                }
                return Err(ClusterConnError::ClosedMidFrame { buffered: self.read_buf.len() });
            }
        }
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
    /// but not flushed are dropped.
    pub fn into_parts(self) -> (S, ClusterCodec, BytesMut) {
        (self.stream, self.codec, self.read_buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
