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
use crate::engine::accept::{GroupRouter, RouteError, Routing};
use crate::engine::message::GroupOwner;
use crate::engine::queue::Queue;
use std::collections::HashMap;
use crate::metrics::GroupingMetrics;
use std::sync::{Arc, Weak};
use std::time::Duration;
use thiserror::Error;

/// How often message groups stored undecided are looked at besides consumer changes (a
/// bridge learning of a remote consumer).
const WAITING_CHECK: Duration = Duration::from_millis(500);

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
            GroupingHandler::Local => Handler::Local(local::LocalHandler::start(Arc::clone(broker), config, metrics.clone(), stop.clone())),
            GroupingHandler::Remote => Handler::Remote(remote::RemoteHandler::start(identity, config, metrics.clone(), stop.clone())?),
        };
        metrics.connected.set(i64::from(matches!(handler, Handler::Local(_))));
        tracing::info!(handler = config.handler.name(), group = %own, timeout = ?config.timeout.get(), "grouping handler started");
        let grouping = Arc::new(Grouping { handler, own, timeout: config.timeout.get(), network, metrics });
        tokio::spawn(decide_waiting(Arc::downgrade(&grouping), Arc::clone(broker), stop));
        Ok(Some(grouping))
    }

    /// Serves a remote handler's connection (local handler only).
    pub async fn serve_remote(&self, conn: crate::cluster::ClusterConn<crate::tls::Stream>, peer: crate::cluster::ClientPeer, identity: &crate::network::Identity) {
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
    /// group id's hash so that groups spread over them; none while no consumer is known
    /// anywhere (the group is decided when one appears).
    fn proposal(&self, queue: &Queue, group: &str) -> Option<Arc<str>> {
        if queue.local_consumers() > 0 {
            return Some(Arc::clone(&self.own));
        }
        let candidates = self.network.upgrade().map(|n| n.groups_with_consumers(&queue.name)).unwrap_or_default();
        if candidates.is_empty() {
            return None;
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(group, &mut hasher);
        let pick = std::hash::Hasher::finish(&hasher) % candidates.len() as u64;
        Some(Arc::from(candidates[usize::try_from(pick).unwrap_or(0)].as_str()))
    }

    /// The group that owns `group` of `queue`: the binding known here, else the handler's
    /// decision on this broker's proposal; none while no consumer exists anywhere.
    async fn owner(&self, queue: &Queue, group: &str) -> Result<Option<Arc<str>>, RouteError> {
        if let Some(owner) = self.known(&queue.name, group) {
            return Ok(Some(owner));
        }
        match self.proposal(queue, group) {
            Some(proposal) => self.decide(&queue.name, group, &proposal).await.map(Some),
            None => Ok(None),
        }
    }

    /// A binding this broker knows already (the local handler's, or a remote's cache).
    fn known(&self, queue: &str, group: &str) -> Option<Arc<str>> {
        match &self.handler {
            Handler::Local(h) => h.known(queue, group),
            Handler::Remote(h) => h.known(queue, group),
        }
    }

    /// Has the handler bind `group` of `queue` to `proposal`, or tell the binding it has.
    async fn decide(&self, queue: &str, group: &str, proposal: &str) -> Result<Arc<str>, RouteError> {
        let refused = |reason| RouteError::Refused { queue: queue.to_string(), group: group.to_string(), reason };
        match &self.handler {
            // The local handler's decision waits for its record to be durable (and held by
            // synced backups): bounded by the same timeout.
            Handler::Local(h) => match tokio::time::timeout(self.timeout, h.decide(queue, group, proposal)).await {
                Ok(decided) => decided.map_err(refused),
                Err(_) => Err(self.timed_out(queue, group, "the binding was not durable in time (journal or backups slow)".into())),
            },
            Handler::Remote(h) => match tokio::time::timeout(self.timeout, h.ask(queue, group, proposal)).await {
                Ok(Ok(owner)) => Ok(owner),
                Ok(Err(remote::AskError::Refused(reason))) => Err(refused(reason)),
                Err(_) => Err(self.timed_out(queue, group, h.unreachable_reason())),
            },
        }
    }

    fn timed_out(&self, queue: &str, group: &str, reason: String) -> RouteError {
        self.metrics.timeouts.inc();
        tracing::warn!(%queue, %group, timeout = ?self.timeout, %reason, "no grouping decision in time");
        RouteError::Timeout { queue: queue.to_string(), group: group.to_string(), timeout: self.timeout, reason }
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
    fn route<'a>(&'a self, queue: &'a Arc<Queue>, group: &'a str) -> Routing<'a> {
        Box::pin(self.owner(queue, group))
    }

    fn own_group(&self) -> &str {
        &self.own
    }
}

/// Decides the message groups stored while no consumer of their queue existed anywhere,
/// once one does (a local consumer comes, or a bridge learns of one), until `stop`.
async fn decide_waiting(grouping: std::sync::Weak<Grouping>, broker: Arc<crate::engine::Broker>, stop: tokio_util::sync::CancellationToken) {
    let mut consumers = broker.consumer_changes();
    let mut tick = tokio::time::interval(WAITING_CHECK);
    loop {
        tokio::select! {
            _ = consumers.changed() => {}
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let Some(grouping) = grouping.upgrade() else { return };
        for queue in broker.queues_with_undecided_groups() {
            let mut decided = HashMap::new();
            for group in queue.undecided_groups() {
                let owner = match grouping.owner(&queue, &group).await {
                    Ok(Some(owner)) => owner,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::debug!(queue = %queue.name, %group, error = %e, "a waiting message group is not decided yet");
                        continue;
                    }
                };
                let owner = if *owner == *grouping.own { GroupOwner::Here } else { GroupOwner::Elsewhere(owner) };
                decided.insert(group, owner);
            }
            if !decided.is_empty() {
                tracing::info!(queue = %queue.name, groups = decided.len(), "decided message groups stored while no consumer existed");
                queue.decide_groups(&decided);
            }
        }
    }
}
