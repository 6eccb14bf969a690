//! One client connection, top to bottom: handshake (CONNECT, version, login, heart-beats),
//! the session loop (frames in, effects applied in frame order), and the close (consumers
//! removed so their in-flight messages are redelivered).
//!
//! SENDs are handed to the engine (`Broker::accept`, which journals persistent ones) as
//! soon as they are read, so a pipelining producer shares group commits; their effects
//! (publish, RECEIPT) are applied strictly in frame order once durable, through `pending`.
//! The connection builds no journal records itself: sends, transactions and acks all go
//! through the engine's accept calls.
//!
//! Authorization (`auth.permissions`) is checked as each SEND and SUBSCRIBE is read,
//! before the engine sees it: a denied frame gets an ERROR naming the destination and the
//! missing permission, and nothing of it is stored or delivered. ACK and NACK go through
//! the subscription already authorized. A `SUBSCRIBE` with `browser:true` streams what a
//! queue holds without consuming it (see [`Browser`]).
//!
//! Everything a client can make the connection hold is bounded: frames still arriving
//! (`stomp.maxPartialFrameBytes`, broker-wide), frames read but not applied (`MAX_PENDING`),
//! receipts it does not read (`stomp.maxOutgoingBytes`), subscriptions and transactions
//! (per connection), messages accepted but not yet enqueued (counted against the memory
//! limits from the moment they are read). And nothing waits forever: CONNECT, a frame
//! once begun, a write, and an idle line each have a deadline.

mod durable;

use super::writer::{Outgoing, Writer};
use crate::engine::accept::{AcceptError, Acceptance, Commit, Durable, Incoming, Prepared, Settled};
use crate::engine::dedup;
use crate::engine::message::{parse_ack_token, ConsumerKey, Message};
use crate::engine::metrics::Limit;
use crate::engine::queue::{AckError, AckMode, ConsumerHandle, Outbound, Queue};
use crate::engine::{Broker, DestinationError, Target, Topic};
use crate::journal::MessageId;
use crate::metrics::Metrics;
use crate::report::error_chain;
use crate::security::{Decisions, Denied, Permission, Principal};
use crate::stomp::{CodecError, Command, Frame, HeartBeat, Inbound, Limits, StompCodec, Version};
use crate::tls::{Stream, TlsContext};
use bytes::BytesMut;
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Why a connection ends with an ERROR frame. The message goes in the `message` header.
#[derive(Debug, Error)]
pub enum FrameError {
    #[error("malformed frame: {0}")]
    Codec(#[from] CodecError),
    #[error("{0} frame requires a {1} header")]
    MissingHeader(Command, &'static str),
    #[error("{0}")]
    Destination(#[from] DestinationError),
    #[error("unsupported STOMP version; this broker speaks 1.0, 1.1 and 1.2")]
    Version,
    #[error("a TLS handshake arrived on a plaintext STOMP port (tls.stomp.enabled is off)")]
    TlsOnPlaintextPort,
    #[error("the client certificate logs in as {user:?}, not the CONNECT login {login:?}")]
    CertificateUser { login: String, user: String },
    #[error("authentication failed for login {0:?}")]
    Auth(String),
    #[error("{0} is not a client frame")]
    UnexpectedCommand(Command),
    #[error("subscription id {0:?} already in use on this connection")]
    DuplicateSubscription(String),
    #[error("no subscription with id {0:?}")]
    UnknownSubscription(String),
    #[error("invalid ack mode {0:?} (use auto, client or client-individual)")]
    AckMode(String),
    #[error("invalid acknowledgement {id:?}: {source}")]
    Ack { id: String, source: AckError },
    #[error("transaction {0:?} is not active")]
    UnknownTransaction(String),
    #[error("transaction {0:?} already begun")]
    DuplicateTransaction(String),
    #[error("transaction {tx:?} would take this connection's open transactions past {limit} bytes (memory.maxQueueBytes)")]
    TransactionTooLarge { tx: String, limit: usize },
    #[error("this connection already has {0} open transactions (stomp.maxTransactionsPerConnection)")]
    TooManyTransactions(usize),
    #[error("this connection already has {0} subscriptions (stomp.maxSubscriptionsPerConnection)")]
    TooManySubscriptions(usize),
    #[error("the broker holds {0} bytes of partly received frames (stomp.maxPartialFrameBytes); retry later")]
    PartialFrames(usize),
    #[error("frame not complete within {0:?} of its first byte (stomp.frameTimeout)")]
    FrameTimeout(Duration),
    #[error("nothing read or written for {0:?} (stomp.idleTimeout); negotiate heart-beats to stay connected while idle")]
    Idle(Duration),
    #[error("destination is full: no room within {0:?} (memory limits)")]
    NoRoom(Duration),
    #[error("failed to persist: {0}")]
    Persist(String),
    /// A queue full under addressFullPolicy fail, or the disk quota reached.
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Grouping(#[from] crate::engine::accept::RouteError),
    /// The live drains its group (`POST /ha/drain`): see [`crate::engine::drain::refusal`].
    #[error("{0}")]
    Draining(String),
    /// The client's roles lack a permission; the ERROR body says which (see [`error_frame`]).
    #[error("not authorized")]
    NotAuthorized(Box<Denied>),
    #[error("{0} is a topic; only queues can be browsed (subscribe without browser:true to receive its messages)")]
    BrowseTopic(String),
    #[error("{0}")]
    Durable(#[from] crate::engine::durable::DurableError),
    /// SUBSCRIBE's `selector` does not parse; the ERROR body says where (see [`error_frame`]).
    #[error("invalid selector")]
    Selector(#[from] crate::selector::SelectorError),
}

impl From<AcceptError> for FrameError {
    fn from(e: AcceptError) -> FrameError {
        match e {
            AcceptError::Destination(d) => FrameError::Destination(d),
            AcceptError::NoRoom(timeout) => FrameError::NoRoom(timeout),
            // The STOMP ERROR carries the whole chain: the client has no log to read.
            AcceptError::Persist(source) => FrameError::Persist(error_chain(&source)),
            other @ AcceptError::Resolved => FrameError::Persist(error_chain(&other)),
            AcceptError::Grouping(e) => FrameError::Grouping(e),
            full @ (AcceptError::Full { .. } | AcceptError::DiskQuota { .. }) => FrameError::Refused(full.to_string()),
        }
    }
}

impl FrameError {
    /// The configured limit this error reports hitting, for `duomq_limit_hits_total`.
    fn limit(&self) -> Option<Limit> {
        match self {
            FrameError::Destination(d) => d.limit(),
            FrameError::TransactionTooLarge { .. } => Some(Limit::TransactionBytes),
            FrameError::TooManyTransactions(_) => Some(Limit::Transactions),
            FrameError::TooManySubscriptions(_) => Some(Limit::Subscriptions),
            FrameError::PartialFrames(_) => Some(Limit::PartialFrames),
            FrameError::FrameTimeout(_) => Some(Limit::FrameTimeout),
            FrameError::Idle(_) => Some(Limit::Idle),
            FrameError::NoRoom(_) => Some(Limit::ProducerBlocked),
            FrameError::Codec(CodecError::HeadersTooLarge { .. }) => Some(Limit::HeaderBytes),
            FrameError::Codec(CodecError::TooManyHeaders { .. }) => Some(Limit::Headers),
            FrameError::Codec(CodecError::BodyTooLarge { .. } | CodecError::BodyUnterminated { .. }) => Some(Limit::BodyBytes),
            _ => None,
        }
    }
}

/// Bytes of partly received frames across all connections, against
/// `stomp.maxPartialFrameBytes`.
#[derive(Debug)]
pub struct PartialFrames {
    held: AtomicUsize,
    limit: usize,
}

impl PartialFrames {
    pub fn new(limit: usize) -> PartialFrames {
        PartialFrames { held: AtomicUsize::new(0), limit }
    }

    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

/// One connection's share of [`PartialFrames`]; released when dropped.
struct PartialShare {
    pool: Arc<PartialFrames>,
    held: usize,
}

impl PartialShare {
    /// Records that the connection now buffers `bytes`; refuses growth past the limit.
    fn set(&mut self, bytes: usize) -> Result<(), FrameError> {
        if bytes == self.held {
            // The common case on every loop of a connection: touch no shared counter.
            return Ok(());
        }
        if bytes > self.held {
            let more = bytes - self.held;
            let before = self.pool.held.fetch_add(more, Ordering::Relaxed);
            if before + more > self.pool.limit {
                self.pool.held.fetch_sub(more, Ordering::Relaxed);
                return Err(FrameError::PartialFrames(self.pool.limit));
            }
        } else {
            self.pool.held.fetch_sub(self.held - bytes, Ordering::Relaxed);
        }
        self.held = bytes;
        Ok(())
    }
}

impl Drop for PartialShare {
    fn drop(&mut self) {
        self.pool.held.fetch_sub(self.held, Ordering::Relaxed);
    }
}

/// Everything a connection needs from the server.
#[derive(Clone)]
pub struct ConnectionContext {
    pub broker: Arc<Broker>,
    pub metrics: Arc<Metrics>,
    /// The certificates new connections are accepted with (`tls.stomp.enabled`).
    pub tls: Arc<TlsContext>,
    pub shutdown: CancellationToken,
    pub partial_frames: Arc<PartialFrames>,
    /// AMQP links from clients (producers) open on this listener's connections, all of
    /// them: a lone one may commit its transfers inline (see `amqp::connection::receive`).
    pub amqp_producers: Arc<std::sync::atomic::AtomicUsize>,
}

impl ConnectionContext {
    pub fn new(broker: Arc<Broker>, metrics: Arc<Metrics>, tls: Arc<TlsContext>, shutdown: CancellationToken) -> ConnectionContext {
        let partial_frames = Arc::new(PartialFrames::new(broker.config.stomp.max_partial_frame_bytes.as_usize()));
        ConnectionContext { broker, metrics, tls, shutdown, partial_frames, amqp_producers: Arc::default() }
    }
}

/// The halves of a client's stream: TCP's own halves in plaintext (no lock between
/// reader and writer), `tokio::io::split`'s over TLS.
pub type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
pub type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

pub(crate) fn split(stream: Stream) -> (ReadHalf, WriteHalf) {
    match stream {
        Stream::Plain(tcp) => {
            let (rd, wr) = tcp.into_split();
            (Box::new(rd), Box::new(wr))
        }
        tls => {
            let (rd, wr) = tokio::io::split(tls);
            (Box::new(rd), Box::new(wr))
        }
    }
}

/// Limits while the client is not authenticated yet: a CONNECT frame is a few short
/// headers and no body, so an anonymous socket cannot make the broker buffer much.
fn handshake_limits(full: Limits) -> Limits {
    Limits {
        max_header_bytes: full.max_header_bytes.min(8 * 1024),
        max_headers: full.max_headers.min(32),
        max_body_bytes: full.max_body_bytes.min(1024),
    }
}

pub async fn serve(stream: Stream, peer: SocketAddr, ctx: ConnectionContext) {
    let _ = stream.tcp().set_nodelay(true);
    // A client certificate, checked against tls.caFile in the handshake.
    let certificate_name = stream.peer_common_name();
    let cfg = &ctx.broker.config.stomp;
    let limits = Limits {
        max_header_bytes: cfg.max_header_bytes.as_usize(),
        max_headers: cfg.max_headers,
        max_body_bytes: cfg.max_body_bytes.as_usize(),
    };
    let (mut rd, mut wr) = split(stream);
    let mut codec = StompCodec::new(handshake_limits(limits));
    let mut buf = BytesMut::with_capacity(16 * 1024);

    // Handshake: the first frame must be CONNECT or STOMP, within the connect timeout.
    let connect = tokio::select! {
        r = tokio::time::timeout(cfg.connect_timeout.get(), read_frame(&mut rd, &mut codec, &mut buf)) => match r {
            Ok(Ok(Some(frame))) => frame,
            Ok(Ok(None)) => return,
            Ok(Err(FrameError::TlsOnPlaintextPort)) => {
                // An ERROR in plaintext would only be garbage to a TLS client: hang up.
                tracing::debug!(%peer, "a TLS client on the plaintext STOMP port (tls.stomp.enabled is off here); closed");
                ctx.metrics.connections_rejected.inc();
                return;
            }
            Ok(Err(e)) => return reject(&mut wr, &codec, &ctx, &e, None).await,
            Err(_) => {
                tracing::debug!(%peer, "client sent no CONNECT in time");
                ctx.metrics.connections_rejected.inc();
                return;
            }
        },
        _ = ctx.shutdown.cancelled() => return,
    };
    if ctx.broker.drain.is_draining() {
        let refusal = FrameError::Draining(crate::engine::drain::refusal(ctx.broker.group_name()));
        return reject(&mut wr, &codec, &ctx, &refusal, connect.get("receipt")).await;
    }
    let session = match handshake(&connect, &ctx.broker, certificate_name.as_deref()) {
        Ok(s) => s,
        Err(e) => return reject(&mut wr, &codec, &ctx, &e, connect.get("receipt")).await,
    };
    // Authenticated: the full frame limits from here on (the codec holds no partial frame
    // between frames, so a fresh one takes over the buffer as it is).
    let mut codec = StompCodec::new(limits);
    codec.set_version(session.version);
    let connected = Frame::new(Command::Connected)
        .header("version", session.version.as_str())
        .header("heart-beat", session.heart_beat_header.clone())
        .header("session", session.id.clone())
        .header("server", concat!("duomq/", env!("CARGO_PKG_VERSION")));
    let mut out = BytesMut::new();
    codec.encode(&connected, &mut out);
    if wr.write_all(&out).await.is_err() {
        return;
    }
    tracing::debug!(%peer, login = %session.login, version = %session.version, "client connected");

    let (outbox, outbox_rx) = mpsc::unbounded_channel();
    let writer_done = CancellationToken::new();
    let kill = CancellationToken::new();
    let outgoing = Arc::new(Outgoing::new());
    let mut writer_codec = StompCodec::new(limits);
    writer_codec.set_version(session.version);
    let writer = tokio::spawn(
        Writer {
            socket: wr,
            outbox: outbox_rx,
            codec: writer_codec,
            heartbeat: session.send_every,
            broker: Arc::clone(&ctx.broker),
            metrics: Arc::clone(&ctx.metrics),
            done: writer_done.clone(),
            kill: kill.clone(),
            outgoing: Arc::clone(&outgoing),
            write_timeout: cfg.write_timeout.get(),
        }
        .run(),
    );
    let principal = ctx.broker.authorizer().principal(&session.login);
    let mut conn = Connection {
        ctx: ctx.clone(),
        peer,
        principal,
        decisions: Decisions::default(),
        version: session.version,
        client_id: session.client_id,
        outbox,
        subscriptions: HashMap::new(),
        transactions: HashMap::new(),
        transaction_bytes: 0,
        pending: FuturesOrdered::new(),
        last_read: false,
        outgoing,
        kill,
    };
    let end = conn.session_loop(rd, codec, buf, session.expect_every, writer_done).await;
    conn.close(end).await;
    let _ = writer.await;
}

struct Session {
    id: String,
    login: String,
    version: Version,
    heart_beat_header: String,
    /// CONNECT's `client-id`: names the client's durable subscriptions.
    client_id: Option<Arc<str>>,
    /// How often the broker sends heart-beats to this client.
    send_every: Option<Duration>,
    /// How often the client promised to send something.
    expect_every: Option<Duration>,
}

fn handshake(frame: &Frame, broker: &Broker, certificate_name: Option<&str>) -> Result<Session, FrameError> {
    if !matches!(frame.command, Command::Connect | Command::Stomp) {
        return Err(FrameError::UnexpectedCommand(frame.command));
    }
    let version = Version::negotiate(frame.get("accept-version")).ok_or(FrameError::Version)?;
    let login = authenticate(broker, frame.get("login").unwrap_or(""), frame.get("passcode"), certificate_name)?;
    let cfg = &broker.config.stomp;
    let ours = HeartBeat { can_send: cfg.heartbeat_send.get(), wants: cfg.heartbeat_receive.get() };
    let (send_every, expect_every) = HeartBeat::negotiate(ours, HeartBeat::parse(frame.get("heart-beat")));
    Ok(Session {
        id: format!("{}-{:x}", broker.node_id, rand::random::<u32>()),
        login,
        version,
        heart_beat_header: ours.header_value(),
        client_id: frame.get("client-id").filter(|c| !c.is_empty()).map(Arc::from),
        send_every,
        expect_every,
    })
}

/// Who the client is: the user its certificate maps to (`auth.certificateUsers`), else
/// the user its login and passcode prove, else anonymous (`""`) where that is allowed:
/// with no users configured, or with `auth.allowAnonymous` and no login sent. A login
/// that proves nothing (no users configured) is not taken as a user.
fn authenticate(broker: &Broker, login: &str, passcode: Option<&str>, certificate_name: Option<&str>) -> Result<String, FrameError> {
    if let Some(user) = certificate_name.and_then(|cn| broker.config.auth.certificate_users.get(cn)) {
        if !login.is_empty() && login != user {
            return Err(FrameError::CertificateUser { login: login.to_string(), user: user.clone() });
        }
        return Ok(user.clone());
    }
    let users = broker.users();
    if users.is_empty() {
        return Ok(String::new());
    }
    if login.is_empty() && passcode.is_none() && broker.config.auth.allow_anonymous {
        return Ok(String::new());
    }
    let given = passcode.unwrap_or("");
    // A user known only by certificate has no password and cannot log in with one.
    let ok = users
        .iter()
        .any(|u| u.name == login && !u.password.is_empty() && constant_time_eq(u.password.as_bytes(), given.as_bytes()));
    if ok {
        Ok(login.to_string())
    } else {
        Err(FrameError::Auth(login.to_string()))
    }
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Sends an ERROR for a failed handshake and closes.
async fn reject(
    wr: &mut WriteHalf,
    codec: &StompCodec,
    ctx: &ConnectionContext,
    e: &FrameError,
    receipt: Option<&str>,
) {
    ctx.metrics.connections_rejected.inc();
    tracing::info!(error = %e, "refused client connection");
    let mut out = BytesMut::new();
    codec.encode(&error_frame(e, receipt), &mut out);
    let _ = wr.write_all(&out).await;
    let _ = wr.shutdown().await;
}

fn error_frame(e: &FrameError, receipt: Option<&str>) -> Frame {
    let mut f = Frame::error(e.to_string());
    if let FrameError::NotAuthorized(denied) = e {
        f = f.with_body(format!("{denied}\n"));
    }
    if let FrameError::Selector(e) = e {
        f = f.with_body(format!("{e}\n"));
    }
    if let Some(r) = receipt {
        f = f.header("receipt-id", r);
    }
    f
}

/// The first byte of a TLS handshake record (a ClientHello). No STOMP frame starts with
/// it, so a TLS client on a plaintext port is told apart at once instead of waiting out
/// the connect timeout.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

async fn read_frame(
    rd: &mut ReadHalf,
    codec: &mut StompCodec,
    buf: &mut BytesMut,
) -> Result<Option<Frame>, FrameError> {
    loop {
        if buf.first() == Some(&TLS_HANDSHAKE_RECORD) {
            return Err(FrameError::TlsOnPlaintextPort);
        }
        while let Some(item) = codec.decode(buf)? {
            if let Inbound::Frame(f) = item {
                return Ok(Some(f));
            }
        }
        match rd.read_buf(buf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

/// How the session loop ended.
enum End {
    /// The peer closed or the socket failed.
    Gone,
    /// DISCONNECT: finish pending work, answer its receipt.
    Disconnect(Option<String>),
    /// Protocol error: ERROR frame, then close.
    Error(FrameError, Option<String>),
    /// Heart-beats stopped.
    Silent,
    /// Nothing read or written for `stomp.idleTimeout`.
    Idle(Duration),
    /// The broker is stopping.
    Shutdown,
    /// The live began draining its group: clients go to another group.
    Draining,
}

struct Subscription {
    key: ConsumerKey,
    queue: Arc<Queue>,
    topic: Option<Arc<Topic>>,
    mode: AckMode,
    /// A browser's: stops its [`Browser`]. A browser is no consumer of the queue.
    browse: Option<CancellationToken>,
    /// The durable subscription this consumer is attached to.
    durable: Option<Arc<crate::engine::durable::DurableSubscription>>,
}

/// A transactional ACK or NACK, applied at COMMIT.
struct PendingAck {
    queue: Arc<Queue>,
    key: ConsumerKey,
    tag: u64,
    cumulative: bool,
    nack: bool,
    id: String,
}

#[derive(Default)]
struct Transaction {
    /// Its sends, counted against the memory limits since they were read.
    sends: Vec<Prepared>,
    acks: Vec<PendingAck>,
    bytes: usize,
}

/// What becomes visible once the engine has made a frame durable.
struct Effect {
    /// Messages to publish (none for a duplicate, acks only, or a frame without any).
    durable: Option<Durable>,
    receipt: Option<String>,
    /// A new consumer, attached after its SUBSCRIBE's RECEIPT so the receipt comes first.
    attach: Option<(Arc<Queue>, ConsumerHandle)>,
    /// A new browser, started after its SUBSCRIBE's RECEIPT.
    browse: Option<Browser>,
}

impl Effect {
    fn receipt(receipt: Option<String>) -> Effect {
        Effect { durable: None, receipt, attach: None, browse: None }
    }
}

/// The pending effect of an acceptance: its RECEIPT (and publishing) once it is durable.
fn once_durable(acceptance: Acceptance, receipt: Option<String>) -> Pending {
    Box::pin(async move {
        match acceptance.await {
            Ok(durable) => Ok(Effect { durable: Some(durable), receipt, attach: None, browse: None }),
            Err(e) => Err((FrameError::from(e), receipt)),
        }
    })
}

/// Frames read but not yet applied (awaiting their fsync) before the connection stops reading.
const MAX_PENDING: usize = 4096;

type Pending = BoxFuture<'static, Result<Effect, (FrameError, Option<String>)>>;

struct Connection {
    ctx: ConnectionContext,
    peer: SocketAddr,
    /// Who the client is and its roles, for authorization.
    principal: Principal,
    /// Authorization decisions made for this connection so far.
    decisions: Decisions,
    version: Version,
    /// CONNECT's `client-id`, if any.
    client_id: Option<Arc<str>>,
    outbox: mpsc::UnboundedSender<Outbound>,
    subscriptions: HashMap<String, Subscription>,
    transactions: HashMap<String, Transaction>,
    /// Bytes of messages held by all open transactions of this connection.
    transaction_bytes: usize,
    pending: FuturesOrdered<Pending>,
    /// Whether the frame being handled is the last one read so far: its record may be
    /// committed on this thread (see `Journal::append_inline`) because no other frame of
    /// ours could share the group commit.
    last_read: bool,
    outgoing: Arc<Outgoing>,
    /// Ends the connection at once (shared with the writer and every consumer handle).
    kill: CancellationToken,
}

impl Connection {
    async fn session_loop(
        &mut self,
        mut rd: ReadHalf,
        mut codec: StompCodec,
        mut buf: BytesMut,
        expect_every: Option<Duration>,
        writer_done: CancellationToken,
    ) -> End {
        let cfg = &self.ctx.broker.config.stomp;
        let silence_limit = expect_every.map(|d| d * cfg.heartbeat_grace);
        let idle_limit = Some(cfg.idle_timeout.get()).filter(|d| !d.is_zero());
        let frame_limit = cfg.frame_timeout.get();
        let max_outgoing = cfg.max_outgoing_bytes.as_usize();
        let every = [expect_every, idle_limit.map(|d| d / 2), Some(frame_limit / 2)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(frame_limit)
            .max(Duration::from_millis(50));
        let mut check = tokio::time::interval(every);
        let mut last_read = Instant::now();
        // When the frame now arriving began, while bytes of it are buffered.
        let mut frame_began: Option<Instant> = None;
        let mut share = PartialShare { pool: Arc::clone(&self.ctx.partial_frames), held: 0 };
        // Registered once, not at every turn of the loop (every connection waits on it).
        let drain = Arc::clone(&self.ctx.broker.drain);
        let drain_started = drain.started();
        tokio::pin!(drain_started);
        loop {
            // Frames already buffered are handled before reading more; a client that
            // pipelines faster than the journal syncs is not read until effects drain.
            while self.pending.len() < MAX_PENDING {
                match codec.decode(&mut buf) {
                    Ok(Some(Inbound::Heartbeat)) => {}
                    Ok(Some(Inbound::Frame(frame))) => {
                        frame_began = None;
                        self.last_read = buf.is_empty();
                        if let Some(end) = self.handle(frame).await {
                            return end;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return End::Error(e.into(), None),
                }
            }
            if let Err(e) = share.set(buf.len()) {
                return End::Error(e, None);
            }
            let reading = self.pending.len() < MAX_PENDING && self.outgoing.bytes() < max_outgoing;
            if !reading || buf.is_empty() {
                // A frame we stopped reading is late by our doing, not the client's.
                frame_began = None;
            } else if frame_began.is_none() {
                frame_began = Some(Instant::now());
            }
            tokio::select! {
                biased;
                Some(done) = self.pending.next(), if !self.pending.is_empty() => {
                    if let Err((e, receipt)) = self.apply(done) {
                        return End::Error(e, receipt);
                    }
                    if !reading {
                        // We stopped reading, not the client: silence is ours.
                        last_read = Instant::now();
                    }
                }
                r = rd.read_buf(&mut buf), if reading => match r {
                    Ok(0) | Err(_) => return End::Gone,
                    Ok(_) => last_read = Instant::now(),
                },
                _ = self.outgoing.drained(), if !reading => last_read = Instant::now(),
                _ = check.tick() => {
                    if silence_limit.is_some_and(|limit| last_read.elapsed() > limit) {
                        return End::Silent;
                    }
                    if let Some(idle) = idle_limit {
                        if last_read.elapsed() > idle && self.outgoing.since_last_write() > idle {
                            return End::Idle(idle);
                        }
                    }
                    if frame_began.is_some_and(|t| t.elapsed() > frame_limit) {
                        return End::Error(FrameError::FrameTimeout(frame_limit), None);
                    }
                }
                _ = writer_done.cancelled() => return End::Gone,
                _ = self.ctx.shutdown.cancelled() => return End::Shutdown,
                _ = &mut drain_started => return End::Draining,
            }
        }
    }

    /// Queues a frame for the writer, counted against `stomp.maxOutgoingBytes`.
    fn send_out(&self, frame: Frame) {
        self.outgoing.queued(&frame);
        let _ = self.outbox.send(Outbound::Frame(frame));
    }

    /// Handles one frame; `Some` ends the session.
    async fn handle(&mut self, frame: Frame) -> Option<End> {
        let receipt = frame.get("receipt").map(str::to_string);
        let result = match frame.command {
            Command::Send => self.on_send(frame).await,
            Command::Subscribe => self.on_subscribe(&frame),
            Command::Unsubscribe => self.on_unsubscribe(&frame),
            Command::Ack | Command::Nack => self.on_ack(&frame),
            Command::Begin => self.on_begin(&frame),
            Command::Commit => self.on_commit(&frame),
            Command::Abort => self.on_abort(&frame),
            Command::Disconnect => return Some(End::Disconnect(receipt)),
            other => Err(FrameError::UnexpectedCommand(other)),
        };
        if let (Ok(_), Some(r)) = (&result, &receipt) {
            self.outgoing.owed_receipt(r);
        }
        match result {
            Ok(Some(pending)) => {
                self.pending.push_back(pending);
                None
            }
            Ok(None) => {
                if receipt.is_some() {
                    self.pending.push_back(Box::pin(async move { Ok(Effect::receipt(receipt)) }));
                }
                None
            }
            Err(e) => Some(End::Error(e, receipt)),
        }
    }

    fn apply(&mut self, done: Result<Effect, (FrameError, Option<String>)>) -> Result<(), (FrameError, Option<String>)> {
        let effect = done?;
        let mut receipt = effect.receipt.map(|r| Frame::new(Command::Receipt).header("receipt-id", r));
        // A connection that also consumes gets the RECEIPT first, so a client subscribed to
        // where it sends sees its receipt before its own message. One that only produces
        // gets it after the deliveries are queued: the runtime runs the task woken last
        // first, so its writer then sends the RECEIPT before the consumers' writers send
        // the message, and a synchronous producer's next send starts that much sooner.
        let receipt_last = self.subscriptions.is_empty() && effect.durable.as_ref().is_some_and(Durable::publishes);
        // The receipt was counted against stomp.maxOutgoingBytes when its frame was read.
        if !receipt_last {
            if let Some(frame) = receipt.take() {
                let _ = self.outbox.send(Outbound::Frame(frame));
            }
        }
        if let Some(durable) = effect.durable {
            durable.publish();
        }
        if let Some(frame) = receipt {
            let _ = self.outbox.send(Outbound::Frame(frame));
        }
        if let Some((queue, consumer)) = effect.attach {
            // An UNSUBSCRIBE read before this SUBSCRIBE's effect came due has removed the
            // subscription already: attaching now would leave a consumer nobody owns.
            let current = self.subscriptions.get(&*consumer.subscription_id).is_some_and(|s| s.key == consumer.key);
            if current {
                queue.add_consumer(consumer);
            }
        }
        if let Some(browser) = effect.browse {
            // Likewise: an UNSUBSCRIBE read meanwhile has stopped it already.
            if !browser.stop.is_cancelled() {
                tokio::spawn(browser.run());
            }
        }
        Ok(())
    }

    /// Checks that the client may do `permission` on `destination`, and `create` too when
    /// the broker does not hold the destination yet. A refusal is counted and logged at
    /// debug (a client retrying cannot flood the log); the frame then ends the connection.
    fn authorize(&mut self, destination: &str, permission: Permission) -> Result<(), FrameError> {
        let broker = &self.ctx.broker;
        let authorizer = broker.authorizer();
        if authorizer.is_open() {
            return Ok(());
        }
        let held = broker.holds(destination)?;
        let mut result = self.decisions.check(authorizer, &self.principal, destination, permission);
        if result.is_ok() && !held {
            result = self.decisions.check(authorizer, &self.principal, destination, Permission::Create);
        }
        result.map_err(|denied| {
            broker.metrics.authorization_denied(denied.permission);
            tracing::debug!(peer = %self.peer, user = %denied.user, %destination, permission = %denied.permission, "frame not authorized");
            FrameError::NotAuthorized(Box::new(denied))
        })
    }

    async fn on_send(&mut self, frame: Frame) -> Result<Option<Pending>, FrameError> {
        let Some(destination) = frame.get("destination") else {
            return Err(FrameError::MissingHeader(Command::Send, "destination"));
        };
        // In a transaction too: a denied SEND ends the connection, and its open
        // transactions with it, so COMMIT stores nothing of them.
        self.authorize(destination, Permission::Send)?;
        let persistent = frame.get("persistent") == Some("true");
        let receipt = frame.get("receipt").map(str::to_string);
        let transaction = frame.get("transaction").map(str::to_string);
        if let Some(tx) = &transaction {
            if !self.transactions.contains_key(tx) {
                return Err(FrameError::UnknownTransaction(tx.clone()));
            }
        }
        let incoming = incoming(frame.headers, frame.body, persistent);
        let body_len = incoming.body.len() as u64;
        let broker = &self.ctx.broker;
        if let Some(tx) = transaction {
            // Held until COMMIT: counted broker-wide now, against its queue once committed.
            let prepared = broker.prepare(incoming).await;
            let prepared = self.blocked_if(prepared.as_ref().map_or_else(no_room, Prepared::blocked), prepared)?;
            self.ctx.metrics.messages_in.inc();
            self.ctx.metrics.bytes_in.inc_by(body_len);
            let limit = broker.memory().queue_limit;
            let size = prepared.footprint();
            if self.transaction_bytes + size > limit {
                return Err(FrameError::TransactionTooLarge { tx, limit });
            }
            let t = self.transactions.get_mut(&tx).ok_or_else(|| FrameError::UnknownTransaction(tx.clone()))?;
            t.bytes += size;
            self.transaction_bytes += size;
            t.sends.push(prepared);
            return Ok(None);
        }
        let acceptance = broker.accept(incoming, self.commit()).await;
        let acceptance = self.blocked_if(acceptance.as_ref().map_or_else(no_room, Acceptance::blocked), acceptance)?;
        if acceptance.is_duplicate() {
            // A resend of a message already stored (the producer failed over before its
            // RECEIPT arrived) is receipted but not stored twice.
            tracing::debug!(peer = %self.peer, "duplicate SEND ignored");
            return Ok(receipt.map(|r| -> Pending { Box::pin(async move { Ok(Effect::receipt(Some(r))) }) }));
        }
        self.ctx.metrics.messages_in.inc();
        self.ctx.metrics.bytes_in.inc_by(body_len);
        Ok(Some(once_durable(acceptance, receipt)))
    }

    /// Counts a SEND that waited for memory room, then passes its result on.
    fn blocked_if<T>(&self, blocked: bool, result: Result<T, AcceptError>) -> Result<T, FrameError> {
        if blocked {
            self.ctx.metrics.producer_blocked.inc();
            tracing::debug!(peer = %self.peer, "producer blocked by memory limits");
        }
        result.map_err(FrameError::from)
    }

    /// How this frame's record goes to the journal: on this thread when it is the last
    /// frame read (see `Journal::append_inline`), as no other frame of ours could share
    /// the group commit.
    fn commit(&self) -> Commit {
        if self.last_read {
            Commit::Inline
        } else {
            Commit::Grouped
        }
    }

    fn on_subscribe(&mut self, frame: &Frame) -> Result<Option<Pending>, FrameError> {
        let destination =
            frame.get("destination").ok_or(FrameError::MissingHeader(Command::Subscribe, "destination"))?;
        let id = match (frame.get("id"), self.version) {
            (Some(id), _) => id.to_string(),
            (None, Version::V1_0) => destination.to_string(),
            (None, _) => return Err(FrameError::MissingHeader(Command::Subscribe, "id")),
        };
        if self.subscriptions.contains_key(&id) {
            return Err(FrameError::DuplicateSubscription(id));
        }
        let max = self.ctx.broker.config.stomp.max_subscriptions_per_connection;
        if self.subscriptions.len() >= max {
            return Err(FrameError::TooManySubscriptions(max));
        }
        let mode = AckMode::parse(frame.get("ack")).ok_or_else(|| FrameError::AckMode(frame.get("ack").unwrap_or("").into()))?;
        let default_prefetch = self.ctx.broker.config.stomp.default_prefetch as usize;
        let prefetch = frame
            .get("activemq.prefetchSize")
            .or_else(|| frame.get("prefetch-count"))
            .and_then(|p| p.trim().parse::<usize>().ok())
            .filter(|p| *p > 0)
            .map_or(default_prefetch, |p| p.min(default_prefetch));
        let browse = frame.get("browser") == Some("true");
        // Parsed once, here; an empty header selects everything (as in ActiveMQ).
        let selector = match frame.get("selector").filter(|s| !s.trim().is_empty()) {
            Some(text) => Some(self.ctx.broker.selector(text)?),
            None => None,
        };
        if browse && destination.starts_with("/topic/") {
            return Err(FrameError::BrowseTopic(destination.to_string()));
        }
        let destination = destination.to_string();
        self.authorize(&destination, if browse { Permission::Browse } else { Permission::Consume })?;
        let receipt = frame.get("receipt").map(str::to_string);
        if browse {
            return self.on_browse(id, &destination, prefetch, selector, receipt).map(Some);
        }
        let broker = &self.ctx.broker;
        let key = broker.next_consumer_key();
        let (mut durable_sub, mut definition) = (None, None);
        // A topic subscription's queue selects the copies it gets; a queue's consumer
        // selects what it takes; so does a durable subscription's, kept with it.
        let (queue, topic, selector) = match broker.resolve(&destination)? {
            Target::Queue(q) => (q, None, selector),
            Target::Topic(t) => match self.durable_subscribe(frame, &t, selector.as_ref(), key)? {
                Some((sub, write)) => {
                    (durable_sub, definition) = (Some(Arc::clone(&sub)), write);
                    (Arc::clone(&sub.queue), None, None)
                }
                None => (broker.subscribe_topic_selecting(&t, selector), Some(t), None),
            },
        };
        let consumer = ConsumerHandle {
            key,
            subscription_id: Arc::from(id.as_str()),
            ack_mode: mode,
            prefetch,
            outbox: self.outbox.clone(),
            kill: self.kill.clone(),
            selector,
        };
        tracing::debug!(peer = %self.peer, subscription = %id, %destination, ?mode, prefetch, selector = frame.get("selector"), "subscribed");
        self.subscriptions.insert(id, Subscription { key, queue: Arc::clone(&queue), topic, mode, browse: None, durable: durable_sub });
        let effect = Effect { attach: Some((queue, consumer)), ..Effect::receipt(receipt) };
        Ok(Some(durable::once_defined(definition, effect)))
    }

    /// `SUBSCRIBE` with `browser:true` on a queue: a [`Browser`] streams what the queue
    /// holds now, `prefetch` messages at a time, once the RECEIPT (if asked) is sent.
    fn on_browse(
        &mut self,
        id: String,
        destination: &str,
        prefetch: usize,
        selector: Option<crate::selector::Selector>,
        receipt: Option<String>,
    ) -> Result<Pending, FrameError> {
        let broker = &self.ctx.broker;
        let queue = match broker.resolve(destination)? {
            Target::Queue(q) => q,
            Target::Topic(_) => return Err(FrameError::BrowseTopic(destination.to_string())),
        };
        let stop = self.kill.child_token();
        let browser = Browser {
            broker: Arc::clone(broker),
            queue: Arc::clone(&queue),
            subscription: Arc::from(id.as_str()),
            below: broker.message_id_bound(),
            page: prefetch,
            outbox: self.outbox.clone(),
            outgoing: Arc::clone(&self.outgoing),
            budget: broker.config.stomp.max_outgoing_bytes.as_usize() / 2,
            stop: stop.clone(),
            selector,
        };
        tracing::debug!(peer = %self.peer, subscription = %id, %destination, "browsing");
        let key = broker.next_consumer_key();
        self.subscriptions.insert(id, Subscription { key, queue, topic: None, mode: AckMode::Auto, browse: Some(stop), durable: None });
        let effect = Effect { browse: Some(browser), ..Effect::receipt(receipt) };
        Ok(Box::pin(async move { Ok(effect) }))
    }

    fn on_unsubscribe(&mut self, frame: &Frame) -> Result<Option<Pending>, FrameError> {
        if let Some(name) = crate::engine::durable::subscription_name(|h| frame.get(h)) {
            return self.durable_unsubscribe(frame, name).map(Some);
        }
        let id = match (frame.get("id"), frame.get("destination")) {
            (Some(id), _) => id,
            (None, Some(dest)) if self.version == Version::V1_0 => dest,
            _ => return Err(FrameError::MissingHeader(Command::Unsubscribe, "id")),
        };
        let sub = self.subscriptions.remove(id).ok_or_else(|| FrameError::UnknownSubscription(id.to_string()))?;
        self.drop_subscription(sub);
        Ok(None)
    }

    fn drop_subscription(&self, sub: Subscription) {
        if let Some(stop) = &sub.browse {
            stop.cancel();
            return;
        }
        sub.queue.remove_consumer(sub.key);
        if let Some(durable) = &sub.durable {
            durable.release(sub.key);
        }
        if let Some(topic) = &sub.topic {
            self.ctx.broker.unsubscribe_topic(topic, &sub.queue);
        }
    }

    /// Finds the delivery an ACK/NACK refers to: by `id` (1.2) or by `message-id` and
    /// `subscription` (1.0, 1.1).
    fn locate_ack(&self, frame: &Frame) -> Result<PendingAck, FrameError> {
        let nack = frame.command == Command::Nack;
        if self.version == Version::V1_2 {
            let id = frame.get("id").ok_or(FrameError::MissingHeader(frame.command, "id"))?;
            let bad = |source| FrameError::Ack { id: id.to_string(), source };
            let (key, tag) = parse_ack_token(id).ok_or(bad(AckError::UnknownConsumer))?;
            let sub = self.subscriptions.values().find(|s| s.key == key).ok_or(bad(AckError::UnknownConsumer))?;
            return Ok(PendingAck {
                queue: Arc::clone(&sub.queue),
                key,
                tag,
                cumulative: sub.mode == AckMode::Client,
                nack,
                id: id.to_string(),
            });
        }
        let mid = frame.get("message-id").ok_or(FrameError::MissingHeader(frame.command, "message-id"))?;
        let bad = |source| FrameError::Ack { id: mid.to_string(), source };
        let msg = MessageId(mid.parse().map_err(|_| bad(AckError::NotInFlight))?);
        let candidates: Vec<&Subscription> = match frame.get("subscription") {
            Some(s) => vec![self.subscriptions.get(s).ok_or_else(|| FrameError::UnknownSubscription(s.to_string()))?],
            None => self.subscriptions.values().collect(),
        };
        for sub in candidates {
            if let Ok(tag) = sub.queue.tag_of(sub.key, msg) {
                return Ok(PendingAck {
                    queue: Arc::clone(&sub.queue),
                    key: sub.key,
                    tag,
                    cumulative: sub.mode == AckMode::Client,
                    nack,
                    id: mid.to_string(),
                });
            }
        }
        Err(bad(AckError::NotInFlight))
    }

    fn on_ack(&mut self, frame: &Frame) -> Result<Option<Pending>, FrameError> {
        let ack = self.locate_ack(frame)?;
        if let Some(tx) = frame.get("transaction") {
            let t = self.transactions.get_mut(tx).ok_or_else(|| FrameError::UnknownTransaction(tx.to_string()))?;
            t.acks.push(ack);
            return Ok(None);
        }
        let settled = self.settle(&ack)?;
        let broker = &self.ctx.broker;
        match frame.get("receipt") {
            Some(receipt) => Ok(Some(once_durable(broker.acknowledge(settled, self.commit()), Some(receipt.to_string())))),
            None => {
                // Nobody waits for this ACK: it rides along with the next group commit
                // instead of costing an fsync, and holds up none of the frames behind it.
                broker.acknowledge_lazy(settled);
                Ok(None)
            }
        }
    }

    fn on_begin(&mut self, frame: &Frame) -> Result<Option<Pending>, FrameError> {
        let tx = frame.get("transaction").ok_or(FrameError::MissingHeader(Command::Begin, "transaction"))?;
        if self.transactions.contains_key(tx) {
            return Err(FrameError::DuplicateTransaction(tx.to_string()));
        }
        let max = self.ctx.broker.config.stomp.max_transactions_per_connection;
        if self.transactions.len() >= max {
            return Err(FrameError::TooManyTransactions(max));
        }
        self.transactions.insert(tx.to_string(), Transaction::default());
        Ok(None)
    }

    /// Applies a transaction's acks now and journals its sends and acks as one record, so
    /// after a crash either all of it happened or none.
    fn on_commit(&mut self, frame: &Frame) -> Result<Option<Pending>, FrameError> {
        let name = frame.get("transaction").ok_or(FrameError::MissingHeader(Command::Commit, "transaction"))?;
        let tx = self.transactions.remove(name).ok_or_else(|| FrameError::UnknownTransaction(name.to_string()))?;
        self.transaction_bytes -= tx.bytes;
        let mut acks = Settled::default();
        for ack in &tx.acks {
            acks.extend(self.settle(ack)?);
        }
        let acceptance = self.ctx.broker.commit(tx.sends, acks, self.commit());
        Ok(Some(once_durable(acceptance, frame.get("receipt").map(str::to_string))))
    }

    fn on_abort(&mut self, frame: &Frame) -> Result<Option<Pending>, FrameError> {
        let name = frame.get("transaction").ok_or(FrameError::MissingHeader(Command::Abort, "transaction"))?;
        let tx = self.transactions.remove(name).ok_or_else(|| FrameError::UnknownTransaction(name.to_string()))?;
        self.transaction_bytes -= tx.bytes;
        Ok(None)
    }

    /// Ends the session: answers or reports, then removes every subscription so whatever
    /// was in flight is redelivered to other consumers.
    async fn close(&mut self, end: End) {
        let peer = self.peer;
        match end {
            End::Disconnect(receipt) => {
                if let Err((e, r)) = self.drain().await {
                    self.send_error(&e, r.as_deref());
                } else if let Some(r) = receipt {
                    // Free to attach again elsewhere once the client reads its receipt.
                    self.detach_durables();
                    self.send_out(Frame::new(Command::Receipt).header("receipt-id", r));
                }
                tracing::debug!(%peer, "client disconnected");
            }
            End::Error(e, receipt) => {
                self.ctx.metrics.protocol_errors.inc();
                if let Some(limit) = e.limit() {
                    self.ctx.broker.metrics.limit_hit(limit);
                }
                // A denial was logged at debug already.
                if !matches!(e, FrameError::NotAuthorized(_)) {
                    tracing::info!(%peer, error = %e, "closing connection after error");
                }
                let _ = self.drain().await;
                self.send_error(&e, receipt.as_deref());
            }
            End::Shutdown => {
                let _ = self.drain().await;
                let f = Frame::new(Command::Error)
                    .header("message", "broker is shutting down")
                    .with_body("broker is shutting down; reconnect to another member or retry later\n");
                let _ = self.outbox.send(Outbound::Frame(f));
            }
            End::Draining => {
                // What the journal holds is published (and drained) before the client goes.
                let _ = self.drain().await;
                tracing::debug!(%peer, "closing client connection: the group is draining");
                self.send_error(&FrameError::Draining(crate::engine::drain::refusal(self.ctx.broker.group_name())), None);
            }
            End::Silent => {
                tracing::info!(%peer, "dropping client: no heart-beat");
                let _ = self.drain().await;
            }
            End::Idle(idle) => {
                self.ctx.broker.metrics.limit_hit(Limit::Idle);
                tracing::info!(%peer, ?idle, "closing idle connection (stomp.idleTimeout)");
                let _ = self.drain().await;
                self.send_error(&FrameError::Idle(idle), None);
            }
            End::Gone => {
                tracing::debug!(%peer, "client connection closed");
                // What the journal already holds is published, in the order it was sent.
                let _ = self.drain().await;
            }
        }
        for (_, sub) in std::mem::take(&mut self.subscriptions) {
            self.drop_subscription(sub);
        }
        let _ = self.outbox.send(Outbound::Close);
    }

    /// Waits for every pending effect and applies it.
    async fn drain(&mut self) -> Result<(), (FrameError, Option<String>)> {
        while let Some(done) = self.pending.next().await {
            self.apply(done)?;
        }
        Ok(())
    }

    fn send_error(&self, e: &FrameError, receipt: Option<&str>) {
        self.send_out(error_frame(e, receipt));
    }

    /// Settles an ACK/NACK in memory; what the journal must record comes back for the
    /// engine to write.
    fn settle(&self, ack: &PendingAck) -> Result<Settled, FrameError> {
        self.ctx
            .broker
            .settle(&ack.queue, ack.key, ack.tag, ack.cumulative, ack.nack)
            .map_err(|source| FrameError::Ack { id: ack.id.clone(), source })
    }
}

/// Streams what a queue holds to a browsing subscription (ActiveMQ's STOMP
/// `browser:true`): the messages waiting or in flight when it subscribed, in id order, as
/// MESSAGE frames that need no ACK and take nothing from the queue, then its paged ones
/// (in the journal only) read from the journal in id order, then one MESSAGE with
/// the header line `browser:end` and an empty body, as ActiveMQ ends a browse. A page of `page` messages at a time, the next
/// once the writer has written most of the last (`budget` bytes left queued), so a deep
/// queue is never copied at once. A paged message read back into memory while the
/// browse runs may be missed.
struct Browser {
    broker: Arc<Broker>,
    queue: Arc<Queue>,
    subscription: Arc<str>,
    /// Messages accepted later than the SUBSCRIBE are not shown.
    below: MessageId,
    page: usize,
    outbox: mpsc::UnboundedSender<Outbound>,
    outgoing: Arc<Outgoing>,
    budget: usize,
    /// Cancelled by UNSUBSCRIBE or the connection's end.
    stop: CancellationToken,
    /// Shows only what this selects (SUBSCRIBE's `selector`).
    selector: Option<crate::selector::Selector>,
}

/// `message-id` of the frame that ends a browse.
const BROWSER_END_ID: &str = "browser-end";

impl Browser {
    async fn run(self) {
        let mut after = None;
        let mut shown = 0usize;
        loop {
            let page = self.queue.browse(after, self.below, self.page);
            if !self.show(&page) {
                return;
            }
            shown += page.len();
            let Some(last) = page.last().filter(|_| page.len() == self.page) else { break };
            after = Some(last.id);
            if !self.wait_for_writer().await {
                return;
            }
        }
        // Then what is in the journal only, a page at a time.
        let mut from = self.queue.paged_from();
        let below = self.below;
        while let Some(at) = from {
            let batch = match self.broker.read_paged(&self.queue, at, self.page, Arc::new(move |id| id < below)).await {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!(queue = %self.queue.name, subscription = %self.subscription, error = &e as &dyn std::error::Error, "browse ends without the paged messages it could not read");
                    break;
                }
            };
            let mut page: Vec<Arc<Message>> = batch.entries.into_iter().map(|e| e.message).collect();
            page.sort_by_key(|m| m.id);
            if !self.show(&page) {
                return;
            }
            shown += page.len();
            from = batch.next;
            if !self.wait_for_writer().await {
                return;
            }
        }
        let end = Frame::new(Command::Message)
            .header("destination", &*self.queue.name)
            .header("message-id", BROWSER_END_ID)
            .header("subscription", &*self.subscription)
            // ActiveMQ's marker: the line `browser:end`, header `browser`, value `end`.
            .header("browser", "end");
        self.send(end);
        tracing::debug!(queue = %self.queue.name, subscription = %self.subscription, shown, "browse complete");
    }

    /// Sends `page`'s messages that the selector takes; false once the browse is stopped.
    fn show(&self, page: &[Arc<Message>]) -> bool {
        for message in page.iter().filter(|m| self.selector.as_ref().is_none_or(|s| s.matches(m))) {
            let mut frame = Frame::new(Command::Message)
                .header("destination", &*message.destination)
                .header("message-id", message.id.0.to_string())
                .header("subscription", &*self.subscription);
            frame.headers.extend(message.headers.iter().cloned());
            if !self.send(frame.with_body(message.body.clone())) {
                return false;
            }
        }
        true
    }

    /// Waits until the writer has written most of what is queued; false once stopped.
    async fn wait_for_writer(&self) -> bool {
        while self.outgoing.bytes() > self.budget {
            tokio::select! {
                _ = self.stop.cancelled() => return false,
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
        !self.stop.is_cancelled()
    }

    /// Queues a frame for the writer; false once the browse is stopped or the writer gone.
    fn send(&self, frame: Frame) -> bool {
        if self.stop.is_cancelled() {
            return false;
        }
        self.outgoing.queued(&frame);
        self.outbox.send(Outbound::Frame(frame)).is_ok()
    }
}

/// A NoRoom refusal waited for room first; no other refusal did.
fn no_room(e: &AcceptError) -> bool {
    matches!(e, AcceptError::NoRoom(_))
}

/// A SEND's message as the engine takes it: the protocol headers (receipt, transaction,
/// content-length, destination) go, the producer's `message-id` becomes the dedup id.
/// Where STOMP repeats a header, the first one counts.
fn incoming(headers: Vec<(String, String)>, body: bytes::Bytes, persistent: bool) -> Incoming {
    let mut destination = None;
    let mut dedup_id = None;
    let headers = headers
        .into_iter()
        .filter_map(|(k, v)| match k.as_str() {
            "receipt" | "transaction" | "content-length" => None,
            "destination" => {
                destination.get_or_insert(v);
                None
            }
            dedup::SEND_HEADER => {
                dedup_id.get_or_insert(v);
                None
            }
            _ => Some((k, v)),
        })
        .collect();
    Incoming { destination: destination.unwrap_or_default(), headers, body, persistent, dedup_id }
}
