//! The admin HTTP endpoint: health, readiness, status JSON and Prometheus metrics.
//! Read-only views of the engine; it changes nothing.

pub mod api;

use crate::engine::queue::QueueKind;
use crate::engine::Broker;
use crate::metrics::Metrics;
use api::{BrokerStatus, DestinationKind, QueueStatus, Role};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use parking_lot::RwLock;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the admin endpoint reads. The broker is absent while the journal recovers.
#[derive(Clone)]
pub struct AdminState {
    pub broker: Arc<RwLock<Option<Arc<Broker>>>>,
    pub role: Arc<RwLock<Role>>,
    pub metrics: Arc<Metrics>,
    pub node_id: Arc<RwLock<String>>,
    /// Replication state, kept current by the `ha` module; `None` when standalone.
    pub ha: Arc<RwLock<Option<api::HaStatus>>>,
}

pub async fn serve(listener: TcpListener, state: AdminState, shutdown: CancellationToken) -> std::io::Result<()> {
    let app = Router::new()
        .route(api::HEALTHZ, get(|| async { "ok\n" }))
        .route(api::READYZ, get(readyz))
        .route(api::STATUS, get(status))
        .route(api::METRICS, get(metrics))
        .with_state(state);
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

async fn readyz(State(s): State<AdminState>) -> Response {
    let role = *s.role.read();
    if role == Role::Live {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {role:?}\n")).into_response()
    }
}

async fn status(State(s): State<AdminState>) -> Json<BrokerStatus> {
    let broker = s.broker.read().clone();
    let (queues, memory, uptime) = match &broker {
        Some(b) => (b.snapshot(), b.memory().used(), b.started.elapsed().as_secs()),
        None => (Vec::new(), 0, 0),
    };
    Json(BrokerStatus {
        version: env!("CARGO_PKG_VERSION").to_string(),
        node_id: s.node_id.read().clone(),
        role: *s.role.read(),
        uptime_seconds: uptime,
        connections: s.metrics.connections.get().max(0) as u64,
        memory_bytes: memory as u64,
        queues: queues
            .into_iter()
            .map(|q| QueueStatus {
                name: q.name,
                kind: match q.kind {
                    QueueKind::Anycast => DestinationKind::Queue,
                    QueueKind::TopicSubscription => DestinationKind::Topic,
                },
                depth: q.depth as u64,
                in_flight: q.in_flight as u64,
                consumers: q.consumers as u64,
                bytes: q.bytes as u64,
                enqueued_total: q.enqueued_total,
                acked_total: q.acked_total,
            })
            .collect(),
        ha: s.ha.read().clone(),
    })
}

async fn metrics(State(s): State<AdminState>) -> Response {
    let broker = s.broker.read().clone();
    let (queues, memory) = match &broker {
        Some(b) => (b.snapshot(), b.memory().used()),
        None => (Vec::new(), 0),
    };
    let ha = s.ha.read().clone();
    let body = s.metrics.render(&queues, memory, ha.as_ref());
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response()
}
