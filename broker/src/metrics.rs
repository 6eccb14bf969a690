//! Prometheus metrics of the broker, in one registry served at `/metrics`.
//! Labels stay low-cardinality: per-queue gauges are filled at scrape time from the
//! engine's snapshot, never updated per message.

use crate::admin::api::{HaStatus, Role, SyncState};
use crate::engine::queue::QueueSnapshot;
use crate::ha::lease::LeaseMetrics;
use crate::journal::JournalMetrics;
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub queue: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SwitchoverLabels {
    /// `done`, `refused` (nothing changed), `failed` (clients were stopped, the hand-over
    /// did not complete) or `unauthorized`.
    pub result: &'static str,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    pub messages_in: Counter,
    pub messages_out: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub connections: Gauge,
    pub connections_total: Counter,
    pub connections_rejected: Counter,
    pub protocol_errors: Counter,
    pub producer_blocked: Counter,
    pub memory_bytes: Gauge,
    queue_depth: Family<QueueLabels, Gauge>,
    queue_in_flight: Family<QueueLabels, Gauge>,
    queue_consumers: Family<QueueLabels, Gauge>,
    ha_epoch: Gauge,
    ha_live: Gauge,
    ha_backups_synced: Gauge,
    ha_alone: Gauge,
    ha_lag_bytes: Gauge,
    ha_lag_records: Gauge,
    ha_fenced: Gauge,
    /// Switchover requests to this member's admin endpoint, by result.
    pub switchovers: Family<SwitchoverLabels, Counter>,
    /// The `kubernetes` arbiter's renewals.
    pub lease: LeaseMetrics,
}

impl Metrics {
    /// Builds the registry; the journal's metrics are registered in it too.
    pub fn new() -> (Metrics, JournalMetrics) {
        let mut registry = Registry::default();
        let journal = JournalMetrics::register(&mut registry);
        let lease = LeaseMetrics::register(&mut registry);
        let m = Metrics {
            messages_in: Counter::default(),
            messages_out: Counter::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            connections: Gauge::default(),
            connections_total: Counter::default(),
            connections_rejected: Counter::default(),
            protocol_errors: Counter::default(),
            producer_blocked: Counter::default(),
            memory_bytes: Gauge::default(),
            queue_depth: Family::default(),
            queue_in_flight: Family::default(),
            queue_consumers: Family::default(),
            ha_epoch: Gauge::default(),
            ha_live: Gauge::default(),
            ha_backups_synced: Gauge::default(),
            ha_alone: Gauge::default(),
            ha_lag_bytes: Gauge::default(),
            ha_lag_records: Gauge::default(),
            ha_fenced: Gauge::default(),
            switchovers: Family::default(),
            lease,
            registry: Mutex::new(Registry::default()),
        };
        registry.register("duomq_messages_in", "Messages accepted from producers", m.messages_in.clone());
        registry.register("duomq_messages_out", "Messages delivered to consumers", m.messages_out.clone());
        registry.register("duomq_bytes_in", "Message body bytes accepted", m.bytes_in.clone());
        registry.register("duomq_bytes_out", "Message body bytes delivered", m.bytes_out.clone());
        registry.register("duomq_connections", "Open client connections", m.connections.clone());
        registry.register("duomq_connections_opened", "Client connections accepted", m.connections_total.clone());
        registry.register(
            "duomq_connections_rejected",
            "Connections refused (limit, authentication, handshake)",
            m.connections_rejected.clone(),
        );
        registry.register("duomq_protocol_errors", "Connections closed with a protocol ERROR", m.protocol_errors.clone());
        registry.register("duomq_producer_blocked", "SEND frames that waited for memory", m.producer_blocked.clone());
        registry.register("duomq_memory_bytes", "Message bytes held in memory", m.memory_bytes.clone());
        registry.register("duomq_queue_depth", "Messages waiting for a consumer", m.queue_depth.clone());
        registry.register("duomq_queue_in_flight", "Messages delivered, not yet acknowledged", m.queue_in_flight.clone());
        registry.register("duomq_queue_consumers", "Consumers per queue", m.queue_consumers.clone());
        registry.register("duomq_ha_epoch", "The group's epoch as this member knows it", m.ha_epoch.clone());
        registry.register("duomq_ha_live", "1 while this member is the group's live", m.ha_live.clone());
        registry.register("duomq_ha_backups_synced", "Backups in sync with this live", m.ha_backups_synced.clone());
        registry.register("duomq_ha_alone", "1 while this live has no backup in sync (writes not replicated)", m.ha_alone.clone());
        registry.register(
            "duomq_ha_replication_lag_bytes",
            "Bytes of journal not yet confirmed: a backup's own lag, or a live's largest backup lag",
            m.ha_lag_bytes.clone(),
        );
        registry.register(
            "duomq_ha_replication_lag_records",
            "Journal records not yet confirmed: a backup's own lag, or a live's largest backup lag",
            m.ha_lag_records.clone(),
        );
        registry.register("duomq_ha_fenced", "1 while this member is fenced: it lost the group's Lease as live", m.ha_fenced.clone());
        registry.register("duomq_ha_switchover_requests", "Switchover requests to this member, by result", m.switchovers.clone());
        *m.registry.lock() = registry;
        (m, journal)
    }

    /// Renders the text exposition, refreshing the per-queue gauges first.
    pub fn render(&self, queues: &[QueueSnapshot], memory_used: usize, role: Role, ha: Option<&HaStatus>) -> String {
        if let Some(ha) = ha {
            // From the role, not from `sync`: a shared-store backup has no sync state.
            let is_live = role == Role::Live;
            self.ha_epoch.set(ha.epoch as i64);
            self.ha_live.set(i64::from(is_live));
            self.ha_backups_synced.set(ha.backups.iter().filter(|b| b.state == SyncState::Synced).count() as i64);
            self.ha_alone.set(i64::from(ha.alone));
            self.ha_fenced.set(i64::from(role == Role::Fenced));
            let (lag_bytes, lag_records) = match &ha.sync {
                Some(sync) => (sync.lag_bytes, sync.lag_records),
                None => (
                    ha.backups.iter().map(|b| b.lag_bytes).max().unwrap_or(0),
                    ha.backups.iter().map(|b| b.lag_records).max().unwrap_or(0),
                ),
            };
            self.ha_lag_bytes.set(lag_bytes as i64);
            self.ha_lag_records.set(lag_records as i64);
        }
        self.queue_depth.clear();
        self.queue_in_flight.clear();
        self.queue_consumers.clear();
        for q in queues {
            let labels = QueueLabels { queue: q.name.clone() };
            self.queue_depth.get_or_create(&labels).set(q.depth as i64);
            self.queue_in_flight.get_or_create(&labels).set(q.in_flight as i64);
            self.queue_consumers.get_or_create(&labels).set(q.consumers as i64);
        }
        self.memory_bytes.set(memory_used as i64);
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry.lock()) {
            tracing::warn!(error = %e, "failed to encode metrics");
        }
        out
    }
}
