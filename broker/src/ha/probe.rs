//! Asking members of the group who they are: a Probe handshake answers with the peer's
//! node id, role and epoch, and nothing else happens on that connection.

use super::HaContext;
use crate::cluster::{Purpose, ServerPeer};
use crate::config::Member;

/// Why a probe got no answer about who the member is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeError {
    pub reason: String,
    /// The member answered but did not let the probe through: too many handshakes were
    /// under way on its cluster port (`ha.cluster.maxPendingConnections`), or TLS failed
    /// (another CA, an expired certificate, TLS on one end only). It is up.
    pub busy: bool,
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Probes one cluster address.
pub async fn probe(ctx: &HaContext, addr: &str) -> Result<ServerPeer, ProbeError> {
    match ctx.open(addr, Purpose::Probe, ctx.config.connection_ttl.get()).await {
        Ok((_, peer)) => Ok(peer),
        Err(e) => Err(ProbeError { reason: e.describe(), busy: e.answered() }),
    }
}

/// The live member of the group with the highest epoch, if any answers.
pub async fn find_live(ctx: &HaContext) -> Option<(Member, u64)> {
    let probes = ctx.config.members.iter().map(|m| async move { (m, probe(ctx, &m.cluster).await) });
    let mut best: Option<(Member, u64)> = None;
    for (member, answer) in futures::future::join_all(probes).await {
        match answer {
            Ok(peer) if peer.role == "live" => {
                if best.as_ref().is_none_or(|(_, e)| peer.epoch > *e) {
                    best = Some((member.clone(), peer.epoch));
                }
            }
            Ok(peer) => tracing::debug!(member = %member.name, role = %peer.role, "member is not live"),
            Err(reason) => tracing::debug!(member = %member.name, %reason, "member did not answer"),
        }
    }
    best
}
