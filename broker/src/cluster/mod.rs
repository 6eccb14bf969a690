//! The cluster protocol spoken on the cluster port (default 61616): the binary frame
//! codec, the password challenge–response, and the handshake that opens every cluster
//! connection and hands it on. It carries replication and vote frames but holds no
//! broker state and makes no replication or activation decisions (that is `ha`).

pub mod auth;
pub mod conn;
pub mod frame;
pub mod handshake;
pub mod transport;

pub use conn::{ClusterConn, ClusterConnError};
pub use frame::{frame_names, ClusterCodec, ClusterCodecError, ClusterFrame, Purpose, SegmentDigest, SegmentExtent, PROTOCOL_VERSION};
pub use handshake::{
    accept_handshake, busy_reason, connect_handshake, refusal_bytes, ClientPeer, HandshakeConfig, HandshakeError, ServerPeer,
    DEFAULT_HANDSHAKE_TIMEOUT, HANDSHAKE_MAX_FRAME, MAX_HANDSHAKE_NAME,
};
pub use transport::TransportError;
