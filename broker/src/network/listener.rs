//! The cluster port of a standalone broker (`ha.policy: none`): it only takes inbound
//! network bridges (and probes). Handshakes pass the same pending-connection gate as a
//! group member's cluster port. A replicated member's port is `ha::serve_cluster`.

use super::{Identity, NetworkSlot};
use crate::cluster::{accept_handshake, ClusterFrame, HandshakeConfig, Purpose, DEFAULT_HANDSHAKE_TIMEOUT};
use crate::ha::gate::{LogThrottle, PendingGate};
use crate::metrics::{ClusterMetrics, ClusterRefusedLabels};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub async fn serve(
    listener: TcpListener,
    identity: Identity,
    network: NetworkSlot,
    metrics: ClusterMetrics,
    max_pending: usize,
    stop: CancellationToken,
) {
    let gate = PendingGate::new(max_pending, metrics.pending.clone());
    let failed_log = Arc::new(parking_lot::Mutex::new(LogThrottle::default()));
    let config = Arc::new(HandshakeConfig {
        node_id: identity.node_id.clone(),
        group: identity.group.clone(),
        password: identity.password.clone(),
        epoch: 0,
        purpose: Purpose::Probe,
        max_frame: crate::ha::MAX_CLUSTER_FRAME,
        timeout: DEFAULT_HANDSHAKE_TIMEOUT,
    });
    let limit_log = parking_lot::Mutex::new(LogThrottle::default());
    loop {
        let Some((stream, peer_addr, place)) = crate::ha::admit_next(&listener, &gate, &metrics, &limit_log, &stop).await else {
            return;
        };
        let (config, network, metrics, failed_log) = (Arc::clone(&config), Arc::clone(&network), metrics.clone(), Arc::clone(&failed_log));
        tokio::spawn(async move {
            let handshake = tokio::select! {
                result = accept_handshake(stream, &config, "live") => Some(result),
                _ = place.displaced().cancelled() => None,
            };
            drop(place);
            let (mut conn, peer) = match handshake {
                Some(Ok(x)) => x,
                Some(Err(e)) => {
                    metrics.refused.get_or_create(&ClusterRefusedLabels { reason: e.kind() }).inc();
                    let allowed = failed_log.lock().allow();
                    if let Some(refused) = allowed {
                        tracing::warn!(peer = %peer_addr, error = %crate::report::error_chain(&e), refused, "refused a cluster connection");
                    }
                    return;
                }
                None => return,
            };
            match peer.purpose {
                Purpose::Probe => {}
                Purpose::Bridge => {
                    let net = network.read().clone();
                    match net {
                        Some(net) => net.serve_inbound(conn, peer).await,
                        None => {
                            let _ = conn.send(&ClusterFrame::Goodbye { reason: "not serving clients yet".into() }).await;
                        }
                    }
                }
                Purpose::Replicate | Purpose::Vote => {
                    let reason = "a standalone broker (ha.policy none) neither replicates nor votes".to_string();
                    let _ = conn.send(&ClusterFrame::Goodbye { reason }).await;
                }
            }
        });
    }
}
