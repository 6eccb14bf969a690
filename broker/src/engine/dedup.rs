//! Duplicate detection for resent messages: producers that fail over resend what was not
//! receipted with the same `message-id` header, and the broker stores it once. The cache
//! is bounded (oldest ids are forgotten first) and rebuilt from the journal at start, so a
//! backup that activates knows the ids its live had stored.

use std::collections::{HashSet, VecDeque};

/// Header a producer sets on SEND to make the message deduplicated.
pub const SEND_HEADER: &str = "message-id";
/// The same id as stored and delivered (the MESSAGE's own `message-id` is the broker's).
pub const STORED_HEADER: &str = "dedup-id";
/// Ids remembered.
pub const CAPACITY: usize = 100_000;

#[derive(Debug)]
pub struct DedupCache {
    seen: HashSet<String>,
    order: VecDeque<String>,
    capacity: usize,
}

impl DedupCache {
    pub fn new(capacity: usize) -> DedupCache {
        DedupCache { seen: HashSet::new(), order: VecDeque::new(), capacity: capacity.max(1) }
    }

    /// Records `id`; false when it was already there (a duplicate).
    pub fn insert(&mut self, id: &str) -> bool {
        if self.seen.contains(id) {
            return false;
        }
        if self.order.len() == self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.seen.insert(id.to_string());
        self.order.push_back(id.to_string());
        true
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_repeat_should_report_duplicate_and_forget_oldest_beyond_capacity() {
        let mut c = DedupCache::new(2);
        assert!(c.insert("a"));
        assert!(!c.insert("a"));
        assert!(c.insert("b"));
        assert!(c.insert("c"));
        assert_eq!(c.len(), 2);
        assert!(c.insert("a"), "a was forgotten");
        assert!(!c.insert("c"));
    }
}
