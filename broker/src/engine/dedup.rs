//! Duplicate detection for resent messages: producers that fail over resend what was not
//! receipted with the same `message-id` header, and the broker stores it once. The cache
//! is bounded (oldest ids are forgotten first) and rebuilt from the journal at start, so a
//! backup that activates knows the ids its live had stored.
//!
//! Ids are kept as 128-bit digests, not as the producer's strings: a hostile producer's
//! 60 KiB ids cost the cache the same 16 bytes as a UUID's, so its memory is fixed by
//! [`CAPACITY`] whatever clients send (a few MiB). The journal's window of remembered ids
//! keeps long ids by digest too ([`remembered_form`]); the cache digests that same form,
//! so ids recovered from the journal and ids sent by producers compare equal.

use crate::journal::remembered_form;
use sha2::{Digest, Sha256};
use std::collections::{HashSet, VecDeque};

/// Header a producer sets on SEND to make the message deduplicated.
pub const SEND_HEADER: &str = "message-id";
/// The same id as stored and delivered (the MESSAGE's own `message-id` is the broker's).
pub const STORED_HEADER: &str = "dedup-id";
/// Ids remembered.
pub const CAPACITY: usize = 100_000;

/// The first 128 bits of the id's SHA-256: collisions are out of reach in practice.
type IdDigest = [u8; 16];

fn digest(id: &str) -> IdDigest {
    let full = Sha256::digest(remembered_form(id).as_bytes());
    let mut d = [0u8; 16];
    d.copy_from_slice(&full[..16]);
    d
}

#[derive(Debug)]
pub struct DedupCache {
    seen: HashSet<IdDigest>,
    order: VecDeque<IdDigest>,
    capacity: usize,
}

impl DedupCache {
    pub fn new(capacity: usize) -> DedupCache {
        DedupCache { seen: HashSet::new(), order: VecDeque::new(), capacity: capacity.max(1) }
    }

    /// Records `id`; false when it was already there (a duplicate).
    pub fn insert(&mut self, id: &str) -> bool {
        let d = digest(id);
        if self.seen.contains(&d) {
            return false;
        }
        if self.order.len() == self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.seen.insert(d);
        self.order.push_back(d);
        true
    }

    /// Forgets `id`: the message it named was not stored after all (refused, or its write
    /// failed), so a resend must be stored, not confirmed as a duplicate of nothing.
    pub fn forget(&mut self, id: &str) {
        let d = digest(id);
        if self.seen.remove(&d) {
            // Refusals are rare and the id is recent: look from the newest end.
            if let Some(at) = self.order.iter().rposition(|x| *x == d) {
                self.order.remove(at);
            }
        }
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
    fn given_a_forgotten_id_should_take_it_as_new_again_and_keep_the_others() {
        let mut c = DedupCache::new(3);
        assert!(c.insert("a"));
        assert!(c.insert("b"));
        c.forget("a");
        c.forget("never-seen");
        assert_eq!(c.len(), 1);
        assert!(c.insert("a"), "a forgotten id is new again");
        assert!(!c.insert("b"));
        assert!(c.insert("c"));
        assert!(c.insert("d"), "room for a fourth: the forgotten entry left the order too");
        assert!(c.insert("b"), "b was the oldest and went first");
    }

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

    #[test]
    fn given_long_ids_should_keep_sixteen_bytes_each() {
        let mut c = DedupCache::new(10);
        let long = "x".repeat(60 * 1024);
        assert!(c.insert(&long));
        assert!(!c.insert(&long), "the same long id is a duplicate");
        assert!(c.insert(&format!("{long}y")), "a different long id is not");
        assert_eq!(std::mem::size_of::<IdDigest>(), 16);
    }

    #[test]
    fn given_the_journal_form_of_a_long_id_should_match_the_id_itself() {
        let mut c = DedupCache::new(10);
        let long = "y".repeat(1000);
        assert!(c.insert(&remembered_form(&long)), "as recovered from the journal");
        assert!(!c.insert(&long), "the producer's resend is a duplicate");
    }
}
