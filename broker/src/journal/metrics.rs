//! Prometheus metrics of the journal writer.
//!
//! Only handles to counters, a gauge and a histogram; the writer updates them. No labels,
//! so cardinality stays fixed whatever the traffic.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets_range, Histogram};
use prometheus_client::registry::Registry;

/// Journal metrics. Clones share the same underlying values.
#[derive(Debug, Clone)]
pub struct JournalMetrics {
    fsync_seconds: Histogram,
    bytes_written: Counter,
    records: Counter,
    batches: Counter,
    inline_batches: Counter,
    segments: Gauge,
    write_errors: Counter,
}

impl JournalMetrics {
    /// Creates the metrics and registers them in `registry` as `duomq_journal_*`.
    ///
    /// prometheus-client appends `_total` to counter names itself, so the counters are
    /// registered without it and exported as `duomq_journal_bytes_written_total` etc.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::unregistered();
        registry.register(
            "duomq_journal_fsync_seconds",
            "Time one fdatasync of a journal batch took",
            metrics.fsync_seconds.clone(),
        );
        registry.register(
            "duomq_journal_bytes_written",
            "Bytes of records written to journal segments",
            metrics.bytes_written.clone(),
        );
        registry.register(
            "duomq_journal_records",
            "Records made durable in the journal",
            metrics.records.clone(),
        );
        registry.register(
            "duomq_journal_batches",
            "Group commits (one write and one fsync each) of the journal",
            metrics.batches.clone(),
        );
        registry.register(
            "duomq_journal_inline_batches",
            "Group commits made on the appending thread (an idle journal, one synchronous record) instead of the writer thread",
            metrics.inline_batches.clone(),
        );
        registry.register(
            "duomq_journal_segments",
            "Journal segment files on disk",
            metrics.segments.clone(),
        );
        registry.register(
            "duomq_journal_write_errors",
            "Journal batches that failed to be written, synced or given a segment",
            metrics.write_errors.clone(),
        );
        metrics
    }

    /// Metrics that are counted but exported nowhere, for tests and tools.
    pub fn unregistered() -> Self {
        Self {
            // 50us to 1s: a healthy SSD syncs in the lowest buckets, a struggling disk
            // shows up in the top ones.
            fsync_seconds: Histogram::new(exponential_buckets_range(0.000_05, 1.0, 16)),
            bytes_written: Counter::default(),
            records: Counter::default(),
            batches: Counter::default(),
            inline_batches: Counter::default(),
            segments: Gauge::default(),
            write_errors: Counter::default(),
        }
    }

    pub(super) fn observe_fsync(&self, took: Duration) {
        self.fsync_seconds.observe(took.as_secs_f64());
    }

    pub(super) fn batch_written(&self, records: usize, bytes: usize) {
        self.batches.inc();
        self.records.inc_by(records as u64);
        self.bytes_written.inc_by(bytes as u64);
    }

    pub(super) fn inline_batch(&self) {
        self.inline_batches.inc();
    }

    pub(super) fn write_failed(&self) {
        self.write_errors.inc();
    }

    pub(super) fn set_segments(&self, segments: usize) {
        self.segments
            .set(i64::try_from(segments).unwrap_or(i64::MAX));
    }
}
