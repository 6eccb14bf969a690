//! Forwards this remote stored behind one whose write failed, held unpublished until that
//! one is stored again.
//!
//! The receiving side of a link accepts forwards in order and their fsyncs overlap. When
//! one write fails, the link closes (see `link`) and the sender sends it again on the next
//! link; but the forwards behind it may already be durable, in later fsyncs. Published at
//! once, they reached consumers before the failed one came again: messages of one
//! producer and message group out of order (nemesis finding 6). They are held here
//! instead, and published right after every failed forward before them is stored (or
//! found stored) again. Their own resends then meet duplicate detection.
//!
//! A hold waits [`super::forwarder::RELEASE_AFTER`] at most (the sender hands its unconfirmed
//! forwards back to its queues after that long without a link): then it is published as it
//! is, with a warning. A member that restarts meanwhile recovers the held messages from its
//! journal and publishes them at once, before the failed one comes again.

use crate::engine::accept::Durable;
use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

struct Hold {
    id: u64,
    link: String,
    /// Dedup ids of the failed forwards still to be stored again.
    waiting: HashSet<String>,
    /// Durable, unpublished, in the order they were forwarded.
    durables: Vec<Durable>,
}

/// Every hold of one live term's network.
#[derive(Default)]
pub struct HeldForwards {
    holds: Mutex<Vec<Hold>>,
    next: AtomicU64,
}

impl HeldForwards {
    /// Holds `durables` (stored behind failed forwards on `link`) until every id in
    /// `waiting` is stored again, or `release_after` has passed.
    pub fn hold(self: &Arc<Self>, link: &str, waiting: HashSet<String>, durables: Vec<Durable>, release_after: Duration) {
        if durables.is_empty() {
            return;
        }
        if waiting.is_empty() {
            publish(durables);
            return;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%link, held = durables.len(), failed = waiting.len(), "holding forwards stored behind a failed one until it comes again");
        self.holds.lock().push(Hold { id, link: link.to_string(), waiting, durables });
        let weak = Arc::downgrade(self);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                tokio::time::sleep(release_after).await;
                if let Some(held) = weak.upgrade() {
                    held.lapse(id, release_after);
                }
            });
        }
    }

    /// A forward with `dedup_id` was stored (or found stored) and published: holds waiting
    /// only for it are published now, right after it.
    pub fn stored(&self, dedup_id: &str) {
        let ready: Vec<Hold> = {
            let mut holds = self.holds.lock();
            if holds.is_empty() {
                return;
            }
            holds.iter_mut().for_each(|h| {
                h.waiting.remove(dedup_id);
            });
            let (ready, rest) = std::mem::take(&mut *holds).into_iter().partition(|h| h.waiting.is_empty());
            *holds = rest;
            ready
        };
        for hold in ready {
            tracing::info!(link = %hold.link, published = hold.durables.len(), "the failed forward was stored again: publishing those held behind it");
            publish(hold.durables);
        }
    }

    fn lapse(&self, id: u64, after: Duration) {
        let hold = {
            let mut holds = self.holds.lock();
            let Some(at) = holds.iter().position(|h| h.id == id) else { return };
            holds.remove(at)
        };
        tracing::warn!(
            link = %hold.link,
            published = hold.durables.len(),
            waited = ?after,
            "a failed forward did not come again: publishing those held behind it; they may reach consumers before it"
        );
        publish(hold.durables);
    }
}

fn publish(durables: Vec<Durable>) {
    for durable in durables {
        durable.publish();
    }
}
