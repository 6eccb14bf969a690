//! The plumbing of one client connection: the CONNECT handshake, a writer task that
//! batches queued frames into socket writes and sends heart-beats, and a reader task that
//! hands what arrives to the [`Router`]. Both stop at the first failure and report it on
//! the connection's [`Link`]; deciding what happens next (close the session or fail
//! over) is the supervisor's job, not theirs.
//!
//! The reader never waits on the user: message channels are unbounded (the broker's
//! prefetch window bounds them), so a consumer that is slow to call `recv` cannot hold
//! up RECEIPTs for the rest of the connection. The writer takes the outbox for the
//! length of one connection and hands it back when the connection ends, so frames queued
//! meanwhile wait for the next one.

use super::error::ClientError;
use super::options::{ClientOptions, Heartbeat};
use super::tls;
use super::router::{error_message, CloseReason, Generation, Outbound, Router};
use super::url::StompUrl;
use crate::stomp::{Command, Frame, HeartBeat, Inbound, Limits, StompCodec, Version};
use crate::tls::Stream;
use bytes::BytesMut;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinHandle};
use tokio_util::sync::CancellationToken;

/// Frames queued for the writer before `send` waits: enough to keep a pipelining
/// producer's socket busy, small enough to bound memory.
pub(super) const OUTBOX_FRAMES: usize = 1024;
/// Bytes gathered from the outbox into one socket write.
const BATCH_BYTES: usize = 256 * 1024;
/// How many negotiated heart-beat periods of silence the reader tolerates, for network
/// jitter, before it gives the broker up.
const HEARTBEAT_GRACE: u32 = 3;

/// A connection that completed its handshake, before its tasks start.
pub(super) struct Established {
    stream: Stream,
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

/// Opens a TCP connection to `member`, TLS over it for a `stomp+ssl://` member, and
/// exchanges CONNECT/CONNECTED.
pub(super) async fn handshake(member: &StompUrl, options: &ClientOptions) -> Result<Established, ClientError> {
    let addr = member.address();
    let limit = options.connect_timeout;
    let connecting = TcpStream::connect(addr.as_str());
    let tcp = match tokio::time::timeout(limit, connecting).await {
        Err(_) => return Err(ClientError::Timeout { what: format!("a TCP connection to {addr} ({limit:?})") }),
        Ok(Err(source)) => return Err(ClientError::Connect { addr, source }),
        Ok(Ok(s)) => s,
    };
    // Small frames (ACKs, RECEIPT-gated sends) must not wait for Nagle.
    let _ = tcp.set_nodelay(true);
    let mut stream = tls::wrap(tcp, member, &options.tls, limit).await?;
    // With TLS 1.3 a broker refusing this client's certificate says so after the
    // handshake: its alert is what the first write or read fails with.
    let name = options.tls.server_name.as_deref().unwrap_or(&member.host);
    let tls_said = |e: std::io::Error| match tls::explain(&e, name, &options.tls) {
        Some(reason) => ClientError::Tls { addr: member.address(), reason },
        None => ClientError::Io(e),
    };

    let mut codec = StompCodec::new(Limits::default());
    let mut out = BytesMut::new();
    codec.encode(&connect_frame(member, options), &mut out);
    stream.write_all(&out).await.map_err(tls_said)?;
    stream.flush().await.map_err(tls_said)?;

    let mut buf = BytesMut::with_capacity(16 * 1024);
    let reply = match tokio::time::timeout(limit, read_first_frame(&mut stream, &mut codec, &mut buf)).await {
        Err(_) => return Err(ClientError::Timeout { what: format!("CONNECTED from {addr} ({limit:?})") }),
        Ok(Err(FirstFrameError::Io(e))) => return Err(tls_said(e)),
        Ok(Err(FirstFrameError::Client(e))) => return Err(e),
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

enum FirstFrameError {
    Io(std::io::Error),
    Client(ClientError),
}

async fn read_first_frame(
    stream: &mut Stream,
    codec: &mut StompCodec,
    buf: &mut BytesMut,
) -> Result<Option<Frame>, FirstFrameError> {
    loop {
        while let Some(item) = codec.decode(buf).map_err(|e| FirstFrameError::Client(ClientError::Protocol(e)))? {
            if let Inbound::Frame(frame) = item {
                return Ok(Some(frame));
            }
        }
        if stream.read_buf(buf).await.map_err(FirstFrameError::Io)? == 0 {
            return Ok(None);
        }
    }
}

/// One connection's end: the first reason reported by its reader or writer, or by the
/// supervisor stopping it. Both tasks stop as soon as it is set.
pub(super) struct Link {
    lost: CancellationToken,
    reason: Mutex<Option<CloseReason>>,
}

impl Link {
    fn new() -> Arc<Link> {
        Arc::new(Link { lost: CancellationToken::new(), reason: Mutex::new(None) })
    }

    /// Ends the connection with `reason` unless it already ended.
    pub(super) fn fail(&self, reason: CloseReason) {
        let mut slot = self.reason.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if slot.is_none() {
            *slot = Some(reason);
        }
        drop(slot);
        self.lost.cancel();
    }

    /// Resolves once the connection has ended.
    pub(super) async fn lost(&self) {
        self.lost.cancelled().await;
    }

    pub(super) fn reason(&self) -> CloseReason {
        let slot = self.reason.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        slot.clone().unwrap_or(CloseReason::Eof)
    }
}

/// The reader and writer tasks of one connection.
pub(super) struct Running {
    pub(super) link: Arc<Link>,
    reader: JoinHandle<()>,
    writer: JoinHandle<mpsc::Receiver<Outbound>>,
}

impl Running {
    /// Waits for both tasks to stop (after [`Link::lost`]) and takes the outbox back for
    /// the next connection; frames still in it were never written.
    pub(super) async fn join(self) -> Result<mpsc::Receiver<Outbound>, JoinError> {
        self.reader.await?;
        self.writer.await
    }
}

/// Starts the reader and writer tasks of connection `generation`. The writer sends
/// `replay` first, then whatever the outbox holds that is not bound to another
/// generation.
pub(super) fn start(
    established: Established,
    generation: Generation,
    router: &Arc<Router>,
    outbox: mpsc::Receiver<Outbound>,
    replay: Vec<Frame>,
) -> Running {
    let Established { stream, buf, version, send_every, expect_every, .. } = established;
    let mut read_codec = StompCodec::new(Limits::default());
    read_codec.set_version(version);
    let mut write_codec = StompCodec::new(Limits::default());
    write_codec.set_version(version);
    let link = Link::new();
    let writer = Writer { codec: write_codec, generation, router: Arc::clone(router), link: Arc::clone(&link) };
    let reading = Reading { codec: read_codec, buf, expect_every, router: Arc::clone(router), link: Arc::clone(&link) };
    let (reader, writer) = match stream {
        // Plain TCP splits without a lock between the halves.
        Stream::Plain(tcp) => {
            let (rd, wr) = tcp.into_split();
            (tokio::spawn(reading.run(rd)), tokio::spawn(writer.run(wr, outbox, replay, send_every)))
        }
        tls => {
            let (rd, wr) = tokio::io::split(tls);
            (tokio::spawn(reading.run(rd)), tokio::spawn(writer.run(wr, outbox, replay, send_every)))
        }
    };
    Running { link, reader, writer }
}

/// What the reader task starts with.
struct Reading {
    codec: StompCodec,
    /// Bytes that arrived after CONNECTED.
    buf: BytesMut,
    expect_every: Option<Duration>,
    router: Arc<Router>,
    link: Arc<Link>,
}

impl Reading {
    async fn run(self, rd: impl AsyncRead + Unpin) {
        let Reading { codec, buf, expect_every, router, link } = self;
        read_loop(rd, codec, buf, expect_every, router, link).await;
    }
}

async fn read_loop(
    mut rd: impl AsyncRead + Unpin,
    mut codec: StompCodec,
    mut buf: BytesMut,
    expect_every: Option<Duration>,
    router: Arc<Router>,
    link: Arc<Link>,
) {
    let silence_limit = expect_every.map(|d| d * HEARTBEAT_GRACE);
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
            _ = link.lost() => return,
            r = read => match r {
                None => break CloseReason::Silent(silence_limit.unwrap_or_default()),
                Some(Ok(0)) => break CloseReason::Eof,
                Some(Ok(_)) => {}
                Some(Err(e)) => break CloseReason::Io(e.kind(), e.to_string()),
            },
        }
    };
    link.fail(reason);
}

struct Writer {
    codec: StompCodec,
    generation: Generation,
    router: Arc<Router>,
    link: Arc<Link>,
}

impl Writer {
    async fn run(
        self,
        mut wr: impl AsyncWrite + Unpin,
        mut outbox: mpsc::Receiver<Outbound>,
        replay: Vec<Frame>,
        send_every: Option<Duration>,
    ) -> mpsc::Receiver<Outbound> {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        for frame in &replay {
            self.encode(frame, &mut buf);
        }
        loop {
            if buf.is_empty() {
                let next = async {
                    match send_every {
                        Some(every) => tokio::time::timeout(every, outbox.recv()).await.ok(),
                        None => Some(outbox.recv().await),
                    }
                };
                let first = tokio::select! {
                    biased;
                    _ = self.link.lost() => break,
                    next = next => next,
                };
                match first {
                    // Idle for a heart-beat period.
                    None => buf.extend_from_slice(b"\n"),
                    // Every handle on the client was dropped: nobody is left to talk for.
                    Some(None) => {
                        self.link.fail(CloseReason::Disconnected);
                        break;
                    }
                    Some(Some(item)) => self.push(item, &mut buf),
                }
                while buf.len() < BATCH_BYTES {
                    match outbox.try_recv() {
                        Ok(item) => self.push(item, &mut buf),
                        Err(_) => break,
                    }
                }
                if buf.is_empty() {
                    continue;
                }
            }
            // A broker that stops reading must not keep this task (and a failover) waiting.
            let written = tokio::select! {
                biased;
                _ = self.link.lost() => break,
                // TLS keeps what the socket did not take until flushed.
                written = async { wr.write_all(&buf).await?; wr.flush().await } => written,
            };
            if let Err(e) = written {
                self.link.fail(CloseReason::Io(e.kind(), e.to_string()));
                break;
            }
            buf.clear();
        }
        let _ = wr.shutdown().await;
        outbox
    }

    /// Encodes a queued frame, unless it belongs to another connection's broker.
    fn push(&self, item: Outbound, buf: &mut BytesMut) {
        match item.bound {
            Some(bound) if bound != self.generation => tracing::debug!(
                command = %item.frame.command,
                made_for = bound,
                connection = self.generation,
                "dropping a frame made for a lost connection"
            ),
            _ => self.encode(&item.frame, buf),
        }
    }

    fn encode(&self, frame: &Frame, buf: &mut BytesMut) {
        if self.router.is_failover() {
            if let Some(receipt) = frame.get("receipt") {
                self.router.mark_written(receipt);
            }
        }
        self.codec.encode(frame, buf);
    }
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
