//! `duomq_database_*`: the shared database store and its lease.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets_range, Histogram};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RenewalLabels {
    /// `ok`, `failed` (no answer; retried until the deadline) or `lost` (another member
    /// holds the lease now).
    pub result: &'static str,
}

#[derive(Clone)]
pub struct DatabaseMetrics {
    pub commits: Counter,
    pub commit_seconds: Histogram,
    pub reachable: Gauge,
    pub reconnects: Counter,
    pub lease_held: Gauge,
    pub renewals: Family<RenewalLabels, Counter>,
    pub fenced: Counter,
    pub writes_refused: Counter,
}

impl Default for DatabaseMetrics {
    fn default() -> Self {
        DatabaseMetrics {
            commits: Counter::default(),
            commit_seconds: Histogram::new(exponential_buckets_range(0.000_1, 10.0, 18)),
            reachable: Gauge::default(),
            reconnects: Counter::default(),
            lease_held: Gauge::default(),
            renewals: Family::default(),
            fenced: Counter::default(),
            writes_refused: Counter::default(),
        }
    }
}

impl DatabaseMetrics {
    pub fn register(registry: &mut Registry) -> DatabaseMetrics {
        let m = DatabaseMetrics::default();
        registry.register("duomq_database_commits", "Transactions (group commits) the database store committed", m.commits.clone());
        registry.register("duomq_database_commit_seconds", "Time of one group commit in the database, from send to answer", m.commit_seconds.clone());
        registry.register("duomq_database_reachable", "1 while the last statement to the database got an answer", m.reachable.clone());
        registry.register("duomq_database_reconnects", "Connections to the database opened again after one was lost", m.reconnects.clone());
        registry.register("duomq_database_lease_held", "1 while this member holds the group's database lease (it is live)", m.lease_held.clone());
        registry.register("duomq_database_lease_renewals", "Renewals of the database lease by this live, by result", m.renewals.clone());
        registry.register("duomq_database_fenced", "Times this live fenced itself: it lost the database lease", m.fenced.clone());
        registry.register(
            "duomq_database_writes_refused",
            "Writes the database refused because they carried an older lease epoch (a fenced live)",
            m.writes_refused.clone(),
        );
        m
    }

    pub fn renewal(&self, result: &'static str) {
        self.renewals.get_or_create(&RenewalLabels { result }).inc();
    }
}
