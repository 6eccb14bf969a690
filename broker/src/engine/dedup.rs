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
//!
//! An id is *in flight* from its first sight until the write of its message is durable
//! (or failed): a resend arriving meanwhile (a producer that failed over while its first
//! attempt was still being written) waits for that outcome instead of being confirmed at
//! once. Confirmed before the first attempt was durable, it would have been receipted for
//! a message that a failed write, or a crash, then lost.

use crate::journal::remembered_form;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};

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

/// What the cache knows of an id.
#[derive(Debug)]
pub enum Sight {
    /// Never seen (or forgotten): the caller stores the message, and must later call
    /// [`DedupCache::stored`] or [`DedupCache::forget`].
    New,
    /// A message with this id is durable: a resend is a duplicate.
    Stored,
    /// The first attempt is still being written: wait for `0` to change (it closes once the
    /// outcome is known), then ask again.
    InFlight(tokio::sync::watch::Receiver<()>),
}

#[derive(Debug)]
pub struct DedupCache {
    /// `Some` while the id's first attempt is in flight: its sender is dropped (waking the
    /// resends that wait) when the attempt ends either way.
    seen: HashMap<IdDigest, Option<tokio::sync::watch::Sender<()>>>,
    order: VecDeque<IdDigest>,
    capacity: usize,
}

impl DedupCache {
    pub fn new(capacity: usize) -> DedupCache {
        DedupCache { seen: HashMap::new(), order: VecDeque::new(), capacity: capacity.max(1) }
    }

    /// Records `id` as stored (recovered from the journal); false when it was already there.
    pub fn insert(&mut self, id: &str) -> bool {
        match self.sight(id) {
            Sight::New => {
                self.stored(id);
                true
            }
            Sight::Stored | Sight::InFlight(_) => false,
        }
    }

    /// Looks `id` up; a new id is taken in, in flight, until [`DedupCache::stored`] or
    /// [`DedupCache::forget`].
    pub fn sight(&mut self, id: &str) -> Sight {
        let d = digest(id);
        match self.seen.get(&d) {
            Some(None) => return Sight::Stored,
            Some(Some(pending)) => return Sight::InFlight(pending.subscribe()),
            None => {}
        }
        if self.order.len() == self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.seen.insert(d, Some(tokio::sync::watch::channel(()).0));
        self.order.push_back(d);
        Sight::New
    }

    /// The message `id` named is durable: resends are duplicates from now on.
    pub fn stored(&mut self, id: &str) {
        if let Some(entry) = self.seen.get_mut(&digest(id)) {
            // Dropping the sender wakes the resends waiting for this outcome.
            *entry = None;
        }
    }

    /// Forgets `id`: the message it named was not stored after all (refused, or its write
    /// failed), so a resend must be stored, not confirmed as a duplicate of nothing.
    pub fn forget(&mut self, id: &str) {
        let d = digest(id);
        if self.seen.remove(&d).is_some() {
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

    #[tokio::test]
    async fn given_an_id_in_flight_should_make_a_resend_wait_for_the_first_attempts_outcome() {
        let mut c = DedupCache::new(10);
        assert!(matches!(c.sight("a"), Sight::New));
        let Sight::InFlight(mut waiting) = c.sight("a") else { panic!("the first attempt is still in flight") };
        c.stored("a");
        assert!(waiting.changed().await.is_err(), "woken once the outcome is known");
        assert!(matches!(c.sight("a"), Sight::Stored), "then a duplicate");

        assert!(matches!(c.sight("b"), Sight::New));
        let Sight::InFlight(mut waiting) = c.sight("b") else { panic!("in flight") };
        c.forget("b");
        assert!(waiting.changed().await.is_err(), "woken when the attempt failed too");
        assert!(matches!(c.sight("b"), Sight::New), "and the resend is stored");
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
