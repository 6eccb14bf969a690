//! Correctness accounting: which sequence numbers each producer had confirmed (receipted,
//! or merely sent when it asked for no receipts) and which were delivered, and how
//! often. From the two it derives `lost` (confirmed, never delivered) and `duplicates`
//! (deliveries beyond the first). No I/O and no clocks.
//!
//! Producers keep their own [`SeqSet`] (one writer each). Deliveries arrive on every
//! consumer at once, so [`Deliveries`] is a lock-free bitset per producer that marks a
//! sequence number with one atomic OR and learns on the way whether it was seen before.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Sequence numbers per lazily allocated chunk of a [`Deliveries`] bitset.
const CHUNK_BITS: u64 = 64 * 1024;
const CHUNK_WORDS: usize = (CHUNK_BITS / 64) as usize;
/// Chunks per producer: 2^30 sequence numbers, hours at any rate this machine reaches.
const MAX_CHUNKS: usize = 16 * 1024;

/// A growable set of sequence numbers, for one writer.
#[derive(Debug, Default, Clone)]
pub struct SeqSet {
    words: Vec<u64>,
    len: u64,
}

impl SeqSet {
    pub fn insert(&mut self, seq: u64) {
        let Ok(word) = usize::try_from(seq / 64) else { return };
        if word >= self.words.len() {
            self.words.resize((word + 1).next_power_of_two(), 0);
        }
        let bit = 1u64 << (seq % 64);
        if self.words[word] & bit == 0 {
            self.words[word] |= bit;
            self.len += 1;
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }
}

/// What marking one delivery found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// The first delivery of this message.
    First,
    /// Delivered before: a duplicate.
    Again,
    /// The stamp names a producer this run does not have, or a sequence number past what
    /// can be tracked: not one of ours.
    Foreign,
}

/// Which messages were delivered, shared by every consumer of a run.
pub struct Deliveries {
    producers: Vec<DeliveredBits>,
}

struct DeliveredBits {
    chunks: Box<[OnceLock<Box<[AtomicU64]>>]>,
}

impl DeliveredBits {
    fn new() -> DeliveredBits {
        DeliveredBits { chunks: (0..MAX_CHUNKS).map(|_| OnceLock::new()).collect() }
    }

    fn chunk(&self, index: usize) -> Option<&[AtomicU64]> {
        self.chunks.get(index).and_then(|c| c.get()).map(|c| &c[..])
    }

    fn word(&self, word: u64) -> u64 {
        let chunk = (word / CHUNK_WORDS as u64) as usize;
        let at = (word % CHUNK_WORDS as u64) as usize;
        self.chunk(chunk).map_or(0, |c| c[at].load(Ordering::Acquire))
    }
}

impl Deliveries {
    pub fn new(producers: u32) -> Deliveries {
        Deliveries { producers: (0..producers).map(|_| DeliveredBits::new()).collect() }
    }

    /// Records one delivery of (`producer`, `seq`).
    pub fn mark(&self, producer: u32, seq: u64) -> Mark {
        let Some(bits) = self.producers.get(producer as usize) else { return Mark::Foreign };
        let chunk = seq / CHUNK_BITS;
        if chunk >= MAX_CHUNKS as u64 {
            return Mark::Foreign;
        }
        let words = bits.chunks[chunk as usize].get_or_init(|| (0..CHUNK_WORDS).map(|_| AtomicU64::new(0)).collect());
        let within = seq % CHUNK_BITS;
        let bit = 1u64 << (within % 64);
        let before = words[(within / 64) as usize].fetch_or(bit, Ordering::AcqRel);
        if before & bit == 0 {
            Mark::First
        } else {
            Mark::Again
        }
    }

    /// How many of `confirmed[p]`, for every producer `p`, were never delivered.
    pub fn missing(&self, confirmed: &[SeqSet]) -> u64 {
        let mut missing = 0u64;
        for (bits, set) in self.producers.iter().zip(confirmed) {
            for (word, &wanted) in (0u64..).zip(&set.words) {
                if wanted != 0 {
                    missing += u64::from((wanted & !bits.word(word)).count_ones());
                }
            }
        }
        missing
    }

    /// The first few confirmed-but-undelivered messages, as (producer, seq), for the log.
    pub fn missing_examples(&self, confirmed: &[SeqSet], limit: usize) -> Vec<(u32, u64)> {
        let mut examples = Vec::new();
        for (producer, (bits, set)) in (0u32..).zip(self.producers.iter().zip(confirmed)) {
            for (word, &wanted) in (0u64..).zip(&set.words) {
                let mut gaps = wanted & !bits.word(word);
                while gaps != 0 && examples.len() < limit {
                    examples.push((producer, word * 64 + u64::from(gaps.trailing_zeros())));
                    gaps &= gaps - 1;
                }
            }
        }
        examples
    }
}

/// Delivery counts a consumer keeps for the whole run, merged at the end.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryCounts {
    /// Deliveries beyond the first of a message, without `redelivered:true`: the broker
    /// stored or sent it twice.
    pub duplicates: u64,
    /// Deliveries beyond the first with `redelivered:true`: an unacknowledged message
    /// handed out again after its consumer's connection was lost (at-least-once).
    pub redeliveries: u64,
    /// Deliveries beyond the first without `redelivered:true`, but after a consumer
    /// connection was lost since the first delivery: its ACK may have been lost with the
    /// connection, and the broker that delivered it again did not know of the first
    /// delivery (a promoted backup, or a restarted broker).
    pub unflagged_redeliveries: u64,
    /// Bodies this run did not write: another tool's messages, or a previous run's left
    /// in the queue.
    pub foreign: u64,
}

impl DeliveryCounts {
    /// Books one delivery; `redelivered` is the MESSAGE's `redelivered` header,
    /// `lost_since_first` whether a consumer connection was lost since the message's
    /// first delivery.
    pub fn add(&mut self, mark: Mark, redelivered: bool, lost_since_first: bool) {
        match (mark, redelivered, lost_since_first) {
            (Mark::First, _, _) => {}
            (Mark::Again, true, _) => self.redeliveries += 1,
            (Mark::Again, false, true) => self.unflagged_redeliveries += 1,
            (Mark::Again, false, false) => self.duplicates += 1,
            (Mark::Foreign, _, _) => self.foreign += 1,
        }
    }

    /// Every delivery beyond the first, whatever the reason.
    pub fn repeated(&self) -> u64 {
        self.duplicates + self.redeliveries + self.unflagged_redeliveries
    }

    pub fn merge(&mut self, other: DeliveryCounts) {
        self.duplicates += other.duplicates;
        self.redeliveries += other.redeliveries;
        self.unflagged_redeliveries += other.unflagged_redeliveries;
        self.foreign += other.foreign;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(seqs: &[u64]) -> SeqSet {
        let mut s = SeqSet::default();
        seqs.iter().for_each(|&q| s.insert(q));
        s
    }

    #[test]
    fn given_seq_set_when_inserting_twice_should_count_once() {
        let s = set(&[0, 63, 64, 1_000_000, 63]);
        assert_eq!(s.len(), 4);
        let d = Deliveries::new(1);
        assert_eq!(d.missing_examples(std::slice::from_ref(&s), 10), vec![(0, 0), (0, 63), (0, 64), (0, 1_000_000)]);
    }

    #[test]
    fn given_repeated_delivery_should_mark_first_then_again() {
        let d = Deliveries::new(2);
        assert_eq!(d.mark(1, 70_000), Mark::First);
        assert_eq!(d.mark(1, 70_000), Mark::Again);
        assert_eq!(d.mark(0, 70_000), Mark::First);
        assert_eq!(d.missing(&[set(&[]), set(&[69_999, 70_000])]), 1);
    }

    #[test]
    fn given_unknown_producer_or_huge_seq_should_mark_foreign() {
        let d = Deliveries::new(1);
        assert_eq!(d.mark(1, 0), Mark::Foreign);
        assert_eq!(d.mark(0, CHUNK_BITS * MAX_CHUNKS as u64), Mark::Foreign);
    }

    #[test]
    fn given_confirmed_messages_when_some_undelivered_should_count_them_lost() {
        let d = Deliveries::new(2);
        let confirmed = vec![set(&[0, 1, 2, 3, 200_000]), set(&[5, 6])];
        for (p, q) in [(0, 0), (0, 2), (0, 3), (1, 5), (1, 6), (1, 7)] {
            d.mark(p, q);
        }
        assert_eq!(d.missing(&confirmed), 2);
        assert_eq!(d.missing_examples(&confirmed, 10), vec![(0, 1), (0, 200_000)]);
        assert_eq!(d.missing_examples(&confirmed, 1), vec![(0, 1)]);
    }

    #[test]
    fn given_delivered_but_unconfirmed_message_should_not_count_lost() {
        let d = Deliveries::new(1);
        d.mark(0, 9);
        assert_eq!(d.missing(&[set(&[])]), 0);
    }

    #[test]
    fn given_marks_from_many_consumers_should_count_duplicates_across_them() {
        let d = std::sync::Arc::new(Deliveries::new(1));
        let consumers: Vec<_> = (0..4)
            .map(|_| {
                let d = std::sync::Arc::clone(&d);
                std::thread::spawn(move || {
                    let mut counts = DeliveryCounts::default();
                    (0..10_000).for_each(|q| counts.add(d.mark(0, q), false, false));
                    counts
                })
            })
            .collect();
        let mut total = DeliveryCounts::default();
        for c in consumers {
            total.merge(c.join().unwrap_or_default());
        }
        assert_eq!(total, DeliveryCounts { duplicates: 30_000, ..DeliveryCounts::default() });
        assert_eq!(d.missing(&[set(&(0..10_000).collect::<Vec<_>>())]), 0);
    }

    #[rstest::rstest]
    #[case::first_plain(Mark::First, false, false, DeliveryCounts::default())]
    #[case::first_redelivered(Mark::First, true, true, DeliveryCounts::default())]
    #[case::again_plain_is_duplicate(Mark::Again, false, false, DeliveryCounts { duplicates: 1, ..DeliveryCounts::default() })]
    #[case::again_redelivered_is_redelivery(Mark::Again, true, false, DeliveryCounts { redeliveries: 1, ..DeliveryCounts::default() })]
    #[case::again_redelivered_after_loss_is_redelivery(Mark::Again, true, true, DeliveryCounts { redeliveries: 1, ..DeliveryCounts::default() })]
    #[case::again_unflagged_after_loss(Mark::Again, false, true, DeliveryCounts { unflagged_redeliveries: 1, ..DeliveryCounts::default() })]
    #[case::foreign(Mark::Foreign, true, false, DeliveryCounts { foreign: 1, ..DeliveryCounts::default() })]
    fn given_delivery_should_be_classified_by_mark_flag_and_connection_loss(
        #[case] mark: Mark,
        #[case] redelivered: bool,
        #[case] lost_since_first: bool,
        #[case] want: DeliveryCounts,
    ) {
        let mut counts = DeliveryCounts::default();
        counts.add(mark, redelivered, lost_since_first);
        assert_eq!(counts, want);
    }

    #[test]
    fn given_message_delivered_then_redelivered_then_resent_should_count_one_of_each() {
        let d = Deliveries::new(1);
        let mut counts = DeliveryCounts::default();
        counts.add(d.mark(0, 7), false, false);
        counts.add(d.mark(0, 7), true, true);
        counts.add(d.mark(0, 7), false, true);
        counts.add(d.mark(0, 7), false, false);
        assert_eq!((counts.redeliveries, counts.unflagged_redeliveries, counts.duplicates), (1, 1, 1));
        assert_eq!(counts.repeated(), 3);
    }
}
