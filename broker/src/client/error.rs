//! What can go wrong talking to a broker, as one error type for the whole client.
//! Messages name the step that failed; a wrapped cause is left to `source()` and never
//! repeated in the message.

use crate::stomp::{CodecError, Command};
use thiserror::Error;

/// Every failure of the STOMP client.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The broker URL could not be parsed; `reason` says which part is wrong.
    #[error("invalid broker URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    /// The TCP connection to `addr` could not be opened.
    #[error("failed to connect to {addr}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// The broker answered CONNECT with an ERROR frame (bad credentials, unsupported
    /// version, ...). `message` is the broker's `message` header.
    #[error("broker refused the connection: {message}")]
    Refused { message: String },
    /// The broker sent an ERROR frame after the handshake and closed the connection.
    #[error("broker reported an error: {message}")]
    Broker { message: String },
    /// Reading from or writing to the socket failed.
    #[error("failed to exchange frames with the broker")]
    Io(#[source] std::io::Error),
    /// The broker sent bytes that are not valid STOMP.
    #[error("failed to decode a frame from the broker")]
    Protocol(#[source] CodecError),
    /// The broker sent a well-formed frame the client did not expect at that point.
    #[error("expected {expected} from the broker, got {got}")]
    UnexpectedFrame { expected: &'static str, got: Command },
    /// ACK or NACK of a message that carries nothing to acknowledge it by: it came from
    /// an `auto` subscription, which needs no acknowledgement.
    #[error(
        "failed to acknowledge message {message_id:?}: it has no ack header (its subscription uses ack mode auto)"
    )]
    NotAckable { message_id: String },
    /// Nothing arrived in time; `what` names what was awaited.
    #[error("timed out waiting for {what}")]
    Timeout { what: String },
    /// The connection is closed (after `disconnect`, or the broker went away).
    #[error("connection to the broker is closed")]
    Closed,
}
