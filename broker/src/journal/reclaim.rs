//! Bookkeeping that decides which segments can be deleted.
//!
//! A segment may go once it holds no live adds AND every older segment its acks refer to
//! is already gone; deleting it earlier would let recovery resurrect a message whose ack
//! lived only here. Pure state: it never touches files (the housekeeper deletes what it
//! names, in the order named, each deletion durable before the next starts).
//!
//! What it costs in memory: per segment, its live ids in a compressed set (about a bit
//! per id while ids run dense, as the broker's monotonic ids do) and the range of ids
//! added to it; never an entry per message. An ack finds the segment holding its id
//! among those whose range contains it: with monotonic ids, one.

use std::collections::{BTreeMap, BTreeSet};

use roaring::RoaringTreemap;

use super::segment::SegmentSeq;
use super::{MessageId, Op};

/// What an op means to the bookkeeping: only ids matter, not message contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Effect {
    Add(MessageId),
    Ack(MessageId),
}

impl Effect {
    pub(super) fn of(op: &Op) -> Effect {
        match op {
            Op::Add(message) => Effect::Add(message.id),
            Op::Ack(id) => Effect::Ack(*id),
        }
    }

    pub(super) fn id(self) -> MessageId {
        match self {
            Effect::Add(id) | Effect::Ack(id) => id,
        }
    }
}

#[derive(Debug, Default)]
struct SegmentEntry {
    /// Ids added in this segment and not acked (nor added again later).
    live: RoaringTreemap,
    /// Lowest and highest id added in this segment since it last held no live id: every
    /// id in `live` lies within, so a lookup skips segments whose range misses it.
    range: Option<(u64, u64)>,
    /// Older segments whose adds were acked by records in this one.
    acked_in: BTreeSet<SegmentSeq>,
    /// Handed over for deletion and not yet reported gone. Such a segment still exists,
    /// but counts as gone for the segments that depend on it: they are deleted after it,
    /// by the same thread, only once its deletion is durable.
    deleting: bool,
}

/// Which segments exist, what is live in each, and which depend on which.
#[derive(Debug, Default)]
pub(super) struct Ledger {
    segments: BTreeMap<SegmentSeq, SegmentEntry>,
    /// Live ids over every segment.
    live: u64,
    /// The highest id ever added: an add above it (the broker's ids only go up, so nearly
    /// every add) is of an id no segment holds, and needs no look through the segments.
    highest: Option<u64>,
}

impl SegmentEntry {
    fn might_hold(&self, id: u64) -> bool {
        self.range.is_some_and(|(min, max)| (min..=max).contains(&id))
    }

    fn insert(&mut self, id: u64) {
        self.live.insert(id);
        self.range = Some(match self.range {
            Some((min, max)) => (min.min(id), max.max(id)),
            None => (id, id),
        });
    }

    fn remove(&mut self, id: u64) -> bool {
        let removed = self.live.remove(id);
        if self.live.is_empty() {
            self.range = None;
        }
        removed
    }
}

impl Ledger {
    /// Starts tracking a segment file.
    pub(super) fn add_segment(&mut self, seq: SegmentSeq) {
        self.segments.entry(seq).or_default();
    }

    /// Applies the effects of one durable record in segment `seq`.
    pub(super) fn apply(&mut self, seq: SegmentSeq, effects: &[Effect]) {
        for effect in effects {
            match *effect {
                Effect::Add(id) => {
                    // A repeated add replaces the earlier one, as recovery's map does.
                    let new = self.highest.is_none_or(|h| id.0 > h);
                    if new || self.take_live(id).is_none() {
                        self.live += 1;
                    }
                    self.highest = Some(self.highest.map_or(id.0, |h| h.max(id.0)));
                    self.segments.entry(seq).or_default().insert(id.0);
                }
                Effect::Ack(id) => {
                    // An unknown id (reclaimed, or never persistent) changes nothing.
                    let Some(added_in) = self.take_live(id) else {
                        continue;
                    };
                    self.live -= 1;
                    if added_in != seq {
                        self.segments
                            .entry(seq)
                            .or_default()
                            .acked_in
                            .insert(added_in);
                    }
                }
            }
        }
    }

    /// Takes `id` out of the segment holding it live; returns that segment. Newest first:
    /// with monotonic ids only one segment's range holds a given id, and the newest
    /// segments are where repeated adds and quick acks look.
    fn take_live(&mut self, id: MessageId) -> Option<SegmentSeq> {
        self.segments
            .iter_mut()
            .rev()
            .filter(|(_, entry)| entry.might_hold(id.0))
            .find_map(|(&seq, entry)| entry.remove(id.0).then_some(seq))
    }

    /// Segments that may be deleted now and are not being deleted yet, oldest first, never
    /// `current`. Each assumes the ones being deleted and the ones before it in the list
    /// go first, so delete in order, each deletion durable before the next, and stop at the
    /// first failure.
    pub(super) fn reclaimable(&self, current: SegmentSeq) -> Vec<SegmentSeq> {
        let mut gone: BTreeSet<SegmentSeq> = BTreeSet::new();
        let mut found = Vec::new();
        for (&seq, entry) in &self.segments {
            if entry.deleting {
                gone.insert(seq);
                continue;
            }
            let independent = entry
                .acked_in
                .iter()
                .all(|older| gone.contains(older) || !self.segments.contains_key(older));
            if seq != current && entry.live.is_empty() && independent {
                gone.insert(seq);
                found.push(seq);
            }
        }
        found
    }

    /// Notes that `seq` was handed over for deletion; it stays tracked until [`forget`].
    ///
    /// [`forget`]: Ledger::forget
    pub(super) fn mark_deleting(&mut self, seq: SegmentSeq) {
        if let Some(entry) = self.segments.get_mut(&seq) {
            entry.deleting = true;
        }
    }

    /// Stops tracking a segment whose deletion is durable.
    pub(super) fn forget(&mut self, seq: SegmentSeq) {
        if let Some(entry) = self.segments.remove(&seq) {
            self.live = self.live.saturating_sub(entry.live.len());
        }
    }

    pub(super) fn live_messages(&self) -> usize {
        usize::try_from(self.live).unwrap_or(usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(n: u64) -> SegmentSeq {
        SegmentSeq(n)
    }

    fn add(id: u64) -> Effect {
        Effect::Add(MessageId(id))
    }

    fn ack(id: u64) -> Effect {
        Effect::Ack(MessageId(id))
    }

    fn ledger_with(segments: &[(u64, &[Effect])]) -> Ledger {
        let mut ledger = Ledger::default();
        for (n, effects) in segments {
            ledger.add_segment(seq(*n));
            ledger.apply(seq(*n), effects);
        }
        ledger
    }

    #[test]
    fn given_fully_acked_segment_when_checked_should_be_reclaimable() {
        let ledger = ledger_with(&[(1, &[add(1), add(2)]), (2, &[ack(1), ack(2)])]);
        assert_eq!(ledger.reclaimable(seq(2)), vec![seq(1)]);
    }

    #[test]
    fn given_segment_acking_into_live_older_segment_when_checked_should_be_kept() {
        let ledger = ledger_with(&[(1, &[add(1), add(2)]), (2, &[ack(1)]), (3, &[add(3)])]);
        assert!(ledger.reclaimable(seq(3)).is_empty());
    }

    #[test]
    fn given_chain_of_dependencies_when_older_frees_up_should_reclaim_in_order() {
        let ledger = ledger_with(&[
            (1, &[add(1), add(2)]),
            (2, &[ack(1)]),
            (3, &[add(3)]),
            (4, &[ack(2)]),
        ]);
        assert_eq!(ledger.reclaimable(seq(4)), vec![seq(1), seq(2)]);
    }

    #[test]
    fn given_current_segment_without_live_adds_when_checked_should_never_be_reclaimable() {
        let ledger = ledger_with(&[(1, &[add(1), ack(1)])]);
        assert!(ledger.reclaimable(seq(1)).is_empty());
        assert_eq!(ledger.reclaimable(seq(2)), vec![seq(1)]);
    }

    #[test]
    fn given_ack_for_unknown_id_when_applied_should_change_nothing() {
        let mut ledger = ledger_with(&[(1, &[add(1)])]);
        ledger.apply(seq(1), &[ack(99)]);
        assert_eq!(ledger.live_messages(), 1);
        assert!(ledger.reclaimable(seq(2)).is_empty());
    }

    #[test]
    fn given_segment_being_deleted_when_checked_should_not_be_named_again_but_free_dependants() {
        let mut ledger = ledger_with(&[(1, &[add(1)]), (2, &[ack(1)]), (3, &[add(3)])]);
        assert_eq!(ledger.reclaimable(seq(3)), vec![seq(1), seq(2)]);
        ledger.mark_deleting(seq(1));
        assert_eq!(ledger.reclaimable(seq(3)), vec![seq(2)]);
        ledger.mark_deleting(seq(2));
        assert!(ledger.reclaimable(seq(3)).is_empty());
        ledger.forget(seq(1));
        ledger.forget(seq(2));
        assert!(ledger.reclaimable(seq(3)).is_empty());
    }

    #[test]
    fn given_forgotten_older_segment_when_checked_should_free_its_dependants() {
        let mut ledger = ledger_with(&[(1, &[add(1)]), (2, &[ack(1), add(2)]), (3, &[])]);
        ledger.forget(seq(1));
        ledger.apply(seq(3), &[ack(2)]);
        assert_eq!(ledger.reclaimable(seq(3)), vec![seq(2)]);
    }

    #[test]
    fn given_ack_of_id_in_old_segment_when_applied_should_free_that_segment_and_record_the_dependency() {
        let mut ledger = ledger_with(&[(1, &[add(1), add(2)]), (2, &[add(3), add(4)]), (3, &[add(5)])]);
        ledger.apply(seq(3), &[ack(1), ack(2)]);
        assert_eq!(ledger.live_messages(), 3);
        assert_eq!(ledger.reclaimable(seq(3)), vec![seq(1)]);
        ledger.apply(seq(3), &[ack(3), ack(4)]);
        assert_eq!(ledger.reclaimable(seq(3)), vec![seq(1), seq(2)]);
    }

    #[test]
    fn given_overlapping_id_ranges_when_acked_should_free_the_segment_that_held_each_id() {
        // Ids 1..=10 in segment 1 except 4 and 6, which a restore re-added in segment 2,
        // next to ids of its own: both ranges contain 4 to 6.
        let mut ledger = ledger_with(&[
            (1, &[add(1), add(2), add(3), add(5), add(7), add(8), add(9), add(10)]),
            (2, &[add(4), add(6), add(11)]),
            (3, &[]),
        ]);
        ledger.apply(seq(3), &[ack(4), ack(6), ack(11)]);
        assert_eq!(ledger.live_messages(), 8);
        assert_eq!(ledger.reclaimable(seq(3)), vec![seq(2)], "the acks found 4 and 6 in segment 2, not 1");
        ledger.apply(seq(3), &[ack(5), ack(4)]);
        assert_eq!(ledger.live_messages(), 7, "5 was live in segment 1; 4 was acked already");
        ledger.apply(seq(3), &[ack(1), ack(2), ack(3), ack(7), ack(8), ack(9), ack(10)]);
        assert_eq!(ledger.live_messages(), 0);
        assert_eq!(ledger.reclaimable(seq(4)), vec![seq(1), seq(2), seq(3)]);
    }

    #[test]
    fn given_repeated_add_in_later_segment_should_move_the_id_and_free_the_earlier_segment() {
        let mut ledger = ledger_with(&[(1, &[add(1)]), (2, &[add(1)]), (3, &[])]);
        assert_eq!(ledger.live_messages(), 1);
        assert_eq!(ledger.reclaimable(seq(3)), vec![seq(1)]);
        ledger.apply(seq(3), &[ack(1)]);
        assert_eq!(ledger.live_messages(), 0);
        assert_eq!(ledger.reclaimable(seq(4)), vec![seq(1), seq(2), seq(3)]);
        ledger.apply(seq(3), &[ack(1)]);
        assert_eq!(ledger.live_messages(), 0, "a second ack of the same id changes nothing");
    }

    #[test]
    fn given_repeated_add_in_same_segment_should_count_once() {
        let ledger = ledger_with(&[(1, &[add(7), add(7)]), (2, &[ack(7)])]);
        assert_eq!(ledger.live_messages(), 0);
        assert_eq!(ledger.reclaimable(seq(2)), vec![seq(1)]);
    }

    #[test]
    fn given_a_million_live_ids_should_hold_them_in_well_under_a_byte_each() {
        let mut ledger = Ledger::default();
        let per_segment = 62_500u64;
        for n in 0..16u64 {
            ledger.add_segment(seq(n + 1));
            let adds: Vec<Effect> = (n * per_segment..(n + 1) * per_segment).map(add).collect();
            ledger.apply(seq(n + 1), &adds);
        }
        assert_eq!(ledger.live_messages(), 1_000_000);
        let bytes: u64 = ledger.segments.values().map(|e| e.live.serialized_size() as u64).sum();
        assert!(bytes < 300_000, "{bytes} bytes for a million live ids");
        // Acks in id order (a drained backlog) free the segments oldest first.
        let acks: Vec<Effect> = (0..2 * per_segment).map(ack).collect();
        ledger.apply(seq(16), &acks);
        assert_eq!(ledger.reclaimable(seq(16)), vec![seq(1), seq(2)]);
    }
}
