//! The byte stream under every cluster connection: TCP, then TLS when `tls.cluster.enabled`
//! (mutual: each end presents its certificate and checks the other's against
//! `tls.caFile`; a dialler also checks that the certificate names the host it dialled),
//! then the challenge–response of `handshake` on top.
//!
//! A failure in the transport is put in words an operator can act on ([`cause`]): a member
//! whose certificate is from another CA, expired, or missing, or one speaking plaintext to
//! a TLS port (or the reverse), is refused and says so on both sides.

use super::conn::ClusterConn;
use super::handshake::{accept_handshake, connect_handshake, ClientPeer, HandshakeConfig, HandshakeError, ServerPeer};
use crate::tls::{self, Listener, ListenerLabels, Stream, TlsContext, TlsError};
use rustls::{AlertDescription, CertificateError};
use std::error::Error;
use std::time::Duration;
use thiserror::Error;
use tokio::net::TcpStream;

/// Why a cluster connection did not open, on either side.
#[derive(Debug, Error)]
pub enum TransportError {
    #[error("failed to connect to {addr}")]
    Connect { addr: String, source: std::io::Error },
    #[error("connecting to {addr} timed out after {timeout:?}")]
    ConnectTimeout { addr: String, timeout: Duration },
    #[error("{addr} is not a host:port address")]
    Address { addr: String },
    #[error(transparent)]
    Tls(TlsError),
    #[error(transparent)]
    Handshake(HandshakeError),
}

impl TransportError {
    /// The error and its causes on one line, then what it means when that is not plain
    /// from the error itself (see [`cause`]).
    pub fn describe(&self) -> String {
        let chain = crate::report::error_chain(self);
        match cause(self) {
            Some(cause) => format!("{chain}: {cause}"),
            None => chain,
        }
    }

    /// The failure is in TLS: certificates, or TLS on one end only. Counted as `tls`.
    pub fn is_tls(&self) -> bool {
        match self {
            TransportError::Tls(TlsError::HandshakeTimeout { .. }) => false,
            TransportError::Tls(_) => true,
            _ => rustls_error(self).is_some() || tls_record_as_frame(self),
        }
    }

    /// The member at the address answered (TLS or the handshake got a reply) but did not
    /// let this connection through: it is up.
    pub fn answered(&self) -> bool {
        match self {
            TransportError::Connect { .. } | TransportError::ConnectTimeout { .. } | TransportError::Address { .. } => false,
            TransportError::Tls(TlsError::HandshakeTimeout { .. }) => false,
            TransportError::Tls(_) => rustls_error(self).is_some(),
            TransportError::Handshake(e) => e.is_busy() || self.is_tls(),
        }
    }

    /// The handshake error, when the transport got that far.
    pub fn handshake(&self) -> Option<&HandshakeError> {
        match self {
            TransportError::Handshake(e) => Some(e),
            _ => None,
        }
    }

    /// A short, fixed name for the kind of failure, for a metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            TransportError::Tls(TlsError::HandshakeTimeout { .. }) => "timed_out",
            _ if self.is_tls() => "tls",
            TransportError::Handshake(e) => e.kind(),
            _ => "connect",
        }
    }
}

/// Splits `host:port` (`[v6]:port` too).
pub fn split_addr(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    Some((host, port.parse().ok()?))
}

/// TCP to `host:port` within `timeout`, then TLS with this member's certificate when the
/// cluster port is on TLS (the peer's certificate must name `host`). A TLS failure is
/// counted in `duomq_tls_handshake_failures{listener="cluster"}`.
pub async fn dial(host: &str, port: u16, tls: &TlsContext, timeout: Duration) -> Result<Stream, TransportError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addr = join_addr(host, port);
    let tcp = match tokio::time::timeout(timeout, TcpStream::connect((bare, port))).await {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => return Err(TransportError::Connect { addr, source }),
        Err(_) => return Err(TransportError::ConnectTimeout { addr, timeout }),
    };
    let _ = tcp.set_nodelay(true);
    tls::connect(tcp, bare, tls.cluster_connector(), timeout).await.map_err(|e| {
        count_failure(tls);
        TransportError::Tls(e)
    })
}

/// `host:port`, with brackets around an IPv6 host.
fn join_addr(host: &str, port: u16) -> String {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.contains(':') { format!("[{bare}]:{port}") } else { format!("{bare}:{port}") }
}

/// Opens a cluster connection to `host:port` as the client: [`dial`], then the
/// challenge–response. TLS failures that show only in the handshake (with TLS 1.3 a peer
/// refuses this member's certificate after the dialler's side of TLS is done) are
/// counted as TLS failures too. An injected partition from the address (or, once the
/// handshake names it, from the node) ends it as [`HandshakeError::Partitioned`]; the
/// connection's frames pass this node's fault rules.
pub async fn open(
    host: &str,
    port: u16,
    tls: &TlsContext,
    config: &HandshakeConfig,
    connect_timeout: Duration,
) -> Result<(ClusterConn<Stream>, ServerPeer), TransportError> {
    let addr = join_addr(host, port);
    if config.faults.cuts(&addr, config.purpose) {
        return Err(TransportError::Handshake(HandshakeError::Partitioned { peer: addr }));
    }
    let stream = dial(host, port, tls, connect_timeout).await?;
    let (mut conn, peer) = connect_handshake(stream, config).await.map_err(|e| {
        let err = TransportError::Handshake(e);
        if err.is_tls() {
            count_failure(tls);
        }
        err
    })?;
    conn.set_faults(config.faults.tap(&peer.node_id, Some(&addr), config.purpose));
    Ok((conn, peer))
}

/// The server side: TLS when the cluster port is on TLS (with the certificate files in use
/// now, within the handshake's timeout), then the challenge–response.
pub async fn accept(
    tcp: TcpStream,
    tls: &TlsContext,
    config: &HandshakeConfig,
    role: &str,
) -> Result<(ClusterConn<Stream>, ClientPeer), TransportError> {
    let stream = tls::accept(tcp, tls.acceptor(Listener::Cluster), config.timeout, Listener::Cluster, &tls.metrics)
        .await
        .map_err(TransportError::Tls)?;
    let (mut conn, peer) = accept_handshake(stream, config, role).await.map_err(TransportError::Handshake)?;
    conn.set_faults(config.faults.tap(&peer.node_id, None, peer.purpose));
    Ok((conn, peer))
}

fn count_failure(tls: &TlsContext) {
    tls.metrics.handshake_failures.get_or_create(&ListenerLabels { listener: Listener::Cluster.as_str() }).inc();
}

/// The error a [`TransportError`] wraps: its `source` skips that one (it is transparent).
fn unwrap_transparent<'a>(e: &'a (dyn Error + 'static)) -> &'a (dyn Error + 'static) {
    match e.downcast_ref::<TransportError>() {
        Some(TransportError::Tls(t)) => t,
        Some(TransportError::Handshake(h)) => h,
        _ => e,
    }
}

/// The rustls error somewhere in `e`'s causes.
fn rustls_error<'a>(e: &'a (dyn Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur: Option<&(dyn Error + 'static)> = Some(unwrap_transparent(e));
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(r) = err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()).and_then(|i| i.downcast_ref::<rustls::Error>()) {
            return Some(r);
        }
        cur = err.source();
    }
    None
}

/// A handshake frame whose length prefix is a TLS record header (content type 20–23,
/// version 3.x): the peer speaks TLS to a plaintext end.
fn tls_record_as_frame(e: &(dyn Error + 'static)) -> bool {
    let mut cur: Option<&(dyn Error + 'static)> = Some(unwrap_transparent(e));
    while let Some(err) = cur {
        if let Some(HandshakeError::FrameTooLarge { length, .. }) = err.downcast_ref::<HandshakeError>() {
            let b = u32::try_from(*length).unwrap_or(0).to_be_bytes();
            return (0x14..=0x17).contains(&b[0]) && b[1] == 0x03;
        }
        cur = err.source();
    }
    false
}

/// What a failure on the cluster transport means, when the error alone does not say it in
/// terms of the configuration: `None` for the rest (a refused connection, a wrong password).
pub fn cause(e: &(dyn Error + 'static)) -> Option<&'static str> {
    if tls_record_as_frame(e) {
        return Some("the peer speaks TLS and this end does not: tls.cluster.enabled must be the same on every member");
    }
    let cause = match rustls_error(e)? {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => "the members' certificates are not from the same CA (tls.caFile)",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "the peer's certificate has expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the peer's certificate is not valid yet (are the clocks right?)"
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "the peer's certificate does not name the host dialled (the member's address in ha.members must be among its DNS names or IP addresses)"
            }
            _ => return None,
        },
        rustls::Error::NoCertificatesPresented => {
            "the peer presented no certificate: every member needs a certificate from the same CA (tls.certFile, tls.caFile)"
        }
        rustls::Error::InvalidMessage(_) => {
            "no TLS from the peer: tls.cluster.enabled must be on for every member or off for every one (a port too busy to take a connection also answers without TLS)"
        }
        rustls::Error::AlertReceived(alert) => match alert {
            AlertDescription::UnknownCA => {
                "the peer does not trust this member's certificate: the members' certificates are not from the same CA (tls.caFile)"
            }
            AlertDescription::CertificateExpired => "the peer refused this member's certificate: it has expired",
            AlertDescription::CertificateRequired => "the peer requires a certificate from this member (tls.certFile)",
            AlertDescription::BadCertificate | AlertDescription::CertificateUnknown => "the peer refused this member's certificate",
            AlertDescription::ProtocolVersion => "the members accept no TLS version in common (tls.minVersion)",
            AlertDescription::DecodeError => {
                "the peer could not read this member's TLS: does this member speak TLS where the peer does not?"
            }
            _ => return None,
        },
        rustls::Error::PeerIncompatible(_) => "the members accept no TLS version in common (tls.minVersion)",
        _ => return None,
    };
    Some(cause)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_addresses_when_split_should_find_host_and_port() {
        assert_eq!(split_addr("orders-0.orders:61616"), Some(("orders-0.orders", 61616)));
        assert_eq!(split_addr("[::1]:61616"), Some(("[::1]", 61616)));
        assert_eq!(split_addr("no-port"), None);
    }

    #[test]
    fn given_a_tls_record_read_as_a_frame_length_should_say_the_peer_speaks_tls() {
        let hello = TransportError::Handshake(HandshakeError::FrameTooLarge { expected: "hello", length: 0x1603_0100, limit: 4096 });
        assert!(hello.is_tls());
        assert!(hello.describe().contains("tls.cluster.enabled"), "{}", hello.describe());
        let huge = TransportError::Handshake(HandshakeError::FrameTooLarge { expected: "hello", length: 64 << 20, limit: 4096 });
        assert!(!huge.is_tls());
        assert_eq!(huge.kind(), "frame_too_large");
    }

    #[test]
    fn given_an_unknown_issuer_should_name_the_ca() {
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer));
        let e = TransportError::Tls(TlsError::Handshake { peer: "127.0.0.1:61616".into(), source: io });
        assert_eq!(
            e.describe(),
            "TLS handshake with 127.0.0.1:61616 failed: invalid peer certificate: UnknownIssuer: the members' certificates are not from the same CA (tls.caFile)"
        );
        assert!(e.answered());
        assert_eq!(e.kind(), "tls");
    }
}
