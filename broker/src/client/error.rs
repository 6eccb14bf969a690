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
    /// A `stomp+ssl://` member cannot be reached with the TLS options given (no CA file, a
    /// certificate without its key); `reason` names the option to set.
    #[error("cannot connect over TLS: {reason}")]
    TlsUnconfigured { reason: String },
    /// The TLS options' files (CA, client certificate, key) could not be loaded; the
    /// source names the file.
    #[error("failed to load the client's TLS settings")]
    TlsSettings(#[source] crate::tls::TlsError),
    /// The TLS handshake with `addr` failed, or the broker ended the session with a TLS
    /// alert before CONNECTED; `reason` says what was refused (the broker's certificate:
    /// unknown CA, wrong name, expired; or this client's certificate).
    #[error("failed to set up TLS with {addr}: {reason}")]
    Tls { addr: String, reason: String },
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
    /// A failover client lost its broker and used up `maxReconnectAttempts` without
    /// reaching another; every pending request and subscription ends with this.
    #[error("failed to reconnect to any broker after {attempts} attempts (last error: {last_error})")]
    FailoverExhausted { attempts: u32, last_error: String },
    /// An acknowledgement that asked for a receipt (or named a transaction) was for a
    /// message delivered on a connection lost in a failover. The broker never applied it
    /// and will redeliver the message, marked `redelivered`.
    #[error(
        "failed to acknowledge message {message_id:?}: it was delivered on a connection lost in a failover; \
         the broker will redeliver it"
    )]
    AckLost { message_id: String },
    /// The transaction was open on a connection lost in a failover; the broker discarded
    /// its sends and acks. Begin it again.
    #[error("transaction {transaction:?} was lost in a failover: the broker discarded its sends and acks")]
    TransactionLost { transaction: String },
    /// The connection was lost after COMMIT was written and before its RECEIPT: the
    /// broker may or may not have applied the transaction.
    #[error(
        "the outcome of committing transaction {transaction:?} is unknown: the connection was lost in a failover \
         before the broker confirmed it"
    )]
    CommitInDoubt { transaction: String },
}
