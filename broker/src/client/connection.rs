//! The plumbing of one client connection: the CONNECT handshake, a writer task that
//! batches queued frames into socket writes and sends heart-beats, and a reader task that
//! routes what arrives (RECEIPTs to their waiters, MESSAGEs to their subscription's
//! channel, an ERROR to everyone).
//!
//! The reader never waits on the user: message channels are unbounded (the broker's
//! prefetch window bounds them), so a consumer that is slow to call `recv` cannot hold
//! up RECEIPTs for the rest of the connection. Nothing here knows the public API's
//! shape beyond [`Message`].

use super::error::ClientError;
use super::message::Message;
use super::options::{ClientOptions, Heartbeat};
use super::url::StompUrl;
use crate::stomp::{CodecError, Command, Frame, HeartBeat, Inbound, Limits, StompCodec, Version};
use bytes::BytesMut;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};

/// Frames queued for the writer before `send` waits: enough to keep a pipelining
/// producer's socket busy, small enough to bound memory.
const OUTBOX_FRAMES: usize = 1024;
/// Bytes gathered from the outbox into one socket write.
const BATCH_BYTES: usize = 256 * 1024;
/// How many negotiated heart-beat periods of silence the reader tolerates, for network
/// jitter, before it gives the broker up.
const HEARTBEAT_GRACE: u32 = 3;

/// Why a connection ended. Kept (cloneable) so every later call can report it.
#[derive(Debug, Clone)]
pub(super) enum CloseReason {
    /// The user disconnected.
    Disconnected,
    /// The broker closed the socket without an ERROR.
    Eof,
    Broker(String),
    Io(std::io::ErrorKind, String),
    Protocol(CodecError),
    Silent(Duration),
}

impl CloseReason {
    pub(super) fn to_error(&self) -> ClientError {
        match self {
            CloseReason::Disconnected | CloseReason::Eof => ClientError::Closed,
            CloseReason::Broker(message) => ClientError::Broker { message: message.clone() },
            CloseReason::Io(kind, text) => ClientError::Io(std::io::Error::new(*kind, text.clone())),
            CloseReason::Protocol(e) => ClientError::Protocol(e.clone()),
            CloseReason::Silent(after) => {
                ClientError::Timeout { what: format!("a heart-beat from the broker ({after:?} of silence)") }
            }
        }
    }
}

type ReceiptSender = oneshot::Sender<Result<(), ClientError>>;

/// Who waits for what on one connection; shared by the reader, the writer and the API.
pub(super) struct Router {
    state: Mutex<RouterState>,
    closed: watch::Sender<bool>,
}

#[derive(Default)]
struct RouterState {
    receipts: HashMap<String, ReceiptSender>,
    subscriptions: HashMap<String, mpsc::UnboundedSender<Message>>,
    closed: Option<CloseReason>,
    /// DISCONNECT was sent: the broker closing the socket is then the expected end.
    disconnecting: bool,
}

impl Router {
    pub(super) fn new() -> Arc<Router> {
        Arc::new(Router { state: Mutex::new(RouterState::default()), closed: watch::Sender::new(false) })
    }

    fn lock(&self) -> MutexGuard<'_, RouterState> {
        // The lock is never held across a panic-prone call; a poisoned lock still holds
        // consistent maps.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The error for a call made on a closed connection, or `Ok` while it is open.
    pub(super) fn check_open(&self) -> Result<(), ClientError> {
        match &self.lock().closed {
            Some(reason) => Err(reason.to_error()),
            None => Ok(()),
        }
    }

    pub(super) fn close_reason(&self) -> Option<CloseReason> {
        self.lock().closed.clone()
    }

    pub(super) fn register_receipt(
        &self,
        id: String,
    ) -> Result<oneshot::Receiver<Result<(), ClientError>>, ClientError> {
        let mut state = self.lock();
        if let Some(reason) = &state.closed {
            return Err(reason.to_error());
        }
        let (tx, rx) = oneshot::channel();
        state.receipts.insert(id, tx);
        Ok(rx)
    }

    pub(super) fn forget_receipt(&self, id: &str) {
        self.lock().receipts.remove(id);
    }

    pub(super) fn add_subscription(&self, id: String) -> Result<mpsc::UnboundedReceiver<Message>, ClientError> {
        let mut state = self.lock();
        if let Some(reason) = &state.closed {
            return Err(reason.to_error());
        }
        let (tx, rx) = mpsc::unbounded_channel();
        state.subscriptions.insert(id, tx);
        Ok(rx)
    }

    pub(super) fn remove_subscription(&self, id: &str) {
        self.lock().subscriptions.remove(id);
    }

    /// Notes that DISCONNECT is on its way, so the socket closing after its RECEIPT counts
    /// as a clean end rather than the broker going away.
    pub(super) fn begin_disconnect(&self) {
        self.lock().disconnecting = true;
    }

    /// Ends the connection for everyone: pending receipts fail with `reason`, message
    /// channels end once drained, both tasks stop. The first reason wins.
    pub(super) fn close(&self, reason: CloseReason) {
        let (receipts, error) = {
            let mut state = self.lock();
            if state.closed.is_some() {
                return;
            }
            let reason = match reason {
                CloseReason::Eof if state.disconnecting => CloseReason::Disconnected,
                other => other,
            };
            state.subscriptions.clear();
            state.closed = Some(reason.clone());
            (std::mem::take(&mut state.receipts), reason)
        };
        match &error {
            CloseReason::Disconnected => tracing::debug!("disconnected from the broker"),
            other => tracing::debug!(reason = ?other, "connection to the broker ended"),
        }
        for (_, waiter) in receipts {
            let _ = waiter.send(Err(error.to_error()));
        }
        self.closed.send_replace(true);
    }

    /// Routes one inbound frame; `Some` ends the connection.
    fn dispatch(&self, frame: Frame) -> Option<CloseReason> {
        match frame.command {
            Command::Message => {
                let message = Message::from_frame(frame);
                let state = self.lock();
                match state.subscriptions.get(&message.subscription) {
                    Some(channel) => {
                        let _ = channel.send(message);
                    }
                    None => tracing::debug!(
                        subscription = %message.subscription,
                        message_id = %message.message_id,
                        "dropping MESSAGE for a subscription no longer open"
                    ),
                }
                None
            }
            Command::Receipt => {
                let id = frame.get("receipt-id").unwrap_or_default();
                match self.lock().receipts.remove(id) {
                    Some(waiter) => {
                        let _ = waiter.send(Ok(()));
                    }
                    None => tracing::debug!(receipt = %id, "RECEIPT nobody waits for (timed out?)"),
                }
                None
            }
            Command::Error => Some(CloseReason::Broker(error_message(&frame))),
            other => {
                tracing::debug!(command = %other, "ignoring unexpected frame from the broker");
                None
            }
        }
    }
}

/// The broker's explanation in an ERROR frame: its `message` header, else its body.
pub(super) fn error_message(frame: &Frame) -> String {
    match frame.get("message") {
        Some(m) if !m.is_empty() => m.to_string(),
        _ => String::from_utf8_lossy(&frame.body).trim().to_string(),
    }
}

/// A connection that completed its handshake, before its tasks start.
pub(super) struct Established {
    stream: TcpStream,
    /// Bytes that arrived after CONNECTED.
    buf: BytesMut,
    pub(super) version: Version,
    /// How often the client must send something.
    send_every: Option<Duration>,
    /// How often the broker promised to send something.
    expect_every: Option<Duration>,
    pub(super) session: Option<String>,
    pub(super) server: Option<String>,
}

/// Opens a TCP connection to `member` and exchanges CONNECT/CONNECTED.
pub(super) async fn handshake(member: &StompUrl, options: &ClientOptions) -> Result<Established, ClientError> {
    let addr = member.address();
    let limit = options.connect_timeout;
    let connecting = TcpStream::connect(addr.as_str());
    let mut stream = match tokio::time::timeout(limit, connecting).await {
        Err(_) => return Err(ClientError::Timeout { what: format!("a TCP connection to {addr} ({limit:?})") }),
        Ok(Err(source)) => return Err(ClientError::Connect { addr, source }),
        Ok(Ok(s)) => s,
    };
    // Small frames (ACKs, RECEIPT-gated sends) must not wait for Nagle.
    let _ = stream.set_nodelay(true);

    let mut codec = StompCodec::new(Limits::default());
    let mut out = BytesMut::new();
    codec.encode(&connect_frame(member, options), &mut out);
    stream.write_all(&out).await.map_err(ClientError::Io)?;

    let mut buf = BytesMut::with_capacity(16 * 1024);
    let reply = match tokio::time::timeout(limit, read_first_frame(&mut stream, &mut codec, &mut buf)).await {
        Err(_) => return Err(ClientError::Timeout { what: format!("CONNECTED from {addr} ({limit:?})") }),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(None)) => {
            let source = std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the broker closed the connection during the STOMP handshake",
            );
            return Err(ClientError::Connect { addr, source });
        }
        Ok(Ok(Some(frame))) => frame,
    };
    match reply.command {
        Command::Connected => {}
        Command::Error => return Err(ClientError::Refused { message: error_message(&reply) }),
        got => return Err(ClientError::UnexpectedFrame { expected: "CONNECTED", got }),
    }
    // A CONNECTED without `version` comes from a 1.0 broker.
    let version = reply.get("version").and_then(Version::parse).unwrap_or(Version::V1_0);
    let (send_every, expect_every) = negotiate_heartbeat(options.heartbeat, reply.get("heart-beat"));
    tracing::debug!(%addr, %version, ?send_every, ?expect_every, "connected to broker");
    Ok(Established {
        stream,
        buf,
        version,
        send_every,
        expect_every,
        session: reply.get("session").map(str::to_string),
        server: reply.get("server").map(str::to_string),
    })
}

fn connect_frame(member: &StompUrl, options: &ClientOptions) -> Frame {
    let versions: Vec<&str> = options.versions.iter().map(|v| v.as_str()).collect();
    let host = options.host.as_deref().unwrap_or(&member.host);
    let mut frame =
        Frame::new(Command::Connect).header("accept-version", versions.join(",")).header("host", host).header(
            "heart-beat",
            format!("{},{}", options.heartbeat.send.as_millis(), options.heartbeat.receive.as_millis()),
        );
    if let Some(login) = options.login.as_ref().or(member.login.as_ref()) {
        frame = frame.header("login", login.as_str());
    }
    if let Some(passcode) = options.passcode.as_ref().or(member.passcode.as_ref()) {
        frame = frame.header("passcode", passcode.as_str());
    }
    frame
}

/// The intervals both sides agreed on (STOMP 1.2, "Heart-beating"): each direction is
/// on only when both offer it, at the larger of the two values. Returns (how often the
/// client sends, how often the broker sends).
pub(super) fn negotiate_heartbeat(offered: Heartbeat, connected: Option<&str>) -> (Option<Duration>, Option<Duration>) {
    let ours = HeartBeat { can_send: offered.send, wants: offered.receive };
    HeartBeat::negotiate(ours, HeartBeat::parse(connected))
}

async fn read_first_frame(
    stream: &mut TcpStream,
    codec: &mut StompCodec,
    buf: &mut BytesMut,
) -> Result<Option<Frame>, ClientError> {
    loop {
        while let Some(item) = codec.decode(buf).map_err(ClientError::Protocol)? {
            if let Inbound::Frame(frame) = item {
                return Ok(Some(frame));
            }
        }
        if stream.read_buf(buf).await.map_err(ClientError::Io)? == 0 {
            return Ok(None);
        }
    }
}

/// Starts the reader and writer tasks; returns the writer's outbox.
pub(super) fn start(established: Established, router: &Arc<Router>) -> mpsc::Sender<Frame> {
    let Established { stream, buf, version, send_every, expect_every, .. } = established;
    let (rd, wr) = stream.into_split();
    let (outbox, rx) = mpsc::channel(OUTBOX_FRAMES);
    let mut read_codec = StompCodec::new(Limits::default());
    read_codec.set_version(version);
    let mut write_codec = StompCodec::new(Limits::default());
    write_codec.set_version(version);
    tokio::spawn(read_loop(rd, read_codec, buf, expect_every, Arc::clone(router)));
    tokio::spawn(write_loop(wr, write_codec, rx, send_every, Arc::clone(router)));
    outbox
}

async fn read_loop(
    mut rd: OwnedReadHalf,
    mut codec: StompCodec,
    mut buf: BytesMut,
    expect_every: Option<Duration>,
    router: Arc<Router>,
) {
    let silence_limit = expect_every.map(|d| d * HEARTBEAT_GRACE);
    let mut closed = router.closed.subscribe();
    let reason = 'session: loop {
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(Inbound::Heartbeat)) => {}
                Ok(Some(Inbound::Frame(frame))) => {
                    if let Some(reason) = router.dispatch(frame) {
                        break 'session reason;
                    }
                }
                Ok(None) => break,
                Err(e) => break 'session CloseReason::Protocol(e),
            }
        }
        let read = async {
            match silence_limit {
                Some(limit) => tokio::time::timeout(limit, rd.read_buf(&mut buf)).await.ok(),
                None => Some(rd.read_buf(&mut buf).await),
            }
        };
        tokio::select! {
            biased;
            _ = closed.wait_for(|c| *c) => return,
            r = read => match r {
                None => break CloseReason::Silent(silence_limit.unwrap_or_default()),
                Some(Ok(0)) => break CloseReason::Eof,
                Some(Ok(_)) => {}
                Some(Err(e)) => break CloseReason::Io(e.kind(), e.to_string()),
            },
        }
    };
    router.close(reason);
}

async fn write_loop(
    mut wr: OwnedWriteHalf,
    codec: StompCodec,
    mut outbox: mpsc::Receiver<Frame>,
    send_every: Option<Duration>,
    router: Arc<Router>,
) {
    let mut closed = router.closed.subscribe();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        let next = async {
            match send_every {
                Some(every) => tokio::time::timeout(every, outbox.recv()).await.ok(),
                None => Some(outbox.recv().await),
            }
        };
        let first = tokio::select! {
            biased;
            _ = closed.wait_for(|c| *c) => break,
            next = next => next,
        };
        match first {
            // Idle for a heart-beat period.
            None => buf.extend_from_slice(b"\n"),
            // Every handle on the connection was dropped.
            Some(None) => break,
            Some(Some(frame)) => {
                codec.encode(&frame, &mut buf);
                while buf.len() < BATCH_BYTES {
                    match outbox.try_recv() {
                        Ok(frame) => codec.encode(&frame, &mut buf),
                        Err(_) => break,
                    }
                }
            }
        }
        if let Err(e) = wr.write_all(&buf).await {
            router.close(CloseReason::Io(e.kind(), e.to_string()));
            break;
        }
        buf.clear();
    }
    let _ = wr.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[rstest]
    #[case(Heartbeat { send: S(10), receive: S(10) }, Some("5000,20000"), (Some(S(20)), Some(S(10))))]
    #[case(Heartbeat { send: S(10), receive: S(10) }, Some("0,0"), (None, None))]
    #[case(Heartbeat { send: S(10), receive: S(10) }, None, (None, None))]
    #[case(Heartbeat::OFF, Some("1000,1000"), (None, None))]
    #[case(Heartbeat { send: S(1), receive: S(0) }, Some("1000,3000"), (Some(S(3)), None))]
    #[case(Heartbeat { send: S(1), receive: S(1) }, Some("garbage"), (None, None))]
    fn given_offers_when_negotiated_should_use_larger_value_only_when_both_agree(
        #[case] offered: Heartbeat,
        #[case] connected: Option<&str>,
        #[case] expected: (Option<Duration>, Option<Duration>),
    ) {
        assert_eq!(negotiate_heartbeat(offered, connected), expected);
    }

    #[test]
    fn given_error_without_message_header_should_use_body() {
        let frame = Frame::new(Command::Error).with_body("bad thing\n");
        assert_eq!(error_message(&frame), "bad thing");
    }
}
