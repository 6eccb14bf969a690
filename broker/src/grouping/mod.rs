//! Clustered message grouping (the HornetQ/Artemis grouping handlers): one group's live
//! runs the LOCAL handler, which decides which group of the cluster owns each message
//! group of a queue; every other group's live runs a REMOTE handler that asks it over the
//! cluster port before storing the first message of a group it does not know, and caches
//! the answers. The owning group's broker pins the group to one consumer of its queue
//! (engine dispatch); any other broker forwards the group's messages to it over the
//! network bridge to that group.
//!
//! Unlike Artemis (whose handler has no working backup), the local handler's bindings are
//! journal records of its group under a reserved destination, so they replicate with the
//! group's journal and its backup takes over with every binding: no group moves.
//!
//! What it must not do: store a grouped message before its owner is decided (a decision
//! that does not come within `grouping.timeout` refuses the SEND), answer a proposal
//! before the binding is durable, or reap a binding a remote handler still uses (remote
//! handlers tell the local one which bindings they used).

pub mod local;
pub mod remote;

use crate::admin::api::{GroupingHandlerKind, GroupingStatus};
use crate::config::GroupingConfig;
use crate::engine::accept::{GroupRouter, RouteError};
use crate::engine::queue::Queue;
use crate::metrics::GroupingMetrics;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;
use thiserror::Error;

/// The reserved destination the local handler journals its bindings under.
pub const BINDINGS: &str = "/queue/$duomq.grouping";

#[derive(Debug, Error)]
pub enum GroupingError {
    #[error("grouping.address {address:?}: {message}")]
    Address { address: String, message: String },
    #[error("grouping.handler remote needs the cluster password (ha.cluster.password or passwordFile) to reach the local handler")]
    NoPassword,
}

enum Handler {
    Local(Arc<local::LocalHandler>),
    Remote(Arc<remote::RemoteHandler>),
}

/// This live broker's grouping handler; the engine asks it through [`GroupRouter`].
pub struct Grouping {
    handler: Handler,
    own: Arc<str>,
    timeout: Duration,
    /// Where the queue's consumers are, for a proposal: the network of this live term.
    network: Weak<crate::network::Network>,
    metrics: GroupingMetrics,
}

impl Grouping {
    /// The handler `config` asks for, started for this live term (none: `None`).
    pub fn start(
        broker: &Arc<crate::engine::Broker>,
        identity: &crate::network::Identity,
        config: &GroupingConfig,
        network: Weak<crate::network::Network>,
        metrics: GroupingMetrics,
        stop: tokio_util::sync::CancellationToken,
    ) -> Result<Option<Arc<Grouping>>, GroupingError> {
        use crate::config::GroupingHandler;
        let own: Arc<str> = Arc::from(identity.group.as_str());
        let handler = match config.handler {
            GroupingHandler::None => return Ok(None),
            GroupingHandler::Local => Handler::Local(local::LocalHandler::start(Arc::clone(broker), config, metrics.clone(), stop)),
            GroupingHandler::Remote => Handler::Remote(remote::RemoteHandler::start(identity, config, metrics.clone(), stop)?),
        };
        metrics.connected.set(i64::from(matches!(handler, Handler::Local(_))));
        tracing::info!(handler = config.handler.name(), group = %own, timeout = ?config.timeout.get(), "grouping handler started");
        Ok(Some(Arc::new(Grouping { handler, own, timeout: config.timeout.get(), network, metrics })))
    }

    /// Serves a remote handler's connection (local handler only).
    pub async fn serve_remote(&self, conn: crate::cluster::ClusterConn<tokio::net::TcpStream>, peer: crate::cluster::ClientPeer, identity: &crate::network::Identity) {
        match &self.handler {
            Handler::Local(h) => h.serve(conn, peer, identity).await,
            Handler::Remote(_) => {
                let mut conn = conn;
                let reason = format!("{} runs a remote grouping handler, not the local one (check grouping.address)", self.own);
                let _ = conn.send(&crate::cluster::ClusterFrame::Goodbye { reason }).await;
            }
        }
    }

    /// The group a new message group of `queue` should go to: this one if the queue has
    /// consumers here; else one of the groups bridges know consumers at, chosen by the
    /// group id's hash so that groups spread over them; else this one (its messages wait
    /// here for a consumer).
    fn proposal(&self, queue: &Queue, group: &str) -> Arc<str> {
        if queue.local_consumers() > 0 {
            return Arc::clone(&self.own);
        }
        let candidates = self.network.upgrade().map(|n| n.groups_with_consumers(&queue.name)).unwrap_or_default();
        if candidates.is_empty() {
            return Arc::clone(&self.own);
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(group, &mut hasher);
        let pick = std::hash::Hasher::finish(&hasher) % candidates.len() as u64;
        Arc::from(candidates[usize::try_from(pick).unwrap_or(0)].as_str())
    }

    pub fn status(&self) -> GroupingStatus {
        let (handler, connected, linked_to, last_error) = match &self.handler {
            Handler::Local(_) => (GroupingHandlerKind::Local, true, None, None),
            Handler::Remote(h) => {
                let (linked_to, last_error) = h.link_state();
                (GroupingHandlerKind::Remote, linked_to.is_some(), linked_to, last_error)
            }
        };
        GroupingStatus {
            handler,
            group: self.own.to_string(),
            bindings: u64::try_from(self.metrics.bindings.get()).unwrap_or(0),
            proposals_total: self.metrics.proposals.get(),
            timeouts_total: self.metrics.timeouts.get(),
            reaped_total: self.metrics.reaped.get(),
            connected,
            linked_to,
            last_error,
        }
    }
}

impl GroupRouter for Grouping {
    fn route<'a>(&'a self, queue: &'a Arc<Queue>, group: &'a str) -> Pin<Box<dyn Future<Output = Result<Arc<str>, RouteError>> + Send + 'a>> {
        Box::pin(async move {
            match &self.handler {
                Handler::Local(h) => {
                    if let Some(owner) = h.known(&queue.name, group) {
                        return Ok(owner);
                    }
                    let proposal = self.proposal(queue, group);
                    h.decide(&queue.name, group, &proposal).await.map_err(|reason| RouteError::Refused {
                        queue: queue.name.to_string(),
                        group: group.to_string(),
                        reason,
                    })
                }
                Handler::Remote(h) => {
                    if let Some(owner) = h.known(&queue.name, group) {
                        return Ok(owner);
                    }
                    let proposal = self.proposal(queue, group);
                    match tokio::time::timeout(self.timeout, h.ask(&queue.name, group, &proposal)).await {
                        Ok(Ok(owner)) => Ok(owner),
                        Ok(Err(remote::AskError::Refused(reason))) => {
                            Err(RouteError::Refused { queue: queue.name.to_string(), group: group.to_string(), reason })
                        }
                        Err(_) => {
                            self.metrics.timeouts.inc();
                            let reason = h.unreachable_reason();
                            tracing::warn!(queue = %queue.name, %group, timeout = ?self.timeout, %reason, "no grouping decision in time: SEND refused");
                            Err(RouteError::Timeout { queue: queue.name.to_string(), group: group.to_string(), timeout: self.timeout, reason })
                        }
                    }
                }
            }
        })
    }

    fn own_group(&self) -> &str {
        &self.own
    }
}
