//! The STOMP listener: accepts connections up to the configured limit and runs each in
//! its own task; on shutdown it stops accepting and waits for connections to finish.

pub mod connection;
mod writer;

use connection::ConnectionContext;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

/// Accepts clients until `ctx.shutdown` is cancelled, then waits (up to `drain`) for open
/// connections to flush their pending work and close.
pub async fn run(listener: &TcpListener, ctx: ConnectionContext, drain: Duration) {
    let tracker = TaskTracker::new();
    let open = Arc::new(AtomicUsize::new(0));
    let max = ctx.broker.config.stomp.max_connections;
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = ctx.shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(error = %e, "failed to accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if open.load(Ordering::Relaxed) >= max {
            ctx.metrics.connections_rejected.inc();
            tracing::warn!(%peer, max, "connection limit reached; closing new connection");
            drop(stream);
            continue;
        }
        open.fetch_add(1, Ordering::Relaxed);
        ctx.metrics.connections.inc();
        ctx.metrics.connections_total.inc();
        let ctx = ctx.clone();
        let open = Arc::clone(&open);
        tracker.spawn(async move {
            connection::serve(stream, peer, ctx.clone()).await;
            open.fetch_sub(1, Ordering::Relaxed);
            ctx.metrics.connections.dec();
        });
    }
    tracker.close();
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        tracing::warn!(remaining = open.load(Ordering::Relaxed), "connections still open after the drain timeout");
    }
}
