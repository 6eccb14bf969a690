//! One connection's byte stream, plain TCP or TLS over it, and the two ways to get one:
//! [`accept`] (a listener's side) and [`connect`] (a dialler's side).

use super::{common_name, Listener, ListenerLabels, TlsError, TlsMetrics};
use rustls::pki_types::{CertificateDer, ServerName};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A TCP stream, or TLS over one, as the listener or dialler set it up.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Server(s) => s.get_ref().0,
            Stream::Client(s) => s.get_ref().0,
        }
    }

    pub fn is_tls(&self) -> bool {
        !matches!(self, Stream::Plain(_))
    }

    /// The certificate the peer presented (the leaf), checked against the CA.
    pub fn peer_certificate(&self) -> Option<&CertificateDer<'static>> {
        let certs = match self {
            Stream::Plain(_) => None,
            Stream::Server(s) => s.get_ref().1.peer_certificates(),
            Stream::Client(s) => s.get_ref().1.peer_certificates(),
        };
        certs.and_then(|c| c.first())
    }

    /// The subject common name of the peer's certificate.
    pub fn peer_common_name(&self) -> Option<String> {
        self.peer_certificate().and_then(common_name)
    }

    /// The negotiated protocol version, `TLSv1_3` and such (`None`: plaintext).
    pub fn protocol(&self) -> Option<rustls::ProtocolVersion> {
        match self {
            Stream::Plain(_) => None,
            Stream::Server(s) => s.get_ref().1.protocol_version(),
            Stream::Client(s) => s.get_ref().1.protocol_version(),
        }
    }
}

/// A listener's side: TLS with `acceptor` when it has one, within `timeout`; plaintext
/// otherwise. A failed handshake is counted in `metrics` under `listener`.
pub async fn accept(
    tcp: TcpStream,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    timeout: Duration,
    listener: Listener,
    metrics: &TlsMetrics,
) -> Result<Stream, TlsError> {
    let Some(acceptor) = acceptor else { return Ok(Stream::Plain(tcp)) };
    let peer = tcp.peer_addr().map_or_else(|_| "?".to_string(), |a| a.to_string());
    let failed = || metrics.handshake_failures.get_or_create(&ListenerLabels { listener: listener.as_str() }).inc();
    match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => Ok(Stream::Server(Box::new(tls))),
        Ok(Err(source)) => {
            failed();
            Err(TlsError::Handshake { peer, source })
        }
        Err(_) => {
            failed();
            Err(TlsError::HandshakeTimeout { peer, timeout })
        }
    }
}

/// A dialler's side: TLS with `connector` when it has one (the server's certificate must
/// be from its roots and name `host`), within `timeout`; plaintext otherwise.
pub async fn connect(
    tcp: TcpStream,
    host: &str,
    connector: Option<tokio_rustls::TlsConnector>,
    timeout: Duration,
) -> Result<Stream, TlsError> {
    let Some(connector) = connector else { return Ok(Stream::Plain(tcp)) };
    let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_string())
        .map_err(|_| TlsError::ServerName(host.to_string()))?;
    let peer = tcp.peer_addr().map_or_else(|_| host.to_string(), |a| format!("{host} ({a})"));
    match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
        Ok(Ok(tls)) => Ok(Stream::Client(Box::new(tls))),
        Ok(Err(source)) => Err(TlsError::Handshake { peer, source }),
        Err(_) => Err(TlsError::HandshakeTimeout { peer, timeout }),
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Server(s) => s.is_write_vectored(),
            Stream::Client(s) => s.is_write_vectored(),
        }
    }
}
