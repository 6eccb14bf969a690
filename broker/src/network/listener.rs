//! The cluster port of a live that is not replicated (standalone, shared store): it only takes inbound
//! network bridges (and probes). Handshakes pass the same pending-connection gate as a
//! group member's cluster port. A replicated member's port is `ha::serve_cluster`.

use super::{Identity, NetworkSlot};
use crate::cluster::{ClusterFrame, HandshakeConfig, Purpose, DEFAULT_HANDSHAKE_TIMEOUT};
use crate::ha::gate::PendingGate;
use crate::ha::RefusalLogs;
use crate::metrics::ClusterMetrics;
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
    let config = Arc::new(HandshakeConfig {
        node_id: identity.node_id.clone(),
        group: identity.group.clone(),
        user: identity.user.clone(),
        password: identity.password.clone(),
        epoch: 0,
        purpose: Purpose::Probe,
        max_frame: crate::ha::MAX_CLUSTER_FRAME,
        timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        faults: identity.faults.clone(),
    });
    let logs = Arc::new(RefusalLogs::default());
    loop {
        let Some(admitted) = crate::ha::admit_next(&listener, &gate, &metrics, &logs, &stop).await else {
            return;
        };
        let (config, network, metrics, logs) = (Arc::clone(&config), Arc::clone(&network), metrics.clone(), Arc::clone(&logs));
        let identity = identity.clone();
        tokio::spawn(async move {
            let Some((mut conn, peer)) = admitted.handshake(&config, "live", &identity.tls, &metrics, &logs).await else {
                return;
            };
            match peer.purpose {
                Purpose::Probe => {}
                Purpose::Bridge | Purpose::Grouping => {
                    let net = network.read().clone();
                    match net {
                        Some(net) => net.serve_peer(conn, peer).await,
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
