//! The admin endpoint's listener for axum: TCP, and with `tls.admin.enabled` TLS only (the
//! settings in use now, so rotated certificates serve new connections at once). Each
//! handshake runs in its own task, so a client that never finishes one holds up nobody;
//! failed handshakes (a plaintext client, an untrusted certificate) are logged and counted
//! in `duomq_tls_handshake_failures{listener="admin"}` and never served.

use crate::tls::{self, Listener as TlsListener, Stream, TlsContext};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// How long a client has to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes under way at most; connections beyond are closed at once.
pub const MAX_PENDING_HANDSHAKES: usize = 256;

pub struct AdminListener {
    tcp: TcpListener,
    tls: Arc<TlsContext>,
    handshakes: JoinSet<Option<(Stream, SocketAddr)>>,
}

impl AdminListener {
    pub fn new(tcp: TcpListener, tls: Arc<TlsContext>) -> AdminListener {
        AdminListener { tcp, tls, handshakes: JoinSet::new() }
    }

    /// Starts the handshake of a new connection in its own task; a plaintext listener's
    /// connection is ready at once.
    fn begin(&mut self, tcp: tokio::net::TcpStream, peer: SocketAddr) -> Option<(Stream, SocketAddr)> {
        let Some(acceptor) = self.tls.acceptor(TlsListener::Admin) else {
            return Some((Stream::Plain(tcp), peer));
        };
        if self.handshakes.len() >= MAX_PENDING_HANDSHAKES {
            tracing::warn!(%peer, max = MAX_PENDING_HANDSHAKES, "too many admin TLS handshakes under way; closing a new connection");
            return None;
        }
        let tls = Arc::clone(&self.tls);
        self.handshakes.spawn(async move {
            match tls::accept(tcp, Some(acceptor), HANDSHAKE_TIMEOUT, TlsListener::Admin, &tls.metrics).await {
                Ok(stream) => Some((stream, peer)),
                Err(e) => {
                    tracing::info!(%peer, error = %crate::report::error_chain(&e), "refused an admin connection: the admin API speaks TLS only");
                    None
                }
            }
        });
        None
    }
}

impl axum::serve::Listener for AdminListener {
    type Io = Stream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Stream, SocketAddr) {
        loop {
            tokio::select! {
                accepted = self.tcp.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        if let Some(ready) = self.begin(tcp, peer) {
                            return ready;
                        }
                    }
                    Err(e) => {
                        // Out of file descriptors and similar: back off instead of spinning.
                        tracing::warn!(error = %e, "failed to accept an admin connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    match done {
                        Ok(Some(ready)) => return ready,
                        Ok(None) => {}
                        Err(e) => tracing::warn!(error = %e, "an admin TLS handshake task failed"),
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}
