//! Cluster DNS: a small UDP server on the Docker network's gateway (port 53) that answers
//! Service and headless-member names from the API state (see [`resolve`]). Pod sandboxes
//! name it as their DNS server: Docker's embedded resolver still answers the pods' own
//! names (network aliases) and forwards every other query here.
//!
//! It must not resolve names outside the cluster domain (it refuses them: pods here have
//! no other resolver) nor serve anything but UDP queries of one question.

pub mod message;
pub mod resolve;

use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::{Pod, Service};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::watch::Informer;
use message::{Rcode, CLASS_IN, TYPE_A};
use resolve::Resolution;

/// Seconds a client may cache an answer: Services follow the live pod, so keep it short.
pub const ANSWER_TTL: u32 = 1;
/// The port resolvers ask (resolv.conf has no port).
pub const DNS_PORT: u16 = 53;
/// Largest UDP DNS message read; larger ones are not queries we answer.
const MAX_MESSAGE: usize = 1232;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("failed to listen for DNS on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The answer to one DNS message, from Services and Pods as they are now.
pub fn respond(request: &[u8], services: &[std::sync::Arc<Service>], pods: &[std::sync::Arc<Pod>]) -> Vec<u8> {
    let query = match message::parse_query(request) {
        Ok(q) => q,
        Err((id, error)) => {
            debug!(%error, "unreadable DNS query");
            return message::error_answer(id.unwrap_or_default(), Rcode::FormErr);
        }
    };
    if query.qclass != CLASS_IN {
        return message::answer(&query, Rcode::NotImp, &[], ANSWER_TTL);
    }
    match resolve::resolve(&query.name, services, pods) {
        // Other record types of an existing name: no data, not an error.
        Resolution::Addresses(ips) if query.qtype == TYPE_A => message::answer(&query, Rcode::NoError, &ips, ANSWER_TTL),
        Resolution::Addresses(_) => message::answer(&query, Rcode::NoError, &[], ANSWER_TTL),
        Resolution::NoSuchName => message::answer(&query, Rcode::NxDomain, &[], ANSWER_TTL),
        Resolution::NotOurs => message::answer(&query, Rcode::Refused, &[], ANSWER_TTL),
    }
}

/// Binds the DNS socket on `ip`:53.
pub async fn bind(ip: IpAddr) -> Result<UdpSocket, DnsError> {
    let addr = SocketAddr::new(ip, DNS_PORT);
    UdpSocket::bind(addr).await.map_err(|source| DnsError::Bind { addr, source })
}

/// Answers queries on `socket` until `cancel`.
pub async fn serve(socket: UdpSocket, services: Informer<Service>, pods: Informer<Pod>, cancel: CancellationToken) {
    let mut buf = vec![0u8; MAX_MESSAGE];
    info!(addr = ?socket.local_addr().ok(), "cluster DNS listening");
    loop {
        let (len, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            received = socket.recv_from(&mut buf) => match received {
                Ok(r) => r,
                Err(error) => {
                    // ICMP errors of earlier answers surface here on some systems.
                    debug!(%error, "DNS receive failed");
                    continue;
                }
            },
        };
        let answer = respond(&buf[..len], &services.state(), &pods.state());
        if let Err(error) = socket.send_to(&answer, peer).await {
            warn!(%peer, %error, "failed to send a DNS answer");
        }
    }
}
