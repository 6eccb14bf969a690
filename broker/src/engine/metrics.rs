//! Prometheus metrics of the engine's limits: what a client was refused, which idle
//! destinations were reclaimed, which slow topic subscribers were cut off, which group
//! bindings were evicted, how many durable subscriptions are held.
//!
//! What clients were not authorized to do is counted here too, by permission, and what
//! subscription selectors chose and passed over, and what admin requests purged, deleted or
//! moved (`engine::manage`).
//!
//! So are the messages that left their queue without being consumed: dead-lettered after
//! `maxDeliveryAttempts`, expired (dropped or moved to `expiryAddress`), and how many are
//! held for a scheduled time or a redelivery delay.
//!
//! Labels are the names of limits and permissions (fixed sets), never destination or
//! client names.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The `action` of an expired message dropped.
pub const EXPIRED_DROPPED: &str = "dropped";
/// The `action` of an expired message moved to its queue's `expiryAddress`.
pub const EXPIRED_MOVED: &str = "moved";

/// The limits a client can hit; each is a `limit` label value and names its config field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// `destinations.maxDestinations`
    Destinations,
    /// A destination name longer than [`super::MAX_DESTINATION_NAME_BYTES`] or with control characters.
    DestinationName,
    /// `stomp.maxSubscriptionsPerConnection`
    Subscriptions,
    /// `stomp.maxTransactionsPerConnection`
    Transactions,
    /// `memory.maxQueueBytes`, for the open transactions of one connection
    TransactionBytes,
    /// `stomp.maxPartialFrameBytes`, broker-wide
    PartialFrames,
    /// `memory.producerBlockTimeout` ran out while a queue or the broker was full
    ProducerBlocked,
    /// `stomp.idleTimeout`
    Idle,
    /// `stomp.frameTimeout`
    FrameTimeout,
    /// `stomp.writeTimeout`
    WriteTimeout,
    /// `stomp.maxHeaderBytes`
    HeaderBytes,
    /// `stomp.maxHeaders`
    Headers,
    /// `stomp.maxBodyBytes`
    BodyBytes,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Destinations => "maxDestinations",
            Limit::DestinationName => "destinationName",
            Limit::Subscriptions => "maxSubscriptionsPerConnection",
            Limit::Transactions => "maxTransactionsPerConnection",
            Limit::TransactionBytes => "transactionBytes",
            Limit::PartialFrames => "maxPartialFrameBytes",
            Limit::ProducerBlocked => "producerBlockTimeout",
            Limit::Idle => "idleTimeout",
            Limit::FrameTimeout => "frameTimeout",
            Limit::WriteTimeout => "writeTimeout",
            Limit::HeaderBytes => "maxHeaderBytes",
            Limit::Headers => "maxHeaders",
            Limit::BodyBytes => "maxBodyBytes",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AdminActionLabels {
    /// `purged`, `deleted` or `moved`.
    action: &'static str,
}

/// The `action` labels of `duomq_admin_messages`.
pub const ADMIN_ACTIONS: [&str; 3] = ["purged", "deleted", "moved"];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExpiryLabels {
    action: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PermissionLabels {
    permission: &'static str,
}

/// Engine metrics. Clones share the same underlying values.
#[derive(Debug, Clone, Default)]
pub struct EngineMetrics {
    limits: Family<LimitLabels, Counter>,
    pub destinations_reclaimed: Counter,
    pub slow_subscribers_disconnected: Counter,
    pub topic_copies_dropped: Counter,
    pub group_bindings_evicted: Counter,
    /// Durable topic subscriptions held (see [`super::durable`]).
    pub durable_subscriptions: Gauge,
    /// Reads of paged messages back from the journal, and the journal bytes they read.
    pub paging_reads: Counter,
    pub paging_read_bytes: Counter,
    /// Persistent messages refused past `storage.maxDiskBytes`.
    pub disk_quota_refusals: Counter,
    authorization_denied: Family<PermissionLabels, Counter>,
    /// Messages SUBSCRIBE selectors chose or passed over (see [`crate::selector`]).
    pub selector_evaluations: crate::selector::SelectorCounters,
    admin_messages: Family<AdminActionLabels, Counter>,
    pub messages_dead_lettered: Counter,
    messages_expired: Family<ExpiryLabels, Counter>,
    /// Messages held now until a scheduled time or the end of a redelivery delay.
    pub scheduled_messages: Gauge,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

impl EngineMetrics {
    /// Creates the metrics and registers them in `registry` as `duomq_*`.
    pub fn register(registry: &mut Registry) -> EngineMetrics {
        let mut m = EngineMetrics::default();
        registry.register(
            "duomq_limit_hits",
            "Frames refused or connections closed because a client hit a limit, by limit (the config field)",
            m.limits.clone(),
        );
        registry.register(
            "duomq_destinations_reclaimed",
            "Empty destinations without consumers removed after destinations.idleTimeout",
            m.destinations_reclaimed.clone(),
        );
        registry.register(
            "duomq_slow_topic_subscribers_disconnected",
            "Topic subscribers cut off because their private queue reached memory.maxQueueBytes (slowTopicSubscriber: disconnect)",
            m.slow_subscribers_disconnected.clone(),
        );
        registry.register(
            "duomq_topic_copies_dropped",
            "Topic message copies dropped for subscribers whose private queue was full (slowTopicSubscriber: drop)",
            m.topic_copies_dropped.clone(),
        );
        registry.register(
            "duomq_group_bindings_evicted",
            "Idle message-group bindings dropped, least recently used first, to bind a new group past grouping.maxGroups",
            m.group_bindings_evicted.clone(),
        );
        registry.register(
            "duomq_durable_subscriptions",
            "Durable topic subscriptions held, with or without a consumer attached",
            m.durable_subscriptions.clone(),
        );
        registry.register(
            "duomq_paging_reads",
            "Reads of paged messages back from the journal into their queues (addressFullPolicy: page)",
            m.paging_reads.clone(),
        );
        registry.register(
            "duomq_paging_read_bytes",
            "Journal bytes read to bring paged messages back into their queues",
            m.paging_read_bytes.clone(),
        );
        registry.register(
            "duomq_disk_quota_refusals",
            "Persistent messages refused because the journal held storage.maxDiskBytes",
            m.disk_quota_refusals.clone(),
        );
        registry.register(
            "duomq_authorization_denied",
            "Client frames refused because the client's roles lack the permission (auth.permissions), by permission",
            m.authorization_denied.clone(),
        );
        let selector_evaluations = Family::<ResultLabels, Counter>::default();
        registry.register(
            "duomq_selector_evaluations",
            "Messages a subscription's selector was evaluated on, by result (match: delivered or queued for it; nomatch: passed over)",
            selector_evaluations.clone(),
        );
        // One statement each: a series' guard held while the next is created deadlocks.
        let matched = selector_evaluations.get_or_create(&ResultLabels { result: "match" }).clone();
        let unmatched = selector_evaluations.get_or_create(&ResultLabels { result: "nomatch" }).clone();
        m.selector_evaluations = crate::selector::SelectorCounters { matched, unmatched };
        registry.register(
            "duomq_admin_messages",
            "Queue messages purged, deleted or moved to another queue by admin requests, by action",
            m.admin_messages.clone(),
        );
        for action in ADMIN_ACTIONS {
            let _ = m.admin_messages.get_or_create(&AdminActionLabels { action });
        }
        registry.register(
            "duomq_messages_dead_lettered",
            "Messages moved to their dead-letter queue after addressSettings maxDeliveryAttempts deliveries without an acknowledgement",
            m.messages_dead_lettered.clone(),
        );
        registry.register(
            "duomq_messages_expired",
            "Messages whose expires time passed before delivery, by action: dropped, or moved to addressSettings expiryAddress",
            m.messages_expired.clone(),
        );
        registry.register(
            "duomq_scheduled_messages",
            "Messages held now until their AMQ_SCHEDULED_TIME or the end of their redelivery delay",
            m.scheduled_messages.clone(),
        );
        for action in [EXPIRED_DROPPED, EXPIRED_MOVED] {
            let _ = m.messages_expired.get_or_create(&ExpiryLabels { action });
        }
        // Every series from the start: a dashboard sees 0, not nothing, until a denial.
        for permission in crate::security::Permission::ALL {
            let _ = m.authorization_denied.get_or_create(&PermissionLabels { permission: permission.as_str() });
        }
        m
    }

    /// Counts a frame refused for want of `permission`.
    pub fn authorization_denied(&self, permission: crate::security::Permission) {
        self.authorization_denied.get_or_create(&PermissionLabels { permission: permission.as_str() }).inc();
    }

    /// Counts `n` messages purged, deleted or moved (one of [`ADMIN_ACTIONS`]) by an admin request.
    pub fn admin_messages(&self, action: &'static str, n: u64) {
        self.admin_messages.get_or_create(&AdminActionLabels { action }).inc_by(n);
    }

    /// Counts an expired message, `moved` to its expiry address or dropped.
    pub fn message_expired(&self, moved: bool) {
        let action = if moved { EXPIRED_MOVED } else { EXPIRED_DROPPED };
        self.messages_expired.get_or_create(&ExpiryLabels { action }).inc();
    }

    /// Expired messages counted so far with `action` (`dropped` or `moved`).
    pub fn messages_expired(&self, action: &'static str) -> u64 {
        self.messages_expired.get_or_create(&ExpiryLabels { action }).get()
    }

    pub fn limit_hit(&self, limit: Limit) {
        self.limits.get_or_create(&LimitLabels { limit: limit.as_str() }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_registered_metrics_should_count_selector_evaluations_by_result() {
        let mut registry = Registry::default();
        let m = EngineMetrics::register(&mut registry);
        m.selector_evaluations.matched.inc();
        m.selector_evaluations.unmatched.inc_by(2);
        let mut page = String::new();
        prometheus_client::encoding::text::encode(&mut page, &registry).expect("encode metrics");
        assert!(page.contains("duomq_selector_evaluations_total{result=\"match\"} 1\n"), "{page}");
        assert!(page.contains("duomq_selector_evaluations_total{result=\"nomatch\"} 2\n"), "{page}");
    }
}
