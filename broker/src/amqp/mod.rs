//! The AMQP 1.0 listener (`amqp` in `broker.yaml`), on fe2o3-amqp's acceptor: no codec of
//! our own. It is a second front door to the same engine STOMP uses, and adds no state
//! of its own: a transfer from a client is the `Broker::accept` a STOMP SEND makes (a
//! persistent message is settled `accepted` only once durable, as a receipted SEND), a
//! receiving link is the engine consumer a SUBSCRIBE creates, and a disposition is the
//! settle call of an ACK (accepted) or a NACK (released, modified, rejected).
//!
//! Pieces: [`sasl`] (the broker's users), [`address`] (addresses to destinations),
//! [`message`] (the mapping of messages both ways), [`connection`] (one client:
//! sessions and links), `outbox` (its socket writes, coalesced).
//!
//! Not supported yet (the README says the same, and links asking for them are refused
//! with `amqp:not-implemented`): transactions, shared subscriptions, dynamic (temporary)
//! nodes, browsing (distribution-mode copy), source filters other than a JMS selector
//! and the anonymous relay. A backup redirects AMQP clients to its live ([`redirect`]).
//! With `tls.amqp.enabled` the listener speaks `amqps` only, on the same certificate
//! as STOMP; a client certificate `auth.certificateUsers` maps logs in with SASL EXTERNAL.

pub mod address;
pub mod connection;
pub mod message;
mod outbox;
pub mod redirect;
pub mod sasl;

use crate::engine::accept::AcceptError;
use crate::engine::DestinationError;
use crate::security::Denied;
use crate::server::connection::ConnectionContext;
use crate::tls::{self, Listener};
use fe2o3_amqp::types::definitions::{self, AmqpError as Condition, ErrorCondition};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

/// What the broker tells an AMQP client it refuses, as the error of a detach, a
/// disposition or a close.
#[derive(Debug, Error)]
pub enum AmqpError {
    #[error("the link has no address (the anonymous relay and dynamic nodes are not supported yet)")]
    NoAddress,
    #[error("address {0:?} names no queue or topic")]
    Address(String),
    #[error("{0}")]
    Destination(#[from] DestinationError),
    #[error("{0}")]
    NotAuthorized(Box<Denied>),
    #[error("message bodies of {0} are not supported (send data sections or a string amqp-value)")]
    Body(&'static str),
    #[error("{0} is not supported yet")]
    NotImplemented(&'static str),
    #[error("{0}")]
    Accept(#[from] AcceptError),
    #[error("{0}")]
    Durable(#[from] crate::engine::durable::DurableError),
    #[error("invalid selector: {0}")]
    Selector(#[from] crate::selector::SelectorError),
    #[error("the broker is shutting down")]
    Shutdown,
}

impl AmqpError {
    /// The AMQP error condition and description a client gets.
    pub fn to_amqp(&self) -> definitions::Error {
        let condition = match self {
            AmqpError::NoAddress | AmqpError::Address(_) | AmqpError::Destination(_) | AmqpError::Selector(_) => Condition::InvalidField,
            AmqpError::NotAuthorized(_) => Condition::UnauthorizedAccess,
            AmqpError::Durable(crate::engine::durable::DurableError::NoClientId { .. } | crate::engine::durable::DurableError::Unknown { .. }) => {
                Condition::InvalidField
            }
            AmqpError::Durable(_) => Condition::ResourceLocked,
            AmqpError::Body(_) => Condition::DecodeError,
            AmqpError::NotImplemented(_) => Condition::NotImplemented,
            AmqpError::Accept(AcceptError::Destination(_)) => Condition::InvalidField,
            AmqpError::Accept(
                AcceptError::NoRoom(_) | AcceptError::Full { .. } | AcceptError::DiskQuota { .. } | AcceptError::Grouping(_),
            ) => Condition::ResourceLimitExceeded,
            AmqpError::Accept(_) => Condition::InternalError,
            AmqpError::Shutdown => {
                return definitions::Error::new(
                    ErrorCondition::ConnectionError(definitions::ConnectionError::ConnectionForced),
                    Some(self.to_string()),
                    None,
                )
            }
        };
        let description = match self {
            // The client has no log to read: the whole chain, and who was refused what.
            AmqpError::Accept(e) => crate::report::error_chain(e),
            AmqpError::NotAuthorized(denied) => denied.to_string(),
            other => other.to_string(),
        };
        definitions::Error::new(condition, Some(description), None)
    }
}

/// Why the AMQP listener closed a connection before serving it (the `reason` label).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// `limit` (stomp.maxConnections), `tls` (the amqps handshake failed), `authentication`
    /// (SASL outcome auth), `timeout` (no open within stomp.connectTimeout), `protocol`
    /// (bad header or frames), `not_live`.
    pub reason: &'static str,
}

/// The AMQP listener's metrics, next to the STOMP ones (whose message totals include AMQP's).
#[derive(Debug, Clone, Default)]
pub struct AmqpMetrics {
    pub connections: Gauge,
    pub opened: Counter,
    pub refused: Family<RefusedLabels, Counter>,
    pub messages_in: Counter,
    pub messages_out: Counter,
    /// Links attached now (both directions).
    pub links: Gauge,
    /// Link attaches refused (address, permission, unsupported feature).
    pub links_refused: Counter,
}

impl AmqpMetrics {
    pub fn register(registry: &mut Registry) -> AmqpMetrics {
        let m = AmqpMetrics::default();
        registry.register("duomq_amqp_connections", "Open AMQP client connections", m.connections.clone());
        registry.register("duomq_amqp_connections_opened", "AMQP connections accepted (SASL and open done)", m.opened.clone());
        registry.register("duomq_amqp_connections_refused", "AMQP connections closed before being served, by reason", m.refused.clone());
        registry.register("duomq_amqp_messages_in", "Messages accepted from AMQP producers", m.messages_in.clone());
        registry.register("duomq_amqp_messages_out", "Messages delivered to AMQP consumers", m.messages_out.clone());
        registry.register("duomq_amqp_links", "AMQP links attached", m.links.clone());
        registry.register("duomq_amqp_links_refused", "AMQP link attaches refused (address, permission, unsupported)", m.links_refused.clone());
        m
    }

    pub fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&RefusedLabels { reason }).inc();
    }
}

/// What the startup log says is missing, until the whole of AMQP works.
pub const NOT_SUPPORTED_YET: &str =
    "transactions, shared subscriptions, temporary (dynamic) nodes, queue browsers, the anonymous relay";

/// Serves AMQP clients until `ctx.shutdown` is cancelled, then waits up to `drain` for
/// connections to close. Shares `stomp.maxConnections` as its own limit.
pub async fn run(listener: &TcpListener, ctx: ConnectionContext, drain: Duration) {
    let tracker = TaskTracker::new();
    let open = Arc::new(AtomicUsize::new(0));
    let max = ctx.broker.config.stomp.max_connections;
    let metrics = ctx.metrics.amqp.clone();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "failed to accept an AMQP connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = ctx.shutdown.cancelled() => break,
        };
        if open.load(Ordering::Relaxed) >= max {
            metrics.refused("limit");
            tracing::warn!(%peer, max, "connection limit reached; closing new AMQP connection");
            continue;
        }
        open.fetch_add(1, Ordering::Relaxed);
        let (ctx, open) = (ctx.clone(), Arc::clone(&open));
        tracker.spawn(async move {
            // amqps (tls.amqp.enabled) within the connect timeout: a plaintext client on
            // a TLS port fails here and is closed, never served in plaintext.
            let acceptor = ctx.tls.acceptor(Listener::Amqp);
            let timeout = ctx.broker.config.stomp.connect_timeout.get();
            match tls::accept(stream, acceptor, timeout, Listener::Amqp, &ctx.metrics.tls).await {
                Ok(stream) => connection::serve(stream, peer, ctx).await,
                Err(e) => {
                    ctx.metrics.amqp.refused("tls");
                    tracing::debug!(%peer, error = %crate::report::error_chain(&e), "refused an AMQP connection");
                }
            }
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
    tracker.close();
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        tracing::warn!(remaining = open.load(Ordering::Relaxed), "AMQP connections still open after the drain timeout");
    }
}
