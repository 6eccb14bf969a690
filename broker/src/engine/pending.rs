//! A queue's pending messages in the order dispatch serves them: the highest priority
//! first (9 before 0), and within one priority by id, which is the order they were
//! accepted in (FIFO). Messages with the default priority 4 keep plain id order.
//!
//! A message's place is its [`Slot`]: its priority and id. Dispatch walks slots; callers
//! that know only an id (a browser, an admin operation) look it up in each priority,
//! at most ten lookups.

use super::message::Entry;
use crate::journal::MessageId;
use std::collections::BTreeMap;
use std::ops::Bound;

/// Priorities a message may have: 0 (lowest) to 9.
const PRIORITIES: u8 = 10;

/// Where a pending message sits: higher priorities sort first, then lower ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slot {
    /// 9 minus the priority, so the highest priority sorts first.
    rank: u8,
    pub id: MessageId,
}

impl Slot {
    pub fn of(entry: &Entry) -> Slot {
        let priority = entry.message.properties.priority.min(PRIORITIES - 1);
        Slot { rank: PRIORITIES - 1 - priority, id: entry.message.id }
    }

    pub fn priority(&self) -> u8 {
        PRIORITIES - 1 - self.rank
    }
}

/// Pending messages by [`Slot`].
#[derive(Debug, Default)]
pub struct Pending {
    slots: BTreeMap<Slot, Entry>,
}

impl Pending {
    /// Adds `entry`; false when a message with its id was pending already (replaced).
    pub fn insert(&mut self, entry: Entry) -> bool {
        self.slots.insert(Slot::of(&entry), entry).is_none()
    }

    pub fn remove(&mut self, slot: &Slot) -> Option<Entry> {
        self.slots.remove(slot)
    }

    /// Removes the pending message with `id`, whatever its priority.
    pub fn remove_id(&mut self, id: MessageId) -> Option<Entry> {
        (0..PRIORITIES).find_map(|rank| self.slots.remove(&Slot { rank, id }))
    }

    /// The pending message with `id`, whatever its priority.
    pub fn get_id(&self, id: MessageId) -> Option<&Entry> {
        (0..PRIORITIES).find_map(|rank| self.slots.get(&Slot { rank, id }))
    }

    /// The message dispatch serves next.
    pub fn first(&self) -> Option<(&Slot, &Entry)> {
        self.slots.iter().next()
    }

    /// The message served after `slot`.
    pub fn after(&self, slot: Slot) -> Option<(&Slot, &Entry)> {
        self.slots.range((Bound::Excluded(slot), Bound::Unbounded)).next()
    }

    /// Every pending message in dispatch order.
    pub fn iter(&self) -> impl Iterator<Item = (&Slot, &Entry)> {
        self.slots.iter()
    }

    pub fn values(&self) -> impl Iterator<Item = &Entry> {
        self.slots.values()
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn clear(&mut self) {
        self.slots.clear();
    }

    /// Up to `limit` pending messages with ids after `after` and below `below`, in id
    /// order whatever their priority (what a browser pages through).
    pub fn by_id(&self, after: Option<MessageId>, below: MessageId, limit: usize) -> Vec<&Entry> {
        let mut out: Vec<&Entry> = Vec::new();
        for rank in 0..PRIORITIES {
            let from = after.map_or(Bound::Included(Slot { rank, id: MessageId(0) }), |id| Bound::Excluded(Slot { rank, id }));
            out.extend(self.slots.range((from, Bound::Excluded(Slot { rank, id: below }))).take(limit).map(|(_, e)| e));
        }
        out.sort_by_key(|e| e.message.id);
        out.truncate(limit);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64, priority: Option<u8>) -> Entry {
        Entry::for_test(id, priority.map(|p| ("priority".to_string(), p.to_string())).into_iter().collect())
    }

    fn order(p: &Pending) -> Vec<u64> {
        p.iter().map(|(s, _)| s.id.0).collect()
    }

    #[test]
    fn given_priorities_should_serve_highest_first_and_fifo_within_one() {
        let mut p = Pending::default();
        for (id, prio) in [(1, None), (2, Some(9)), (3, Some(0)), (4, None), (5, Some(9)), (6, Some(7))] {
            assert!(p.insert(entry(id, prio)));
        }
        assert_eq!(order(&p), [2, 5, 6, 1, 4, 3]);
        let first = *p.first().expect("pending").0;
        assert_eq!((first.id.0, first.priority()), (2, 9));
        assert_eq!(p.after(first).map(|(s, _)| s.id.0), Some(5));
        assert_eq!(p.remove_id(MessageId(6)).map(|e| e.message.id.0), Some(6));
        assert!(p.get_id(MessageId(6)).is_none() && p.get_id(MessageId(3)).is_some());
        assert_eq!(order(&p), [2, 5, 1, 4, 3]);
    }

    #[test]
    fn given_default_priority_only_should_keep_id_order() {
        let mut p = Pending::default();
        for id in [5, 1, 3] {
            p.insert(entry(id, None));
        }
        assert_eq!(order(&p), [1, 3, 5]);
    }

    #[test]
    fn given_a_browse_range_should_list_by_id_across_priorities() {
        let mut p = Pending::default();
        for (id, prio) in [(1, Some(1)), (2, Some(9)), (3, None), (4, Some(9)), (5, Some(1))] {
            p.insert(entry(id, prio));
        }
        let ids = |after, below, limit| p.by_id(after, MessageId(below), limit).iter().map(|e| e.message.id.0).collect::<Vec<_>>();
        assert_eq!(ids(None, 100, 3), [1, 2, 3]);
        assert_eq!(ids(Some(MessageId(3)), 100, 3), [4, 5]);
        assert_eq!(ids(Some(MessageId(1)), 4, 10), [2, 3]);
    }
}
