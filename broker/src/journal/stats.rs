//! The journal's published state: counters from the writer and the segment files on disk.
//!
//! Two threads change what is on disk: the writer creates and grows segments, the
//! housekeeper deletes them. Both report here, under one lock, so [`JournalStats`] and the
//! segments gauge show the files that exist, never a deleted one, whichever thread acted
//! last. It only records; it decides nothing.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use super::segment::SegmentSeq;
use super::{JournalMetrics, JournalStats};

/// Shared between the writer, the housekeeper and every [`super::Journal`] handle.
#[derive(Debug)]
pub(super) struct SharedStats {
    inner: Mutex<Inner>,
    metrics: JournalMetrics,
}

#[derive(Debug, Default)]
struct Inner {
    /// Everything but the on-disk fields, as the writer last published it.
    counters: JournalStats,
    /// Segment files and their lengths.
    on_disk: BTreeMap<SegmentSeq, u64>,
}

impl SharedStats {
    pub(super) fn new(metrics: JournalMetrics) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            metrics,
        }
    }

    /// Records that segment `seq` exists with `len` bytes (new, grown or cut back).
    pub(super) fn segment_len(&self, seq: SegmentSeq, len: u64) {
        let mut inner = self.lock();
        inner.on_disk.insert(seq, len);
        self.metrics.set_segments(inner.on_disk.len());
    }

    /// Records that segment `seq` was deleted.
    pub(super) fn segment_deleted(&self, seq: SegmentSeq) {
        let mut inner = self.lock();
        inner.on_disk.remove(&seq);
        self.metrics.set_segments(inner.on_disk.len());
    }

    /// Publishes the writer's counters; their `segments` and `bytes_on_disk` are ignored.
    pub(super) fn publish(&self, counters: JournalStats) {
        self.lock().counters = counters;
    }

    pub(super) fn snapshot(&self) -> JournalStats {
        let inner = self.lock();
        JournalStats {
            segments: inner.on_disk.len(),
            bytes_on_disk: inner.on_disk.values().sum(),
            ..inner.counters
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
