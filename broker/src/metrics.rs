//! Prometheus metrics of the broker, in one registry served at `/metrics`.
//! Labels stay low-cardinality: per-queue gauges are filled at scrape time from the
//! engine's snapshot, never updated per message, and only for the
//! `metrics.maxDestinationSeries` destinations holding the most messages. Destination
//! names are client-chosen, so they are escaped as label values (see [`LabelValue`]).

use crate::admin::api::{HaStatus, Role, SyncState};
use crate::engine::queue::QueueSnapshot;
use crate::engine::metrics::EngineMetrics;
use crate::ha::lease::LeaseMetrics;
use crate::journal::JournalMetrics;
use parking_lot::Mutex;
use crate::config::MetricsConfig;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use std::fmt::Write as _;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub queue: LabelValue,
}

/// A label value from outside (a destination name), written escaped as the text
/// exposition formats require: `\` as `\\`, `"` as `\"`, a line feed as `\n`.
/// prometheus-client 0.23 writes `String` label values as they are, so one `"` in a
/// queue name would otherwise end the value early and break the whole page.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct LabelValue(pub String);

impl EncodeLabelValue for LabelValue {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        let mut rest = self.0.as_str();
        while let Some(at) = rest.find(['\\', '"', '\n']) {
            encoder.write_str(&rest[..at])?;
            let escaped = match rest.as_bytes()[at] {
                b'\\' => "\\\\",
                b'"' => "\\\"",
                _ => "\\n",
            };
            encoder.write_str(escaped)?;
            rest = &rest[at + 1..];
        }
        encoder.write_str(rest)
    }
}

/// Why the cluster port closed a connection before or during its handshake.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterRefusedLabels {
    /// `pending_limit` (`ha.cluster.maxPendingConnections` reached), `frame_too_large` (a
    /// frame above the pre-authentication limit), `timed_out`, `authentication`,
    /// `mismatch` (version or group), `closed` or `protocol`.
    pub reason: &'static str,
}

/// The cluster port's gate. Clones share the same values.
#[derive(Debug, Clone, Default)]
pub struct ClusterMetrics {
    /// Connections in their handshake now.
    pub pending: Gauge,
    pub refused: Family<ClusterRefusedLabels, Counter>,
}

impl ClusterMetrics {
    fn register(registry: &mut Registry) -> ClusterMetrics {
        let m = ClusterMetrics::default();
        registry.register(
            "duomq_cluster_pending_connections",
            "Cluster connections in their handshake (not yet authenticated)",
            m.pending.clone(),
        );
        registry.register(
            "duomq_cluster_connections_refused",
            "Cluster connections closed before or during the handshake, by reason (pending_limit: ha.cluster.maxPendingConnections)",
            m.refused.clone(),
        );
        m
    }
}

/// Network bridges, per link (`connector`: a connector's name, with `/target` for each
/// address of a `static:` list; an inbound link is `inbound:<remote group>/<its connector>`).
#[derive(Debug, Clone, Default)]
pub struct NetworkMetrics {
    /// 1 while the link is up.
    pub linked: Family<BridgeLabels, Gauge>,
    /// Destinations the remote side asks for.
    pub remote_demand: Family<BridgeLabels, Gauge>,
    /// Messages confirmed by the remote (`out`) or stored here (`in`).
    pub forwarded: Family<BridgeDirectionLabels, Counter>,
    /// Forwards the remote refused (no room, a bad destination); they are resent later.
    pub refused: Family<BridgeLabels, Counter>,
    /// 1 while this live drains its group (`POST /ha/drain`).
    pub draining: Gauge,
    /// Messages a drain forwarded to its target groups (settled here once stored there).
    pub drained: Counter,
}

impl NetworkMetrics {
    fn register(registry: &mut Registry) -> NetworkMetrics {
        let m = NetworkMetrics::default();
        registry.register("duomq_bridge_linked", "1 while a network bridge link is up", m.linked.clone());
        registry.register("duomq_bridge_remote_demand", "Destinations the remote side of a bridge has consumers for", m.remote_demand.clone());
        registry.register("duomq_bridge_forwarded", "Messages over a bridge: out = confirmed by the remote, in = stored here", m.forwarded.clone());
        registry.register("duomq_bridge_forwards_refused", "Forwards the remote refused (resent later)", m.refused.clone());
        registry.register("duomq_draining", "1 while this live drains its group to other groups (POST /ha/drain)", m.draining.clone());
        registry.register("duomq_drained_messages", "Messages a drain forwarded to its target groups and saw stored there", m.drained.clone());
        m
    }
}

/// The clustered grouping handler (`grouping.handler` local or remote).
#[derive(Debug, Clone, Default)]
pub struct GroupingMetrics {
    /// Cluster bindings held: decided (local) or cached (remote).
    pub bindings: Gauge,
    /// Proposals answered (local) or made (remote).
    pub proposals: Counter,
    /// Decisions that did not come within grouping.timeout (the SEND was refused).
    pub timeouts: Counter,
    /// Bindings removed unused after grouping.groupTimeout.
    pub reaped: Counter,
    /// Remote: 1 while linked to the local handler's live; local: 1.
    pub connected: Gauge,
}

impl GroupingMetrics {
    fn register(registry: &mut Registry) -> GroupingMetrics {
        let m = GroupingMetrics::default();
        registry.register("duomq_grouping_bindings", "Cluster message-group bindings held (decided by a local handler, cached by a remote one)", m.bindings.clone());
        registry.register("duomq_grouping_proposals", "Grouping proposals answered (local handler) or made (remote handler)", m.proposals.clone());
        registry.register("duomq_grouping_timeouts", "Grouping decisions not had within grouping.timeout (the SEND got an ERROR)", m.timeouts.clone());
        registry.register("duomq_grouping_reaped", "Group bindings removed unused after grouping.groupTimeout", m.reaped.clone());
        registry.register("duomq_grouping_connected", "1 while a remote grouping handler is linked to the local handler (always 1 on the local handler)", m.connected.clone());
        m
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BridgeLabels {
    pub connector: LabelValue,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BridgeDirectionLabels {
    pub connector: LabelValue,
    /// `in` or `out`.
    pub direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SwitchoverLabels {
    /// `done`, `refused` (nothing changed), `failed` (clients were stopped, the hand-over
    /// did not complete) or `unauthorized`.
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdminRequestLabels {
    /// `fenced`, `unfenced`, `started` or `progress` (a drain), `done` (a queue operation),
    /// `refused`, `unauthorized`, `not_found` or `failed`.
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdminRefusedLabels {
    /// The view asked for: `/status` or `/metrics`.
    pub path: &'static str,
    /// `unauthorized` (no or wrong credentials, 401) or `forbidden` (no admin role, 403).
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
    /// Journal bytes on disk, and `storage.maxDiskBytes` (0: unlimited).
    pub journal_disk_bytes: Gauge,
    pub max_disk_bytes: Gauge,
    queue_depth: Family<QueueLabels, Gauge>,
    queue_paged: Family<QueueLabels, Gauge>,
    queue_paged_bytes: Family<QueueLabels, Gauge>,
    queue_in_flight: Family<QueueLabels, Gauge>,
    queue_consumers: Family<QueueLabels, Gauge>,
    destinations: Gauge,
    destination_series_omitted: Gauge,
    max_destination_series: usize,
    ha_epoch: Gauge,
    ha_live: Gauge,
    ha_backups_synced: Gauge,
    ha_alone: Gauge,
    ha_lag_bytes: Gauge,
    ha_lag_records: Gauge,
    ha_fenced: Gauge,
    /// Switchover requests to this member's admin endpoint, by result.
    pub switchovers: Family<SwitchoverLabels, Counter>,
    /// 1 while this member is fenced by an admin request (`POST /ha/fence`).
    pub admin_fenced: Gauge,
    /// Fence requests to this member's admin endpoint, by result.
    pub fence_requests: Family<AdminRequestLabels, Counter>,
    /// Drain requests to this member's admin endpoint, by result.
    pub drain_requests: Family<AdminRequestLabels, Counter>,
    /// Reads of the admin endpoint's closed views refused for their credentials.
    pub admin_refused: Family<AdminRefusedLabels, Counter>,
    /// Queue views and message operations (`/queues...`), by result.
    pub queue_requests: Family<AdminRequestLabels, Counter>,
    /// The `kubernetes` arbiter's renewals.
    pub lease: LeaseMetrics,
    /// The engine's limits: refusals, reclaimed destinations, slow subscribers.
    pub engine: EngineMetrics,
    /// The cluster port's handshake gate.
    pub cluster: ClusterMetrics,
    /// Network bridges.
    pub network: NetworkMetrics,
    /// The clustered grouping handler.
    pub grouping: GroupingMetrics,
    /// The shared database store (`storage.store: database`).
    pub database: crate::db::DatabaseMetrics,
    /// TLS handshakes and certificate reloads.
    pub tls: crate::tls::TlsMetrics,
    /// The AMQP listener.
    pub amqp: crate::amqp::AmqpMetrics,
    /// What injected faults did (`debug.faultInjection`).
    pub faults: crate::faults::FaultMetrics,
}

impl Metrics {
    /// Builds the registry; the journal's metrics are registered in it too.
    pub fn new(config: &MetricsConfig) -> (Metrics, JournalMetrics) {
        let mut registry = Registry::default();
        let journal = JournalMetrics::register(&mut registry);
        let lease = LeaseMetrics::register(&mut registry);
        let engine = EngineMetrics::register(&mut registry);
        let cluster = ClusterMetrics::register(&mut registry);
        let network = NetworkMetrics::register(&mut registry);
        let grouping = GroupingMetrics::register(&mut registry);
        let database = crate::db::DatabaseMetrics::register(&mut registry);
        let tls = crate::tls::TlsMetrics::default();
        tls.register(&mut registry);
        let amqp = crate::amqp::AmqpMetrics::register(&mut registry);
        let faults = crate::faults::FaultMetrics::register(&mut registry);
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
            journal_disk_bytes: Gauge::default(),
            max_disk_bytes: Gauge::default(),
            queue_depth: Family::default(),
            queue_paged: Family::default(),
            queue_paged_bytes: Family::default(),
            queue_in_flight: Family::default(),
            queue_consumers: Family::default(),
            destinations: Gauge::default(),
            destination_series_omitted: Gauge::default(),
            max_destination_series: config.max_destination_series,
            ha_epoch: Gauge::default(),
            ha_live: Gauge::default(),
            ha_backups_synced: Gauge::default(),
            ha_alone: Gauge::default(),
            ha_lag_bytes: Gauge::default(),
            ha_lag_records: Gauge::default(),
            ha_fenced: Gauge::default(),
            switchovers: Family::default(),
            admin_fenced: Gauge::default(),
            fence_requests: Family::default(),
            drain_requests: Family::default(),
            admin_refused: Family::default(),
            queue_requests: Family::default(),
            lease,
            engine,
            cluster,
            network,
            grouping,
            database,
            tls,
            amqp,
            faults,
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
        registry.register("duomq_journal_disk_bytes", "Journal bytes on disk (segment files)", m.journal_disk_bytes.clone());
        registry.register("duomq_max_disk_bytes", "storage.maxDiskBytes: journal bytes past which persistent messages are refused (0: unlimited)", m.max_disk_bytes.clone());
        let per_destination = format!(
            "; only for the {} destinations with the most messages (depth + in flight, then by name), see duomq_destination_series_omitted",
            m.max_destination_series
        );
        registry.register(
            "duomq_queue_depth",
            format!("Messages waiting for a consumer{per_destination}"),
            m.queue_depth.clone(),
        );
        registry.register(
            "duomq_queue_in_flight",
            format!("Messages delivered, not yet acknowledged{per_destination}"),
            m.queue_in_flight.clone(),
        );
        registry.register("duomq_queue_consumers", format!("Consumers per queue{per_destination}"), m.queue_consumers.clone());
        registry.register(
            "duomq_queue_paged_messages",
            format!("Messages kept in the journal only until consumers catch up (addressFullPolicy: page){per_destination}"),
            m.queue_paged.clone(),
        );
        registry.register("duomq_queue_paged_bytes", format!("Bytes of the paged messages{per_destination}"), m.queue_paged_bytes.clone());
        registry.register("duomq_destinations", "Destinations (queues and topics) the broker holds", m.destinations.clone());
        registry.register(
            "duomq_destination_series_omitted",
            "Destinations left out of the per-destination series (beyond metrics.maxDestinationSeries)",
            m.destination_series_omitted.clone(),
        );
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
        registry.register("duomq_ha_fenced", "1 while this member is fenced: it lost its claim as live (the group's Lease or database lease), or an admin request fenced it", m.ha_fenced.clone());
        registry.register("duomq_ha_switchover_requests", "Switchover requests to this member, by result", m.switchovers.clone());
        registry.register("duomq_admin_fenced", "1 while this member is fenced by an admin request (POST /ha/fence)", m.admin_fenced.clone());
        registry.register("duomq_admin_fence_requests", "Fence and unfence requests to this member, by result", m.fence_requests.clone());
        registry.register("duomq_drain_requests", "Drain requests to this member, by result", m.drain_requests.clone());
        registry.register(
            "duomq_admin_queue_requests",
            "Queue views and message operations (browse, purge, delete, move) asked of this member, by result",
            m.queue_requests.clone(),
        );
        registry.register(
            "duomq_admin_refused_requests",
            "Reads of /status (and of /metrics when closed) refused for their credentials, by path and result",
            m.admin_refused.clone(),
        );
        *m.registry.lock() = registry;
        (m, journal)
    }

    /// Renders the text exposition, refreshing the per-queue gauges first. Scrapes at the
    /// same time take turns, so one never encodes the series another is refilling.
    pub fn render(&self, queues: &[QueueSnapshot], memory_used: usize, role: Role, ha: Option<&HaStatus>) -> String {
        let registry = self.registry.lock();
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
        self.queue_paged.clear();
        self.queue_paged_bytes.clear();
        let shown = busiest(queues, self.max_destination_series);
        self.destinations.set(queues.len() as i64);
        self.destination_series_omitted.set((queues.len() - shown.len()) as i64);
        for q in shown {
            let labels = QueueLabels { queue: LabelValue(q.name.clone()) };
            self.queue_depth.get_or_create(&labels).set(q.depth as i64);
            self.queue_in_flight.get_or_create(&labels).set(q.in_flight as i64);
            self.queue_consumers.get_or_create(&labels).set(q.consumers as i64);
            self.queue_paged.get_or_create(&labels).set(q.paged as i64);
            self.queue_paged_bytes.get_or_create(&labels).set(q.paged_bytes as i64);
        }
        self.memory_bytes.set(memory_used as i64);
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::warn!(error = %e, "failed to encode metrics");
        }
        out
    }
}

/// The `max` destinations holding the most messages (depth plus in flight), ties broken
/// by name, so the same destinations are shown from one scrape to the next.
fn busiest(queues: &[QueueSnapshot], max: usize) -> Vec<&QueueSnapshot> {
    let mut all: Vec<&QueueSnapshot> = queues.iter().collect();
    let order = |a: &&QueueSnapshot, b: &&QueueSnapshot| {
        (b.depth + b.in_flight).cmp(&(a.depth + a.in_flight)).then_with(|| a.name.cmp(&b.name))
    };
    if all.len() > max {
        if max == 0 {
            return Vec::new();
        }
        all.select_nth_unstable_by(max - 1, order);
        all.truncate(max);
    }
    all.sort_unstable_by(order);
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::queue::QueueKind;

    fn queue(name: &str, depth: usize, in_flight: usize) -> QueueSnapshot {
        QueueSnapshot {
            name: name.to_string(),
            kind: QueueKind::Anycast,
            depth,
            in_flight,
            consumers: 0,
            bytes: 0,
            enqueued_total: 0,
            acked_total: 0,
            groups: 0,
            paged: 0,
            paged_bytes: 0,
        }
    }

    fn render(queues: &[QueueSnapshot], max: usize) -> String {
        let (metrics, _) = Metrics::new(&MetricsConfig { max_destination_series: max });
        metrics.render(queues, 0, Role::Live, None)
    }

    fn depth_lines(page: &str) -> Vec<&str> {
        page.lines().filter(|l| l.starts_with("duomq_queue_depth{")).collect()
    }

    #[test]
    fn given_a_queue_name_with_quote_backslash_and_newline_when_rendering_should_escape_the_label_value() {
        let page = render(&[queue("/queue/x\"} 1\nnot a valid line{\\", 2, 0)], 10);
        assert_eq!(depth_lines(&page), vec![r#"duomq_queue_depth{queue="/queue/x\"} 1\nnot a valid line{\\"} 2"#]);
        assert!(!page.lines().any(|l| l.starts_with("not a valid line")), "{page}");
    }

    #[test]
    fn given_more_destinations_than_the_limit_when_rendering_should_show_the_busiest_and_count_the_rest() {
        let queues = [
            queue("/queue/a", 1, 0),
            queue("/queue/b", 5, 0),
            queue("/queue/c", 0, 4),
            queue("/queue/d", 3, 1),
            queue("/queue/e", 0, 0),
        ];
        let page = render(&queues, 3);
        let mut shown = depth_lines(&page);
        shown.sort_unstable();
        // b holds 5; c and d hold 4 each (ties by name); a and e are left out.
        assert_eq!(
            shown,
            vec![
                r#"duomq_queue_depth{queue="/queue/b"} 5"#,
                r#"duomq_queue_depth{queue="/queue/c"} 0"#,
                r#"duomq_queue_depth{queue="/queue/d"} 3"#,
            ]
        );
        assert!(page.contains("\nduomq_destinations 5\n"), "{page}");
        assert!(page.contains("\nduomq_destination_series_omitted 2\n"), "{page}");
        assert!(page.contains("only for the 3 destinations with the most messages"), "{page}");
    }

    #[test]
    fn given_fewer_destinations_than_the_limit_when_rendering_should_show_all_and_omit_none() {
        let page = render(&[queue("/queue/a", 0, 0), queue("/queue/b", 0, 0)], 3);
        assert_eq!(depth_lines(&page).len(), 2, "{page}");
        assert!(page.contains("\nduomq_destination_series_omitted 0\n"), "{page}");
    }

    #[test]
    fn given_two_scrapes_at_once_when_rendering_should_each_show_one_whole_set_of_destinations() {
        let (metrics, _) = Metrics::new(&MetricsConfig { max_destination_series: 100 });
        let sets: Vec<Vec<QueueSnapshot>> = ["a", "b"]
            .iter()
            .map(|set| (0..50).map(|i| queue(&format!("/queue/{set}{i}"), 1, 0)).collect())
            .collect();
        std::thread::scope(|scope| {
            for set in &sets {
                let metrics = &metrics;
                scope.spawn(move || {
                    for _ in 0..200 {
                        let page = metrics.render(set, 0, Role::Live, None);
                        let shown = depth_lines(&page);
                        let own = shown.iter().filter(|l| l.contains(&set[0].name[..8])).count();
                        assert_eq!((shown.len(), own), (50, 50), "a page mixed two scrapes:\n{page}");
                    }
                });
            }
        });
    }

    #[test]
    fn given_a_limit_of_zero_when_rendering_should_show_no_destination_series() {
        let page = render(&[queue("/queue/a", 1, 0)], 0);
        assert!(depth_lines(&page).is_empty(), "{page}");
        assert!(page.contains("\nduomq_destination_series_omitted 1\n"), "{page}");
    }
}
