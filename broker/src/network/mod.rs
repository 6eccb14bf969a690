//! Networks of brokers (ActiveMQ's store-and-forward bridges) between groups: each
//! connector of `network.connectors` links this broker, while it is live, to the live of
//! another group over that group's cluster port, authenticated like replication. Each side
//! tells the other which destinations it has consumers for (demand); a side forwards what
//! the other wants, a queue's messages only when its own consumers are busy or absent, a
//! topic once per link. A forwarded message is stored on the remote by the engine's one
//! accept call, so it is as durable there as a client SEND, and settled here only then.
//!
//! What it must not do: build journal records (the engine does), link into its own group
//! (config and handshake refuse it), or hand a message to a local consumer or another
//! group while the remote may hold it, before or after a failover of either side (see
//! `forwarder`).

pub mod connector;
pub mod demand;
pub mod forwarder;
pub mod held;
pub mod link;
pub mod listener;

use crate::admin::api::{ConnectorStatus, DrainState, DrainStatus, InboundLinkStatus, LinkState, LinkStatus, NetworkStatus};
use crate::cluster::frame::{ClusterFrame, DemandEntry};
use crate::cluster::{ClientPeer, ClusterConn};
use crate::config::connector_uri::UriKind;
use crate::config::{DestinationFilter, NetworkConfig};
use crate::engine::Broker;
use crate::metrics::{BridgeDirectionLabels, BridgeLabels, LabelValue, NetworkMetrics};
use connector::{LinkPlan, TargetState};
use demand::{Filters, OtherLink};
use forwarder::{Forwarder, ForwarderConfig};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Error)]
pub enum NetworkError {
    #[error("network.connectors {connector:?} has no password: set ha.cluster.password (or passwordFile), or the connector's own password or passwordFile")]
    NoPassword { connector: String },
    #[error("network.connectors {connector:?}: {message}")]
    Invalid { connector: String, message: String },
}

/// Who this broker is on the network.
#[derive(Clone)]
pub struct Identity {
    pub node_id: String,
    /// The group name (`ha.groupName`; a standalone broker's node id).
    pub group: String,
    /// The cluster user (`ha.cluster.user`), proved with the password on every link.
    pub user: String,
    /// This broker's cluster password: what inbound links prove, and what connectors use
    /// unless they name the remote's.
    pub password: Vec<u8>,
    /// The certificates for the cluster port and outgoing links (`tls.cluster.enabled`).
    pub tls: Arc<crate::tls::TlsContext>,
    /// How often a link pings, and how long a silent one has.
    pub check_period: Duration,
    pub connection_ttl: Duration,
    /// The fault rules every link's frames pass (`debug.faultInjection`; off otherwise).
    pub faults: crate::faults::Faults,
}

/// The network of the live term now running, for the cluster listener's inbound links.
pub type NetworkSlot = Arc<RwLock<Option<Arc<Network>>>>;

/// One connection of a bridge, as the other links and `/status` see it.
pub struct LinkShared {
    /// For logs and metrics.
    pub name: String,
    /// The connector's name (ours, or the remote's for an inbound link).
    pub connector: String,
    pub peer_node: String,
    pub peer_group: String,
    pub network_ttl: u8,
    pub duplex: bool,
    pub inbound: bool,
    /// Filters this side applies to the demand it advertises.
    pub filters: Filters,
    pub remote_demand: Mutex<Vec<DemandEntry>>,
    pub local_demand_count: AtomicU64,
    pub forwarded_out: Arc<AtomicU64>,
    pub forwarded_in: Arc<AtomicU64>,
}

impl LinkShared {
    pub fn new(name: String, connector: String, peer_node: String, peer_group: String, network_ttl: u8, duplex: bool, inbound: bool) -> LinkShared {
        LinkShared {
            name,
            connector,
            peer_node,
            peer_group,
            network_ttl,
            duplex,
            inbound,
            filters: Filters::default(),
            remote_demand: Mutex::new(Vec::new()),
            local_demand_count: AtomicU64::new(0),
            forwarded_out: Arc::default(),
            forwarded_in: Arc::default(),
        }
    }

    fn labels(&self) -> BridgeLabels {
        BridgeLabels { connector: LabelValue(self.name.clone()) }
    }
}

/// A forwarder one link's session holds at a time.
type SharedForwarder = Arc<tokio::sync::Mutex<Forwarder>>;

struct ConnectorEntry {
    name: String,
    uri: String,
    duplex: bool,
    targets: Vec<Arc<TargetState>>,
}

pub struct Network {
    broker: Arc<Broker>,
    identity: Identity,
    connectors: Vec<ConnectorEntry>,
    links: Mutex<Vec<Arc<LinkShared>>>,
    /// Bumped when any link's remote demand changes or a link comes or goes: other links
    /// may relay it (networkTTL above 1).
    relay: tokio::sync::watch::Sender<u64>,
    /// Forwarders of duplex inbound links, by remote group and connector: they outlive a
    /// connection as a connector's do.
    duplex_forwarders: Mutex<HashMap<(String, String), SharedForwarder>>,
    metrics: NetworkMetrics,
    stop: CancellationToken,
    /// The grouping handler of this live term, if `grouping.handler` is not none: its
    /// remote handlers reach it through the cluster port as bridges do.
    grouping: RwLock<Option<Arc<crate::grouping::Grouping>>>,
    /// Forwards stored behind a failed one, unpublished until it comes again.
    held: Arc<held::HeldForwards>,
}

impl Network {
    /// Starts every connector's links; they run until `stop` is cancelled.
    pub fn start(
        broker: Arc<Broker>,
        identity: Identity,
        config: &NetworkConfig,
        metrics: NetworkMetrics,
        stop: CancellationToken,
    ) -> Result<Arc<Network>, NetworkError> {
        let mut plans = Vec::new();
        let mut connectors = Vec::new();
        for c in &config.connectors {
            let invalid = |message: String| NetworkError::Invalid { connector: c.name.clone(), message };
            let uri = c.parsed_uri().map_err(|e| invalid(e.to_string()))?;
            // A file is read at every attempt: a rotated Secret is picked up, and a missing
            // one fails that link (shown in /status), not the broker.
            let password = match (&c.password_file, c.password.is_empty()) {
                (Some(path), _) => connector::Password::File(path.clone()),
                (None, false) => connector::Password::Inline(c.password.as_bytes().to_vec()),
                (None, true) => connector::Password::Inline(identity.password.clone()),
            };
            if matches!(&password, connector::Password::Inline(p) if p.is_empty()) {
                return Err(NetworkError::NoPassword { connector: c.name.clone() });
            }
            let parse = |list: &[String]| list.iter().map(|p| DestinationFilter::parse(p)).collect::<Result<Vec<_>, _>>();
            let filters = Filters {
                excluded: parse(&c.excluded_destinations).map_err(invalid)?,
                included: parse(&c.statically_included_destinations).map_err(invalid)?,
            };
            let groups: Vec<(String, Vec<_>)> = match uri.kind {
                UriKind::Static => uri.addresses.iter().map(|a| (a.to_string(), vec![a.clone()])).collect(),
                UriKind::MasterSlave | UriKind::Single => vec![(uri.to_string(), uri.addresses.clone())],
            };
            let mut targets = Vec::new();
            for (target, addresses) in groups {
                let name = if uri.kind == UriKind::Static { format!("{}/{target}", c.name) } else { c.name.clone() };
                let state = Arc::new(TargetState::new(target, addresses));
                targets.push(Arc::clone(&state));
                plans.push(LinkPlan {
                    connector: c.name.clone(),
                    name: name.clone(),
                    duplex: c.duplex,
                    network_ttl: c.network_ttl,
                    password: password.clone(),
                    forwarder: ForwarderConfig {
                        name,
                        own_group: identity.group.clone(),
                        network_ttl: c.network_ttl,
                        priority: if c.decrease_network_consumer_priority { -1 } else { 0 },
                        prefetch: c.prefetch_size,
                        filters: filters.clone(),
                        replay_when_no_consumers: c.replay_when_no_consumers,
                    },
                    filters: filters.clone(),
                    state,
                });
            }
            connectors.push(ConnectorEntry { name: c.name.clone(), uri: uri.to_string(), duplex: c.duplex, targets });
        }
        let net = Arc::new(Network {
            broker,
            identity,
            connectors,
            links: Mutex::new(Vec::new()),
            relay: tokio::sync::watch::channel(0).0,
            duplex_forwarders: Mutex::new(HashMap::new()),
            metrics,
            stop,
            grouping: RwLock::new(None),
            held: Arc::default(),
        });
        net.broker.forget_stale_pins();
        // What this group forwarded before a failover and no bridge to its group claimed.
        let (broker, stop) = (Arc::clone(&net.broker), net.stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(forwarder::RELEASE_AFTER) => {
                    broker.release_pins();
                }
                _ = stop.cancelled() => {}
            }
        });
        for plan in plans {
            net.metrics.linked.get_or_create(&BridgeLabels { connector: LabelValue(plan.name.clone()) }).set(0);
            tracing::info!(connector = %plan.name, target = %plan.state.target, duplex = plan.duplex, network_ttl = plan.network_ttl, "starting network connector");
            tokio::spawn(connector::run(Arc::clone(&net), plan));
        }
        Ok(net)
    }

    fn add_link(&self, link: &Arc<LinkShared>) {
        self.links.lock().push(Arc::clone(link));
        self.metrics.linked.get_or_create(&link.labels()).set(1);
        self.relay.send_modify(|v| *v += 1);
    }

    fn remove_link(&self, link: &Arc<LinkShared>) {
        self.links.lock().retain(|l| !Arc::ptr_eq(l, link));
        self.metrics.linked.get_or_create(&link.labels()).set(0);
        self.metrics.remote_demand.get_or_create(&link.labels()).set(0);
        self.relay.send_modify(|v| *v += 1);
    }

    fn metrics_forwarded(&self, link: &LinkShared, direction: &'static str) {
        self.metrics.forwarded.get_or_create(&BridgeDirectionLabels { connector: LabelValue(link.name.clone()), direction }).inc();
    }

    /// What to tell `link`'s remote we want: our consumers, and what other links' remotes
    /// want that may cross one more bridge.
    fn advertisement(&self, link: &Arc<LinkShared>) -> Vec<DemandEntry> {
        if self.broker.drain.is_draining() {
            // A group being removed asks for nothing: nobody here will consume it.
            return Vec::new();
        }
        let local = self.broker.local_demand();
        let others: Vec<(String, Vec<DemandEntry>)> = self
            .links
            .lock()
            .iter()
            .filter(|l| !Arc::ptr_eq(l, link))
            .map(|l| (l.peer_group.clone(), l.remote_demand.lock().clone()))
            .collect();
        let others: Vec<OtherLink<'_>> = others.iter().map(|(peer, demand)| OtherLink { peer, demand }).collect();
        demand::advertise(&self.identity.group, &link.peer_group, link.network_ttl, &local, &others, &link.filters)
    }

    /// Sets the grouping handler of this live term.
    pub fn set_grouping(&self, grouping: Option<Arc<crate::grouping::Grouping>>) {
        *self.grouping.write() = grouping;
    }

    pub fn grouping(&self) -> Option<Arc<crate::grouping::Grouping>> {
        self.grouping.read().clone()
    }

    /// Serves what a peer opened to this live's cluster port: a bridge, or a remote
    /// grouping handler (the cluster listener hands both over after the handshake).
    pub async fn serve_peer(self: &Arc<Self>, conn: ClusterConn<crate::tls::Stream>, peer: ClientPeer) {
        match peer.purpose {
            crate::cluster::Purpose::Grouping => self.serve_grouping(conn, peer).await,
            _ => self.serve_inbound(conn, peer).await,
        }
    }

    /// Serves a remote grouping handler's connection.
    async fn serve_grouping(&self, mut conn: ClusterConn<crate::tls::Stream>, peer: ClientPeer) {
        match self.grouping() {
            Some(g) => g.serve_remote(conn, peer, &self.identity).await,
            None => {
                let reason = format!("{} runs no grouping handler (grouping.handler none); check grouping.address", self.identity.group);
                let _ = conn.send(&ClusterFrame::Goodbye { reason }).await;
            }
        }
    }

    /// The groups linked bridges know consumers of `destination` at, consumers of their own
    /// (not relayed from further away), sorted: where a new message group may go when no
    /// consumer is here.
    pub fn groups_with_consumers(&self, destination: &str) -> Vec<String> {
        let mut groups: Vec<String> = self
            .links
            .lock()
            .iter()
            .filter(|l| {
                l.remote_demand.lock().iter().any(|e| e.destination == destination && e.path.len() == 1 && e.path[0] == l.peer_group)
            })
            .map(|l| l.peer_group.clone())
            .collect();
        groups.sort();
        groups.dedup();
        groups
    }

    /// Serves a link another broker's connector opened to us.
    async fn serve_inbound(self: &Arc<Self>, mut conn: ClusterConn<crate::tls::Stream>, peer: ClientPeer) {
        let open = tokio::time::timeout(crate::cluster::DEFAULT_HANDSHAKE_TIMEOUT, conn.recv()).await;
        let (connector, duplex, network_ttl, prefetch, decrease_priority, replay) = match open {
            Ok(Ok(Some(ClusterFrame::BridgeOpen { connector, duplex, network_ttl, prefetch, decrease_priority, replay }))) => (
                connector,
                duplex,
                network_ttl.clamp(1, crate::config::MAX_NETWORK_TTL),
                (prefetch as usize).clamp(1, 65_536),
                decrease_priority,
                replay,
            ),
            _ => {
                let _ = conn.send(&ClusterFrame::Goodbye { reason: "expected a bridge-open frame".into() }).await;
                return;
            }
        };
        let name = format!("inbound:{}/{connector}", peer.group);
        let link = Arc::new(LinkShared::new(name.clone(), connector.clone(), peer.node_id.clone(), peer.group.clone(), network_ttl, duplex, true));
        self.add_link(&link);
        tracing::info!(remote = %peer.node_id, group = %peer.group, %connector, duplex, "inbound bridge linked");
        let ended = if duplex {
            let forwarder = {
                let mut map = self.duplex_forwarders.lock();
                let entry = map.entry((peer.group.clone(), connector.clone())).or_insert_with(|| {
                    // The reverse direction of a duplex link behaves as its connector says.
                    let config = ForwarderConfig {
                        name: name.clone(),
                        own_group: self.identity.group.clone(),
                        network_ttl,
                        priority: if decrease_priority { -1 } else { 0 },
                        prefetch,
                        filters: Filters::default(),
                        replay_when_no_consumers: replay,
                    };
                    Arc::new(tokio::sync::Mutex::new(Forwarder::new(config, Arc::clone(&self.broker))))
                });
                Arc::clone(entry)
            };
            let mut forwarder = forwarder.lock().await;
            forwarder.release_if_stale();
            link::run(self, &link, conn, link::Roles { forwarder: Some(&mut forwarder), receive: true }).await
        } else {
            link::run(self, &link, conn, link::Roles { forwarder: None, receive: true }).await
        };
        self.remove_link(&link);
        if !self.stop.is_cancelled() {
            tracing::info!(remote = %peer.node_id, group = %peer.group, %connector, reason = %ended, "inbound bridge ended");
        }
    }

    /// What `/status` shows under `network`.
    pub fn status(&self) -> NetworkStatus {
        let connectors = self
            .connectors
            .iter()
            .map(|c| ConnectorStatus {
                name: c.name.clone(),
                uri: c.uri.clone(),
                duplex: c.duplex,
                links: c.targets.iter().map(|t| target_status(t)).collect(),
            })
            .collect();
        let inbound = self
            .links
            .lock()
            .iter()
            .filter(|l| l.inbound)
            .map(|l| InboundLinkStatus {
                connector: l.connector.clone(),
                remote_node: l.peer_node.clone(),
                remote_group: l.peer_group.clone(),
                duplex: l.duplex,
                local_demand_count: l.local_demand_count.load(Ordering::Relaxed),
                forwarded_in: l.forwarded_in.load(Ordering::Relaxed),
                forwarded_out: l.forwarded_out.load(Ordering::Relaxed),
            })
            .collect();
        NetworkStatus { connectors, inbound }
    }

    /// Begins draining this live towards `targets` (see [`crate::engine::drain`]), or
    /// changes them; whether it began just now. Every link advertises its (now empty)
    /// demand again at once; forwarders take up every queue at their next refresh.
    pub fn begin_drain(&self, targets: Vec<String>) -> bool {
        let began = self.broker.drain.begin(targets);
        self.metrics.draining.set(1);
        self.relay.send_modify(|v| *v += 1);
        began
    }

    /// The drain's progress, once one was asked for; `clients`: open client connections.
    pub fn drain_status(&self, clients: u64) -> Option<DrainStatus> {
        let drain = &self.broker.drain;
        let targets = drain.targets()?;
        let messages_left = self.broker.queued_messages();
        // Links that forward from here: our connectors', and duplex links opened to us.
        let forwarding = self.links.lock().iter().filter(|l| (!l.inbound || l.duplex) && drain.is_target(&l.peer_group)).count();
        let (state, reason) = if messages_left == 0 && clients == 0 {
            (DrainState::Drained, None)
        } else if messages_left > 0 && forwarding == 0 {
            (DrainState::Stuck, Some(self.unlinked_reason(&targets)))
        } else {
            (DrainState::Draining, None)
        };
        Some(DrainStatus { state, messages_left, forwarded: drain.forwarded(), targets: targets.to_vec(), reason })
    }

    /// Why no bridge to a target group is linked, in one line.
    fn unlinked_reason(&self, targets: &[String]) -> String {
        let wanted = targets.join(", ");
        if self.connectors.is_empty() {
            return format!(
                "no bridge to {wanted} is linked: this broker has no network connector (network.connectors) and no duplex bridge from a target is linked to it"
            );
        }
        let links: Vec<String> = self
            .connectors
            .iter()
            .flat_map(|c| c.targets.iter().map(move |t| (c, t)))
            .map(|(c, t)| {
                let s = t.status.lock();
                let what = match (&s.remote_group, &s.last_error) {
                    (Some(group), _) if s.state == LinkState::Linked => format!("linked to group {group}, not a target"),
                    (_, Some(error)) => format!("{:?}: {error}", s.state).to_lowercase(),
                    _ => format!("{:?}", s.state).to_lowercase(),
                };
                format!("{} ({}) {what}", c.name, t.target)
            })
            .collect();
        format!("no bridge to {wanted} is linked: {}", links.join("; "))
    }

    /// True when there is nothing to show (no connector, no inbound link).
    pub fn is_idle(&self) -> bool {
        self.connectors.is_empty() && self.links.lock().is_empty()
    }
}

/// Most demand entries `/status` lists per link.
const STATUS_DEMAND: usize = 100;

fn target_status(t: &TargetState) -> LinkStatus {
    let s = t.status.lock();
    let link = t.link.lock().clone();
    let (remote_demand, remote_demand_count, local_demand_count) = match &link {
        Some(l) => {
            let demand = l.remote_demand.lock();
            let mut names: Vec<String> = demand.iter().map(|e| e.destination.clone()).collect();
            names.sort();
            names.dedup();
            let count = names.len() as u64;
            names.truncate(STATUS_DEMAND);
            (names, count, l.local_demand_count.load(Ordering::Relaxed))
        }
        None => (Vec::new(), 0, 0),
    };
    LinkStatus {
        target: t.target.clone(),
        state: s.state,
        state_seconds: s.since.elapsed().as_secs(),
        linked_to: s.linked_to.clone(),
        remote_node: s.remote_node.clone(),
        remote_group: s.remote_group.clone(),
        last_error: if s.state == LinkState::Linked { None } else { s.last_error.clone() },
        remote_demand,
        remote_demand_count,
        local_demand_count,
        forwarded_out: t.forwarded_out.load(Ordering::Relaxed),
        forwarded_in: t.forwarded_in.load(Ordering::Relaxed),
    }
}
