//! The STOMP listener: accepts connections up to the configured limit and runs each in
//! its own task; on shutdown it stops accepting and waits for connections to finish.
//! While it serves, idle destinations are reclaimed every half `destinations.idleTimeout`.

pub mod connection;
mod writer;

use crate::tls::{self, Listener};
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
    tracker.spawn(reclaim_idle_destinations(ctx.clone()));
    tracker.spawn(crate::engine::schedule::run(Arc::clone(&ctx.broker), ctx.shutdown.clone()));
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
            // TLS (tls.stomp.enabled) within the connect timeout: a plaintext client on
            // a TLS port fails here and is closed, never served in plaintext.
            let acceptor = ctx.tls.acceptor(Listener::Stomp);
            let timeout = ctx.broker.config.stomp.connect_timeout.get();
            match tls::accept(stream, acceptor, timeout, Listener::Stomp, &ctx.metrics.tls).await {
                Ok(stream) => connection::serve(stream, peer, ctx.clone()).await,
                Err(e) => {
                    ctx.metrics.connections_rejected.inc();
                    tracing::debug!(%peer, error = %crate::report::error_chain(&e), "refused a STOMP connection");
                }
            }
            open.fetch_sub(1, Ordering::Relaxed);
            ctx.metrics.connections.dec();
        });
    }
    tracker.close();
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        tracing::warn!(remaining = open.load(Ordering::Relaxed), "connections still open after the drain timeout");
    }
}

/// Removes destinations unused for `destinations.idleTimeout`: a sweep every half of it,
/// a destination found unused by three sweeps in a row goes (unused for one to one and a
/// half times the timeout).
async fn reclaim_idle_destinations(ctx: ConnectionContext) {
    let timeout = ctx.broker.config.destinations.idle_timeout.get();
    if timeout.is_zero() {
        return;
    }
    let mut every = tokio::time::interval((timeout / 2).max(Duration::from_millis(10)));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {
                let broker = Arc::clone(&ctx.broker);
                // The sweep locks every queue in turn: off the connection threads' hot path.
                let _ = tokio::task::spawn_blocking(move || broker.reclaim_idle(3)).await;
            }
            _ = ctx.shutdown.cancelled() => return,
        }
    }
}
