//! The broker process's life: admin endpoint first (so /healthz answers during
//! recovery), then journal recovery, then the STOMP listener; on shutdown the reverse,
//! with the journal flushed last.

use crate::admin::api::Role;
use crate::admin::{self, AdminState};
use crate::config::BrokerConfig;
use crate::engine::{Broker, EngineError};
use crate::metrics::Metrics;
use crate::server::{self, connection::ConnectionContext};
use parking_lot::RwLock;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Error)]
pub enum RunError {
    #[error("failed to listen for {what} on {addr}")]
    Listen { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("failed to load users")]
    Users(#[source] crate::config::ConfigError),
    #[error("failed to start the broker")]
    Engine(#[source] EngineError),
    #[error("failed to flush the journal at shutdown")]
    Close(#[source] crate::journal::JournalError),
}

/// How long shutdown waits for connections to finish their in-flight work.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the broker until `shutdown` is cancelled.
pub async fn run(config: BrokerConfig, shutdown: CancellationToken) -> Result<(), RunError> {
    let config = Arc::new(config);
    let users = config.load_users().map_err(RunError::Users)?;
    if users.is_empty() {
        tracing::warn!("no users configured: accepting anonymous clients (set auth.users or auth.usersFile)");
    } else if config.auth.allow_anonymous {
        tracing::info!(users = users.len(), "authentication on; anonymous clients allowed too");
    } else {
        tracing::info!(users = users.len(), "authentication on");
    }
    let (metrics, journal_metrics) = Metrics::new();
    let metrics = Arc::new(metrics);

    let admin_listener = bind("admin HTTP", config.admin.listen).await?;
    let state = AdminState {
        broker: Arc::new(RwLock::new(None)),
        role: Arc::new(RwLock::new(Role::Starting)),
        metrics: Arc::clone(&metrics),
        node_id: Arc::new(RwLock::new(String::new())),
        ha: Arc::new(RwLock::new(None)),
    };
    let admin_stop = CancellationToken::new();
    tracing::info!(addr = %admin_listener.local_addr().unwrap_or(config.admin.listen), "admin endpoint listening");
    let admin_task = tokio::spawn(admin::serve(admin_listener, state.clone(), admin_stop.clone()));

    let started = std::time::Instant::now();
    let open_config = Arc::clone(&config);
    let opened = tokio::task::spawn_blocking(move || Broker::open(open_config, users, journal_metrics)).await;
    let (broker, report) = match opened {
        Ok(r) => r.map_err(RunError::Engine)?,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    tracing::info!(
        node = %broker.node_id,
        messages = report.messages,
        queues = report.queues,
        segments = report.segments,
        records = report.records,
        took_ms = started.elapsed().as_millis() as u64,
        data_dir = %config.storage.data_dir.display(),
        "journal recovered"
    );
    *state.node_id.write() = broker.node_id.clone();
    *state.broker.write() = Some(Arc::clone(&broker));

    let stomp_listener = bind("STOMP", config.stomp.listen).await?;
    tracing::info!(addr = %stomp_listener.local_addr().unwrap_or(config.stomp.listen), "STOMP listening");
    *state.role.write() = Role::Live;

    let ctx = ConnectionContext { broker: Arc::clone(&broker), metrics, shutdown: shutdown.clone() };
    server::run(&stomp_listener, ctx, DRAIN_TIMEOUT).await;

    *state.role.write() = Role::Stopping;
    tracing::info!("connections closed; flushing the journal");
    let closing = Arc::clone(&broker);
    let closed = tokio::task::spawn_blocking(move || closing.close()).await;
    admin_stop.cancel();
    let _ = admin_task.await;
    match closed {
        Ok(r) => r.map_err(RunError::Close)?,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
    tracing::info!("broker stopped");
    Ok(())
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr).await.map_err(|source| RunError::Listen { what, addr, source })
}
