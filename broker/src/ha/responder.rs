//! What a backup says to STOMP clients: it accepts the connection, reads the CONNECT and
//! answers with an ERROR naming the live, so failover clients move on at once. It serves
//! no messages and holds no state.
//!
//! Its memory is bounded whatever clients send: the first frame may be at most
//! [`RESPONDER_LIMITS`] (a CONNECT is a few hundred bytes), a frame beyond them gets the
//! same ERROR at once, and at most [`MAX_RESPONDER_CONNECTIONS`] are answered at a time.

use crate::stomp::{Frame, Inbound, Limits, StompCodec};
use std::sync::atomic::{AtomicU64, Ordering};
use bytes::BytesMut;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use crate::tls::{self, Listener, TlsContext};
use tokio_util::sync::CancellationToken;

/// The first frame a backup reads from a client: a CONNECT (or whatever the client sends
/// first) needs no more.
pub const RESPONDER_LIMITS: Limits = Limits { max_header_bytes: 8 * 1024, max_headers: 64, max_body_bytes: 4 * 1024 };

/// Clients answered at once; one more is closed without an answer. Each is answered within
/// `FIRST_FRAME_TIMEOUT`, so this is only reached by a flood.
pub const MAX_RESPONDER_CONNECTIONS: usize = 1024;

const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(5);

/// The ERROR message a backup sends; failover clients recognise the `not live` prefix.
/// `live` is the live's URL (`stomp://host:port`, `amqps://host:port`).
pub fn not_live_message(group: &str, live: Option<&str>) -> String {
    match live {
        Some(url) => format!("not live: backup of group {group}; live is {url}"),
        None => format!("not live: backup of group {group}; no live known yet"),
    }
}

/// The next connection on `listener`, or `None` once `stop` is cancelled; a failed
/// accept (out of file descriptors) backs off briefly instead of spinning.
pub async fn next_client(listener: &TcpListener, stop: &CancellationToken) -> Option<(tokio::net::TcpStream, std::net::SocketAddr)> {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => return Some(x),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            },
            _ = stop.cancelled() => return None,
        }
    }
}

/// Answers every client with "not live" until `stop` is cancelled. `live` is read per
/// connection, so the answer follows the group as it changes. With `tls.stomp.enabled`
/// the answer goes over TLS, as the live's would, so `stomp+ssl://` clients read it.
pub async fn serve(
    listener: &TcpListener,
    group: String,
    live: Arc<parking_lot::RwLock<Option<String>>>,
    tls: Arc<TlsContext>,
    stop: CancellationToken,
) {
    let answering = Arc::new(tokio::sync::Semaphore::new(MAX_RESPONDER_CONNECTIONS));
    let refused = AtomicU64::new(0);
    while let Some((tcp, peer)) = next_client(listener, &stop).await {
        let Ok(permit) = Arc::clone(&answering).try_acquire_owned() else {
            let total = refused.fetch_add(1, Ordering::Relaxed) + 1;
            if total.is_power_of_two() {
                tracing::warn!(%peer, limit = MAX_RESPONDER_CONNECTIONS, refused = total, "backup closed a STOMP connection unanswered: too many clients are being answered at once");
            }
            continue;
        };
        let scheme = if tls.config().stomp.enabled { "stomp+ssl" } else { "stomp" };
        let message = not_live_message(&group, live.read().as_deref().map(|a| format!("{scheme}://{a}")).as_deref());
        let tls = Arc::clone(&tls);
        tokio::spawn(async move {
            let _permit = permit;
            let acceptor = tls.acceptor(Listener::Stomp);
            let mut stream = match tls::accept(tcp, acceptor, FIRST_FRAME_TIMEOUT, Listener::Stomp, &tls.metrics).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "backup refused a STOMP connection");
                    return;
                }
            };
            let mut codec = StompCodec::new(RESPONDER_LIMITS);
            let mut buf = BytesMut::with_capacity(1024);
            let first = tokio::time::timeout(FIRST_FRAME_TIMEOUT, async {
                loop {
                    match codec.decode(&mut buf) {
                        Ok(Some(Inbound::Frame(f))) => return Some(f),
                        Ok(Some(Inbound::Heartbeat)) => continue,
                        Ok(None) => {}
                        // Too large or malformed: answer the same without reading further.
                        Err(_) => return None,
                    }
                    match stream.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => return None,
                        Ok(_) => {}
                    }
                }
            })
            .await;
            let receipt = first.ok().flatten().and_then(|f| f.get("receipt").map(str::to_string));
            let mut error = Frame::error(message.clone());
            if let Some(r) = receipt {
                error = error.header("receipt-id", r);
            }
            let mut out = BytesMut::new();
            codec.encode(&error, &mut out);
            let _ = stream.write_all(&out).await;
            let _ = stream.shutdown().await;
        });
    }
}
