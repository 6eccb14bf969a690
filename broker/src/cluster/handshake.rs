//! The opening of every cluster connection: both sides prove they know the cluster
//! password (see `auth`), agree on the protocol version and the group, and learn who
//! the other is. It runs over any byte stream, bounded by one deadline, and hands the
//! connection back, with any bytes already received, for replication or a vote to go on.
//! It decides nothing beyond "this peer belongs to my cluster and group": what the peer
//! may do next is the caller's business.
//!
//! Until the peer has proved the password, frames are limited to
//! [`HANDSHAKE_MAX_FRAME`] bytes (the handshake frames are a few hundred), so a stranger
//! cannot make this node buffer a large frame; the caller's `max_frame` applies after.
//!
//! ```text
//! client                                      server
//!   Hello { version, node, group, purpose, epoch, client nonce } ->
//!        <- Challenge { version, node, group, epoch, server nonce, server proof }
//!           (or Refused: version or group differs)
//!   (client checks group and server proof; on failure Goodbye and stop)
//!   Response { client proof } ->
//!        <- Welcome { node, role, epoch }   (or Refused "authentication failed")
//! ```

use super::auth::{self, Role, Transcript};
use super::conn::{ClusterConn, ClusterConnError};
use super::frame::{ClusterCodec, ClusterCodecError, ClusterFrame, Purpose, PROTOCOL_VERSION};
use crate::faults::Faults;
use bytes::BytesMut;
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tracing::{debug, warn};

/// How long a handshake may take unless configured otherwise.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest frame either side accepts before the handshake succeeds. A handshake frame
/// carries two names (node id, group) of at most [`MAX_HANDSHAKE_NAME`] bytes each, plus
/// about 100 bytes of nonces, proofs and numbers.
pub const HANDSHAKE_MAX_FRAME: usize = 4 * 1024;

/// The longest node id or group name that fits a handshake frame twice over.
pub const MAX_HANDSHAKE_NAME: usize = 1024;

/// What the server sends a client whose proof is wrong; it says no more, so a guesser
/// learns nothing.
const AUTHENTICATION_FAILED: &str = "authentication failed";

/// This node's side of a handshake.
#[derive(Clone)]
pub struct HandshakeConfig {
    pub node_id: String,
    pub group: String,
    /// The cluster user (`ha.cluster.user`); it is part of what both sides prove, never sent.
    pub user: String,
    /// The cluster password; it only keys HMACs and is never sent.
    pub password: Vec<u8>,
    pub epoch: u64,
    /// Why this node connects; ignored when accepting.
    pub purpose: Purpose,
    /// Frames longer than this are refused in both directions once the handshake has
    /// succeeded; during it, [`HANDSHAKE_MAX_FRAME`] applies.
    pub max_frame: usize,
    /// The whole handshake must finish within this.
    pub timeout: Duration,
    /// This node's fault rules: a partition refuses the peer as soon as it is known (see
    /// `faults`). [`Faults::off`] outside tests.
    pub faults: Faults,
}

impl std::fmt::Debug for HandshakeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandshakeConfig")
            .field("node_id", &self.node_id)
            .field("group", &self.group)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("epoch", &self.epoch)
            .field("purpose", &self.purpose)
            .field("max_frame", &self.max_frame)
            .field("timeout", &self.timeout)
            .field("faults", &self.faults)
            .finish()
    }
}

/// The server a client has authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerPeer {
    pub node_id: String,
    /// The server's group.
    pub group: String,
    /// What the server says it is ("live", "backup", …).
    pub role: String,
    pub epoch: u64,
}

/// The client a server has authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientPeer {
    pub node_id: String,
    /// The group the client proved it belongs to.
    pub group: String,
    pub purpose: Purpose,
    pub epoch: u64,
}

#[derive(Debug, Error)]
pub enum HandshakeError {
    #[error("failed to send the {frame} frame")]
    Send { frame: &'static str, source: ClusterConnError },
    #[error("failed to receive the {expected} frame")]
    Receive { expected: &'static str, source: ClusterConnError },
    #[error("peer closed the connection before sending the {expected} frame")]
    Closed { expected: &'static str },
    #[error("the {expected} frame announces {length} bytes, more than the {limit} allowed before authentication")]
    FrameTooLarge { expected: &'static str, length: usize, limit: usize },
    #[error("handshake timed out after {timeout:?} {step}")]
    TimedOut { step: String, timeout: Duration },
    #[error("expected a {expected} frame, got a {got} frame")]
    Unexpected { expected: &'static str, got: &'static str },
    #[error("protocol version differs: this node speaks {ours}, the peer {theirs}")]
    VersionMismatch { ours: u16, theirs: u16 },
    #[error("group name differs: expected {ours}, got {theirs}")]
    GroupMismatch { ours: String, theirs: String },
    #[error("a bridge links groups to each other, and both ends are in group {group}")]
    BridgeIntoOwnGroup { group: String },
    #[error("server failed to prove the cluster credentials: another cluster user or password (server node {server})")]
    ServerProofInvalid { server: String },
    #[error("client failed to prove the cluster credentials: another cluster user or password (client node {client})")]
    ClientProofInvalid { client: String },
    #[error("refused by the server: {reason}")]
    Refused { reason: String },
    #[error("client {client} gave up on the handshake: {reason}")]
    ClientGaveUp { client: String, reason: String },
    #[error("welcome came from node {got}, not from {expected} that sent the challenge")]
    WelcomeFromOtherNode { expected: String, got: String },
    #[error("cut off from {peer} by an injected partition (debug.faultInjection)")]
    Partitioned { peer: String },
}

impl HandshakeError {
    /// What a server tells the client it refuses: the error itself, except that a
    /// failed proof is reported without detail.
    fn refusal_reason(&self) -> String {
        match self {
            HandshakeError::ClientProofInvalid { .. } | HandshakeError::ClientGaveUp { .. } => {
                AUTHENTICATION_FAILED.to_string()
            }
            other => other.to_string(),
        }
    }

    /// The server turned this client away because too many handshakes were under way: it
    /// is up, only busy.
    pub fn is_busy(&self) -> bool {
        matches!(self, HandshakeError::Refused { reason } if reason.starts_with(BUSY_REFUSAL))
    }

    /// A short, fixed name for the kind of failure, for a metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            HandshakeError::FrameTooLarge { .. } => "frame_too_large",
            HandshakeError::TimedOut { .. } => "timed_out",
            HandshakeError::ClientProofInvalid { .. } | HandshakeError::ServerProofInvalid { .. } => "authentication",
            HandshakeError::Closed { .. } | HandshakeError::ClientGaveUp { .. } => "closed",
            HandshakeError::Partitioned { .. } => "partitioned",
            HandshakeError::VersionMismatch { .. } | HandshakeError::GroupMismatch { .. } | HandshakeError::BridgeIntoOwnGroup { .. } => {
                "mismatch"
            }
            HandshakeError::Send { .. }
            | HandshakeError::Receive { .. }
            | HandshakeError::Unexpected { .. }
            | HandshakeError::Refused { .. }
            | HandshakeError::WelcomeFromOtherNode { .. } => "protocol",
        }
    }
}

/// Opens a cluster connection as the client: proves this node knows the password,
/// checks that the server does too and serves the same group.
pub async fn connect_handshake<S>(
    stream: S,
    config: &HandshakeConfig,
) -> Result<(ClusterConn<S>, ServerPeer), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut ex = Exchange::new(stream, config);
    let client_nonce = auth::new_nonce();
    ex.send(&ClusterFrame::Hello {
        version: PROTOCOL_VERSION,
        node_id: config.node_id.clone(),
        group: config.group.clone(),
        purpose: config.purpose,
        epoch: config.epoch,
        nonce: client_nonce,
    })
    .await?;

    let (server_node, server_group, server_epoch, server_nonce, server_proof) = match ex.recv("challenge").await? {
        ClusterFrame::Challenge { version, node_id, group, epoch, nonce, proof } => {
            // Cut off: go as a peer behind a cut network would, without a word.
            if config.faults.cuts(&node_id, config.purpose) {
                return Err(HandshakeError::Partitioned { peer: node_id });
            }
            if version != PROTOCOL_VERSION {
                return Err(ex
                    .give_up(&node_id, HandshakeError::VersionMismatch { ours: PROTOCOL_VERSION, theirs: version })
                    .await);
            }
            // Only replication pairs members of one group; probes and votes cross groups
            // (a cluster shares one password).
            if config.purpose == Purpose::Replicate && group != config.group {
                return Err(ex
                    .give_up(&node_id, HandshakeError::GroupMismatch { ours: config.group.clone(), theirs: group })
                    .await);
            }
            if config.purpose == Purpose::Bridge && group == config.group {
                return Err(ex.give_up(&node_id, HandshakeError::BridgeIntoOwnGroup { group }).await);
            }
            (node_id, group, epoch, nonce, proof)
        }
        ClusterFrame::Refused { reason } => return Err(refused(None, reason)),
        other => return Err(ex.give_up("?", unexpected("challenge", &other)).await),
    };

    let transcript = Transcript {
        version: PROTOCOL_VERSION,
        user: &config.user,
        group: &config.group,
        purpose: config.purpose,
        client_node: &config.node_id,
        client_epoch: config.epoch,
        client_nonce: &client_nonce,
        server_node: &server_node,
        server_epoch,
        server_nonce: &server_nonce,
    };
    // Checked before this node proves anything, so a server without the password
    // never gets a proof of ours to attack.
    if !auth::verify(&config.password, Role::Server, &transcript, &server_proof) {
        let err = HandshakeError::ServerProofInvalid { server: server_node.clone() };
        return Err(ex.give_up(&server_node, err).await);
    }
    ex.send(&ClusterFrame::Response { proof: auth::proof(&config.password, Role::Client, &transcript) }).await?;

    match ex.recv("welcome").await? {
        ClusterFrame::Welcome { node_id, role, epoch } if node_id == server_node => {
            Ok((ex.authenticated(), ServerPeer { node_id, group: server_group, role, epoch }))
        }
        ClusterFrame::Welcome { node_id, .. } => {
            let err = HandshakeError::WelcomeFromOtherNode { expected: server_node.clone(), got: node_id };
            Err(ex.give_up(&server_node, err).await)
        }
        ClusterFrame::Refused { reason } => Err(refused(Some(&server_node), reason)),
        other => Err(ex.give_up(&server_node, unexpected("welcome", &other)).await),
    }
}

/// Accepts a cluster connection as the server: checks the client's version, group and
/// proof, proves this node knows the password, and welcomes the client as `role`.
/// Every refusal is sent to the client before the error is returned.
pub async fn accept_handshake<S>(
    stream: S,
    config: &HandshakeConfig,
    role: &str,
) -> Result<(ClusterConn<S>, ClientPeer), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut ex = Exchange::new(stream, config);
    let hello = match ex.recv("hello").await {
        Ok(frame) => frame,
        Err(
            err @ (HandshakeError::Receive { source: ClusterConnError::Decode { .. }, .. }
            | HandshakeError::FrameTooLarge { .. }),
        ) => {
            return Err(ex.refuse("?", err).await);
        }
        Err(err) => return Err(err),
    };
    let ClusterFrame::Hello { version, node_id: client_node, group, purpose, epoch: client_epoch, nonce: client_nonce } =
        hello
    else {
        return Err(ex.refuse("?", unexpected("hello", &hello)).await);
    };
    // Cut off: close without an answer, so the peer learns nothing, not even that this
    // member is up (a voter's probe must find it unreachable).
    if config.faults.cuts(&client_node, purpose) {
        return Err(HandshakeError::Partitioned { peer: client_node });
    }
    if version != PROTOCOL_VERSION {
        return Err(ex
            .refuse(&client_node, HandshakeError::VersionMismatch { ours: PROTOCOL_VERSION, theirs: version })
            .await);
    }
    if purpose == Purpose::Replicate && group != config.group {
        return Err(ex
            .refuse(&client_node, HandshakeError::GroupMismatch { ours: config.group.clone(), theirs: group })
            .await);
    }
    if purpose == Purpose::Bridge && group == config.group {
        return Err(ex.refuse(&client_node, HandshakeError::BridgeIntoOwnGroup { group }).await);
    }

    let server_nonce = auth::new_nonce();
    // The transcript binds the client's group: the one the client claims and proves.
    let transcript = Transcript {
        version: PROTOCOL_VERSION,
        user: &config.user,
        group: &group,
        purpose,
        client_node: &client_node,
        client_epoch,
        client_nonce: &client_nonce,
        server_node: &config.node_id,
        server_epoch: config.epoch,
        server_nonce: &server_nonce,
    };
    ex.send(&ClusterFrame::Challenge {
        version: PROTOCOL_VERSION,
        node_id: config.node_id.clone(),
        group: config.group.clone(),
        epoch: config.epoch,
        nonce: server_nonce,
        proof: auth::proof(&config.password, Role::Server, &transcript),
    })
    .await?;

    let response = match ex.recv("response").await {
        Ok(frame) => frame,
        Err(err @ HandshakeError::FrameTooLarge { .. }) => return Err(ex.refuse(&client_node, err).await),
        Err(err) => return Err(err),
    };
    let err = match response {
        ClusterFrame::Response { proof } if auth::verify(&config.password, Role::Client, &transcript, &proof) => {
            ex.send(&ClusterFrame::Welcome {
                node_id: config.node_id.clone(),
                role: role.to_string(),
                epoch: config.epoch,
            })
            .await?;
            return Ok((ex.authenticated(), ClientPeer { node_id: client_node, group, purpose, epoch: client_epoch }));
        }
        ClusterFrame::Response { .. } => HandshakeError::ClientProofInvalid { client: client_node.clone() },
        ClusterFrame::Goodbye { reason } => HandshakeError::ClientGaveUp { client: client_node.clone(), reason },
        other => unexpected("response", &other),
    };
    Err(ex.refuse(&client_node, err).await)
}

/// How the `Refused` frame starts that a server sends a connection it turns away because
/// too many handshakes are under way. The server is up: a client that only wanted to know
/// whether it lives (a voter's probe) must not take this for "unreachable".
pub const BUSY_REFUSAL: &str = "too many unauthenticated cluster connections";

/// The `Refused` reason for a connection turned away because `limit` handshakes are under
/// way (`ha.cluster.maxPendingConnections`).
pub fn busy_reason(limit: usize) -> String {
    format!("{BUSY_REFUSAL} ({limit}, ha.cluster.maxPendingConnections): try again later")
}

/// The bytes of a `Refused` frame for a connection turned away before its handshake starts
/// (too many are pending): the caller writes them without waiting, then closes.
pub fn refusal_bytes(reason: &str) -> Option<BytesMut> {
    let mut buf = BytesMut::new();
    ClusterCodec::new(HANDSHAKE_MAX_FRAME).encode(&ClusterFrame::Refused { reason: reason.to_string() }, &mut buf).ok()?;
    Some(buf)
}

fn unexpected(expected: &'static str, got: &ClusterFrame) -> HandshakeError {
    HandshakeError::Unexpected { expected, got: got.name() }
}

fn refused(server: Option<&str>, reason: String) -> HandshakeError {
    warn!(server = server.unwrap_or("?"), %reason, "cluster handshake refused by the server");
    HandshakeError::Refused { reason }
}

/// A connection during the handshake, with the deadline every step must meet.
struct Exchange<S> {
    conn: ClusterConn<S>,
    deadline: Instant,
    timeout: Duration,
    /// The frame limit once the peer is authenticated.
    max_frame: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Exchange<S> {
    fn new(stream: S, config: &HandshakeConfig) -> Exchange<S> {
        Exchange {
            conn: ClusterConn::new(stream, config.max_frame.min(HANDSHAKE_MAX_FRAME)),
            deadline: Instant::now() + config.timeout,
            timeout: config.timeout,
            max_frame: config.max_frame,
        }
    }

    /// The connection, with the full frame limit: the peer has proved the password.
    fn authenticated(mut self) -> ClusterConn<S> {
        self.conn.set_max_frame(self.max_frame);
        self.conn
    }

    async fn send(&mut self, frame: &ClusterFrame) -> Result<(), HandshakeError> {
        match tokio::time::timeout_at(self.deadline, self.conn.send(frame)).await {
            Ok(sent) => sent.map_err(|source| HandshakeError::Send { frame: frame.name(), source }),
            Err(_) => Err(HandshakeError::TimedOut {
                step: format!("sending the {} frame", frame.name()),
                timeout: self.timeout,
            }),
        }
    }

    async fn recv(&mut self, expected: &'static str) -> Result<ClusterFrame, HandshakeError> {
        match tokio::time::timeout_at(self.deadline, self.conn.recv()).await {
            Ok(Ok(Some(frame))) => Ok(frame),
            Ok(Ok(None)) => Err(HandshakeError::Closed { expected }),
            Ok(Err(ClusterConnError::Decode { source: ClusterCodecError::FrameTooLarge { length, limit } })) => {
                Err(HandshakeError::FrameTooLarge { expected, length, limit })
            }
            Ok(Err(source)) => Err(HandshakeError::Receive { expected, source }),
            Err(_) => Err(HandshakeError::TimedOut {
                step: format!("waiting for the {expected} frame"),
                timeout: self.timeout,
            }),
        }
    }

    /// Client side: logs why this node stops and tells the server, best effort.
    async fn give_up(&mut self, server: &str, err: HandshakeError) -> HandshakeError {
        warn!(server, reason = %err, "cluster handshake abandoned");
        self.best_effort(&ClusterFrame::Goodbye { reason: err.to_string() }).await;
        err
    }

    /// Server side: tells the client why, best effort. The caller logs the error it gets
    /// back (throttled: strangers can make many), so this only logs at debug.
    async fn refuse(&mut self, client: &str, err: HandshakeError) -> HandshakeError {
        debug!(client, reason = %err, "cluster handshake refused");
        self.best_effort(&ClusterFrame::Refused { reason: err.refusal_reason() }).await;
        err
    }

    /// The peer may already be gone; the error being reported matters more.
    async fn best_effort(&mut self, frame: &ClusterFrame) {
        let _ = tokio::time::timeout_at(self.deadline, self.conn.send(frame)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rstest::rstest;
    use tokio::io::{duplex, AsyncWriteExt, DuplexStream};

    const MAX_FRAME: usize = 64 * 1024;

    fn config(node_id: &str, group: &str, password: &str) -> HandshakeConfig {
        HandshakeConfig {
            node_id: node_id.into(),
            group: group.into(),
            user: "duomq-cluster".into(),
            password: password.as_bytes().to_vec(),
            epoch: 0,
            purpose: Purpose::Replicate,
            max_frame: MAX_FRAME,
            timeout: Duration::from_secs(5),
            faults: Faults::off(),
        }
    }

    /// Fault rules with one partition from `peer`.
    fn partitioned_from(peer: &str) -> Faults {
        use crate::faults::{FaultMetrics, FaultRules, FrameAction, FrameRule};
        let faults = Faults::new(FaultMetrics::default());
        let rule = FrameRule { peer: Some(peer.into()), ..FrameRule::new(FrameAction::Partition) };
        faults.set(FaultRules { frames: vec![rule], disk: None }).expect("valid rules");
        faults
    }

    #[tokio::test]
    async fn given_a_server_partitioned_from_the_client_should_close_without_an_answer() {
        let server = HandshakeConfig { faults: partitioned_from("orders-1"), ..server() };
        let (a, b) = pipe();
        let client = client();
        let (client_side, server_side) = tokio::join!(connect_handshake(a, &client), accept_handshake(b, &server, "live"));
        assert!(matches!(server_side, Err(HandshakeError::Partitioned { ref peer }) if peer == "orders-1"), "{server_side:?}");
        // The client cannot tell a cut network from a member that is down.
        assert!(matches!(client_side, Err(HandshakeError::Closed { expected: "challenge" })), "{client_side:?}");
    }

    #[tokio::test]
    async fn given_a_client_partitioned_from_the_server_should_give_up_once_it_knows_who_answers() {
        let client = HandshakeConfig { faults: partitioned_from("orders-0"), ..client() };
        let (a, b) = pipe();
        let server = server();
        let (client_side, server_side) = tokio::join!(connect_handshake(a, &client), accept_handshake(b, &server, "live"));
        assert!(matches!(client_side, Err(HandshakeError::Partitioned { ref peer }) if peer == "orders-0"), "{client_side:?}");
        assert_eq!(client_side.as_ref().err().map(HandshakeError::kind), Some("partitioned"));
        assert!(matches!(server_side, Err(HandshakeError::Closed { expected: "response" })), "{server_side:?}");
    }

    fn client() -> HandshakeConfig {
        HandshakeConfig { epoch: 5, ..config("orders-1", "orders", "s3cret") }
    }

    fn server() -> HandshakeConfig {
        HandshakeConfig { epoch: 7, ..config("orders-0", "orders", "s3cret") }
    }

    fn pipe() -> (DuplexStream, DuplexStream) {
        duplex(64 * 1024)
    }

    fn hello(version: u16, nonce: [u8; 32]) -> ClusterFrame {
        let c = client();
        ClusterFrame::Hello { version, node_id: c.node_id, group: c.group, purpose: c.purpose, epoch: c.epoch, nonce }
    }

    /// Plays the client by hand: sends a hello, reads the challenge, and answers it with
    /// the proof `respond` computes from the challenge.
    async fn raw_client(
        stream: DuplexStream,
        nonce: [u8; 32],
        respond: impl FnOnce(&ClusterFrame) -> [u8; 32],
    ) -> (ClusterFrame, Option<ClusterFrame>) {
        let mut conn = ClusterConn::new(stream, MAX_FRAME);
        conn.send(&hello(PROTOCOL_VERSION, nonce)).await.expect("send hello");
        let challenge = conn.recv().await.expect("receive challenge").expect("a challenge");
        conn.send(&ClusterFrame::Response { proof: respond(&challenge) }).await.expect("send response");
        let answer = conn.recv().await.expect("receive answer");
        (challenge, answer)
    }

    /// The client proof over a challenge, as a client knowing `password` computes it.
    fn client_proof(password: &str, client_nonce: &[u8; 32], challenge: &ClusterFrame) -> [u8; 32] {
        let ClusterFrame::Challenge { node_id, epoch, nonce, .. } = challenge else {
            panic!("expected a challenge, got {challenge:?}");
        };
        let c = client();
        let transcript = Transcript {
            version: PROTOCOL_VERSION,
            user: &c.user,
            group: &c.group,
            purpose: c.purpose,
            client_node: &c.node_id,
            client_epoch: c.epoch,
            client_nonce,
            server_node: node_id,
            server_epoch: *epoch,
            server_nonce: nonce,
        };
        auth::proof(password.as_bytes(), Role::Client, &transcript)
    }

    #[tokio::test]
    async fn given_the_same_password_and_group_when_handshaking_should_learn_each_others_node_id() {
        let client = client();
        let server = server();
        let (a, b) = pipe();
        let (client_side, server_side) =
            tokio::join!(connect_handshake(a, &client), accept_handshake(b, &server, "live"));
        let (mut client_conn, server_peer) = client_side.expect("client handshake");
        let (mut server_conn, client_peer) = server_side.expect("server handshake");
        assert_eq!(server_peer, ServerPeer { node_id: "orders-0".into(), group: "orders".into(), role: "live".into(), epoch: 7 });
        assert_eq!(client_peer, ClientPeer { node_id: "orders-1".into(), group: "orders".into(), purpose: Purpose::Replicate, epoch: 5 });

        let append = ClusterFrame::Append { seq: 1, offset: 0, records: 1, data: Bytes::from_static(b"batch") };
        server_conn.send(&append).await.expect("send append");
        assert_eq!(client_conn.recv().await.expect("receive append"), Some(append));
        client_conn.send(&ClusterFrame::Ack { seq: 1, offset: 5, records: 1 }).await.expect("send ack");
        assert_eq!(server_conn.recv().await.expect("receive ack"), Some(ClusterFrame::Ack { seq: 1, offset: 5, records: 1 }));
    }

    #[tokio::test]
    async fn given_loopback_tcp_when_handshaking_should_connect_both_sides() {
        let client = client();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let server_config = server();
        let accepting = async {
            let (stream, _) = listener.accept().await.expect("accept");
            accept_handshake(stream, &server_config, "live").await
        };
        let connecting = async {
            let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            connect_handshake(stream, &client).await
        };
        let (client_side, server_side) = tokio::join!(connecting, accepting);
        assert_eq!(client_side.expect("client handshake").1.node_id, "orders-0");
        assert_eq!(server_side.expect("server handshake").1.node_id, "orders-1");
    }

    #[tokio::test]
    async fn given_frames_sent_right_behind_the_response_when_accepted_should_keep_them() {
        let server = server();
        let (a, b) = pipe();
        let raw = async {
            let mut conn = ClusterConn::new(a, MAX_FRAME);
            let nonce = auth::new_nonce();
            conn.send(&hello(PROTOCOL_VERSION, nonce)).await.expect("send hello");
            let challenge = conn.recv().await.expect("receive challenge").expect("a challenge");
            // Response and the first replication frame leave in one write.
            conn.queue(&ClusterFrame::Response { proof: client_proof("s3cret", &nonce, &challenge) })
                .expect("queue response");
            conn.queue(&ClusterFrame::Ping { at: 42 }).expect("queue ping");
            conn.flush().await.expect("flush");
            conn
        };
        let (_client, server_side) = tokio::join!(raw, accept_handshake(b, &server, "live"));
        let (mut conn, _) = server_side.expect("server handshake");
        assert_eq!(conn.recv().await.expect("receive ping"), Some(ClusterFrame::Ping { at: 42 }));
    }

    #[tokio::test]
    async fn given_a_wrong_password_or_user_when_handshaking_should_fail_on_both_sides() {
        let wrong_password = HandshakeConfig { password: b"guess".to_vec(), ..client() };
        // The same password with another cluster user fails the same way: the user is part
        // of what both sides prove.
        let wrong_user = HandshakeConfig { user: "intruder".into(), ..client() };
        for wrong in [wrong_password, wrong_user] {
            let server = server();
            let (a, b) = pipe();
            let (client_side, server_side) =
                tokio::join!(connect_handshake(a, &wrong), accept_handshake(b, &server, "live"));
            let client_err = client_side.expect_err("client must fail");
            assert!(
                matches!(&client_err, HandshakeError::ServerProofInvalid { server } if server == "orders-0"),
                "{client_err:?}"
            );
            assert!(
                client_err.to_string().starts_with("server failed to prove the cluster credentials: another cluster user or password"),
                "{client_err}"
            );
            let server_err = server_side.expect_err("server must fail");
            assert!(
                matches!(&server_err, HandshakeError::ClientGaveUp { client, reason } if client == "orders-1" && reason.contains("failed to prove")),
                "{server_err:?}"
            );
        }
    }

    #[tokio::test]
    async fn given_a_client_proof_made_with_a_wrong_password_when_responding_should_be_refused() {
        let server = server();
        let (a, b) = pipe();
        let nonce = auth::new_nonce();
        let raw = raw_client(a, nonce, |challenge| client_proof("guess", &nonce, challenge));
        let ((_, answer), server_side) = tokio::join!(raw, accept_handshake(b, &server, "live"));
        assert_eq!(answer, Some(ClusterFrame::Refused { reason: "authentication failed".into() }));
        let err = server_side.expect_err("server must fail");
        assert!(matches!(&err, HandshakeError::ClientProofInvalid { client } if client == "orders-1"), "{err:?}");
    }

    #[tokio::test]
    async fn given_a_response_from_an_earlier_session_when_replayed_should_be_refused() {
        let server = server();
        let nonce = auth::new_nonce();
        let (a, b) = pipe();
        let mut recorded = [0u8; 32];
        let raw = raw_client(a, nonce, |challenge| {
            recorded = client_proof("s3cret", &nonce, challenge);
            recorded
        });
        let ((first_challenge, answer), server_side) = tokio::join!(raw, accept_handshake(b, &server, "live"));
        assert!(matches!(answer, Some(ClusterFrame::Welcome { .. })), "{answer:?}");
        server_side.expect("first session succeeds");

        let (a, b) = pipe();
        let replay = raw_client(a, nonce, |_| recorded);
        let ((second_challenge, answer), server_side) = tokio::join!(replay, accept_handshake(b, &server, "live"));
        assert_ne!(first_challenge, second_challenge, "each session has a fresh server nonce");
        assert_eq!(answer, Some(ClusterFrame::Refused { reason: "authentication failed".into() }));
        assert!(matches!(server_side, Err(HandshakeError::ClientProofInvalid { .. })), "{server_side:?}");
    }

    #[tokio::test]
    async fn given_a_server_that_does_not_know_the_password_when_connecting_should_detect_it_without_proving_itself() {
        let client = client();
        let (a, b) = pipe();
        let impostor = async {
            let mut conn = ClusterConn::new(b, MAX_FRAME);
            let hello = conn.recv().await.expect("receive hello");
            assert!(matches!(hello, Some(ClusterFrame::Hello { .. })), "{hello:?}");
            conn.send(&ClusterFrame::Challenge {
                version: PROTOCOL_VERSION,
                node_id: "orders-0".into(),
                group: "orders".into(),
                epoch: 9,
                nonce: auth::new_nonce(),
                proof: [0xab; 32],
            })
            .await
            .expect("send challenge");
            conn.recv().await.expect("receive the client's answer")
        };
        let (client_side, answer) = tokio::join!(connect_handshake(a, &client), impostor);
        assert!(matches!(client_side, Err(HandshakeError::ServerProofInvalid { .. })), "{client_side:?}");
        assert!(matches!(answer, Some(ClusterFrame::Goodbye { .. })), "the client must not send its proof: {answer:?}");
    }

    #[tokio::test]
    async fn given_different_groups_when_handshaking_should_refuse_naming_both() {
        let server = server();
        let (a, b) = pipe();
        let other_group = HandshakeConfig { group: "payments".into(), ..client() };
        let (client_side, server_side) =
            tokio::join!(connect_handshake(a, &other_group), accept_handshake(b, &server, "live"));
        let expected = "group name differs: expected orders, got payments";
        assert!(
            matches!(&client_side, Err(HandshakeError::Refused { reason }) if reason == expected),
            "{client_side:?}"
        );
        let server_err = server_side.expect_err("server must refuse");
        assert!(
            matches!(&server_err, HandshakeError::GroupMismatch { ours, theirs } if ours == "orders" && theirs == "payments"),
            "{server_err:?}"
        );
        assert_eq!(server_err.to_string(), expected);
    }

    #[tokio::test]
    async fn given_a_bridge_within_one_group_when_handshaking_should_be_refused_and_across_groups_welcomed() {
        let server = server();
        let (a, b) = pipe();
        let own = HandshakeConfig { purpose: Purpose::Bridge, ..client() };
        let (client_side, server_side) = tokio::join!(connect_handshake(a, &own), accept_handshake(b, &server, "live"));
        assert!(matches!(&client_side, Err(HandshakeError::Refused { reason }) if reason.contains("both ends are in group orders")), "{client_side:?}");
        assert!(matches!(server_side, Err(HandshakeError::BridgeIntoOwnGroup { .. })));
        let (a, b) = pipe();
        let other = HandshakeConfig { purpose: Purpose::Bridge, group: "payments".into(), ..client() };
        let (client_side, server_side) = tokio::join!(connect_handshake(a, &other), accept_handshake(b, &server, "live"));
        let (_, server_peer) = client_side.expect("a bridge between groups is welcomed");
        assert_eq!(server_peer.group, "orders");
        let (_, client_peer) = server_side.expect("server side");
        assert_eq!((client_peer.group.as_str(), client_peer.purpose), ("payments", Purpose::Bridge));
    }

    #[tokio::test]
    async fn given_another_protocol_version_when_saying_hello_should_be_refused() {
        let server = server();
        let (a, b) = pipe();
        let raw = async {
            let mut conn = ClusterConn::new(a, MAX_FRAME);
            conn.send(&hello(PROTOCOL_VERSION + 1, auth::new_nonce())).await.expect("send hello");
            conn.recv().await.expect("receive answer")
        };
        let (answer, server_side) = tokio::join!(raw, accept_handshake(b, &server, "live"));
        assert!(
            matches!(&answer, Some(ClusterFrame::Refused { reason }) if reason.contains("protocol version")),
            "{answer:?}"
        );
        assert!(
            matches!(server_side, Err(HandshakeError::VersionMismatch { ours: PROTOCOL_VERSION, theirs }) if theirs == PROTOCOL_VERSION + 1),
            "{server_side:?}"
        );
    }

    #[tokio::test]
    async fn given_a_challenge_of_another_protocol_version_when_connecting_should_fail() {
        let client = client();
        let (a, b) = pipe();
        let raw = async {
            let mut conn = ClusterConn::new(b, MAX_FRAME);
            conn.recv().await.expect("receive hello");
            let challenge = ClusterFrame::Challenge {
                version: PROTOCOL_VERSION + 1,
                node_id: "orders-0".into(),
                group: "orders".into(),
                epoch: 0,
                nonce: [0; 32],
                proof: [0; 32],
            };
            conn.send(&challenge).await.expect("send challenge");
            conn
        };
        let (client_side, _server) = tokio::join!(connect_handshake(a, &client), raw);
        assert!(matches!(client_side, Err(HandshakeError::VersionMismatch { .. })), "{client_side:?}");
    }

    #[rstest]
    #[case::http(b"GET / HTTP/1.1\r\nHost: orders-0\r\n\r\n".as_slice())]
    #[case::unknown_kind(&[0, 0, 0, 1, 0xee])]
    #[case::truncated_hello(&[0, 0, 0, 3, 0x01, 0, 1])]
    #[tokio::test]
    async fn given_garbage_instead_of_hello_when_accepting_should_fail_without_panic(#[case] garbage: &[u8]) {
        let server = server();
        let (mut a, b) = pipe();
        a.write_all(garbage).await.expect("write garbage");
        let result = accept_handshake(b, &server, "live").await;
        assert!(
            matches!(
                result,
                Err(HandshakeError::Receive { expected: "hello", source: ClusterConnError::Decode { .. } }
                    | HandshakeError::FrameTooLarge { expected: "hello", .. })
            ),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn given_a_frame_other_than_hello_when_accepting_should_refuse() {
        let server = server();
        let (a, b) = pipe();
        let raw = async {
            let mut conn = ClusterConn::new(a, MAX_FRAME);
            conn.send(&ClusterFrame::Ping { at: 1 }).await.expect("send ping");
            conn.recv().await.expect("receive answer")
        };
        let (answer, server_side) = tokio::join!(raw, accept_handshake(b, &server, "live"));
        assert!(matches!(answer, Some(ClusterFrame::Refused { .. })), "{answer:?}");
        assert!(
            matches!(server_side, Err(HandshakeError::Unexpected { expected: "hello", got: "ping" })),
            "{server_side:?}"
        );
    }

    #[tokio::test]
    async fn given_a_client_that_says_nothing_when_accepting_should_time_out() {
        let (_silent, b) = pipe();
        let impatient = HandshakeConfig { timeout: Duration::from_millis(100), ..server() };
        let result = accept_handshake(b, &impatient, "live").await;
        assert!(matches!(&result, Err(HandshakeError::TimedOut { step, .. }) if step.contains("hello")), "{result:?}");
    }

    #[tokio::test]
    async fn given_a_server_that_says_nothing_when_connecting_should_time_out() {
        let (a, _silent) = pipe();
        let impatient = HandshakeConfig { timeout: Duration::from_millis(100), ..client() };
        let result = connect_handshake(a, &impatient).await;
        assert!(
            matches!(&result, Err(HandshakeError::TimedOut { step, .. }) if step.contains("challenge")),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn given_a_peer_that_hangs_up_when_accepting_should_report_closed() {
        let server = server();
        let (a, b) = pipe();
        drop(a);
        let result = accept_handshake(b, &server, "live").await;
        assert!(matches!(result, Err(HandshakeError::Closed { expected: "hello" })), "{result:?}");
    }

    #[tokio::test]
    async fn given_a_hello_announcing_a_large_frame_when_accepting_should_refuse_before_buffering_it() {
        // Full limit 64 MiB, as a live runs; the stranger announces 64 MiB and starts sending.
        let server = HandshakeConfig { max_frame: 64 * 1024 * 1024, timeout: Duration::from_secs(2), ..server() };
        let (mut a, b) = pipe();
        let mut announce = (64u32 * 1024 * 1024).to_be_bytes().to_vec();
        announce.push(0x01);
        announce.extend_from_slice(&[0u8; 1024]);
        a.write_all(&announce).await.expect("write the start of a huge hello");
        let result = accept_handshake(b, &server, "live").await;
        assert!(
            matches!(
                result,
                Err(HandshakeError::FrameTooLarge { expected: "hello", length: 67_108_864, limit: HANDSHAKE_MAX_FRAME })
            ),
            "{result:?}"
        );
        let mut conn = ClusterConn::new(a, MAX_FRAME);
        let answer = conn.recv().await.expect("receive the refusal");
        assert!(
            matches!(&answer, Some(ClusterFrame::Refused { reason }) if reason.contains("before authentication")),
            "{answer:?}"
        );
    }

    #[tokio::test]
    async fn given_a_response_announcing_a_large_frame_when_accepting_should_refuse() {
        let server = HandshakeConfig { max_frame: 64 * 1024 * 1024, timeout: Duration::from_secs(2), ..server() };
        let (a, b) = pipe();
        let raw = async {
            let mut conn = ClusterConn::new(a, MAX_FRAME);
            conn.send(&hello(PROTOCOL_VERSION, [1; 32])).await.expect("send hello");
            conn.recv().await.expect("receive challenge").expect("a challenge");
            let (mut stream, _, _) = conn.into_parts();
            stream.write_all(&[0, 1, 0, 0, 0x03]).await.expect("announce a 64 KiB response");
            ClusterConn::new(stream, MAX_FRAME).recv().await.expect("receive the refusal")
        };
        let (answer, server_side) = tokio::join!(raw, accept_handshake(b, &server, "live"));
        assert!(matches!(answer, Some(ClusterFrame::Refused { .. })), "{answer:?}");
        assert!(
            matches!(server_side, Err(HandshakeError::FrameTooLarge { expected: "response", .. })),
            "{server_side:?}"
        );
    }

    #[tokio::test]
    async fn given_a_handshake_that_succeeded_should_carry_frames_up_to_the_full_limit() {
        let client = HandshakeConfig { max_frame: 1024 * 1024, ..client() };
        let server = HandshakeConfig { max_frame: 1024 * 1024, ..server() };
        let (a, b) = duplex(4 * 1024 * 1024);
        let (client_side, server_side) =
            tokio::join!(connect_handshake(a, &client), accept_handshake(b, &server, "live"));
        let (mut client_conn, _) = client_side.expect("client handshake");
        let (mut server_conn, _) = server_side.expect("server handshake");
        let chunk = ClusterFrame::SegmentChunk { seq: 1, offset: 0, data: Bytes::from(vec![7u8; 512 * 1024]) };
        server_conn.send(&chunk).await.expect("send a 512 KiB chunk");
        assert_eq!(client_conn.recv().await.expect("receive the chunk"), Some(chunk.clone()));
        client_conn.send(&chunk).await.expect("send it back");
        assert_eq!(server_conn.recv().await.expect("receive it back"), Some(chunk));
    }

    #[test]
    fn given_the_longest_names_when_encoding_handshake_frames_should_fit_the_pre_authentication_limit() {
        let long = "n".repeat(MAX_HANDSHAKE_NAME);
        let frames = [
            ClusterFrame::Hello {
                version: PROTOCOL_VERSION,
                node_id: long.clone(),
                group: long.clone(),
                purpose: Purpose::Replicate,
                epoch: u64::MAX,
                nonce: [0; 32],
            },
            ClusterFrame::Challenge {
                version: PROTOCOL_VERSION,
                node_id: long.clone(),
                group: long.clone(),
                epoch: u64::MAX,
                nonce: [0; 32],
                proof: [0; 32],
            },
            ClusterFrame::Welcome { node_id: long.clone(), role: "starting".into(), epoch: u64::MAX },
        ];
        for frame in &frames {
            let mut buf = BytesMut::new();
            ClusterCodec::new(HANDSHAKE_MAX_FRAME).encode(frame, &mut buf).expect("fits");
        }
    }

    #[tokio::test]
    async fn given_a_server_that_is_busy_when_connecting_should_report_it_as_busy() {
        let (a, mut b) = pipe();
        let busy = refusal_bytes(&busy_reason(16)).expect("a refusal fits");
        b.write_all(&busy).await.expect("write the refusal");
        let result = connect_handshake(a, &client()).await;
        assert!(matches!(&result, Err(e) if e.is_busy()), "{result:?}");
        let other = HandshakeError::Refused { reason: AUTHENTICATION_FAILED.into() };
        assert!(!other.is_busy());
    }

    #[test]
    fn given_a_config_when_debug_printed_should_not_show_the_password() {
        assert!(!format!("{:?}", client()).contains("s3cret"));
    }
}
