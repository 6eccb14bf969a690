//! What a queue does with a producer's message once it holds its `maxSizeBytes`
//! (`addressSettings` `addressFullPolicy`, Artemis' address-full-policy):
//!
//! - `block`: the producer waits for room, up to `memory.producerBlockTimeout`, then gets
//!   an ERROR;
//! - `fail`: the producer gets an ERROR at once, naming the queue and its limit;
//! - `page`: a persistent message is accepted all the same and kept in the journal only
//!   (see [`super::paging`]); a non-persistent one cannot be paged and waits as with
//!   `block`.
//!
//! Once a queue pages, every persistent message to it is paged until the paged ones are
//! read back, whatever its policy (a queue recovered with a backlog pages too), so no
//! later message overtakes an earlier one. The broker-wide `memory.maxBrokerBytes` keeps
//! its meaning: past it producers of messages that stay in memory wait. A topic's
//! producers wait for its fullest durable subscription, except for a persistent message
//! and a subscription that pages (its copy is paged there, see [`super::durable`]).
//!
//! `storage.maxDiskBytes` is checked here too: past it a persistent message is refused.

use super::accept::AcceptError;
use super::queue::Queue;
use super::{Broker, Target};
use crate::config::FullPolicy;
use std::sync::Arc;

/// How a message was let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Admitted {
    /// The producer waited for room.
    pub blocked: bool,
    /// It may be paged rather than held in memory (decided for good right before its
    /// record is appended, see [`Broker::page_if_needed`]).
    pub pageable: bool,
}

impl Broker {
    /// Applies the destination's full policy and the disk quota to a message about to be
    /// accepted; `journaled`: persistent, to a queue.
    pub(super) async fn admit(&self, target: &Target, journaled: bool, persistent: bool) -> Result<Admitted, AcceptError> {
        if journaled {
            self.check_disk_quota()?;
        }
        let queue = match target {
            Target::Queue(q) => Some(q),
            Target::Topic(_) => None,
        };
        let pageable = journaled && self.store.journal().is_some() && queue.is_some_and(|q| q.pages());
        if pageable {
            return Ok(Admitted { blocked: false, pageable });
        }
        // A topic's producers wait for its fullest durable subscription (memory.maxQueueBytes).
        let limit = queue.map_or(self.memory.queue_limit, |q| q.settings.max_size_bytes);
        let memory = &self.memory;
        // A persistent message's copies for durable subscriptions that page are paged.
        let copies_page = persistent && self.store.journal().is_some();
        let queue_bytes = || Broker::target_bytes(target, copies_page);
        if memory.used() < memory.broker_limit && queue_bytes() < limit {
            return Ok(Admitted { blocked: false, pageable });
        }
        if let Some(q) = queue.filter(|q| q.settings.full_policy == FullPolicy::Fail && queue_bytes() >= limit) {
            return Err(AcceptError::Full { queue: q.name.to_string(), limit });
        }
        let timeout = self.config.memory.producer_block_timeout.get();
        tracing::debug!(?timeout, "producer blocked by memory limits");
        if memory.wait_for_room(queue_bytes, limit, timeout).await {
            Ok(Admitted { blocked: true, pageable })
        } else {
            Err(AcceptError::NoRoom(timeout))
        }
    }

    /// Whether a message the broker moves itself to `target` (a dead letter, an expired
    /// message) may be paged: persistent, to a queue that pages, with the file journal.
    pub(super) fn moved_pageable(&self, target: &Target, persistent: bool) -> bool {
        persistent && self.store.journal().is_some() && matches!(target, Target::Queue(q) if q.pages())
    }

    /// Decides, right before its record is appended, whether a message admitted as
    /// pageable is paged: when its queue pages already, or holds its `maxSizeBytes`, or
    /// the broker its `memory.maxBrokerBytes`. A paged message counts in the queue's paged
    /// set from now on; true when it was paged.
    pub(super) fn page_if_needed(&self, queue: &Arc<Queue>, message: &super::message::Message) -> bool {
        let broker_full = self.memory.used() >= self.memory.broker_limit;
        queue.page_if_full(message.id, message.footprint(), broker_full)
    }
}
