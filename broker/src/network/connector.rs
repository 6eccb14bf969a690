//! A connector's links: for each remote group it reaches (one for `masterslave:` and
//! `tcp://`, one per address for `static:`), try the listed members in order, keep a link
//! only to the one that answers as live (a backup answers, says it is one, and is left),
//! and when the link breaks, start again from the top of the list, so the link follows the
//! remote group's failover. The forwarder outlives the connections (see `forwarder`).

use super::forwarder::{Forwarder, ForwarderConfig};
use super::link::{self, Roles};
use super::{LinkShared, Network};
use crate::admin::api::LinkState;
use crate::cluster::frame::ClusterFrame;
use crate::cluster::{ClusterConn, HandshakeConfig, HandshakeError, Purpose, DEFAULT_HANDSHAKE_TIMEOUT};
use crate::config::connector_uri::TcpAddress;
use parking_lot::Mutex;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};
use crate::tls::Stream;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const FIRST_RETRY: Duration = Duration::from_millis(100);
const LAST_RETRY: Duration = Duration::from_secs(2);
/// A link lost sooner than this after it was made is not made again at once, but after
/// the retry delay, doubling as for a failed attempt (a remote whose disk fails closes
/// every link that forwards to it).
const SHORT_LINK: Duration = Duration::from_secs(1);

/// One link of a connector, as `/status` shows it.
pub struct TargetState {
    pub target: String,
    pub addresses: Vec<TcpAddress>,
    pub status: Mutex<TargetStatus>,
    pub forwarded_out: Arc<AtomicU64>,
    pub forwarded_in: Arc<AtomicU64>,
    /// The live link, while there is one.
    pub link: Mutex<Option<Arc<LinkShared>>>,
}

pub struct TargetStatus {
    pub state: LinkState,
    pub since: Instant,
    pub linked_to: Option<String>,
    pub remote_node: Option<String>,
    pub remote_group: Option<String>,
    pub last_error: Option<String>,
}

impl TargetState {
    pub fn new(target: String, addresses: Vec<TcpAddress>) -> TargetState {
        TargetState {
            target,
            addresses,
            status: Mutex::new(TargetStatus {
                state: LinkState::Connecting,
                since: Instant::now(),
                linked_to: None,
                remote_node: None,
                remote_group: None,
                last_error: None,
            }),
            forwarded_out: Arc::default(),
            forwarded_in: Arc::default(),
            link: Mutex::new(None),
        }
    }

    fn set(&self, state: LinkState, error: Option<String>) {
        let mut s = self.status.lock();
        if s.state != state {
            s.state = state;
            s.since = Instant::now();
        }
        s.last_error = error;
        if state != LinkState::Linked {
            s.linked_to = None;
        }
    }
}

/// The password a link proves: the remote group's cluster password.
#[derive(Clone)]
pub enum Password {
    Inline(Vec<u8>),
    /// Read at every attempt (a mounted Secret may be rotated, or not there yet).
    File(std::path::PathBuf),
}

impl Password {
    fn load(&self) -> Result<Vec<u8>, String> {
        match self {
            Password::Inline(p) => Ok(p.clone()),
            Password::File(path) => match std::fs::read_to_string(path) {
                Ok(s) if !s.trim().is_empty() => Ok(s.trim_end_matches(['\n', '\r']).as_bytes().to_vec()),
                Ok(_) => Err(format!("passwordFile {} is empty", path.display())),
                Err(e) => Err(format!("failed to read passwordFile {}: {e}", path.display())),
            },
        }
    }
}

/// What one connector link needs to run.
pub struct LinkPlan {
    pub connector: String,
    /// The label for logs and metrics (`name`, or `name/target` for a static list).
    pub name: String,
    pub duplex: bool,
    pub network_ttl: u8,
    pub password: Password,
    pub forwarder: ForwarderConfig,
    /// Applied to the demand this side advertises (duplex).
    pub filters: super::demand::Filters,
    pub state: Arc<TargetState>,
}

/// Keeps the link up until the network stops.
pub async fn run(net: Arc<Network>, plan: LinkPlan) {
    let mut forwarder = Forwarder::new(plan.forwarder.clone(), std::sync::Arc::clone(&net.broker));
    let mut retry = FIRST_RETRY;
    let mut logged_failure: Option<String> = None;
    while !net.stop.is_cancelled() {
        forwarder.release_if_stale();
        let mut failures = Vec::new();
        let mut refused = false;
        let mut refused_tls = false;
        let mut linked = false;
        for address in &plan.state.addresses {
            let attempt = tokio::select! {
                a = attempt(&net, &plan, address) => a,
                _ = net.stop.cancelled() => return,
            };
            match attempt {
                Ok((conn, peer_node, peer_group)) => {
                    linked = true;
                    logged_failure = None;
                    let began = Instant::now();
                    serve(&net, &plan, &mut forwarder, address, conn, peer_node, peer_group).await;
                    if began.elapsed() >= SHORT_LINK {
                        retry = FIRST_RETRY;
                    } else {
                        tokio::select! {
                            _ = tokio::time::sleep(retry) => {}
                            _ = net.stop.cancelled() => return,
                        }
                        retry = (retry * 2).min(LAST_RETRY);
                    }
                    break;
                }
                Err(Failure { message, auth, tls }) => {
                    refused |= auth;
                    refused_tls |= tls;
                    failures.push(format!("{address}: {message}"));
                }
            }
        }
        if linked {
            continue;
        }
        let message = failures.join("; ");
        let state = if refused { LinkState::Refused } else { LinkState::Connecting };
        plan.state.set(state, Some(message.clone()));
        if logged_failure.as_deref() != Some(message.as_str()) {
            if refused {
                let check = if refused_tls { "the certificates: tls.caFile, tls.cluster.enabled" } else { "the remote's cluster user and password" };
                tracing::warn!(connector = %plan.name, error = %message, "bridge refused (check {check}); retrying");
            } else {
                tracing::info!(connector = %plan.name, error = %message, "bridge not linked yet; retrying");
            }
            logged_failure = Some(message);
        }
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = net.stop.cancelled() => return,
        }
        retry = (retry * 2).min(LAST_RETRY);
    }
}

struct Failure {
    message: String,
    /// The remote did not accept our password (or we did not accept its proof), or TLS failed.
    auth: bool,
    /// TLS failed (certificates, or TLS on one end only).
    tls: bool,
}

async fn attempt(net: &Network, plan: &LinkPlan, address: &TcpAddress) -> Result<(ClusterConn<Stream>, String, String), Failure> {
    let fail = |message: String| Failure { message, auth: false, tls: false };
    let password = plan.password.load().map_err(|message| Failure { message, auth: true, tls: false })?;
    let config = HandshakeConfig {
        node_id: net.identity.node_id.clone(),
        group: net.identity.group.clone(),
        user: net.identity.user.clone(),
        password,
        epoch: 0,
        purpose: Purpose::Bridge,
        max_frame: crate::ha::MAX_CLUSTER_FRAME,
        timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        faults: net.identity.faults.clone(),
    };
    let opened = crate::cluster::transport::open(&address.host, address.port, &net.identity.tls, &config, CONNECT_TIMEOUT).await;
    let (mut conn, peer) = match opened {
        Ok(x) => x,
        Err(e) => {
            let auth = e.is_tls()
                || matches!(e.handshake(), Some(HandshakeError::ServerProofInvalid { .. } | HandshakeError::BridgeIntoOwnGroup { .. }))
                || matches!(e.handshake(), Some(HandshakeError::Refused { reason }) if reason.contains("authentication"));
            return Err(Failure { message: e.describe(), auth, tls: e.is_tls() });
        }
    };
    if peer.role != "live" {
        // A backup of the remote group (or one starting): it tells who is live; we try the
        // next member of the list.
        let said = match tokio::time::timeout(Duration::from_secs(1), conn.recv()).await {
            Ok(Ok(Some(ClusterFrame::Goodbye { reason }))) => reason,
            _ => format!("{} is {}", peer.node_id, peer.role),
        };
        return Err(fail(said));
    }
    let frame = ClusterFrame::BridgeOpen {
        connector: plan.connector.clone(),
        duplex: plan.duplex,
        network_ttl: plan.network_ttl,
        prefetch: u32::try_from(plan.forwarder.prefetch).unwrap_or(u32::MAX),
        decrease_priority: plan.forwarder.priority < 0,
        replay: plan.forwarder.replay_when_no_consumers,
    };
    if let Err(e) = conn.send(&frame).await {
        return Err(fail(crate::report::error_chain(&e)));
    }
    Ok((conn, peer.node_id, peer.group))
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    net: &Arc<Network>,
    plan: &LinkPlan,
    forwarder: &mut Forwarder,
    address: &TcpAddress,
    conn: ClusterConn<Stream>,
    peer_node: String,
    peer_group: String,
) {
    let link = Arc::new(LinkShared {
        forwarded_out: Arc::clone(&plan.state.forwarded_out),
        forwarded_in: Arc::clone(&plan.state.forwarded_in),
        filters: plan.filters.clone(),
        ..LinkShared::new(plan.name.clone(), plan.connector.clone(), peer_node.clone(), peer_group.clone(), plan.network_ttl, plan.duplex, false)
    });
    {
        let mut s = plan.state.status.lock();
        s.state = LinkState::Linked;
        s.since = Instant::now();
        s.linked_to = Some(address.to_string());
        s.remote_node = Some(peer_node.clone());
        s.remote_group = Some(peer_group.clone());
        s.last_error = None;
    }
    *plan.state.link.lock() = Some(Arc::clone(&link));
    net.add_link(&link);
    tracing::info!(connector = %plan.name, remote = %peer_node, group = %peer_group, %address, duplex = plan.duplex, "bridge linked");
    let ended = link::run(net, &link, conn, Roles { forwarder: Some(forwarder), receive: plan.duplex }).await;
    net.remove_link(&link);
    *plan.state.link.lock() = None;
    if !net.stop.is_cancelled() {
        tracing::warn!(connector = %plan.name, remote = %peer_node, reason = %ended, "bridge link lost; reconnecting");
        plan.state.set(LinkState::Connecting, Some(ended));
    }
}
