//! The admin HTTP contract: paths, port and JSON types. The operator imports this module,
//! so broker and operator cannot disagree on it. Types only; no server code here.

use serde::{Deserialize, Serialize};

pub const DEFAULT_PORT: u16 = 8161;
/// 200 while the process runs.
pub const HEALTHZ: &str = "/healthz";
/// 200 once the journal is recovered and the STOMP listener accepts clients; 503 before.
pub const READYZ: &str = "/readyz";
/// [`BrokerStatus`] as JSON.
pub const STATUS: &str = "/status";
/// Prometheus text exposition.
pub const METRICS: &str = "/metrics";

/// What a broker is doing right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Role {
    /// Recovering the journal; not serving clients yet.
    Starting,
    /// Serving clients.
    Live,
    /// Stopping: no new clients, finishing in-flight work.
    Stopping,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BrokerStatus {
    pub version: String,
    pub node_id: String,
    pub role: Role,
    pub uptime_seconds: u64,
    pub connections: u64,
    /// Message bytes held in memory across all queues.
    pub memory_bytes: u64,
    pub queues: Vec<QueueStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DestinationKind {
    Queue,
    Topic,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueStatus {
    /// The STOMP destination, `/queue/NAME` or `/topic/NAME`.
    pub name: String,
    pub kind: DestinationKind,
    /// Messages waiting for a consumer.
    pub depth: u64,
    /// Delivered and not yet acknowledged.
    pub in_flight: u64,
    pub consumers: u64,
    pub bytes: u64,
    pub enqueued_total: u64,
    pub acked_total: u64,
}
