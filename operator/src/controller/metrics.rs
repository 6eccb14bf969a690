//! The operator's Prometheus metrics; low-cardinality labels only.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SwitchoverLabels {
    /// Switchover, Failback or RollingUpgrade.
    pub reason: &'static str,
    /// done or failed.
    pub result: &'static str,
}

pub struct Metrics {
    pub reconciliations: Family<ResultLabel, Counter>,
    pub reconcile_seconds: Histogram,
    pub failovers: Counter,
    pub invalid_specs: Counter,
    pub switchovers: Family<SwitchoverLabels, Counter>,
    pub upgrade_pod_deletions: Counter,
    /// 1 while this replica leads (runs the controller), 0 while it stands by.
    pub leader: Gauge,
    /// Times this replica became the leader.
    pub leader_transitions: Counter,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            reconciliations: Family::default(),
            reconcile_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 12)),
            failovers: Counter::default(),
            invalid_specs: Counter::default(),
            switchovers: Family::default(),
            upgrade_pod_deletions: Counter::default(),
            leader: Gauge::default(),
            leader_transitions: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("duomq_operator");
        r.register(
            "reconciliations",
            "Reconciles of BrokerGroups, by result",
            m.reconciliations.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            m.reconcile_seconds.clone(),
        );
        r.register(
            "failovers",
            "Unplanned changes of a group's live broker (a live lost) seen by the operator; planned hand-overs are counted in switchovers_total",
            m.failovers.clone(),
        );
        r.register(
            "invalid_specs",
            "Reconciles that found an invalid BrokerGroup spec",
            m.invalid_specs.clone(),
        );
        r.register(
            "switchovers",
            "Switchovers the operator asked a live for, by reason and result",
            m.switchovers.clone(),
        );
        r.register(
            "upgrade_pod_deletions",
            "Pods deleted by rolling upgrades so that they come back at the new revision",
            m.upgrade_pod_deletions.clone(),
        );
        r.register(
            "leader",
            "1 while this replica is the leader and runs the controller, 0 while it stands by",
            m.leader.clone(),
        );
        r.register(
            "leader_transitions",
            "Times this replica became the leader (took the operator's Lease)",
            m.leader_transitions.clone(),
        );
        m
    }

    pub fn reconcile_started(&self) -> ReconcileTimer<'_> {
        ReconcileTimer {
            metrics: self,
            start: Instant::now(),
        }
    }
}

pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    start: Instant,
}

impl ReconcileTimer<'_> {
    pub fn finish(self, result: &'static str) {
        self.metrics
            .reconcile_seconds
            .observe(self.start.elapsed().as_secs_f64());
        self.metrics
            .reconciliations
            .get_or_create(&ResultLabel { result })
            .inc();
    }
}
